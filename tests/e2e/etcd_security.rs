//! etcd with TLS (server and client certificates) and with users: the built binary
//! connects with the right settings and fails clearly, naming the endpoint, without them.

use crate::common::{bin, Output, DEADLINE};
use deployctl::testing::{EtcdServer, TestCerts};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Runs `deployctl ARGS` with exactly the etcd settings in `env` (the caller's own
/// DEPLOYCTL_* variables are removed so that they cannot make a test pass).
fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("RUST_LOG").stdin(Stdio::null());
    for var in [
        "DEPLOYCTL_STORE",
        "DEPLOYCTL_ETCD_CA",
        "DEPLOYCTL_ETCD_CERT",
        "DEPLOYCTL_ETCD_KEY",
        "DEPLOYCTL_ETCD_USER",
        "DEPLOYCTL_ETCD_PASSWORD",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin()));
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const APP: &str = "\
apiVersion: deployctl.dev/v1
kind: Application
metadata:
  name: api
spec:
  selector:
    matchLabels: {role: web}
  artifact:
    url: https://ci.example.com/api/{{version}}/api.tar.gz
";

#[test]
fn etcd_over_tls_should_work_with_the_ca_and_fail_clearly_without_it() {
    let certs = TestCerts::generate();
    let etcd = EtcdServer::start_tls(&certs);
    let url = etcd.url();
    assert!(url.starts_with("etcds://"), "{url}");
    let endpoint = etcd.endpoint();
    let (ca, cert, key) = (certs.ca(), certs.client_cert(), certs.client_key());
    let (ca, cert, key) = (
        ca.to_str().expect("temp paths are utf-8"),
        cert.to_str().expect("temp paths are utf-8"),
        key.to_str().expect("temp paths are utf-8"),
    );

    // With everything as flags: a write and a read go through.
    let dir = tempfile::tempdir().expect("can create a temporary dir");
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, APP).expect("can write the manifest");
    let tls_flags = [
        "--store",
        url.as_str(),
        "--etcd-ca",
        ca,
        "--etcd-cert",
        cert,
        "--etcd-key",
        key,
    ];
    let mut apply = tls_flags.to_vec();
    apply.extend(["apply", "-f", file.to_str().expect("utf-8")]);
    let out = run_env(&apply, &[]).ok();
    assert!(out.stdout.contains("created"), "{}", out.stdout);

    // With everything from the environment, and `etcd://` turned into TLS by the CA.
    let plain_url = format!("etcd://{endpoint}");
    let out = run_env(
        &["get", "applications"],
        &[
            ("DEPLOYCTL_STORE", plain_url.as_str()),
            ("DEPLOYCTL_ETCD_CA", ca),
            ("DEPLOYCTL_ETCD_CERT", cert),
            ("DEPLOYCTL_ETCD_KEY", key),
        ],
    )
    .ok();
    assert!(out.stdout.contains("api"), "{}", out.stdout);
    let out = run_env(&[&tls_flags[..], &["get", "rollouts"]].concat(), &[]).ok();
    assert_eq!(
        out.stderr, "No resources found in default namespace.\n",
        "a working TLS connection prints no warnings"
    );

    // etcds:// without a CA: the flag to give is named before anything is tried.
    let out = run_env(&["--store", &url, "get", "rollouts"], &[]).code(1);
    assert!(out.stderr.contains("--etcd-ca"), "{}", out.stderr);

    // Plain etcd:// to a TLS port: fails fast, names the endpoint and suggests TLS.
    let started = Instant::now();
    let out = run_env(&["--store", &plain_url, "get", "rollouts"], &[]).code(1);
    assert!(started.elapsed() < DEADLINE, "took {:?}", started.elapsed());
    assert!(out.stderr.contains(&endpoint), "{}", out.stderr);
    assert!(out.stderr.contains("TLS"), "{}", out.stderr);

    // A CA that did not sign etcd's certificate: a TLS handshake failure, named so.
    let other = TestCerts::generate();
    let other_ca = other.ca();
    let out = run_env(
        &[
            "--store",
            &url,
            "--etcd-ca",
            other_ca.to_str().expect("utf-8"),
            "--etcd-cert",
            cert,
            "--etcd-key",
            key,
            "get",
            "rollouts",
        ],
        &[],
    )
    .code(1);
    assert!(out.stderr.contains("TLS handshake"), "{}", out.stderr);
    assert!(out.stderr.contains(&endpoint), "{}", out.stderr);

    // No client certificate where etcd demands one.
    let out = run_env(&["--store", &url, "--etcd-ca", ca, "get", "rollouts"], &[]).code(1);
    assert!(out.stderr.contains(&endpoint), "{}", out.stderr);
    assert!(out.stderr.contains("TLS"), "{}", out.stderr);

    // An unreadable file is named.
    let missing = dir.path().join("nope.pem");
    let missing = missing.to_str().expect("utf-8");
    let out = run_env(
        &["--store", &url, "--etcd-ca", missing, "get", "rollouts"],
        &[],
    )
    .code(1);
    assert!(out.stderr.contains(missing), "{}", out.stderr);
    assert!(out.stderr.contains("CA certificate"), "{}", out.stderr);
}

/// Adds user `root` with `password` (and the root role) and turns authentication on.
async fn enable_auth(etcd: &EtcdServer, password: &str) {
    let mut c = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to test etcd: {e}\n{}", etcd.log_tail()));
    c.user_add("root", password, None)
        .await
        .expect("etcd adds a user");
    c.user_grant_role("root", "root")
        .await
        .expect("etcd grants the root role");
    c.auth_enable().await.expect("etcd enables auth");
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_auth_should_accept_the_right_password_and_name_a_wrong_one() {
    let etcd = EtcdServer::start();
    enable_auth(&etcd, "s3cret-pw").await;
    let url = etcd.url();
    let endpoint = etcd.endpoint();
    let run = |args: Vec<&str>, env: Vec<(&str, &str)>| {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let url = url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut all = vec!["--store", url.as_str()];
                all.extend(args.iter().map(String::as_str));
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                run_env(&all, &env)
            })
            .await
            .expect("the runner does not panic")
        }
    };

    // The right password, from the environment: works.
    let out = run(
        vec!["--etcd-user", "root", "get", "rollouts"],
        vec![("DEPLOYCTL_ETCD_PASSWORD", "s3cret-pw")],
    )
    .await
    .ok();
    assert!(out.stderr.contains("No resources found"), "{}", out.stderr);

    // A wrong one: an authentication failure naming the user and the endpoint, and never
    // echoing the password.
    let out = run(
        vec!["--etcd-user", "root", "get", "rollouts"],
        vec![("DEPLOYCTL_ETCD_PASSWORD", "wrong-pw")],
    )
    .await
    .code(1);
    assert!(
        out.stderr.contains("authentication failed for user root"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&endpoint), "{}", out.stderr);
    assert!(!out.stderr.contains("wrong-pw"), "{}", out.stderr);

    // The user from the environment too.
    let out = run(
        vec!["get", "rollouts"],
        vec![
            ("DEPLOYCTL_ETCD_USER", "root"),
            ("DEPLOYCTL_ETCD_PASSWORD", "s3cret-pw"),
        ],
    )
    .await
    .ok();
    assert!(out.stderr.contains("No resources found"), "{}", out.stderr);

    // No user at all: told that etcd wants one.
    let out = run(vec!["get", "rollouts"], vec![]).await.code(1);
    assert!(out.stderr.contains("--etcd-user"), "{}", out.stderr);
    assert!(out.stderr.contains(&endpoint), "{}", out.stderr);

    // A user but no password: told where the password goes.
    let out = run(vec!["--etcd-user", "root", "get", "rollouts"], vec![])
        .await
        .code(1);
    assert!(
        out.stderr.contains("DEPLOYCTL_ETCD_PASSWORD"),
        "{}",
        out.stderr
    );
}

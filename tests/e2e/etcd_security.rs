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

/// A `deployctl agent` killed on drop, its stderr going to a file.
struct AgentProcess {
    child: std::process::Child,
    stderr: std::path::PathBuf,
}

impl AgentProcess {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` until it returns Some, up to [`DEADLINE`]; panics naming `what`.
async fn wait_for<T, F, Fut>(what: &str, agent: &AgentProcess, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting for {what}; agent stderr:\n{}",
            agent.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_should_work_with_only_the_etcd_permissions_its_help_lists() {
    use deployctl::api::{Artifact, Event, Instance, InstanceSpec, Machine, Object, VersionRef};
    use deployctl::store::etcd::EtcdStore;
    use deployctl::store::{keys, Client, EtcdOptions, Scope};
    use etcd_client::Permission;

    let etcd = EtcdServer::start();
    enable_auth(&etcd, "root-pw").await;
    let root_options = EtcdOptions {
        user: Some("root".into()),
        password: Some("root-pw".into()),
        ..EtcdOptions::default()
    };
    let root_store = EtcdStore::connect_with(&[etcd.endpoint()], &root_options)
        .await
        .unwrap_or_else(|e| panic!("root connects: {e}\n{}", etcd.log_tail()));
    let root = Client::new(std::sync::Arc::new(root_store));

    // The role exactly as `deployctl agent --help` documents it.
    let mut admin = etcd_client::Client::connect(
        [etcd.endpoint()],
        Some(etcd_client::ConnectOptions::new().with_user("root", "root-pw")),
    )
    .await
    .expect("root connects with etcd-client");
    admin.role_add("agent-web-1").await.expect("role added");
    for (prefix, perm, key) in deployctl::cli::daemon::agent_etcd_permissions("web-1") {
        let p = match perm {
            "read" => Permission::read(key),
            "write" => Permission::write(key),
            "readwrite" => Permission::read_write(key),
            other => panic!("unknown permission {other}"),
        };
        let p = if prefix { p.with_prefix() } else { p };
        admin
            .role_grant_permission("agent-web-1", p)
            .await
            .expect("permission granted");
    }
    admin
        .user_add("agent-web-1", "agent-pw", None)
        .await
        .expect("user added");
    admin
        .user_grant_role("agent-web-1", "agent-web-1")
        .await
        .expect("role granted");

    // An instance whose artifact is missing: the agent reports a failure in its status and
    // records an event, so every documented write is exercised.
    let tmp = tempfile::tempdir().expect("can create a temporary dir");
    let spec = InstanceSpec {
        machine: "web-1".into(),
        application: "api".into(),
        artifact: Artifact {
            url: format!("file://{}/api-{{{{version}}}}.tar.gz", tmp.path().display()),
            ..Default::default()
        },
        staged: vec![VersionRef {
            version: "1.0".into(),
            sha256: None,
        }],
        ..Default::default()
    };
    root.create(&Instance::new("api.web-1", spec))
        .await
        .expect("root creates the instance");

    let root_dir = tmp.path().join("deploy");
    let stderr_path = tmp.path().join("agent.stderr");
    let child = Command::new(bin())
        .args([
            "--store",
            &etcd.url(),
            "--etcd-user",
            "agent-web-1",
            "agent",
            "--name",
            "web-1",
            "--labels",
            "role=web",
            "--root",
            root_dir.to_str().expect("utf-8"),
        ])
        .env("DEPLOYCTL_ETCD_PASSWORD", "agent-pw")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("can create the stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin()));
    let agent = AgentProcess {
        child,
        stderr: stderr_path,
    };

    let machine = wait_for("the machine to be registered", &agent, || async {
        root.get::<Machine>(None, "web-1").await.ok().flatten()
    })
    .await;
    assert_eq!(
        machine.meta().labels.get("role").map(String::as_str),
        Some("web")
    );
    wait_for("the presence key", &agent, || async {
        root.store()
            .get(&keys::machine_lease_key("web-1"))
            .await
            .ok()
            .flatten()
    })
    .await;
    wait_for("the instance status", &agent, || async {
        let inst = root
            .get::<Instance>(Some("default"), "api.web-1")
            .await
            .ok()
            .flatten()?;
        inst.status()
            .filter(|s| s.observed_generation >= 1)
            .cloned()
    })
    .await;
    wait_for("an event from the agent", &agent, || async {
        let events = root
            .list::<Event>(&Scope::Namespace("default".into()))
            .await
            .ok()?;
        events
            .items
            .into_iter()
            .find(|e| e.spec().source == "agent/web-1")
    })
    .await;
    // `deployctl logs` (as root) is answered: the agent reads the request and writes its
    // answer on the requester's lease with only the documented permissions.
    let out = run_env(
        &[
            "--store",
            &etcd.url(),
            "--etcd-user",
            "root",
            "logs",
            "instance",
            "api.web-1",
        ],
        &[("DEPLOYCTL_ETCD_PASSWORD", "root-pw")],
    );
    assert_eq!(
        out.code,
        0,
        "logs: {}\nagent log:\n{}",
        out.stderr,
        agent.stderr()
    );
    // A `deployctl run` order (as the controller writes it) is read and answered under
    // the agent's own status keys: the instance has no current release, so the agent
    // reports why it could not run the command.
    let order = deployctl::api::TaskOrder {
        application: "api".into(),
        command: "true".into(),
        timeout_seconds: 10,
    };
    root.put_task_orders("default", "run-1", &order, &["web-1".into()])
        .await
        .expect("root writes the order");
    let run = wait_for("the task result", &agent, || async {
        root.task_result("web-1", "default", "run-1")
            .await
            .ok()
            .flatten()
            .filter(|r| r.phase.is_finished())
    })
    .await;
    assert_eq!(
        run.phase,
        deployctl::api::MachineRunPhase::Failed,
        "{run:?}"
    );
    assert!(
        run.message
            .as_deref()
            .is_some_and(|m| m.contains("no current release")),
        "{run:?}"
    );
    let log = agent.stderr();
    assert!(!log.contains("permission denied"), "agent log:\n{log}");

    // And the role is narrow: the same user cannot read rollouts, and is told why.
    let out = run_env(
        &[
            "--store",
            &etcd.url(),
            "--etcd-user",
            "agent-web-1",
            "get",
            "rollouts",
            "-A",
        ],
        &[("DEPLOYCTL_ETCD_PASSWORD", "agent-pw")],
    )
    .code(1);
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    assert!(out.stderr.contains(&etcd.endpoint()), "{}", out.stderr);
}

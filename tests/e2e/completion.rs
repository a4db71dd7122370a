//! `deployctl completion bash` run by a real bash against a store holding known objects:
//! kinds, names, machines and namespaces come back in COMPREPLY, on both stores.

use crate::common::{bin, run, tempdir, write, Backend};
use std::process::Command;

const OBJECTS: &str = "\
apiVersion: deployctl.dev/v1
kind: Machine
metadata: {name: web-1, labels: {role: web}}
---
apiVersion: deployctl.dev/v1
kind: Application
metadata: {name: api}
spec:
  artifact: {url: 'file:///nowhere/{{version}}.tar.gz'}
---
apiVersion: deployctl.dev/v1
kind: Rollout
metadata: {name: api}
spec: {application: api, version: 1.0.0}
---
apiVersion: deployctl.dev/v1
kind: Rollout
metadata: {name: admin}
spec: {application: api, version: 1.0.0}
---
apiVersion: deployctl.dev/v1
kind: Application
metadata: {name: shop, namespace: prod}
spec:
  artifact: {url: 'file:///nowhere/{{version}}.tar.gz'}
";

/// COMPREPLY after the generated bash completion ran on `line` (cursor at its end).
fn complete(script: &str, store: &str, line: &str) -> Vec<String> {
    let dir = std::path::Path::new(bin())
        .parent()
        .expect("the binary is in a directory");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let driver = format!(
        "{script}\nread -r -a COMP_WORDS <<< \"$LINE\"\n\
         [[ \"$LINE\" == *' ' ]] && COMP_WORDS+=('')\n\
         COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n\
         _deployctl\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &driver])
        .env("PATH", path)
        .env("DEPLOYCTL_STORE", store)
        .env("LINE", line)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn bash_completion_should_offer_kinds_names_machines_and_namespaces_from_the_store() {
    for (backend, b) in Backend::all() {
        let store = b.url();
        let dir = tempdir();
        run(
            &store,
            &["apply", "-f", &write(dir.path(), "objects.yaml", OBJECTS)],
        )
        .ok();
        let script = run(&store, &["completion", "bash"]).ok().stdout;
        for (line, want) in [
            ("deployctl ge", &["get"][..]),
            ("deployctl get ro", &["rollouts"][..]),
            ("deployctl get rollouts ", &["admin", "api"][..]),
            ("deployctl get ro a", &["admin", "api"][..]),
            ("deployctl get ro ap", &["api"][..]),
            ("deployctl describe machines ", &["web-1"][..]),
            ("deployctl get -n prod app ", &["shop"][..]),
            ("deployctl get -n ", &["default", "prod"][..]),
            ("deployctl rollout status ad", &["admin"][..]),
            ("deployctl get --show-l", &["--show-labels"][..]),
        ] {
            let mut got = complete(&script, &store, line);
            got.sort();
            assert_eq!(got, want, "{backend}: {line:?}");
        }
        let got = complete(&script, &store, "deployctl get ");
        assert!(
            got.contains(&"rollouts".to_string()) && got.contains(&"all".to_string()),
            "{backend}: {got:?}"
        );
    }
    // A store that does not answer: no candidates, and the shell gets its prompt back.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dead = format!("etcd://127.0.0.1:{port}");
    let script = run(&dead, &["completion", "bash"]).ok().stdout;
    assert!(complete(&script, &dead, "deployctl get ro ").is_empty());
}

//! `deployctl up`: the controller and N local agents in one process, on the embedded
//! store in a state directory; with `--demo`, also the scripted demo rollout.

use super::demo;
use super::get::shutdown_signal;
use super::{duration_in, output, store_url, GlobalArgs};
use crate::agent::{self, AgentConfig};
use crate::controller::{self, ControllerConfig};
use crate::store::StoreUrl;
use anyhow::Context as _;
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const EXAMPLES: &str = "\
Examples:
  # A controller and three machines on this host; Ctrl-C stops them all
  deployctl up

  # The scripted demo: build two versions, roll out 1.0.0, then 2.0.0 through
  # a pause
  deployctl up --demo --state-dir \"$(mktemp -d)\"

  # Five machines against etcd instead of the embedded store
  deployctl up --machines 5 --store etcd://127.0.0.1:2379";

/// How long the controller and the agents get to stop after the signal.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest `--demo-timeout`: less cannot build and roll out even one version.
const DEMO_TIMEOUT_MIN: Duration = Duration::from_secs(10);
/// The longest `--demo-timeout`: a demo that has not finished in an hour is stuck.
const DEMO_TIMEOUT_MAX: Duration = Duration::from_secs(3600);
/// The most machines `up` runs. Its agents share this process's store client, so a
/// machine costs no connection (an embedded store opened per agent was a writer thread,
/// a poller thread checking every 10 ms and a pool of read connections each); what is
/// left is a task, a lease keep-alive every few seconds and a release directory per
/// machine, on the one host. The old cap, 64, had no reason written down.
const MAX_MACHINES: i64 = 1000;
/// The zones machines are spread over, round-robin.
const ZONES: [&str; 3] = ["a", "b", "c"];

#[derive(Args, Debug)]
pub struct UpArgs {
    /// How many local machines (agents) to run: machine-1 .. machine-N, at most 1000.
    /// They run as tasks of this process on one shared store connection; past 1000, run
    /// `deployctl agent` processes (one per machine) instead. With --demo, each machine
    /// also needs a free port (--demo-port + N).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=MAX_MACHINES))]
    pub machines: u32,
    /// Where each machine's root and the demo artifacts live
    /// (default: $XDG_STATE_HOME/deployctl/up, else ~/.local/state/deployctl/up).
    /// Given, it also holds the embedded store (`<DIR>/store.db`) unless --store or
    /// DEPLOYCTL_STORE names one; not given, `up` uses the default store, like every command.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Also build the demo service and roll out 1.0.0, then 2.0.0; exit when done.
    #[arg(long)]
    pub demo: bool,
    /// The demo's machine-N serves on this port + N.
    #[arg(long, default_value_t = 18080, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub demo_port: u16,
    /// Give up on the demo (exit non-zero) when it has not finished within this long,
    /// within 10s..=1h.
    #[arg(long, default_value = "2m", value_parser = duration_in(DEMO_TIMEOUT_MIN, DEMO_TIMEOUT_MAX))]
    pub demo_timeout: Duration,
}

/// One local machine of `up`.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalMachine {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub root: PathBuf,
}

/// `machine-1..N` with `env=local` and zones a, b, c round-robin, each rooted in
/// `<state_dir>/machines/<name>`.
pub fn local_machines(state_dir: &Path, n: u32) -> Vec<LocalMachine> {
    (1..=n)
        .map(|i| {
            let name = format!("machine-{i}");
            let zone = ZONES[(i as usize - 1) % ZONES.len()];
            LocalMachine {
                root: state_dir.join("machines").join(&name),
                labels: [
                    ("env".to_string(), "local".to_string()),
                    ("zone".to_string(), zone.to_string()),
                ]
                .into(),
                name,
            }
        })
        .collect()
}

/// `$XDG_STATE_HOME/deployctl/up`, else `~/.local/state/deployctl/up`.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("deployctl")
        .join("up")
}

/// `text` as one shell word: unchanged when it is plainly safe, else single-quoted.
pub fn shell_word(text: &str) -> String {
    let safe = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:,=@%+".contains(c));
    if safe {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The commands a newcomer runs next, each with the right `--store` (none when `store`
/// is the default store every command uses without one).
pub fn next_steps(store: &StoreUrl, demo_manifest: &Path) -> String {
    let is_default = StoreUrl::parse(None).is_ok_and(|d| &d == store);
    let store_word = shell_word(&store.to_string());
    let d = if is_default {
        "deployctl".to_string()
    } else {
        format!("deployctl --store {store_word}")
    };
    let m = shell_word(&demo_manifest.display().to_string());
    let export = if is_default {
        String::new()
    } else {
        format!("  (or export DEPLOYCTL_STORE={store_word} and drop --store)\n")
    };
    format!(
        "\
Next, in another terminal:
  {d} get machines
  {d} apply -f {m}
  {d} get rollouts -w
  {d} rollout status demo
  {d} set version demo 2.0.0
  {d} rollout promote demo
  {d} rollout undo demo
{export}Press Ctrl-C to stop everything."
    )
}

/// Takes an exclusive `flock` on `<state_dir>/up.lock`; the kernel releases it when the
/// process exits, however it exits.
fn lock_state_dir(state_dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = state_dir.join("up.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own and keep open; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            anyhow::bail!(
                "another deployctl up is running with state dir {}: stop it first, or pass another --state-dir",
                state_dir.display()
            );
        }
        anyhow::bail!("cannot lock {}: {err}", path.display());
    }
    Ok(file)
}

pub async fn run(g: &GlobalArgs, args: UpArgs) -> anyhow::Result<i32> {
    // A store named with --store is checked before the state dir is created.
    let named_store = g.store.as_ref().map(|_| store_url(g)).transpose()?;
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    // Absolute, so that the printed commands and the artifact URLs work from anywhere.
    let state_dir = state_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve state dir {}", state_dir.display()))?;
    // Held until this process exits: one `up` per state dir, or machines would run twice.
    let _lock = lock_state_dir(&state_dir)?;
    let store = match (named_store, &args.state_dir) {
        (Some(named), _) => named,
        // Through `with_etcd_options` so that stray --etcd-* flags are refused, not ignored.
        (None, Some(_)) => StoreUrl::Embedded(state_dir.join("store.db"))
            .with_etcd_options(super::etcd_options(g))
            .map_err(anyhow::Error::msg)?,
        // The default store of every other command, so that a bare `deployctl get
        // machines` in another terminal sees these machines.
        (None, None) => store_url(g)?,
    };
    let client = super::connect_url(&store).await?;

    // Ready-to-apply demo manifests for the next steps (the artifacts they point at too).
    let artifacts = state_dir.join("artifacts");
    for v in demo::DEMO_VERSIONS {
        demo::build_artifact(&artifacts, v)?;
    }
    let bin = std::env::current_exe().context("cannot locate the deployctl binary")?;
    let (app, rollout) = demo::demo_objects(&artifacts, &bin, args.demo_port)?;
    let demo_manifest = state_dir.join("demo.yaml");
    let text = format!(
        "{}---\n{}",
        serde_yaml::to_string(&app).context("serializing the demo application")?,
        serde_yaml::to_string(&rollout).context("serializing the demo rollout")?
    );
    std::fs::write(&demo_manifest, text)
        .with_context(|| format!("cannot write {}", demo_manifest.display()))?;

    let shutdown = CancellationToken::new();
    let mut tasks: JoinSet<(String, anyhow::Result<()>)> = JoinSet::new();
    let controller_config = ControllerConfig {
        store: store.clone(),
        identity: format!("up-{}", std::process::id()),
        lease_ttl: Duration::from_secs(5),
        workers: 4,
        http: None,
    };
    let token = shutdown.clone();
    tasks.spawn(async move {
        (
            "controller".to_string(),
            controller::run(controller_config, token).await,
        )
    });
    let machines = local_machines(&state_dir, args.machines);
    for m in &machines {
        let config = AgentConfig {
            store: store.clone(),
            name: m.name.clone(),
            labels: m.labels.clone(),
            root: m.root.clone(),
            lease_ttl: Duration::from_secs(10),
            http: None,
        };
        let token = shutdown.clone();
        let what = format!("agent {}", m.name);
        // One store client for every agent: a connection each is what capped `up`.
        let shared = client.clone();
        tasks.spawn(async move { (what, agent::run_with(shared, config, None, token).await) });
    }

    outln!(
        "deployctl up: a controller and {} machines (store {store}, state {})",
        machines.len(),
        state_dir.display()
    );
    for m in &machines {
        let labels: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        outln!(
            "  {}  {}  root {}",
            m.name,
            labels.join(","),
            m.root.display()
        );
    }
    outln!("{}", next_steps(&store, &demo_manifest));

    // Run until the demo ends, a signal arrives, or a part stops on its own.
    let outcome: anyhow::Result<()> = {
        let demo_run = async {
            if args.demo {
                match tokio::time::timeout(
                    args.demo_timeout,
                    demo::run_demo(&client, &state_dir, args.machines, args.demo_port),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(anyhow::anyhow!(
                        "the demo did not finish within {}",
                        humantime::format_duration(args.demo_timeout)
                    )),
                }
            } else {
                futures::future::pending().await
            }
        };
        tokio::select! {
            r = demo_run => r,
            _ = shutdown_signal() => {
                outln!("signal received: stopping the controller and the agents");
                if args.demo {
                    Err(anyhow::anyhow!("the demo was interrupted"))
                } else {
                    Ok(())
                }
            }
            Some(ended) = tasks.join_next() => Err(match ended {
                Ok((what, Ok(()))) => anyhow::anyhow!("{what} stopped unexpectedly"),
                Ok((what, Err(e))) => anyhow::anyhow!("{what} failed: {e:#}"),
                Err(e) => anyhow::anyhow!("a task of up panicked: {e}"),
            }),
        }
    };

    shutdown.cancel();
    let stopped = tokio::time::timeout(STOP_TIMEOUT, async {
        let mut failures = Vec::new();
        while let Some(ended) = tasks.join_next().await {
            match ended {
                Ok((_, Ok(()))) => {}
                Ok((what, Err(e))) => failures.push(format!("{what}: {e:#}")),
                Err(e) => failures.push(format!("a task panicked: {e}")),
            }
        }
        failures
    })
    .await;
    let failures = match stopped {
        Ok(f) => f,
        Err(_) => {
            tasks.abort_all();
            vec![format!(
                "the controller and agents did not stop within {}s",
                STOP_TIMEOUT.as_secs()
            )]
        }
    };
    for f in &failures {
        eprintln!("error: while stopping: {}", output::escape_lines(f));
    }
    match outcome {
        Ok(()) if failures.is_empty() => {
            outln!("stopped");
            Ok(0)
        }
        Ok(()) => Ok(1),
        Err(e) => {
            // A failure may quote the demo rollout's status from the store.
            eprintln!("error: {}", output::escape_lines(&format!("{e:#}")));
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn local_machines_should_spread_over_zones_with_their_own_roots() {
        let ms = local_machines(Path::new("/s"), 4);
        let got: Vec<(&str, &str, &str, PathBuf)> = ms
            .iter()
            .map(|m| {
                (
                    m.name.as_str(),
                    m.labels["env"].as_str(),
                    m.labels["zone"].as_str(),
                    m.root.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("machine-1", "local", "a", "/s/machines/machine-1".into()),
                ("machine-2", "local", "b", "/s/machines/machine-2".into()),
                ("machine-3", "local", "c", "/s/machines/machine-3".into()),
                ("machine-4", "local", "a", "/s/machines/machine-4".into()),
            ]
        );
    }

    #[test]
    fn next_steps_should_name_the_store_in_every_command_quoted_for_the_shell() {
        let store = StoreUrl::Embedded("/tmp/it's here/store.db".into());
        let text = next_steps(&store, Path::new("/tmp/d/demo.yaml"));
        let q = r"'/tmp/it'\''s here/store.db'";
        for cmd in [
            "get machines",
            "apply -f /tmp/d/demo.yaml",
            "get rollouts -w",
            "rollout status demo",
            "set version demo 2.0.0",
            "rollout undo demo",
        ] {
            assert!(
                text.contains(&format!("deployctl --store {q} {cmd}")),
                "{cmd} in {text}"
            );
        }
        let default = StoreUrl::parse(None).unwrap();
        let text = next_steps(&default, Path::new("/d.yaml"));
        assert!(text.contains("  deployctl get machines\n"), "{text}");
        assert!(!text.contains("--store"), "{text}");
        let etcd = StoreUrl::parse(Some("etcd://127.0.0.1:2379")).unwrap();
        assert!(next_steps(&etcd, Path::new("/d.yaml"))
            .contains("deployctl --store etcd://127.0.0.1:2379 get machines"));
    }

    #[test]
    fn up_flags_should_have_defaults_and_reject_zero_machines() {
        let cli = Cli::try_parse_from(["deployctl", "up"]).unwrap();
        let Command::Up(a) = cli.command else {
            panic!("up")
        };
        assert_eq!((a.machines, a.demo, a.demo_port), (3, false, 18080));
        assert_eq!(a.demo_timeout, Duration::from_secs(120));
        assert!(Cli::try_parse_from(["deployctl", "up", "--machines", "0"]).is_err());
        let cli = Cli::try_parse_from(["deployctl", "up", "--machines", "1000"]).unwrap();
        let Command::Up(a) = cli.command else {
            panic!("up")
        };
        assert_eq!(a.machines, 1000, "past the old cap of 64");
        assert!(Cli::try_parse_from(["deployctl", "up", "--machines", "1001"]).is_err());
        let cli =
            Cli::try_parse_from(["deployctl", "up", "--demo", "--store", "etcd://h:1"]).unwrap();
        assert_eq!(cli.global.store.as_deref(), Some("etcd://h:1"));
    }
}

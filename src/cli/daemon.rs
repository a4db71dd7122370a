//! `deployctl controller` and `deployctl agent`: flags into configs, then hand over
//! with a cancellation token that SIGINT/SIGTERM cancel.

use super::{duration_in, get::shutdown_signal, store_url, GlobalArgs};
use crate::agent::AgentConfig;
use crate::api::validation::{check_label_key, check_label_value, check_name};
use crate::controller::ControllerConfig;
use crate::observe::http::{self, Listen};
use clap::Args;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub const CONTROLLER_EXAMPLES: &str = "\
Examples:
  # One controller on the embedded store
  deployctl controller

  # Two for high availability on etcd (one leads, the other takes over)
  deployctl --store etcd://10.0.0.1:2379 controller --identity ctl-a \\
    --lease-ttl 10s

  # Metrics for a Prometheus on another host, JSON logs for a log shipper
  deployctl --log-format json controller --http-addr 0.0.0.0:9479

  # No HTTP endpoints at all
  deployctl controller --http-addr off

Endpoints (--http-addr, read-only, no authentication; loopback by default):
  /metrics  Prometheus metrics (OpenMetrics text)
  /healthz  200 when the process runs and the store answers a read within 2s
  /readyz   200 when this controller leads and its caches are synced (503 on a
            standby)";

pub const AGENT_EXAMPLES: &str = "\
Examples:
  # On each machine
  deployctl agent --name web-1 --labels role=web,zone=a --root /srv/deploy

  # With /metrics, /healthz and /readyz on loopback (off unless given)
  deployctl agent --name web-1 --root /srv/deploy --http-addr 127.0.0.1:9480

  # Against etcd
  deployctl --store etcd://10.0.0.1:2379 agent --name db-1 --labels role=db \\
    --root /srv/deploy

  # Against etcd with TLS and the machine's own etcd user (password only from
  # the environment)
  export DEPLOYCTL_ETCD_PASSWORD=...
  deployctl --store etcds://10.0.0.1:2379 --etcd-ca /etc/deployctl/etcd-ca.pem \\
    --etcd-user agent-web-1 agent --name web-1 --root /srv/deploy

etcd permissions (RBAC):
  An agent's etcd user needs only its own machine's keys. For machine web-1
  (etcdctl as root):
    etcdctl role add agent-web-1
    etcdctl role grant-permission --prefix agent-web-1 \\
      read /deployctl/instances/web-1/
    etcdctl role grant-permission --prefix agent-web-1 \\
      readwrite /deployctl/status/instances/web-1/
    etcdctl role grant-permission agent-web-1 \\
      readwrite /deployctl/machines/web-1
    etcdctl role grant-permission agent-web-1 \\
      readwrite /deployctl/status/machines/web-1
    etcdctl role grant-permission agent-web-1 \\
      readwrite /deployctl/leases/machines/web-1
    etcdctl role grant-permission --prefix agent-web-1 write /deployctl/events/
    etcdctl role grant-permission --prefix agent-web-1 \\
      readwrite /deployctl/logs/web-1/
    etcdctl role grant-permission --prefix agent-web-1 \\
      read /deployctl/taskorders/web-1/
    etcdctl role grant-permission --prefix agent-web-1 \\
      readwrite /deployctl/status/taskorders/web-1/
    etcdctl user add agent-web-1
    etcdctl user grant-role agent-web-1 agent-web-1
  It writes its Machine (registration, labels; creating it clears a stale
  status), its presence key (bound to a lease), the status of its Instances, and
  Events; it reads only its own Instances. Under /deployctl/logs/web-1/ it reads
  `deployctl logs` requests, writes their answers on the requester's lease and
  deletes the requests it answered. It reads the `deployctl run` orders to web-1
  and writes their results, nothing else.";

/// The permissions [`AGENT_EXAMPLES`] documents for machine `machine`, as
/// `(prefix?, permission, key)`: what an agent's etcd role needs, and all it needs.
pub fn agent_etcd_permissions(machine: &str) -> Vec<(bool, &'static str, String)> {
    vec![
        (true, "read", format!("/deployctl/instances/{machine}/")),
        (
            true,
            "readwrite",
            format!("/deployctl/status/instances/{machine}/"),
        ),
        (false, "readwrite", format!("/deployctl/machines/{machine}")),
        (
            false,
            "readwrite",
            format!("/deployctl/status/machines/{machine}"),
        ),
        (
            false,
            "readwrite",
            format!("/deployctl/leases/machines/{machine}"),
        ),
        (true, "write", "/deployctl/events/".to_string()),
        (true, "readwrite", format!("/deployctl/logs/{machine}/")),
        (true, "read", format!("/deployctl/taskorders/{machine}/")),
        (
            true,
            "readwrite",
            format!("/deployctl/status/taskorders/{machine}/"),
        ),
    ]
}

/// The shortest lease TTL either daemon takes: etcd grants no lease shorter than its
/// minimum TTL (1.5 election timeouts, 2s with etcd's defaults) and counts TTLs in whole
/// seconds, so a shorter flag would fail only after the daemon had registered.
pub const LEASE_TTL_MIN: Duration = Duration::from_secs(2);

/// The longest lease TTL either daemon takes: a dead controller leaves the fleet without a
/// leader, and a dead agent leaves its machine Ready, for that long.
pub const LEASE_TTL_MAX: Duration = Duration::from_secs(600);

/// The most reconciles a controller runs at once; more only contend for the store.
pub const WORKERS_MAX: u32 = 256;

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Names this controller in the leader key and in events (default: hostname-pid).
    #[arg(long)]
    pub identity: Option<String>,
    /// Leader lease TTL: a standby takes over within this long after the leader dies.
    ///
    /// Within 2s..=10m: etcd grants no lease shorter than 2s (its default minimum TTL),
    /// and for a longer one a dead leader leaves the fleet without a controller.
    #[arg(long, default_value = "15s", value_parser = duration_in(LEASE_TTL_MIN, LEASE_TTL_MAX))]
    pub lease_ttl: Duration,
    /// Reconciles run at once (different keys), 1..=256.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=WORKERS_MAX as i64))]
    pub workers: u32,
    /// Serve /metrics, /healthz and /readyz on IP:PORT, or `off`.
    ///
    /// The default is loopback only. An address other than loopback must be given here:
    /// the endpoints are read-only and unauthenticated. If the default port is taken (a
    /// second controller on the host) the controller runs without them and logs a
    /// warning; an address given here that cannot be bound stops it.
    #[arg(long, value_name = "IP:PORT", value_parser = parse_http_addr)]
    pub http_addr: Option<HttpAddr>,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// This Machine's name (a DNS-1123 label).
    #[arg(long, value_parser = parse_machine_name)]
    pub name: String,
    /// Labels of this Machine: `k=v,k=v`.
    #[arg(long, value_parser = parse_labels, default_value = "")]
    pub labels: BTreeMap<String, String>,
    /// Deploy root: releases go under `<root>/<namespace>/<app>/`.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Presence lease TTL: the machine turns NotReady this long after the agent dies.
    ///
    /// The agent refreshes its lease every third of this, so a fleet sends etcd
    /// 3 x machines / TTL refreshes a second, and each costs etcd 3.4 a copy of its
    /// uncommitted writes: at 10,000 machines, use 60s or more (BENCHMARKS.md). etcd 3.4
    /// also refuses refreshes while it is over a second behind in applying writes; a
    /// busy etcd can expire short leases of live agents.
    ///
    /// Within 2s..=10m, checked before the Machine is registered: etcd grants no lease
    /// shorter than 2s (its default minimum TTL), and for a longer one a dead machine
    /// stays Ready and keeps being given work.
    #[arg(long, default_value = "10s", value_parser = duration_in(LEASE_TTL_MIN, LEASE_TTL_MAX))]
    pub lease_ttl: Duration,
    /// Serve /metrics, /healthz and /readyz on IP:PORT (off unless given).
    ///
    /// Read-only and unauthenticated: prefer loopback, or a firewalled interface.
    #[arg(long, value_name = "IP:PORT", value_parser = parse_http_addr)]
    pub http_addr: Option<HttpAddr>,
}

/// `--http-addr`: an address, or `None` for `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpAddr(pub Option<SocketAddr>);

fn parse_http_addr(s: &str) -> Result<HttpAddr, String> {
    http::parse_addr(s).map(HttpAddr)
}

/// The controller's endpoints: the flag's address, `off`, or the loopback default
/// (optional: a taken default port is a warning).
fn controller_listen(flag: Option<HttpAddr>) -> Option<Listen> {
    match flag {
        Some(HttpAddr(addr)) => addr.map(|addr| Listen {
            addr,
            optional: false,
        }),
        None => Some(Listen {
            addr: http::DEFAULT_CONTROLLER_ADDR
                .parse()
                .expect("the default address is a valid IP:PORT (tested)"),
            optional: true,
        }),
    }
}

fn parse_machine_name(s: &str) -> Result<String, String> {
    check_name(s).map(|_| s.to_string())
}

/// `k=v,k2=v2` into a map, each key and value by the label rules manifests follow
/// (`validation::check_label_key`, `check_label_value`).
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (k, v) = term
            .split_once('=')
            .ok_or_else(|| format!("invalid label {term:?}: use key=value"))?;
        check_label_key(k).map_err(|e| format!("label {e}"))?;
        check_label_value(v).map_err(|e| format!("label {k:?}: {e}"))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// A token cancelled on SIGINT or SIGTERM.
pub(crate) fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    let signal = shutdown_signal();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("signal received; shutting down");
        t.cancel();
    });
    token
}

pub async fn run_controller(g: &GlobalArgs, args: ControllerArgs) -> anyhow::Result<i32> {
    let identity = match args.identity {
        Some(i) => i,
        None => {
            let host = hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "controller".into());
            format!("{host}-{}", std::process::id())
        }
    };
    let config = ControllerConfig {
        store: store_url(g)?,
        identity,
        lease_ttl: args.lease_ttl,
        workers: args.workers as usize,
        http: controller_listen(args.http_addr),
    };
    // Every log line of the controller carries its identity (a JSON line as span fields).
    let span = tracing::info_span!("controller", identity = %config.identity);
    crate::controller::run(config, shutdown_token())
        .instrument(span)
        .await?;
    Ok(0)
}

pub async fn run_agent(g: &GlobalArgs, args: AgentArgs) -> anyhow::Result<i32> {
    let config = AgentConfig {
        store: store_url(g)?,
        name: args.name,
        labels: args.labels,
        root: args.root,
        lease_ttl: args.lease_ttl,
        http: args.http_addr.and_then(|a| a.0).map(|addr| Listen {
            addr,
            optional: false,
        }),
    };
    // Every log line of the agent carries its machine (a JSON line as span fields).
    let span = tracing::info_span!("agent", machine = %config.name);
    crate::agent::run(config, shutdown_token())
        .instrument(span)
        .await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn agent_flags_should_parse_and_validate() {
        let cli = Cli::try_parse_from([
            "deployctl",
            "agent",
            "--name",
            "web-1",
            "--labels",
            "role=web,zone=a",
            "--root",
            "/srv",
            "--lease-ttl",
            "3s",
        ])
        .unwrap();
        let Command::Agent(a) = cli.command else {
            panic!("agent")
        };
        assert_eq!(a.name, "web-1");
        assert_eq!(a.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(a.lease_ttl, Duration::from_secs(3));
        let err = Cli::try_parse_from(["deployctl", "agent", "--name", "Web_1", "--root", "/srv"])
            .unwrap_err();
        assert!(err.to_string().contains("DNS-1123"), "{err}");
        assert!(Cli::try_parse_from([
            "deployctl",
            "agent",
            "--name",
            "w",
            "--root",
            "/s",
            "--labels",
            "x"
        ])
        .is_err());
        assert!(
            Cli::try_parse_from(["deployctl", "agent", "--name", "w"]).is_err(),
            "--root is required"
        );
    }

    #[test]
    fn agent_help_should_list_exactly_the_etcd_permissions_the_tests_grant() {
        // Long lines go on after a backslash, to fit 80 columns.
        let help = AGENT_EXAMPLES.replace(" \\\n      ", " ");
        for (prefix, perm, key) in agent_etcd_permissions("web-1") {
            let line = if prefix {
                format!("etcdctl role grant-permission --prefix agent-web-1 {perm} {key}\n")
            } else {
                format!("etcdctl role grant-permission agent-web-1 {perm} {key}\n")
            };
            assert!(help.contains(&line), "help lacks {line:?}");
        }
        assert_eq!(
            AGENT_EXAMPLES.matches("grant-permission").count(),
            agent_etcd_permissions("web-1").len()
        );
    }

    #[test]
    fn controller_flags_should_have_defaults() {
        let cli = Cli::try_parse_from(["deployctl", "controller"]).unwrap();
        let Command::Controller(c) = cli.command else {
            panic!("controller")
        };
        assert_eq!(c.lease_ttl, Duration::from_secs(15));
        assert_eq!(c.workers, 4);
        assert!(Cli::try_parse_from(["deployctl", "controller", "--workers", "0"]).is_err());
        assert!(Cli::try_parse_from(["deployctl", "controller", "--workers", "257"]).is_err());
        assert!(Cli::try_parse_from(["deployctl", "controller", "--workers", "256"]).is_ok());
    }

    #[test]
    fn http_endpoints_should_be_on_loopback_for_the_controller_and_off_for_the_agent_by_default() {
        let controller = |args: &[&str]| {
            let argv = ["deployctl", "controller"].iter().chain(args);
            let Command::Controller(c) = Cli::try_parse_from(argv).expect("valid flags").command
            else {
                panic!("controller")
            };
            controller_listen(c.http_addr)
        };
        let default = controller(&[]).expect("on by default");
        assert!(
            default.addr.ip().is_loopback() && default.optional,
            "{default:?}"
        );
        assert_ne!(default.addr.port(), 9090, "Prometheus' own port");
        assert_eq!(controller(&["--http-addr", "off"]), None);
        let explicit = controller(&["--http-addr", "0.0.0.0:9479"]).expect("given");
        assert!(!explicit.optional && !explicit.addr.ip().is_loopback());
        let err = Cli::try_parse_from(["deployctl", "controller", "--http-addr", "localhost:1"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--http-addr") && err.contains("IP:PORT"),
            "{err}"
        );

        let agent = |args: &[&str]| {
            let argv = ["deployctl", "agent", "--name", "w", "--root", "/s"]
                .iter()
                .chain(args);
            let Command::Agent(a) = Cli::try_parse_from(argv).expect("valid flags").command else {
                panic!("agent")
            };
            a.http_addr.and_then(|a| a.0)
        };
        assert_eq!(agent(&[]), None, "off by default");
        assert_eq!(
            agent(&["--http-addr", "127.0.0.1:9480"]),
            Some("127.0.0.1:9480".parse().unwrap())
        );
    }
}

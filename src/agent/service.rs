//! Keeps an Instance's service command running from `current`: restarted with backoff
//! when it exits, restarted on demand (every switch), stopped on shutdown; publishes its
//! process state (up since, restarts, last exit) for health and the status.

use super::hooks::{kill_group, HookEnv};
use crate::api::{ServiceExit, ServiceStatus};
use chrono::Utc;
use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// First delay before restarting a service that exited; it doubles on each exit up to
/// [`BACKOFF_MAX`], as systemd's `RestartSteps` and the kubelet's crash-loop back-off do.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest wait between restarts (the kubelet's cap): a broken service costs a start
/// every five minutes, and a fixed one is back within five minutes.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A service up this long has its backoff reset: twice the cap, as the kubelet does, so
/// that a process that crashes every few minutes never gets back to the 1 s pace.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// How long a service must have stayed up after a switch (at least; `minReadySeconds` when
/// longer) before the machine counts as available. A process that cannot bind its port or
/// read its config exits within milliseconds; 3 s outlasts that and the first 1 s restart,
/// so a crash at start-up is always seen before the switch is called done.
pub const MIN_SERVICE_UPTIME: Duration = Duration::from_secs(3);

/// Exits after a switch, before the switch is done, that make the version a failure on
/// this machine (`ServiceCrashLoop`). One exit can be a race at start (a port not yet
/// released); three in a row, spread over at least 3 s of backoff (1 s + 2 s), are the
/// version itself. With an instant crash they come about 3 s after the switch, well
/// inside any health deadline, so the rollout learns of it before it waits for anything.
pub const CRASH_LOOP_EXITS: u32 = 3;

/// How to run one service.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// Shell and environment, the same as the hooks get.
    pub env: HookEnv,
    pub command: String,
    /// `<path>/current`: the service always runs from whatever `current` points at.
    pub cwd: PathBuf,
    /// `<root>/logs/<namespace>_<app>.log`, appended to, when `env` has no log (which
    /// takes the output stamped, line by line, when it has one).
    pub log: PathBuf,
    /// Time between SIGTERM and SIGKILL of the process group.
    pub stop_timeout: Duration,
    /// For log lines: `namespace/app`.
    pub name: String,
}

/// The supervised process as last seen, published on every change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceState {
    /// Since when the process has been up, on the monotonic clock (uptime rules read it);
    /// `None` while it is not running.
    pub up_since: Option<Instant>,
    /// What the Instance status reports.
    pub status: ServiceStatus,
}

enum Msg {
    /// Stop the running process and start `spec` (which may carry a new version's env).
    Restart(Box<ServiceSpec>, oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
}

/// Handle on a supervised service. Dropping it stops the service in the background.
pub struct Supervisor {
    tx: mpsc::Sender<Msg>,
    state: watch::Receiver<ServiceState>,
}

impl Supervisor {
    /// Starts the service now and keeps it running.
    pub fn start(spec: ServiceSpec) -> Supervisor {
        let (tx, rx) = mpsc::channel(4);
        let (state_tx, state) = watch::channel(ServiceState::default());
        tokio::spawn(supervise(spec, rx, state_tx));
        Supervisor { tx, state }
    }

    /// Stops the running process (SIGTERM, then SIGKILL after the stop timeout) and starts
    /// it again with `spec`, its restart count back at 0. Returns once the new process
    /// has been started (and its state published).
    pub async fn restart(&self, spec: ServiceSpec) {
        let (ack, done) = oneshot::channel();
        if self
            .tx
            .send(Msg::Restart(Box::new(spec), ack))
            .await
            .is_ok()
        {
            let _ = done.await;
        }
    }

    /// Stops the service and waits until its process group is gone.
    pub async fn stop(self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Stop(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// The process state, updated on every start and exit.
    pub fn state(&self) -> watch::Receiver<ServiceState> {
        self.state.clone()
    }
}

fn spawn(spec: &ServiceSpec) -> std::io::Result<tokio::process::Child> {
    if let Some(log) = &spec.env.log {
        let mut c = spec.env.command(&spec.command, &spec.cwd);
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let mut child = c.spawn()?;
        super::logs::capture_service(log.clone(), spec.env.version().to_string(), &mut child);
        return Ok(child);
    }
    if let Some(dir) = spec.log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)?;
    let mut c = spec.env.command(&spec.command, &spec.cwd);
    c.stdout(log.try_clone()?).stderr(log).kill_on_drop(false);
    c.spawn()
}

/// SIGTERM to the group, SIGKILL after `timeout`; waits for the main process.
async fn stop_child(child: &mut tokio::process::Child, timeout: Duration) {
    let Some(pid) = child.id() else { return };
    let pgid = pid as i32;
    kill_group(pgid, Signal::SIGTERM);
    if tokio::time::timeout(timeout, child.wait()).await.is_err() {
        kill_group(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Anything of the group that ignored SIGTERM while the main process obeyed it.
    kill_group(pgid, Signal::SIGKILL);
}

/// How a process ended, for the status.
fn exit_of(status: std::io::Result<std::process::ExitStatus>) -> ServiceExit {
    use std::os::unix::process::ExitStatusExt as _;
    let time = Utc::now();
    match status {
        Ok(st) => match (st.code(), st.signal()) {
            (Some(code), _) => ServiceExit {
                exit_code: Some(code),
                signal: None,
                message: format!("exited with status {code}"),
                time,
            },
            (None, Some(sig)) => {
                let name = Signal::try_from(sig)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {sig}"));
                ServiceExit {
                    exit_code: None,
                    message: format!("killed by {name}"),
                    signal: Some(name),
                    time,
                }
            }
            (None, None) => ServiceExit {
                exit_code: None,
                signal: None,
                message: format!("ended: {st}"),
                time,
            },
        },
        Err(e) => ServiceExit {
            exit_code: None,
            signal: None,
            message: format!("cannot wait for it: {e}"),
            time,
        },
    }
}

/// What the supervisor does after a message from its handle.
enum Next {
    Run(Box<ServiceSpec>, oneshot::Sender<()>),
    End,
}

fn on_message(msg: Option<Msg>, name: &str) -> Next {
    match msg {
        Some(Msg::Restart(new, ack)) => {
            tracing::info!(service = %name, "service restarting");
            Next::Run(new, ack)
        }
        Some(Msg::Stop(ack)) => {
            tracing::info!(service = %name, "service stopped");
            let _ = ack.send(());
            Next::End
        }
        None => Next::End,
    }
}

async fn supervise(
    mut spec: ServiceSpec,
    mut rx: mpsc::Receiver<Msg>,
    state: watch::Sender<ServiceState>,
) {
    let mut backoff = Backoff::default();
    let mut pending_ack: Option<oneshot::Sender<()>> = None;
    loop {
        let started = Instant::now();
        let exit = match spawn(&spec) {
            Ok(mut child) => {
                tracing::info!(service = %spec.name, pid = ?child.id(), "service started");
                state.send_modify(|s| {
                    s.up_since = Some(started);
                    s.status.running = true;
                    s.status.started_at = Some(Utc::now());
                    s.status.next_restart_at = None;
                });
                if let Some(ack) = pending_ack.take() {
                    let _ = ack.send(());
                }
                tokio::select! {
                    status = child.wait() => {
                        if let Some(pid) = child.id() {
                            kill_group(pid as i32, Signal::SIGKILL);
                        }
                        exit_of(status)
                    }
                    msg = rx.recv() => {
                        stop_child(&mut child, spec.stop_timeout).await;
                        match on_message(msg, &spec.name) {
                            Next::Run(new, ack) => {
                                spec = *new;
                                pending_ack = Some(ack);
                                backoff = Backoff::default();
                                state.send_replace(ServiceState::default());
                                continue;
                            }
                            Next::End => return,
                        }
                    }
                }
            }
            Err(e) => ServiceExit {
                exit_code: None,
                signal: None,
                message: format!("cannot start: {e}"),
                time: Utc::now(),
            },
        };
        let delay = backoff.after_exit(started.elapsed());
        tracing::warn!(service = %spec.name, exit = %exit.message, restart_in = ?delay, "service exited");
        state.send_modify(|s| {
            s.up_since = None;
            s.status.running = false;
            s.status.restarts += 1;
            s.status.next_restart_at = chrono::Duration::from_std(delay)
                .ok()
                .map(|d| exit.time + d);
            s.status.last_exit = Some(exit);
        });
        crate::observe::metrics().service_restarted();
        // A start that failed still answers a restart request: it was carried out.
        if let Some(ack) = pending_ack.take() {
            let _ = ack.send(());
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            msg = rx.recv() => match on_message(msg, &spec.name) {
                Next::Run(new, ack) => {
                    spec = *new;
                    pending_ack = Some(ack);
                    backoff = Backoff::default();
                    state.send_replace(ServiceState::default());
                }
                Next::End => return,
            }
        }
    }
}

/// The restart delays of one service: [`BACKOFF_START`] doubling to [`BACKOFF_MAX`], back
/// to the start once the process has stayed up [`BACKOFF_RESET_AFTER`].
#[derive(Debug, Default)]
struct Backoff {
    /// The delay after the next exit; `None`: [`BACKOFF_START`].
    next: Option<Duration>,
}

impl Backoff {
    /// The delay before restarting a process that ran for `uptime` and then exited.
    fn after_exit(&mut self, uptime: Duration) -> Duration {
        if uptime >= BACKOFF_RESET_AFTER {
            self.next = None;
        }
        let delay = self.next.unwrap_or(BACKOFF_START);
        self.next = Some((delay * 2).min(BACKOFF_MAX));
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::hooks::DeployVars;
    use std::path::Path;

    fn spec(dir: &Path, command: &str) -> ServiceSpec {
        ServiceSpec {
            env: HookEnv::new(
                None,
                &Default::default(),
                &DeployVars {
                    app: "api",
                    namespace: "prod",
                    version: "1.0",
                    previous_version: None,
                    release_dir: dir,
                    path: dir,
                    machine: "m1",
                },
            ),
            command: command.to_string(),
            cwd: dir.to_path_buf(),
            log: dir.join("logs/prod_api.log"),
            stop_timeout: Duration::from_secs(1),
            name: "prod/api".into(),
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => !s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z'),
            Err(_) => false,
        }
    }

    #[test]
    fn backoff_should_double_from_1s_to_5min_and_reset_after_ten_minutes_up() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..12)
            .map(|_| b.after_exit(Duration::from_secs(2)).as_secs())
            .collect();
        assert_eq!(
            delays,
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
        );
        // Up nine minutes: still crashing, still slow.
        assert_eq!(b.after_exit(Duration::from_secs(540)).as_secs(), 300);
        // Up ten minutes: back to the start, then doubling again.
        assert_eq!(b.after_exit(BACKOFF_RESET_AFTER).as_secs(), 1);
        assert_eq!(b.after_exit(Duration::ZERO).as_secs(), 2);
    }

    #[tokio::test]
    async fn a_service_that_exits_should_be_restarted_and_log_to_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let sup = Supervisor::start(spec(
            dir.path(),
            "echo hello $DEPLOY_VERSION; echo run >> count",
        ));
        let log_path = dir.path().join("logs/prod_api.log");
        wait_for("a restart, logged", || {
            lines(&count).len() >= 2 && lines(&log_path).len() >= 2
        })
        .await;
        sup.stop().await;
        let log = lines(&log_path);
        assert!(
            log.len() >= 2 && log.iter().all(|l| l == "hello 1.0"),
            "{log:?}"
        );
    }

    #[tokio::test]
    async fn a_logged_service_should_write_its_output_stamped_into_the_application_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::sync::Arc::new(crate::agent::logs::AppLog::new(
            dir.path().join("app-logs"),
            crate::agent::logs::ROTATE_BYTES,
        ));
        let mut s = spec(
            dir.path(),
            "echo up $DEPLOY_VERSION; echo oops >&2; sleep 100",
        );
        s.env = s.env.with_log(log.clone());
        let sup = Supervisor::start(s);
        wait_for("both lines logged", || {
            log.tail(Some("service"), 10).len() == 2
        })
        .await;
        sup.stop().await;
        let mut seen: Vec<(String, String, crate::agent::logs::Stream)> = log
            .tail(Some("service"), 10)
            .into_iter()
            .map(|l| (l.text, l.version, l.stream))
            .collect();
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        use crate::agent::logs::Stream::{Stderr, Stdout};
        assert_eq!(
            seen,
            [
                ("oops".to_string(), "1.0".to_string(), Stderr),
                ("up 1.0".to_string(), "1.0".to_string(), Stdout),
            ]
        );
        assert!(!dir.path().join("logs/prod_api.log").exists());
    }

    #[tokio::test]
    async fn restart_and_stop_should_end_the_old_process_group_even_if_it_ignores_sigterm() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // The child ignores SIGTERM, so only the SIGKILL after stop_timeout ends it.
        let cmd = "trap '' TERM; sleep 100 & echo $! >> pids; wait";
        let sup = Supervisor::start(spec(dir.path(), cmd));
        wait_for("first start", || lines(&pids).len() == 1).await;
        let first: i32 = lines(&pids)[0].parse().unwrap();
        sup.restart(spec(dir.path(), cmd)).await;
        wait_for("second start", || lines(&pids).len() == 2).await;
        wait_for("old grandchild gone", || !alive(first)).await;
        let second: i32 = lines(&pids)[1].parse().unwrap();
        assert!(alive(second));
        sup.stop().await;
        wait_for("service gone after stop", || !alive(second)).await;
    }
}

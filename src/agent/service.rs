//! Keeps an Instance's service command running from `current`: restarted with backoff
//! when it exits, restarted on demand (every switch), stopped on shutdown.

use super::hooks::{kill_group, HookEnv};
use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// First delay before restarting a service that exited.
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A service up this long has its backoff reset.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);

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

enum Msg {
    /// Stop the running process and start `spec` (which may carry a new version's env).
    Restart(Box<ServiceSpec>, oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
}

/// Handle on a supervised service. Dropping it stops the service in the background.
pub struct Supervisor {
    tx: mpsc::Sender<Msg>,
}

impl Supervisor {
    /// Starts the service now and keeps it running.
    pub fn start(spec: ServiceSpec) -> Supervisor {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(supervise(spec, rx));
        Supervisor { tx }
    }

    /// Stops the running process (SIGTERM, then SIGKILL after the stop timeout) and starts
    /// it again with `spec`. Returns once the new process has been started.
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

async fn supervise(mut spec: ServiceSpec, mut rx: mpsc::Receiver<Msg>) {
    let mut backoff = BACKOFF_START;
    let mut pending_ack: Option<oneshot::Sender<()>> = None;
    loop {
        let started = Instant::now();
        let child = spawn(&spec);
        if let Some(ack) = pending_ack.take() {
            let _ = ack.send(());
        }
        match child {
            Ok(mut child) => {
                tracing::info!(service = %spec.name, pid = ?child.id(), "service started");
                tokio::select! {
                    status = child.wait() => {
                        tracing::warn!(service = %spec.name, status = ?status, "service exited");
                        if let Some(pid) = child.id() {
                            kill_group(pid as i32, Signal::SIGKILL);
                        }
                    }
                    msg = rx.recv() => {
                        stop_child(&mut child, spec.stop_timeout).await;
                        match msg {
                            Some(Msg::Restart(new, ack)) => {
                                tracing::info!(service = %spec.name, "service restarting");
                                spec = *new;
                                pending_ack = Some(ack);
                                backoff = BACKOFF_START;
                                continue;
                            }
                            Some(Msg::Stop(ack)) => {
                                tracing::info!(service = %spec.name, "service stopped");
                                let _ = ack.send(());
                                return;
                            }
                            None => return,
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(service = %spec.name, error = %e, "cannot start service");
            }
        }
        backoff = backoff_after_exit(backoff, started.elapsed());
        tracing::info!(service = %spec.name, ?backoff, "restarting service after backoff");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            msg = rx.recv() => match msg {
                Some(Msg::Restart(new, ack)) => {
                    spec = *new;
                    pending_ack = Some(ack);
                    backoff = BACKOFF_START;
                    continue;
                }
                Some(Msg::Stop(ack)) => {
                    let _ = ack.send(());
                    return;
                }
                None => return,
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The delay before restarting a service that ran for `uptime` and then exited, given
/// the delay used last time (already doubled): back to the start after a long run.
fn backoff_after_exit(current: Duration, uptime: Duration) -> Duration {
    if uptime >= BACKOFF_RESET_AFTER {
        BACKOFF_START
    } else {
        current.min(BACKOFF_MAX)
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
    fn backoff_should_double_to_30s_and_reset_after_a_minute_up() {
        let mut delays = Vec::new();
        let mut b = BACKOFF_START;
        for _ in 0..7 {
            b = backoff_after_exit(b, Duration::from_secs(1));
            delays.push(b.as_secs());
            b = (b * 2).min(BACKOFF_MAX);
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(
            backoff_after_exit(BACKOFF_MAX, Duration::from_secs(60)),
            BACKOFF_START
        );
    }

    #[tokio::test]
    async fn a_service_that_exits_should_be_restarted_and_log_to_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let sup = Supervisor::start(spec(
            dir.path(),
            "echo run >> count; echo hello $DEPLOY_VERSION",
        ));
        wait_for("a restart", || lines(&count).len() >= 2).await;
        sup.stop().await;
        let log = lines(&dir.path().join("logs/prod_api.log"));
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

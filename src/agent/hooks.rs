//! Runs hook commands in their own process group, with `DEPLOY_*` values passed only as
//! environment variables, a timeout that kills the whole group, and an output tail; with
//! a log, every line also goes to the application's log on disk ([`super::logs`]).

use super::logs::{self, AppLog, Stream};
use crate::api::Command;
use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Lines of hook output kept for the Instance status.
pub const TAIL_LINES: usize = 20;
/// The longest line of hook output kept, in bytes: the rest of a longer line is counted
/// and dropped, so that a hook printing without newlines cannot grow the agent's memory
/// or the Instance status.
pub const MAX_LINE_BYTES: usize = 2048;
/// The most `getVersion` may print on stdout; a version is a short word.
pub const MAX_VERSION_OUTPUT: usize = 64 * 1024;

/// Why a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{label} hook {command:?} failed: {status}")]
    Failed {
        label: String,
        command: String,
        status: String,
        /// The exit code, when the command exited rather than died of a signal.
        code: Option<i32>,
        tail: Vec<String>,
    },
    #[error("{label} hook {command:?} timed out after {seconds}s; its process group was killed")]
    Timeout {
        label: String,
        command: String,
        seconds: u32,
        tail: Vec<String>,
    },
    #[error("cannot start {label} hook {command:?} with shell {shell:?}: {message}")]
    Spawn {
        label: String,
        command: String,
        shell: Vec<String>,
        message: String,
    },
}

impl HookError {
    /// `HookFailed` or `HookTimeout`, as recorded in the Instance status.
    pub fn reason(&self) -> &'static str {
        match self {
            HookError::Timeout { .. } => "HookTimeout",
            _ => "HookFailed",
        }
    }

    /// The last lines of output before the failure.
    pub fn tail(&self) -> &[String] {
        match self {
            HookError::Failed { tail, .. } | HookError::Timeout { tail, .. } => tail,
            HookError::Spawn { .. } => &[],
        }
    }
}

/// What every command of one Instance runs with: the shell and the environment.
#[derive(Clone, Debug)]
pub struct HookEnv {
    /// Program and leading arguments; the command text is appended as the last argument.
    pub shell: Vec<String>,
    /// The Application's `env` plus `DEPLOY_*` (which win on a clash).
    pub vars: BTreeMap<String, String>,
    /// Where the output of the hooks named in [`logs::SOURCES`] and of the service is
    /// kept on disk; `None` keeps only the tail in memory.
    pub log: Option<Arc<AppLog>>,
}

/// The values a deploy step describes. Each becomes one `DEPLOY_*` variable.
pub struct DeployVars<'a> {
    pub app: &'a str,
    pub namespace: &'a str,
    pub version: &'a str,
    pub previous_version: Option<&'a str>,
    pub release_dir: &'a Path,
    pub path: &'a Path,
    pub machine: &'a str,
}

impl HookEnv {
    pub fn new(
        shell: Option<&[String]>,
        app_env: &BTreeMap<String, String>,
        d: &DeployVars,
    ) -> HookEnv {
        let shell = match shell {
            Some(s) if !s.is_empty() => s.to_vec(),
            _ => vec!["/bin/sh".to_string(), "-c".to_string()],
        };
        let mut vars = app_env.clone();
        for (k, v) in [
            ("DEPLOY_APP", d.app.to_string()),
            ("DEPLOY_NAMESPACE", d.namespace.to_string()),
            ("DEPLOY_VERSION", d.version.to_string()),
            (
                "DEPLOY_PREVIOUS_VERSION",
                d.previous_version.unwrap_or("").to_string(),
            ),
            ("DEPLOY_RELEASE_DIR", d.release_dir.display().to_string()),
            ("DEPLOY_PATH", d.path.display().to_string()),
            ("DEPLOY_MACHINE", d.machine.to_string()),
        ] {
            vars.insert(k.to_string(), v);
        }
        HookEnv {
            shell,
            vars,
            log: None,
        }
    }

    /// The same, with every line of output of the hooks (and the service) in `log`.
    pub fn with_log(mut self, log: Arc<AppLog>) -> HookEnv {
        self.log = Some(log);
        self
    }

    /// The version the commands run for (`DEPLOY_VERSION`), as log lines name it.
    pub fn version(&self) -> &str {
        self.vars.get("DEPLOY_VERSION").map_or("", String::as_str)
    }

    /// Keeps one line of `label`'s output: in the tail, and in the log when `label` is
    /// one of [`logs::SOURCES`].
    fn record(&self, tail: &mut VecDeque<String>, label: &str, stream: Stream, line: String) {
        if let Some(log) = &self.log {
            if logs::SOURCES.contains(&label) {
                log.write(label, self.version(), stream, &line);
            }
        }
        push_line(tail, label, line);
    }

    /// A process for `text` in `cwd`, in its own process group (so that a timeout or a
    /// stop can signal every descendant), killed if the future running it is dropped.
    pub fn command(&self, text: &str, cwd: &Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.shell[0]);
        c.args(&self.shell[1..])
            .arg(text)
            .current_dir(cwd)
            .envs(&self.vars)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        c
    }
}

/// SIGKILLs a process group when dropped, unless disarmed: a hook whose future is dropped
/// (agent shutdown) must not leave its children running.
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            kill_group(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `signal` to the process group `pgid`; a group already gone is fine.
pub fn kill_group(pgid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal);
}

fn push_line(tail: &mut VecDeque<String>, label: &str, line: String) {
    tracing::info!(hook = label, "{line}");
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(line);
}

/// Splits output into lines of at most [`MAX_LINE_BYTES`]; a longer line keeps its
/// start and says how much was cut. Memory stays bounded whatever the hook prints.
/// `next_line` is cancel-safe: a partial line stays here until its newline comes.
pub struct BoundedLines<R> {
    reader: R,
    line: Vec<u8>,
    cut: usize,
}

impl<R: AsyncBufRead + Unpin> BoundedLines<R> {
    pub fn new(reader: R) -> Self {
        BoundedLines {
            reader,
            line: Vec::new(),
            cut: 0,
        }
    }

    /// The next line (without its newline, `\r` trimmed), or `None` at end of input.
    pub async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            let avail = self.reader.fill_buf().await?;
            if avail.is_empty() {
                if self.line.is_empty() && self.cut == 0 {
                    return Ok(None);
                }
                return Ok(Some(self.take()));
            }
            let (len, newline) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (avail.len(), false),
            };
            let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
            self.line.extend_from_slice(&avail[..len.min(room)]);
            self.cut += len.saturating_sub(room);
            self.reader.consume(len + usize::from(newline));
            if newline {
                return Ok(Some(self.take()));
            }
        }
    }

    fn take(&mut self) -> String {
        let mut line = String::from_utf8_lossy(&self.line)
            .trim_end_matches('\r')
            .to_string();
        if self.cut > 0 {
            line.push_str(&format!("... [{} more bytes]", self.cut));
        }
        self.line.clear();
        self.cut = 0;
        line
    }
}

/// A close-on-exec pipe (read end, write end): hooks of other instances spawned meanwhile
/// must not inherit the write end, or this hook's output would never reach end-of-file.
/// (`std::io::pipe` does the same but needs Rust 1.87; the crate's MSRV is 1.85.)
fn cloexec_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `pipe2` writes two new descriptors into `fds` when it returns 0.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The pipes a hook's output is read from.
type HookOutput = logs::Output<
    tokio::io::BufReader<tokio::net::unix::pipe::Receiver>,
    tokio::io::BufReader<tokio::net::unix::pipe::Receiver>,
>;

/// Runs one command with stdout and stderr read in the order they come, each line also
/// logged (see [`HookEnv::record`]). Returns the last [`TAIL_LINES`] lines of output.
pub async fn run_command(
    env: &HookEnv,
    cmd: &Command,
    cwd: &Path,
    label: &str,
) -> Result<Vec<String>, HookError> {
    run_command_observed(env, cmd, cwd, label, |_| {}).await
}

/// [`run_command`], calling `started` with the process group id (the shell's pid) once
/// the command is spawned: a Task's command records it so that an agent restarted after
/// a crash can kill what it left. The timeout counts from the spawn.
pub async fn run_command_observed(
    env: &HookEnv,
    cmd: &Command,
    cwd: &Path,
    label: &str,
    started: impl FnOnce(i32),
) -> Result<Vec<String>, HookError> {
    let spawn_err = |message: String| HookError::Spawn {
        label: label.to_string(),
        command: cmd.command.clone(),
        shell: env.shell.clone(),
        message,
    };
    let (out_reader, out_writer) = cloexec_pipe().map_err(|e| spawn_err(e.to_string()))?;
    let (err_reader, err_writer) = cloexec_pipe().map_err(|e| spawn_err(e.to_string()))?;
    let mut child = {
        let mut c = env.command(&cmd.command, cwd);
        c.stdout(out_writer).stderr(err_writer);
        // `c` holds the pipes' write ends; it is dropped at the end of this block so that
        // the readers see end-of-file when the hook's processes exit.
        c.spawn().map_err(|e| spawn_err(e.to_string()))?
    };
    let mut guard = GroupGuard(child.id().map(|p| p as i32));
    if let Some(pgid) = guard.0 {
        started(pgid);
    }
    let receiver = |fd| {
        tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
            .map(tokio::io::BufReader::new)
            .map_err(|e| spawn_err(e.to_string()))
    };
    let mut lines: HookOutput = logs::Output::new(receiver(out_reader)?, receiver(err_reader)?);
    let mut tail = VecDeque::new();
    let seconds = cmd.timeout_seconds;
    let deadline = tokio::time::sleep(Duration::from_secs(u64::from(seconds)));
    tokio::pin!(deadline);
    let mut eof = false;
    let status = loop {
        tokio::select! {
            line = lines.next_line(), if !eof => match line {
                Some((stream, l)) => env.record(&mut tail, label, stream, l),
                None => eof = true,
            },
            st = child.wait() => break st,
            _ = &mut deadline => {
                guard.kill();
                let _ = child.wait().await;
                drain(env, &mut lines, &mut tail, label).await;
                return Err(HookError::Timeout {
                    label: label.to_string(),
                    command: cmd.command.clone(),
                    seconds,
                    tail: tail.into(),
                });
            }
        }
    };
    // The hook exited: children it left in the background stay (the group is not killed),
    // but their output is not waited for beyond a short grace period.
    guard.0 = None;
    if !eof {
        drain(env, &mut lines, &mut tail, label).await;
    }
    let status = status.map_err(|e| spawn_err(e.to_string()))?;
    if !status.success() {
        return Err(HookError::Failed {
            label: label.to_string(),
            command: cmd.command.clone(),
            status: status.to_string(),
            code: status.code(),
            tail: tail.into(),
        });
    }
    Ok(tail.into())
}

/// Reads what is left in the pipe, giving up after a second (a background process may
/// hold the write end open forever).
async fn drain(env: &HookEnv, lines: &mut HookOutput, tail: &mut VecDeque<String>, label: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some((stream, l)) = lines.next_line().await {
            env.record(tail, label, stream, l);
        }
    })
    .await;
}

/// Runs `cmds` in order; the first failure stops the list. Returns the output tail of
/// the last command.
pub async fn run_hooks(
    env: &HookEnv,
    cmds: &[Command],
    cwd: &Path,
    label: &'static str,
) -> Result<Vec<String>, HookError> {
    let started = std::time::Instant::now();
    let mut tail = Vec::new();
    let ran = async {
        for cmd in cmds {
            tail = run_command(env, cmd, cwd, label).await?;
        }
        Ok(())
    }
    .await;
    if !cmds.is_empty() {
        crate::observe::metrics().hook_ran(label, started.elapsed());
    }
    ran.map(|()| tail)
}

/// Runs a command and returns its stdout (stderr is logged, its last lines kept for a
/// failure), for `getVersion`. Stdout past [`MAX_VERSION_OUTPUT`] fails the command;
/// memory stays bounded whatever it prints.
pub async fn capture_stdout(
    env: &HookEnv,
    cmd: &Command,
    cwd: &Path,
    label: &str,
) -> Result<String, HookError> {
    let spawn_err = |message: String| HookError::Spawn {
        label: label.to_string(),
        command: cmd.command.clone(),
        shell: env.shell.clone(),
        message,
    };
    let mut c = env.command(&cmd.command, cwd);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| spawn_err(e.to_string()))?;
    let mut guard = GroupGuard(child.id().map(|p| p as i32));
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(spawn_err("no pipes for stdout and stderr".into()));
    };
    let secs = cmd.timeout_seconds;
    let run = async {
        // Read one byte past the limit to tell "at the limit" from "over it"; then keep
        // reading (and dropping) so that the command never blocks on a full pipe.
        let read_stdout = async {
            let mut out = Vec::new();
            let mut stdout = stdout;
            (&mut stdout)
                .take(MAX_VERSION_OUTPUT as u64 + 1)
                .read_to_end(&mut out)
                .await?;
            tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await?;
            Ok::<_, std::io::Error>(out)
        };
        let read_stderr = async {
            let mut lines = BoundedLines::new(tokio::io::BufReader::new(stderr));
            let mut tail = VecDeque::new();
            while let Ok(Some(l)) = lines.next_line().await {
                push_line(&mut tail, label, l);
            }
            tail
        };
        let (out, tail) = tokio::join!(read_stdout, read_stderr);
        let status = child.wait().await;
        (out, tail, status)
    };
    let (out, tail, status) =
        match tokio::time::timeout(Duration::from_secs(u64::from(secs)), run).await {
            Ok(done) => done,
            Err(_) => {
                guard.kill();
                return Err(HookError::Timeout {
                    label: label.to_string(),
                    command: cmd.command.clone(),
                    seconds: secs,
                    tail: vec![],
                });
            }
        };
    guard.0 = None;
    let status = status.map_err(|e| spawn_err(e.to_string()))?;
    let out = out.map_err(|e| spawn_err(e.to_string()))?;
    if !status.success() {
        return Err(HookError::Failed {
            label: label.to_string(),
            command: cmd.command.clone(),
            status: status.to_string(),
            code: status.code(),
            tail: tail.into(),
        });
    }
    if out.len() > MAX_VERSION_OUTPUT {
        return Err(HookError::Failed {
            label: label.to_string(),
            command: cmd.command.clone(),
            status: format!("printed more than {MAX_VERSION_OUTPUT} bytes on stdout"),
            code: None,
            tail: tail.into(),
        });
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A release dir path for `DEPLOY_RELEASE_DIR`, as a convenience for callers.
pub fn release_dir(path: &Path, version: &str) -> PathBuf {
    path.join("releases").join(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_in(dir: &Path, extra: &[(&str, &str)]) -> HookEnv {
        let app_env = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HookEnv::new(
            None,
            &app_env,
            &DeployVars {
                app: "api",
                namespace: "prod",
                version: "1.0",
                previous_version: None,
                release_dir: &dir.join("releases/1.0"),
                path: dir,
                machine: "m1",
            },
        )
    }

    fn cmd(text: &str, timeout_seconds: u32) -> Command {
        Command {
            command: text.to_string(),
            timeout_seconds,
        }
    }

    #[tokio::test]
    async fn env_values_with_shell_metacharacters_should_never_be_interpreted() {
        let dir = tempfile::tempdir().unwrap();
        let nasty = "$(touch pwned1); `touch pwned2` && touch pwned3 | x > pwned4 '\"";
        let env = env_in(dir.path(), &[("NASTY", nasty)]);
        let out = run_command(
            &env,
            &cmd(r#"printf '%s\n' "$NASTY" "$DEPLOY_APP/$DEPLOY_NAMESPACE/$DEPLOY_VERSION/[$DEPLOY_PREVIOUS_VERSION]/$DEPLOY_MACHINE""#, 10),
            dir.path(),
            "install",
        )
        .await
        .unwrap();
        assert_eq!(
            out,
            vec![nasty.to_string(), "api/prod/1.0/[]/m1".to_string()]
        );
        for f in ["pwned1", "pwned2", "pwned3", "pwned4"] {
            assert!(
                !dir.path().join(f).exists(),
                "{f} was created: the value ran as shell"
            );
        }
    }

    #[tokio::test]
    async fn a_failing_hook_should_report_its_status_and_the_last_20_lines_interleaved() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_in(dir.path(), &[]);
        let err = run_command(
            &env,
            &cmd(
                "for i in $(seq 1 30); do echo out$i; echo err$i >&2; done; exit 3",
                10,
            ),
            dir.path(),
            "activate",
        )
        .await
        .expect_err("exit 3 fails");
        assert_eq!(err.reason(), "HookFailed");
        assert!(err.to_string().contains("exit status: 3"), "{err}");
        let tail = err.tail();
        assert_eq!(tail.len(), 20);
        // stdout and stderr come through two pipes (so that the logs can say which): each
        // stream keeps its order, but lines written back to back can be read several
        // lines apart across the two streams (ARCHITECTURE.md, `deployctl logs`).
        assert!(tail.contains(&"out30".to_string()), "{tail:?}");
        assert!(tail.contains(&"err30".to_string()), "{tail:?}");
        for stream in ["out", "err"] {
            let numbers: Vec<u32> = tail
                .iter()
                .filter_map(|l| l.strip_prefix(stream)?.parse().ok())
                .collect();
            assert!(!numbers.is_empty(), "{stream}: {tail:?}");
            assert!(
                numbers.windows(2).all(|w| w[0] < w[1]),
                "{stream}: {tail:?}"
            );
        }
    }

    fn alive(pid: i32) -> bool {
        // A zombie (not yet reaped by init) counts as dead.
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

    #[tokio::test]
    async fn a_timeout_should_kill_the_whole_process_group_with_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_in(dir.path(), &[]);
        let pidfile = dir.path().join("pid");
        let err = run_command(
            &env,
            &cmd("sleep 100 & echo $! > pid; echo started; wait", 1),
            dir.path(),
            "activate",
        )
        .await
        .expect_err("the hook outlives its timeout");
        assert_eq!(err.reason(), "HookTimeout");
        assert_eq!(err.tail(), ["started"]);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "grandchild {pid} survived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn hooks_should_run_in_order_and_stop_at_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_in(dir.path(), &[]);
        let cmds = [
            cmd("echo a >> log", 5),
            cmd("false", 5),
            cmd("echo c >> log", 5),
        ];
        assert!(run_hooks(&env, &cmds, dir.path(), "install").await.is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("log")).unwrap(),
            "a\n"
        );
    }

    #[tokio::test]
    async fn capture_stdout_should_return_only_stdout() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_in(dir.path(), &[]);
        let out = capture_stdout(
            &env,
            &cmd("echo 1.0; echo noise >&2", 5),
            dir.path(),
            "getVersion",
        )
        .await
        .unwrap();
        assert_eq!(out.trim(), "1.0");
    }

    /// Hook output is input from the machine: a hook that prints megabytes without a
    /// newline must not grow the agent's memory or the Instance status.
    #[tokio::test]
    async fn a_hook_printing_huge_lines_should_keep_each_line_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_in(dir.path(), &[]);
        let tail = run_command(
            &env,
            &cmd("head -c 5000000 /dev/zero | tr '\\0' x; echo; echo after; printf tail-without-newline", 30),
            dir.path(),
            "install",
        )
        .await
        .unwrap();
        assert_eq!(
            tail.len(),
            3,
            "{:?}",
            tail.iter().map(String::len).collect::<Vec<_>>()
        );
        assert!(
            tail[0].starts_with(&"x".repeat(MAX_LINE_BYTES)),
            "kept the start"
        );
        assert!(
            tail[0].ends_with(&format!("... [{} more bytes]", 5_000_000 - MAX_LINE_BYTES)),
            "{}",
            &tail[0][MAX_LINE_BYTES..]
        );
        assert_eq!(tail[1], "after");
        assert_eq!(tail[2], "tail-without-newline");
    }

    /// The hook waits until its stdout line is in the log before it writes to stderr, so
    /// the order it wrote in is the order the log must show.
    #[tokio::test]
    async fn a_logged_hook_should_keep_stdout_and_stderr_stamped_and_in_order_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AppLog::new(dir.path().join("logs"), logs::ROTATE_BYTES));
        let env = env_in(dir.path(), &[]).with_log(log.clone());
        let script = r#"echo out-1; until grep -q out-1 logs/install.log 2>/dev/null; do sleep 0.01; done
echo err-2 >&2; until grep -q err-2 logs/install.log; do sleep 0.01; done
echo out-3; exit 4"#;
        let err = run_command(&env, &cmd(script, 10), dir.path(), "install")
            .await
            .expect_err("exit 4 fails");
        assert_eq!(err.tail(), ["out-1", "err-2", "out-3"]);
        let lines = log.tail(Some("install"), 10);
        let seen: Vec<(Stream, &str, &str)> = lines
            .iter()
            .map(|l| (l.stream, l.version.as_str(), l.text.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (Stream::Stdout, "1.0", "out-1"),
                (Stream::Stderr, "1.0", "err-2"),
                (Stream::Stdout, "1.0", "out-3"),
            ]
        );
        // A health check's output is not a deploy hook's: kept in the tail, not logged.
        run_command(&env, &cmd("echo probe", 5), dir.path(), "healthCheck")
            .await
            .unwrap();
        assert!(log.tail(None, 10).iter().all(|l| l.text != "probe"));
    }

    #[tokio::test]
    async fn get_version_printing_too_much_should_fail_with_the_limit_named() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_in(dir.path(), &[]);
        let err = capture_stdout(
            &env,
            &cmd("head -c 10000000 /dev/zero; echo oops >&2", 30),
            dir.path(),
            "getVersion",
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("printed more than {MAX_VERSION_OUTPUT} bytes")),
            "{err}"
        );
        assert_eq!(err.tail(), ["oops"]);
    }
}

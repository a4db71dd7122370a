//! Harness for end-to-end tests of the built `deployctl` binary: run it to completion,
//! spawn long-running ones (`get -w`, `controller`, `agent`) and wait for their output
//! lines with a deadline, against a throwaway embedded store or a real etcd.

#![allow(dead_code)] // shared by several test files; not every one uses every helper

use deployctl::testing::EtcdServer;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long any awaited output may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_deployctl")
}

/// A store for one test: the URL given to `--store`, and what keeps it alive.
pub enum Backend {
    Embedded(tempfile::TempDir),
    Etcd(EtcdServer),
}

impl Backend {
    pub fn embedded() -> Backend {
        Backend::Embedded(
            tempfile::Builder::new()
                .prefix("deployctl-e2e-")
                .tempdir()
                .expect("can create a temporary dir"),
        )
    }

    /// A real etcd; fails the test (with the install hint) when etcd is missing.
    pub fn etcd() -> Backend {
        Backend::Etcd(EtcdServer::start())
    }

    /// Both backends, named for failure messages.
    pub fn all() -> Vec<(&'static str, Backend)> {
        vec![("embedded", Backend::embedded()), ("etcd", Backend::etcd())]
    }

    pub fn url(&self) -> String {
        match self {
            Backend::Embedded(dir) => dir.path().join("store.db").display().to_string(),
            Backend::Etcd(e) => e.url(),
        }
    }

    /// A typed client on the same store, for a test to write what other parts of the
    /// system (controller, agents) would write.
    pub async fn client(&self) -> deployctl::store::Client {
        let url = deployctl::store::StoreUrl::parse(Some(&self.url())).expect("test URLs parse");
        deployctl::store::Client::new(url.connect().await.expect("test store connects"))
    }
}

/// What a finished run printed.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics with everything printed unless the run exited 0.
    pub fn ok(self) -> Output {
        assert_eq!(
            self.code, 0,
            "deployctl failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Panics unless the run exited with `code`.
    pub fn code(self, code: i32) -> Output {
        assert_eq!(
            self.code, code,
            "unexpected exit status:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

fn command(store: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("DEPLOYCTL_STORE", store)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// Runs `deployctl ARGS` against `store` to completion.
pub fn run(store: &str, args: &[&str]) -> Output {
    run_with_stdin(store, args, None)
}

/// Runs `deployctl ARGS` with `input` on stdin.
pub fn run_with_stdin(store: &str, args: &[&str], input: Option<&str>) -> Output {
    finish(command(store, args), input)
}

/// Runs `deployctl ARGS` with these environment variables set (`None`: removed), e.g.
/// the `EDITOR` of `deployctl edit`.
pub fn run_with_env(store: &str, args: &[&str], env: &[(&str, Option<&str>)]) -> Output {
    let mut cmd = command(store, args);
    for (name, value) in env {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    finish(cmd, None)
}

fn finish(mut cmd: Command, input: Option<&str>) -> Output {
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin()));
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        stdin
            .write_all(text.as_bytes())
            .expect("can write to deployctl's stdin");
    }
    let out = child
        .wait_with_output()
        .expect("deployctl runs to completion");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `deployctl` whose stdout and stderr lines arrive on channels. Killed on drop.
pub struct Spawned {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every stdout line received so far, for failure messages.
    pub seen: Vec<String>,
}

fn pump(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts `deployctl ARGS` against `store` in the background.
pub fn spawn(store: &str, args: &[&str]) -> Spawned {
    let mut child = command(store, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin()));
    let stdout = pump(child.stdout.take().expect("stdout was piped"));
    let stderr = pump(child.stderr.take().expect("stderr was piped"));
    Spawned {
        child,
        stdout,
        stderr,
        seen: Vec::new(),
    }
}

impl Spawned {
    /// Waits for a stdout line matching `pred`, up to [`DEADLINE`]; panics with every line
    /// seen (and stderr) when none comes.
    pub fn wait_for_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "no line {what} within {DEADLINE:?} (exit: {status:?})\nstdout:\n{}\nstderr:\n{}",
                        self.seen.join("\n"),
                        self.stderr_so_far()
                    );
                }
            }
        }
    }

    /// Whatever stderr printed so far.
    pub fn stderr_so_far(&self) -> String {
        let mut lines = Vec::new();
        while let Ok(l) = self.stderr.try_recv() {
            lines.push(l);
        }
        lines.join("\n")
    }

    /// Waits (up to [`DEADLINE`]) for the process to exit by itself; its exit code and
    /// every stdout line it printed (those seen before included). `None`: still running.
    pub fn exit_by_itself(&mut self) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + DEADLINE;
        let code = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status.code();
            }
            if Instant::now() >= deadline {
                return (None, self.seen.clone());
            }
            std::thread::sleep(Duration::from_millis(20)); // polling the exit, not a sync stand-in
        };
        // The pump thread ends at end of file: every line is on the channel then.
        while let Ok(line) = self.stdout.recv_timeout(DEADLINE) {
            self.seen.push(line);
        }
        (code, self.seen.clone())
    }

    /// Sends SIGTERM and waits (up to [`DEADLINE`]) for the exit status.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20)); // polling the exit, not a sync stand-in
        }
        None
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("can create test dirs");
    }
    std::fs::write(&path, text).expect("can write test files");
    path.display().to_string()
}

/// A fresh temporary directory for manifests.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("deployctl-e2e-files-")
        .tempdir()
        .expect("can create a temporary dir")
}

/// A current-thread runtime for the test's own store calls.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

impl Spawned {
    /// Waits up to `timeout` for a stderr line matching `pred` (lines read are consumed);
    /// `None` when none came. Daemons log through tracing to stderr.
    pub fn wait_for_stderr_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if pred(&line) => return Some(line),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The next stdout line if one comes within `timeout` (kept in `seen`), else `None`.
    pub fn line_within(&mut self, timeout: Duration) -> Option<String> {
        let line = self.stdout.recv_timeout(timeout).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// The exit status if the process has ended (`Some(None)`: killed by a signal).
    pub fn try_exit(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }

    /// The child's pid, to signal it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

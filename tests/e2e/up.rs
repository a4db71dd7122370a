//! `deployctl up` and `deployctl up --demo` as a user runs them: the built binary, stdout
//! a pipe (not a terminal), a temporary state dir, on the embedded store and on etcd.

use deployctl::testing::EtcdServer;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_deployctl");
/// What the demo may take, as the task promises users.
const DEMO_DEADLINE: Duration = Duration::from_secs(120);

/// A `deployctl up` process in its own process group, its stdout read line by line.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Up {
    fn spawn(mut cmd: Command) -> Up {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .expect("the deployctl binary was built by cargo");
        let stdout = child.stdout.take().expect("stdout was piped");
        let mut stderr = child.stderr.take().expect("stderr was piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Up {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Reads stdout until a line contains `needle`; panics with the output at `deadline`.
    fn wait_line(&mut self, needle: &str, deadline: Instant) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = killpg(self.pgid(), Signal::SIGKILL);
                    panic!(
                        "no line with {needle:?} in time; stdout so far:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Waits for the exit (killing the group at `deadline`); returns the status code,
    /// all of stdout and stderr.
    fn finish(mut self, deadline: Instant) -> (Option<i32>, String, String) {
        loop {
            match self.child.try_wait().expect("waiting on deployctl up") {
                Some(status) => {
                    // The rest of stdout, unless something else still holds the pipe.
                    while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                        self.seen.push(line);
                    }
                    let stderr = self.stderr.join().unwrap_or_default();
                    return (status.code(), self.seen.join("\n"), stderr);
                }
                None if Instant::now() < deadline => {
                    while let Ok(line) = self.lines.try_recv() {
                        self.seen.push(line);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                None => {
                    let _ = killpg(self.pgid(), Signal::SIGKILL);
                    let _ = self.child.wait();
                    panic!(
                        "deployctl up did not exit in time; stdout:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }
}

/// Processes still running whose working directory or command line is under `dir`
/// (the agents' services run from `<dir>/machines/*/.../current`).
fn processes_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    let needle = dir.display().to_string();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cwd = std::fs::read_link(e.path().join("cwd"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        // A zombie or a process that exited meanwhile has neither.
        if cwd.starts_with(&needle) || cmdline.contains(&needle) {
            found.push(format!("pid {name}: cwd {cwd}, cmd {cmdline}"));
        }
    }
    found
}

/// Polls until no process runs under `dir` (they may take a moment to be reaped).
fn assert_nothing_left_under(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_under(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes left running after deployctl up exited:\n{}",
            left.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The body of `GET http://127.0.0.1:<port>/` (HTTP/1.0, the server closes).
fn http_get(port: u16) -> String {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to port {port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a positive timeout");
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .expect("sending the request");
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .expect("reading the reply");
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP reply from port {port}: {reply:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// A base port whose next `n` ports are free on loopback now, below the kernel's
/// ephemeral range: outgoing connections (every CLI call to etcd) and other tests' port-0
/// binds take ports from that range, and one of them could take a demo port between this
/// check and the demo's bind.
fn free_base_port(n: u16) -> u16 {
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.saturating_sub(n + 1).max(2048);
    let low = high.saturating_sub(10_000).max(1024);
    // Spread over the range by time and pid: parallel tests start at different places.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut seed = u64::from(nanos) ^ (u64::from(std::process::id()) << 20);
    for _ in 0..200 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let base = low + ((seed >> 33) % u64::from(high - low)) as u16;
        let all_free =
            (0..=n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no run of {n} free loopback ports found");
}

fn assert_demo_output(stdout: &str, base: u16, machines: u16) {
    for n in 1..=machines {
        let want = format!(
            "machine-{n} http://127.0.0.1:{}/ -> version 2.0.0",
            base + n
        );
        assert!(stdout.contains(&want), "no {want:?} in:\n{stdout}");
    }
    let pause = stdout
        .find("Paused, 1 of 3 machines updated")
        .unwrap_or_else(|| panic!("the demo never showed the pause after one machine:\n{stdout}"));
    let promote = stdout
        .find("==> deployctl rollout promote demo")
        .expect("the demo promotes");
    assert!(pause < promote, "promoted before the pause:\n{stdout}");
    assert!(
        stdout.contains("demo complete: 3 machines serve 2.0.0"),
        "{stdout}"
    );
}

/// The README's first command, `hack/demo`, with the binary cargo built.
#[test]
fn hack_demo_should_roll_out_two_versions_and_serve_the_second_on_every_machine() {
    let state = tempfile::tempdir().expect("temp dir");
    let base = free_base_port(3);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(root.join("hack/demo"));
    cmd.env("DEPLOYCTL", BIN)
        .env("DEPLOYCTL_DEMO_STATE", state.path())
        .env_remove("DEPLOYCTL_STORE")
        .args(["--demo-port", &base.to_string()]);
    let started = Instant::now();
    let (code, stdout, stderr) = Up::spawn(cmd).finish(started + DEMO_DEADLINE);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_demo_output(&stdout, base, 3);
    assert_nothing_left_under(state.path());
    // The artifacts and their digests are in the state dir, as the user was told.
    for v in ["1.0.0", "2.0.0"] {
        assert!(state
            .path()
            .join(format!("artifacts/demo-{v}.tar.gz.sha256"))
            .is_file());
    }
}

#[test]
fn up_demo_on_etcd_should_finish_and_serve_the_second_version() {
    let etcd = EtcdServer::start();
    let state = tempfile::tempdir().expect("temp dir");
    let base = free_base_port(3);
    let mut cmd = Command::new(BIN);
    cmd.args(["up", "--demo", "--store", &etcd.url(), "--demo-port"])
        .arg(base.to_string())
        .arg("--state-dir")
        .arg(state.path());
    let (code, stdout, stderr) = Up::spawn(cmd).finish(Instant::now() + DEMO_DEADLINE);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_demo_output(&stdout, base, 3);
    assert_nothing_left_under(state.path());
    assert!(
        !state.path().join("store.db").exists(),
        "--store etcd must not create an embedded store"
    );
}

#[test]
fn up_demo_should_fail_clearly_when_a_machine_port_is_taken() {
    let state = tempfile::tempdir().expect("temp dir");
    let base = free_base_port(3);
    // Machine-2's port is busy: its service cannot listen and exits at once, again and
    // again after each restart, so the switch fails as a crash loop.
    let _busy = std::net::TcpListener::bind(("127.0.0.1", base + 2)).expect("port was free");
    let mut cmd = Command::new(BIN);
    cmd.env_remove("DEPLOYCTL_STORE")
        .args(["up", "--demo", "--demo-timeout", "60s", "--demo-port"])
        .arg(base.to_string())
        .arg("--state-dir")
        .arg(state.path());
    let (code, stdout, stderr) = Up::spawn(cmd).finish(Instant::now() + DEMO_DEADLINE);
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        (stderr.contains("error: rollout \"demo\" paused after failures")
            || stderr.contains("error: rollout \"demo\" is degraded"))
            && stderr.contains("machine-2")
            && stderr.contains("ServiceCrashLoop"),
        "stderr:\n{stderr}"
    );
    assert!(!stdout.contains("demo complete"), "{stdout}");
    assert_nothing_left_under(state.path());
}

/// `deployctl up` on `store` (None: the embedded default in the state dir): prints the
/// next steps with the right `--store`, runs real agents that deploy the printed demo
/// manifest, refuses a second `up` on its state dir, and stops everything on SIGTERM.
fn up_should_print_next_steps_and_stop_cleanly_on_sigterm(store: Option<&str>) {
    let state = tempfile::tempdir().expect("temp dir");
    let state_dir = state.path().canonicalize().expect("temp dir resolves");
    let base = free_base_port(2);
    let mut cmd = Command::new(BIN);
    cmd.env_remove("DEPLOYCTL_STORE")
        .args(["up", "--machines", "2", "--demo-port"])
        .arg(base.to_string())
        .arg("--state-dir")
        .arg(&state_dir);
    if let Some(s) = store {
        cmd.args(["--store", s]);
    }
    let expected_store = store
        .map(str::to_string)
        .unwrap_or_else(|| state_dir.join("store.db").display().to_string());
    let mut up = Up::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    up.wait_line("Press Ctrl-C to stop everything.", deadline);
    let out = up.seen.join("\n");
    let demo = state_dir.join("demo.yaml");
    for cmd in [
        "get machines".to_string(),
        format!("apply -f {}", demo.display()),
        "get rollouts -w".to_string(),
        "set version demo 2.0.0".to_string(),
        "rollout undo demo".to_string(),
    ] {
        let want = format!("deployctl --store {expected_store} {cmd}");
        assert!(out.contains(&want), "no {want:?} in:\n{out}");
    }
    assert!(out.contains("machine-2  env=local,zone=b"), "{out}");

    // The printed command works: both machines register and turn Ready.
    loop {
        let got = Command::new(BIN)
            .args(["--store", &expected_store, "get", "machines"])
            .output()
            .expect("running deployctl get");
        let text = String::from_utf8_lossy(&got.stdout).into_owned();
        let ready = text.lines().filter(|l| l.contains(" Ready ")).count();
        if ready == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "machines never turned Ready:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The printed manifest applies and rolls out: the agents now supervise services.
    let applied = Command::new(BIN)
        .args(["--store", &expected_store, "apply", "-f"])
        .arg(&demo)
        .output()
        .expect("running deployctl apply");
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let status = Command::new(BIN)
        .args([
            "--store",
            &expected_store,
            "rollout",
            "status",
            "demo",
            "--timeout",
            "60s",
        ])
        .output()
        .expect("running deployctl rollout status");
    assert!(
        status.status.success(),
        "{}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    for n in 1..=2 {
        let port = base + n;
        let body = http_get(port);
        assert_eq!(body, "version 1.0.0\n", "machine-{n} on port {port}");
    }
    let services = processes_under(&state_dir);
    assert!(
        services.len() >= 2,
        "the two services should run from the state dir: {services:?}"
    );

    // A second `up` on the same state dir would run the same machines twice.
    let second = Command::new(BIN)
        .env_remove("DEPLOYCTL_STORE")
        .args(["up", "--machines", "2", "--state-dir"])
        .arg(&state_dir)
        .output()
        .expect("running a second deployctl up");
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another deployctl up is running")
            && err.contains(&state_dir.display().to_string()),
        "{err}"
    );

    let pgid = up.pgid();
    kill(pgid, Signal::SIGTERM).expect("deployctl up is running");
    let (code, stdout, stderr) = up.finish(Instant::now() + Duration::from_secs(30));
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.ends_with("stopped"), "{stdout}");
    // Nothing of its process group, nothing working in its state dir.
    assert_eq!(
        killpg(pgid, None),
        Err(nix::errno::Errno::ESRCH),
        "the process group of deployctl up still has members"
    );
    assert_nothing_left_under(&state_dir);
}

#[test]
fn up_on_the_embedded_store_should_print_next_steps_and_stop_cleanly_on_sigterm() {
    up_should_print_next_steps_and_stop_cleanly_on_sigterm(None);
}

#[test]
fn up_on_etcd_should_print_next_steps_and_stop_cleanly_on_sigterm() {
    let etcd = EtcdServer::start();
    up_should_print_next_steps_and_stop_cleanly_on_sigterm(Some(&etcd.url()));
}

/// The README's tour: `deployctl up` with no flags, then bare commands in another
/// terminal, which find the same (default) store.
#[test]
fn up_without_flags_should_share_the_default_store_with_bare_commands() {
    let home = tempfile::tempdir().expect("temp dir");
    let home_dir = home.path().canonicalize().expect("temp dir resolves");
    let mut cmd = Command::new(BIN);
    cmd.env_remove("DEPLOYCTL_STORE")
        .env("XDG_STATE_HOME", &home_dir)
        .args(["up", "--machines", "1"]);
    let mut up = Up::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    up.wait_line("Press Ctrl-C to stop everything.", deadline);
    let out = up.seen.join("\n");
    assert!(out.contains("\n  deployctl get machines\n"), "{out}");
    assert!(!out.contains("--store"), "{out}");
    let state_dir = home_dir.join("deployctl/up");
    assert!(
        out.contains(&format!(
            "apply -f {}",
            state_dir.join("demo.yaml").display()
        )),
        "{out}"
    );
    loop {
        let got = Command::new(BIN)
            .env_remove("DEPLOYCTL_STORE")
            .env("XDG_STATE_HOME", &home_dir)
            .args(["get", "machines"])
            .output()
            .expect("running deployctl get");
        let text = String::from_utf8_lossy(&got.stdout).into_owned();
        if text
            .lines()
            .any(|l| l.starts_with("machine-1 ") && l.contains(" Ready "))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "machine-1 never turned Ready in the default store:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(home_dir.join("deployctl/store.db").is_file());
    assert!(state_dir.join("demo.yaml").is_file());
    kill(up.pgid(), Signal::SIGTERM).expect("deployctl up is running");
    let (code, stdout, stderr) = up.finish(Instant::now() + Duration::from_secs(30));
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_nothing_left_under(&home_dir);
}

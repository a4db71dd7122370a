//! Test and benchmark support: a real etcd on free loopback ports, a throwaway
//! embedded store, and a real browser ([`browser`]).
//!
//! ```no_run
//! # async fn demo() {
//! let etcd = deployctl::testing::EtcdServer::start();
//! let store = etcd.connect().await;
//! # }
//! ```

pub mod browser;

use crate::store::embedded::EmbeddedStore;
use crate::store::etcd::EtcdStore;
use crate::store::Store;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a started etcd may take to answer its health check.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// How long a stopped etcd may take to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// Start attempts: a free port found by binding port 0 can be taken before etcd binds it.
const START_ATTEMPTS: usize = 3;

const MISSING: &str =
    "etcd not found: install it with `apt-get install etcd-server` (or run `hack/test`), or set DEPLOYCTL_TEST_ETCD to an etcd binary";

/// A private etcd for one test: free loopback ports, a temporary data dir (on tmpfs when
/// there is one), killed on drop.
pub struct EtcdServer {
    member: Member,
    /// Holds the data dir and `etcd.log`; removed on drop, after the process is gone.
    _dir: tempfile::TempDir,
}

/// One etcd process: its ports, files and flags, so that it can be started again on the
/// same ones. [`EtcdServer`] is one of these alone, [`EtcdCluster`] several.
struct Member {
    binary: PathBuf,
    name: String,
    client_port: u16,
    peer_port: u16,
    /// `--initial-cluster`: every member's name and peer URL (this one's alone for a
    /// single server). Ignored by etcd on a restart, when the data dir already exists.
    initial_cluster: String,
    /// Extra flags from [`EtcdServer::start_with_flags`], kept for `restart`.
    flags: Vec<String>,
    /// Serves clients over TLS ([`EtcdServer::start_tls`]); health is then checked on a
    /// plain-HTTP metrics port, since the client port speaks only TLS.
    tls: bool,
    metrics_port: u16,
    /// Holds `data/` and `etcd.log`.
    dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn new(binary: &Path, name: &str, dir: PathBuf, flags: &[&str], tls: bool) -> Member {
        Member {
            binary: binary.to_path_buf(),
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            initial_cluster: String::new(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            tls,
            metrics_port: free_port(),
            dir,
            child: None,
        }
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// The port that answers plain-HTTP `/health` and the JSON gateway.
    fn http_port(&self) -> u16 {
        if self.tls {
            self.metrics_port
        } else {
            self.client_port
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process; does not wait for it to answer.
    fn spawn(&mut self) -> Result<(), String> {
        let scheme = if self.tls { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer_url = self.peer_url();
        let initial_cluster = if self.initial_cluster.is_empty() {
            format!("{}={peer_url}", self.name)
        } else {
            self.initial_cluster.clone()
        };
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let log = self.log_path();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let mut command = Command::new(&self.binary);
        // If the test process dies without running Drop (killed by a timeout), etcd must
        // not live on: the kernel kills it with the thread that spawned it.
        // SAFETY: prctl is async-signal-safe and touches only the child being set up.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg("--initial-cluster-state=new")
            // Tests write transactions of hundreds of keys (etcd's default is 128).
            .arg("--max-txn-ops=10000")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .args(self.tls.then(|| {
                format!(
                    "--listen-metrics-urls=http://127.0.0.1:{}",
                    self.metrics_port
                )
            }))
            .args(&self.flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `/health` says true (etcd says so only with a leader elected), or the
    /// process exits, or the deadline passes.
    fn wait_healthy(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            let Some(child) = self.child.as_mut() else {
                return Err(format!("etcd {} is not running", self.name));
            };
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("etcd exited with {status}\n{}", self.log_tail()));
            }
            if healthy(self.http_port()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd {} did not answer on {} within {READY_DEADLINE:?}\n{}",
                    self.name,
                    self.endpoint(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.spawn()?;
        let waited = self.wait_healthy(Instant::now() + READY_DEADLINE);
        if waited.is_err() {
            self.kill();
        }
        waited
    }

    /// SIGTERM, then SIGKILL after a deadline.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP, returning once the process is stopped: the signal is delivered
    /// asynchronously, and a request sent meanwhile could still be answered.
    fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        let Some(pid) = self.pid() else { return };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let stopped = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                // The state is the first field after the parenthesised command name.
                s.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with(['T', 't']))
            });
            if stopped {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("etcd (pid {pid}) did not stop within 5 s of SIGSTOP");
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }

    /// Stops the process if it runs and starts it again on the same ports and data dir,
    /// waiting with `wait` (health, or less for a member of a cluster without quorum).
    fn restart_with(&mut self, wait: impl Fn(&mut Member) -> Result<(), String>) {
        self.stop();
        // The old process released the port when it exited; retry briefly in case the
        // kernel has not finished closing the listening socket.
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let started = self.spawn().and_then(|()| wait(self));
            match started {
                Ok(()) => return,
                Err(e) => {
                    self.kill();
                    last_error = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        panic!("etcd {} did not restart: {last_error}", self.name);
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(20);
        format!(
            "etcd log ({}):\n{}",
            self.log_path().display(),
            lines[from..].join("\n")
        )
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

impl EtcdServer {
    /// Starts etcd and waits until it answers. Panics (with the install hint) when etcd is
    /// not installed, and with its log when it does not come up.
    ///
    /// etcd is killed when this value is dropped, and also when the thread that started
    /// (or last restarted) it exits: start it from the test's own thread, not from a
    /// short-lived one such as `spawn_blocking`.
    pub fn start() -> EtcdServer {
        EtcdServer::start_with_flags(&[])
    }

    /// Like [`start`](Self::start), with more etcd flags after the harness's own (a
    /// repeated flag takes the last value: `--max-txn-ops=128` restores etcd's default).
    pub fn start_with_flags(flags: &[&str]) -> EtcdServer {
        EtcdServer::start_inner(flags, false)
    }

    /// Starts etcd serving clients only over TLS with `certs`' server certificate, and
    /// requiring a client certificate signed by `certs`' CA (`--client-cert-auth`).
    pub fn start_tls(certs: &TestCerts) -> EtcdServer {
        let flags = [
            format!("--cert-file={}", certs.server_cert().display()),
            format!("--key-file={}", certs.server_key().display()),
            format!("--trusted-ca-file={}", certs.ca().display()),
            "--client-cert-auth".to_string(),
        ];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        EtcdServer::start_inner(&flags, true)
    }

    fn start_inner(flags: &[&str], tls: bool) -> EtcdServer {
        let binary = find_etcd().unwrap_or_else(|| panic!("{MISSING}"));
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = temp_dir();
            let mut member = Member::new(&binary, "test", dir.path().to_path_buf(), flags, tls);
            match member.spawn_and_wait() {
                Ok(()) => return EtcdServer { member, _dir: dir },
                Err(e) => last_error = e,
            }
        }
        panic!("etcd did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    /// The etcd process id while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.member.pid()
    }

    /// `127.0.0.1:PORT`, as `EtcdStore::connect` takes it.
    pub fn endpoint(&self) -> String {
        self.member.endpoint()
    }

    /// `etcd://127.0.0.1:PORT` (`etcds://` when serving TLS), as `--store` takes it.
    pub fn url(&self) -> String {
        let scheme = if self.member.tls { "etcds" } else { "etcd" };
        format!("{scheme}://{}", self.endpoint())
    }

    /// The data dir: it survives `stop()` so that `restart()` keeps every key.
    pub fn data_dir(&self) -> PathBuf {
        self.member.data_dir()
    }

    /// etcd's own log (for a failing test's message).
    pub fn log_path(&self) -> PathBuf {
        self.member.log_path()
    }

    /// A store connected to this server.
    pub async fn connect(&self) -> EtcdStore {
        EtcdStore::connect(&[self.endpoint()])
            .await
            .unwrap_or_else(|e| panic!("cannot connect to test etcd: {e}\n{}", self.log_tail()))
    }

    /// Stops etcd (SIGTERM, then SIGKILL after a deadline). Ports and data are kept.
    pub fn stop(&mut self) {
        self.member.stop();
    }

    /// Kills etcd at once (a crash, not a shutdown). Ports and data are kept.
    pub fn kill(&mut self) {
        self.member.kill();
    }

    /// Freezes etcd (SIGSTOP): its sockets stay open but nothing answers, like a hung
    /// server or a partition. [`thaw`](Self::thaw) resumes it; drop kills it either way.
    /// Returns once the process is stopped.
    pub fn freeze(&self) {
        self.member.freeze();
    }

    /// Resumes a frozen etcd (SIGCONT).
    pub fn thaw(&self) {
        self.member.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// Stops etcd if it runs and starts it again on the same ports and data dir, waiting
    /// until it answers.
    pub fn restart(&mut self) {
        self.member
            .restart_with(|m| m.wait_healthy(Instant::now() + READY_DEADLINE));
    }

    /// The last lines of etcd's log.
    pub fn log_tail(&self) -> String {
        self.member.log_tail()
    }
}

/// A private etcd cluster of several members on loopback, for availability tests: members
/// can be killed, restarted and frozen one by one. Temporary dirs, free ports, every
/// member killed on drop (and, as with [`EtcdServer`], when the thread that started it
/// exits).
pub struct EtcdCluster {
    members: Vec<Member>,
    /// Holds one dir per member (`m0/`, `m1/`, ...); removed on drop, after the processes.
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `members` etcd processes as one cluster and waits until it has a leader and
    /// every member answers. Panics with the members' logs when it does not come up.
    pub fn start(members: usize) -> EtcdCluster {
        EtcdCluster::start_with_flags(members, &[])
    }

    /// [`EtcdCluster::start`] with extra etcd flags for every member
    /// (`--election-timeout=500`).
    pub fn start_with_flags(members: usize, flags: &[&str]) -> EtcdCluster {
        assert!(members > 0, "a cluster has at least one member");
        let binary = find_etcd().unwrap_or_else(|| panic!("{MISSING}"));
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = temp_dir();
            let mut list: Vec<Member> = (0..members)
                .map(|i| {
                    let name = format!("m{i}");
                    Member::new(&binary, &name, dir.path().join(&name), flags, false)
                })
                .collect();
            let initial_cluster = list
                .iter()
                .map(|m| format!("{}={}", m.name, m.peer_url()))
                .collect::<Vec<_>>()
                .join(",");
            for m in &mut list {
                m.initial_cluster = initial_cluster.clone();
            }
            // Every member must run before any can report healthy (a leader needs a
            // quorum), so start them all, then wait for each.
            let started = list.iter_mut().try_for_each(Member::spawn).and_then(|()| {
                let deadline = Instant::now() + READY_DEADLINE;
                list.iter_mut().try_for_each(|m| m.wait_healthy(deadline))
            });
            match started {
                Ok(()) => {
                    let cluster = EtcdCluster {
                        members: list,
                        _dir: dir,
                    };
                    cluster.wait_for_leader();
                    return cluster;
                }
                // Dropping the members kills the ones that started.
                Err(e) => last_error = e,
            }
        }
        panic!("etcd cluster did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    /// The number of members (running or not).
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// `127.0.0.1:PORT` per member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// `etcd://127.0.0.1:A,127.0.0.1:B,...`, as `--store` takes it.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// A store connected to every member.
    pub async fn connect(&self) -> EtcdStore {
        EtcdStore::connect(&self.endpoints())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to test etcd cluster: {e}\n{}", self.logs()))
    }

    /// The index of the member that leads now, as the running members see it: a member
    /// that says it leads, or else the member that a majority of the others name. `None`
    /// during an election or without a quorum.
    pub fn leader(&self) -> Option<usize> {
        let ids: Vec<Option<(String, String)>> = self
            .members
            .iter()
            .map(|m| m.child.as_ref().and_then(|_| status(m.http_port())))
            .collect();
        ids.iter().enumerate().find_map(|(i, s)| {
            let (member, leader) = s.as_ref()?;
            (member == leader).then_some(i)
        })
    }

    /// Waits until the cluster has a leader and returns its index. Panics with the logs
    /// after a deadline.
    pub fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(i) = self.leader() {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "etcd cluster has no leader after {READY_DEADLINE:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Kills one member at once (SIGKILL). Its ports and data are kept for `restart`.
    pub fn kill(&mut self, member: usize) {
        self.members[member].kill();
    }

    /// Starts a member again on the same ports and data (stopping it first if it runs).
    /// Waits until it answers with a leader when a quorum runs with it, else only until
    /// its process is up and serving.
    pub fn restart(&mut self, member: usize) {
        let running = self.members.iter().filter(|m| m.child.is_some()).count();
        let others = running - usize::from(self.members[member].child.is_some());
        let quorum = others + 1 > self.members.len() / 2;
        self.members[member].restart_with(|m| {
            let deadline = Instant::now() + READY_DEADLINE;
            if quorum {
                m.wait_healthy(deadline)
            } else {
                m.wait_serving(deadline)
            }
        });
    }

    /// Freezes one member (SIGSTOP): its sockets stay open but nothing answers, like a
    /// hung server or a partition. Returns once the process is stopped.
    pub fn freeze(&self, member: usize) {
        self.members[member].freeze();
    }

    /// Resumes a frozen member (SIGCONT).
    pub fn thaw(&self, member: usize) {
        self.members[member].signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// A member's process id while it runs.
    pub fn pid(&self, member: usize) -> Option<u32> {
        self.members[member].pid()
    }

    /// The last lines of one member's log.
    pub fn log_tail(&self, member: usize) -> String {
        self.members[member].log_tail()
    }

    /// The last lines of every member's log (for a failing test's message).
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(Member::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Member {
    /// Waits until the process serves HTTP (`/version` answers even without a leader).
    fn wait_serving(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            if http(self.http_port(), "GET", "/version", "")
                .is_some_and(|a| a.contains("etcdserver"))
            {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!("etcd exited with {status}\n{}", self.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd {} did not serve on {} in time\n{}",
                    self.name,
                    self.endpoint(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// One HTTP/1.0 request to a loopback port; the whole answer (headers and body), or
/// `None` when nothing answers within half a second.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    (!answer.is_empty()).then_some(answer)
}

/// A member's own id and the id of the leader it follows, from the JSON gateway's
/// `/v3/maintenance/status` (ids are decimal strings there). `None` when it does not
/// answer or knows no leader.
fn status(port: u16) -> Option<(String, String)> {
    let answer = http(port, "POST", "/v3/maintenance/status", "{}")?;
    let body = answer.split_once("\r\n\r\n")?.1;
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    let id = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let member = id(json.get("header")?.get("member_id")?)?;
    let leader = id(json.get("leader")?)?;
    (leader != "0").then_some((member, leader))
}

/// The environment variable naming the etcd binary the harness starts (a path), so that one
/// suite runs on several etcd versions (`hack/test` runs it on 3.4 and on 3.5).
pub const ETCD_ENV: &str = "DEPLOYCTL_TEST_ETCD";

/// `$DEPLOYCTL_TEST_ETCD` (a path; when set, it must be an executable file), else
/// `/usr/bin/etcd`, else `etcd` on PATH.
pub fn find_etcd() -> Option<PathBuf> {
    if let Some(given) = std::env::var_os(ETCD_ENV).filter(|v| !v.is_empty()) {
        let given = PathBuf::from(given);
        assert!(
            given.is_file(),
            "{ETCD_ENV}={} is not a file: point it at an etcd binary (hack/install-deps \
             installs etcd 3.5 under .deps/), or unset it to use Debian's etcd",
            given.display()
        );
        return Some(given);
    }
    let fixed = Path::new("/usr/bin/etcd");
    if fixed.is_file() {
        return Some(fixed.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// The version the harness's etcd reports (`etcd --version`), e.g. `3.5.1`, for a
/// benchmark's figures; `None` when there is no etcd or it does not say.
pub fn etcd_version() -> Option<String> {
    let out = std::process::Command::new(find_etcd()?)
        .arg("--version")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_string())
}

/// A temporary dir, on tmpfs when the machine has one: etcd fsyncs every write.
fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("deployctl-etcd-");
        b
    };
    if shm.is_dir() {
        if let Ok(d) = builder.tempdir_in(shm) {
            return d;
        }
    }
    builder
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary dir for etcd: {e}"))
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
    listener
        .local_addr()
        .expect("a bound socket has an address")
        .port()
}

/// True when etcd's `/health` says so (it answers only with a leader elected).
fn healthy(port: u16) -> bool {
    http(port, "GET", "/health", "").is_some_and(|a| a.contains("\"health\":\"true\""))
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`: what
/// the benchmarks charge to etcd, the controller and themselves.
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("{path}: no ')' in {text:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let field = |i: usize| -> Result<f64, String> {
        fields
            .get(i - 3)
            .ok_or_else(|| format!("{path}: field {i} missing"))?
            .parse::<f64>()
            .map_err(|e| format!("{path}: field {i} is not a number: {e}"))
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((field(14)? + field(15)?) / ticks)
}

/// An embedded store in a temporary dir, removed on drop.
pub struct TempEmbedded {
    /// The handle opened by [`embedded_temp`] (cheap to clone).
    pub store: EmbeddedStore,
    /// Keeps the dir (and the database in it) alive as long as the store.
    dir: tempfile::TempDir,
}

impl TempEmbedded {
    /// The store as a trait object (a clone of the handle: same connections and poller).
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.store.clone())
    }

    /// The database file.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("store.db")
    }

    /// A second, independent handle on the same file, as another process would open it.
    pub fn open_another(&self) -> Arc<dyn Store> {
        let path = self.path();
        let store = EmbeddedStore::open(&path)
            .unwrap_or_else(|e| panic!("cannot reopen embedded store at {}: {e}", path.display()));
        Arc::new(store)
    }
}

/// A fresh embedded store in a temporary dir.
pub fn embedded_temp() -> TempEmbedded {
    let dir = tempfile::Builder::new()
        .prefix("deployctl-store-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temporary dir: {e}"));
    let path = dir.path().join("store.db");
    let store = EmbeddedStore::open(&path)
        .unwrap_or_else(|e| panic!("cannot open embedded store at {}: {e}", path.display()));
    TempEmbedded { store, dir }
}

const NO_OPENSSL: &str =
    "openssl not found: install it with `apt-get install openssl` (tests make TLS certificates with it)";

/// A throwaway CA with a server certificate for 127.0.0.1/localhost and a client
/// certificate, made with the `openssl` command; removed on drop.
pub struct TestCerts {
    dir: tempfile::TempDir,
}

impl TestCerts {
    /// Makes the CA and both certificates (EC P-256, valid one day). Panics with the
    /// install hint when `openssl` is missing, and with its output when it fails.
    pub fn generate() -> TestCerts {
        let dir = tempfile::Builder::new()
            .prefix("deployctl-certs-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary dir: {e}"));
        let certs = TestCerts { dir };
        let d = certs.dir.path();
        let p = |name: &str| d.join(name).display().to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=deployctl test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
        ]);
        for (name, cn, usage) in [
            ("server", "etcd", "serverAuth,clientAuth"),
            ("client", "deployctl", "clientAuth"),
        ] {
            openssl(&[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &p(&format!("{name}.key")),
                "-out",
                &p(&format!("{name}.csr")),
            ]);
            let ext = d.join(format!("{name}.ext"));
            std::fs::write(
                &ext,
                format!(
                    "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n\
                     extendedKeyUsage={usage}\n"
                ),
            )
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", ext.display()));
            openssl(&[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &p(&format!("{name}.csr")),
                "-CA",
                &p("ca.pem"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-extfile",
                &ext.display().to_string(),
                "-out",
                &p(&format!("{name}.pem")),
            ]);
        }
        certs
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// Options that connect to an etcd started with [`EtcdServer::start_tls`].
    pub fn etcd_options(&self) -> crate::store::EtcdOptions {
        crate::store::EtcdOptions {
            tls: true,
            ca: Some(self.ca()),
            cert: Some(self.client_cert()),
            key: Some(self.client_key()),
            ..Default::default()
        }
    }
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => panic!("{NO_OPENSSL}"),
            _ => panic!("cannot run openssl: {e}"),
        });
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `p`th percentile (0..=100) of `sorted` (ascending) by the nearest-rank method:
/// the smallest value with at least `p`% of the values at or below it. NaN when empty.
/// What every benchmark reports.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_should_elect_another_leader_when_its_leader_is_killed() {
        let mut cluster = EtcdCluster::start(3);
        assert_eq!(cluster.endpoints().len(), 3);
        assert_eq!(
            cluster.url(),
            format!("etcd://{}", cluster.endpoints().join(","))
        );
        let first = cluster.wait_for_leader();
        assert!(cluster.pid(first).is_some());
        cluster.kill(first);
        assert_eq!(cluster.pid(first), None);
        let second = cluster.wait_for_leader();
        assert_ne!(second, first, "a killed member cannot lead");
        // The old leader comes back as a member on its old ports and data.
        cluster.restart(first);
        assert!(cluster.pid(first).is_some());
        assert!(healthy(cluster.members[first].http_port()));
        assert!(cluster.log_tail(first).contains("etcd log"));
    }

    #[test]
    fn a_frozen_member_should_answer_nothing_until_thawed() {
        let cluster = EtcdCluster::start(3);
        let port = cluster.members[1].http_port();
        cluster.freeze(1);
        assert!(!healthy(port), "a frozen member answered");
        cluster.thaw(1);
        let deadline = Instant::now() + READY_DEADLINE;
        while !healthy(port) {
            assert!(
                Instant::now() < deadline,
                "the thawed member never answered"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

//! Test and benchmark support: a real etcd on free loopback ports, and a throwaway
//! embedded store.
//!
//! ```no_run
//! # async fn demo() {
//! let etcd = deployctl::testing::EtcdServer::start();
//! let store = etcd.connect().await;
//! # }
//! ```

use crate::store::embedded::EmbeddedStore;
use crate::store::etcd::EtcdStore;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started etcd may take to answer its health check.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// How long a stopped etcd may take to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// Start attempts: a free port found by binding port 0 can be taken before etcd binds it.
const START_ATTEMPTS: usize = 3;

const MISSING: &str =
    "etcd not found: install it with `apt-get install etcd-server` (or run `hack/test`)";

/// A private etcd for one test: free loopback ports, a temporary data dir (on tmpfs when
/// there is one), killed on drop.
pub struct EtcdServer {
    binary: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// Holds the data dir and `etcd.log`; removed on drop, after the process is gone.
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// More etcd flags (benchmarks tune the quota); empty for tests.
    extra_args: Vec<String>,
}

impl EtcdServer {
    /// Starts etcd and waits until it answers. Panics (with the install hint) when etcd is
    /// not installed, and with its log when it does not come up.
    pub fn start() -> EtcdServer {
        EtcdServer::start_with_args(&[])
    }

    /// Like [`EtcdServer::start`], with more etcd flags (e.g. `--quota-backend-bytes=...`).
    pub fn start_with_args(extra_args: &[&str]) -> EtcdServer {
        let binary = find_etcd().unwrap_or_else(|| panic!("{MISSING}"));
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = temp_dir();
            let mut server = EtcdServer {
                binary: binary.clone(),
                client_port: free_port(),
                peer_port: free_port(),
                dir,
                child: None,
                extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("etcd did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    /// The etcd process id while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `127.0.0.1:PORT`, as `EtcdStore::connect` takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `etcd://127.0.0.1:PORT`, as `--store` takes it.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoint())
    }

    /// The data dir: it survives `stop()` so that `restart()` keeps every key.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// etcd's own log (for a failing test's message).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// A store connected to this server.
    pub async fn connect(&self) -> EtcdStore {
        EtcdStore::connect(&[self.endpoint()])
            .await
            .unwrap_or_else(|e| panic!("cannot connect to test etcd: {e}\n{}", self.log_tail()))
    }

    /// Stops etcd (SIGTERM, then SIGKILL after a deadline). Ports and data are kept.
    pub fn stop(&mut self) {
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

    /// Kills etcd at once (a crash, not a shutdown). Ports and data are kept.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops etcd if it runs and starts it again on the same ports and data dir, waiting
    /// until it answers.
    pub fn restart(&mut self) {
        self.stop();
        // The old process released the port when it exited; retry briefly in case the
        // kernel has not finished closing the listening socket.
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) => {
                    last_error = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        panic!("etcd did not restart: {last_error}");
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let client_url = format!("http://127.0.0.1:{}", self.client_port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = self.log_path();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let child = Command::new(&self.binary)
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .arg("--initial-cluster-state=new")
            // Tests write transactions of hundreds of keys (etcd's default is 128).
            .arg("--max-txn-ops=10000")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let child = self.child.as_mut().expect("set just above");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("etcd exited with {status}\n{}", self.log_tail()));
            }
            if healthy(self.client_port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "etcd did not answer on {client_url} within {READY_DEADLINE:?}\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The last lines of etcd's log.
    pub fn log_tail(&self) -> String {
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

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `/usr/bin/etcd`, else `etcd` on PATH.
fn find_etcd() -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin/etcd");
    if fixed.is_file() {
        return Some(fixed.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
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
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
    let request = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if conn.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}

/// An embedded store in a temporary dir, removed on drop.
pub struct TempEmbedded {
    pub store: EmbeddedStore,
    /// Keeps the dir (and the database in it) alive as long as the store.
    dir: tempfile::TempDir,
}

impl TempEmbedded {
    /// The database file: open it again for a second handle (another process's view).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("store.db")
    }

    /// The store as a trait object (a clone of the handle: same connections and poller).
    pub fn store(&self) -> std::sync::Arc<dyn crate::store::Store> {
        std::sync::Arc::new(self.store.clone())
    }

    /// A second, independent handle on the same file, as another process would open it.
    pub fn open_another(&self) -> std::sync::Arc<dyn crate::store::Store> {
        let path = self.path();
        let store = EmbeddedStore::open(&path)
            .unwrap_or_else(|e| panic!("cannot reopen embedded store at {}: {e}", path.display()));
        std::sync::Arc::new(store)
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

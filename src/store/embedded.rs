//! The embedded store: etcd's revisions, watches and leases on one SQLite file (WAL mode)
//! that several processes share.
//!
//! # Tables
//!
//! - `meta`: the global `revision` (every write bumps it by one), the `compacted` revision
//!   and the `schema_version`.
//! - `kv`: the current value of every live key, for fast reads and compares.
//! - `log`: every change ever made (kine-style), one row per key per revision, tombstones
//!   for deletes. History reads and watches come from here; `compact` trims it.
//! - `leases`: id, ttl and wall-clock expiry (shared by every process on the host).
//!
//! # Processes and threads
//!
//! Writes go to one writer thread per handle, which applies whatever has queued up in ONE
//! SQLite transaction (`BEGIN IMMEDIATE`, a savepoint per store txn so that each succeeds or
//! fails alone, and each gets its own revision): group commit, so thousands of agents'
//! small writes do not pay a commit each. Processes take turns through SQLite's write lock.
//! Reads use a small pool of connections on blocking threads.
//!
//! Each handle has ONE poller thread with its own connection. It notices commits from any
//! connection or process cheaply (`PRAGMA data_version`, every 10 ms after a change and
//! backing off to every 80 ms while idle, or at once when this handle wrote), reads the new `log` rows once, and fans them out to every registered
//! watcher by prefix (each watcher has an unbounded queue: a watcher that never reads
//! holds its backlog in memory). Every 250 ms it also looks for expired leases, and every
//! 5 minutes it compacts history to the last 10,000 revisions; both queue on the writer
//! thread. Lease expiry is wall-clock time, so any process's poller may sweep any lease.

use super::*;
use futures::Stream;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Semaphore};

/// `$XDG_STATE_HOME/deployctl/store.db`, else `~/.local/state/deployctl/store.db`.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("deployctl").join("store.db")
}

/// How long a statement waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the poller checks whether another connection committed: every 10 ms after a
/// change, backing off (doubling) while nothing changes to every 80 ms. An idle process
/// then wakes about 16 times a second instead of 100, and a write from another process is
/// still seen within about 80 ms (`hack/bench-embedded-idle` measures both).
const POLL_MIN: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(80);
/// How often the poller looks for expired leases.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// The most writes the writer thread puts in one SQLite transaction.
const MAX_BATCH: usize = 512;
/// How often a long-lived handle compacts history, and how many revisions it keeps: nobody
/// else compacts the embedded store. A watch more than this far behind relists.
const AUTO_COMPACT_INTERVAL: Duration = Duration::from_secs(300);
const AUTO_COMPACT_KEEP: i64 = 10_000;
/// Read connections in use at once per handle.
const READERS: usize = 4;
/// The table layout this code reads and writes.
const SCHEMA_VERSION: i64 = 1;
/// A watch's replay of history is cut into items of about this many events (at revision
/// boundaries, never inside one).
const CATCH_UP_CHUNK: usize = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES
    ('schema_version', 1), ('revision', 1), ('compacted', 0);
CREATE TABLE IF NOT EXISTS kv (
    key             TEXT PRIMARY KEY,
    value           BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision    INTEGER NOT NULL,
    lease           INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease);
CREATE TABLE IF NOT EXISTS log (
    id              INTEGER PRIMARY KEY,
    revision        INTEGER NOT NULL,
    key             TEXT NOT NULL,
    value           BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    lease           INTEGER NOT NULL,
    deleted         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS log_revision ON log (revision);
CREATE UNIQUE INDEX IF NOT EXISTS log_key_revision ON log (key, revision);
CREATE TABLE IF NOT EXISTS leases (
    id            INTEGER PRIMARY KEY,
    ttl_ms        INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases (expires_at_ms);
";

/// A handle on one store file. Cheap to clone; clones share connections and the poller.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The queue of the writer thread, which owns this handle's write connection.
    jobs: std::sync::mpsc::Sender<Box<dyn WriteJob>>,
    /// Idle read connections, reused across calls.
    idle: Mutex<Vec<Connection>>,
    /// Bounds the read connections in use at once (and so the blocking threads they hold).
    readers: Arc<Semaphore>,
    shared: Arc<Shared>,
}

/// What the poller thread shares with the handle and the watch streams.
struct Shared {
    registry: Mutex<Registry>,
    /// Set when the last handle (and watch stream) is gone: the poller exits.
    stop: AtomicBool,
    /// Set by this handle's writes so the poller looks at once rather than at its next tick.
    kicked: Mutex<bool>,
    wake: Condvar,
}

/// The watchers of one handle, indexed by prefix so that fan-out costs one hash lookup per
/// distinct prefix length per event, not one comparison per watcher.
#[derive(Default)]
struct Registry {
    /// Every log row up to this revision has been sent to the watchers registered then.
    delivered: i64,
    next_id: u64,
    by_prefix: HashMap<String, HashMap<u64, Watcher>>,
    prefix_of: HashMap<u64, String>,
    /// How many watched prefixes have each length.
    lengths: BTreeMap<usize, usize>,
}

struct Watcher {
    from: i64,
    tx: mpsc::UnboundedSender<Result<Vec<WatchEvent>>>,
}

/// An error inside a blocking SQL closure: SQLite's, or the store's own.
enum Fail {
    Sql(rusqlite::Error),
    Store(Error),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Store(e)
    }
}

type SqlResult<T> = std::result::Result<T, Fail>;

/// Locks a std mutex; a panic elsewhere while holding it leaves plain data that is still
/// usable, so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn db_error(path: &Path, e: &rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::Unavailable {
            endpoint: path.display().to_string(),
            message: format!("store file is locked by another process: {e}"),
        },
        Some(ErrorCode::NotADatabase) => Error::Other(format!(
            "store file {} is not a SQLite database: {e}",
            path.display()
        )),
        _ => Error::Other(format!("store file {}: {e}", path.display())),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The smallest string greater than every string starting with `prefix`, or None when no
/// such string exists (the empty prefix). UTF-8 byte order is code point order, so bumping
/// the last char bounds the range.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 {
            0xD7FF => Some('\u{E000}'),
            c => char::from_u32(c + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The upper bound of a prefix range as an SQL value. In SQLite every TEXT sorts before
/// every BLOB, so an empty blob bounds the whole key space for the empty prefix.
fn range_end(prefix: &str) -> SqlValue {
    match prefix_end(prefix) {
        Some(end) => SqlValue::Text(end),
        None => SqlValue::Blob(Vec::new()),
    }
}

fn connect(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::Other(format!("cannot open store file {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
        .map_err(|e| db_error(path, &e))?;
    Ok(conn)
}

fn meta(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
}

fn set_meta(conn: &Connection, name: &str, value: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE meta SET value = ?2 WHERE name = ?1")?
        .execute(params![name, value])?;
    Ok(())
}

fn init_schema(path: &Path, conn: &mut Connection) -> Result<()> {
    let err = |e| db_error(path, &e);
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Other(format!(
            "store file {}: cannot switch to WAL mode (journal mode is {mode})",
            path.display()
        )));
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    tx.execute_batch(SCHEMA).map_err(err)?;
    let version = meta(&tx, "schema_version").map_err(err)?;
    if version != SCHEMA_VERSION {
        return Err(Error::Other(format!(
            "store file {} has schema version {version}; this deployctl reads version {SCHEMA_VERSION}",
            path.display()
        )));
    }
    tx.commit().map_err(err)
}

/// A `kv` or `log` row as the key it describes.
fn key_value(row: &rusqlite::Row) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: row.get(0)?,
        value: row.get(1)?,
        create_revision: row.get(2)?,
        mod_revision: row.get(3)?,
        lease: row.get(4)?,
    })
}

/// A `log` row (key, value, create_revision, revision, lease, deleted) as a watch event.
fn watch_event(row: &rusqlite::Row) -> rusqlite::Result<WatchEvent> {
    let deleted: bool = row.get(5)?;
    if deleted {
        Ok(WatchEvent {
            kind: EventType::Delete,
            kv: KeyValue {
                key: row.get(0)?,
                value: Vec::new(),
                create_revision: 0,
                mod_revision: row.get(3)?,
                lease: 0,
            },
        })
    } else {
        Ok(WatchEvent {
            kind: EventType::Put,
            kv: key_value(row)?,
        })
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed, with parent directories) the store file at `path`.
    pub fn open(path: &Path) -> Result<EmbeddedStore> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::Other(format!(
                    "cannot create the directory of store file {}: {e}",
                    path.display()
                ))
            })?;
        }
        if path.is_dir() {
            return Err(Error::Other(format!(
                "cannot open store file {}: it is a directory",
                path.display()
            )));
        }
        let mut writer = connect(path)?;
        // Several processes opening a new file at once (`deployctl up`) all switch it to
        // WAL and create the schema; SQLite answers some of them "locked" at once, without
        // waiting (it would deadlock otherwise), so those try again.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match init_schema(path, &mut writer) {
                Err(Error::Unavailable { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10 + rand::random::<u64>() % 20));
                }
                other => break other?,
            }
        }
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn WriteJob>>();
        let poller_jobs = jobs.clone();
        let poller = connect(path)?;
        let delivered = meta(&poller, "revision").map_err(|e| db_error(path, &e))?;
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry {
                delivered,
                ..Registry::default()
            }),
            stop: AtomicBool::new(false),
            kicked: Mutex::new(false),
            wake: Condvar::new(),
        });
        // The writer first: if the poller cannot start, dropping every sender stops it.
        let for_thread = shared.clone();
        let thread_path = path.to_path_buf();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run_writer(&thread_path, writer, queue, &for_thread))
            .map_err(|e| Error::Other(format!("cannot start the store writer thread: {e}")))?;
        let for_thread = shared.clone();
        let thread_path = path.to_path_buf();
        std::thread::Builder::new()
            .name("store-poller".into())
            .spawn(move || run_poller(&thread_path, poller, &for_thread, poller_jobs))
            .map_err(|e| Error::Other(format!("cannot start the store poller thread: {e}")))?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                jobs,
                idle: Mutex::new(Vec::new()),
                readers: Arc::new(Semaphore::new(READERS)),
                shared,
            }),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a pooled read connection on a blocking thread.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> SqlResult<T> + Send + 'static,
    {
        let permit = self
            .inner
            .readers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Other("the store handle is closed".into()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = lock(&inner.idle).pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => connect(&inner.path)?,
            };
            let out = f(&mut conn);
            lock(&inner.idle).push(conn);
            out.map_err(|e| inner.error(e))
        })
        .await
        .map_err(|e| Error::Other(format!("store read task failed: {e}")))?
    }

    /// Runs `f` on the writer thread inside a write transaction (and a savepoint of its
    /// own: an `Err` undoes exactly what `f` wrote); answers once that is committed.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> SqlResult<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            f,
            tx,
            path: self.inner.path.clone(),
        };
        self.inner
            .jobs
            .send(Box::new(job))
            .map_err(|_| Error::Other("the store writer thread has stopped".into()))?;
        rx.await.map_err(|_| {
            Error::Other("the store writer failed before finishing this write".into())
        })?
    }

    /// The revision of the last write.
    pub async fn current_revision(&self) -> Result<i64> {
        self.read(|conn| Ok(meta(conn, "revision")?)).await
    }

    /// How many watch streams are open on this handle (for tests and metrics).
    pub fn watcher_count(&self) -> usize {
        lock(&self.inner.shared.registry).prefix_of.len()
    }
}

impl Inner {
    fn error(&self, e: Fail) -> Error {
        match e {
            Fail::Sql(e) => db_error(&self.path, &e),
            Fail::Store(e) => e,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.kick();
    }
}

impl Shared {
    fn kick(&self) {
        *lock(&self.kicked) = true;
        self.wake.notify_one();
    }

    /// Waits for a kick or `interval`; true when kicked.
    fn wait(&self, interval: Duration) -> bool {
        let mut kicked = lock(&self.kicked);
        if !*kicked {
            kicked = self
                .wake
                .wait_timeout(kicked, interval)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        std::mem::replace(&mut *kicked, false)
    }
}

impl Registry {
    fn add(&mut self, prefix: &str, watcher: Watcher) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.by_prefix
            .entry(prefix.to_string())
            .or_default()
            .insert(id, watcher);
        self.prefix_of.insert(id, prefix.to_string());
        *self.lengths.entry(prefix.len()).or_default() += 1;
        id
    }

    fn remove(&mut self, id: u64) {
        let Some(prefix) = self.prefix_of.remove(&id) else {
            return;
        };
        if let Some(ws) = self.by_prefix.get_mut(&prefix) {
            ws.remove(&id);
            if ws.is_empty() {
                self.by_prefix.remove(&prefix);
            }
        }
        if let Some(n) = self.lengths.get_mut(&prefix.len()) {
            *n -= 1;
            if *n == 0 {
                self.lengths.remove(&prefix.len());
            }
        }
    }

    /// Sends the events of revisions (delivered, revision] to the watchers they concern,
    /// one item per watcher, and moves `delivered` to `revision`.
    fn fan_out(&mut self, events: Vec<WatchEvent>, revision: i64, compacted: i64) {
        let mut dead: Vec<u64> = Vec::new();
        if compacted > self.delivered + 1 {
            // Compaction ran past revisions this poller had not read yet: some of their
            // rows may be gone, so any watcher that needed them must relist.
            let requested = self.delivered + 1;
            for ws in self.by_prefix.values() {
                for (id, w) in ws {
                    if w.from < compacted {
                        let _ = w.tx.send(Err(Error::Compacted {
                            requested: requested.max(w.from),
                            compacted,
                        }));
                        dead.push(*id);
                    }
                }
            }
            for id in dead.drain(..) {
                self.remove(id);
            }
        }
        let mut out: HashMap<u64, Vec<WatchEvent>> = HashMap::new();
        for ev in &events {
            let key = &ev.kv.key;
            for &len in self.lengths.keys() {
                if len > key.len() {
                    break;
                }
                if !key.is_char_boundary(len) {
                    continue;
                }
                if let Some(ws) = self.by_prefix.get(&key[..len]) {
                    for (id, w) in ws {
                        if ev.kv.mod_revision >= w.from {
                            out.entry(*id).or_default().push(ev.clone());
                        }
                    }
                }
            }
        }
        for (id, evs) in out {
            let Some(w) = self
                .prefix_of
                .get(&id)
                .and_then(|p| self.by_prefix.get(p))
                .and_then(|ws| ws.get(&id))
            else {
                continue;
            };
            if w.tx.send(Ok(evs)).is_err() {
                dead.push(id);
            }
        }
        for id in dead {
            self.remove(id);
        }
        self.delivered = self.delivered.max(revision);
    }
}

/// A write queued for the writer thread.
trait WriteJob: Send {
    /// Runs inside the batch's transaction; `ok` false rolls back the job's savepoint.
    fn run(self: Box<Self>, conn: &Connection) -> Finished;
    /// Answers without running (the batch could not start).
    fn fail(self: Box<Self>, e: Error);
}

/// A job that ran, waiting for its batch to commit before it answers.
struct Finished {
    ok: bool,
    /// Answers the caller: with the job's result, or with the commit's error if given.
    answer: Box<dyn FnOnce(Option<Error>) + Send>,
}

struct Job<T, F> {
    f: F,
    tx: tokio::sync::oneshot::Sender<Result<T>>,
    path: PathBuf,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> SqlResult<T> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Finished {
        let Job { f, tx, path } = *self;
        match f(conn) {
            Ok(v) => Finished {
                ok: true,
                answer: Box::new(move |failed| {
                    let _ = tx.send(failed.map_or(Ok(v), Err));
                }),
            },
            Err(e) => {
                let e = match e {
                    Fail::Sql(e) => db_error(&path, &e),
                    Fail::Store(e) => e,
                };
                Finished {
                    ok: false,
                    answer: Box::new(move |_| {
                        let _ = tx.send(Err(e));
                    }),
                }
            }
        }
    }

    fn fail(self: Box<Self>, e: Error) {
        let _ = self.tx.send(Err(e));
    }
}

/// A write of the store's own (sweep, compaction): errors are logged, nobody waits.
struct Chore<F> {
    what: &'static str,
    path: PathBuf,
    f: F,
}

impl<F> WriteJob for Chore<F>
where
    F: FnOnce(&Connection) -> SqlResult<()> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Finished {
        let Chore { what, path, f } = *self;
        let ok = match f(conn) {
            Ok(()) => true,
            Err(e) => {
                let e = match e {
                    Fail::Sql(e) => db_error(&path, &e),
                    Fail::Store(e) => e,
                };
                tracing::warn!(error = %e, "store could not {what}");
                false
            }
        };
        Finished {
            ok,
            answer: Box::new(move |failed| {
                if let Some(e) = failed {
                    tracing::warn!(error = %e, "store could not {what}");
                }
            }),
        }
    }

    fn fail(self: Box<Self>, e: Error) {
        tracing::warn!(error = %e, "store could not {}", self.what);
    }
}

/// The writer thread: group-commits whatever writes have queued up, until every handle
/// (and so every sender) is gone.
fn run_writer(
    path: &Path,
    conn: Connection,
    queue: std::sync::mpsc::Receiver<Box<dyn WriteJob>>,
    shared: &Shared,
) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        write_batch(path, &conn, batch);
        shared.kick();
    }
}

fn write_batch(path: &Path, conn: &Connection, batch: Vec<Box<dyn WriteJob>>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        for job in batch {
            job.fail(db_error(path, &e));
        }
        return;
    }
    let mut done: Vec<Finished> = Vec::with_capacity(batch.len());
    let mut broken: Option<rusqlite::Error> = None;
    for job in batch {
        if let Some(e) = &broken {
            job.fail(db_error(path, e));
            continue;
        }
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            job.fail(db_error(path, &e));
            broken = Some(e);
            continue;
        }
        // A panicking job drops its answer channel (its caller gets an error) and its
        // savepoint is undone; the thread and the other jobs carry on.
        let finished =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(conn))).ok();
        let ok = finished.as_ref().is_some_and(|f| f.ok);
        let end = if ok {
            "RELEASE job"
        } else {
            "ROLLBACK TO job; RELEASE job"
        };
        if let Err(e) = conn.execute_batch(end) {
            broken = Some(e);
        }
        done.extend(finished);
    }
    let committed = match broken {
        Some(e) => Err(e),
        None => conn.execute_batch("COMMIT"),
    };
    match committed {
        Ok(()) => done.into_iter().for_each(|f| (f.answer)(None)),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            for f in done {
                (f.answer)(Some(db_error(path, &e)));
            }
        }
    }
}

/// The poller thread: notices commits, fans out new log rows, sweeps expired leases.
fn run_poller(
    path: &Path,
    mut conn: Connection,
    shared: &Shared,
    jobs: std::sync::mpsc::Sender<Box<dyn WriteJob>>,
) {
    let data_version = |conn: &Connection| -> rusqlite::Result<i64> {
        conn.query_row("PRAGMA data_version", [], |r| r.get(0))
    };
    let mut last_version = None;
    let mut last_sweep: Option<Instant> = None;
    let mut last_compaction = Instant::now();
    let mut force = true;
    let mut interval = POLL_MIN;
    while !shared.stop.load(Ordering::SeqCst) {
        let kicked = shared.wait(interval);
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let version = data_version(&conn).ok();
        // Back off while no new revision arrives: commits that only refresh leases (an
        // idle fleet's keep-alives) change `data_version` but add no revision.
        let mut advanced = kicked;
        if force || kicked || version.is_none() || version != last_version {
            last_version = version;
            force = false;
            match poll_once(&mut conn, shared) {
                Ok(new) => advanced |= new,
                Err(e) => {
                    let e = match e {
                        Fail::Sql(e) => db_error(path, &e),
                        Fail::Store(e) => e,
                    };
                    tracing::warn!(error = %e, "store poller could not read new changes; retrying");
                    force = true;
                }
            }
        }
        interval = if advanced {
            POLL_MIN
        } else {
            (interval * 2).min(POLL_MAX)
        };
        // Sweeps and compactions are writes: they queue for the writer thread, so this
        // thread never waits for the write lock and watches keep flowing meanwhile.
        if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_INTERVAL) {
            last_sweep = Some(Instant::now());
            let expired = conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM leases WHERE expires_at_ms <= ?1)")
                .and_then(|mut q| q.query_row([now_ms()], |r| r.get::<_, bool>(0)));
            match expired {
                Ok(true) => {
                    let chore = Chore {
                        what: "sweep expired leases",
                        path: path.to_path_buf(),
                        f: |tx: &Connection| sweep_expired_leases(tx, now_ms()).map(drop),
                    };
                    let _ = jobs.send(Box::new(chore));
                }
                Ok(false) => {}
                Err(e) => {
                    let e = db_error(path, &e);
                    tracing::warn!(error = %e, "store poller could not look for expired leases");
                }
            }
        }
        if last_compaction.elapsed() >= AUTO_COMPACT_INTERVAL {
            last_compaction = Instant::now();
            let chore = Chore {
                what: "compact history",
                path: path.to_path_buf(),
                f: |tx: &Connection| auto_compact(tx, AUTO_COMPACT_KEEP).map(drop),
            };
            let _ = jobs.send(Box::new(chore));
        }
    }
}

/// Reads the log rows committed since the last call and fans them out; true when there
/// were new revisions (a commit that only refreshed leases adds none).
fn poll_once(conn: &mut Connection, shared: &Shared) -> SqlResult<bool> {
    let delivered = lock(&shared.registry).delivered;
    let tx = conn.transaction()?;
    let revision = meta(&tx, "revision")?;
    let compacted = meta(&tx, "compacted")?;
    if revision <= delivered {
        return Ok(false);
    }
    let events = tx
        .prepare_cached(
            "SELECT key, value, create_revision, revision, lease, deleted FROM log
             WHERE revision > ?1 AND revision <= ?2 ORDER BY id",
        )?
        .query_map([delivered, revision], watch_event)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    drop(tx);
    lock(&shared.registry).fan_out(events, revision, compacted);
    Ok(true)
}

/// Deletes the keys bound to `lease` at revision `revision`; true if there were any.
fn delete_lease_keys(conn: &Connection, lease: LeaseId, revision: i64) -> SqlResult<bool> {
    let keys = conn
        .prepare_cached("SELECT key FROM kv WHERE lease = ?1 ORDER BY key")?
        .query_map([lease], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for key in &keys {
        delete_key(conn, key, revision)?;
    }
    Ok(!keys.is_empty())
}

/// Deletes `key` at `revision` with a tombstone in the log; false if it did not exist.
fn delete_key(conn: &Connection, key: &str, revision: i64) -> SqlResult<bool> {
    let n = conn
        .prepare_cached("DELETE FROM kv WHERE key = ?1")?
        .execute([key])?;
    if n == 0 {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT INTO log (revision, key, value, create_revision, lease, deleted)
         VALUES (?1, ?2, x'', 0, 0, 1)",
    )?
    .execute(params![revision, key])?;
    Ok(true)
}

/// Forgets history before `revision`, inside a write transaction.
fn compact_log(tx: &Connection, revision: i64) -> SqlResult<()> {
    // Rows superseded by a later change at or before `revision` are never read again;
    // tombstones before it neither (every older row of their key is gone with them).
    tx.execute(
        "DELETE FROM log WHERE revision < ?1 AND EXISTS (
             SELECT 1 FROM log AS newer WHERE newer.key = log.key
             AND newer.revision > log.revision AND newer.revision <= ?1)",
        [revision],
    )?;
    tx.execute(
        "DELETE FROM log WHERE revision < ?1 AND deleted = 1",
        [revision],
    )?;
    set_meta(tx, "compacted", revision)?;
    Ok(())
}

/// Compacts to `keep` revisions behind the head, like etcd's
/// `--auto-compaction-mode=revision`; returns the new mark if it moved.
fn auto_compact(tx: &Connection, keep: i64) -> SqlResult<Option<i64>> {
    let target = meta(tx, "revision")? - keep;
    if target <= meta(tx, "compacted")? {
        return Ok(None);
    }
    compact_log(tx, target)?;
    tracing::debug!(revision = target, "store history compacted");
    Ok(Some(target))
}

/// Revokes every expired lease, each at its own revision if it had keys; true if any.
fn sweep_expired_leases(tx: &Connection, now: i64) -> SqlResult<bool> {
    let expired = tx
        .prepare_cached("SELECT id FROM leases WHERE expires_at_ms <= ?1 ORDER BY id")?
        .query_map([now], |r| r.get::<_, i64>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut revision = meta(tx, "revision")?;
    let start = revision;
    for lease in expired {
        if delete_lease_keys(tx, lease, revision + 1)? {
            revision += 1;
        }
        tx.prepare_cached("DELETE FROM leases WHERE id = ?1")?
            .execute([lease])?;
    }
    if revision != start {
        set_meta(tx, "revision", revision)?;
    }
    Ok(revision != start)
}

fn compare_holds(conn: &Connection, c: &Compare) -> SqlResult<bool> {
    let row: Option<(Vec<u8>, i64, i64)> = conn
        .prepare_cached("SELECT value, create_revision, mod_revision FROM kv WHERE key = ?1")?
        .query_row([&c.key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let ord = match (&c.target, &row) {
        // Like etcd: a value compare on a missing key is false, whatever the operator.
        (CompareTarget::Value(_), None) => return Ok(false),
        (CompareTarget::Value(want), Some((value, _, _))) => value.as_slice().cmp(want),
        (CompareTarget::CreateRevision(want), _) => row.as_ref().map_or(0, |r| r.1).cmp(want),
        (CompareTarget::ModRevision(want), _) => row.as_ref().map_or(0, |r| r.2).cmp(want),
    };
    Ok(match c.op {
        CompareOp::Equal => ord.is_eq(),
        CompareOp::NotEqual => ord.is_ne(),
        CompareOp::Greater => ord.is_gt(),
        CompareOp::Less => ord.is_lt(),
    })
}

fn check_ops(ops: &[Op]) -> Result<()> {
    let mut seen = HashSet::new();
    for op in ops {
        let key = match op {
            Op::Put { key, .. } | Op::Delete { key } => key,
        };
        if key.is_empty() {
            return Err(Error::Other("a transaction op has an empty key".into()));
        }
        if !seen.insert(key.as_str()) {
            return Err(Error::Other(format!(
                "duplicate key {key:?} in one transaction (etcd refuses this too)"
            )));
        }
    }
    Ok(())
}

/// Applies `txn` inside the writer's transaction.
fn apply_txn(tx: &Connection, txn: &Txn) -> SqlResult<TxnResult> {
    let now = now_ms();
    let revision = meta(tx, "revision")?;
    for c in &txn.compares {
        if !compare_holds(tx, c)? {
            return Ok(TxnResult {
                succeeded: false,
                revision,
            });
        }
    }
    let new = revision + 1;
    let mut changed = false;
    let mut live_leases: HashSet<LeaseId> = HashSet::new();
    for op in &txn.ops {
        match op {
            Op::Put { key, value, lease } => {
                if *lease != 0 && !live_leases.contains(lease) {
                    let live = tx
                        .prepare_cached(
                            "SELECT 1 FROM leases WHERE id = ?1 AND expires_at_ms > ?2",
                        )?
                        .exists(params![lease, now])?;
                    if !live {
                        return Err(Error::LeaseNotFound(*lease).into());
                    }
                    live_leases.insert(*lease);
                }
                let create: i64 = tx
                    .prepare_cached(
                        "INSERT INTO kv (key, value, create_revision, mod_revision, lease)
                         VALUES (?1, ?2, ?3, ?3, ?4)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                             mod_revision = excluded.mod_revision, lease = excluded.lease
                         RETURNING create_revision",
                    )?
                    .query_row(params![key, value, new, lease], |r| r.get(0))?;
                tx.prepare_cached(
                    "INSERT INTO log (revision, key, value, create_revision, lease, deleted)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                )?
                .execute(params![new, key, value, create, lease])?;
                changed = true;
            }
            Op::Delete { key } => changed |= delete_key(tx, key, new)?,
        }
    }
    if !changed {
        // Nothing written (e.g. deletes of missing keys): like etcd, no new revision.
        return Ok(TxnResult {
            succeeded: true,
            revision,
        });
    }
    set_meta(tx, "revision", new)?;
    Ok(TxnResult {
        succeeded: true,
        revision: new,
    })
}

fn list_at(
    conn: &mut Connection,
    prefix: &str,
    at: Option<i64>,
) -> SqlResult<(Vec<KeyValue>, i64)> {
    let tx = conn.transaction()?;
    let current = meta(&tx, "revision")?;
    let compacted = meta(&tx, "compacted")?;
    let at = at.filter(|r| *r > 0).unwrap_or(current);
    if at > current {
        return Err(Error::Other(format!(
            "cannot list {prefix:?} at revision {at}: it is in the future (current: {current})"
        ))
        .into());
    }
    if at < compacted {
        return Err(Error::Compacted {
            requested: at,
            compacted,
        }
        .into());
    }
    let end = range_end(prefix);
    let kvs = if at == current {
        tx.prepare_cached(
            "SELECT key, value, create_revision, mod_revision, lease FROM kv
             WHERE key >= ?1 AND key < ?2 ORDER BY key",
        )?
        .query_map(params![prefix, end], key_value)?
        .collect::<rusqlite::Result<Vec<_>>>()?
    } else {
        // SQLite fills bare columns from the row that holds MAX(revision): the latest
        // change to each key as of `at`.
        let mut stmt = tx.prepare_cached(
            "SELECT key, value, create_revision, MAX(revision), lease, deleted FROM log
             WHERE key >= ?1 AND key < ?2 AND revision <= ?3 GROUP BY key ORDER BY key",
        )?;
        let rows = stmt.query_map(params![prefix, end, at], |r| {
            Ok((key_value(r)?, r.get::<_, bool>(5)?))
        })?;
        let mut kvs = Vec::new();
        for row in rows {
            let (kv, deleted) = row?;
            if !deleted {
                kvs.push(kv);
            }
        }
        kvs
    };
    Ok((kvs, at))
}

/// History under `prefix` from `from` up to `upto`, cut into stream items.
fn catch_up(
    conn: &mut Connection,
    prefix: &str,
    from: i64,
    upto: i64,
) -> SqlResult<VecDeque<Result<Vec<WatchEvent>>>> {
    let tx = conn.transaction()?;
    let compacted = meta(&tx, "compacted")?;
    if from < compacted {
        return Err(Error::Compacted {
            requested: from,
            compacted,
        }
        .into());
    }
    let mut items = VecDeque::new();
    if from > upto {
        return Ok(items);
    }
    let mut stmt = tx.prepare_cached(
        "SELECT key, value, create_revision, revision, lease, deleted FROM log
         WHERE key >= ?1 AND key < ?2 AND revision >= ?3 AND revision <= ?4 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![prefix, range_end(prefix), from, upto], watch_event)?;
    let mut item: Vec<WatchEvent> = Vec::new();
    for row in rows {
        let ev = row?;
        let boundary = item
            .last()
            .is_some_and(|last| last.kv.mod_revision != ev.kv.mod_revision);
        if boundary && item.len() >= CATCH_UP_CHUNK {
            items.push_back(Ok(std::mem::take(&mut item)));
        }
        item.push(ev);
    }
    if !item.is_empty() {
        items.push_back(Ok(item));
    }
    Ok(items)
}

/// A watch on one handle: replayed history first, then what the poller sends.
struct EmbeddedWatch {
    pending: VecDeque<Result<Vec<WatchEvent>>>,
    /// None once the watch has ended (after a `Compacted` error).
    rx: Option<mpsc::UnboundedReceiver<Result<Vec<WatchEvent>>>>,
    _guard: WatchGuard,
}

/// Unregisters a watcher when its stream is dropped; keeps the poller alive meanwhile.
struct WatchGuard {
    inner: Arc<Inner>,
    id: Option<u64>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock(&self.inner.shared.registry).remove(id);
        }
    }
}

impl Stream for EmbeddedWatch {
    type Item = Result<Vec<WatchEvent>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(item) = self.pending.pop_front() {
            return Poll::Ready(Some(item));
        }
        match self.rx.as_mut() {
            Some(rx) => rx.poll_recv(cx),
            None => Poll::Ready(None),
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn endpoint(&self) -> String {
        self.inner.path.display().to_string()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT key, value, create_revision, mod_revision, lease FROM kv WHERE key = ?1",
                )?
                .query_row([&key], key_value)
                .optional()?)
        })
        .await
    }

    async fn list(&self, prefix: &str, revision: Option<i64>) -> Result<(Vec<KeyValue>, i64)> {
        let prefix = prefix.to_string();
        self.read(move |conn| list_at(conn, &prefix, revision))
            .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        super::check_request_size(&txn)?;
        check_ops(&txn.ops)?;
        self.write(move |conn| apply_txn(conn, &txn)).await
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        // Revision ≥ 0 means all history, as with the etcd backend (revision 1 is the first).
        let from = from_revision.max(1);
        let (tx, rx) = mpsc::unbounded_channel();
        // Register first, then replay what the poller had already passed: the poller sends
        // only revisions after `delivered`, the replay covers [from, delivered], no gap.
        let (id, delivered) = {
            let mut reg = lock(&self.inner.shared.registry);
            let id = reg.add(prefix, Watcher { from, tx });
            (id, reg.delivered)
        };
        let guard = WatchGuard {
            inner: self.inner.clone(),
            id: Some(id),
        };
        if from > delivered {
            // Nothing to replay. A compaction past `from` is past `delivered + 1` too, and
            // the poller reports it to this watcher when it reads on.
            return Ok(Box::pin(EmbeddedWatch {
                pending: VecDeque::new(),
                rx: Some(rx),
                _guard: guard,
            }));
        }
        let owned = prefix.to_string();
        let (pending, rx) = match self
            .read(move |conn| catch_up(conn, &owned, from, delivered))
            .await
        {
            Ok(pending) => (pending, Some(rx)),
            Err(e @ Error::Compacted { .. }) => {
                // The stream ends after the error: stop fanning out to it now.
                lock(&self.inner.shared.registry).remove(id);
                (VecDeque::from([Err(e)]), None)
            }
            Err(e) => return Err(e),
        };
        Ok(Box::pin(EmbeddedWatch {
            pending,
            rx,
            _guard: guard,
        }))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        self.write(move |conn| {
            use rand::Rng;
            let mut rng = rand::thread_rng();
            loop {
                let id: i64 = rng.gen_range(1..i64::MAX);
                let inserted = conn
                    .prepare_cached(
                        "INSERT OR IGNORE INTO leases (id, ttl_ms, expires_at_ms) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![id, ttl_ms, now_ms().saturating_add(ttl_ms)])?;
                if inserted == 1 {
                    return Ok(id);
                }
            }
        })
        .await
    }

    async fn grant_lease_id(&self, id: LeaseId, ttl: Duration) -> Result<bool> {
        if id <= 0 {
            return Err(Error::Other(format!("lease id {id}: must be positive")));
        }
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        self.write(move |tx| {
            // An expired lease that the sweeper has not reached yet is gone, as in etcd:
            // its keys go first, then it is granted anew.
            let now = now_ms();
            sweep_expired_leases(tx, now)?;
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO leases (id, ttl_ms, expires_at_ms) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![id, ttl_ms, now.saturating_add(ttl_ms)])?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.write(move |conn| {
            let now = now_ms();
            let n = conn
                .prepare_cached(
                    "UPDATE leases SET expires_at_ms = ?2 + ttl_ms
                     WHERE id = ?1 AND expires_at_ms > ?2",
                )?
                .execute(params![lease, now])?;
            if n == 0 {
                return Err(Error::LeaseNotFound(lease).into());
            }
            Ok(())
        })
        .await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.write(move |tx| {
            let known = tx
                .prepare_cached("SELECT 1 FROM leases WHERE id = ?1")?
                .exists([lease])?;
            if !known {
                return Err(Error::LeaseNotFound(lease).into());
            }
            let revision = meta(tx, "revision")? + 1;
            if delete_lease_keys(tx, lease, revision)? {
                set_meta(tx, "revision", revision)?;
            }
            tx.prepare_cached("DELETE FROM leases WHERE id = ?1")?
                .execute([lease])?;
            Ok(())
        })
        .await
    }

    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<LeaseTtl>> {
        self.read(move |conn| {
            let now = now_ms();
            let row: Option<(i64, i64)> = conn
                .prepare_cached(
                    "SELECT ttl_ms, expires_at_ms FROM leases WHERE id = ?1 AND expires_at_ms > ?2",
                )?
                .query_row(params![lease, now], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
            Ok(row.map(|(ttl, expires)| LeaseTtl {
                granted: ms(ttl),
                remaining: ms(expires - now),
            }))
        })
        .await
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.write(move |tx| {
            let current = meta(tx, "revision")?;
            let compacted = meta(tx, "compacted")?;
            if revision > current {
                return Err(Error::Other(format!(
                    "cannot compact at revision {revision}: it is in the future (current: {current})"
                ))
                .into());
            }
            if revision > compacted {
                compact_log(tx, revision)?;
            }
            // At or below the mark: already forgotten (the etcd backend says Ok too).
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{FutureExt, StreamExt};
    use std::time::Instant;

    type TestResult = anyhow::Result<()>;

    fn temp_store() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().expect("the temp dir is writable");
        let store = EmbeddedStore::open(&dir.path().join("store.db")).expect("a fresh file opens");
        (dir, store)
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    fn del(key: &str) -> Op {
        Op::Delete { key: key.into() }
    }

    fn txn(compares: Vec<Compare>, ops: Vec<Op>) -> Txn {
        Txn { compares, ops }
    }

    /// Reads `n` events from a watch, failing after a deadline.
    async fn collect(w: &mut WatchStream, n: usize) -> Vec<WatchEvent> {
        // A hang guard, generous for a loaded CI machine: never a timing assertion.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout_at(deadline, w.next()).await {
                Ok(Some(Ok(evs))) => out.extend(evs),
                Ok(Some(Err(e))) => panic!("watch failed after {} events: {e}", out.len()),
                Ok(None) => panic!("watch ended after {} of {n} events", out.len()),
                Err(_) => panic!("timed out after {} of {n} events: {out:?}", out.len()),
            }
        }
        assert_eq!(out.len(), n, "more events than expected: {out:?}");
        out
    }

    fn summary(evs: &[WatchEvent]) -> Vec<(EventType, String, i64)> {
        evs.iter()
            .map(|e| (e.kind, e.kv.key.clone(), e.kv.mod_revision))
            .collect()
    }

    /// Increments a counter key with compare-and-swap, retrying lost races.
    async fn increment(s: &EmbeddedStore, key: &str) -> Result<()> {
        loop {
            let (n, rev) = match s.get(key).await? {
                Some(kv) => (
                    String::from_utf8_lossy(&kv.value)
                        .parse::<u64>()
                        .unwrap_or(0),
                    kv.mod_revision,
                ),
                None => (0, 0),
            };
            let value = (n + 1).to_string();
            let res = s
                .txn(txn(
                    vec![Compare::mod_revision(key, rev)],
                    vec![put(key, &value)],
                ))
                .await?;
            if res.succeeded {
                return Ok(());
            }
        }
    }

    #[tokio::test]
    async fn txns_should_follow_etcd_revision_and_compare_rules() -> TestResult {
        let (_dir, s) = temp_store();
        assert_eq!(
            s.current_revision().await?,
            1,
            "a fresh store is at revision 1"
        );

        let r = s.put("/a", b"1".to_vec()).await?;
        assert_eq!(
            r,
            TxnResult {
                succeeded: true,
                revision: 2
            }
        );
        let r = s.put("/a", b"2".to_vec()).await?;
        assert_eq!(r.revision, 3);
        let kv = s.get("/a").await?.expect("just written");
        assert_eq!((kv.create_revision, kv.mod_revision, kv.lease), (2, 3, 0));
        assert_eq!(kv.value, b"2");

        // A failing compare writes nothing and reports the current revision.
        let r = s
            .txn(txn(
                vec![Compare::mod_revision("/a", 2)],
                vec![put("/b", "x")],
            ))
            .await?;
        assert_eq!(
            r,
            TxnResult {
                succeeded: false,
                revision: 3
            }
        );
        assert_eq!(s.get("/b").await?, None);

        // A missing key has revisions 0; a value compare on it is false whatever the op.
        for (c, want) in [
            (Compare::mod_revision("/missing", 0), true),
            (Compare::absent("/missing"), true),
            (Compare::exists("/missing"), false),
            (Compare::exists("/a"), true),
            (Compare::create_revision("/a", 2), true),
            (
                Compare {
                    key: "/missing".into(),
                    op: CompareOp::NotEqual,
                    target: CompareTarget::Value(b"x".to_vec()),
                },
                false,
            ),
            (
                Compare {
                    key: "/a".into(),
                    op: CompareOp::Greater,
                    target: CompareTarget::Value(b"1".to_vec()),
                },
                true,
            ),
            (
                Compare {
                    key: "/a".into(),
                    op: CompareOp::Less,
                    target: CompareTarget::ModRevision(3),
                },
                false,
            ),
        ] {
            let r = s.txn(txn(vec![c.clone()], vec![])).await?;
            assert_eq!(r.succeeded, want, "{c:?}");
            assert_eq!(r.revision, 3, "a txn without writes keeps the revision");
        }

        // Deleting a missing key changes nothing and bumps nothing.
        let r = s.txn(txn(vec![], vec![del("/missing")])).await?;
        assert_eq!(
            r,
            TxnResult {
                succeeded: true,
                revision: 3
            }
        );

        // All ops of one txn share one new revision.
        let r = s
            .txn(txn(vec![], vec![put("/b", "1"), put("/c", "1"), del("/a")]))
            .await?;
        assert_eq!(r.revision, 4);
        let (kvs, rev) = s.list("/", None).await?;
        assert_eq!(rev, 4);
        let got: Vec<_> = kvs
            .iter()
            .map(|k| (k.key.as_str(), k.mod_revision))
            .collect();
        assert_eq!(got, vec![("/b", 4), ("/c", 4)]);

        // Recreated after a delete: a new create revision.
        s.put("/a", b"3".to_vec()).await?;
        assert_eq!(s.get("/a").await?.map(|k| k.create_revision), Some(5));

        // Bad input is refused with a clear error, and writes nothing.
        let e = s.txn(txn(vec![], vec![put("/d", "1"), del("/d")])).await;
        assert!(
            matches!(&e, Err(Error::Other(m)) if m.contains("duplicate key \"/d\"")),
            "{e:?}"
        );
        let e = s.txn(txn(vec![], vec![put("", "1")])).await;
        assert!(
            matches!(&e, Err(Error::Other(m)) if m.contains("empty key")),
            "{e:?}"
        );
        assert_eq!(s.current_revision().await?, 5);
        Ok(())
    }

    #[tokio::test]
    async fn list_should_cover_exactly_the_prefix() -> TestResult {
        let (_dir, s) = temp_store();
        let keys = ["/a", "/a/", "/a/1", "/a/2", "/a0", "/b", "/é", "/é/x", "/f"];
        s.txn(txn(vec![], keys.iter().map(|k| put(k, "v")).collect()))
            .await?;
        for (prefix, want) in [
            ("/a/", vec!["/a/", "/a/1", "/a/2"]),
            ("/a", vec!["/a", "/a/", "/a/1", "/a/2", "/a0"]),
            ("/é", vec!["/é", "/é/x"]),
            // Byte order: "/f" < "/é" (0x66 < 0xC3).
            (
                "",
                vec!["/a", "/a/", "/a/1", "/a/2", "/a0", "/b", "/f", "/é", "/é/x"],
            ),
            ("/z", vec![]),
        ] {
            let (kvs, _) = s.list(prefix, None).await?;
            let got: Vec<_> = kvs.iter().map(|k| k.key.as_str()).collect();
            assert_eq!(got, want, "prefix {prefix:?}");
        }
        assert_eq!(prefix_end("/a"), Some("/b".into()));
        assert_eq!(prefix_end("a\u{10FFFF}"), Some("b".into()));
        assert_eq!(prefix_end("\u{D7FF}"), Some("\u{E000}".into()));
        assert_eq!(prefix_end(""), None);
        Ok(())
    }

    #[tokio::test]
    async fn puts_should_need_a_live_lease() -> TestResult {
        let (_dir, s) = temp_store();
        let op = |lease| Op::Put {
            key: "/l".into(),
            value: b"v".to_vec(),
            lease,
        };
        let e = s.txn(txn(vec![], vec![op(12345)])).await;
        assert!(matches!(e, Err(Error::LeaseNotFound(12345))), "{e:?}");

        let lease = s.grant_lease(Duration::from_secs(60)).await?;
        assert!(lease > 0);
        s.txn(txn(vec![], vec![op(lease)])).await?;
        assert_eq!(s.get("/l").await?.map(|k| k.lease), Some(lease));

        let short = s.grant_lease(Duration::from_millis(1)).await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while now_ms() <= 0 || s.keep_alive(short).await.is_ok() {
            assert!(Instant::now() < deadline, "a 1 ms lease never expired");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let e = s.txn(txn(vec![], vec![op(short)])).await;
        assert!(
            matches!(e, Err(Error::LeaseNotFound(l)) if l == short),
            "{e:?}"
        );
        assert!(matches!(
            s.keep_alive(short).await,
            Err(Error::LeaseNotFound(_))
        ));
        assert!(matches!(
            s.revoke_lease(777).await,
            Err(Error::LeaseNotFound(777))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn revoking_a_lease_should_delete_its_keys_with_delete_events() -> TestResult {
        let (_dir, s) = temp_store();
        let lease = s.grant_lease(Duration::from_secs(60)).await?;
        let bound = |key: &str| Op::Put {
            key: key.into(),
            value: b"v".to_vec(),
            lease,
        };
        let r = s
            .txn(txn(
                vec![],
                vec![bound("/k/1"), bound("/k/2"), put("/k/3", "free")],
            ))
            .await?;
        // Rebinding /k/2 to no lease frees it from the lease.
        s.put("/k/2", b"free".to_vec()).await?;
        let mut w = s.watch("/k/", r.revision + 2).await?;
        s.keep_alive(lease).await?;
        s.revoke_lease(lease).await?;
        let evs = collect(&mut w, 1).await;
        assert_eq!(
            summary(&evs),
            vec![(EventType::Delete, "/k/1".into(), r.revision + 2)]
        );
        assert_eq!(evs[0].kv.value, b"");
        let (kvs, _) = s.list("/k/", None).await?;
        assert_eq!(
            kvs.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
            ["/k/2", "/k/3"]
        );
        assert!(matches!(
            s.keep_alive(lease).await,
            Err(Error::LeaseNotFound(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn history_reads_should_see_keys_as_they_were_at_each_revision() -> TestResult {
        let (_dir, s) = temp_store();
        s.put("/h/a", b"a1".to_vec()).await?; // 2
        s.put("/h/b", b"b1".to_vec()).await?; // 3
        s.put("/h/a", b"a2".to_vec()).await?; // 4
        s.txn(txn(vec![], vec![del("/h/b")])).await?; // 5
        s.put("/h/b", b"b2".to_vec()).await?; // 6
        let at = |rev| {
            let s = s.clone();
            async move {
                let (kvs, read_at) = s.list("/h/", Some(rev)).await?;
                assert_eq!(read_at, rev);
                Ok::<_, Error>(
                    kvs.into_iter()
                        .map(|k| {
                            (
                                k.key,
                                String::from_utf8_lossy(&k.value).into_owned(),
                                k.create_revision,
                                k.mod_revision,
                            )
                        })
                        .collect::<Vec<_>>(),
                )
            }
        };
        let kv = |k: &str, v: &str, c, m| (k.to_string(), v.to_string(), c, m);
        assert_eq!(at(1).await?, vec![]);
        assert_eq!(at(2).await?, vec![kv("/h/a", "a1", 2, 2)]);
        assert_eq!(
            at(3).await?,
            vec![kv("/h/a", "a1", 2, 2), kv("/h/b", "b1", 3, 3)]
        );
        assert_eq!(
            at(4).await?,
            vec![kv("/h/a", "a2", 2, 4), kv("/h/b", "b1", 3, 3)]
        );
        assert_eq!(at(5).await?, vec![kv("/h/a", "a2", 2, 4)]);
        assert_eq!(
            at(6).await?,
            vec![kv("/h/a", "a2", 2, 4), kv("/h/b", "b2", 6, 6)]
        );
        let e = s.list("/h/", Some(7)).await;
        assert!(
            matches!(&e, Err(Error::Other(m)) if m.contains("future")),
            "{e:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn compaction_should_make_older_reads_and_watches_fail_with_compacted() -> TestResult {
        let (_dir, s) = temp_store();
        s.put("/c/a", b"1".to_vec()).await?; // 2
        s.put("/c/b", b"1".to_vec()).await?; // 3
        s.put("/c/a", b"2".to_vec()).await?; // 4
        s.txn(txn(vec![], vec![del("/c/b")])).await?; // 5
        s.put("/c/d", b"1".to_vec()).await?; // 6
        s.compact(5).await?;

        let e = s.list("/c/", Some(4)).await;
        assert!(
            matches!(
                e,
                Err(Error::Compacted {
                    requested: 4,
                    compacted: 5
                })
            ),
            "{e:?}"
        );
        let mut w = s.watch("/c/", 4).await?;
        let first = w.next().await.expect("one item before the end");
        assert!(
            matches!(
                first,
                Err(Error::Compacted {
                    requested: 4,
                    compacted: 5
                })
            ),
            "{first:?}"
        );
        assert!(w.next().await.is_none(), "a compacted watch ends");
        assert_eq!(s.watcher_count(), 0);

        // The compacted revision itself is still readable and watchable.
        let (kvs, _) = s.list("/c/", Some(5)).await?;
        assert_eq!(
            kvs.iter()
                .map(|k| (k.key.as_str(), k.mod_revision))
                .collect::<Vec<_>>(),
            [("/c/a", 4)]
        );
        let mut w = s.watch("/c/", 5).await?;
        let evs = collect(&mut w, 2).await;
        assert_eq!(
            summary(&evs),
            vec![
                (EventType::Delete, "/c/b".into(), 5),
                (EventType::Put, "/c/d".into(), 6)
            ]
        );
        // Compacting again at or below the mark is harmless; in the future, refused.
        s.compact(5).await?;
        s.compact(3).await?;
        let e = s.compact(99).await;
        assert!(
            matches!(&e, Err(Error::Other(m)) if m.contains("future")),
            "{e:?}"
        );
        // History rows left: the latest of each live key, and everything from 5 on.
        let rows = s
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM log", [], |r| r.get::<_, i64>(0))?))
            .await?;
        assert_eq!(rows, 3, "/c/a@4, /c/b tombstone@5, /c/d@6");
        Ok(())
    }

    #[tokio::test]
    async fn auto_compaction_should_keep_the_last_revisions() -> TestResult {
        let (_dir, s) = temp_store();
        for i in 0..20 {
            s.put("/ac/k", i.to_string().into_bytes()).await?; // 2..=21
        }
        assert_eq!(s.write(|tx| auto_compact(tx, 5)).await?, Some(16));
        assert_eq!(s.write(|tx| auto_compact(tx, 5)).await?, None);
        assert!(matches!(
            s.list("/ac/", Some(15)).await,
            Err(Error::Compacted { compacted: 16, .. })
        ));
        let (kvs, _) = s.list("/ac/", Some(16)).await?;
        assert_eq!(kvs[0].value, b"14");
        Ok(())
    }

    #[test]
    fn a_poller_that_falls_behind_a_compaction_should_tell_its_watchers_to_relist() {
        let mut reg = Registry {
            delivered: 5,
            ..Registry::default()
        };
        let (tx_old, mut rx_old) = mpsc::unbounded_channel();
        let (tx_new, mut rx_new) = mpsc::unbounded_channel();
        reg.add(
            "/a/",
            Watcher {
                from: 3,
                tx: tx_old,
            },
        );
        reg.add(
            "/a/",
            Watcher {
                from: 9,
                tx: tx_new,
            },
        );
        let ev = WatchEvent {
            kind: EventType::Put,
            kv: KeyValue {
                key: "/a/x".into(),
                value: vec![],
                create_revision: 9,
                mod_revision: 9,
                lease: 0,
            },
        };
        // Revisions 6..8 may have lost rows to a compaction at 8 before the poller read them.
        reg.fan_out(vec![ev.clone()], 9, 8);
        let got = rx_old.try_recv().expect("the lagging watcher hears of it");
        assert!(
            matches!(
                got,
                Err(Error::Compacted {
                    requested: 6,
                    compacted: 8
                })
            ),
            "{got:?}"
        );
        assert!(rx_old.try_recv().is_err(), "and its stream ends");
        assert_eq!(
            rx_new.try_recv().expect("unaffected").expect("events"),
            vec![ev]
        );
        assert_eq!((reg.delivered, reg.prefix_of.len()), (9, 1));
    }

    #[tokio::test]
    async fn a_watch_should_replay_history_then_follow_grouped_per_revision_in_op_order(
    ) -> TestResult {
        let (_dir, s) = temp_store();
        s.put("/w/a", b"1".to_vec()).await?; // 2
        s.put("/other", b"1".to_vec()).await?; // 3
        s.txn(txn(
            vec![],
            vec![put("/w/z", "1"), put("/w/b", "1"), del("/w/a")],
        ))
        .await?; // 4
        let mut w = s.watch("/w/", 2).await?;
        let mut live = s.watch("/w/", s.current_revision().await? + 1).await?;
        s.txn(txn(vec![], vec![put("/w/y", "2"), put("/w/c", "2")]))
            .await?; // 5
        let evs = collect(&mut w, 6).await;
        let mut from_zero = s.watch("/w/", 0).await?;
        assert_eq!(
            summary(&collect(&mut from_zero, 6).await),
            summary(&evs),
            "0: all history"
        );
        assert_eq!(
            summary(&evs),
            vec![
                (EventType::Put, "/w/a".into(), 2),
                (EventType::Put, "/w/z".into(), 4),
                (EventType::Put, "/w/b".into(), 4),
                (EventType::Delete, "/w/a".into(), 4),
                (EventType::Put, "/w/y".into(), 5),
                (EventType::Put, "/w/c".into(), 5),
            ]
        );
        // A watch from the next revision sees only what follows; one txn is one item.
        let item = tokio::time::timeout(Duration::from_secs(5), live.next())
            .await?
            .expect("the watch is open")?;
        assert_eq!(
            summary(&item).iter().map(|e| e.2).collect::<Vec<_>>(),
            [5, 5]
        );
        assert_eq!(item[1].kv.create_revision, 5);
        assert!(w.next().now_or_never().is_none(), "nothing more");
        Ok(())
    }

    #[tokio::test]
    async fn a_long_replay_should_come_in_chunks_that_never_split_a_revision() -> TestResult {
        let (_dir, s) = temp_store();
        for t in 0..3 {
            let ops = (0..600)
                .map(|i| put(&format!("/ch/{t}/{i:03}"), "v"))
                .collect();
            s.txn(txn(vec![], ops)).await?;
        }
        // Only what the poller has passed is replayed; wait until it has passed all three.
        let last = s.current_revision().await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&s.inner.shared.registry).delivered < last {
            assert!(Instant::now() < deadline, "the poller never reached {last}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut w = s.watch("/ch/", 1).await?;
        let mut items = Vec::new();
        while items.iter().map(Vec::len).sum::<usize>() < 1800 {
            let item = tokio::time::timeout(Duration::from_secs(5), w.next())
                .await?
                .expect("the watch is open")?;
            items.push(item);
        }
        let sizes: Vec<usize> = items.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1200, 600]);
        for pair in items.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert_ne!(a[a.len() - 1].kv.mod_revision, b[0].kv.mod_revision);
        }
        Ok(())
    }

    #[tokio::test]
    async fn dropping_a_watch_should_unregister_it() -> TestResult {
        let (_dir, s) = temp_store();
        let a = s.watch("/a/", 0).await?;
        let b = s.watch("/a/", 0).await?;
        let c = s.watch("/b/", 0).await?;
        assert_eq!(s.watcher_count(), 3);
        drop(a);
        drop(c);
        assert_eq!(s.watcher_count(), 1);
        drop(b);
        assert_eq!(s.watcher_count(), 0);
        let reg = lock(&s.inner.shared.registry);
        assert!(reg.by_prefix.is_empty() && reg.lengths.is_empty());
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_handles_on_one_file_should_see_each_others_writes_and_watches() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nested/dir/store.db");
        let a = EmbeddedStore::open(&path)?;
        let b = EmbeddedStore::open(&path)?;
        assert_eq!(b.endpoint(), path.display().to_string());
        let mut wb = b.watch("/x/", 0).await?;
        let r = a.put("/x/1", b"from a".to_vec()).await?;
        let kv = b.get("/x/1").await?.expect("a's write is visible to b");
        assert_eq!(
            (kv.value.as_slice(), kv.mod_revision),
            (&b"from a"[..], r.revision)
        );
        // b's compare-and-swap on a's revision succeeds once, then conflicts.
        let cas = || {
            txn(
                vec![Compare::mod_revision("/x/1", r.revision)],
                vec![put("/x/1", "from b")],
            )
        };
        assert!(b.txn(cas()).await?.succeeded);
        assert!(!a.txn(cas()).await?.succeeded);
        assert_eq!(
            a.get("/x/1").await?.map(|k| k.value),
            Some(b"from b".to_vec())
        );
        let evs = collect(&mut wb, 2).await;
        assert_eq!(
            summary(&evs),
            vec![
                (EventType::Put, "/x/1".into(), r.revision),
                (EventType::Put, "/x/1".into(), r.revision + 1)
            ]
        );
        // Concurrent CAS increments through both handles: none lost, none doubled.
        let (ra, rb) = tokio::join!(
            async {
                for _ in 0..50 {
                    increment(&a, "/x/n").await?;
                }
                Ok::<_, Error>(())
            },
            async {
                for _ in 0..50 {
                    increment(&b, "/x/n").await?;
                }
                Ok::<_, Error>(())
            }
        );
        ra?;
        rb?;
        assert_eq!(a.get("/x/n").await?.map(|k| k.value), Some(b"100".to_vec()));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_in_one_handle_should_see_each_write_through_another() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.db");
        let a = EmbeddedStore::open(&path)?;
        let b = EmbeddedStore::open(&path)?;
        let mut w = b.watch("/lat/", 0).await?;
        let mut times = Vec::new();
        for i in 0..20 {
            let t0 = Instant::now();
            let r = a.put(&format!("/lat/{i}"), b"v".to_vec()).await?;
            let evs = collect(&mut w, 1).await;
            times.push(t0.elapsed());
            assert_eq!(evs[0].kv.mod_revision, r.revision);
        }
        times.sort();
        // Printed, not asserted: speed is measured in benchmarks (the poller wakes every
        // 10 ms, so the median is about that on an idle machine).
        eprintln!(
            "cross-handle watch latency: median {:?}, max {:?}",
            times[times.len() / 2],
            times[times.len() - 1]
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_lease_should_be_swept_through_another_handle() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.db");
        let b = EmbeddedStore::open(&path)?;
        let (lease, rev) = {
            let a = EmbeddedStore::open(&path)?;
            let lease = a.grant_lease(Duration::from_secs(1)).await?;
            let r = a
                .txn(txn(
                    vec![],
                    vec![Op::Put {
                        key: "/m/1".into(),
                        value: b"alive".to_vec(),
                        lease,
                    }],
                ))
                .await?;
            (lease, r.revision)
            // `a` (and its poller) goes away here, like a process that died.
        };
        let mut w = b.watch("/m/", rev).await?;
        let t0 = Instant::now();
        let evs = collect(&mut w, 2).await;
        assert_eq!(
            summary(&evs),
            vec![
                (EventType::Put, "/m/1".into(), rev),
                (EventType::Delete, "/m/1".into(), rev + 1)
            ]
        );
        eprintln!("lease swept {:?} after the watch started", t0.elapsed());
        assert_eq!(b.get("/m/1").await?, None);
        assert!(matches!(
            b.keep_alive(lease).await,
            Err(Error::LeaseNotFound(_))
        ));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keep_alive_should_hold_a_lease_past_its_ttl() -> TestResult {
        let (_dir, s) = temp_store();
        // Refreshed every quarter TTL for more than a TTL and a second: a stall of less
        // than three quarters of the TTL cannot lose it.
        let lease = s.grant_lease(Duration::from_secs(1)).await?;
        s.txn(txn(
            vec![],
            vec![Op::Put {
                key: "/k".into(),
                value: b"v".to_vec(),
                lease,
            }],
        ))
        .await?;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(2200) {
            s.keep_alive(lease).await?;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            s.get("/k").await?.is_some(),
            "a kept-alive lease keeps its keys"
        );
        Ok(())
    }

    #[test]
    fn many_connections_opening_a_new_store_file_at_once_should_all_succeed() {
        // `deployctl up` starts the controller and agents at once on one new file; each
        // switches it to WAL and creates the schema.
        for round in 0..20 {
            let dir = tempfile::tempdir().expect("the temp dir is writable");
            let path = dir.path().join("store.db");
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let opens: Vec<_> = (0..8)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        EmbeddedStore::open(&path).map(drop)
                    })
                })
                .collect();
            for o in opens {
                let r = o.join().expect("open does not panic");
                assert!(r.is_ok(), "round {round}: {:?}", r.err());
            }
        }
    }

    #[tokio::test]
    async fn open_should_name_the_path_when_it_cannot() -> TestResult {
        let dir = tempfile::tempdir()?;
        let e = EmbeddedStore::open(dir.path())
            .err()
            .expect("a directory is no store");
        let msg = e.to_string();
        assert!(
            msg.contains(&dir.path().display().to_string()) && msg.contains("directory"),
            "{msg}"
        );

        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![b'x'; 4096])?;
        let e = EmbeddedStore::open(&junk).err().expect("junk is no store");
        let msg = e.to_string();
        assert!(
            msg.contains("junk.db") && msg.contains("not a SQLite database"),
            "{msg}"
        );

        let file = dir.path().join("file");
        std::fs::write(&file, b"")?;
        let e = EmbeddedStore::open(&file.join("store.db"))
            .err()
            .expect("a file is no directory");
        assert!(e.to_string().contains("file/store.db"), "{e}");

        // A directory nobody may create (even root, on /proc): the message says which.
        if cfg!(target_os = "linux") {
            let e = EmbeddedStore::open(Path::new("/proc/deployctl/store.db"))
                .err()
                .expect("/proc takes no new directories");
            let msg = e.to_string();
            assert!(
                msg.contains("cannot create the directory of store file /proc/deployctl/store.db"),
                "{msg}"
            );
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn big_txns_and_lists_should_each_be_one_sqlite_transaction() -> TestResult {
        let (_dir, s) = temp_store();
        let t0 = Instant::now();
        for batch in 0..10 {
            let ops = (0..1000)
                .map(|i| {
                    put(
                        &format!("/big/{batch:02}/{i:04}"),
                        "some value of a few bytes",
                    )
                })
                .collect();
            let r = s.txn(txn(vec![], ops)).await?;
            assert_eq!(r.revision, 2 + batch, "one txn, one revision");
        }
        let put_time = t0.elapsed();
        let t1 = Instant::now();
        let (kvs, _) = s.list("/big/", None).await?;
        let list_time = t1.elapsed();
        assert_eq!(kvs.len(), 10_000);
        let t2 = Instant::now();
        let (old, _) = s.list("/big/", Some(6)).await?;
        let history_time = t2.elapsed();
        assert_eq!(old.len(), 5_000);
        eprintln!("10 txns of 1000 puts: {put_time:?}; list 10k: {list_time:?}; list 5k at old rev: {history_time:?}");
        assert!(put_time < Duration::from_secs(10) && list_time < Duration::from_secs(2));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_watchers_should_each_get_only_their_own_prefix() -> TestResult {
        let (_dir, s) = temp_store();
        let t0 = Instant::now();
        let mut watches = Vec::new();
        for i in 0..10_000 {
            watches.push(s.watch(&format!("/deployctl/instances/m{i}/"), 0).await?);
        }
        let register_time = t0.elapsed();
        // One txn touches every tenth machine; one more key matches no watcher.
        let mut ops: Vec<Op> = (0..10_000)
            .step_by(10)
            .map(|i| put(&format!("/deployctl/instances/m{i}/default/api"), "spec"))
            .collect();
        ops.push(put("/deployctl/instances/nobody", "x"));
        let t1 = Instant::now();
        let r = s.txn(txn(vec![], ops)).await?;
        for (i, w) in watches.iter_mut().enumerate().step_by(10) {
            let evs = collect(w, 1).await;
            assert_eq!(
                evs[0].kv.key,
                format!("/deployctl/instances/m{i}/default/api")
            );
            assert_eq!(evs[0].kv.mod_revision, r.revision);
        }
        let fan_out_time = t1.elapsed();
        for (i, w) in watches.iter_mut().enumerate() {
            if i % 10 != 0 {
                assert!(
                    w.next().now_or_never().is_none(),
                    "watcher {i} got another's event"
                );
            }
        }
        eprintln!("10k watchers: registered in {register_time:?}; 1000-put txn fanned out in {fan_out_time:?}");
        drop(watches);
        assert_eq!(s.watcher_count(), 0);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_should_each_get_their_own_revision_and_fail_alone() -> TestResult {
        let (_dir, s) = temp_store();
        let start = s.current_revision().await?;
        // Many writes at once land in shared SQLite transactions (group commit); a txn that
        // fails half-way (unknown lease on its second op) must leave no trace.
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut ops = vec![put(&format!("/g/{i:04}"), "v")];
                    if i % 2 == 1 {
                        ops.push(Op::Put {
                            key: format!("/g/{i:04}-bound"),
                            value: vec![],
                            lease: 42,
                        });
                    }
                    s.txn(txn(vec![], ops)).await
                })
            })
            .collect();
        let t0 = Instant::now();
        let mut revisions = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await? {
                Ok(r) => {
                    assert!(i % 2 == 0, "txn {i} should have failed");
                    revisions.push(r.revision);
                }
                Err(Error::LeaseNotFound(42)) => assert!(i % 2 == 1, "txn {i} should have passed"),
                Err(e) => panic!("txn {i}: {e}"),
            }
        }
        eprintln!("1000 concurrent txns: {:?}", t0.elapsed());
        revisions.sort();
        let want: Vec<i64> = (start + 1..=start + 500).collect();
        assert_eq!(revisions, want, "one revision per successful txn, no gaps");
        let (kvs, rev) = s.list("/g/", None).await?;
        assert_eq!(rev, start + 500);
        assert_eq!(kvs.len(), 500);
        assert!(kvs
            .iter()
            .all(|k| k.key[3..].parse::<u32>().is_ok_and(|n| n % 2 == 0)));
        Ok(())
    }

    /// Env var naming the store file for the child process of the two-process test.
    const CHILD_ENV: &str = "DEPLOYCTL_EMBEDDED_TEST_CHILD_STORE";

    /// Not a test on its own: the writer process that
    /// `two_processes_should_share_one_store_file` runs (this test binary, re-executed).
    #[test]
    #[ignore = "run as a child process by two_processes_should_share_one_store_file"]
    fn child_writer_process() {
        let path = std::env::var_os(CHILD_ENV).expect(
            "run only by two_processes_should_share_one_store_file, which sets the env var",
        );
        let rt = tokio::runtime::Runtime::new().expect("a runtime starts in a test process");
        rt.block_on(async {
            let s = EmbeddedStore::open(Path::new(&path))?;
            let lease = s.grant_lease(Duration::from_secs(2)).await?;
            s.txn(txn(
                vec![],
                vec![Op::Put {
                    key: "/p/child-lease".into(),
                    value: b"alive".to_vec(),
                    lease,
                }],
            ))
            .await?;
            for _ in 0..50 {
                increment(&s, "/p/counter").await?;
            }
            s.put("/p/child-done", b"yes".to_vec()).await?;
            // Timestamped writes (wall clock, shared with the parent) to time the watch.
            for i in 0..10 {
                s.put(&format!("/p/tick/{i}"), now_ms().to_string().into_bytes())
                    .await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, Error>(())
        })
        .expect("the child's writes succeed");
        // Exits without revoking its lease, like a crashed agent.
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_should_share_one_store_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.db");
        let s = EmbeddedStore::open(&path)?;
        let mut w = s.watch("/p/child-", 0).await?;
        // Times each tick from the child's write to our watch, as it arrives (a late poll
        // may bring two ticks in one item).
        let mut ticks = s.watch("/p/tick/", 0).await?;
        let latencies = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let mut out = Vec::new();
            while out.len() < 10 {
                let item = tokio::time::timeout_at(deadline, ticks.next())
                    .await
                    .expect("the child's ten ticks arrive")
                    .expect("the watch is open")
                    .expect("the watch works");
                for ev in item {
                    let written: i64 = String::from_utf8_lossy(&ev.kv.value).parse().unwrap_or(0);
                    out.push(now_ms() - written);
                }
            }
            out
        });
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .args([
                "--ignored",
                "--exact",
                "store::embedded::tests::child_writer_process",
            ])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        for _ in 0..50 {
            increment(&s, "/p/counter").await?;
        }
        let status = child.wait().await?;
        assert!(
            status.success(),
            "the child writer process failed: {status}"
        );
        assert_eq!(
            s.get("/p/counter").await?.map(|k| k.value),
            Some(b"100".to_vec())
        );
        // The child's writes reach our watch; its abandoned lease is swept (by whichever
        // process's poller comes first, possibly before the child is done).
        let evs = collect(&mut w, 3).await;
        let mut kinds: Vec<_> = evs.iter().map(|e| (e.kind, e.kv.key.as_str())).collect();
        assert_eq!(kinds.remove(0), (EventType::Put, "/p/child-lease"));
        kinds.sort_by_key(|k| k.1);
        assert_eq!(
            kinds,
            [
                (EventType::Put, "/p/child-done"),
                (EventType::Delete, "/p/child-lease"),
            ]
        );
        let mut latencies = latencies.await?;
        latencies.sort();
        // Printed, not asserted: speed is measured in benchmarks.
        eprintln!("cross-process watch latency (ms): {latencies:?}");
        assert_eq!(latencies.len(), 10, "each tick once");
        Ok(())
    }
}

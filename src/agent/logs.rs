//! Keeps every hook run's and the service's output on the agent's disk, stamped and
//! rotated, and answers `deployctl logs` requests from it through the store.
//!
//! On disk: `<root>/<namespace>/<app>/logs/<source>.log` (and `.1`, `.2` once rotated),
//! one file per source (`install` … `clean`, `service`), one line per output line:
//! `time<TAB>source<TAB>version<TAB>stdout|stderr<TAB>text`. Lines come from
//! [`super::hooks::BoundedLines`], so none is longer than `MAX_LINE_BYTES` plus a note.
//!
//! In the store: the CLI writes a request under `/deployctl/logs/<machine>/requests/`,
//! bound to a short lease of its own; [`serve`] answers with chunks of at most
//! [`MAX_CHUNK_BYTES`] on that same lease (a follower keeps writing them), so nothing
//! outlives the requester and the agent never listens on a port.

use super::hooks::BoundedLines;
use crate::store::{Client, LeaseId, LogRequestEvent};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufRead;
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;

/// A log file is rotated when the next line would take it past this size: days of a
/// chatty hook's output, and still a quick file to read the tail of.
pub const ROTATE_BYTES: u64 = 10 * 1024 * 1024;
/// Files kept per source (the live one and two rotated ones): at most 30 MiB per source
/// of one application, whatever its hooks and service print.
pub const KEEP_FILES: usize = 3;
/// The largest answer chunk written to the store: far below etcd's 1.5 MiB request
/// limit, and small enough that a few followers cost the store little.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;
/// The most lines one request may ask for: bounds the agent's memory for an answer and
/// the answer's size in the store (at most a few MiB, in chunks).
pub const MAX_TAIL: u32 = 1000;
/// The sources `--hook` names: the hooks that deploy (health checks and `getVersion` run
/// every few seconds and report through the Instance status instead), the service, and
/// the commands of `deployctl run` (`task`: one at a time per Application and machine,
/// so a Task's lines are those within its run's start and finish).
pub const SOURCES: [&str; 7] = [
    "install",
    "beforeActivate",
    "activate",
    "afterActivate",
    "clean",
    "service",
    "task",
];
/// Lines a follower may fall behind the writers before it skips some (and says how many).
const FOLLOW_BUFFER: usize = 1024;
/// How long a follower collects new lines before writing them as one chunk: at most four
/// writes a second per follower, however fast the service prints.
const FOLLOW_FLUSH: Duration = Duration::from_millis(250);
/// Chunks a follower leaves in the store: older ones are deleted as new ones are written
/// (the requester reads each as it comes), so a long follow stays bounded.
const FOLLOW_KEEP_CHUNKS: u64 = 8;
/// Requests answered at once (followers included); more are refused with an answer that
/// says so, so that requests cannot grow the agent's memory or its writes.
const MAX_ANSWERING: usize = 8;
/// The block read backwards when looking for the last lines of a file.
const TAIL_BLOCK: u64 = 64 * 1024;

/// Which of a process's two outputs a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One stamped line of output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub time: DateTime<Utc>,
    /// The hook (`install` …) or `service`.
    pub source: String,
    /// The version the hook ran for, or the service ran as.
    pub version: String,
    pub stream: Stream,
    pub text: String,
}

impl LogLine {
    /// The line as stored on disk, without its newline.
    fn to_disk(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}",
            self.time.to_rfc3339_opts(SecondsFormat::Micros, true),
            self.source,
            self.version,
            self.stream.as_str(),
            self.text
        )
    }

    /// Parses a line written by [`LogLine::to_disk`]; `None` for anything else.
    fn from_disk(line: &str) -> Option<LogLine> {
        let mut parts = line.splitn(5, '\t');
        let time = DateTime::parse_from_rfc3339(parts.next()?).ok()?.to_utc();
        let source = parts.next()?.to_string();
        let version = parts.next()?.to_string();
        let stream = match parts.next()? {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            _ => return None,
        };
        let text = parts.next()?.to_string();
        Some(LogLine {
            time,
            source,
            version,
            stream,
            text,
        })
    }
}

/// The log directory of one application on this machine.
pub fn log_dir(root: &Path, namespace: &str, app: &str) -> PathBuf {
    root.join(namespace).join(app).join("logs")
}

/// Every application's log opened by this process, by directory: one writer per file,
/// whichever hook, service or request opens it, so that rotation never races a write.
static OPEN: LazyLock<Mutex<HashMap<PathBuf, Arc<AppLog>>>> = LazyLock::new(Default::default);

/// The log of one application, shared by everything of this process that writes or
/// reads it. Nothing is created on disk until the first line.
pub fn open(root: &Path, namespace: &str, app: &str) -> Arc<AppLog> {
    let dir = log_dir(root, namespace, app);
    let mut open = OPEN.lock().expect("log registry lock: no panics inside");
    open.entry(dir.clone())
        .or_insert_with(|| Arc::new(AppLog::new(dir, ROTATE_BYTES)))
        .clone()
}

/// The files of one application's log, and the new lines for followers.
#[derive(Debug)]
pub struct AppLog {
    dir: PathBuf,
    rotate_bytes: u64,
    /// The open live file and its size, per source. One lock for the application: a
    /// write is a short append, and readers take it to see whole files between rotations.
    files: Mutex<HashMap<String, (File, u64)>>,
    /// Every line written, for followers; a slow one skips lines rather than hold memory.
    new_lines: broadcast::Sender<LogLine>,
}

impl AppLog {
    pub fn new(dir: PathBuf, rotate_bytes: u64) -> AppLog {
        AppLog {
            dir,
            rotate_bytes,
            files: Mutex::new(HashMap::new()),
            new_lines: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }

    /// The live file of `source`; `<file>.1` … are the rotated ones, newest first.
    fn path(&self, source: &str, generation: usize) -> PathBuf {
        match generation {
            0 => self.dir.join(format!("{source}.log")),
            n => self.dir.join(format!("{source}.log.{n}")),
        }
    }

    /// Appends one line of `source`'s output, rotating first when it would pass the size
    /// limit. A disk error is logged, never returned: output is never a reason for a hook
    /// or a service to fail.
    pub fn write(&self, source: &str, version: &str, stream: Stream, text: &str) {
        let line = LogLine {
            time: Utc::now(),
            source: source.to_string(),
            version: version.to_string(),
            stream,
            text: text.to_string(),
        };
        let mut files = self.files.lock().expect("log file lock: no panics inside");
        if let Err(e) = self.append(&mut files, &line) {
            tracing::warn!(dir = %self.dir.display(), source, error = %e, "cannot write log line");
        }
        let _ = self.new_lines.send(line);
    }

    fn append(&self, files: &mut HashMap<String, (File, u64)>, line: &LogLine) -> io::Result<()> {
        let mut text = line.to_disk();
        text.push('\n');
        let len = text.len() as u64;
        let full = files
            .get(&line.source)
            .is_some_and(|(_, size)| *size > 0 && size + len > self.rotate_bytes);
        if full {
            files.remove(&line.source);
            self.rotate(&line.source)?;
        }
        let entry = match files.entry(line.source.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                fs::create_dir_all(&self.dir)?;
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.path(&line.source, 0))?;
                let size = file.metadata()?.len();
                if size > 0 && size + len > self.rotate_bytes {
                    drop(file);
                    self.rotate(&line.source)?;
                    let file = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(self.path(&line.source, 0))?;
                    v.insert((file, 0))
                } else {
                    v.insert((file, size))
                }
            }
        };
        entry.0.write_all(text.as_bytes())?;
        entry.1 += len;
        Ok(())
    }

    /// `x.log.1` → `x.log.2` …, `x.log` → `x.log.1`; the oldest beyond [`KEEP_FILES`]
    /// is overwritten.
    fn rotate(&self, source: &str) -> io::Result<()> {
        for generation in (1..KEEP_FILES).rev() {
            let from = self.path(source, generation - 1);
            if from.exists() {
                fs::rename(&from, self.path(source, generation))?;
            }
        }
        Ok(())
    }

    /// The last `n` lines of `source` (every source when `None`), oldest first.
    pub fn tail(&self, source: Option<&str>, n: usize) -> Vec<LogLine> {
        let _files = self.files.lock().expect("log file lock: no panics inside");
        self.tail_locked(source, n)
    }

    /// [`AppLog::tail`] and every line written after it, with none lost or repeated in
    /// between.
    pub fn follow(
        &self,
        source: Option<&str>,
        n: usize,
    ) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let _files = self.files.lock().expect("log file lock: no panics inside");
        (self.tail_locked(source, n), self.new_lines.subscribe())
    }

    fn tail_locked(&self, source: Option<&str>, n: usize) -> Vec<LogLine> {
        let sources: Vec<&str> = match source {
            Some(s) => vec![s],
            None => SOURCES.to_vec(),
        };
        let mut lines = Vec::new();
        for s in sources {
            lines.extend(self.source_tail(s, n));
        }
        // Each source is in order; one wall clock stamped them all.
        lines.sort_by_key(|l| l.time);
        let skip = lines.len().saturating_sub(n);
        lines.split_off(skip)
    }

    /// The last `n` lines of one source, from its rotated files as far as needed.
    fn source_tail(&self, source: &str, n: usize) -> Vec<LogLine> {
        let mut found: Vec<LogLine> = Vec::new();
        for generation in 0..KEEP_FILES {
            let want = n - found.len();
            if want == 0 {
                break;
            }
            let path = self.path(source, generation);
            match last_lines(&path, want) {
                Ok(mut older) => {
                    older.append(&mut found);
                    found = older;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read log file");
                    break;
                }
            }
        }
        found
    }
}

/// The last `n` parseable lines of a log file, oldest first: reads backwards in blocks
/// until it has seen `n` line ends, so that time and memory follow `n`, not the file.
fn last_lines(path: &Path, n: usize) -> io::Result<Vec<LogLine>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut start = len;
    let mut newlines = 0;
    let mut block = vec![0u8; TAIL_BLOCK as usize];
    // A file ends with a newline; n lines need n + 1 line ends before them (or the start).
    while start > 0 && newlines <= n {
        let size = TAIL_BLOCK.min(start);
        start -= size;
        file.seek(SeekFrom::Start(start))?;
        let buf = &mut block[..size as usize];
        file.read_exact(buf)?;
        for (i, b) in buf.iter().enumerate().rev() {
            if *b == b'\n' {
                newlines += 1;
                if newlines == n + 1 {
                    start += i as u64 + 1;
                    break;
                }
            }
        }
    }
    file.seek(SeekFrom::Start(start))?;
    let mut lines: Vec<LogLine> = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| LogLine::from_disk(&l))
        .collect();
    let skip = lines.len().saturating_sub(n);
    Ok(lines.split_off(skip))
}

/// A process's stdout and stderr read as one sequence of lines, each tagged with its
/// stream. Two pipes keep the streams apart (one pipe would keep the order exactly but
/// lose which stream a line came from), and lines are taken as they arrive: lines
/// written apart in time keep their order. When both pipes hold lines at once, which was
/// written first is unknowable; they are taken in turn, one from each, which is the order
/// of a program that writes to both alternately.
pub struct Output<A, B> {
    out: BoundedLines<A>,
    err: BoundedLines<B>,
    out_done: bool,
    err_done: bool,
    /// Take stderr first when both have a line: the last line came from stdout.
    err_first: bool,
}

impl<A: AsyncBufRead + Unpin, B: AsyncBufRead + Unpin> Output<A, B> {
    pub fn new(out: A, err: B) -> Self {
        Output {
            out: BoundedLines::new(out),
            err: BoundedLines::new(err),
            out_done: false,
            err_done: false,
            err_first: false,
        }
    }

    /// The next line of either stream, `None` once both have ended. Cancel-safe: a line
    /// is only taken by the branch that returns it.
    pub async fn next_line(&mut self) -> Option<(Stream, String)> {
        loop {
            if self.out_done && self.err_done {
                return None;
            }
            let (stream, line) = if self.err_first {
                tokio::select! {
                    biased;
                    l = self.err.next_line(), if !self.err_done => (Stream::Stderr, l),
                    l = self.out.next_line(), if !self.out_done => (Stream::Stdout, l),
                }
            } else {
                tokio::select! {
                    biased;
                    l = self.out.next_line(), if !self.out_done => (Stream::Stdout, l),
                    l = self.err.next_line(), if !self.err_done => (Stream::Stderr, l),
                }
            };
            match (stream, line) {
                (s, Ok(Some(l))) => {
                    self.err_first = s == Stream::Stdout;
                    return Some((s, l));
                }
                (Stream::Stdout, _) => self.out_done = true,
                (Stream::Stderr, _) => self.err_done = true,
            }
        }
    }
}

/// Writes a service's output into its log until both pipes close (the process group is
/// gone), in a task of its own.
pub fn capture_service(log: Arc<AppLog>, version: String, child: &mut tokio::process::Child) {
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return;
    };
    tokio::spawn(async move {
        let mut output = Output::new(
            tokio::io::BufReader::new(out),
            tokio::io::BufReader::new(err),
        );
        while let Some((stream, line)) = output.next_line().await {
            log.write("service", &version, stream, &line);
        }
    });
}

/// What `deployctl logs` asks one machine for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogRequest {
    pub namespace: String,
    pub app: String,
    /// One of [`SOURCES`]; every source when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// How many of the last lines; at most [`MAX_TAIL`].
    pub tail: u32,
    /// Keep sending new lines until the request's lease ends.
    #[serde(default)]
    pub follow: bool,
}

/// One chunk of an answer, at most [`MAX_CHUNK_BYTES`] as JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogAnswer {
    pub lines: Vec<LogLine>,
    /// The last chunk of a request that does not follow.
    #[serde(default)]
    pub done: bool,
    /// Why the request cannot be answered; the last chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Lines a follower skipped before these because it fell behind the writers.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why a request is refused; the message goes back to the requester.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot read log request: {0}")]
    Decode(String),
    #[error("log request has an invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("log request asks for {0} lines; at most {MAX_TAIL}")]
    TailTooLong(u32),
    #[error("machine is answering {MAX_ANSWERING} log requests already; try again later")]
    Busy,
}

impl LogRequest {
    /// Decodes and checks a request: names that become paths are valid names, and the
    /// source is one this agent logs.
    pub fn parse(value: &[u8]) -> Result<LogRequest, RequestError> {
        let req: LogRequest =
            serde_json::from_slice(value).map_err(|e| RequestError::Decode(e.to_string()))?;
        let invalid = |field, message: String| RequestError::Invalid { field, message };
        crate::api::validation::check_name(&req.namespace).map_err(|e| invalid("namespace", e))?;
        crate::api::validation::check_name(&req.app).map_err(|e| invalid("app", e))?;
        if let Some(s) = &req.source {
            if !SOURCES.contains(&s.as_str()) {
                return Err(invalid(
                    "source",
                    format!("{s:?} is not one of {}", SOURCES.join(", ")),
                ));
            }
        }
        if req.tail > MAX_TAIL {
            return Err(RequestError::TailTooLong(req.tail));
        }
        Ok(req)
    }
}

/// Splits lines into answers of at most [`MAX_CHUNK_BYTES`] as JSON each (at least one,
/// empty when there are no lines).
pub fn chunks(lines: Vec<LogLine>) -> Vec<LogAnswer> {
    /// Room for the answer's own fields around the lines.
    const OVERHEAD: usize = 128;
    let mut out = vec![LogAnswer::default()];
    let mut size = OVERHEAD;
    for line in lines {
        // A line is at most a few KiB, so it always fits in an empty chunk.
        let len = serde_json::to_vec(&line).map_or(0, |v| v.len()) + 1;
        let last = out.last_mut().expect("starts with one chunk");
        if size + len > MAX_CHUNK_BYTES && !last.lines.is_empty() {
            out.push(LogAnswer::default());
            size = OVERHEAD;
        }
        size += len;
        out.last_mut()
            .expect("starts with one chunk")
            .lines
            .push(line);
    }
    out
}

/// Answers this machine's log requests until `shutdown`.
pub async fn serve(client: Client, machine: String, root: PathBuf, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_ANSWERING));
    let mut answering: HashMap<String, (CancellationToken, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    let mut requests = client.watch_log_requests(&machine);
    let mut error_backoff = Duration::from_millis(500);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = requests.next() => ev,
        };
        answering.retain(|_, (_, task)| !task.is_finished());
        match event {
            None => requests = client.watch_log_requests(&machine),
            Some(Err(e)) => {
                tracing::warn!(error = %e, ?error_backoff, "log request watch failed; relisting");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(error_backoff) => {}
                }
                error_backoff = (error_backoff * 2).min(Duration::from_secs(30));
            }
            Some(Ok(LogRequestEvent::Deleted { id })) => {
                if let Some((stop, _)) = answering.remove(&id) {
                    stop.cancel();
                }
            }
            Some(Ok(LogRequestEvent::Put { id, value, lease })) => {
                error_backoff = Duration::from_millis(500);
                if answering.contains_key(&id) {
                    continue;
                }
                if lease == 0 {
                    // An answer on no lease would stay in the store for ever.
                    tracing::warn!(request = %id, "log request without a lease; ignoring it");
                    continue;
                }
                let stop = shutdown.child_token();
                let answer = Answer {
                    client: client.clone(),
                    machine: machine.clone(),
                    id: id.clone(),
                    lease,
                    seq: 0,
                };
                let request = LogRequest::parse(&value);
                let permit = permits.clone().try_acquire_owned().ok();
                let root = root.clone();
                let task_stop = stop.clone();
                let task = tokio::spawn(async move {
                    let Some(_permit) = permit else {
                        return answer.fail(RequestError::Busy.to_string()).await;
                    };
                    match request {
                        Ok(req) => answer.run(&root, req, task_stop).await,
                        Err(e) => answer.fail(e.to_string()).await,
                    }
                });
                answering.insert(id, (stop, task));
            }
        }
    }
    for (_, (stop, task)) in answering.drain() {
        stop.cancel();
        let _ = task.await;
    }
}

/// Writes the chunks of one answer.
struct Answer {
    client: Client,
    machine: String,
    id: String,
    /// The request's lease: the answer ends with the request.
    lease: LeaseId,
    /// The next chunk's number.
    seq: u64,
}

impl Answer {
    async fn run(mut self, root: &Path, req: LogRequest, stop: CancellationToken) {
        let log = open(root, &req.namespace, &req.app);
        let n = req.tail as usize;
        // Reading the files blocks (briefly): off the async workers.
        let (lines, rx) = {
            let (log, source, follow) = (log.clone(), req.source.clone(), req.follow);
            let read = tokio::task::spawn_blocking(move || {
                if follow {
                    let (lines, rx) = log.follow(source.as_deref(), n);
                    (lines, Some(rx))
                } else {
                    (log.tail(source.as_deref(), n), None)
                }
            });
            match read.await {
                Ok(read) => read,
                Err(e) => return self.fail(format!("cannot read the logs: {e}")).await,
            }
        };
        let source = req.source.as_deref();
        let Some(mut rx) = rx else {
            let _ = self.send_all(lines, true).await;
            return;
        };
        if self.send_all(lines, false).await.is_err() {
            return;
        }
        loop {
            let mut pending = Vec::new();
            let mut skipped = 0;
            // Wait for the first new line, then collect for FOLLOW_FLUSH.
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                line = rx.recv() => line,
            };
            match first {
                Ok(l) => pending.extend(source.is_none_or(|s| s == l.source).then_some(l)),
                Err(broadcast::error::RecvError::Lagged(k)) => skipped += k,
                Err(broadcast::error::RecvError::Closed) => return,
            }
            let flush = tokio::time::sleep(FOLLOW_FLUSH);
            tokio::pin!(flush);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = &mut flush => break,
                    line = rx.recv() => match line {
                        Ok(l) => pending.extend(source.is_none_or(|s| s == l.source).then_some(l)),
                        Err(broadcast::error::RecvError::Lagged(k)) => skipped += k,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
            if pending.is_empty() && skipped == 0 {
                continue;
            }
            let mut parts = chunks(pending);
            parts[0].skipped = skipped;
            for part in parts {
                if self.send(part, false).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Sends `lines` in chunks; the last one marks the answer `done` when asked.
    async fn send_all(&mut self, lines: Vec<LogLine>, done: bool) -> Result<(), ()> {
        let parts = chunks(lines);
        let count = parts.len();
        for (i, mut part) in parts.into_iter().enumerate() {
            let last = done && i + 1 == count;
            part.done = last;
            self.send(part, last).await?;
        }
        Ok(())
    }

    async fn fail(mut self, message: String) {
        let answer = LogAnswer {
            error: Some(message),
            done: true,
            ..Default::default()
        };
        let _ = self.send(answer, true).await;
    }

    /// Writes one chunk. An error (the lease ended: the requester went away) ends the
    /// answer.
    async fn send(&mut self, answer: LogAnswer, last: bool) -> Result<(), ()> {
        let value = serde_json::to_vec(&answer).expect("an answer of strings serializes");
        let forget = self.seq.checked_sub(FOLLOW_KEEP_CHUNKS);
        let res = self
            .client
            .put_log_answer(
                &self.machine,
                &self.id,
                self.seq,
                value,
                self.lease,
                forget,
                last,
            )
            .await;
        self.seq += 1;
        res.map_err(|e| {
            tracing::info!(request = %self.id, error = %e, "log answer ended");
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_of(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_log_should_rotate_by_size_and_keep_only_three_files_of_a_source() {
        let dir = tempfile::tempdir().unwrap();
        let log = AppLog::new(dir.path().join("logs"), 1024);
        for i in 0..200 {
            log.write("install", "1.0", Stream::Stdout, &format!("line {i:03}"));
        }
        log.write("service", "1.0", Stream::Stderr, "other source");
        assert_eq!(
            files_of(&dir.path().join("logs")),
            [
                "install.log",
                "install.log.1",
                "install.log.2",
                "service.log"
            ]
        );
        for name in ["install.log", "install.log.1", "install.log.2"] {
            let size = fs::metadata(dir.path().join("logs").join(name))
                .unwrap()
                .len();
            assert!(size <= 1024, "{name} is {size} bytes");
        }
        // The tail reads across the rotated files, newest last, nothing repeated.
        let tail = log.tail(Some("install"), 30);
        let texts: Vec<&str> = tail.iter().map(|l| l.text.as_str()).collect();
        let want: Vec<String> = (170..200).map(|i| format!("line {i:03}")).collect();
        assert_eq!(texts, want);
        // The oldest lines are gone for good.
        let all = log.tail(Some("install"), 1000);
        assert!(all.len() < 200 && all.len() > 30, "{}", all.len());
        assert_eq!(all.last().unwrap().text, "line 199");
    }

    #[test]
    fn a_line_should_be_stamped_and_read_back_with_its_source_version_and_stream() {
        let dir = tempfile::tempdir().unwrap();
        let log = AppLog::new(dir.path().join("logs"), ROTATE_BYTES);
        log.write("install", "2.0", Stream::Stdout, "first\twith a tab");
        log.write("service", "2.0", Stream::Stderr, "second");
        log.write("install", "2.0", Stream::Stderr, "third");
        let all = log.tail(None, 10);
        let seen: Vec<(&str, &str, Stream, &str)> = all
            .iter()
            .map(|l| {
                (
                    l.source.as_str(),
                    l.version.as_str(),
                    l.stream,
                    l.text.as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("install", "2.0", Stream::Stdout, "first\twith a tab"),
                ("service", "2.0", Stream::Stderr, "second"),
                ("install", "2.0", Stream::Stderr, "third"),
            ]
        );
        assert!(all.windows(2).all(|w| w[0].time <= w[1].time));
        let file = fs::read_to_string(dir.path().join("logs/install.log")).unwrap();
        assert!(file.lines().all(|l| l.split('\t').count() >= 5), "{file}");
        assert_eq!(log.tail(Some("service"), 10).len(), 1);
        assert_eq!(log.tail(None, 1)[0].text, "third");
    }

    #[test]
    fn the_tail_of_a_large_file_should_read_only_the_lines_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let log = AppLog::new(dir.path().join("logs"), ROTATE_BYTES);
        // Lines across several read blocks.
        let long = "x".repeat(2000);
        for i in 0..300 {
            log.write("service", "1", Stream::Stdout, &format!("{i} {long}"));
        }
        let tail = log.tail(Some("service"), 3);
        let heads: Vec<&str> = tail.iter().map(|l| &l.text[..3]).collect();
        assert_eq!(heads, ["297", "298", "299"]);
    }

    #[test]
    fn an_answer_should_be_split_into_chunks_no_larger_than_the_bound() {
        let line = |i: usize| LogLine {
            time: Utc::now(),
            source: "service".into(),
            version: "1".into(),
            stream: Stream::Stdout,
            // Control characters grow when escaped as JSON.
            text: format!("{i} {}", "\u{1}".repeat(2000)),
        };
        let parts = chunks((0..1000).map(line).collect());
        assert!(parts.len() > 1);
        for p in &parts {
            let size = serde_json::to_vec(p).unwrap().len();
            assert!(size <= MAX_CHUNK_BYTES, "{size} bytes");
        }
        let texts: Vec<String> = parts
            .iter()
            .flat_map(|p| p.lines.iter().map(|l| l.text.clone()))
            .collect();
        assert_eq!(texts.len(), 1000);
        assert!(texts[999].starts_with("999 "));
        assert_eq!(chunks(vec![]), vec![LogAnswer::default()]);
    }

    /// The next answer chunk, with a hang guard.
    async fn next_answer(
        answers: &mut futures::stream::BoxStream<'static, crate::store::Result<Vec<u8>>>,
    ) -> LogAnswer {
        let bytes = tokio::time::timeout(Duration::from_secs(20), answers.next())
            .await
            .expect("an answer within 20s")
            .expect("the watch goes on")
            .expect("the watch has no error");
        serde_json::from_slice(&bytes).expect("an answer is JSON")
    }

    async fn answer_refuse_and_follow(label: &str, client: Client) {
        let root = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let agent = tokio::spawn(serve(
            client.clone(),
            "m1".into(),
            root.path().to_path_buf(),
            shutdown.clone(),
        ));
        let lease = client
            .store()
            .grant_lease(Duration::from_secs(30))
            .await
            .unwrap();
        let keys_left = |prefix: String| {
            let client = client.clone();
            async move { client.store().list(&prefix, None).await.unwrap().0.len() }
        };

        // A bad request is refused in its answer, which names the field; the request goes.
        let bad = serde_json::json!({"namespace": "default", "app": "../x", "tail": 1});
        let rev = client
            .put_log_request("m1", "bad", serde_json::to_vec(&bad).unwrap(), lease)
            .await
            .unwrap();
        let mut answers = client
            .watch_log_answers("m1", "bad", rev + 1)
            .await
            .unwrap();
        let refused = next_answer(&mut answers).await;
        assert!(refused.done, "[{label}]");
        assert!(
            refused
                .error
                .as_deref()
                .unwrap_or("")
                .contains("invalid app"),
            "[{label}] {refused:?}"
        );
        assert_eq!(
            keys_left(crate::store::keys::log_requests_prefix("m1")).await,
            0,
            "[{label}] an answered request is deleted"
        );

        // A follower: the tail first, then each new line; only the last chunks stay.
        let log = open(root.path(), "default", "api");
        log.write("service", "1.0", Stream::Stdout, "before");
        let req = LogRequest {
            namespace: "default".into(),
            app: "api".into(),
            source: Some("service".into()),
            tail: 10,
            follow: true,
        };
        let rev = client
            .put_log_request("m1", "follow", serde_json::to_vec(&req).unwrap(), lease)
            .await
            .unwrap();
        let mut answers = client
            .watch_log_answers("m1", "follow", rev + 1)
            .await
            .unwrap();
        let first = next_answer(&mut answers).await;
        assert!(!first.done, "[{label}] a follower is never done");
        let texts: Vec<&str> = first.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["before"], "[{label}]");
        let chunks = FOLLOW_KEEP_CHUNKS + 4;
        for i in 0..chunks {
            let text = format!("line {i}");
            log.write("service", "1.0", Stream::Stderr, &text);
            // Another source's line is not this follower's.
            log.write("install", "1.0", Stream::Stdout, "not followed");
            let got = next_answer(&mut answers).await;
            let texts: Vec<&str> = got.lines.iter().map(|l| l.text.as_str()).collect();
            assert_eq!(texts, [text.as_str()], "[{label}]");
        }
        let answer_keys = keys_left(crate::store::keys::log_answers_prefix("m1", "follow")).await;
        assert!(
            answer_keys as u64 <= FOLLOW_KEEP_CHUNKS,
            "[{label}] {answer_keys} answer chunks kept"
        );

        // The requester's lease ends: every key of the exchange goes with it.
        client.store().revoke_lease(lease).await.unwrap();
        assert_eq!(
            keys_left(crate::store::keys::machine_logs_prefix("m1")).await,
            0,
            "[{label}]"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), agent)
            .await
            .expect("serve stops on shutdown")
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_should_answer_refuse_and_trim_a_followers_chunks_on_both_stores() {
        let embedded = crate::testing::embedded_temp();
        answer_refuse_and_follow("embedded", Client::new(embedded.store())).await;
        let etcd = crate::testing::EtcdServer::start();
        let store = crate::store::StoreUrl::parse(Some(&etcd.url()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        answer_refuse_and_follow("etcd", Client::new(store)).await;
    }

    #[test]
    fn a_request_should_be_refused_with_the_field_named_when_it_is_bad() {
        let parse = |v: serde_json::Value| LogRequest::parse(&serde_json::to_vec(&v).unwrap());
        let ok = parse(serde_json::json!({"namespace": "default", "app": "api", "tail": 5}));
        assert_eq!(ok.unwrap().source, None);
        for (v, want) in [
            (
                serde_json::json!({"namespace": "../etc", "app": "api", "tail": 5}),
                "invalid namespace",
            ),
            (
                serde_json::json!({"namespace": "default", "app": "a/b", "tail": 5}),
                "invalid app",
            ),
            (
                serde_json::json!({"namespace": "default", "app": "api", "tail": 5, "source": "healthCheck"}),
                "invalid source",
            ),
            (
                serde_json::json!({"namespace": "default", "app": "api", "tail": MAX_TAIL + 1}),
                "at most 1000",
            ),
        ] {
            let err = parse(v).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        assert!(LogRequest::parse(b"{not json").is_err());
    }
}

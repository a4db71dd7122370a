//! The demo of `deployctl up --demo`: the tiny HTTP service (the hidden `demo-server`
//! subcommand), its two artifacts, and the scripted rollout of 1.0.0 then 2.0.0.

use super::apply::apply_object;
use super::manifest::{self, Manifest, Source};
use super::rollout::{progress_line, verdict, Verdict};
use crate::api::{
    Application, ConditionStatus, Machine, Rollout, RolloutPhase, ANNOTATION_PROMOTE,
};
use crate::reconcilers::rollout::{PAUSE_FAILURE, PAUSE_STEP};
use crate::store::{Client, ObjectEvent, Scope};
use anyhow::Context as _;
use clap::Args;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The demo manifests, compiled in so that `up --demo` works from any directory.
/// They are the files of `manifests/demo/`, which a test also applies with `--dry-run`.
const DEMO_MANIFESTS: [(&str, &str); 2] = [
    (
        "manifests/demo/application_demo.yaml",
        include_str!("../../manifests/demo/application_demo.yaml"),
    ),
    (
        "manifests/demo/rollout_demo.yaml",
        include_str!("../../manifests/demo/rollout_demo.yaml"),
    ),
];

/// The Application and Rollout the demo manifests declare.
pub const DEMO_NAME: &str = "demo";
/// The versions the demo builds and rolls out, in order.
pub const DEMO_VERSIONS: [&str; 2] = ["1.0.0", "2.0.0"];
/// The largest HTTP request head the demo server reads.
const MAX_REQUEST: usize = 8 * 1024;

/// `run`: the service command. machine-N listens on DEMO_BASE_PORT + N; every value
/// comes from the environment (DEPLOY_MACHINE, DEMO_BASE_PORT, DEPLOYCTL_BIN).
const RUN_SCRIPT: &str = r#"#!/bin/sh
# The demo service: machine-N serves on port DEMO_BASE_PORT + N.
set -eu
n="${DEPLOY_MACHINE##*-}"
case "$n" in
  ''|*[!0-9]*) echo "run: machine name $DEPLOY_MACHINE does not end in a number" >&2; exit 2 ;;
esac
PORT=$((DEMO_BASE_PORT + n))
export PORT
exec "$DEPLOYCTL_BIN" demo-server --port "$PORT"
"#;

/// `healthz`: the health check, a GET /healthz on this machine's port.
const HEALTHZ_SCRIPT: &str = r#"#!/bin/sh
# Health of the demo service: GET /healthz on port DEMO_BASE_PORT + N must answer 200.
set -eu
n="${DEPLOY_MACHINE##*-}"
case "$n" in
  ''|*[!0-9]*) echo "healthz: machine name $DEPLOY_MACHINE does not end in a number" >&2; exit 2 ;;
esac
PORT=$((DEMO_BASE_PORT + n))
export PORT
exec "$DEPLOYCTL_BIN" demo-server --probe --port "$PORT"
"#;

#[derive(Args, Debug)]
pub struct DemoServerArgs {
    /// The loopback port to serve on (or to probe).
    #[arg(long)]
    pub port: u16,
    /// GET /healthz on the port instead of serving: print the body, exit 0 on 200.
    #[arg(long)]
    pub probe: bool,
}

/// Errors of the demo service and the demo script.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot read VERSION in {dir}: {source}")]
    Version { dir: String, source: std::io::Error },
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error("rollout {name:?} is degraded: {message}")]
    Degraded { name: String, message: String },
    #[error("rollout {name:?} paused after failures: {message}")]
    FailurePause { name: String, message: String },
    #[error("the watch on rollout {0:?} ended")]
    WatchEnded(String),
    #[error("rollout {0:?} was deleted")]
    Deleted(String),
}

/// `deployctl demo-server`: serves `version <V>` (V from `./VERSION`) on `GET /` and
/// `GET /healthz` until SIGINT/SIGTERM; or, with `--probe`, checks such a server.
pub async fn run_server(args: DemoServerArgs) -> anyhow::Result<i32> {
    if args.probe {
        return probe(args.port).await;
    }
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let version = std::fs::read_to_string(cwd.join("VERSION"))
        .map_err(|source| DemoError::Version {
            dir: cwd.display().to_string(),
            source,
        })?
        .trim()
        .to_string();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .map_err(|source| DemoError::Listen {
            port: args.port,
            source,
        })?;
    outln!("demo-server {version} listening on 127.0.0.1:{}", args.port);
    let body: std::sync::Arc<str> = format!("version {version}\n").into();
    let shutdown = super::get::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => return Ok(0),
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, body.clone()));
            }
            Err(e) => {
                // E.g. out of file descriptors: wait a little rather than spin.
                eprintln!("demo-server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request head and answers it; anything but `GET /` and `GET /healthz`
/// gets a 404, a head that never ends within 5s or 8 KiB is dropped.
async fn answer(mut stream: tokio::net::TcpStream, body: std::sync::Arc<str>) {
    let mut head = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        while !head_complete(&head) && head.len() < MAX_REQUEST {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(5), read).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let (status, text) = response_for(&head, &body);
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// True once `head` holds the blank line that ends an HTTP request head (CRLF or the
/// bare LF some clients send).
fn head_complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

/// The status line and body for a request head.
fn response_for(head: &[u8], body: &str) -> (&'static str, String) {
    let first = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    let mut words = first.split_whitespace();
    match (words.next(), words.next()) {
        (Some("GET"), Some("/" | "/healthz")) => ("200 OK", body.to_string()),
        (Some("GET"), Some(_)) => ("404 Not Found", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    }
}

/// `GET /healthz` on a local port: prints the body; 0 on a 200, 1 otherwise.
async fn probe(port: u16) -> anyhow::Result<i32> {
    match get_body(port, "/healthz").await {
        Ok(body) => {
            out!("{body}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}

/// The body of a `GET` on `127.0.0.1:<port><path>`, or why there is none.
pub async fn get_body(port: u16, path: &str) -> Result<String, String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("GET {url} answered {status}"))
    }
}

/// Writes `demo-<version>.tar.gz` (VERSION, run, healthz) and its `.sha256` into `dir`.
/// Returns the archive's path.
pub fn build_artifact(dir: &Path, version: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = format!("demo-{version}.tar.gz");
    let path = dir.join(&name);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    {
        let mut tar = tar::Builder::new(&mut gz);
        let version_text = format!("{version}\n");
        for (entry, text, mode) in [
            ("VERSION", version_text.as_str(), 0o644),
            ("run", RUN_SCRIPT, 0o755),
            ("healthz", HEALTHZ_SCRIPT, 0o755),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(mode);
            header.set_mtime(0);
            header.set_cksum();
            tar.append_data(&mut header, entry, text.as_bytes())
                .context("writing the demo archive in memory")?;
        }
        tar.finish().context("writing the demo archive in memory")?;
    }
    let bytes = gz.finish().context("compressing the demo archive")?;
    std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let sum = dir.join(format!("{name}.sha256"));
    std::fs::write(&sum, format!("{digest}  {name}\n"))
        .with_context(|| format!("cannot write {}", sum.display()))?;
    Ok(path)
}

/// The demo's Application and Rollout from `manifests/demo/`, pointed at the artifacts
/// in `artifacts`, at this binary, and at the ports from `base_port + 1`.
pub fn demo_objects(
    artifacts: &Path,
    bin: &Path,
    base_port: u16,
) -> anyhow::Result<(Application, Rollout)> {
    let mut app = None;
    let mut rollout = None;
    for (name, text) in DEMO_MANIFESTS {
        let source = Source {
            name: name.to_string(),
            text: text.to_string(),
            json: false,
        };
        let (docs, errors) = manifest::parse_documents(&source);
        if let Some(e) = errors.first() {
            anyhow::bail!("built-in demo manifest: {e}");
        }
        for doc in docs {
            match manifest::validate_document(&doc, "default") {
                Ok(Manifest::Application(a)) => app = Some(a),
                Ok(Manifest::Rollout(r)) => rollout = Some(r),
                Ok(other) => anyhow::bail!("{name}: unexpected {} in the demo", other.kind()),
                Err(es) => anyhow::bail!(
                    "built-in demo manifest: {}",
                    es.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            }
        }
    }
    let mut app = app.context("manifests/demo/ declares no Application")?;
    let rollout = rollout.context("manifests/demo/ declares no Rollout")?;
    let base = format!("file://{}", artifacts.display());
    app.spec.artifact.url = format!("{base}/demo-{{{{version}}}}.tar.gz");
    app.spec.artifact.sha256_url = Some(format!("{base}/demo-{{{{version}}}}.tar.gz.sha256"));
    app.spec
        .env
        .insert("DEPLOYCTL_BIN".into(), bin.display().to_string());
    app.spec
        .env
        .insert("DEMO_BASE_PORT".into(), base_port.to_string());
    Ok((app, rollout))
}

/// The port machine `machine-<n>` serves on.
pub fn machine_port(base_port: u16, n: u32) -> Option<u16> {
    u16::try_from(u32::from(base_port) + n).ok()
}

/// The scripted demo: artifacts, apply, 1.0.0, 2.0.0 through the pause, then a GET on
/// every machine. Prints one plain line per change; never reads input.
pub async fn run_demo(
    client: &Client,
    state_dir: &Path,
    machines: u32,
    base_port: u16,
) -> anyhow::Result<()> {
    if machine_port(base_port, machines).is_none() {
        anyhow::bail!("--demo-port {base_port} leaves no port for machine-{machines}");
    }
    if client
        .get::<Rollout>(Some("default"), DEMO_NAME)
        .await?
        .is_some()
    {
        anyhow::bail!(
            "rollout {DEMO_NAME:?} already exists in this store: run the demo with a fresh \
             --state-dir, or `deployctl delete rollout {DEMO_NAME}` first"
        );
    }
    let artifacts = state_dir.join("artifacts");
    for v in DEMO_VERSIONS {
        let path = build_artifact(&artifacts, v)?;
        outln!("built {}", path.display());
    }
    let bin = std::env::current_exe().context("cannot locate the deployctl binary")?;
    let (app, rollout) = demo_objects(&artifacts, &bin, base_port)?;

    outln!("waiting for {machines} machines to be ready");
    wait_machines_ready(client, machines).await?;

    let outcome = apply_object(client, app, false).await?;
    outln!(
        "{} {outcome}",
        super::reference(crate::api::KindName::Application, DEMO_NAME)
    );
    // Let the controller see the Application before a Rollout names it, so the first
    // status the demo prints is about the rollout, not a missing application.
    wait_application_observed(client).await?;
    let outcome = apply_object(client, rollout, false).await?;
    outln!(
        "{} {outcome}",
        super::reference(crate::api::KindName::Rollout, DEMO_NAME)
    );

    let (v1, v2) = (DEMO_VERSIONS[0], DEMO_VERSIONS[1]);
    outln!("==> rolling out {v1} (the first rollout skips the steps)");
    follow(client, |r| verdict(r) == Verdict::Done).await?;

    outln!("==> deployctl set version {DEMO_NAME} {v2}");
    client
        .update::<Rollout>(Some("default"), DEMO_NAME, |r| {
            r.spec.version = v2.to_string();
            r.spec.sha256 = None;
        })
        .await
        .context("cannot set the version")?;
    follow(client, |r| at_pause_step(r, v2)).await?;

    outln!("==> deployctl rollout promote {DEMO_NAME}");
    let token = uuid::Uuid::new_v4().to_string();
    client
        .update::<Rollout>(Some("default"), DEMO_NAME, |r| {
            r.metadata
                .annotations
                .insert(ANNOTATION_PROMOTE.to_string(), token.clone());
        })
        .await
        .context("cannot promote")?;
    follow(client, |r| verdict(r) == Verdict::Done).await?;

    outln!("==> what every machine serves");
    let mut wrong = Vec::new();
    for n in 1..=machines {
        let port = machine_port(base_port, n).expect("checked above that every port fits");
        match get_body(port, "/").await {
            Ok(body) => {
                let body = body.trim();
                outln!("machine-{n} http://127.0.0.1:{port}/ -> {body}");
                if body != format!("version {v2}") {
                    wrong.push(format!("machine-{n} serves {body:?}"));
                }
            }
            Err(e) => {
                outln!("machine-{n} http://127.0.0.1:{port}/ -> error: {e}");
                wrong.push(format!("machine-{n}: {e}"));
            }
        }
    }
    if !wrong.is_empty() {
        anyhow::bail!("not every machine serves {v2}: {}", wrong.join("; "));
    }
    outln!("demo complete: {machines} machines serve {v2}");
    Ok(())
}

/// True when the rollout has switched its step's machines to `version` and waits at a
/// manual pause step for this generation.
fn at_pause_step(r: &Rollout, version: &str) -> bool {
    let Some(st) = &r.status else { return false };
    st.observed_generation == r.metadata.generation.unwrap_or(0)
        && r.spec.version == version
        && st.phase == RolloutPhase::Paused
        && st.pause_conditions.iter().any(|p| p.reason == PAUSE_STEP)
}

/// Polls the demo Application until the controller has written its status for the
/// current generation.
async fn wait_application_observed(client: &Client) -> anyhow::Result<()> {
    loop {
        let app: Option<Application> = client.get(Some("default"), DEMO_NAME).await?;
        let app = app.ok_or_else(|| anyhow::anyhow!("application {DEMO_NAME:?} vanished"))?;
        let observed = app.status.as_ref().map(|s| s.observed_generation);
        if observed.is_some() && observed == app.metadata.generation {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the Machines until `machines` of them are `Ready`.
async fn wait_machines_ready(client: &Client, machines: u32) -> anyhow::Result<()> {
    loop {
        let listed = client.list::<Machine>(&Scope::All).await?;
        let ready = listed
            .items
            .iter()
            .filter(|m| {
                m.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True)
                })
            })
            .count();
        if ready >= machines as usize {
            outln!("{ready} machines ready");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Watches the demo rollout, printing a line whenever its progress line changes, until
/// `done` holds. A degraded rollout for the current generation is an error.
async fn follow(client: &Client, done: impl Fn(&Rollout) -> bool) -> anyhow::Result<Rollout> {
    let mut progress = Progress::new(terminal_columns());
    let result = follow_printing(client, done, &mut progress).await;
    progress.finish();
    result
}

/// The width of the terminal on stdout, or `None` when stdout is not a terminal (or its
/// width is unknown).
fn terminal_columns() -> Option<usize> {
    use std::os::fd::AsRawFd;
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass and nothing else.
    let rc = unsafe { libc::ioctl(stdout.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// Progress lines: one per change when stdout is a pipe or a file; on a terminal, the
/// line of the current phase is redrawn in place and each new phase starts a line.
struct Progress {
    /// Terminal columns when stdout is a terminal of known width, else plain lines.
    tty: Option<usize>,
    last: String,
    /// The phase of the line left open (no newline yet) on a terminal.
    open: Option<RolloutPhase>,
}

impl Progress {
    fn new(tty: Option<usize>) -> Progress {
        Progress {
            tty,
            last: String::new(),
            open: None,
        }
    }

    /// The bytes to write for a new progress `line` in `phase` (empty when unchanged).
    fn update(&mut self, line: &str, phase: RolloutPhase) -> String {
        if line == self.last {
            return String::new();
        }
        self.last = line.to_string();
        let Some(cols) = self.tty else {
            return format!("{line}\n");
        };
        // A redrawn line must not wrap: `\r` only returns to the start of the last row.
        let line: String = line.chars().take(cols.saturating_sub(1).max(1)).collect();
        let out = match self.open {
            Some(p) if p == phase => format!("\r\x1b[2K{line}"),
            Some(_) => format!("\n{line}"),
            None => line.to_string(),
        };
        self.open = Some(phase);
        out
    }

    fn show(&mut self, line: &str, phase: RolloutPhase) {
        let out = self.update(line, phase);
        if !out.is_empty() {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
        }
    }

    /// Ends a line left open on a terminal.
    fn finish(&mut self) {
        if self.open.take().is_some() {
            outln!();
        }
    }
}

async fn follow_printing(
    client: &Client,
    done: impl Fn(&Rollout) -> bool,
    progress: &mut Progress,
) -> anyhow::Result<Rollout> {
    let mut stream = client.list_watch::<Rollout>(Scope::Namespace("default".into()));
    loop {
        let event = stream
            .next()
            .await
            .ok_or_else(|| DemoError::WatchEnded(DEMO_NAME.into()))?;
        let ro = match event {
            Ok(ObjectEvent::Restarted(items)) => {
                match items.into_iter().find(|r| r.metadata.name == DEMO_NAME) {
                    Some(r) => r,
                    None => return Err(DemoError::Deleted(DEMO_NAME.into()).into()),
                }
            }
            Ok(ObjectEvent::Applied(r)) if r.metadata.name == DEMO_NAME => r,
            Ok(ObjectEvent::Deleted(r)) if r.metadata.name == DEMO_NAME => {
                return Err(DemoError::Deleted(DEMO_NAME.into()).into())
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "watch interrupted; resuming");
                continue;
            }
        };
        let phase = ro.status.as_ref().map(|s| s.phase).unwrap_or_default();
        progress.show(&progress_line(&ro), phase);
        if done(&ro) {
            return Ok(ro);
        }
        if let Verdict::Failed(message) = verdict(&ro) {
            return Err(DemoError::Degraded {
                name: DEMO_NAME.into(),
                message,
            }
            .into());
        }
        // The demo's failure policy pauses; nobody would resume it, so stop here.
        if let Some(st) = &ro.status {
            if st.observed_generation == ro.metadata.generation.unwrap_or(0)
                && st
                    .pause_conditions
                    .iter()
                    .any(|p| p.reason == PAUSE_FAILURE)
            {
                let mut message = st.message.clone();
                if let Some(f) = st.failed_machines.last() {
                    message = format!(
                        "{message} (last: {} {}: {})",
                        f.machine, f.operation, f.message
                    );
                }
                return Err(DemoError::FailurePause {
                    name: DEMO_NAME.into(),
                    message,
                }
                .into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_server_should_answer_only_get_of_root_and_healthz() {
        let check = |head: &str, status: &str, body: &str| {
            let (s, b) = response_for(head.as_bytes(), "version 1.0.0\n");
            assert_eq!((s, b.as_str()), (status, body), "{head:?}");
        };
        check("GET / HTTP/1.1\r\n\r\n", "200 OK", "version 1.0.0\n");
        check("GET /healthz HTTP/1.0\r\n\r\n", "200 OK", "version 1.0.0\n");
        check("GET /x HTTP/1.1\r\n\r\n", "404 Not Found", "not found\n");
        check(
            "POST / HTTP/1.1\r\n\r\n",
            "405 Method Not Allowed",
            "only GET\n",
        );
        check("", "405 Method Not Allowed", "only GET\n");
    }

    #[test]
    fn request_head_should_end_at_the_first_blank_line_with_or_without_cr() {
        for (head, done) in [
            ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", true),
            ("GET / HTTP/1.0\n\n", true),
            ("GET / HTTP/1.1\r\nHost: x\r\n", false),
            ("", false),
        ] {
            assert_eq!(head_complete(head.as_bytes()), done, "{head:?}");
        }
    }

    #[test]
    fn progress_should_print_lines_to_a_pipe_and_redraw_a_phase_on_a_terminal() {
        use RolloutPhase::*;
        let steps = [
            ("a", Progressing),
            ("a", Progressing),
            ("b", Progressing),
            ("c", Paused),
        ];
        let mut pipe = Progress::new(None);
        let out: String = steps.iter().map(|(l, p)| pipe.update(l, *p)).collect();
        assert_eq!(out, "a\nb\nc\n");
        let mut tty = Progress::new(Some(80));
        let out: String = steps.iter().map(|(l, p)| tty.update(l, *p)).collect();
        assert_eq!(out, "a\r\x1b[2Kb\nc");
        let mut narrow = Progress::new(Some(4));
        assert_eq!(narrow.update("abcdef", Progressing), "abc", "never wraps");
    }

    #[test]
    fn demo_objects_should_point_at_the_state_dir_and_this_binary() {
        let (app, ro) = demo_objects(
            Path::new("/s/artifacts"),
            Path::new("/bin/deployctl"),
            20000,
        )
        .unwrap();
        assert_eq!(
            app.spec.artifact.url,
            "file:///s/artifacts/demo-{{version}}.tar.gz"
        );
        assert_eq!(
            app.spec.artifact.sha256_url.as_deref(),
            Some("file:///s/artifacts/demo-{{version}}.tar.gz.sha256")
        );
        assert_eq!(app.spec.env["DEPLOYCTL_BIN"], "/bin/deployctl");
        assert_eq!(app.spec.env["DEMO_BASE_PORT"], "20000");
        assert_eq!(ro.spec.version, DEMO_VERSIONS[0]);
        assert_eq!(ro.spec.strategy.steps.len(), 2);
    }

    #[test]
    fn demo_artifact_should_hold_version_and_executable_scripts_with_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = build_artifact(dir.path(), "2.0.0").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let sum = std::fs::read_to_string(dir.path().join("demo-2.0.0.tar.gz.sha256")).unwrap();
        assert_eq!(
            sum,
            format!(
                "{}  demo-2.0.0.tar.gz\n",
                hex::encode(Sha256::digest(&bytes))
            )
        );
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mode = e.header().mode().unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut e, &mut text).unwrap();
            if name == "VERSION" {
                assert_eq!(text, "2.0.0\n");
            }
            seen.push((name, mode));
        }
        assert_eq!(
            seen,
            [
                ("VERSION".to_string(), 0o644),
                ("run".to_string(), 0o755),
                ("healthz".to_string(), 0o755)
            ]
        );
    }
}

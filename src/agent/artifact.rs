//! Fetches an artifact (file:// or http(s)://) to a temp file, verifying its sha256 while streaming.

use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncReadExt;

pub type Result<T, E = ArtifactError> = std::result::Result<T, E>;

/// Why an artifact could not be fetched or verified.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("checksum mismatch for {url}: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("artifact {url} not found")]
    NotFound { url: String },
    #[error("cannot fetch {url}: {message}")]
    Fetch { url: String, message: String },
    /// A 4xx answer other than 404: will not change by retrying.
    #[error("cannot fetch {url}: server answered {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("bad checksum file {url}: {message}")]
    BadChecksum { url: String, message: String },
    #[error("unsupported artifact url {url:?}: use file://, http:// or https://")]
    UnsupportedUrl { url: String },
    /// Stops a server that sends more than the release may unpack to.
    #[error("artifact {url} is larger than {limit} bytes, the most spec.artifact.maxUnpackedBytes lets the agent download")]
    TooLarge { url: String, limit: u64 },
    /// Writing the download failed locally (a full disk): retrying will not help.
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ArtifactError {
    /// The one-word reason recorded in the Instance status.
    pub fn reason(&self) -> &'static str {
        match self {
            ArtifactError::ChecksumMismatch { .. } => "ChecksumMismatch",
            ArtifactError::NotFound { .. } => "ArtifactNotFound",
            ArtifactError::BadChecksum { .. } => "BadChecksum",
            ArtifactError::TooLarge { .. } => "ArtifactTooLarge",
            ArtifactError::Io { source, .. }
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENOSPC) | Some(libc::EDQUOT)
                ) =>
            {
                "NoSpaceLeft"
            }
            _ => "FetchFailed",
        }
    }

    /// True when another try may succeed: network errors and 5xx, never 404 or a mismatch.
    fn is_retryable(&self) -> bool {
        matches!(self, ArtifactError::Fetch { .. })
    }
}

/// Replaces `{{version}}` in a URL template. The version is plain data here: it never
/// reaches a shell.
pub fn expand(template: &str, version: &str) -> String {
    template.replace("{{version}}", version)
}

/// How often and how patiently downloads are retried.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub tries: u32,
    /// Delay before the second try; doubles after each further failure.
    pub first_delay: Duration,
    /// How long a server may send nothing (before its answer, or in the middle of the
    /// body) before the try fails: a server that stalls must not stall the stage.
    pub read_timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            tries: 4,
            first_delay: Duration::from_millis(500),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// A downloaded, verified artifact. The temp file is deleted when this is dropped.
pub struct Fetched {
    pub file: tempfile::NamedTempFile,
    /// Hex sha256 of the bytes, computed while they were written.
    pub sha256: String,
}

impl Fetched {
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

/// Runs `attempt` up to `retry.tries` times, sleeping with exponential backoff between
/// retryable failures.
async fn with_retry<T, F, Fut>(retry: Retry, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = retry.first_delay;
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(e) if e.is_retryable() && tries < retry.tries.max(1) => {
                tracing::warn!(error = %e, ?delay, "download failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
}

/// Fetches the hex sha256 published at `url`: the first whitespace-separated word,
/// which must be 64 hex characters.
pub async fn fetch_sha256(url: &str, retry: Retry) -> Result<String> {
    let bytes = with_retry(retry, || async {
        let mut out = Vec::new();
        stream_into(url, retry.read_timeout, &mut |chunk| {
            out.extend_from_slice(chunk);
            if out.len() > 64 * 1024 {
                return Err(ArtifactError::BadChecksum {
                    url: url.to_string(),
                    message: "larger than 64 KiB".into(),
                });
            }
            Ok(())
        })
        .await?;
        Ok(out)
    })
    .await?;
    let text = String::from_utf8_lossy(&bytes);
    let word = text.split_whitespace().next().unwrap_or("");
    if word.len() != 64 || !word.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ArtifactError::BadChecksum {
            url: url.to_string(),
            message: format!("first word {word:?} is not a 64-character hex sha256"),
        });
    }
    Ok(word.to_ascii_lowercase())
}

/// Downloads `url` into a new temp file in `tmp_dir`, hashing while writing, and stops
/// past `max_bytes`. With `expected`, a different digest is an error and the temp file is
/// removed.
pub async fn fetch(
    url: &str,
    expected: Option<&str>,
    tmp_dir: &Path,
    max_bytes: u64,
    retry: Retry,
) -> Result<Fetched> {
    std::fs::create_dir_all(tmp_dir).map_err(|source| ArtifactError::Io {
        path: tmp_dir.to_path_buf(),
        source,
    })?;
    let fetched = with_retry(retry, || async {
        let mut file = tempfile::Builder::new()
            .prefix("artifact-")
            .tempfile_in(tmp_dir)
            .map_err(|source| ArtifactError::Io {
                path: tmp_dir.to_path_buf(),
                source,
            })?;
        let mut hasher = Sha256::new();
        let path = file.path().to_path_buf();
        let mut size = 0u64;
        stream_into(url, retry.read_timeout, &mut |chunk| {
            size += chunk.len() as u64;
            crate::observe::metrics().artifact_bytes(chunk.len() as u64);
            if size > max_bytes {
                return Err(ArtifactError::TooLarge {
                    url: url.to_string(),
                    limit: max_bytes,
                });
            }
            hasher.update(chunk);
            file.write_all(chunk).map_err(|source| ArtifactError::Io {
                path: path.clone(),
                source,
            })
        })
        .await?;
        file.flush().map_err(|source| ArtifactError::Io {
            path: file.path().to_path_buf(),
            source,
        })?;
        Ok(Fetched {
            file,
            sha256: hex::encode(hasher.finalize()),
        })
    })
    .await?;
    if let Some(expected) = expected {
        if !expected.eq_ignore_ascii_case(&fetched.sha256) {
            return Err(ArtifactError::ChecksumMismatch {
                url: url.to_string(),
                expected: expected.to_ascii_lowercase(),
                actual: fetched.sha256.clone(),
            });
        }
    }
    Ok(fetched)
}

/// Streams the body at `url` chunk by chunk into `sink`, which may stop it with its own
/// error.
async fn stream_into(
    url: &str,
    read_timeout: Duration,
    sink: &mut (dyn FnMut(&[u8]) -> Result<()> + Send),
) -> Result<()> {
    let io_err = |source: std::io::Error| ArtifactError::Fetch {
        url: url.to_string(),
        message: source.to_string(),
    };
    if let Some(path) = url.strip_prefix("file://") {
        let mut file = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArtifactError::NotFound {
                    url: url.to_string(),
                })
            }
            Err(e) => return Err(io_err(e)),
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).await.map_err(io_err)?;
            if n == 0 {
                return Ok(());
            }
            sink(&buf[..n])?;
        }
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ArtifactError::UnsupportedUrl {
            url: url.to_string(),
        });
    }
    let fetch_err = |e: reqwest::Error| ArtifactError::Fetch {
        url: url.to_string(),
        message: e.to_string(),
    };
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(read_timeout)
        .build()
        .map_err(fetch_err)?;
    let resp = client.get(url).send().await.map_err(fetch_err)?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(ArtifactError::NotFound {
            url: url.to_string(),
        });
    }
    if !status.is_success() {
        let message = format!("server answered {status}");
        // 5xx may be passing trouble (retryable); other statuses will not change.
        return Err(if status.is_server_error() {
            ArtifactError::Fetch {
                url: url.to_string(),
                message,
            }
        } else {
            ArtifactError::HttpStatus {
                url: url.to_string(),
                status: status.as_u16(),
            }
        });
    }
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(fetch_err)?;
        sink(&chunk)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// A tiny HTTP server: answers each request with the next (status, body) of `replies`,
    /// repeating the last. Returns its base URL and a count of requests served.
    fn serve(replies: Vec<(u16, Vec<u8>)>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("loopback bind works");
        let addr = listener.local_addr().expect("bound socket has an address");
        let count = Arc::new(AtomicUsize::new(0));
        let served = count.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().expect("socket clones"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let i = served.fetch_add(1, Ordering::SeqCst).min(replies.len() - 1);
                let (status, body) = &replies[i];
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
            }
        });
        (format!("http://{addr}"), count)
    }

    fn quick() -> Retry {
        Retry {
            tries: 4,
            first_delay: Duration::from_millis(10),
            read_timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn file_urls_should_fetch_and_verify_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a-1.0.bin");
        std::fs::write(&src, b"hello artifact").unwrap();
        let url = expand(
            &format!("file://{}/a-{{{{version}}}}.bin", dir.path().display()),
            "1.0",
        );
        let got = fetch(
            &url,
            Some(&sha(b"hello artifact")),
            &dir.path().join(".tmp"),
            u64::MAX,
            quick(),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(got.path()).unwrap(), b"hello artifact");
        assert!(got.path().starts_with(dir.path().join(".tmp")));
    }

    #[tokio::test]
    async fn a_checksum_mismatch_should_name_url_and_both_digests_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a.bin");
        std::fs::write(&src, b"real bytes").unwrap();
        let url = format!("file://{}", src.display());
        let wrong = "0".repeat(64);
        let err = fetch(
            &url,
            Some(&wrong),
            &dir.path().join(".tmp"),
            u64::MAX,
            quick(),
        )
        .await
        .err()
        .expect("digest differs");
        assert_eq!(err.reason(), "ChecksumMismatch");
        let msg = err.to_string();
        assert!(msg.contains(&url) && msg.contains(&wrong) && msg.contains(&sha(b"real bytes")));
        let left = std::fs::read_dir(dir.path().join(".tmp")).unwrap().count();
        assert_eq!(left, 0, "the temp file must be removed");
    }

    #[tokio::test]
    async fn http_downloads_should_retry_5xx_and_then_succeed() {
        let (base, count) = serve(vec![(503, b"busy".to_vec()), (200, b"payload".to_vec())]);
        let dir = tempfile::tempdir().unwrap();
        let got = fetch(
            &format!("{base}/x"),
            Some(&sha(b"payload")),
            dir.path(),
            u64::MAX,
            quick(),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(got.path()).unwrap(), b"payload");
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn http_404_should_not_be_retried() {
        let (base, count) = serve(vec![(404, b"no".to_vec())]);
        let dir = tempfile::tempdir().unwrap();
        let err = fetch(&format!("{base}/x"), None, dir.path(), u64::MAX, quick())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ArtifactError::NotFound { .. }), "{err}");
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn persistent_5xx_should_give_up_after_the_allowed_tries() {
        let (base, count) = serve(vec![(500, b"down".to_vec())]);
        let dir = tempfile::tempdir().unwrap();
        let err = fetch(&format!("{base}/x"), None, dir.path(), u64::MAX, quick())
            .await
            .err()
            .unwrap();
        assert_eq!(err.reason(), "FetchFailed");
        assert_eq!(count.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn sha256_urls_should_yield_the_first_word_or_a_clear_error() {
        let digest = sha(b"x");
        let (base, _) = serve(vec![(200, format!("{digest}  api.tar.gz\n").into_bytes())]);
        assert_eq!(
            fetch_sha256(&format!("{base}/sum"), quick()).await.unwrap(),
            digest
        );
        let (base, _) = serve(vec![(200, b"not-a-digest file\n".to_vec())]);
        let err = fetch_sha256(&format!("{base}/sum"), quick())
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("not-a-digest"), "{err}");
    }

    #[tokio::test]
    async fn a_download_past_the_size_limit_should_stop_without_retrying_and_leave_no_file() {
        let (base, count) = serve(vec![(200, vec![b'x'; 1000])]);
        let dir = tempfile::tempdir().unwrap();
        let err = fetch(&format!("{base}/x"), None, dir.path(), 100, quick())
            .await
            .err()
            .expect("1000 bytes are past a limit of 100");
        assert_eq!(err.reason(), "ArtifactTooLarge", "{err}");
        assert!(err.to_string().contains("larger than 100 bytes"), "{err}");
        assert_eq!(count.load(Ordering::SeqCst), 1, "not retried");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no file left"
        );
    }

    #[tokio::test]
    async fn unknown_schemes_should_be_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = fetch("ftp://x/y", None, dir.path(), u64::MAX, quick())
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("ftp://x/y"));
    }

    /// A server that stops sending in the middle of the body once stalled the stage for
    /// as long as the connection lived.
    #[tokio::test]
    async fn a_server_that_stalls_mid_body_should_fail_the_try_after_the_read_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("loopback bind works");
        let addr = listener.local_addr().expect("bound socket has an address");
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\nonly the start");
                held.push(stream); // never closed, never finished
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let retry = Retry {
            tries: 2,
            first_delay: Duration::from_millis(10),
            read_timeout: Duration::from_millis(300),
        };
        let url = format!("http://{addr}/a.tar.gz");
        let tmp = dir.path().join(".tmp");
        let fetch = fetch(&url, None, &tmp, u64::MAX, retry);
        // The guard only keeps a broken build from hanging the suite.
        let err = tokio::time::timeout(Duration::from_secs(30), fetch)
            .await
            .expect("the read timeout ends each try")
            .err()
            .expect("a stalled download fails");
        assert!(matches!(err, ArtifactError::Fetch { .. }), "{err}");
        // The server thread counts a connection when it accepts it, which may lag the
        // client's try on a loaded machine.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while served.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            served.load(Ordering::SeqCst),
            2,
            "tried again, then gave up"
        );
        let left = std::fs::read_dir(dir.path().join(".tmp")).unwrap().count();
        assert_eq!(left, 0, "no partial file is left");
    }
}

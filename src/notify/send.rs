//! One delivery attempt: read the sink's secrets, build its body, sign, POST with a
//! timeout.

use super::message::Notification;
use crate::api::{validation::check_url, Notifier, SecretSource};
use crate::signing;
use std::time::Duration;

/// Most bytes read from a secret file: a key or a URL, never a large file by mistake.
const MAX_SECRET_BYTES: u64 = 8 * 1024;
/// Most bytes of a failing answer kept in `status.lastError`.
const MAX_ANSWER_BYTES: usize = 256;
/// A delivery attempt's timeout when the Notifier names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read secret file {path}: {source}")]
    SecretFile {
        path: String,
        source: std::io::Error,
    },
    #[error("secret file {0} is larger than 8 KiB")]
    SecretTooLarge(String),
    #[error("environment variable {0} of the controller is not set")]
    SecretEnv(String),
    #[error("{0} is empty")]
    EmptySecret(String),
    #[error("the URL read from {source_name} is invalid: {message}")]
    BadUrl {
        source_name: String,
        message: String,
    },
    #[error("the notifier names no sink")]
    NoSink,
    #[error("POST to {host} failed: {message}")]
    Http { host: String, message: String },
    #[error("POST to {host} answered {status}: {answer}")]
    Refused {
        host: String,
        status: u16,
        answer: String,
    },
}

/// Where a secret comes from, in words (never its value).
fn source_name(src: &SecretSource) -> String {
    match (&src.file, &src.env) {
        (Some(f), _) => format!("file {f}"),
        (_, Some(e)) => format!("environment variable {e}"),
        _ => "nowhere".into(),
    }
}

/// Reads a secret now (so that a rotated file is picked up by the next attempt),
/// trimmed of surrounding whitespace.
pub fn read_secret(src: &SecretSource) -> Result<String, Error> {
    let text = match (&src.file, &src.env) {
        (Some(path), _) => {
            use std::io::Read;
            let file = std::fs::File::open(path).map_err(|source| Error::SecretFile {
                path: path.clone(),
                source,
            })?;
            let mut buf = String::new();
            file.take(MAX_SECRET_BYTES + 1)
                .read_to_string(&mut buf)
                .map_err(|source| Error::SecretFile {
                    path: path.clone(),
                    source,
                })?;
            if buf.len() as u64 > MAX_SECRET_BYTES {
                return Err(Error::SecretTooLarge(path.clone()));
            }
            buf
        }
        (_, Some(name)) => std::env::var(name).map_err(|_| Error::SecretEnv(name.clone()))?,
        _ => return Err(Error::EmptySecret("the secret source".into())),
    };
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(Error::EmptySecret(source_name(src)));
    }
    Ok(text)
}

fn url_of(url: &Option<String>, from: &Option<SecretSource>) -> Result<String, Error> {
    match (url, from) {
        (Some(u), _) => Ok(u.clone()),
        (None, Some(src)) => {
            let u = read_secret(src)?;
            check_url(&u).map_err(|message| Error::BadUrl {
                source_name: source_name(src),
                // The message quotes the URL, which may hold a token: keep only why.
                message: message
                    .split(": ")
                    .last()
                    .unwrap_or("not a URL")
                    .to_string(),
            })?;
            Ok(u)
        }
        (None, None) => Err(Error::NoSink),
    }
}

/// A request ready to send: never logged whole (the URL may carry a token).
pub struct Request {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The request `notifier` sends for `n`, signed at `now` (unix seconds) when it has a key.
pub fn request(notifier: &Notifier, n: &Notification, now: i64) -> Result<Request, Error> {
    let s = &notifier.spec;
    if let Some(w) = &s.webhook {
        let body = n.webhook_body();
        let mut headers: Vec<(String, String)> = w
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(src) = &w.secret_ref {
            let key = read_secret(src)?;
            headers.push((signing::TIMESTAMP_HEADER.into(), now.to_string()));
            headers.push((
                signing::SIGNATURE_HEADER.into(),
                signing::sign(key.as_bytes(), now, &body),
            ));
        }
        headers.push(("X-Deployctl-Delivery".into(), n.id.clone()));
        return Ok(Request {
            url: url_of(&w.url, &w.url_from)?,
            headers,
            body,
        });
    }
    if let Some(sl) = &s.slack {
        return Ok(Request {
            url: url_of(&sl.url, &sl.url_from)?,
            headers: vec![],
            body: n.slack_body(),
        });
    }
    if let Some(g) = &s.graphite {
        return Ok(Request {
            url: url_of(&g.url, &g.url_from)?,
            headers: vec![],
            body: n.graphite_body(&g.tags),
        });
    }
    Err(Error::NoSink)
}

/// The host a URL names, for errors (the rest may carry a token).
fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            })
        })
        .unwrap_or_else(|| "<invalid URL>".into())
}

/// POSTs `req`; any 2xx is a delivery. Redirects are not followed (a signed body goes
/// only where the Notifier says).
pub async fn post(http: &reqwest::Client, req: Request, timeout: Duration) -> Result<(), Error> {
    let host = host_of(&req.url);
    let mut builder = http
        .post(&req.url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(req.body);
    for (k, v) in &req.headers {
        builder = builder.header(k, v);
    }
    let resp = builder.send().await.map_err(|e| Error::Http {
        host: host.clone(),
        // Without the URL: reqwest's message names it, and it may carry a token.
        message: e.without_url().to_string(),
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let answer = tokio::time::timeout(timeout, resp.bytes())
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|b| {
            let cut = &b[..b.len().min(MAX_ANSWER_BYTES)];
            String::from_utf8_lossy(cut)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    Err(Error::Refused {
        host,
        status: status.as_u16(),
        answer,
    })
}

/// The HTTP client every delivery shares: no redirects, no connection kept idle long.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(DEFAULT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("a client without custom TLS roots always builds")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Event, EventSpec, NotifierSpec, NotifyEvent, Object, ObjectReference};

    fn notification() -> Notification {
        let mut e = Event::new(
            "api.1",
            EventSpec {
                involved_object: ObjectReference {
                    kind: "Rollout".into(),
                    namespace: Some("default".into()),
                    name: "api".into(),
                },
                type_: "Normal".into(),
                reason: "RolloutStarted".into(),
                message: "rolling out version 2".into(),
                source: "controller".into(),
                time: None,
            },
        );
        e.metadata.uid = Some("uid-7".into());
        Notification::new(NotifyEvent::RolloutStarted, &e, None)
    }

    fn notifier(spec: serde_json::Value) -> Notifier {
        let spec: NotifierSpec = serde_json::from_value(spec).expect("a valid spec");
        Notifier::new("n", spec)
    }

    #[test]
    fn a_url_and_a_key_should_come_from_the_named_file_trimmed() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let url_file = dir.path().join("url");
        std::fs::write(&url_file, "https://hooks.example.com/T0/B0/token\n").expect("writable");
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "  k3y  \n").expect("writable");
        let n = notifier(serde_json::json!({"webhook": {
            "urlFrom": {"file": url_file.display().to_string()},
            "secretRef": {"file": key_file.display().to_string()}}}));
        let req = request(&n, &notification(), 1_700_000_000).expect("a request");
        assert_eq!(req.url, "https://hooks.example.com/T0/B0/token");
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            header(signing::SIGNATURE_HEADER),
            Some(signing::sign(b"k3y", 1_700_000_000, &req.body))
        );
        assert_eq!(header("X-Deployctl-Delivery").as_deref(), Some("uid-7"));

        let slack = notifier(serde_json::json!({"slack": {
            "urlFrom": {"file": url_file.display().to_string()}}}));
        let req = request(&slack, &notification(), 0).expect("a request");
        assert!(
            req.headers.is_empty(),
            "slack is not signed: {:?}",
            req.headers
        );
        let body: serde_json::Value = serde_json::from_slice(&req.body).expect("JSON");
        assert!(body["text"]
            .as_str()
            .is_some_and(|t| t.contains("default/api RolloutStarted")));
    }

    #[test]
    fn a_bad_secret_source_should_say_which_without_its_value() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("writable");
        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(9 * 1024)).expect("writable");
        let bad_url = dir.path().join("bad-url");
        std::fs::write(&bad_url, "ftp://secret-token@host/").expect("writable");
        let file = |p: &std::path::Path| SecretSource {
            file: Some(p.display().to_string()),
            env: None,
        };
        assert!(matches!(
            read_secret(&file(&empty)),
            Err(Error::EmptySecret(_))
        ));
        assert!(matches!(
            read_secret(&file(&big)),
            Err(Error::SecretTooLarge(_))
        ));
        assert!(matches!(
            read_secret(&file(&dir.path().join("missing"))),
            Err(Error::SecretFile { .. })
        ));
        let unset = SecretSource {
            file: None,
            env: Some("DEPLOYCTL_TEST_SURELY_UNSET_VARIABLE".into()),
        };
        assert!(matches!(read_secret(&unset), Err(Error::SecretEnv(_))));
        let n = notifier(
            serde_json::json!({"graphite": {"urlFrom": {"file": bad_url.display().to_string()}}}),
        );
        let e = request(&n, &notification(), 0)
            .err()
            .expect("an ftp URL is refused")
            .to_string();
        assert!(e.contains("bad-url") && !e.contains("secret-token"), "{e}");
    }
}

//! Who may read and act: the token, the sessions a sign-in opens, and the checks of
//! `Host` and `Origin` that keep other web pages out. Pure but for the session table.
//!
//! A session is a random id held by the server (it expires, and signing out deletes
//! it). The page keeps it in `sessionStorage`, which is per origin (scheme, host and
//! port), and sends it in a header ([`SESSION_HEADER`]), or in the query of its event
//! stream, which cannot carry headers. No cookie: a browser sends a cookie for
//! 127.0.0.1 to every port of it, so any local user's page on another port would get it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The header the page sends its session id in.
pub const SESSION_HEADER: &str = "x-deployctl-session";
/// Most bytes of a token file.
pub const MAX_TOKEN_FILE_BYTES: u64 = 8 * 1024;
/// Fewest bytes of a token: `openssl rand -hex 32` makes 64.
pub const MIN_TOKEN_BYTES: usize = 32;
/// How long a session lasts after its sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at once; past it the oldest is dropped.
pub const MAX_SESSIONS: usize = 1_000;

/// The dashboard's access rules, fixed at start.
#[derive(Clone)]
pub struct Access {
    /// The token from `--token-file`; `None`: nobody can sign in.
    token: Option<Vec<u8>>,
    /// Reads need a session too (the dashboard listens beyond loopback).
    pub reads_need_session: bool,
    /// `--allow-actions`: a signed-in user may promote, pause, abort...
    pub actions_allowed: bool,
    /// Loopback only: the `Host` values a request may carry (DNS rebinding: a page of
    /// another site, resolved to 127.0.0.1, would otherwise read the fleet).
    allowed_hosts: Option<Vec<String>>,
}

/// What a request presented to prove who sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    None,
    Valid,
    /// A wrong token or an unknown or expired session: counted against the source.
    Invalid,
}

impl Access {
    pub fn new(token: Option<Vec<u8>>, listen: SocketAddr, actions_allowed: bool) -> Access {
        let loopback = listen.ip().is_loopback();
        let port = listen.port();
        Access {
            token,
            reads_need_session: !loopback,
            actions_allowed,
            allowed_hosts: loopback.then(|| {
                vec![
                    format!("127.0.0.1:{port}"),
                    format!("localhost:{port}"),
                    format!("[::1]:{port}"),
                    listen.to_string(),
                ]
            }),
        }
    }

    pub fn can_sign_in(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `given` is the token (constant-time).
    pub fn token_matches(&self, given: &[u8]) -> bool {
        match &self.token {
            Some(token) => constant_time_eq(token, given),
            None => false,
        }
    }

    /// What a request presents: `Authorization: Bearer <token>` (for scripts), or a
    /// session id (header or stream query) checked against `sessions`.
    pub fn credential(
        &self,
        authorization: Option<&str>,
        session: Option<&str>,
        sessions: &Sessions,
        now: Instant,
    ) -> Credential {
        if let Some(bearer) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
            return verdict(self.token_matches(bearer.trim().as_bytes()));
        }
        match session.filter(|s| !s.is_empty()) {
            Some(id) => verdict(self.can_sign_in() && sessions.valid(id, now)),
            None => Credential::None,
        }
    }

    /// Whether `Host` is one this dashboard answers to (always, beyond loopback: a
    /// session is needed there anyway).
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        match (&self.allowed_hosts, host) {
            (None, _) => true,
            (Some(hosts), Some(h)) => hosts.iter().any(|a| a.eq_ignore_ascii_case(h)),
            (Some(_), None) => false,
        }
    }
}

fn verdict(ok: bool) -> Credential {
    if ok {
        Credential::Valid
    } else {
        Credential::Invalid
    }
}

/// Equal bytes, compared in a time that does not depend on where they differ: both are
/// hashed under a fixed key first, so lengths do not leak either.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let digest = |x: &[u8]| {
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"deployctl-compare")
            .expect("HMAC takes any key length");
        m.update(x);
        m.finalize().into_bytes()
    };
    let (a, b) = (digest(a), digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The open sessions: random ids, each with its expiry.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// Opens a session valid for [`SESSION_TTL`] from `now`; its id.
    pub fn open(&self, now: Instant) -> String {
        let id = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|_, until| *until > now);
        while open.len() >= MAX_SESSIONS {
            let oldest = open
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => open.remove(&k),
                None => break,
            };
        }
        open.insert(id.clone(), now + SESSION_TTL);
        id
    }

    /// Whether `id` is an open, unexpired session (constant-time per entry).
    pub fn valid(&self, id: &str, now: Instant) -> bool {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.iter().fold(false, |found, (k, until)| {
            found | (constant_time_eq(k.as_bytes(), id.as_bytes()) && *until > now)
        })
    }

    /// Closes `id` (signing out).
    pub fn close(&self, id: &str) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }
}

/// Whether a writing request comes from the dashboard's own page: its `Origin` is this
/// server's (`http://` or `https://` behind a TLS proxy, and the request's `Host`).
pub fn same_origin(origin: Option<&str>, host: Option<&str>) -> bool {
    let (Some(origin), Some(host)) = (origin, host) else {
        return false;
    };
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    rest.is_some_and(|r| r.eq_ignore_ascii_case(host))
}

/// Reads a token file: its content trimmed, at least [`MIN_TOKEN_BYTES`], at most
/// [`MAX_TOKEN_FILE_BYTES`].
pub fn read_token_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(format!(
            "token file {} is larger than 8 KiB",
            path.display()
        ));
    }
    let token = buf.trim_ascii().to_vec();
    if token.len() < MIN_TOKEN_BYTES {
        return Err(format!(
            "token file {} holds fewer than {MIN_TOKEN_BYTES} bytes: use a long random \
             token (openssl rand -hex 32)",
            path.display()
        ));
    }
    if token.iter().any(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "token file {} holds spaces or control characters: use printable characters \
             only (openssl rand -hex 32)",
            path.display()
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn access(listen: &str) -> Access {
        Access::new(
            Some(TOKEN.as_bytes().to_vec()),
            listen.parse().unwrap(),
            true,
        )
    }

    #[test]
    fn a_request_should_be_signed_in_by_an_open_session_or_the_bearer_token() {
        let a = access("127.0.0.1:3100");
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let id = sessions.open(t0);
        assert_eq!(id.len(), 64);
        let cred = |auth: Option<&str>, session: Option<&str>, at| {
            a.credential(auth, session, &sessions, at)
        };
        assert_eq!(cred(None, Some(&id), t0), Credential::Valid);
        assert_eq!(
            cred(Some(&format!("Bearer {TOKEN}")), None, t0),
            Credential::Valid
        );
        assert_eq!(
            cred(Some("Bearer wrong"), Some(&id), t0),
            Credential::Invalid
        );
        assert_eq!(cred(None, Some("0000"), t0), Credential::Invalid);
        assert_eq!(cred(None, None, t0), Credential::None);
        assert_eq!(cred(None, Some(""), t0), Credential::None);
        assert_eq!(
            cred(None, Some(&id), t0 + SESSION_TTL + Duration::from_secs(1)),
            Credential::Invalid,
            "expired"
        );
        sessions.close(&id);
        assert_eq!(cred(None, Some(&id), t0), Credential::Invalid, "signed out");
        let none = Access::new(None, "127.0.0.1:3100".parse().unwrap(), false);
        let other = sessions.open(t0);
        assert_eq!(
            none.credential(Some("Bearer "), None, &sessions, t0),
            Credential::Invalid
        );
        assert_eq!(
            none.credential(None, Some(&other), &sessions, t0),
            Credential::Invalid,
            "no token: no session"
        );
    }

    #[test]
    fn the_session_table_should_stay_bounded() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let first = sessions.open(t0);
        for k in 1..=MAX_SESSIONS as u64 {
            sessions.open(t0 + Duration::from_millis(k));
        }
        assert!(!sessions.valid(&first, t0), "the oldest went first");
        assert_eq!(
            sessions.open.lock().unwrap().len(),
            MAX_SESSIONS,
            "never more than the cap"
        );
    }

    #[test]
    fn on_loopback_only_the_listening_host_names_should_be_answered() {
        let a = access("127.0.0.1:3100");
        assert!(a.host_allowed(Some("127.0.0.1:3100")));
        assert!(a.host_allowed(Some("LOCALHOST:3100")));
        assert!(!a.host_allowed(Some("evil.example:3100")), "DNS rebinding");
        assert!(!a.host_allowed(Some("127.0.0.1:3101")));
        assert!(!a.host_allowed(None));
        assert!(!a.reads_need_session);
        let wide = access("0.0.0.0:3100");
        assert!(wide.host_allowed(Some("dash.example:443")));
        assert!(wide.reads_need_session);
    }

    #[test]
    fn an_action_should_need_the_origin_of_the_host_it_was_sent_to() {
        assert!(same_origin(
            Some("http://127.0.0.1:3100"),
            Some("127.0.0.1:3100")
        ));
        assert!(same_origin(
            Some("https://dash.example"),
            Some("dash.example")
        ));
        assert!(!same_origin(
            Some("http://evil.example"),
            Some("127.0.0.1:3100")
        ));
        assert!(!same_origin(Some("null"), Some("127.0.0.1:3100")));
        assert!(!same_origin(None, Some("127.0.0.1:3100")));
        assert!(!same_origin(
            Some("http://127.0.0.1:3100.evil"),
            Some("127.0.0.1:3100")
        ));
    }

    #[test]
    fn a_token_file_should_be_refused_when_short_large_or_not_printable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "short\n").unwrap();
        assert!(read_token_file(&p).unwrap_err().contains("fewer than 32"));
        std::fs::write(&p, "0123456789 abcdef0123456789abcdef0123").unwrap();
        assert!(read_token_file(&p)
            .unwrap_err()
            .contains("control characters"));
        std::fs::write(&p, vec![b'a'; 9000]).unwrap();
        assert!(read_token_file(&p).unwrap_err().contains("8 KiB"));
        std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
        assert_eq!(read_token_file(&p).unwrap(), TOKEN.as_bytes());
        assert!(read_token_file(&dir.path().join("none"))
            .unwrap_err()
            .contains("cannot read token file"));
    }
}

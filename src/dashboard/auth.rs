//! Who may read and act: the token, the session cookie made from it, and the checks of
//! `Host` and `Origin` that keep other web pages out. Pure: given the headers.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::SocketAddr;

/// The session cookie's name.
pub const COOKIE: &str = "deployctl_session";
/// Most bytes of a token file.
pub const MAX_TOKEN_FILE_BYTES: u64 = 8 * 1024;
/// Fewest bytes of a token.
pub const MIN_TOKEN_BYTES: usize = 16;

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

    /// The session cookie's value: an HMAC of a fixed label under the token, so the
    /// browser never holds the token itself.
    pub fn session_value(&self) -> Option<String> {
        let token = self.token.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(token).expect("HMAC takes any key length");
        mac.update(b"deployctl-dashboard-session-v1");
        Some(hex::encode(mac.finalize().into_bytes()))
    }

    /// Whether `given` is the token (constant-time).
    pub fn token_matches(&self, given: &[u8]) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        // Compare HMACs of both under a fixed key: equal lengths, constant time.
        let digest = |b: &[u8]| {
            let mut m = Hmac::<Sha256>::new_from_slice(b"deployctl-compare").expect("any key");
            m.update(b);
            m.finalize().into_bytes()
        };
        let (a, b) = (digest(token), digest(given));
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }

    /// Whether the request carries a session: the cookie, or `Authorization: Bearer
    /// <token>` (for scripts).
    pub fn signed_in(&self, cookie: Option<&str>, authorization: Option<&str>) -> bool {
        if let Some(bearer) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
            return self.token_matches(bearer.trim().as_bytes());
        }
        let (Some(cookies), Some(want)) = (cookie, self.session_value()) else {
            return false;
        };
        cookies
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .any(|(k, v)| k == COOKIE && self.token_matches_session(v, &want))
    }

    fn token_matches_session(&self, given: &str, want: &str) -> bool {
        given.len() == want.len()
            && given
                .bytes()
                .zip(want.bytes())
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
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

    fn access(listen: &str) -> Access {
        Access::new(
            Some(b"0123456789abcdef0123".to_vec()),
            listen.parse().unwrap(),
            true,
        )
    }

    #[test]
    fn a_session_should_be_the_cookie_made_from_the_token_or_the_bearer_token() {
        let a = access("127.0.0.1:3100");
        let cookie = format!("other=1; {COOKIE}={}", a.session_value().unwrap());
        assert!(a.signed_in(Some(&cookie), None));
        assert!(a.signed_in(None, Some("Bearer 0123456789abcdef0123")));
        assert!(!a.signed_in(None, Some("Bearer 0123456789abcdef012")));
        assert!(!a.signed_in(Some(&format!("{COOKIE}=00")), None));
        assert!(!a.signed_in(Some("x=y"), None));
        assert!(!a.signed_in(None, None));
        let none = Access::new(None, "127.0.0.1:3100".parse().unwrap(), false);
        assert!(
            !none.signed_in(Some(&cookie), Some("Bearer ")),
            "no token: no session"
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
        assert!(read_token_file(&p).unwrap_err().contains("fewer than 16"));
        std::fs::write(&p, "0123456789 abcdef0123").unwrap();
        assert!(read_token_file(&p)
            .unwrap_err()
            .contains("control characters"));
        std::fs::write(&p, vec![b'a'; 9000]).unwrap();
        assert!(read_token_file(&p).unwrap_err().contains("8 KiB"));
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        assert_eq!(read_token_file(&p).unwrap(), b"0123456789abcdef0123");
        assert!(read_token_file(&dir.path().join("none"))
            .unwrap_err()
            .contains("cannot read token file"));
    }
}

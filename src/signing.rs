//! The HMAC signature of notifications and of build-webhook requests.
//!
//! A signed request carries `X-Deployctl-Timestamp: <unix seconds>` and
//! `X-Deployctl-Signature: sha256=<hex of HMAC-SHA256(secret, timestamp + "." + body)>`,
//! as Slack and Stripe sign theirs. The timestamp is inside the MAC, so a receiver that
//! refuses old timestamps refuses replays.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

pub const TIMESTAMP_HEADER: &str = "X-Deployctl-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Deployctl-Signature";

/// How far a request's timestamp may be from the receiver's clock (either way).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("missing header {0}")]
    Missing(&'static str),
    #[error("invalid {TIMESTAMP_HEADER}: must be unix seconds")]
    BadTimestamp,
    #[error("{TIMESTAMP_HEADER} is {0}s away from now: more than the 300s replay window")]
    Stale(u64),
    #[error("invalid {SIGNATURE_HEADER}: must be sha256=<64 hex digits>")]
    BadSignatureFormat,
    #[error("signature does not match")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Deployctl-Signature` value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let bytes = mac(secret, &timestamp.to_string(), body)
        .finalize()
        .into_bytes();
    format!("sha256={}", hex::encode(bytes))
}

/// Checks the two headers of a request against `body`, at `now` (unix seconds). The
/// comparison is constant-time.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), Error> {
    let timestamp = timestamp.ok_or(Error::Missing(TIMESTAMP_HEADER))?;
    let signature = signature.ok_or(Error::Missing(SIGNATURE_HEADER))?;
    let ts: i64 = timestamp.trim().parse().map_err(|_| Error::BadTimestamp)?;
    let given = signature
        .trim()
        .strip_prefix("sha256=")
        .filter(|h| h.len() == 64)
        .and_then(|h| hex::decode(h).ok())
        .ok_or(Error::BadSignatureFormat)?;
    mac(secret, timestamp.trim(), body)
        .verify_slice(&given)
        .map_err(|_| Error::Mismatch)?;
    // Checked after the MAC, so that the answer tells nothing to whoever lacks the key
    // beyond "not signed by the key".
    let skew = now.abs_diff(ts);
    if skew > REPLAY_WINDOW.as_secs() {
        return Err(Error::Stale(skew));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_should_be_the_hmac_of_timestamp_dot_body() {
        // Computed apart, with `printf '1700000000.{}' | openssl dgst -sha256 -hmac key`.
        assert_eq!(
            sign(b"key", 1_700_000_000, b"{}"),
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        let sig = sign(b"key", 1_700_000_000, b"{}");
        assert_eq!(
            verify(b"key", Some("1700000000"), Some(&sig), b"{}", 1_700_000_100),
            Ok(())
        );
    }

    #[test]
    fn verify_should_refuse_every_wrong_or_missing_part() {
        let now = 1_700_000_000;
        let sig = sign(b"key", now, b"body");
        let ts = now.to_string();
        for (secret, ts, sig, body, at, want) in [
            (
                &b"key"[..],
                None,
                Some(sig.as_str()),
                &b"body"[..],
                now,
                Error::Missing(TIMESTAMP_HEADER),
            ),
            (
                b"key",
                Some(ts.as_str()),
                None,
                b"body",
                now,
                Error::Missing(SIGNATURE_HEADER),
            ),
            (
                b"key",
                Some("soon"),
                Some(&sig),
                b"body",
                now,
                Error::BadTimestamp,
            ),
            (
                b"key",
                Some(&ts),
                Some("md5=00"),
                b"body",
                now,
                Error::BadSignatureFormat,
            ),
            (
                b"other",
                Some(&ts),
                Some(&sig),
                b"body",
                now,
                Error::Mismatch,
            ),
            (b"key", Some(&ts), Some(&sig), b"bodx", now, Error::Mismatch),
            (
                b"key",
                Some("1700000001"),
                Some(&sig),
                b"body",
                now,
                Error::Mismatch,
            ),
            (
                b"key",
                Some(&ts),
                Some(&sig),
                b"body",
                now + 301,
                Error::Stale(301),
            ),
            (
                b"key",
                Some(&ts),
                Some(&sig),
                b"body",
                now - 301,
                Error::Stale(301),
            ),
        ] {
            assert_eq!(
                verify(secret, ts, sig, body, at),
                Err(want.clone()),
                "{want}"
            );
        }
        assert_eq!(
            verify(b"key", Some(&ts), Some(&sig), b"body", now + 300),
            Ok(())
        );
    }
}

//! Reads a build webhook's body into the version to set: generic JSON
//! (`{"version": "...", "sha256": "..."}`) or Docker Hub's build payload (the pushed
//! tag in `push_data.tag`, the repository in `repository.repo_name`).

use crate::api::validation::check_version;
use serde_json::Value;

/// A refused body, naming the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("body: not JSON: {0}")]
    NotJson(String),
    #[error("body: must be a JSON object")]
    NotObject,
    #[error("{0}: missing")]
    Missing(&'static str),
    #[error("{0}: must be a string")]
    NotString(&'static str),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// The version (and digest) a body asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub version: String,
    pub sha256: Option<String>,
    /// `generic` or `dockerhub`, for the log.
    pub source: &'static str,
}

fn string<'a>(v: Option<&'a Value>, field: &'static str) -> Result<Option<&'a str>, Error> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::NotString(field)),
    }
}

/// Parses and checks a body: the version must be a valid deployctl version, the
/// sha256 64 hex digits.
pub fn parse(body: &[u8]) -> Result<Wanted, Error> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Error::NotJson(e.to_string()))?;
    let obj = value.as_object().ok_or(Error::NotObject)?;
    let (field, version, sha256, source) = if let Some(push) = obj.get("push_data") {
        let tag =
            string(push.get("tag"), "push_data.tag")?.ok_or(Error::Missing("push_data.tag"))?;
        // The repository is not checked against anything: the signature already says
        // who sent it. It must still be a string when present.
        string(
            obj.get("repository").and_then(|r| r.get("repo_name")),
            "repository.repo_name",
        )?;
        ("push_data.tag", tag, None, "dockerhub")
    } else {
        let version = string(obj.get("version"), "version")?.ok_or(Error::Missing("version"))?;
        let sha = string(obj.get("sha256"), "sha256")?;
        ("version", version, sha, "generic")
    };
    check_version(version).map_err(|message| Error::Invalid { field, message })?;
    if let Some(s) = sha256 {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Invalid {
                field: "sha256",
                message: "must be 64 hex digits".into(),
            });
        }
    }
    Ok(Wanted {
        version: version.to_string(),
        sha256: sha256.map(|s| s.to_ascii_lowercase()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_should_read_generic_and_docker_hub_bodies() {
        let sha = "a".repeat(64);
        assert_eq!(
            parse(format!(r#"{{"version": "1.4.2", "sha256": "{sha}"}}"#).as_bytes()),
            Ok(Wanted {
                version: "1.4.2".into(),
                sha256: Some(sha),
                source: "generic"
            })
        );
        let hub = br#"{"push_data": {"tag": "v2.0.1", "pusher": "ci"},
                       "repository": {"repo_name": "acme/api", "namespace": "acme"}}"#;
        assert_eq!(
            parse(hub),
            Ok(Wanted {
                version: "v2.0.1".into(),
                sha256: None,
                source: "dockerhub"
            })
        );
    }

    #[test]
    fn parse_should_name_the_field_of_a_bad_body() {
        for (body, want) in [
            (&b"not json"[..], "body: not JSON"),
            (b"[1]", "body: must be a JSON object"),
            (b"{}", "version: missing"),
            (br#"{"version": 3}"#, "version: must be a string"),
            (br#"{"version": "../x"}"#, "version: invalid version"),
            (
                br#"{"version": "1", "sha256": "abc"}"#,
                "sha256: must be 64 hex digits",
            ),
            (br#"{"push_data": {}}"#, "push_data.tag: missing"),
            (
                br#"{"push_data": {"tag": "a b"}}"#,
                "push_data.tag: invalid version",
            ),
            (
                br#"{"push_data": {"tag": "1"}, "repository": {"repo_name": 5}}"#,
                "repository.repo_name: must be a string",
            ),
        ] {
            let got = parse(body).expect_err("a bad body is refused").to_string();
            assert!(
                got.starts_with(want),
                "{}: {got}",
                String::from_utf8_lossy(body)
            );
        }
    }
}

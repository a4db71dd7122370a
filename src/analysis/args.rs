//! Template arguments: `{{args.NAME}}` and the built-ins, each escaped for the place it goes
//! (a PromQL string literal, a URL query component); `exec` gets them only as environment
//! variables.

use std::collections::BTreeMap;

/// The arguments every run has, filled from the Rollout.
pub const BUILTINS: [&str; 6] = [
    "version",
    "stableVersion",
    "application",
    "namespace",
    "machines",
    "machinesCsv",
];

/// At most this many placeholders in one text, and this long a text: bounded work.
pub const MAX_TEXT_LEN: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgError {
    #[error("unterminated placeholder: `{{{{` without `}}}}`")]
    Unterminated,
    #[error("unknown placeholder {{{{{0}}}}}: use {{{{args.NAME}}}} with an argument the template declares, or one of version, stableVersion, application, namespace, machines, machinesCsv")]
    Unknown(String),
    #[error("argument {0:?} has no value")]
    Missing(String),
    #[error("text longer than {MAX_TEXT_LEN} bytes")]
    TooLong,
}

/// Where a value goes, and so how it is escaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Inside a PromQL string literal (`"…"` or `'…'`): backslash, both quotes and control
    /// characters escaped, so a value can never close the literal.
    PromQl,
    /// A URL query component: everything but RFC 3986's unreserved characters
    /// percent-encoded.
    UrlQuery,
}

/// One `{{…}}` of a text: its byte range and the name inside, trimmed.
struct Placeholder<'a> {
    start: usize,
    end: usize,
    name: &'a str,
}

fn scan(text: &str) -> Result<Vec<Placeholder<'_>>, ArgError> {
    if text.len() > MAX_TEXT_LEN {
        return Err(ArgError::TooLong);
    }
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(open) = text[at..].find("{{") {
        let start = at + open;
        let close = text[start + 2..].find("}}").ok_or(ArgError::Unterminated)?;
        let end = start + 2 + close + 2;
        out.push(Placeholder {
            start,
            end,
            name: text[start + 2..end - 2].trim(),
        });
        at = end;
    }
    Ok(out)
}

/// The key a placeholder names in a run's `args` map: `args.NAME` → `NAME`, a built-in as
/// itself; `None` for anything else.
fn key<'a>(name: &'a str, declared: &[&str]) -> Option<&'a str> {
    if let Some(arg) = name.strip_prefix("args.") {
        return declared.contains(&arg).then_some(arg);
    }
    BUILTINS.contains(&name).then_some(name)
}

/// Checks that every placeholder of `text` names a declared argument or a built-in.
pub fn check(text: &str, declared: &[&str]) -> Result<(), ArgError> {
    for p in scan(text)? {
        if key(p.name, declared).is_none() {
            return Err(ArgError::Unknown(p.name.to_string()));
        }
    }
    Ok(())
}

/// True when `text` holds any placeholder.
pub fn has_placeholders(text: &str) -> bool {
    text.contains("{{")
}

/// `text` with every placeholder replaced by its value from `values` (built-ins by their
/// name, template arguments by theirs), escaped for `dest`. Literal text is kept as is.
pub fn render(
    text: &str,
    values: &BTreeMap<String, String>,
    declared: &[&str],
    dest: Dest,
) -> Result<String, ArgError> {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for p in scan(text)? {
        let k = key(p.name, declared).ok_or_else(|| ArgError::Unknown(p.name.to_string()))?;
        let v = values
            .get(k)
            .ok_or_else(|| ArgError::Missing(k.to_string()))?;
        out.push_str(&text[at..p.start]);
        out.push_str(&escape(v, dest));
        at = p.end;
    }
    out.push_str(&text[at..]);
    Ok(out)
}

/// `value` escaped for `dest`.
pub fn escape(value: &str, dest: Dest) -> String {
    match dest {
        Dest::PromQl => {
            let mut s = String::with_capacity(value.len());
            for c in value.chars() {
                match c {
                    '\\' => s.push_str("\\\\"),
                    '"' => s.push_str("\\\""),
                    '\'' => s.push_str("\\'"),
                    '`' => s.push_str("\\`"),
                    '\n' => s.push_str("\\n"),
                    '\r' => s.push_str("\\r"),
                    '\t' => s.push_str("\\t"),
                    c if c.is_control() => s.push_str(&format!("\\u{:04x}", c as u32)),
                    c => s.push(c),
                }
            }
            s
        }
        Dest::UrlQuery => {
            use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
            const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
                .remove(b'-')
                .remove(b'.')
                .remove(b'_')
                .remove(b'~');
            utf8_percent_encode(value, UNRESERVED).to_string()
        }
    }
}

/// The canary machines as a regex alternation for `instance=~"…"`: each name
/// regex-escaped (a `.` matches only a dot), anchored by PromQL's full match.
pub fn machines_regex(machines: &[String]) -> String {
    machines
        .iter()
        .map(|m| regex::escape(m))
        .collect::<Vec<_>>()
        .join("|")
}

/// The run's values: the built-ins, then each step argument, then each template default.
pub fn builtins(
    version: &str,
    stable: Option<&str>,
    application: &str,
    namespace: &str,
    machines: &[String],
) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("version".into(), version.into()),
        ("stableVersion".into(), stable.unwrap_or_default().into()),
        ("application".into(), application.into()),
        ("namespace".into(), namespace.into()),
        ("machines".into(), machines_regex(machines)),
        ("machinesCsv".into(), machines.join(",")),
    ])
}

/// The environment an `exec` metric's command gets: `ANALYSIS_<BUILTIN>` in upper snake
/// case (`ANALYSIS_STABLE_VERSION`, `ANALYSIS_MACHINES_CSV`) and `ANALYSIS_ARG_<NAME>`.
pub fn env(values: &BTreeMap<String, String>) -> Vec<(String, String)> {
    values
        .iter()
        .map(|(k, v)| {
            let name = if BUILTINS.contains(&k.as_str()) {
                let mut s = String::from("ANALYSIS_");
                for c in k.chars() {
                    if c.is_ascii_uppercase() {
                        s.push('_');
                    }
                    s.push(c.to_ascii_uppercase());
                }
                s
            } else {
                format!("ANALYSIS_ARG_{}", k.to_ascii_uppercase())
            };
            (name, v.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> BTreeMap<String, String> {
        let mut v = builtins(
            "1.0\"} or vector(1) or {x=\"",
            Some("0.9"),
            "api",
            "default",
            &["web-1.example".into(), "web(2)".into()],
        );
        v.insert("service".into(), "a&b=c d/é".into());
        v
    }

    #[test]
    fn a_version_that_would_close_a_promql_string_should_stay_inside_it() {
        let q = render(
            r#"rate(errors{version="{{version}}"}[1m])"#,
            &values(),
            &[],
            Dest::PromQl,
        )
        .unwrap();
        assert_eq!(
            q,
            r#"rate(errors{version="1.0\"} or vector(1) or {x=\""}[1m])"#
        );
        // Spliced raw, the literal would end after `1.0` and inject `or vector(1)`.
        assert!(!q.contains(r#"1.0"}"#));
    }

    #[test]
    fn machines_should_be_a_regex_escaped_alternation_inside_the_promql_string() {
        let q = render(
            r#"up{instance=~"{{machines}}"}"#,
            &values(),
            &[],
            Dest::PromQl,
        )
        .unwrap();
        // regex::escape gives `web\-1\.example|web\(2\)`; PromQL's literal doubles each
        // backslash so that the regex engine sees one.
        assert_eq!(q, r#"up{instance=~"web\\-1\\.example|web\\(2\\)"}"#);
    }

    #[test]
    fn an_argument_in_a_url_should_be_one_query_component() {
        let u = render(
            "http://h/q?svc={{args.service}}&v={{ version }}",
            &values(),
            &["service"],
            Dest::UrlQuery,
        )
        .unwrap();
        assert_eq!(
            u,
            "http://h/q?svc=a%26b%3Dc%20d%2F%C3%A9&v=1.0%22%7D%20or%20vector%281%29%20or%20%7Bx%3D%22"
        );
        let parsed = reqwest::Url::parse(&u).unwrap();
        let pairs: BTreeMap<String, String> = parsed.query_pairs().into_owned().collect();
        assert_eq!(pairs["svc"], "a&b=c d/é");
        assert_eq!(pairs.len(), 2, "an & in a value must not add a parameter");
    }

    #[test]
    fn an_unknown_or_undeclared_placeholder_should_be_refused_by_name() {
        assert_eq!(
            check("x{{args.nope}}", &["service"]),
            Err(ArgError::Unknown("args.nope".into()))
        );
        assert_eq!(
            check("{{versions}}", &[]),
            Err(ArgError::Unknown("versions".into()))
        );
        assert_eq!(check("{{version", &[]), Err(ArgError::Unterminated));
        assert!(check("{{args.service}} {{machinesCsv}}", &["service"]).is_ok());
    }

    #[test]
    fn exec_should_get_values_as_environment_variables() {
        let env: BTreeMap<String, String> = env(&values()).into_iter().collect();
        assert_eq!(env["ANALYSIS_STABLE_VERSION"], "0.9");
        assert_eq!(env["ANALYSIS_MACHINES_CSV"], "web-1.example,web(2)");
        assert_eq!(env["ANALYSIS_ARG_SERVICE"], "a&b=c d/é");
    }
}

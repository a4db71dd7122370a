//! `deployctl explain`: a kind's or field's type, default, description and the fields
//! below it, from the JSON Schemas that `docs/reference.md` is generated from.

use super::parse_kind;
use crate::api::reference::{self, Row};
use crate::api::{schema, KindName, GROUP};
use clap::Args;
use serde_json::Value;

pub const EXAMPLES: &str = "\
Examples:
  # A kind, then a field and the fields below it
  deployctl explain rollout
  deployctl explain rollout.spec.strategy

  # Lists of objects need no []: steps[].pause is steps.pause
  deployctl explain ro.spec.strategy.steps.pause";

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// A kind, or a kind and a field path: `rollout`, `rollout.spec.strategy`.
    #[arg(value_name = "KIND[.FIELD.PATH]")]
    pub what: String,
}

/// Why nothing can be explained.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    #[error("{0} are written by deployctl itself and have no schema: explain machines, applications, rollouts or notifiers")]
    NoSchema(&'static str),
    #[error("field {field:?} does not exist in {at}; the fields there are: {}", .there.join(", "))]
    NoField {
        field: String,
        at: String,
        there: Vec<String>,
    },
}

pub fn run(args: ExplainArgs) -> anyhow::Result<i32> {
    let (kind_word, path) = match args.what.split_once('.') {
        Some((k, p)) => (k, p),
        None => (args.what.as_str(), ""),
    };
    let kind = parse_kind(kind_word)?;
    out!("{}", explain(kind, path)?);
    Ok(0)
}

/// The text `explain` prints for `path` (empty: the kind itself) of `kind`.
pub fn explain(kind: KindName, path: &str) -> Result<String, ExplainError> {
    let schema = schema::schema_for(kind).ok_or(ExplainError::NoSchema(kind.plural()))?;
    let rows = reference::fields(&schema);
    let mut out = format!("KIND:     {}\nVERSION:  {GROUP}/v1\n\n", kind.kind());
    let path = path.trim_matches('.');
    let (full, description) = if path.is_empty() {
        let d = schema.get("description").and_then(Value::as_str);
        (
            String::new(),
            d.map(|d| plain(&one_line(d))).unwrap_or_default(),
        )
    } else {
        let row = find(&rows, kind, path)?;
        out.push_str(&format!(
            "FIELD:    {} <{}>\n",
            plain(path),
            plain(&row.type_)
        ));
        if !row.default.is_empty() {
            out.push_str(&format!("DEFAULT:  {}\n", plain(&row.default)));
        }
        out.push('\n');
        (row.path.clone(), plain(&row.description))
    };
    out.push_str("DESCRIPTION:\n");
    out.push_str(&format!("    {}\n", or_none(&description)));
    let below = children(&rows, &full);
    if !below.is_empty() {
        out.push_str("\nFIELDS:\n");
        for (name, r) in below {
            out.push_str(&format!("  {name}\t<{}>", plain(&r.type_)));
            if !r.default.is_empty() {
                out.push_str(&format!(" (default {})", plain(&r.default)));
            }
            out.push_str(&format!("\n    {}\n", or_none(&plain(&r.description))));
        }
    }
    Ok(out)
}

/// The row of `path`, written without `[]` and `.<key>`; an unknown step is an error
/// that lists the fields where it went wrong.
fn find<'r>(rows: &'r [Row], kind: KindName, path: &str) -> Result<&'r Row, ExplainError> {
    let mut at = String::new();
    let mut found: Option<&Row> = None;
    for step in path.split('.') {
        let below = children(rows, &at);
        match below.into_iter().find(|(name, _)| name == step) {
            Some((_, r)) => {
                found = Some(r);
                at = r.path.clone();
            }
            None => {
                let there = children(rows, &at)
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect();
                let where_ = match found {
                    Some(_) => format!("{}.{}", kind.singular(), unmarked(&at)),
                    None => kind.singular().to_string(),
                };
                return Err(ExplainError::NoField {
                    field: step.to_string(),
                    at: where_,
                    there,
                });
            }
        }
    }
    Ok(found.expect("a non-empty path has at least one step"))
}

/// The fields directly below `full` (a row's path; empty: the top level). A list of
/// objects (`steps` → `steps[].x`) and a map of objects (`x.<key>.y`) are looked through.
fn children<'r>(rows: &'r [Row], full: &str) -> Vec<(String, &'r Row)> {
    let prefixes: Vec<String> = if full.is_empty() {
        vec![String::new()]
    } else {
        vec![
            format!("{full}."),
            format!("{full}[]."),
            format!("{full}.<key>."),
        ]
    };
    let mut out = Vec::new();
    for r in rows {
        for p in &prefixes {
            if let Some(rest) = r.path.strip_prefix(p.as_str()) {
                if !rest.is_empty() && !rest.contains('.') && !rest.contains("[]") {
                    out.push((rest.to_string(), r));
                }
            }
        }
    }
    out
}

/// A row's path as a user writes it: no `[]`, no `<key>`.
fn unmarked(path: &str) -> String {
    path.replace("[]", "").replace(".<key>", "")
}

/// Markdown made plain for a terminal: no backticks, no bold.
fn plain(s: &str) -> String {
    s.replace('`', "").replace("**", "").replace("\\|", "|")
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "(no description)"
    } else {
        s
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_should_list_its_top_level_fields() {
        let text = explain(KindName::Rollout, "").unwrap();
        assert!(
            text.starts_with("KIND:     Rollout\nVERSION:  deployctl.dev/v1\n"),
            "{text}"
        );
        assert!(text.contains("\nFIELDS:\n  apiVersion\t<string>"), "{text}");
        assert!(text.contains("\n  spec\t<object>\n"), "{text}");
        assert!(
            !text.contains("\n  version\t"),
            "only the top level: {text}"
        );
        assert!(
            text.contains("CI or a GitOps commit changes spec.version"),
            "{text}"
        );
    }

    #[test]
    fn a_field_should_show_type_default_description_and_the_fields_below() {
        let text = explain(KindName::Rollout, "spec.strategy.maxUnavailable").unwrap();
        assert!(
            text.contains(
                "FIELD:    spec.strategy.maxUnavailable <integer or string>\nDEFAULT:  1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("DESCRIPTION:\n    Slots: how many machines"),
            "{text}"
        );
        let text = explain(KindName::Rollout, "spec.strategy").unwrap();
        assert!(
            text.contains("\n  maxUnavailable\t<integer or string> (default 1)\n"),
            "{text}"
        );
        // A list of objects is looked through: steps, then the fields of one step.
        let text = explain(KindName::Rollout, "spec.strategy.steps").unwrap();
        assert!(text.contains("\n  setWeight\t<"), "{text}");
        assert!(explain(KindName::Rollout, "spec.strategy.steps.pause").is_ok());
    }

    #[test]
    fn an_unknown_field_should_be_refused_listing_the_fields_there() {
        let err = explain(KindName::Rollout, "spec.strategy.nope").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("field \"nope\" does not exist in rollout.spec.strategy; the fields there are: analysis, maxParallelStage, maxUnavailable, "),
            "{text}"
        );
        let err = explain(KindName::Machine, "nope").unwrap_err().to_string();
        assert!(
            err.contains("does not exist in machine; the fields there are: apiVersion"),
            "{err}"
        );
        assert_eq!(
            explain(KindName::Instance, "").unwrap_err(),
            ExplainError::NoSchema("instances")
        );
    }
}

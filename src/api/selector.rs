//! Label selectors: the `selector` of an Application and the `-l` of `get`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Selects objects by their labels. Every given term must hold; empty selects all.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based terms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelExpression>,
}

/// One set-based selector term.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelExpression {
    pub key: String,
    pub operator: LabelOperator,
    /// Values for `In` and `NotIn`; must be empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Parses kubectl's `-l` syntax: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`,
    /// `k notin (a,b)`, joined by commas.
    pub fn parse(text: &str) -> Result<LabelSelector, String> {
        let mut sel = LabelSelector::default();
        for term in split_terms(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let bad = || format!("invalid label selector term {term:?}");
            if let Some(key) = term.strip_prefix('!') {
                sel.match_expressions.push(LabelExpression {
                    key: checked_key(key.trim()).ok_or_else(bad)?,
                    operator: LabelOperator::DoesNotExist,
                    values: vec![],
                });
            } else if let Some((k, v)) = term.split_once("!=") {
                sel.match_expressions.push(LabelExpression {
                    key: checked_key(k.trim()).ok_or_else(bad)?,
                    operator: LabelOperator::NotIn,
                    values: vec![v.trim().to_string()],
                });
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                sel.match_labels
                    .insert(checked_key(k.trim()).ok_or_else(bad)?, v.trim().to_string());
            } else if let Some((k, rest)) = split_set_term(term) {
                let (op, values) = rest;
                sel.match_expressions.push(LabelExpression {
                    key: checked_key(k).ok_or_else(bad)?,
                    operator: op,
                    values,
                });
            } else {
                sel.match_expressions.push(LabelExpression {
                    key: checked_key(term).ok_or_else(bad)?,
                    operator: LabelOperator::Exists,
                    values: vec![],
                });
            }
        }
        // Values follow the label rules too, and `in ()` needs one.
        let mut errors = Vec::new();
        super::validation::check_selector("selector", &sel, &mut errors);
        match errors.into_iter().next() {
            Some(e) => Err(format!("invalid label selector: {}", e.message)),
            None => Ok(sel),
        }
    }
}

impl LabelExpression {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            LabelOperator::In => value.is_some_and(|v| self.values.contains(v)),
            LabelOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            LabelOperator::Exists => value.is_some(),
            LabelOperator::DoesNotExist => value.is_none(),
        }
    }
}

/// Splits on commas that are not inside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn split_set_term(term: &str) -> Option<(&str, (LabelOperator, Vec<String>))> {
    let open = term.find('(')?;
    let inner = term[open + 1..].strip_suffix(')')?;
    let head = term[..open].trim();
    let (key, op) = head.rsplit_once(char::is_whitespace)?;
    let op = match op {
        "in" => LabelOperator::In,
        "notin" => LabelOperator::NotIn,
        _ => return None,
    };
    let values = inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    Some((key.trim(), (op, values)))
}

/// A key by the label rules (`validation::check_label_key`).
fn checked_key(key: &str) -> Option<String> {
    super::validation::check_label_key(key)
        .ok()
        .map(|_| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(selector: &str, pairs: &[(&str, &str)], want: bool) {
        let sel = LabelSelector::parse(selector).unwrap();
        assert_eq!(sel.matches(&labels(pairs)), want, "{selector} on {pairs:?}");
    }

    #[test]
    fn selectors_should_match_like_kubectl() {
        check("", &[], true);
        check("role=web", &[("role", "web")], true);
        check("role==web", &[("role", "db")], false);
        check("role!=web", &[("role", "db")], true);
        check("role!=web", &[], true);
        check("role", &[("role", "x")], true);
        check("!role", &[("role", "x")], false);
        check("role in (web, api)", &[("role", "api")], true);
        check(
            "role notin (web,api),zone=a",
            &[("role", "db"), ("zone", "a")],
            true,
        );
        check(
            "role in (web,api),zone=a",
            &[("role", "db"), ("zone", "a")],
            false,
        );
    }

    #[test]
    fn selectors_should_reject_garbage() {
        assert!(LabelSelector::parse("a b c").is_err());
        assert!(LabelSelector::parse("=x").is_err());
        // Keys and values follow the label rules, as in manifests.
        for bad in [
            "role=a b",
            "role=-web",
            "role in ()",
            "Foo_Bar/x=1",
            "a/b/c=1",
            "role=\u{1b}[31m",
            &format!("role={}", "v".repeat(64)),
            &format!("{}=v", "k".repeat(64)),
        ] {
            assert!(
                LabelSelector::parse(bad).is_err(),
                "{bad:?} must be refused"
            );
        }
        for good in [
            "deployctl.dev/sync=x",
            "zone in (a,b)",
            "role=",
            "a.b_c-d=E.f_g-1",
        ] {
            assert!(LabelSelector::parse(good).is_ok(), "{good:?}");
        }
    }
}

//! kubectl's `-o jsonpath=` templates and `-o custom-columns=` over `serde_json_path`.
//!
//! The JSONPath expressions themselves are RFC 9535 queries evaluated by
//! `serde_json_path`; this module adds only kubectl's template layer around them: literal
//! text, `{EXPR}`, `{"quoted"}` literals, `{range EXPR}`…`{end}`, and kubectl's relative
//! paths (`.items[*]`, `@`, `metadata.name`) made absolute (`$.items[*]`). Values print
//! as kubectl prints them: strings raw, other scalars as text, maps and lists as compact
//! JSON, several matches joined by a space.

use serde_json::Value;
use serde_json_path::JsonPath;

/// Why a template or a column spec was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("error parsing jsonpath {template:?}: unclosed {{ at byte {at}")]
    Unclosed { template: String, at: usize },
    #[error("error parsing jsonpath {template:?}: {{end}} without {{range}}")]
    EndWithoutRange { template: String },
    #[error("error parsing jsonpath {template:?}: {{range}} without {{end}}")]
    RangeWithoutEnd { template: String },
    #[error("error parsing jsonpath {template:?}: bad quoted text {text}")]
    BadQuote { template: String, text: String },
    #[error("error parsing jsonpath {expr:?}: {reason}")]
    Path { expr: String, reason: String },
    #[error("custom-columns format must be NAME:JSONPATH[,NAME:JSONPATH...]; entry {entry:?} has no ':'")]
    ColumnSpec { entry: String },
    #[error("custom-columns format is empty")]
    NoColumns,
}

/// One piece of a parsed template.
#[derive(Debug)]
enum Node {
    Text(String),
    Path(JsonPath),
    /// `{range EXPR}BODY{end}`: BODY once per match of EXPR, against that match.
    Range(JsonPath, Vec<Node>),
}

/// A parsed kubectl JSONPath template.
#[derive(Debug)]
pub struct Template {
    nodes: Vec<Node>,
}

/// A kubectl path made absolute for RFC 9535: `.a` → `$.a`, `@.a` → `$.a`, `a.b` → `$.a.b`.
fn absolute(expr: &str) -> String {
    let e = expr.trim();
    if let Some(rest) = e.strip_prefix('@') {
        format!("${rest}")
    } else if e.starts_with('$') {
        e.to_string()
    } else if e.starts_with('.') || e.starts_with('[') || e.is_empty() {
        format!("${e}")
    } else {
        format!("$.{e}")
    }
}

/// Parses one path expression with `serde_json_path`.
fn path(expr: &str) -> Result<JsonPath, TemplateError> {
    JsonPath::parse(&absolute(expr)).map_err(|e| TemplateError::Path {
        expr: expr.to_string(),
        reason: e.to_string(),
    })
}

/// The byte offset of the `}` that closes the `{` before `from`, skipping quoted text.
fn closing_brace(text: &str, from: usize) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text[from..].char_indices() {
        match (quote, c) {
            (Some(_), _) if escaped => escaped = false,
            (Some(_), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '}') => return Some(from + i),
            (None, _) => {}
        }
    }
    None
}

/// A `"..."` literal with Go's (and JSON's) escapes: `{"\n"}`, `{"\t"}`.
fn unquote(inner: &str, template: &str) -> Result<String, TemplateError> {
    let bad = || TemplateError::BadQuote {
        template: template.to_string(),
        text: inner.to_string(),
    };
    if inner.len() >= 2 && inner.starts_with('\'') && inner.ends_with('\'') {
        return Ok(inner[1..inner.len() - 1].to_string());
    }
    serde_json::from_str::<String>(inner).map_err(|_| bad())
}

impl Template {
    /// Parses `text`, e.g. `{range .items[*]}{.metadata.name}{"\n"}{end}`.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        // A stack of open bodies: the template's own, then one per open {range}.
        let mut stack: Vec<(Option<JsonPath>, Vec<Node>)> = vec![(None, Vec::new())];
        let mut rest = 0;
        while rest < text.len() {
            let Some(open) = text[rest..].find('{').map(|i| rest + i) else {
                push_text(&mut stack, &text[rest..]);
                break;
            };
            push_text(&mut stack, &text[rest..open]);
            let close = closing_brace(text, open + 1).ok_or_else(|| TemplateError::Unclosed {
                template: text.to_string(),
                at: open,
            })?;
            let inner = text[open + 1..close].trim();
            rest = close + 1;
            if inner == "end" {
                if stack.len() < 2 {
                    return Err(TemplateError::EndWithoutRange {
                        template: text.to_string(),
                    });
                }
                // Checked just above: a range is open.
                let (over, body) = stack.pop().expect("a range is open");
                let over = over.expect("only the bottom body has no range");
                last(&mut stack).push(Node::Range(over, body));
            } else if let Some(expr) = inner.strip_prefix("range ") {
                stack.push((Some(path(expr)?), Vec::new()));
            } else if inner.starts_with('"') || inner.starts_with('\'') {
                let literal = unquote(inner, text)?;
                last(&mut stack).push(Node::Text(literal));
            } else {
                last(&mut stack).push(Node::Path(path(inner)?));
            }
        }
        if stack.len() != 1 {
            return Err(TemplateError::RangeWithoutEnd {
                template: text.to_string(),
            });
        }
        let (_, nodes) = stack.pop().expect("the bottom body is always there");
        Ok(Template { nodes })
    }

    /// The template's text for `value`; paths that match nothing print nothing, as
    /// kubectl does by default (`--allow-missing-template-keys`).
    pub fn render(&self, value: &Value) -> String {
        let mut out = String::new();
        render_nodes(&self.nodes, value, &mut out);
        out
    }
}

fn last(stack: &mut [(Option<JsonPath>, Vec<Node>)]) -> &mut Vec<Node> {
    // The stack always holds the template's own body.
    &mut stack.last_mut().expect("the bottom body is always there").1
}

fn push_text(stack: &mut [(Option<JsonPath>, Vec<Node>)], text: &str) {
    if !text.is_empty() {
        last(stack).push(Node::Text(text.to_string()));
    }
}

fn render_nodes(nodes: &[Node], value: &Value, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Path(p) => {
                let found = p.query(value).all();
                let texts: Vec<String> = found.into_iter().map(json_text).collect();
                out.push_str(&texts.join(" "));
            }
            Node::Range(p, body) => {
                for item in p.query(value).all() {
                    render_nodes(body, item, out);
                }
            }
        }
    }
}

/// A match as kubectl's jsonpath prints it: strings raw, maps and lists as compact JSON.
fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A match as kubectl's custom-columns prints it (Go's `fmt.Sprint`): strings raw,
/// `map[k:v]` and `[a b]` for maps and lists.
fn go_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<nil>".into(),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(go_text).collect();
            format!("[{}]", inner.join(" "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}:{}", go_text(v)))
                .collect();
            format!("map[{}]", inner.join(" "))
        }
        other => other.to_string(),
    }
}

/// One column of `-o custom-columns=NAME:PATH,...`.
#[derive(Debug)]
pub struct Column {
    pub header: String,
    path: JsonPath,
}

/// Parses `NAME:.metadata.name,VERSION:.spec.version` (paths with or without braces).
pub fn parse_columns(spec: &str) -> Result<Vec<Column>, TemplateError> {
    if spec.trim().is_empty() {
        return Err(TemplateError::NoColumns);
    }
    spec.split(',')
        .map(|entry| {
            let (header, expr) =
                entry
                    .split_once(':')
                    .ok_or_else(|| TemplateError::ColumnSpec {
                        entry: entry.to_string(),
                    })?;
            let expr = expr.trim();
            let expr = expr
                .strip_prefix('{')
                .and_then(|e| e.strip_suffix('}'))
                .unwrap_or(expr);
            Ok(Column {
                header: header.to_string(),
                path: path(expr)?,
            })
        })
        .collect()
}

impl Column {
    /// The cell for one object: matches joined by `,`, or `<none>`.
    pub fn cell(&self, object: &Value) -> String {
        let found = self.path.query(object).all();
        if found.is_empty() {
            return "<none>".into();
        }
        found.into_iter().map(go_text).collect::<Vec<_>>().join(",")
    }
}

/// A `--sort-by` key: the first match of a path in each object.
#[derive(Debug)]
pub struct SortKey {
    path: JsonPath,
}

impl SortKey {
    /// Parses `.metadata.name` or `{.metadata.name}`.
    pub fn parse(expr: &str) -> Result<SortKey, TemplateError> {
        let e = expr.trim();
        let e = e
            .strip_prefix('{')
            .and_then(|e| e.strip_suffix('}'))
            .unwrap_or(e);
        Ok(SortKey { path: path(e)? })
    }

    /// Sorts `objects` by the key, stable: numbers by value, other values by their
    /// text; objects without the field first.
    pub fn sort<T>(&self, objects: &mut [(Value, T)]) {
        objects.sort_by(|(a, _), (b, _)| {
            let (a, b) = (self.path.query(a).first(), self.path.query(b).first());
            match (a, b) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Less,
                (Some(_), None) => std::cmp::Ordering::Greater,
                (Some(Value::Number(x)), Some(Value::Number(y))) => {
                    let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
                    x.total_cmp(&y)
                }
                (Some(x), Some(y)) => json_text(x).cmp(&json_text(y)),
            }
        });
    }
}

/// A table as kubectl's custom-columns prints it (Go's tabwriter: cells padded to the
/// widest plus three spaces, at least six wide; the last column unpadded), every cell
/// escaped so that no value breaks a row.
pub fn render_columns(headers: Option<&[String]>, rows: &[Vec<String>]) -> String {
    let all: Vec<Vec<String>> = headers
        .map(|h| h.to_vec())
        .into_iter()
        .chain(rows.iter().cloned())
        .map(|r| {
            r.iter()
                .map(|c| super::output::escape(c).into_owned())
                .collect()
        })
        .collect();
    let n = all.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            let w = all
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0);
            (w + 3).max(6)
        })
        .collect();
    let mut out = String::new();
    for r in &all {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}", w = widths[i]));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A fixed List of two Rollouts, as `get ro -o json` prints one.
    fn list() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {
                    "apiVersion": "deployctl.dev/v1",
                    "kind": "Rollout",
                    "metadata": {"name": "api", "namespace": "default",
                                 "labels": {"team": "core", "tier": "web"}},
                    "spec": {"application": "api", "version": "1.2.0",
                             "strategy": {"steps": [{"setWeight": 25}, {"pause": {}}]}},
                    "status": {"phase": "Progressing", "available": 3}
                },
                {
                    "apiVersion": "deployctl.dev/v1",
                    "kind": "Rollout",
                    "metadata": {"name": "web", "namespace": "default"},
                    "spec": {"application": "web", "version": "0.9.1"},
                    "status": {"phase": "Complete", "available": 12}
                }
            ],
            "metadata": {"resourceVersion": ""}
        })
    }

    fn check(template: &str, want: &str) {
        let t = Template::parse(template).unwrap_or_else(|e| panic!("{template}: {e}"));
        assert_eq!(t.render(&list()), want, "{template}");
    }

    #[test]
    fn jsonpath_templates_should_print_what_kubectl_prints_for_the_same_list() {
        check("{.items[*].metadata.name}", "api web");
        check("{.items[0].spec.version}", "1.2.0");
        check("{.kind}", "List");
        check(
            "{range .items[*]}{.metadata.name}{\"\\t\"}{.spec.version}{\"\\n\"}{end}",
            "api\t1.2.0\nweb\t0.9.1\n",
        );
        check(
            "{range .items[*]}[{.metadata.name}, {.status.available}] {end}",
            "[api, 3] [web, 12] ",
        );
        check(
            "{.items[0].metadata.labels}",
            r#"{"team":"core","tier":"web"}"#,
        );
        check(
            "{.items[0].spec.strategy.steps}",
            r#"[{"setWeight":25},{"pause":{}}]"#,
        );
        check("{.items[*].status.available}", "3 12");
        check(
            "{.items[?(@.status.phase==\"Complete\")].metadata.name}",
            "web",
        );
        check("{.items[-1:].metadata.name}", "web");
        check("{..available}", "3 12");
        check("{.items[*].metadata.labels.team}", "core");
        check("{.items[5].metadata.name}", "");
        check("names: {.items[*].metadata.name}!", "names: api web!");
        check("{range .items[*]}{@.metadata.name};{end}", "api;web;");
        check(
            "{range .items[*]}{.metadata.name}:{range .spec.strategy.steps[*]}<{.setWeight}>{end};{end}",
            "api:<25><>;web:;",
        );
    }

    #[test]
    fn bad_templates_should_be_refused_naming_what_is_wrong() {
        for (template, want) in [
            ("{.items[*]", "unclosed { at byte 0"),
            ("{end}", "{end} without {range}"),
            ("{range .items[*]}{.x}", "{range} without {end}"),
            ("{.items[}", "error parsing jsonpath \".items[\""),
            ("{\"\\q\"}", "bad quoted text"),
        ] {
            let err = Template::parse(template).expect_err(template).to_string();
            assert!(err.contains(want), "{template}: {err}");
        }
    }

    #[test]
    fn custom_columns_should_print_what_kubectl_prints_for_the_same_list() {
        let columns = parse_columns(
            "NAME:.metadata.name,VERSION:{.spec.version},N:.status.available,LABELS:.metadata.labels,TEAM:metadata.labels.team",
        )
        .expect("a valid spec");
        let items = list()["items"].as_array().cloned().expect("items");
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|o| columns.iter().map(|c| c.cell(o)).collect())
            .collect();
        let headers: Vec<String> = columns.iter().map(|c| c.header.clone()).collect();
        assert_eq!(
            render_columns(Some(&headers), &rows),
            "\
NAME   VERSION   N     LABELS                    TEAM
api    1.2.0     3     map[team:core tier:web]   core
web    0.9.1     12    <none>                    <none>
"
        );
        assert_eq!(
            render_columns(None, &rows[1..]),
            "web   0.9.1   12    <none>   <none>\n"
        );
        let steps = parse_columns("STEPS:.spec.strategy.steps[*].setWeight").expect("valid");
        assert_eq!(steps[0].cell(&items[0]), "25");
        let all = parse_columns("W:.spec.strategy.steps[*]").expect("valid");
        assert_eq!(all[0].cell(&items[0]), "map[setWeight:25],map[pause:map[]]");
    }

    #[test]
    fn bad_column_specs_should_be_refused_naming_the_entry() {
        assert_eq!(
            parse_columns("NAME:.metadata.name,VERSION").expect_err("no path"),
            TemplateError::ColumnSpec {
                entry: "VERSION".into()
            }
        );
        assert_eq!(
            parse_columns("").expect_err("empty"),
            TemplateError::NoColumns
        );
        assert!(parse_columns("X:.a[").is_err());
    }

    #[test]
    fn sort_by_should_order_numbers_by_value_and_put_missing_fields_first() {
        let key = SortKey::parse("{.status.available}").expect("valid");
        let mut objects = vec![
            (json!({"n": "a", "status": {"available": 12}}), "a"),
            (json!({"n": "b", "status": {"available": 3}}), "b"),
            (json!({"n": "c"}), "c"),
        ];
        key.sort(&mut objects);
        let order: Vec<&str> = objects.iter().map(|(_, n)| *n).collect();
        assert_eq!(order, ["c", "b", "a"]);
        let by_name = SortKey::parse(".n").expect("valid");
        by_name.sort(&mut objects);
        let order: Vec<&str> = objects.iter().map(|(_, n)| *n).collect();
        assert_eq!(order, ["a", "b", "c"]);
    }
}

//! Reads manifests (files, directories, stdin; YAML or JSON; many documents) and turns
//! them into validated objects, or into every error found, each naming where it is.

use crate::api::schema;
use crate::api::validation::{
    validate_application, validate_machine, validate_rollout, FieldError,
};
use crate::api::{Application, KindName, Machine, Object, Rollout, API_VERSION};
use serde_json::Value;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where a document came from: `rollout.yaml: document 2 (line 14)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file as the user named it (or found it in a directory), `<stdin>` for `-`.
    pub source: String,
    /// 1-based position of the document in its file.
    pub doc: usize,
    /// 1-based position in the `items` of a `kind: List` document.
    pub item: Option<usize>,
    /// The line the document (or the error) is on, where known.
    pub line: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.doc)?;
        if let Some(i) = self.item {
            write!(f, ", item {i}")?;
        }
        if let Some(l) = self.line {
            write!(f, " (line {l})")?;
        }
        Ok(())
    }
}

/// One problem with one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub origin: Origin,
    /// The document's kind and name, when they could be read.
    pub kind: Option<String>,
    pub name: Option<String>,
    /// Dotted field path, e.g. `spec.strategy.maxUnavailable`.
    pub path: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, ", {k} {n:?}")?,
            (Some(k), None) => write!(f, ", {k}")?,
            (None, Some(n)) => write!(f, ", {n:?}")?,
            (None, None) => {}
        }
        if let Some(p) = &self.path {
            write!(f, ": {p}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A file that could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct SourceError {
    pub source_name: String,
    pub message: String,
}

/// Either kind of problem, in the order found.
#[derive(Debug)]
pub enum LoadError {
    Source(SourceError),
    Manifest(ManifestError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Source(e) => e.fmt(f),
            LoadError::Manifest(e) => e.fmt(f),
        }
    }
}

/// The text of one file (or stdin).
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
    /// Parsed as JSON (a `.json` file) rather than YAML.
    pub json: bool,
}

/// One parsed document, not yet validated.
#[derive(Clone, Debug)]
pub struct Document {
    pub origin: Origin,
    pub value: Value,
    /// The document's text, to find the line of a field.
    pub text: Option<(usize, String)>,
}

/// A validated object ready to apply.
#[derive(Clone, Debug, PartialEq)]
pub enum Manifest {
    Machine(Machine),
    Application(Application),
    Rollout(Rollout),
}

impl Manifest {
    pub fn kind(&self) -> KindName {
        match self {
            Manifest::Machine(_) => KindName::Machine,
            Manifest::Application(_) => KindName::Application,
            Manifest::Rollout(_) => KindName::Rollout,
        }
    }

    pub fn meta(&self) -> &crate::api::ObjectMeta {
        match self {
            Manifest::Machine(o) => o.meta(),
            Manifest::Application(o) => o.meta(),
            Manifest::Rollout(o) => o.meta(),
        }
    }

    /// Machines first, then Applications, then Rollouts (which name an Application).
    fn apply_rank(&self) -> u8 {
        match self {
            Manifest::Machine(_) => 0,
            Manifest::Application(_) => 1,
            Manifest::Rollout(_) => 2,
        }
    }
}

/// A validated object and where it came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub origin: Origin,
    pub manifest: Manifest,
}

/// Reads every `-f` argument: `-` is stdin, a directory is read recursively
/// (`*.yaml`, `*.yml`, `*.json`, sorted by path).
pub fn read_sources(args: &[String]) -> Result<Vec<Source>, Vec<LoadError>> {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for arg in args {
        if arg == "-" {
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => sources.push(Source {
                    name: "<stdin>".into(),
                    text,
                    json: false,
                }),
                Err(e) => errors.push(source_error("<stdin>", format!("cannot read: {e}"))),
            }
            continue;
        }
        let path = Path::new(arg);
        match std::fs::metadata(path) {
            Err(e) => errors.push(source_error(arg, format!("cannot read: {e}"))),
            Ok(m) if m.is_dir() => {
                let mut files = Vec::new();
                if let Err(e) = walk(path, &mut files) {
                    errors.push(source_error(arg, e));
                    continue;
                }
                files.sort();
                if files.is_empty() {
                    errors.push(source_error(
                        arg,
                        "no *.yaml, *.yml or *.json files in this directory".into(),
                    ));
                }
                for f in files {
                    read_file(&f, &mut sources, &mut errors);
                }
            }
            Ok(_) => read_file(path, &mut sources, &mut errors),
        }
    }
    if errors.is_empty() {
        Ok(sources)
    } else {
        Err(errors)
    }
}

fn source_error(name: &str, message: String) -> LoadError {
    LoadError::Source(SourceError {
        source_name: name.to_string(),
        message,
    })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read directory {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read directory {}: {e}", dir.display()))?;
        let path = entry.path();
        let meta =
            std::fs::metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if meta.is_dir() {
            walk(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

fn read_file(path: &Path, sources: &mut Vec<Source>, errors: &mut Vec<LoadError>) {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => sources.push(Source {
            json: path.extension().and_then(|e| e.to_str()) == Some("json"),
            name,
            text,
        }),
        Err(e) => errors.push(source_error(&name, format!("cannot read: {e}"))),
    }
}

/// Splits a source into documents; a document that does not parse is an error that
/// names its line. `kind: List` documents are expanded into their items.
pub fn parse_documents(source: &Source) -> (Vec<Document>, Vec<ManifestError>) {
    let (docs, errors) = if source.json {
        parse_json(source)
    } else {
        parse_yaml(source)
    };
    let mut out = Vec::new();
    for d in docs {
        let is_list = d.value.get("kind").and_then(Value::as_str) == Some("List")
            && d.value.get("items").is_some_and(Value::is_array);
        if is_list {
            let items = d.value["items"].as_array().cloned().unwrap_or_default();
            for (i, item) in items.into_iter().enumerate() {
                out.push(Document {
                    origin: Origin {
                        item: Some(i + 1),
                        ..d.origin.clone()
                    },
                    value: item,
                    text: None,
                });
            }
        } else {
            out.push(d);
        }
    }
    (out, errors)
}

fn parse_yaml(source: &Source) -> (Vec<Document>, Vec<ManifestError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (index, (start_line, chunk)) in split_yaml(&source.text).into_iter().enumerate() {
        let first_content = chunk
            .lines()
            .position(|l| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with('#')
            })
            .map(|p| start_line + p);
        let Some(doc_line) = first_content else {
            continue; // empty documents are skipped, as kubectl does
        };
        let origin = Origin {
            source: source.name.clone(),
            doc: index + 1,
            item: None,
            line: Some(doc_line),
        };
        let parsed: Result<serde_yaml::Value, _> = serde_yaml::from_str(&chunk);
        let yaml = match parsed {
            Ok(v) => v,
            Err(e) => {
                let (line, message) = yaml_error(&e, start_line);
                // An error at the end of input points past the document: name its last line.
                let last_line = start_line + chunk.lines().count().max(1) - 1;
                let line = line.map(|l| l.min(last_line));
                errors.push(ManifestError {
                    origin: Origin {
                        line: line.or(Some(doc_line)),
                        ..origin
                    },
                    kind: None,
                    name: None,
                    path: None,
                    message: format!("malformed YAML: {message}"),
                });
                continue;
            }
        };
        match serde_json::to_value(&yaml) {
            Ok(value) => docs.push(Document {
                origin,
                value,
                text: Some((start_line, chunk)),
            }),
            Err(e) => errors.push(ManifestError {
                origin,
                kind: None,
                name: None,
                path: None,
                message: format!("cannot be represented as JSON: {e}"),
            }),
        }
    }
    (docs, errors)
}

/// The absolute line of a YAML error, and its message without serde_yaml's relative
/// "at line N column M".
fn yaml_error(e: &serde_yaml::Error, start_line: usize) -> (Option<usize>, String) {
    let text = e.to_string();
    let message = match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    match e.location() {
        Some(loc) => (
            Some(start_line + loc.line() - 1),
            format!("{message} (column {})", loc.column()),
        ),
        None => (None, message),
    }
}

/// Splits YAML text on `---` lines; returns each document's first line (1-based) and text.
fn split_yaml(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut start = 1;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let is_marker =
            line == "---" || line.starts_with("--- ") || line.starts_with("---\t") || line == "...";
        if is_marker {
            out.push((start, std::mem::take(&mut current)));
            start = i + 2;
            // `--- value` starts the document on the marker line itself.
            if let Some(rest) = line.strip_prefix("---").filter(|r| !r.trim().is_empty()) {
                current.push_str(rest);
                current.push('\n');
                start = i + 1;
            }
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    out.push((start, current));
    out
}

fn parse_json(source: &Source) -> (Vec<Document>, Vec<ManifestError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(&source.text).into_iter::<Value>();
    let mut index = 0;
    loop {
        let offset = stream.byte_offset();
        let next = stream.next();
        let Some(item) = next else { break };
        index += 1;
        // The document starts at the first non-blank character after the last one.
        let rest = &source.text[offset..];
        let skipped = rest.len() - rest.trim_start().len();
        let line = source.text[..offset + skipped].matches('\n').count() + 1;
        let origin = Origin {
            source: source.name.clone(),
            doc: index,
            item: None,
            line: Some(line),
        };
        match item {
            Ok(value) => docs.push(Document {
                origin,
                value,
                text: None,
            }),
            Err(e) => {
                let message = e.to_string();
                let message = match message.find(" at line ") {
                    Some(i) => message[..i].to_string(),
                    None => message,
                };
                errors.push(ManifestError {
                    origin: Origin {
                        line: Some(e.line()),
                        ..origin
                    },
                    kind: None,
                    name: None,
                    path: None,
                    message: format!("malformed JSON: {message} (column {})", e.column()),
                });
                break; // the stream cannot resume after a syntax error
            }
        }
    }
    (docs, errors)
}

/// Validates one document into an object: apiVersion and kind, then the JSON Schema,
/// then the semantic checks. `status` and the store-set metadata are dropped first.
pub fn validate_document(
    doc: &Document,
    default_namespace: &str,
) -> Result<Manifest, Vec<ManifestError>> {
    let mut value = doc.value.clone();
    let err = |kind: Option<&str>, name: Option<&str>, path: Option<&str>, message: String| {
        ManifestError {
            origin: doc.origin.clone(),
            kind: kind.map(str::to_string),
            name: name.map(str::to_string),
            path: path.map(str::to_string),
            message,
        }
    };
    let Some(map) = value.as_object_mut() else {
        return Err(vec![err(
            None,
            None,
            None,
            "must be a mapping with apiVersion, kind, metadata and spec".into(),
        )]);
    };
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let name = name.as_deref();
    let kind_text = map.get("kind").and_then(Value::as_str).map(str::to_string);
    let Some(kind_text) = kind_text else {
        let message = match map.get("kind") {
            None => "missing required field".to_string(),
            Some(v) => format!("must be a string, not {v}"),
        };
        return Err(vec![err(None, name, Some("kind"), message)]);
    };
    let kind = match KindName::from_kind(&kind_text) {
        Some(k) if k.is_user_kind() => k,
        Some(k) => {
            return Err(vec![err(
                Some(&kind_text),
                name,
                Some("kind"),
                format!("{k} objects are written by deployctl itself and cannot be applied"),
            )])
        }
        None => {
            return Err(vec![err(
                None,
                name,
                Some("kind"),
                format!("unknown kind {kind_text:?}: must be one of Application, Rollout, Machine"),
            )])
        }
    };
    let kind_text = Some(kind.kind());
    match map.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(Value::String(v)) => {
            return Err(vec![err(
                kind_text,
                name,
                Some("apiVersion"),
                format!("unknown apiVersion {v:?}: must be {API_VERSION}"),
            )])
        }
        Some(v) => {
            return Err(vec![err(
                kind_text,
                name,
                Some("apiVersion"),
                format!("must be a string, not {v}"),
            )])
        }
        None => {
            return Err(vec![err(
                kind_text,
                name,
                Some("apiVersion"),
                "missing required field".into(),
            )])
        }
    }
    // Written by deployctl, never by apply: ignored, like kubectl ignores them.
    map.remove("status");
    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
        for field in ["uid", "creationTimestamp", "resourceVersion", "generation"] {
            meta.remove(field);
        }
        if kind.namespaced() && !meta.contains_key("namespace") {
            meta.insert(
                "namespace".into(),
                Value::String(default_namespace.to_string()),
            );
        }
    }
    schema::drop_nulls(&mut value);

    let schema_errors = schema::validate(kind, &value);
    let to_errors = |errors: Vec<FieldError>| -> Vec<ManifestError> {
        errors
            .into_iter()
            .map(|fe| {
                let mut e = err(kind_text, name, Some(&fe.path), fe.message);
                if let Some(line) = doc
                    .text
                    .as_ref()
                    .and_then(|(start, text)| field_line(text, &fe.path).map(|l| start + l - 1))
                {
                    e.origin.line = Some(line);
                }
                e
            })
            .collect()
    };
    if !schema_errors.is_empty() {
        return Err(to_errors(schema_errors));
    }
    fn typed<K: Object>(value: Value) -> Result<K, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }
    let (manifest, semantic) = match kind {
        KindName::Application => typed::<Application>(value).map(|o| {
            let errs = validate_application(&o);
            (Manifest::Application(o), errs)
        }),
        KindName::Rollout => typed::<Rollout>(value).map(|o| {
            let errs = validate_rollout(&o);
            (Manifest::Rollout(o), errs)
        }),
        KindName::Machine => typed::<Machine>(value).map(|o| {
            let errs = validate_machine(&o);
            (Manifest::Machine(o), errs)
        }),
        KindName::Instance | KindName::Event | KindName::Sync => {
            unreachable!("only user kinds get here (checked above)")
        }
    }
    .map_err(|message| vec![err(kind_text, name, None, message)])?;
    if semantic.is_empty() {
        Ok(manifest)
    } else {
        Err(to_errors(semantic))
    }
}

/// Finds the line (1-based, within `text`) of a dotted field path in block-style YAML,
/// by following keys at increasing indentation. `None` when it cannot tell.
fn field_line(text: &str, path: &str) -> Option<usize> {
    let mut segments: Vec<String> = Vec::new();
    for part in path.split('.') {
        match part.split_once('[') {
            Some((key, _)) => segments.push(key.to_string()),
            None => segments.push(part.to_string()),
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    let (mut from, mut min_indent, mut found) = (0usize, 0usize, None);
    for seg in &segments {
        // Flow style (`spec: {version: 1}`): the key is on the line already found.
        if let Some(l) = found {
            let line: &str = lines[l - 1];
            let rest = line.split_once(':').map(|(_, r)| r).unwrap_or("");
            if rest.contains('{')
                && (rest.contains(&format!("{{{seg}:")) || rest.contains(&format!(" {seg}:")))
            {
                continue;
            }
        }
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(from) {
            let body = line.trim_start_matches([' ', '-']);
            let indent = line.len() - body.len();
            if body.trim().is_empty() || body.starts_with('#') {
                continue;
            }
            if indent < min_indent && found.is_some() && i > from {
                break; // left the parent mapping
            }
            let key_ok = body
                .strip_prefix(seg.as_str())
                .or_else(|| body.strip_prefix(&format!("\"{seg}\"")))
                .is_some_and(|r| r.trim_start().starts_with(':'));
            if key_ok && indent >= min_indent {
                hit = Some((i, indent));
                break;
            }
        }
        let (i, indent) = hit?;
        found = Some(i + 1);
        from = i + 1;
        min_indent = indent + 1;
    }
    found
}

/// Reads, parses and validates every document of every source. All or nothing: any
/// error anywhere returns every error found, and no object.
pub fn load(args: &[String], default_namespace: &str) -> Result<Vec<Loaded>, Vec<LoadError>> {
    let sources = read_sources(args)?;
    let mut errors: Vec<LoadError> = Vec::new();
    let mut loaded: Vec<Loaded> = Vec::new();
    for source in &sources {
        let (docs, parse_errors) = parse_documents(source);
        errors.extend(parse_errors.into_iter().map(LoadError::Manifest));
        for doc in docs {
            match validate_document(&doc, default_namespace) {
                Ok(manifest) => loaded.push(Loaded {
                    origin: doc.origin.clone(),
                    manifest,
                }),
                Err(es) => errors.extend(es.into_iter().map(LoadError::Manifest)),
            }
        }
    }
    // The same object twice would be applied twice, the second silently winning.
    for (i, a) in loaded.iter().enumerate() {
        if let Some(b) = loaded[..i].iter().find(|b| {
            b.manifest.kind() == a.manifest.kind()
                && b.manifest.meta().key() == a.manifest.meta().key()
        }) {
            errors.push(LoadError::Manifest(ManifestError {
                origin: a.origin.clone(),
                kind: Some(a.manifest.kind().kind().to_string()),
                name: Some(a.manifest.meta().name.clone()),
                path: None,
                message: format!("declared twice (also in {})", b.origin),
            }));
        }
    }
    if loaded.is_empty() && errors.is_empty() {
        let names: Vec<&str> = args
            .iter()
            .map(|a| if a == "-" { "<stdin>" } else { a.as_str() })
            .collect();
        errors.push(source_error(&names.join(", "), "no objects found".into()));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    loaded.sort_by_key(|l| l.manifest.apply_rank());
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Source {
        Source {
            name: "rollout.yaml".into(),
            text: text.into(),
            json: false,
        }
    }

    /// Parses and validates every document of `text`; returns the error lines.
    fn errors(text: &str) -> Vec<String> {
        let src = yaml(text);
        let (docs, mut errs) = parse_documents(&src);
        for d in docs {
            if let Err(es) = validate_document(&d, "default") {
                errs.extend(es);
            }
        }
        errs.iter().map(|e| e.to_string()).collect()
    }

    fn check(text: &str, want: &[&str]) {
        let got = errors(text);
        assert_eq!(got.len(), want.len(), "got {got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.contains(w), "{g:?} should contain {w:?}");
        }
    }

    const APP: &str = "\
apiVersion: deployctl.dev/v1
kind: Application
metadata:
  name: api
spec:
  artifact:
    url: https://ci.example.com/{{version}}/api.tar.gz
";

    #[test]
    fn a_good_document_should_validate_with_the_default_namespace() {
        let (docs, errs) = parse_documents(&yaml(APP));
        assert!(errs.is_empty());
        let m = validate_document(&docs[0], "prod").unwrap();
        assert_eq!(m.kind(), KindName::Application);
        assert_eq!(m.meta().namespace.as_deref(), Some("prod"));
    }

    #[test]
    fn manifest_errors_should_name_file_document_line_kind_and_field() {
        // Out of range: the example from the brief, with the field's own line.
        check(
            &format!(
                "{APP}---\napiVersion: deployctl.dev/v1\nkind: Rollout\nmetadata:\n  name: api\nspec:\n  application: api\n  version: 1.2.3\n  strategy:\n    maxUnavailable: 150%\n"
            ),
            &["rollout.yaml: document 2 (line 17), Rollout \"api\": spec.strategy.maxUnavailable: invalid percent \"150%\": must be 0% to 100%"],
        );
        // Malformed YAML: the line comes from serde_yaml, made absolute.
        check(
            &format!("{APP}---\nkind: Rollout\nmetadata: {{name: [}}\n"),
            &["rollout.yaml: document 2 (line 10): malformed YAML: did not find expected node content (column 19)"],
        );
        // Unknown apiVersion and kind.
        check(
            "apiVersion: apps/v1\nkind: Rollout\nmetadata: {name: api}\n",
            &["document 1 (line 1), Rollout \"api\": apiVersion: unknown apiVersion \"apps/v1\""],
        );
        check(
            "apiVersion: deployctl.dev/v1\nkind: Deployment\nmetadata: {name: api}\n",
            &["\"api\": kind: unknown kind \"Deployment\""],
        );
        check(
            "apiVersion: deployctl.dev/v1\nkind: Instance\nmetadata: {name: api}\n",
            &["Instance \"api\": kind: Instance objects are written by deployctl itself"],
        );
        // Unknown field, with its line.
        check(
            &format!("{APP}  replicas: 3\n"),
            &["document 1 (line 8), Application \"api\": spec.replicas: unknown field"],
        );
        // Wrong type.
        check(
            &format!("{APP}  keepReleases: many\n"),
            &["spec.keepReleases: must be a whole number, not string \"many\""],
        );
        // Missing required field.
        check(
            "apiVersion: deployctl.dev/v1\nkind: Rollout\nmetadata: {name: api}\nspec: {application: api}\n",
            &["Rollout \"api\": spec.version: missing required field"],
        );
        // Not a DNS-1123 name.
        check(
            "apiVersion: deployctl.dev/v1\nkind: Machine\nmetadata: {name: Web_1}\n",
            &["Machine \"Web_1\": metadata.name: invalid name \"Web_1\""],
        );
        // Bad version.
        check(
            "apiVersion: deployctl.dev/v1\nkind: Rollout\nmetadata: {name: api}\nspec: {application: api, version: \"../x\"}\n",
            &["spec.version: invalid version \"../x\""],
        );
        // Not a mapping.
        check("- a\n- b\n", &["document 1 (line 1): must be a mapping"]);
    }

    #[test]
    fn status_and_store_metadata_should_be_ignored() {
        let text = "apiVersion: deployctl.dev/v1\nkind: Rollout\nmetadata:\n  name: api\n  uid: x\n  generation: 7\n  resourceVersion: \"9\"\n  creationTimestamp: nonsense\nspec: {application: api, version: \"1\"}\nstatus: {phase: Whatever, bogus: 1}\n";
        let (docs, _) = parse_documents(&yaml(text));
        let Manifest::Rollout(ro) = validate_document(&docs[0], "default").unwrap() else {
            panic!("a rollout")
        };
        assert_eq!(ro.status, None);
        assert_eq!(ro.metadata.uid, None);
        assert_eq!(ro.metadata.generation, None);
    }

    #[test]
    fn documents_should_split_on_markers_and_skip_empty_ones() {
        let text = "---\n# nothing\n---\na: 1\n--- \nb: 2\n...\n";
        let docs = split_yaml(text);
        let starts: Vec<usize> = docs.iter().map(|(l, _)| *l).collect();
        assert_eq!(starts, vec![1, 2, 4, 6, 8]);
        let (parsed, errs) = parse_documents(&yaml(text));
        assert!(errs.is_empty());
        // The comment-only and empty documents are skipped; positions stay as written.
        let docs: Vec<(usize, Option<usize>)> = parsed
            .iter()
            .map(|d| (d.origin.doc, d.origin.line))
            .collect();
        assert_eq!(docs, vec![(3, Some(4)), (4, Some(6))]);
    }

    #[test]
    fn json_and_lists_should_load_like_yaml() {
        let src = Source {
            name: "all.json".into(),
            text: format!(
                "{{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [{}]}}",
                serde_json::to_string(&serde_yaml::from_str::<Value>(APP).unwrap()).unwrap()
            ),
            json: true,
        };
        let (docs, errs) = parse_documents(&src);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].origin.item, Some(1));
        assert!(validate_document(&docs[0], "default").is_ok());
        let bad = Source {
            name: "bad.json".into(),
            text: "{\n  \"kind\": \n}".into(),
            json: true,
        };
        let (_, errs) = parse_documents(&bad);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .to_string()
                .starts_with("bad.json: document 1 (line 3): malformed JSON"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn field_lines_should_follow_nesting() {
        let text = "metadata:\n  name: x\nspec:\n  strategy:\n    steps:\n    - pause:\n        duration: 5x\n  version: 1\n";
        assert_eq!(
            field_line(text, "spec.strategy.steps[0].pause.duration"),
            Some(7)
        );
        assert_eq!(field_line(text, "spec.version"), Some(8));
        assert_eq!(field_line(text, "metadata.name"), Some(2));
        assert_eq!(field_line(text, "spec.nothing"), None);
        let flow = "metadata: {name: m}\nspec: {unschedulable: maybe, x: 1}\n";
        assert_eq!(field_line(flow, "spec.unschedulable"), Some(2));
        assert_eq!(field_line(flow, "metadata.name"), Some(1));
    }
}

//! Reads manifests (files, directories, stdin; YAML or JSON; many documents) and turns
//! them into validated objects, or into every error found, each naming where it is.

use crate::api::schema;
use crate::api::validation::{
    validate_application, validate_machine, validate_notifier, validate_rollout, FieldError,
};
use crate::api::{
    AnalysisTemplate, Application, KindName, Machine, Notifier, Object, Rollout, API_VERSION,
};
use limits::*;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

mod json;
mod yaml;

/// What the loader refuses past, at once and naming the limit. Each is far above what a
/// real manifest needs and low enough that loading stays under a second or two and a few
/// hundred MB, whatever the input.
pub mod limits {
    /// One file (or stdin). The largest manifests in use are a few hundred KB; an object
    /// cannot exceed the store's 1.5 MiB anyway.
    pub const MAX_FILE_BYTES: u64 = 4 << 20;
    /// Every file of one command together (a directory tree, several `-f`).
    pub const MAX_TOTAL_BYTES: u64 = 16 << 20;
    /// Documents in one file, the items of `kind: List` documents included. Larger
    /// inventories belong in several files of a directory.
    pub const MAX_DOCUMENTS_PER_FILE: usize = 1_000;
    /// Documents of every file of one command together: validating and applying each
    /// takes about 0.1 ms, so this keeps a load near a second.
    pub const MAX_DOCUMENTS: usize = 10_000;
    /// Values (scalars and collections) in one YAML file: building each costs time and
    /// memory however short its text (`- 1` is four bytes). A thousand objects of a
    /// hundred fields each have 100,000.
    pub const MAX_NODES_PER_FILE: usize = 250_000;
    /// Nested collections in one document. The deepest object is under 10 levels; parsers
    /// slow down sharply (quadratically in libyaml) with deep flow nesting.
    pub const MAX_DEPTH: usize = 64;
    /// Bytes that aliases may add to one document when expanded: a shared `env` block
    /// is a few KB, while an anchor bomb expands to gigabytes.
    pub const MAX_ALIAS_EXPANSION: u64 = 1 << 20;
    /// Errors printed by one command; the rest are counted ("and K more error(s)").
    pub const MAX_PRINTED_ERRORS: usize = 20;
    /// Characters of one quoted name, field path or message in an error line.
    pub const MAX_QUOTED_CHARS: usize = 400;
}

/// A document that could not be read, at a line and column of its own text.
#[derive(Debug)]
struct ParseError {
    /// 1-based, within the text parsed.
    line: usize,
    column: usize,
    /// The field being read, when known.
    path: Option<String>,
    message: String,
}

/// `text` cut to `max` characters, saying how much was left out: error lines quote input,
/// and input can be megabytes.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => text.into(),
        Some((at, _)) => format!("{}… ({} more bytes)", &text[..at], text.len() - at).into(),
    }
}

/// At most [`MAX_PRINTED_ERRORS`] error lines, then "and K more error(s)".
pub fn bounded_lines<E: fmt::Display>(errors: &[E]) -> Vec<String> {
    let mut lines: Vec<String> = errors
        .iter()
        .take(MAX_PRINTED_ERRORS)
        .map(|e| e.to_string())
        .collect();
    if errors.len() > MAX_PRINTED_ERRORS {
        lines.push(format!(
            "and {} more error(s)",
            errors.len() - MAX_PRINTED_ERRORS
        ));
    }
    lines
}

/// Prints load errors to stderr, bounded as [`bounded_lines`] says.
pub fn print_errors(errors: &[LoadError]) {
    for line in bounded_lines(errors) {
        // Errors quote the input, which may come from a repository `sync` follows.
        eprintln!("error: {}", super::output::escape(&line));
    }
}

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
        let kind = self.kind.as_deref().map(|k| clip(k, MAX_QUOTED_CHARS));
        let name = self.name.as_deref().map(|n| clip(n, MAX_QUOTED_CHARS));
        match (kind, name) {
            (Some(k), Some(n)) => write!(f, ", {k} {n:?}")?,
            (Some(k), None) => write!(f, ", {k}")?,
            (None, Some(n)) => write!(f, ", {n:?}")?,
            (None, None) => {}
        }
        if let Some(p) = &self.path {
            write!(f, ": {}", clip(p, MAX_QUOTED_CHARS))?;
        }
        write!(f, ": {}", clip(&self.message, MAX_QUOTED_CHARS))
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
    Notifier(Notifier),
    AnalysisTemplate(AnalysisTemplate),
}

impl Manifest {
    pub fn kind(&self) -> KindName {
        match self {
            Manifest::Machine(_) => KindName::Machine,
            Manifest::Application(_) => KindName::Application,
            Manifest::Rollout(_) => KindName::Rollout,
            Manifest::Notifier(_) => KindName::Notifier,
            Manifest::AnalysisTemplate(_) => KindName::AnalysisTemplate,
        }
    }

    pub fn meta(&self) -> &crate::api::ObjectMeta {
        match self {
            Manifest::Machine(o) => o.meta(),
            Manifest::Application(o) => o.meta(),
            Manifest::Rollout(o) => o.meta(),
            Manifest::Notifier(o) => o.meta(),
            Manifest::AnalysisTemplate(o) => o.meta(),
        }
    }

    /// Machines first, then Applications, then the AnalysisTemplates Rollouts name, then
    /// Rollouts (which name an Application), then the Notifiers that watch them.
    fn apply_rank(&self) -> u8 {
        match self {
            Manifest::Machine(_) => 0,
            Manifest::Application(_) => 1,
            Manifest::AnalysisTemplate(_) => 2,
            Manifest::Rollout(_) => 3,
            Manifest::Notifier(_) => 4,
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
/// (`*.yaml`, `*.yml`, `*.json`, sorted by path). Only regular files are read (a FIFO
/// would block), each within [`MAX_FILE_BYTES`] and all within [`MAX_TOTAL_BYTES`].
pub fn read_sources(args: &[String]) -> Result<Vec<Source>, Vec<LoadError>> {
    let mut reader = Reader::default();
    for arg in args {
        if arg == "-" {
            reader.read("<stdin>", std::io::stdin().lock(), false);
            continue;
        }
        let path = Path::new(arg);
        match std::fs::metadata(path) {
            Err(e) => reader.fail(arg, format!("cannot read: {e}")),
            Ok(m) if m.is_dir() => {
                let mut files = Vec::new();
                if let Err(e) = walk(path, &mut files) {
                    reader.fail(arg, e);
                    continue;
                }
                files.sort();
                if files.is_empty() {
                    reader.fail(
                        arg,
                        "no *.yaml, *.yml or *.json files in this directory".into(),
                    );
                }
                for f in files {
                    reader.read_file(&f);
                }
            }
            Ok(_) => reader.read_file(path),
        }
    }
    if reader.errors.is_empty() {
        Ok(reader.sources)
    } else {
        Err(reader.errors)
    }
}

/// The sources read so far, and what they added up to.
#[derive(Default)]
struct Reader {
    sources: Vec<Source>,
    errors: Vec<LoadError>,
    total: u64,
}

impl Reader {
    fn fail(&mut self, name: &str, message: String) {
        self.errors.push(source_error(name, message));
    }

    /// Opens without blocking (a FIFO's open waits for a writer) and reads only a
    /// regular file: whatever the directory listing said, the open file is what counts.
    fn read_file(&mut self, path: &Path) {
        use std::os::unix::fs::OpenOptionsExt;
        let name = path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path);
        let file = match file.and_then(|f| f.metadata().map(|m| (f, m))) {
            Ok((f, m)) if m.is_file() => f,
            Ok((_, m)) => {
                let what = file_type_name(&m.file_type());
                return self.fail(&name, format!("not a regular file ({what}): refused"));
            }
            Err(e) => return self.fail(&name, format!("cannot read: {e}")),
        };
        let json = path.extension().and_then(|e| e.to_str()) == Some("json");
        self.read(&name, file, json);
    }

    /// Reads at most one byte past what the limits leave, so an endless or huge input
    /// costs no more than the limit.
    fn read(&mut self, name: &str, input: impl Read, json: bool) {
        let left = MAX_TOTAL_BYTES.saturating_sub(self.total);
        let cap = MAX_FILE_BYTES.min(left);
        let mut bytes = Vec::new();
        if let Err(e) = input.take(cap + 1).read_to_end(&mut bytes) {
            return self.fail(name, format!("cannot read: {e}"));
        }
        if bytes.len() as u64 > cap {
            let message = if cap == MAX_FILE_BYTES {
                format!("larger than the limit of {MAX_FILE_BYTES} bytes for one file")
            } else {
                format!("the files together are larger than the limit of {MAX_TOTAL_BYTES} bytes")
            };
            return self.fail(name, message);
        }
        self.total += bytes.len() as u64;
        match String::from_utf8(bytes) {
            Ok(text) => self.sources.push(Source {
                name: name.to_string(),
                text,
                json,
            }),
            Err(e) => self.fail(
                name,
                format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
            ),
        }
    }
}

/// What a file that is not a regular file is, for its error.
fn file_type_name(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a file"
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
            // Not only regular files: a FIFO named `*.yaml` is refused by name when read.
            out.push(path);
        }
    }
    Ok(())
}

/// Splits a source into documents; a document that does not parse is an error that
/// names its line. `kind: List` documents are expanded into their items. Past
/// [`MAX_DOCUMENTS_PER_FILE`] (items included) the rest of the source is refused.
pub fn parse_documents(source: &Source) -> (Vec<Document>, Vec<ManifestError>) {
    let (docs, mut errors) = if source.json {
        parse_json(source)
    } else {
        parse_yaml(source)
    };
    let mut out = Vec::new();
    for d in docs {
        let is_list = d.value.get("kind").and_then(Value::as_str) == Some("List")
            && d.value.get("items").is_some_and(Value::is_array);
        if !is_list {
            out.push(d);
        } else if let Value::Object(mut map) = d.value {
            let Some(Value::Array(items)) = map.remove("items") else {
                unreachable!("checked above: items is an array")
            };
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
        }
        if out.len() > MAX_DOCUMENTS_PER_FILE {
            let last = out.pop().expect("more than the limit, so not empty");
            errors.push(too_many_documents(last.origin));
            break;
        }
    }
    (out, errors)
}

fn too_many_documents(origin: Origin) -> ManifestError {
    ManifestError {
        origin,
        kind: None,
        name: None,
        path: None,
        message: format!(
            "more than the limit of {MAX_DOCUMENTS_PER_FILE} documents in one file \
             (split them into several files)"
        ),
    }
}

fn parse_yaml(source: &Source) -> (Vec<Document>, Vec<ManifestError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let mut found = 0;
    let mut nodes_left = MAX_NODES_PER_FILE;
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
        found += 1;
        if found > MAX_DOCUMENTS_PER_FILE {
            errors.push(too_many_documents(origin));
            break;
        }
        match yaml::parse(&chunk, &mut nodes_left) {
            Ok(Some(value)) => docs.push(Document {
                origin,
                value,
                text: Some((start_line, chunk)),
            }),
            Ok(None) => {} // only comments and markers
            Err(e) => {
                // An error at the end of input points past the document: name its last line.
                let last_line = start_line + chunk.lines().count().max(1) - 1;
                let line = (start_line + e.line - 1).min(last_line);
                errors.push(ManifestError {
                    origin: Origin {
                        line: Some(line),
                        ..origin
                    },
                    kind: None,
                    name: None,
                    path: e.path,
                    message: format!("{} (column {})", e.message, e.column),
                });
            }
        }
    }
    (docs, errors)
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
    let mut stream = serde_json::Deserializer::from_str(&source.text).into_iter::<json::Checked>();
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
        if index > MAX_DOCUMENTS_PER_FILE {
            errors.push(too_many_documents(origin));
            break;
        }
        match item {
            Ok(json::Checked(value)) => docs.push(Document {
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
                // A duplicate key or the nesting limit is well-formed JSON refused.
                let prefix = if e.is_data() { "" } else { "malformed JSON: " };
                errors.push(ManifestError {
                    origin: Origin {
                        line: Some(e.line()),
                        ..origin
                    },
                    kind: None,
                    name: None,
                    path: None,
                    message: format!("{prefix}{message} (column {})", e.column()),
                });
                break; // the stream cannot resume after an error
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
    // Written by deployctl, never by apply: ignored, like kubectl ignores them. A
    // `resourceVersion` is kept: apply then writes only over that version (a conflict
    // otherwise), as kubectl's does.
    map.remove("status");
    if let Some(Value::Object(meta)) = map.get_mut("metadata") {
        for field in ["uid", "creationTimestamp", "generation"] {
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
                let path = (!fe.path.is_empty()).then_some(fe.path.as_str());
                let mut e = err(kind_text, name, path, fe.message);
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
    // Every field the schema passes but the type refuses (a u32 past its range) is
    // named by its path, like a schema error.
    fn typed<K: Object>(value: Value) -> Result<K, FieldError> {
        serde_path_to_error::deserialize(value).map_err(|e| FieldError {
            path: match e.path().to_string() {
                p if p == "." => String::new(),
                p => p,
            },
            message: e.inner().to_string(),
        })
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
        KindName::Notifier => typed::<Notifier>(value).map(|o| {
            let errs = validate_notifier(&o);
            (Manifest::Notifier(o), errs)
        }),
        KindName::AnalysisTemplate => typed::<AnalysisTemplate>(value).map(|o| {
            let errs = crate::api::validation::validate_analysis_template(&o);
            (Manifest::AnalysisTemplate(o), errs)
        }),
        KindName::Instance | KindName::Event | KindName::Sync | KindName::Task => {
            unreachable!("only user kinds get here (checked above)")
        }
    }
    .map_err(|fe| to_errors(vec![fe]))?;
    if let Some(e) = object_size_error(&manifest) {
        return Err(vec![err(kind_text, name, None, e)]);
    }
    if semantic.is_empty() {
        Ok(manifest)
    } else {
        Err(to_errors(semantic))
    }
}

/// Refuses an object the store would refuse: its encoding past
/// [`store::MAX_OBJECT_BYTES`](crate::store::MAX_OBJECT_BYTES), the same for both stores.
fn object_size_error(manifest: &Manifest) -> Option<String> {
    let size = match manifest {
        Manifest::Machine(o) => serde_json::to_vec(o),
        Manifest::Application(o) => serde_json::to_vec(o),
        Manifest::Rollout(o) => serde_json::to_vec(o),
        Manifest::Notifier(o) => serde_json::to_vec(o),
        Manifest::AnalysisTemplate(o) => serde_json::to_vec(o),
    }
    .map(|v| v.len())
    .unwrap_or(usize::MAX);
    (size > crate::store::MAX_OBJECT_BYTES).then(|| {
        format!(
            "the object is {size} bytes encoded, larger than the store's limit of {} bytes \
             (1.5 MiB) for one object",
            crate::store::MAX_OBJECT_BYTES
        )
    })
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

/// Hands `each` every document of every source, in order, and returns the errors: the
/// parse errors and those `each` adds, in the order of the files. At most
/// [`MAX_DOCUMENTS`] in one command (`apply`, `delete -f`, `diff`, `sync`): past that
/// the rest is refused with one error.
pub fn parse_all(
    sources: &[Source],
    mut each: impl FnMut(Document, &mut Vec<LoadError>),
) -> Vec<LoadError> {
    let mut errors: Vec<LoadError> = Vec::new();
    let mut count = 0;
    'sources: for source in sources {
        let (docs, parse_errors) = parse_documents(source);
        errors.extend(parse_errors.into_iter().map(LoadError::Manifest));
        for doc in docs {
            count += 1;
            if count > MAX_DOCUMENTS {
                errors.push(LoadError::Manifest(ManifestError {
                    message: format!(
                        "more than the limit of {MAX_DOCUMENTS} documents in one command \
                         (apply them in several)"
                    ),
                    ..too_many_documents(doc.origin)
                }));
                break 'sources;
            }
            each(doc, &mut errors);
        }
    }
    errors
}

/// Reads, parses and validates every document of every source. All or nothing: any
/// error anywhere returns every error found, and no object.
pub fn load(args: &[String], default_namespace: &str) -> Result<Vec<Loaded>, Vec<LoadError>> {
    let sources = read_sources(args)?;
    let mut loaded: Vec<Loaded> = Vec::new();
    let mut errors = parse_all(&sources, |doc, errors| {
        match validate_document(&doc, default_namespace) {
            Ok(manifest) => loaded.push(Loaded {
                origin: doc.origin.clone(),
                manifest,
            }),
            Err(es) => errors.extend(es.into_iter().map(LoadError::Manifest)),
        }
    });
    // The same object twice would be applied twice, the second silently winning.
    let mut seen: HashMap<(KindName, String), usize> = HashMap::new();
    for (i, a) in loaded.iter().enumerate() {
        let key = (a.manifest.kind(), a.manifest.meta().key());
        if let Some(&first) = seen.get(&key) {
            errors.push(LoadError::Manifest(ManifestError {
                origin: a.origin.clone(),
                kind: Some(a.manifest.kind().kind().to_string()),
                name: Some(a.manifest.meta().name.clone()),
                path: None,
                message: format!("declared twice (also in {})", loaded[first].origin),
            }));
        } else {
            seen.insert(key, i);
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
    super::depends::order_rollouts(&mut loaded);
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
            &["rollout.yaml: document 2 (line 10): malformed YAML: while parsing a node, did not find expected node content (column 19)"],
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
        assert_eq!(ro.metadata.resource_version.as_deref(), Some("9"));
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

    fn json(text: &str) -> Source {
        Source {
            name: "all.json".into(),
            text: text.into(),
            json: true,
        }
    }

    /// Like [`check`] for a source of either kind.
    fn check_source(src: Source, want: &[&str]) {
        let (docs, mut errs) = parse_documents(&src);
        for d in docs {
            if let Err(es) = validate_document(&d, "default") {
                errs.extend(es);
            }
        }
        let got: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(got.len(), want.len(), "got {got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.contains(w), "{g:?} should contain {w:?}");
        }
    }

    const ROLLOUT: &str = "apiVersion: deployctl.dev/v1\nkind: Rollout\nmetadata: {name: api}\n";

    #[test]
    fn nesting_past_the_depth_limit_should_be_refused_naming_the_limit() {
        let limit = "nested deeper than the limit of 64 levels";
        let deep = 200_000;
        check_source(yaml(&"[".repeat(deep)), &[limit]);
        check_source(yaml(&"{a: ".repeat(deep)), &[limit]);
        check_source(yaml(&format!("{}x\n", "- ".repeat(deep))), &[limit]);
        let block: String = (0..100).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        check_source(yaml(&block), &[limit]);
        check_source(json(&"[".repeat(deep)), &[limit]);
        check_source(json(&"{\"a\":".repeat(deep)), &[limit]);
        // 64 levels are within the limit: the error is about the document, not its depth.
        let at_limit = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        for src in [yaml(&at_limit), json(&at_limit)] {
            check_source(src, &["must be a mapping"]);
        }
        let past = format!("{}1{}", "[".repeat(65), "]".repeat(65));
        for src in [yaml(&past), json(&past)] {
            check_source(src, &[limit]);
        }
    }

    #[test]
    fn a_flow_collection_past_the_lookahead_limit_should_be_refused() {
        // The scanner would keep every token of it until its end: 4 MB were 500 MB.
        let huge = format!("[{}1]\n", "1,".repeat(2_000_000));
        check_source(
            yaml(&huge),
            &["document 1 (line 1): a flow collection ([…] or {…}) of more than 131072 values"],
        );
        // Block style of the same size, and flow style within the limit, load.
        let block = "- 1\n".repeat(200_000);
        let within = format!("a: [{}1]\n", "1,".repeat(100_000));
        for text in [block, within] {
            let (docs, errs) = parse_documents(&yaml(&text));
            assert!(errs.is_empty(), "{errs:?}");
            assert_eq!(docs.len(), 1);
        }
    }

    #[test]
    fn values_past_the_limit_of_one_file_should_be_refused() {
        let limit = "more than the limit of 250000 values in one file";
        check_source(yaml(&"- 1\n".repeat(300_000)), &[limit]);
        // Counted across the documents of the file.
        let docs: String = (0..3)
            .map(|_| format!("---\n{}", "- 1\n".repeat(100_000)))
            .collect();
        let (parsed, errs) = parse_documents(&yaml(&docs));
        assert_eq!(parsed.len(), 2);
        assert!(
            errs[0]
                .to_string()
                .contains("document 4 (line 250001): [49997]"),
            "{}",
            errs[0]
        );
        assert!(errs[0].to_string().contains(limit), "{}", errs[0]);
    }

    #[test]
    fn aliases_should_be_refused_once_they_expand_past_the_limit() {
        let limit = "aliases expand the document past the limit of 1048576 bytes";
        // A 1 MB string referenced 200 times: refused at the first alias past the limit.
        let big = "x".repeat(1 << 20);
        let refs: String = (0..200).map(|_| "  - *big\n").collect();
        check_source(yaml(&format!("a: &big {big}\nb:\n{refs}")), &[limit]);
        // Nested laughs: each level ten times the last.
        let mut laughs =
            String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let p = i - 1;
            laughs.push_str(&format!(
                "l{i}: &l{i} [*l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}]\n"
            ));
        }
        check_source(yaml(&laughs), &[limit]);
        // A shared block within the limit is expanded as written.
        let (docs, errs) = parse_documents(&yaml(
            "a: &env {A: \"1\", B: two}\nb: *env\nc: [*env, *env]\n",
        ));
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(docs[0].value["b"], docs[0].value["a"]);
        assert_eq!(docs[0].value["c"][1]["B"], "two");
    }

    #[test]
    fn documents_past_the_limit_should_be_refused_naming_the_limit() {
        let limit = "more than the limit of 1000 documents in one file";
        let many: String = (0..1001).map(|i| format!("---\na: {i}\n")).collect();
        let (docs, errs) = parse_documents(&yaml(&many));
        assert_eq!(docs.len(), 1000);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].to_string().contains("document 1002 (line 2002)"),
            "{}",
            errs[0]
        );
        assert!(errs[0].to_string().contains(limit), "{}", errs[0]);
        let many: String = (0..1001).map(|i| format!("{{\"a\": {i}}}\n")).collect();
        let (_, errs) = parse_documents(&json(&many));
        assert!(errs[0].to_string().contains(limit), "{}", errs[0]);
        // The items of a List count.
        let items: Vec<String> = (0..1001).map(|i| format!("{{\"a\": {i}}}")).collect();
        let list = format!("{{\"kind\": \"List\", \"items\": [{}]}}", items.join(","));
        let (docs, errs) = parse_documents(&json(&list));
        assert_eq!(docs.len(), 1000);
        assert!(errs[0].to_string().contains("item 1001"), "{}", errs[0]);
        assert!(errs[0].to_string().contains(limit), "{}", errs[0]);
    }

    #[test]
    fn documents_past_the_limit_of_one_command_should_be_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file: String = (0..1000).map(|_| "---\n{}\n").collect();
        for i in 0..11 {
            std::fs::write(dir.path().join(format!("f{i:02}.yaml")), &file).expect("writable");
        }
        let errors = load(&[dir.path().display().to_string()], "default").expect_err("refused");
        assert_eq!(errors.len(), MAX_DOCUMENTS + 1);
        let last = errors.last().expect("not empty").to_string();
        assert!(last.contains("f10.yaml: document 2 (line 2)"), "{last}");
        assert!(
            last.contains("more than the limit of 10000 documents in one command"),
            "{last}"
        );
    }

    #[test]
    fn reads_should_stop_at_the_file_and_total_limits() {
        // An endless input costs the limit and one byte, then is refused.
        let mut reader = Reader::default();
        reader.read("<stdin>", std::io::repeat(b'a'), false);
        assert!(reader.sources.is_empty());
        let text = reader.errors[0].to_string();
        assert_eq!(
            text,
            "<stdin>: larger than the limit of 4194304 bytes for one file"
        );
        // Files within the limit each, but not together.
        let mut reader = Reader::default();
        let file = vec![b'#'; MAX_FILE_BYTES as usize];
        for i in 0..5 {
            reader.read(&format!("f{i}.yaml"), &file[..], false);
        }
        assert_eq!(reader.sources.len(), 4);
        assert_eq!(
            reader.errors[0].to_string(),
            "f4.yaml: the files together are larger than the limit of 16777216 bytes"
        );
    }

    #[test]
    fn files_that_are_not_regular_should_be_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let fifo = dir.path().join("fifo.yaml");
        let c_path = std::ffi::CString::new(fifo.to_str().expect("a UTF-8 temp path"))
            .expect("no NUL in a temp path");
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        std::fs::write(dir.path().join("app.yaml"), APP).expect("writable temp dir");
        let name = fifo.display().to_string();
        for arg in [dir.path().display().to_string(), name.clone()] {
            let errors = read_sources(&[arg]).expect_err("a FIFO is refused");
            let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            assert_eq!(
                lines,
                vec![format!("{name}: not a regular file (a FIFO): refused")]
            );
        }
    }

    #[test]
    fn duplicate_keys_should_be_refused_naming_the_key_and_line() {
        check_source(
            json("{\"apiVersion\": \"deployctl.dev/v1\",\n \"kind\": \"Rollout\",\n \"kind\": \"Application\"}"),
            &["all.json: document 1 (line 3): duplicate key \"kind\""],
        );
        check_source(
            json("{\"metadata\": {\"name\": \"a\",\n\"labels\": {\"x\": \"1\", \"x\": \"2\"}}}"),
            &["(line 2): duplicate key \"x\""],
        );
        check_source(
            yaml(&format!(
                "{ROLLOUT}spec:\n  version: \"1\"\n  version: \"2\"\n"
            )),
            &["document 1 (line 6): spec: duplicate key \"version\""],
        );
    }

    #[test]
    fn yaml_tags_should_be_refused_naming_the_field() {
        check_source(
            yaml(&format!(
                "{ROLLOUT}spec:\n  application: api\n  version: !!binary aGVsbG8=\n"
            )),
            &["(line 6): spec.version: YAML tag !!binary is not accepted"],
        );
        check_source(
            yaml(&format!(
                "{ROLLOUT}spec: !thing {{application: api, version: \"1\"}}\n"
            )),
            &["spec: YAML tag !thing is not accepted"],
        );
        check_source(
            yaml(&format!(
                "{ROLLOUT}spec:\n  application: api\n  version: \"1\"\n  steps: !!seq []\n"
            )),
            &["spec.steps: YAML tag !!seq is not accepted"],
        );
        // `!!str` says what quotes say: the version stays `1.10`, not the number 1.1.
        let (docs, errs) = parse_documents(&yaml(&format!(
            "{ROLLOUT}spec: {{application: api, version: !!str 1.10}}\n"
        )));
        assert!(errs.is_empty(), "{errs:?}");
        let Ok(Manifest::Rollout(ro)) = validate_document(&docs[0], "default") else {
            panic!("a valid rollout")
        };
        assert_eq!(ro.spec.version, "1.10");
    }

    #[test]
    fn typed_errors_should_name_the_field_and_its_line() {
        check(
            &format!("{ROLLOUT}spec:\n  application: api\n  version: \"1\"\n  strategy:\n    progressDeadlineSeconds: 4294967296\n"),
            &["document 1 (line 8), Rollout \"api\": spec.strategy.progressDeadlineSeconds: invalid value: integer `4294967296`, expected u32"],
        );
        check(
            &format!("{APP}  hooks:\n    activate:\n      - command: x\n        timeoutSeconds: 4294967296\n"),
            &["(line 11), Application \"api\": spec.hooks.activate[0].timeoutSeconds: invalid value: integer `4294967296`, expected u32"],
        );
    }

    #[test]
    fn an_object_past_the_store_limit_should_be_refused_naming_the_limit() {
        let big = "a".repeat(2 << 20);
        let text = format!(
            "apiVersion: deployctl.dev/v1\nkind: Machine\nmetadata:\n  name: m\n  annotations: {{note: {big}}}\n"
        );
        check(
            &text,
            &["Machine \"m\": the object is 2097283 bytes encoded, larger than the store's limit of 1556480 bytes (1.5 MiB) for one object"],
        );
    }

    #[test]
    fn error_output_should_be_bounded_in_lines_and_length() {
        let many: Vec<String> = (0..25).map(|i| format!("e{i}")).collect();
        let lines = bounded_lines(&many);
        assert_eq!(lines.len(), MAX_PRINTED_ERRORS + 1);
        assert_eq!(lines[19], "e19");
        assert_eq!(lines[20], "and 5 more error(s)");
        assert_eq!(bounded_lines(&many[..3]), vec!["e0", "e1", "e2"]);
        // One quoted value of a megabyte prints as a few hundred characters.
        let name = "n".repeat(1 << 20);
        let errors = errors(&format!(
            "apiVersion: deployctl.dev/v1\nkind: Machine\nmetadata:\n  name: {name}\n"
        ));
        assert!(!errors.is_empty());
        for e in &errors {
            assert!(e.len() < 4 * MAX_QUOTED_CHARS, "{} bytes", e.len());
            assert!(e.contains("more bytes)"), "{e}");
        }
    }

    #[test]
    fn plain_scalars_should_resolve_as_yaml_1_2_core_says() {
        let cases: &[(&str, Value)] = &[
            ("3", Value::from(3)),
            ("-3", Value::from(-3)),
            ("+3", Value::from(3)),
            ("0x1f", Value::from(31)),
            ("0o17", Value::from(15)),
            ("18446744073709551615", Value::from(u64::MAX)),
            ("1.5", Value::from(1.5)),
            ("1e3", Value::from(1000.0)),
            (".5", Value::from(0.5)),
            ("99999999999999999999", Value::from(1e20)),
            ("true", Value::Bool(true)),
            ("FALSE", Value::Bool(false)),
            ("~", Value::Null),
            ("null", Value::Null),
            ("1.2.3", Value::from("1.2.3")),
            ("yes", Value::from("yes")),
            (".inf", Value::from(".inf")),
            ("0x", Value::from("0x")),
            ("1_000", Value::from("1_000")),
            ("e3", Value::from("e3")),
        ];
        for (text, want) in cases {
            let (docs, errs) = parse_documents(&yaml(&format!("v: {text}\n")));
            assert!(errs.is_empty(), "{text}: {errs:?}");
            assert_eq!(&docs[0].value["v"], want, "{text}");
        }
    }
}

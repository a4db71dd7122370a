//! Builds one YAML document into a JSON value from the parser's events, refusing past the
//! loader's limits while it builds: nesting, alias expansion, tags and duplicate keys.
//!
//! Building from events (rather than through serde_yaml) is what bounds the work: the
//! nesting limit stops the parser before it has read a deeper level, and an alias costs
//! its expanded size before it is copied, so an anchor bomb is refused, not expanded.

use super::limits::{MAX_ALIAS_EXPANSION, MAX_DEPTH, MAX_NODES_PER_FILE};
use super::ParseError;
use serde_json::{Map, Number, Value};
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// What one node costs toward [`MAX_ALIAS_EXPANSION`] besides its text: the memory of a
/// JSON node is a few tens of bytes, so an alias of many tiny nodes is not free.
const NODE_COST: u64 = 16;

/// Parses `text`, which holds at most one YAML document. `Ok(None)` when it holds none.
/// Each node takes one from `nodes_left` (what is left of [`MAX_NODES_PER_FILE`]).
pub(super) fn parse(text: &str, nodes_left: &mut usize) -> Result<Option<Value>, ParseError> {
    let reach = Rc::new(Reach::default());
    let mut parser = Parser::new(Windowed {
        chars: text.chars(),
        reach: reach.clone(),
        after_blank: true,
    });
    let mut builder = Builder {
        nodes_left: *nodes_left,
        ..Builder::default()
    };
    let result = build(&mut parser, &mut builder, &reach);
    *nodes_left = builder.nodes_left;
    result
}

fn build(
    parser: &mut Parser<Windowed<'_>>,
    builder: &mut Builder,
    reach: &Reach,
) -> Result<Option<Value>, ParseError> {
    loop {
        let next = parser.next_token();
        if reach.cut.get() {
            // The input was ended early: whatever the scanner made of it is not the text.
            return Err(ParseError {
                line: next
                    .as_ref()
                    .map_or_else(|e| e.marker().line(), |(_, m)| m.line())
                    .max(1),
                column: 1,
                path: builder.path(),
                message: format!(
                    "a flow collection ([…] or {{…}}) of more than {MAX_LOOKAHEAD_TOKENS} \
                     values: write it in block style"
                ),
            });
        }
        let (event, mark) = next.map_err(|e| ParseError {
            line: e.marker().line().max(1),
            column: e.marker().col() + 1,
            // The scanner reads ahead of the builder: its path would be a guess.
            path: None,
            message: if e.info() == "recursion limit exceeded" {
                // The scanner stops at 255 open flow collections, reading a little ahead
                // of the builder, which would have stopped at the 65th.
                depth_message()
            } else {
                format!("malformed YAML: {}", e.info())
            },
        })?;
        reach.built.set(reach.read.get());
        match event {
            Event::StreamEnd => return Ok(builder.root.take()),
            Event::DocumentStart if builder.documents == 1 => {
                return Err(builder.error(
                    mark,
                    "more than one document without a `---` line between them".into(),
                ))
            }
            Event::DocumentStart => builder.documents += 1,
            event => builder.event(event, mark)?,
        }
    }
}

/// How many tokens the scanner may read past the last event. In a flow collection it
/// keeps every token until the collection ends (it might turn out to be a mapping key),
/// about 100 bytes a token: the window bounds that memory (4 MB of `[1,1,…]` took 500 MB),
/// and is far above the flow style people write (a `get -o json` of a thousand objects
/// has fewer).
const MAX_LOOKAHEAD_TOKENS: usize = 1 << 17;

/// How far the scanner and the builder are, in tokens (counted as [`Windowed`] says).
#[derive(Default)]
struct Reach {
    /// Tokens handed to the scanner.
    read: Cell<usize>,
    /// `read` when the last event was built.
    built: Cell<usize>,
    /// Set when the window ended the input early.
    cut: Cell<bool>,
}

/// The document's characters, ending early once the scanner is more than
/// [`MAX_LOOKAHEAD_TOKENS`] ahead of the builder. A token is counted where one may
/// start: at a flow indicator, or at the first character after a blank; a long scalar
/// is one token however long.
struct Windowed<'a> {
    chars: std::str::Chars<'a>,
    reach: Rc<Reach>,
    /// The last character was a blank (or none was read yet).
    after_blank: bool,
}

impl Iterator for Windowed<'_> {
    type Item = char;
    fn next(&mut self) -> Option<char> {
        if self.reach.cut.get() {
            return None;
        }
        let c = self.chars.next()?;
        let blank = c.is_whitespace();
        if matches!(c, '[' | ']' | '{' | '}' | ',' | ':') || (self.after_blank && !blank) {
            let read = self.reach.read.get() + 1;
            self.reach.read.set(read);
            if read > self.reach.built.get() + MAX_LOOKAHEAD_TOKENS {
                self.reach.cut.set(true);
                return None;
            }
        }
        self.after_blank = blank;
        Some(c)
    }
}

fn depth_message() -> String {
    format!("nested deeper than the limit of {MAX_DEPTH} levels")
}

/// One collection being built.
enum Frame {
    Sequence {
        items: Vec<Value>,
        anchor: usize,
        /// `Builder::size` when the collection started: its own size is the difference.
        start_size: u64,
    },
    Mapping {
        map: Map<String, Value>,
        /// The key read, waiting for its value.
        key: Option<String>,
        anchor: usize,
        start_size: u64,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Value>,
    documents: usize,
    /// Every anchored node with its expanded size, for the aliases that follow.
    anchors: HashMap<usize, (Value, u64)>,
    /// The expanded size of the document so far (text bytes plus [`NODE_COST`] a node).
    size: u64,
    /// What aliases have added to `size`.
    expanded: u64,
    /// Nodes this file may still have.
    nodes_left: usize,
}

impl Builder {
    fn event(&mut self, event: Event, mark: Marker) -> Result<(), ParseError> {
        if matches!(
            event,
            Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..)
        ) {
            if self.nodes_left == 0 {
                return Err(self.error(
                    mark,
                    format!("more than the limit of {MAX_NODES_PER_FILE} values in one file"),
                ));
            }
            self.nodes_left -= 1;
        }
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                self.check_tag(tag.as_ref(), true, mark)?;
                self.size += NODE_COST + text.len() as u64;
                let value = match (style, &tag) {
                    (TScalarStyle::Plain, None) => resolve_plain(&text),
                    _ => Value::String(text.clone()),
                };
                let key_text = text;
                if anchor > 0 {
                    self.anchors
                        .insert(anchor, (value.clone(), NODE_COST + key_text.len() as u64));
                }
                self.add(value, Some(key_text), mark)
            }
            Event::SequenceStart(anchor, tag) => {
                self.check_tag(tag.as_ref(), false, mark)?;
                self.open(mark)?;
                self.stack.push(Frame::Sequence {
                    items: Vec::new(),
                    anchor,
                    start_size: self.size,
                });
                Ok(())
            }
            Event::MappingStart(anchor, tag) => {
                self.check_tag(tag.as_ref(), false, mark)?;
                self.open(mark)?;
                self.stack.push(Frame::Mapping {
                    map: Map::new(),
                    key: None,
                    anchor,
                    start_size: self.size,
                });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, anchor, start_size) = match self.stack.pop() {
                    Some(Frame::Sequence {
                        items,
                        anchor,
                        start_size,
                    }) => (Value::Array(items), anchor, start_size),
                    Some(Frame::Mapping {
                        map,
                        anchor,
                        start_size,
                        ..
                    }) => (Value::Object(map), anchor, start_size),
                    None => return Err(self.error(mark, "unbalanced collection end".into())),
                };
                if anchor > 0 {
                    self.anchors
                        .insert(anchor, (value.clone(), self.size - start_size));
                }
                self.add(value, None, mark)
            }
            Event::Alias(id) => {
                let Some((value, size)) = self.anchors.get(&id) else {
                    return Err(self.error(mark, "alias to an anchor not yet complete".into()));
                };
                let size = NODE_COST.max(*size);
                self.expanded = self.expanded.saturating_add(size);
                if self.expanded > MAX_ALIAS_EXPANSION {
                    return Err(self.error(
                        mark,
                        format!(
                            "aliases expand the document past the limit of {} bytes",
                            MAX_ALIAS_EXPANSION
                        ),
                    ));
                }
                self.size = self.size.saturating_add(size);
                let key = value.as_str().map(str::to_string);
                let value = value.clone();
                self.add(value, key, mark)
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd => Ok(()),
            Event::DocumentStart | Event::DocumentEnd => Ok(()),
        }
    }

    /// A collection starts: refused past the nesting limit, and as a mapping key.
    fn open(&mut self, mark: Marker) -> Result<(), ParseError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error(mark, depth_message()));
        }
        if let Some(Frame::Mapping { key: None, .. }) = self.stack.last() {
            return Err(self.error(mark, "a mapping key must be a plain value".into()));
        }
        Ok(())
    }

    /// Adds a finished node to its parent: a sequence item, a mapping key (`key_text`),
    /// a mapping value, or the document.
    fn add(
        &mut self,
        value: Value,
        key_text: Option<String>,
        mark: Marker,
    ) -> Result<(), ParseError> {
        if let Some(Frame::Mapping { map, key: None, .. }) = self.stack.last() {
            let Some(k) = key_text else {
                return Err(self.error(mark, "a mapping key must be a plain value".into()));
            };
            if map.contains_key(&k) {
                return Err(self.error(mark, format!("duplicate key {k:?}")));
            }
            if let Some(Frame::Mapping { key, .. }) = self.stack.last_mut() {
                *key = Some(k);
            }
            return Ok(());
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Sequence { items, .. }) => items.push(value),
            Some(Frame::Mapping { map, key, .. }) => {
                let k = key
                    .take()
                    .expect("a mapping without a pending key returned above");
                map.insert(k, value);
            }
        }
        Ok(())
    }

    /// Tags change what a value means (`!!binary` would be stored as its base64 text), so
    /// none is taken, except `!!str` on a scalar: it says what quotes say, and is how YAML
    /// writes a version such as `1.10` that would otherwise be a number.
    fn check_tag(&self, tag: Option<&Tag>, scalar: bool, mark: Marker) -> Result<(), ParseError> {
        let Some(tag) = tag else { return Ok(()) };
        let core = tag.handle == "!!" || tag.handle == "tag:yaml.org,2002:";
        if scalar && core && tag.suffix == "str" {
            return Ok(());
        }
        let shown = if tag.handle == "tag:yaml.org,2002:" {
            format!("!!{}", tag.suffix)
        } else {
            format!("{}{}", tag.handle, tag.suffix)
        };
        Err(self.error(
            mark,
            format!("YAML tag {shown} is not accepted: write the value itself"),
        ))
    }

    /// An error at `mark`, naming the field being built.
    fn error(&self, mark: Marker, message: String) -> ParseError {
        ParseError {
            line: mark.line().max(1),
            column: mark.col() + 1,
            path: self.path(),
            message,
        }
    }

    /// The dotted path of the node being read (`spec.env[2]`), `None` at the top.
    fn path(&self) -> Option<String> {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Sequence { items, .. } => path.push_str(&format!("[{}]", items.len())),
                Frame::Mapping { key: Some(k), .. } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                }
                Frame::Mapping { key: None, .. } => break,
            }
        }
        (!path.is_empty()).then_some(path)
    }
}

/// A plain scalar under YAML 1.2's core schema: null, booleans, integers, floats, or
/// else a string.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(n) = resolve_int(text) {
        return Value::Number(n);
    }
    if is_float(text) {
        // A float JSON cannot hold (inf, nan) stays text, and the schema names the field.
        if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(text.to_string())
}

fn resolve_int(text: &str) -> Option<Number> {
    let radix = |digits: &str, radix: u32| {
        (!digits.is_empty() && !digits.starts_with(['+', '-']))
            .then(|| u64::from_str_radix(digits, radix).ok())
            .flatten()
            .map(Number::from)
    };
    if let Some(hex) = text.strip_prefix("0x") {
        return radix(hex, 16);
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return radix(oct, 8);
    }
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    unsigned
        .parse::<i64>()
        .map(Number::from)
        .or_else(|_| unsigned.parse::<u64>().map(Number::from))
        .ok()
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?` (integers too big for 64 bits
/// included), or `.inf`/`.nan` in the core schema's spellings.
fn is_float(text: &str) -> bool {
    let body = text.strip_prefix(['+', '-']).unwrap_or(text);
    if matches!(body, ".inf" | ".Inf" | ".INF") || matches!(text, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match frac {
        Some(f) => digits(int) && digits(f) && !(int.is_empty() && f.is_empty()),
        None => !int.is_empty() && digits(int),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

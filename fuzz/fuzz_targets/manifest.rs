//! The manifest loader on any bytes, read as YAML and as JSON: parsing and validating
//! never panic, every error line stays short, and no document is nested past the limit.
#![no_main]

use deployctl::cli::manifest::{limits, parse_documents, validate_document, Source};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Nested collections in `value` (0 for a scalar), without recursion.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(d + 1);
        stack.extend(children.map(|c| (c, d + 1)));
    }
    deepest
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for json in [false, true] {
        let source = Source {
            name: "fuzz".into(),
            text: text.to_string(),
            json,
        };
        let (docs, errors) = parse_documents(&source);
        assert!(docs.len() <= limits::MAX_DOCUMENTS_PER_FILE);
        let mut lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        for doc in &docs {
            assert!(depth(&doc.value) <= limits::MAX_DEPTH, "{:?}", doc.origin);
            if let Err(es) = validate_document(doc, "default") {
                lines.extend(es.iter().map(|e| e.to_string()));
            }
        }
        for line in lines {
            // Origin, kind, name, path and message: each quoted part is clipped.
            assert!(
                line.len() < 8 * limits::MAX_QUOTED_CHARS,
                "{} bytes",
                line.len()
            );
        }
    }
});

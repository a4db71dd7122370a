//! The small parsers every manifest and flag goes through: label selectors (`-l`),
//! durations and percents. None may panic; what they accept must round-trip.
#![no_main]

use deployctl::api::selector::LabelSelector;
use deployctl::api::{parse_duration, IntOrPercent};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sel) = LabelSelector::parse(text) {
        // A parsed selector evaluates without panicking on any labels.
        let mut labels = BTreeMap::new();
        labels.insert("a".to_string(), "b".to_string());
        let _ = sel.matches(&labels);
        let _ = sel.matches(&BTreeMap::new());
    }
    let _ = parse_duration(text);
    let p = IntOrPercent::Percent(text.to_string());
    if let Some(v) = p.percent() {
        assert!(v <= 100, "percent {text:?} parsed to {v}");
        let _ = p.resolve(u32::MAX, true);
        let _ = p.resolve(u32::MAX, false);
    }
});

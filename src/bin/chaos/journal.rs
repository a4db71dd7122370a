//! The activation journal: one line per hook edge, appended by every agent's `activate` hook.
//!
//! ```text
//! start <machine> <version> <monotonic ns>
//! end <machine> <version> <monotonic ns> [fail]
//! ```
//! Each line is one short `echo >>` (an `O_APPEND` write), so lines of several agents
//! never interleave. The times are `CLOCK_MONOTONIC` (`chaos stamp`), which every process
//! on the machine shares whatever network namespace it runs in.

use std::path::Path;

/// Whether a record opens or closes an activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    Start,
    End,
}

/// One journal line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub edge: Edge,
    pub machine: String,
    pub version: String,
    pub ns: u64,
    /// An `end` whose hook failed (the failing version).
    pub failed: bool,
}

/// `CLOCK_MONOTONIC` in nanoseconds: what `chaos stamp` prints for the hooks.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`, which lives for the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_MONOTONIC is always available on Linux");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Parses one line; `None` for a malformed one.
fn parse(line: &str) -> Option<Record> {
    let mut w = line.split_whitespace();
    let edge = match w.next()? {
        "start" => Edge::Start,
        "end" => Edge::End,
        _ => return None,
    };
    let machine = w.next()?.to_string();
    let version = w.next()?.to_string();
    let ns = w.next()?.parse().ok()?;
    let failed = w.next() == Some("fail");
    Some(Record {
        edge,
        machine,
        version,
        ns,
        failed,
    })
}

/// Every record in the journal, and the malformed lines (a torn or foreign write is itself
/// worth reporting).
pub fn read(path: &Path) -> (Vec<Record>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut records, mut bad) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match parse(line) {
            Some(r) => records.push(r),
            None => bad.push(line.to_string()),
        }
    }
    records.sort_by_key(|r| r.ns);
    (records, bad)
}

/// The records with `from <= ns < to`.
pub fn window(records: &[Record], from: u64, to: u64) -> Vec<Record> {
    records
        .iter()
        .filter(|r| r.ns >= from && r.ns < to)
        .cloned()
        .collect()
}

/// The records as journal lines, times relative to `origin` in ms, for a failure report.
pub fn excerpt(records: &[Record], origin: u64) -> String {
    records
        .iter()
        .map(|r| {
            let edge = match r.edge {
                Edge::Start => "start",
                Edge::End => "end",
            };
            let fail = if r.failed { " fail" } else { "" };
            let ms = (r.ns as i128 - origin as i128) as f64 / 1e6;
            format!("  {edge} {} {} +{ms:.1}ms{fail}", r.machine, r.version)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_should_read_both_edges_and_refuse_a_torn_line() {
        let r = parse("end m3 v4-bad 123 fail").expect("a whole end line parses");
        assert_eq!(
            (
                r.edge,
                r.machine.as_str(),
                r.version.as_str(),
                r.ns,
                r.failed
            ),
            (Edge::End, "m3", "v4-bad", 123, true)
        );
        assert_eq!(parse("start m1 v2 99").map(|r| r.failed), Some(false));
        assert_eq!(parse("start m1 v2"), None);
        assert_eq!(parse("stop m1 v2 5"), None);
    }
}

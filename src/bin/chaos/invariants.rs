//! The invariants, I1–I7 of issue 22, as checks over what a run recorded. I1, I2 and I4
//! are pure functions of the journal and the controllers' logs (tested below); I3, I5, I6
//! and I7 need the live fleet and are checked in `scenarios`, reporting [`Violation`]s.

use crate::journal::{Edge, Record};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One broken promise.
#[derive(Clone, Debug)]
pub struct Violation {
    pub invariant: &'static str,
    /// Which run (rollout) of the scenario; 0 is the set-up at v1.
    pub run: usize,
    pub detail: String,
}

/// I1: the most activations in flight at once, and when (ns). An activation runs from its
/// `start` to its machine's next record (its `end`, or a new `start` after a crash), or
/// to `until` when nothing followed.
pub fn most_in_flight(records: &[Record], until: u64) -> (usize, u64) {
    let mut edges: Vec<(u64, i32)> = Vec::new();
    let mut open: BTreeMap<&str, u64> = BTreeMap::new();
    for r in records {
        if let Some(started) = open.remove(r.machine.as_str()) {
            edges.push((started, 1));
            edges.push((r.ns, -1));
        }
        if r.edge == Edge::Start {
            open.insert(&r.machine, r.ns);
        }
    }
    for started in open.into_values() {
        edges.push((started, 1));
        edges.push((until, -1));
    }
    // Ends sort before starts at the same instant: touching is not overlapping.
    edges.sort();
    let (mut now, mut most, mut at) = (0i32, 0i32, 0u64);
    for (ns, d) in edges {
        now += d;
        if now > most {
            most = now;
            at = ns;
        }
    }
    (most as usize, at)
}

/// I2: a machine activated the version it had just activated successfully (or was on when
/// the window opened), with no crash of its agent in between. A retry after a failed
/// activation is not a second switch.
///
/// `on_at_start`: each machine's version on disk when the window opened. `killed`: when
/// each machine's agent was SIGKILLed (ns), which allows one re-run. "In between" starts
/// at the machine's last record before the first activation, not at its `start` line:
/// the hook writes that line a few milliseconds after the agent launched it, so an agent
/// killed mid-switch may die before its hook's first line (at most [`LAUNCH_SLACK_NS`]
/// before it).
pub fn double_switches(
    records: &[Record],
    on_at_start: &BTreeMap<String, Option<String>>,
    killed: &BTreeMap<String, Vec<u64>>,
) -> Vec<String> {
    let mut found = Vec::new();
    // Per machine: the version last switched to (or on disk), and since when a kill
    // counts as interrupting that switch.
    let mut last: BTreeMap<&str, (String, u64)> = on_at_start
        .iter()
        .filter_map(|(m, v)| Some((m.as_str(), (v.clone()?, 0))))
        .collect();
    let mut previous_record: BTreeMap<&str, u64> = BTreeMap::new();
    let mut used: BTreeSet<(&str, u64)> = BTreeSet::new();
    for r in records {
        let before = previous_record.insert(&r.machine, r.ns).unwrap_or(0);
        match r.edge {
            Edge::Start => {
                if let Some((v, since)) = last.get(r.machine.as_str()) {
                    if *v == r.version {
                        // Each kill excuses one re-run.
                        let crash = killed.get(&r.machine).and_then(|ks| {
                            ks.iter().copied().find(|k| {
                                *k > *since
                                    && *k < r.ns
                                    && !used.contains(&(r.machine.as_str(), *k))
                            })
                        });
                        match crash {
                            Some(k) => {
                                used.insert((r.machine.as_str(), k));
                            }
                            None => found.push(format!(
                                "{} activated {} again with no crash in between",
                                r.machine, r.version
                            )),
                        }
                    }
                }
                let since = before.max(r.ns.saturating_sub(LAUNCH_SLACK_NS));
                last.insert(&r.machine, (r.version.clone(), since));
            }
            // A failed activation may be retried: forget it.
            Edge::End if r.failed => {
                last.remove(r.machine.as_str());
            }
            Edge::End => {}
        }
    }
    found
}

/// How long before a hook's `start` line its agent may have launched it (a shell and a
/// `chaos stamp` process start in between).
pub const LAUNCH_SLACK_NS: u64 = 1_000_000_000;

/// What one controller process said in its log: the terms it led (the leader key's create
/// revision) and every write it had accepted, as (term, revision).
#[derive(Debug, Default)]
pub struct ControllerLog {
    pub identity: String,
    pub terms: Vec<i64>,
    pub writes: Vec<(i64, i64)>,
}

/// The `key=value` field of a tracing line.
fn field(line: &str, key: &str) -> Option<i64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.trim_matches('"').parse().ok())
}

/// Reads a controller's log (stderr, `deployctl::fenced=debug`).
pub fn read_controller_log(identity: &str, path: &Path) -> ControllerLog {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut log = ControllerLog {
        identity: identity.to_string(),
        ..Default::default()
    };
    for line in text.lines() {
        if line.contains("became the leader") {
            if let Some(term) = field(line, "term") {
                log.terms.push(term);
            }
        } else if line.contains("fenced write accepted") {
            if let (Some(term), Some(rev)) = (field(line, "term"), field(line, "revision")) {
                log.writes.push((term, rev));
            }
        }
    }
    log
}

/// I4: every write a controller had accepted was fenced on a term that process held, and
/// landed before any later term began: a term starts at the leader key's create revision,
/// so a write at revision `r` on term `t` is from a deposed leader when some other term
/// `t'` has `t < t' <= r`.
pub fn deposed_writes(logs: &[ControllerLog]) -> Vec<String> {
    let all_terms: BTreeSet<i64> = logs.iter().flat_map(|l| l.terms.iter().copied()).collect();
    let mut found = Vec::new();
    for log in logs {
        for &(term, rev) in &log.writes {
            if !log.terms.contains(&term) {
                found.push(format!(
                    "{} wrote at revision {rev} on term {term}, which it never held",
                    log.identity
                ));
                continue;
            }
            if rev <= term {
                found.push(format!(
                    "{} wrote at revision {rev} on term {term}, which began later",
                    log.identity
                ));
                continue;
            }
            if let Some(next) = all_terms.range(term + 1..=rev).next() {
                found.push(format!(
                    "{} wrote at revision {rev} on term {term}, after term {next} began",
                    log.identity
                ));
            }
        }
    }
    found
}

/// One writer of a round: what it asked for, and how it ended.
pub struct Write {
    pub writer: usize,
    pub what: WriteKind,
    pub ok: bool,
    pub stderr: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum WriteKind {
    SetVersion(String),
    Pause,
    Resume,
    /// `apply` of the Rollout with this `chaos-writer` label (and the round's base version).
    Label(String),
}

/// The fields of a Rollout spec key's value the writers touch.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    pub version: String,
    pub paused: bool,
    pub label: Option<String>,
}

impl Written {
    pub fn parse(value: &[u8]) -> Option<Written> {
        let v: Value = serde_json::from_slice(value).ok()?;
        Some(Written {
            version: v["spec"]["version"].as_str()?.to_string(),
            paused: v["spec"]["paused"].as_bool().unwrap_or(false),
            label: v["metadata"]["labels"]["chaos-writer"]
                .as_str()
                .map(str::to_string),
        })
    }
}

/// I6 over one round: `writes` as the calls ended, `start` the Rollout spec before the
/// round, `history` every value its key took during it (revision, value). Every failure
/// must be a clean conflict; every revision must be one successful call's write (its
/// unique version or label; pause/resume changes at most as many as succeeded), made once
/// (a revision that goes back to an earlier write's value lost the writes in between);
/// every successful version or label write must be in the history.
pub fn lost_writes(
    writes: &[Write],
    start: Option<&Written>,
    history: &[(i64, Written)],
) -> Vec<String> {
    let mut found = Vec::new();
    for w in writes.iter().filter(|w| !w.ok) {
        if !w.stderr.to_lowercase().contains("conflict") {
            found.push(format!(
                "writer {} ({:?}) failed without a clean conflict: {}",
                w.writer,
                w.what,
                w.stderr.trim()
            ));
        }
    }
    let mut prev = start.cloned();
    let mut toggles = 0;
    let mut landed: BTreeSet<usize> = BTreeSet::new();
    for (rev, w) in history {
        let by_version = writes
            .iter()
            .find(|x| x.what == WriteKind::SetVersion(w.version.clone()));
        let label_changed = prev.as_ref().map(|p| &p.label) != Some(&w.label);
        let by_label = w.label.as_ref().filter(|_| label_changed).and_then(|l| {
            writes
                .iter()
                .find(|x| x.what == WriteKind::Label(l.clone()))
        });
        let version_changed = prev.as_ref().map(|p| &p.version) != Some(&w.version);
        let author = match (by_label, by_version) {
            (Some(x), _) => Some(x),
            (None, Some(x)) if version_changed => Some(x),
            _ => None,
        };
        match author {
            Some(x) if !x.ok => found.push(format!(
                "revision {rev}: the write of writer {} ({:?}) landed although the call failed",
                x.writer, x.what
            )),
            Some(x) => {
                if !landed.insert(x.writer) {
                    found.push(format!(
                        "revision {rev}: back to writer {}'s {:?}: a later write was lost",
                        x.writer, x.what
                    ));
                }
            }
            None if !version_changed && !label_changed => toggles += 1,
            None => found.push(format!(
                "revision {rev}: {w:?} was written by no successful call"
            )),
        }
        prev = Some(w.clone());
    }
    for w in writes.iter().filter(|w| w.ok) {
        if matches!(w.what, WriteKind::SetVersion(_) | WriteKind::Label(_))
            && !landed.contains(&w.writer)
        {
            found.push(format!(
                "writer {} ({:?}) succeeded but its write is not in the history",
                w.writer, w.what
            ));
        }
    }
    let flips = writes
        .iter()
        .filter(|w| w.ok && matches!(w.what, WriteKind::Pause | WriteKind::Resume))
        .count();
    if toggles > flips {
        found.push(format!(
            "{toggles} pause/resume changes in the history, {flips} successful calls"
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(edge: Edge, machine: &str, version: &str, ns: u64) -> Record {
        Record {
            edge,
            machine: machine.into(),
            version: version.into(),
            ns,
            failed: false,
        }
    }

    #[test]
    fn most_in_flight_should_count_overlaps_and_an_unfinished_start_until_the_end() {
        let rs = vec![
            rec(Edge::Start, "m0", "v2", 10),
            rec(Edge::Start, "m1", "v2", 20),
            rec(Edge::End, "m0", "v2", 30),
            rec(Edge::Start, "m2", "v2", 30),
            rec(Edge::Start, "m3", "v2", 40),
        ];
        // m1 never ends: it overlaps m2 and m3.
        assert_eq!(most_in_flight(&rs, 100), (3, 40));
        assert_eq!(most_in_flight(&rs[..3], 100).0, 2);
    }

    #[test]
    fn double_switches_should_flag_a_repeat_unless_the_agent_was_killed_or_it_failed() {
        let on = BTreeMap::from([("m0".to_string(), Some("v1".to_string()))]);
        let rs = vec![
            rec(Edge::Start, "m0", "v2", 10),
            rec(Edge::End, "m0", "v2", 20),
            rec(Edge::Start, "m0", "v2", 30),
        ];
        assert_eq!(double_switches(&rs, &on, &BTreeMap::new()).len(), 1);
        let killed = BTreeMap::from([("m0".to_string(), vec![25])]);
        assert!(double_switches(&rs, &on, &killed).is_empty());
        let mut failed = rs.clone();
        failed[1].failed = true;
        assert!(double_switches(&failed, &on, &BTreeMap::new()).is_empty());
        let again_v1 = vec![rec(Edge::Start, "m0", "v1", 5)];
        assert_eq!(double_switches(&again_v1, &on, &BTreeMap::new()).len(), 1);
        // Killed after launching the hook but before its first line: still mid-switch.
        let early = BTreeMap::from([("m0".to_string(), vec![8])]);
        assert!(double_switches(&rs, &on, &early).is_empty());
        // A kill long before the first start did not interrupt it.
        let long_before = vec![
            rec(Edge::Start, "m0", "v2", 3 * LAUNCH_SLACK_NS),
            rec(Edge::End, "m0", "v2", 3 * LAUNCH_SLACK_NS + 1),
            rec(Edge::Start, "m0", "v2", 4 * LAUNCH_SLACK_NS),
        ];
        let kill_first = BTreeMap::from([("m0".to_string(), vec![LAUNCH_SLACK_NS])]);
        assert_eq!(double_switches(&long_before, &on, &kill_first).len(), 1);
        // One kill allows one re-run, not two.
        let mut thrice = rs.clone();
        thrice.push(rec(Edge::End, "m0", "v2", 40));
        thrice.push(rec(Edge::Start, "m0", "v2", 50));
        assert_eq!(double_switches(&thrice, &on, &killed).len(), 1);
    }

    #[test]
    fn deposed_writes_should_flag_a_write_that_landed_after_the_next_term_began() {
        let a = ControllerLog {
            identity: "ctl-a".into(),
            terms: vec![5],
            writes: vec![(5, 6), (5, 40), (7, 8), (5, 5)],
        };
        let b = ControllerLog {
            identity: "ctl-b".into(),
            terms: vec![30],
            writes: vec![(30, 31)],
        };
        let found = deposed_writes(&[a, b]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("after term 30 began"), "{found:?}");
        assert!(found[1].contains("never held"), "{found:?}");
        assert!(found[2].contains("began later"), "{found:?}");
    }

    #[test]
    fn read_controller_log_should_take_terms_and_writes_from_tracing_lines() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("c.log");
        std::fs::write(
            &path,
            "2026-11-30T17:00:00Z  INFO deployctl::controller::leader: became the leader identity=ctl-a lease=7 term=12\n\
             2026-11-30T17:00:01Z DEBUG deployctl::fenced: fenced write accepted term=12 revision=15 what=\"instance\"\n",
        )
        .expect("temp dir is writable");
        let log = read_controller_log("ctl-a", &path);
        assert_eq!((log.terms, log.writes), (vec![12], vec![(12, 15)]));
    }
    fn call(writer: usize, what: WriteKind, ok: bool) -> Write {
        Write {
            writer,
            what,
            ok,
            stderr: if ok {
                String::new()
            } else {
                "error: conflict on rollout api".into()
            },
        }
    }

    fn spec(version: &str, paused: bool, label: Option<&str>) -> Written {
        Written {
            version: version.into(),
            paused,
            label: label.map(str::to_string),
        }
    }

    #[test]
    fn lost_writes_should_accept_a_history_made_of_the_successful_calls() {
        let writes = [
            call(0, WriteKind::SetVersion("w1-0".into()), true),
            call(1, WriteKind::Pause, true),
            call(2, WriteKind::Label("1-2".into()), true),
            call(3, WriteKind::SetVersion("w1-3".into()), false),
        ];
        let start = spec("v1", false, None);
        let history = [
            (10, spec("w1-0", false, None)),
            (11, spec("w1-0", true, None)),
            (12, spec("v1", false, Some("1-2"))),
        ];
        assert!(lost_writes(&writes, Some(&start), &history).is_empty());
    }

    #[test]
    fn lost_writes_should_flag_a_lost_update_a_phantom_write_and_an_unclean_failure() {
        let writes = [
            call(0, WriteKind::SetVersion("w1-0".into()), true),
            call(1, WriteKind::SetVersion("w1-1".into()), true),
            call(2, WriteKind::SetVersion("w1-2".into()), false),
            Write {
                stderr: "error: cannot reach store".into(),
                ..call(3, WriteKind::Pause, false)
            },
        ];
        let start = spec("v1", false, None);
        let history = [
            (10, spec("w1-0", false, None)),
            (11, spec("w1-1", false, None)),
            // A blind write from a stale read puts w1-0 back: w1-1 is lost.
            (12, spec("w1-0", false, None)),
            // A failed call's write landed.
            (13, spec("w1-2", false, None)),
            // Nobody wrote this.
            (14, spec("v9", false, None)),
        ];
        let found = lost_writes(&writes, Some(&start), &history);
        let has = |s: &str| found.iter().any(|f| f.contains(s));
        assert!(has("a later write was lost"), "{found:?}");
        assert!(has("landed although the call failed"), "{found:?}");
        assert!(has("written by no successful call"), "{found:?}");
        assert!(has("without a clean conflict"), "{found:?}");
        assert_eq!(found.len(), 4, "{found:?}");
        let missing = lost_writes(&writes[..2], Some(&start), &history[..1]);
        assert!(
            missing.iter().any(|f| f.contains("not in the history")),
            "{missing:?}"
        );
    }
}

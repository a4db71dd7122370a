//! Output for people and programs: kubectl-looking tables, ages, `-o yaml|json|name`,
//! and the escaping of control characters that every human-readable output goes through.

use crate::api::selector::{LabelOperator, LabelSelector};
use crate::api::{
    find_condition, Application, ConditionStatus, Event, GitSync, Instance, KindName, Machine,
    Notifier, Object, Rollout, Task,
};
use chrono::{DateTime, Utc};
use comfy_table::{presets::NOTHING, CellAlignment, ContentArrangement, Table};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Whether `c` must not reach a terminal raw: it could move the cursor, rewrite or hide
/// what was printed (ESC, CSI and the other C0/C1 controls, DEL), break a table cell or a
/// line (CR, LF, tab, the Unicode line and paragraph separators), ring the bell, or
/// reorder what is shown (the bidi embeddings, overrides, isolates and marks).
fn needs_escape(c: char) -> bool {
    c.is_control() // C0, DEL and C1 (U+0080..U+009F)
        || matches!(
            c,
            '\u{061c}' // Arabic letter mark
                | '\u{200e}'..='\u{200f}' // left-to-right and right-to-left marks
                | '\u{2028}'..='\u{2029}' // line and paragraph separators
                | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
                | '\u{2066}'..='\u{2069}' // bidi isolates
        )
}

/// `text` safe for a terminal: every control character (see [`needs_escape`]) shown as an
/// escape, `\e` for ESC, `\n`, `\r`, `\t`, `\a` for BEL and `\u{202e}` for the rest, so
/// a value from the store can neither paint, move the cursor, break a row nor reorder
/// what is shown. Everything else, backslashes included, is kept: the text stays
/// readable, and escaping twice changes nothing, so renderers may layer freely. The
/// exact bytes are what `-o json|yaml` is for.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\x1b' => out.push_str("\\e"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x07' => out.push_str("\\a"),
            c if needs_escape(c) => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Multi-line text (an error, a hook's output) for a terminal: its line breaks kept as
/// line breaks, everything else escaped as [`escape`] does.
pub fn escape_lines(text: &str) -> String {
    text.split('\n')
        .map(|l| escape(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a row may need beyond its object: the time it is drawn at, and the Machines of
/// the rows of objects that live on one (an Instance says when its machine is not counted).
#[derive(Clone, Debug)]
pub struct Fleet {
    pub now: DateTime<Utc>,
    /// By name. Empty when the command did not read them: rows then say nothing of their
    /// machine.
    pub machines: BTreeMap<String, Machine>,
}

impl Fleet {
    /// No machines known, drawn at `now`.
    pub fn at(now: DateTime<Utc>) -> Fleet {
        Fleet {
            now,
            machines: BTreeMap::new(),
        }
    }

    /// Why rollouts leave out the machine named `name`, or `None` when they count it or
    /// it is not known.
    pub fn not_counted(&self, name: &str) -> Option<NotCounted> {
        self.machines
            .get(name)
            .and_then(|m| NotCounted::of(m, self.now))
    }
}

/// Why rollouts leave a machine out of their desired count: its agent is gone (the
/// Machine is NotReady) or it is cordoned (`spec.unschedulable`), or both. Every view
/// says it in these words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotCounted {
    /// Why the Machine is NotReady (`agent lease expired 40s ago`); `None` when Ready.
    pub not_ready: Option<String>,
    pub cordoned: bool,
}

impl NotCounted {
    /// `None` when the machine is Ready and schedulable.
    pub fn of(m: &Machine, now: DateTime<Utc>) -> Option<NotCounted> {
        let ready = m
            .status
            .as_ref()
            .and_then(|s| find_condition(&s.conditions, "Ready"));
        let not_ready = match ready {
            Some(c) if c.status == ConditionStatus::True => None,
            Some(c) => Some(not_ready_reason(c, now)),
            None => Some("no agent has registered".into()),
        };
        let cordoned = m.spec.unschedulable;
        (not_ready.is_some() || cordoned).then_some(NotCounted {
            not_ready,
            cordoned,
        })
    }

    /// `NotReady` or `Cordoned`: a word for a status column. NotReady wins, being the one
    /// that also means nothing there is known to run.
    pub fn state(&self) -> &'static str {
        if self.not_ready.is_some() {
            "NotReady"
        } else {
            "Cordoned"
        }
    }

    /// The reasons alone: `agent lease expired 40s ago; cordoned`.
    pub fn reasons(&self) -> String {
        let mut why: Vec<&str> = self.not_ready.iter().map(String::as_str).collect();
        if self.cordoned {
            why.push("cordoned");
        }
        why.join("; ")
    }

    /// The whole sentence: `NotReady: agent lease expired 40s ago; cordoned`.
    pub fn text(&self) -> String {
        match &self.not_ready {
            Some(r) if self.cordoned => format!("NotReady: {r}; cordoned"),
            Some(r) => format!("NotReady: {r}"),
            None => "cordoned".into(),
        }
    }
}

/// Why a `Ready=False` condition is false, in a person's words, with how long ago.
fn not_ready_reason(c: &crate::api::Condition, now: DateTime<Utc>) -> String {
    // A clock behind the controller's must not print a negative age.
    let ago = c
        .last_transition_time
        .map(|t| {
            format!(
                " {} ago",
                human_duration((now - t).max(chrono::Duration::zero()))
            )
        })
        .unwrap_or_default();
    match c.reason.as_str() {
        "AgentLeaseExpired" => format!("agent lease expired{ago}"),
        "AgentNotRegistered" => "no agent has registered".into(),
        "AgentRegistering" => format!("agent registering, started{ago}"),
        _ if !c.message.is_empty() => format!("{}{ago}", c.message),
        _ => format!("{}{ago}", c.reason),
    }
}

/// What `get` shows of a kind as a table row.
pub trait Columns: Object {
    const KIND_NAME: KindName;
    fn headers(wide: bool) -> Vec<&'static str>;
    fn row(&self, wide: bool, fleet: &Fleet) -> Vec<String>;
    /// The order rows are listed in (by name unless a kind says otherwise).
    fn sort_key(&self) -> String {
        self.meta().key()
    }
}

/// A table without borders, left-aligned, three spaces between columns, as kubectl prints;
/// every cell [`escape`]d, so that no value breaks a row or reaches the terminal raw.
pub fn render(headers: Option<&[&str]>, rows: &[Vec<String>]) -> String {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    if let Some(h) = headers {
        table.set_header(h.iter().map(|s| s.to_string()));
    }
    for r in rows {
        table.add_row(
            r.iter()
                .map(|cell| escape(cell).into_owned())
                .collect::<Vec<_>>(),
        );
    }
    let n = headers
        .map(|h| h.len())
        .or_else(|| rows.first().map(Vec::len))
        .unwrap_or(0);
    for i in 0..n {
        if let Some(col) = table.column_mut(i) {
            col.set_padding((0, if i + 1 == n { 0 } else { 3 }));
            col.set_cell_alignment(CellAlignment::Left);
        }
    }
    table
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// kubectl's human durations: `45s`, `3m12s`, `52m`, `5h3m`, `20h`, `3d4h`, `40d`, `2y30d`.
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    if secs < 0 {
        return "<invalid>".into();
    }
    let (m, h, day) = (60, 3600, 86400);
    let year = 365 * day;
    if secs < 2 * m {
        format!("{secs}s")
    } else if secs < 10 * m {
        let s = secs % m;
        if s == 0 {
            format!("{}m", secs / m)
        } else {
            format!("{}m{s}s", secs / m)
        }
    } else if secs < 3 * h {
        format!("{}m", secs / m)
    } else if secs < 8 * h {
        let mins = (secs % h) / m;
        if mins == 0 {
            format!("{}h", secs / h)
        } else {
            format!("{}h{mins}m", secs / h)
        }
    } else if secs < 2 * day {
        format!("{}h", secs / h)
    } else if secs < 8 * day {
        let hours = (secs % day) / h;
        if hours == 0 {
            format!("{}d", secs / day)
        } else {
            format!("{}d{hours}h", secs / day)
        }
    } else if secs < 2 * year {
        format!("{}d", secs / day)
    } else if secs < 8 * year {
        let days = (secs % year) / day;
        if days == 0 {
            format!("{}y", secs / year)
        } else {
            format!("{}y{days}d", secs / year)
        }
    } else {
        format!("{}y", secs / year)
    }
}

/// The age of a timestamp, or `<unknown>`.
pub fn age(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) => human_duration(now - t),
        None => "<unknown>".into(),
    }
}

fn or_none(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("<none>").to_string()
}

/// `a=1,b=2`, or `<none>`.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "<none>".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A selector in `-l` syntax: `role=web,zone in (a,b)`; `<all>` when empty.
pub fn selector_text(sel: &LabelSelector) -> String {
    if sel.is_empty() {
        return "<all>".into();
    }
    let mut terms: Vec<String> = sel
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in &sel.match_expressions {
        terms.push(match e.operator {
            LabelOperator::In => format!("{} in ({})", e.key, e.values.join(",")),
            LabelOperator::NotIn => format!("{} notin ({})", e.key, e.values.join(",")),
            LabelOperator::Exists => e.key.clone(),
            LabelOperator::DoesNotExist => format!("!{}", e.key),
        });
    }
    terms.join(",")
}

impl Columns for Application {
    const KIND_NAME: KindName = KindName::Application;
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "MACHINES", "READY", "STABLE", "AGE"];
        if wide {
            h.extend(["SELECTOR", "ARTIFACT"]);
        }
        h
    }
    fn row(&self, wide: bool, fleet: &Fleet) -> Vec<String> {
        let now = fleet.now;
        let st = self.status.clone().unwrap_or_default();
        let mut r = vec![
            self.metadata.name.clone(),
            st.machines.to_string(),
            st.ready_machines.to_string(),
            or_none(st.stable_version.as_deref()),
            age(self.metadata.creation_timestamp, now),
        ];
        if wide {
            r.push(selector_text(&self.spec.selector));
            r.push(self.spec.artifact.url.clone());
        }
        r
    }
}

impl Columns for Rollout {
    const KIND_NAME: KindName = KindName::Rollout;
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec![
            "NAME",
            "APPLICATION",
            "DESIRED",
            "STAGED",
            "UPDATED",
            "AVAILABLE",
            "VERSION",
            "PHASE",
            "AGE",
        ];
        if wide {
            h.extend(["STABLE", "STEP", "MESSAGE"]);
        }
        h
    }
    fn row(&self, wide: bool, fleet: &Fleet) -> Vec<String> {
        let now = fleet.now;
        let st = self.status.clone().unwrap_or_default();
        let mut r = vec![
            self.metadata.name.clone(),
            self.spec.application.clone(),
            st.desired.to_string(),
            st.staged.to_string(),
            st.updated.to_string(),
            st.available.to_string(),
            rollout_version(self),
            rollout_phase(self),
            age(self.metadata.creation_timestamp, now),
        ];
        if wide {
            r.push(or_none(st.stable_version.as_deref()));
            let steps = self.spec.strategy.steps.len();
            r.push(match st.current_step_index {
                Some(i) if steps > 0 => format!("{}/{steps}", (i as usize + 1).min(steps)),
                _ => "-".into(),
            });
            r.push(st.message.clone());
        }
        r
    }
}

/// The version a Rollout's status describes (`status.targetVersion`), with the one its
/// spec asks for when the controller has not seen it yet: `2.0.0 (3.0.0 not yet
/// observed)`. Without a status, the spec's. The counts and message beside it describe
/// the status's version, so a row never pairs one version with another's message.
pub fn rollout_version(r: &Rollout) -> String {
    let asked = &r.spec.version;
    match r.status.as_ref().and_then(|s| s.target_version.as_deref()) {
        Some(t) if t != asked => format!("{t} ({asked} not yet observed)"),
        Some(t) => t.to_string(),
        None => asked.clone(),
    }
}

/// The phase, and `paused` when a user paused a Rollout whose phase does not say so (a
/// Complete one: the pause holds the next version).
pub fn rollout_phase(r: &Rollout) -> String {
    let phase = r.status.as_ref().map(|s| s.phase).unwrap_or_default();
    if r.spec.paused && phase != crate::api::RolloutPhase::Paused {
        format!("{phase} (paused)")
    } else {
        phase.to_string()
    }
}

/// `Ready`, `NotReady`, plus `,SchedulingDisabled` when cordoned.
pub fn machine_state(m: &Machine) -> String {
    let ready = m
        .status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, "Ready"))
        .is_some_and(|c| c.status == ConditionStatus::True);
    let mut s = if ready { "Ready" } else { "NotReady" }.to_string();
    if m.spec.unschedulable {
        s.push_str(",SchedulingDisabled");
    }
    s
}

impl Columns for Machine {
    const KIND_NAME: KindName = KindName::Machine;
    /// NOTE last: why rollouts do not count the machine, empty when they do.
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "STATUS", "AGENT", "AGE"];
        if wide {
            h.extend(["HOSTNAME", "LABELS"]);
        }
        h.push("NOTE");
        h
    }
    fn row(&self, wide: bool, fleet: &Fleet) -> Vec<String> {
        let now = fleet.now;
        let st = self.status.clone().unwrap_or_default();
        let mut r = vec![
            self.metadata.name.clone(),
            machine_state(self),
            or_none(st.agent_version.as_deref()),
            age(self.metadata.creation_timestamp, now),
        ];
        if wide {
            r.push(or_none(st.hostname.as_deref()));
            r.push(labels_text(&self.metadata.labels));
        }
        r.push(
            NotCounted::of(self, now)
                .map(|n| n.reasons())
                .unwrap_or_default(),
        );
        r
    }
}

impl Columns for Instance {
    const KIND_NAME: KindName = KindName::Instance;
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec![
            "NAME",
            "MACHINE",
            "APPLICATION",
            "CURRENT",
            "WANTED",
            "PHASE",
            "HEALTHY",
            "AGE",
        ];
        if wide {
            h.extend(["STAGED", "ERROR"]);
        }
        // Last: whether its machine counts, which the other columns cannot say.
        h.push("NOTE");
        h
    }
    fn row(&self, wide: bool, fleet: &Fleet) -> Vec<String> {
        let now = fleet.now;
        let st = self.status.clone().unwrap_or_default();
        let mut r = vec![
            self.metadata.name.clone(),
            self.spec.machine.clone(),
            self.spec.application.clone(),
            or_none(st.current_version.as_deref()),
            or_none(self.spec.current.as_deref()),
            st.phase.to_string(),
            st.healthy.to_string(),
            age(self.metadata.creation_timestamp, now),
        ];
        if wide {
            r.push(if st.staged_versions.is_empty() {
                "<none>".into()
            } else {
                st.staged_versions.join(",")
            });
            r.push(match &st.failure {
                Some(f) => format!("{} {}: {}", f.operation, f.reason, f.message),
                None => "<none>".into(),
            });
        }
        r.push(
            fleet
                .not_counted(&self.spec.machine)
                .map(|n| format!("machine {}; not counted", n.text()))
                .unwrap_or_default(),
        );
        r
    }
}

impl Columns for Event {
    const KIND_NAME: KindName = KindName::Event;
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    }
    fn row(&self, _wide: bool, fleet: &Fleet) -> Vec<String> {
        let now = fleet.now;
        let o = &self.spec.involved_object;
        vec![
            age(self.spec.time.or(self.metadata.creation_timestamp), now),
            self.spec.type_.clone(),
            self.spec.reason.clone(),
            format!("{}/{}", o.kind.to_ascii_lowercase(), o.name),
            self.spec.message.clone(),
        ]
    }
    fn sort_key(&self) -> String {
        let t = self.spec.time.or(self.metadata.creation_timestamp);
        format!(
            "{}/{}",
            t.map(|t| t.to_rfc3339()).unwrap_or_default(),
            self.metadata.name
        )
    }
}

/// The first 7 characters of a commit, as `git log --oneline` prints it.
pub fn short_commit(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

impl Columns for GitSync {
    const KIND_NAME: KindName = KindName::Sync;
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "REPO", "COMMIT", "OBJECTS", "SYNCED", "ERROR"];
        if wide {
            h.extend(["REF", "PATH", "PRUNE"]);
        }
        h
    }
    fn row(&self, wide: bool, fleet: &Fleet) -> Vec<String> {
        let now = fleet.now;
        let st = self.status.clone().unwrap_or_default();
        let mut r = vec![
            self.metadata.name.clone(),
            self.spec.repo.clone(),
            or_none(st.last_commit.as_deref().map(short_commit)),
            st.objects.to_string(),
            match st.last_sync_time {
                Some(t) => format!("{} ago", age(Some(t), now)),
                None => "<never>".into(),
            },
            match (&st.last_error, &st.last_error_commit) {
                (Some(e), _) => e.lines().next().unwrap_or_default().to_string(),
                (None, _) => "<none>".into(),
            },
        ];
        if wide {
            r.push(or_none(self.spec.ref_.as_deref()));
            r.push(self.spec.path.clone());
            r.push(self.spec.prune.to_string());
        }
        r
    }
}

impl Columns for Notifier {
    const KIND_NAME: KindName = KindName::Notifier;
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "SINK", "DELIVERED", "LAST", "ERROR", "AGE"];
        if wide {
            h.extend(["SELECTOR", "EVENTS"]);
        }
        h
    }
    fn row(&self, wide: bool, fleet: &Fleet) -> Vec<String> {
        let now = fleet.now;
        let st = self.status.clone().unwrap_or_default();
        let mut r = vec![
            self.metadata.name.clone(),
            notifier_sink(self).to_string(),
            st.deliveries.to_string(),
            match &st.last_delivered {
                Some(d) => format!("{} {} ({} ago)", d.event, d.rollout, age(d.time, now)),
                None => "<none>".into(),
            },
            match &st.last_error {
                Some(e) => e.lines().next().unwrap_or_default().to_string(),
                None => "<none>".into(),
            },
            age(self.metadata.creation_timestamp, now),
        ];
        if wide {
            r.push(selector_text(&self.spec.selector));
            r.push(notifier_events(self));
        }
        r
    }
}

impl Columns for Task {
    const KIND_NAME: KindName = KindName::Task;
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "APPLICATION", "PHASE", "DONE", "FAILED", "AGE"];
        if wide {
            h.extend(["TASK", "COMMAND"]);
        }
        h
    }
    fn row(&self, wide: bool, fleet: &Fleet) -> Vec<String> {
        let st = self.status.clone().unwrap_or_default();
        let done = st.machines.iter().filter(|m| m.phase.is_finished()).count();
        let mut r = vec![
            self.metadata.name.clone(),
            self.spec.application.clone(),
            format!("{:?}", st.phase),
            format!("{done}/{}", st.machines.len()),
            st.failed().count().to_string(),
            age(self.metadata.creation_timestamp, fleet.now),
        ];
        if wide {
            r.push(
                self.spec
                    .task_name
                    .clone()
                    .unwrap_or_else(|| "<none>".into()),
            );
            r.push(
                self.spec
                    .command
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        r
    }
}

impl Columns for crate::api::AnalysisTemplate {
    const KIND_NAME: KindName = KindName::AnalysisTemplate;
    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "METRICS", "AGE"]
    }
    fn row(&self, _wide: bool, fleet: &Fleet) -> Vec<String> {
        let names: Vec<&str> = self.spec.metrics.iter().map(|m| m.name.as_str()).collect();
        vec![
            self.metadata.name.clone(),
            names.join(","),
            age(self.metadata.creation_timestamp, fleet.now),
        ]
    }
}

/// `webhook`, `slack` or `graphite`.
pub fn notifier_sink(n: &Notifier) -> &'static str {
    if n.spec.webhook.is_some() {
        "webhook"
    } else if n.spec.slack.is_some() {
        "slack"
    } else {
        "graphite"
    }
}

/// `StepPaused,Degraded`, or `<all>`.
pub fn notifier_events(n: &Notifier) -> String {
    if n.spec.events.is_empty() {
        return "<all>".into();
    }
    n.spec
        .events
        .iter()
        .map(|e| e.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The rows of a table, with a NAMESPACE column first when listing every namespace;
/// every cell [`escape`]d already, so that widths measured on them hold on screen.
pub fn table_rows<K: Columns>(
    items: &[K],
    wide: bool,
    all_namespaces: bool,
    fleet: &Fleet,
) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|o| {
            let mut r = o.row(wide, fleet);
            if all_namespaces && K::NAMESPACED {
                r.insert(0, o.namespace().unwrap_or_default().to_string());
            }
            r.into_iter().map(|c| escape(&c).into_owned()).collect()
        })
        .collect()
}

pub fn table_headers<K: Columns>(wide: bool, all_namespaces: bool) -> Vec<&'static str> {
    let mut h = K::headers(wide);
    if all_namespaces && K::NAMESPACED {
        h.insert(0, "NAMESPACE");
    }
    h
}

/// One object as YAML (without a trailing newline).
pub fn to_yaml<T: Serialize>(v: &T) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(v)?.trim_end().to_string())
}

/// A kubectl `List` of objects.
pub fn list_value<K: Serialize>(items: &[K]) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items.iter().map(serde_json::to_value).collect::<Result<Vec<_>, _>>()?,
        "metadata": {"resourceVersion": ""},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_should_show_every_control_character_and_keep_the_rest() {
        fn check(input: &str, want: &str) {
            assert_eq!(escape(input), want, "escaping {input:?}");
            assert_eq!(escape(want), want, "escaping is idempotent: {want:?}");
        }
        check("web-1", "web-1");
        check("", "");
        check("ünïcödé ✔ 日本", "ünïcödé ✔ 日本");
        check(r"C:\path\e", r"C:\path\e");
        check("\x1b[31mred\x1b[0m", r"\e[31mred\e[0m");
        check("\x1b]0;title\x07", r"\e]0;title\a");
        check("a\nb", r"a\nb");
        check("a\r\nb", r"a\r\nb");
        check("a\tb", r"a\tb");
        check("\x07", r"\a");
        check("\0", r"\u{0}");
        check("\x08\x7f", r"\u{8}\u{7f}");
        check("\u{9b}31m", r"\u{9b}31m"); // the C1 CSI
        check("\u{80}\u{85}\u{9f}", r"\u{80}\u{85}\u{9f}");
        check("abc\u{202e}fed", r"abc\u{202e}fed");
        check(
            "\u{202a}\u{202b}\u{202c}\u{202d}",
            r"\u{202a}\u{202b}\u{202c}\u{202d}",
        );
        check(
            "\u{2066}\u{2067}\u{2068}\u{2069}",
            r"\u{2066}\u{2067}\u{2068}\u{2069}",
        );
        check("\u{200e}\u{200f}\u{61c}", r"\u{200e}\u{200f}\u{61c}");
        check("a\u{2028}b\u{2029}", r"a\u{2028}b\u{2029}");
    }

    #[test]
    fn escape_lines_should_keep_line_breaks_and_escape_within_each_line() {
        assert_eq!(
            escape_lines("first \x1b[2J\nsecond\x07\r\n"),
            "first \\e[2J\nsecond\\a\\r\n"
        );
        assert_eq!(escape_lines("plain\ntext"), "plain\ntext");
    }

    #[test]
    fn tables_should_escape_cells_so_no_value_breaks_a_row() {
        let text = render(
            Some(&["NAME", "MESSAGE"]),
            &[vec!["m1".into(), "a\nb\x1b[2Jc".into()]],
        );
        assert_eq!(text, "NAME   MESSAGE\nm1     a\\nb\\e[2Jc");
        let mut m = Machine::new("m1", Default::default());
        m.metadata
            .labels
            .insert("role".into(), "web\x1b[31m\x07".into());
        let rows = table_rows(
            std::slice::from_ref(&m),
            true,
            false,
            &Fleet::at(Utc::now()),
        );
        assert_eq!(rows[0][5], r"role=web\e[31m\a");
    }

    #[test]
    fn ages_should_read_like_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (180, "3m"),
            (192, "3m12s"),
            (3000, "50m"),
            (7200, "120m"),
            (4 * 3600 + 600, "4h10m"),
            (20 * 3600, "20h"),
            (4 * 86400, "4d"),
            (3 * 86400 + 7200, "3d2h"),
            (40 * 86400, "40d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (10 * 365 * 86400, "10y"),
        ] {
            assert_eq!(
                human_duration(chrono::Duration::seconds(secs)),
                want,
                "{secs}s"
            );
        }
    }

    #[test]
    fn tables_should_have_no_borders_and_three_spaces_between_columns() {
        let text = render(
            Some(&["NAME", "PHASE", "AGE"]),
            &[
                vec!["api".into(), "Complete".into(), "5s".into()],
                vec!["web-frontend".into(), "Pending".into(), "3m".into()],
            ],
        );
        assert_eq!(
            text,
            "NAME           PHASE      AGE\napi            Complete   5s\nweb-frontend   Pending    3m"
        );
    }

    #[test]
    fn rows_should_say_why_a_machine_is_not_counted() {
        let now = Utc::now();
        let ready = |m: &mut Machine, status, reason: &str, secs_ago| {
            let mut st = crate::api::MachineStatus::default();
            crate::api::set_condition(
                &mut st.conditions,
                "Ready",
                status,
                reason,
                "",
                now - chrono::Duration::seconds(secs_ago),
            );
            m.status = Some(st);
        };
        let mut dead = Machine::new("m1", Default::default());
        ready(&mut dead, ConditionStatus::False, "AgentLeaseExpired", 40);
        let mut cordoned = Machine::new("m2", Default::default());
        ready(&mut cordoned, ConditionStatus::True, "AgentLeaseAlive", 600);
        cordoned.spec.unschedulable = true;
        let mut fine = Machine::new("m3", Default::default());
        ready(&mut fine, ConditionStatus::True, "AgentLeaseAlive", 600);
        let ahead = Machine::new("m4", Default::default());
        let fleet = Fleet {
            now,
            machines: [&dead, &cordoned, &fine, &ahead]
                .into_iter()
                .map(|m| (m.metadata.name.clone(), m.clone()))
                .collect(),
        };
        let machines = [dead, cordoned, fine, ahead];
        let rows = table_rows(&machines, false, false, &fleet);
        let notes: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r[1].as_str(), r[4].as_str()))
            .collect();
        assert_eq!(
            notes,
            [
                ("NotReady", "agent lease expired 40s ago"),
                ("Ready,SchedulingDisabled", "cordoned"),
                ("Ready", ""),
                ("NotReady", "no agent has registered"),
            ]
        );
        let on = |m: &str| {
            let mut i = Instance::new(
                &Instance::name_for("api", m),
                crate::api::InstanceSpec {
                    machine: m.into(),
                    application: "api".into(),
                    ..Default::default()
                },
            );
            i.metadata.namespace = Some("default".into());
            i
        };
        let insts = [on("m1"), on("m2"), on("m3"), on("m9")];
        let rows = table_rows(&insts, false, false, &fleet);
        let notes: Vec<&str> = rows.iter().map(|r| r[8].as_str()).collect();
        assert_eq!(
            notes,
            [
                "machine NotReady: agent lease expired 40s ago; not counted",
                "machine cordoned; not counted",
                "",
                "",
            ]
        );
        assert_eq!(Instance::headers(false)[8], "NOTE");
        assert_eq!(Machine::headers(true).last(), Some(&"NOTE"));
    }

    #[test]
    fn a_rollout_row_should_pair_the_version_with_its_status_and_show_a_user_pause() {
        let mut r = Rollout::new(
            "api",
            crate::api::RolloutSpec {
                application: "api".into(),
                version: "1.0".into(),
                ..Default::default()
            },
        );
        let fleet = Fleet::at(Utc::now());
        let row = |r: &Rollout| table_rows(std::slice::from_ref(r), true, false, &fleet)[0].clone();
        assert_eq!(row(&r)[6], "1.0", "no status yet: the spec's version");
        r.status = Some(crate::api::RolloutStatus {
            phase: crate::api::RolloutPhase::Progressing,
            target_version: Some("2.0".into()),
            message: "switching on 2.0".into(),
            ..Default::default()
        });
        let cells = row(&r);
        assert_eq!(cells[6], "2.0 (1.0 not yet observed)");
        assert_eq!(cells[11], "switching on 2.0");
        r.status.as_mut().expect("set above").phase = crate::api::RolloutPhase::Complete;
        r.spec.paused = true;
        assert_eq!(row(&r)[7], "Complete (paused)");
    }

    #[test]
    fn machine_state_should_show_cordon() {
        let mut m = Machine::new("m1", Default::default());
        assert_eq!(machine_state(&m), "NotReady");
        m.spec.unschedulable = true;
        let mut st = crate::api::MachineStatus::default();
        crate::api::set_condition(
            &mut st.conditions,
            "Ready",
            ConditionStatus::True,
            "LeaseAlive",
            "",
            Utc::now(),
        );
        m.status = Some(st);
        assert_eq!(machine_state(&m), "Ready,SchedulingDisabled");
    }
}

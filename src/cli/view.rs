//! The live rollout view of `get rollouts -w`: status symbol, gate, counts and a
//! per-machine tree, redrawn in place on a terminal and printed as plain blocks elsewhere.
//!
//! Rendering is pure (objects in, text out) so that every phase has a snapshot test;
//! [`watch`] only feeds it from the store and decides how to print.

use super::get::shutdown_signal;
use super::output::{escape, rollout_version, Fleet};
use crate::api::selector::LabelSelector;
use crate::api::{
    Instance, InstancePhase, Machine, Object, Rollout, RolloutPhase, RolloutStatus, Step,
    DEFAULT_NAMESPACE,
};
use crate::reconcilers::rollout::{PAUSE_FAILURE, PAUSE_STEP};
use crate::store::{Client, ObjectEvent, Scope};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{IsTerminal, Write};

/// Whether to paint: decided once from the flag, `NO_COLOR` and the terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub const PLAIN: Style = Style { color: false };
    pub const COLOR: Style = Style { color: true };

    /// Colour only on a terminal, and never with `--no-color` or a non-empty `NO_COLOR`
    /// (<https://no-color.org>).
    pub fn decide(no_color_flag: bool, no_color_env: Option<OsString>, terminal: bool) -> Style {
        let env_off = no_color_env.is_some_and(|v| !v.is_empty());
        Style {
            color: terminal && !no_color_flag && !env_off,
        }
    }

    fn paint(self, text: &str, paint: Paint) -> String {
        if !self.color || text.is_empty() {
            return text.to_string();
        }
        let code = match paint {
            Paint::None => return text.to_string(),
            Paint::Green => "32",
            Paint::Yellow => "33",
            Paint::Red => "31",
            Paint::Cyan => "36",
            Paint::Bold => "1",
            Paint::Dim => "2",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// The few colours the view uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paint {
    None,
    Green,
    Yellow,
    Red,
    Cyan,
    Bold,
    Dim,
}

/// The symbol `kubectl argo rollouts` shows for a phase, and its colour.
pub fn phase_symbol(phase: RolloutPhase) -> &'static str {
    match phase {
        RolloutPhase::Pending => "◌",
        RolloutPhase::Progressing => "◌",
        RolloutPhase::Paused => "॥",
        RolloutPhase::RollingBack => "↺",
        RolloutPhase::Degraded => "✖",
        RolloutPhase::Complete => "✔",
    }
}

fn phase_paint(phase: RolloutPhase) -> Paint {
    match phase {
        RolloutPhase::Pending | RolloutPhase::Progressing | RolloutPhase::Paused => Paint::Yellow,
        RolloutPhase::RollingBack => Paint::Cyan,
        RolloutPhase::Degraded => Paint::Red,
        RolloutPhase::Complete => Paint::Green,
    }
}

fn instance_symbol(phase: InstancePhase) -> (&'static str, Paint) {
    match phase {
        InstancePhase::Running => ("✔", Paint::Green),
        InstancePhase::Failed => ("✖", Paint::Red),
        InstancePhase::Drifted => ("⚠", Paint::Yellow),
        InstancePhase::Pending
        | InstancePhase::Staging
        | InstancePhase::Switching
        | InstancePhase::Verifying => ("◌", Paint::Yellow),
    }
}

/// `Canary` with steps, `Rolling` (every machine under slots) without.
pub fn strategy_name(r: &Rollout) -> &'static str {
    if r.spec.strategy.steps.is_empty() {
        "Rolling"
    } else {
        "Canary"
    }
}

/// `2/4`, or `-` without steps. The index may be one past the last step once done.
pub fn step_text(r: &Rollout) -> String {
    let n = r.spec.strategy.steps.len();
    let st = r.status.as_ref();
    match st.and_then(|s| s.current_step_index) {
        Some(i) if n > 0 => format!("{}/{n}", (i as usize + 1).min(n)),
        _ if n > 0 => format!("0/{n}"),
        _ => "-".into(),
    }
}

pub fn describe_step(s: &Step) -> String {
    match (s.set_weight, s.machines, &s.pause) {
        (Some(w), _, _) => format!("setWeight {w}%"),
        (_, Some(m), _) => format!("machines {m}"),
        (_, _, Some(p)) => match &p.duration {
            Some(d) => format!("pause {d}"),
            None => "pause until promoted".into(),
        },
        _ => match &s.analysis {
            Some(a) => super::analysis::step_text(a),
            None => "empty step".into(),
        },
    }
}

/// Slots and the gate resolved against the desired count, with the very functions the
/// rollout reconciler uses.
fn resolved(r: &Rollout, st: &RolloutStatus) -> (u32, u32) {
    let n = st.desired;
    let slots = r.spec.strategy.slots(n);
    let min_staged = r.spec.strategy.min_staged_machines(n);
    (slots, min_staged)
}

/// What the Rollout waits for now: `waiting for staged 3/5`, `slots 2/2 busy`, `paused
/// by user`, `paused at step 4/4, 4m12s left` (at `now`), …; `-` once complete.
pub fn gate(r: &Rollout, now: DateTime<Utc>) -> String {
    let Some(st) = r.status.as_ref() else {
        return "not yet reconciled".into();
    };
    let (slots, min_staged) = resolved(r, st);
    let busy = format!("slots {}/{slots} busy", st.unavailable);
    let steps = r.spec.strategy.steps.len();
    let step_pause = st.pause_conditions.iter().find(|p| p.reason == PAUSE_STEP);
    match st.phase {
        RolloutPhase::Pending => "not yet reconciled".into(),
        // A user's pause of a finished rollout holds the next version: say so.
        RolloutPhase::Complete if r.spec.paused => "paused by user".into(),
        RolloutPhase::Complete => "-".into(),
        RolloutPhase::RollingBack => format!("rolling back, {busy}"),
        RolloutPhase::Degraded => {
            if st.aborted {
                format!(
                    "rolled back ({})",
                    st.abort_reason.as_deref().unwrap_or("RolledBack")
                )
            } else if st
                .pause_conditions
                .iter()
                .any(|p| p.reason == PAUSE_FAILURE)
            {
                format!(
                    "paused: {} failed, maxFailures {}",
                    st.failed, r.spec.failure_policy.max_failures
                )
            } else {
                "progress deadline exceeded".into()
            }
        }
        RolloutPhase::Paused => {
            if r.spec.paused {
                "paused by user".into()
            } else if let Some(p) = step_pause {
                let at = st
                    .current_step_index
                    .map_or(0, |i| i as usize + 1)
                    .min(steps);
                match p.until {
                    Some(u) if u > now => format!(
                        "paused at step {at}/{steps}, {} left",
                        super::output::human_duration(u - now)
                    ),
                    Some(_) => format!("paused at step {at}/{steps}, going on"),
                    None => format!("paused at step {at}/{steps} until promoted"),
                }
            } else {
                "paused".into()
            }
        }
        RolloutPhase::Progressing => {
            if st.staged < min_staged {
                format!("waiting for staged {}/{min_staged}", st.staged)
            } else {
                busy
            }
        }
    }
}

/// A table whose cells may be painted: widths come from the plain text, so colour
/// never shifts a column. Given a width, the last cell of a row wraps within it rather
/// than run off the screen.
struct Table {
    rows: Vec<Row>,
}

struct Row {
    cells: Vec<(String, Paint)>,
    /// A heading row (a revision of the tree): its first cell does not widen the first
    /// column, and it may run past it; its last cell starts where the column would.
    span: bool,
    /// What continuation lines start with when the last cell cannot wrap within its
    /// column (too little room right of the other cells): a heading keeps the tree's
    /// line drawn.
    hang: String,
    /// False for the header.
    wraps: bool,
}

/// The narrowest column a last cell wraps within; with less room it wraps below its row.
const MIN_WRAP: usize = 20;

impl Table {
    /// A table under a header row, which never wraps: it names the columns where they
    /// start.
    fn new(header: &[&str]) -> Table {
        let mut t = Table { rows: Vec::new() };
        t.push(
            header
                .iter()
                .map(|h| (h.to_string(), Paint::None))
                .collect(),
            false,
            String::new(),
        );
        t.rows[0].wraps = false;
        t
    }

    /// Adds a row; each cell is [`escape`]d here, before it is measured or painted.
    fn row(&mut self, cells: Vec<(String, Paint)>) {
        self.push(cells, false, "    ".into());
    }

    /// Adds a heading row (see [`Row::span`]); continuation lines start with `hang`.
    fn span(&mut self, cells: Vec<(String, Paint)>, hang: String) {
        self.push(cells, true, hang);
    }

    fn push(&mut self, cells: Vec<(String, Paint)>, span: bool, hang: String) {
        let cells = cells
            .into_iter()
            .map(|(text, paint)| (escape(&text).into_owned(), paint))
            .collect();
        self.rows.push(Row {
            cells,
            span,
            hang,
            wraps: true,
        });
    }

    fn render(&self, style: Style, width: Option<usize>, out: &mut String) {
        let cols = self.rows.iter().map(|r| r.cells.len()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|i| {
                self.rows
                    .iter()
                    .filter(|r| !(r.span && i == 0))
                    .filter_map(|r| r.cells.get(i))
                    .map(|(t, _)| t.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        // Where each column starts: the widths before it, three spaces apart.
        let starts: Vec<usize> = widths
            .iter()
            .scan(0, |at, w| {
                let start = *at;
                *at += w + 3;
                Some(start)
            })
            .collect();
        for r in &self.rows {
            let screen = width;
            let width = width.filter(|_| r.wraps);
            let lines = if r.span {
                span_lines(r, &starts, width)
            } else {
                row_lines(r, &widths, &starts, width)
            };
            for segments in lines.into_iter().flat_map(|l| fold(l, screen)) {
                let line: String = segments
                    .iter()
                    .map(|(text, paint)| style.paint(text, *paint))
                    .collect();
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
    }
}

/// One screen line as painted pieces.
type Line = Vec<(String, Paint)>;

/// A line wider than the screen folded at spaces, continuation lines indented by
/// [`FOLD_HANG`], so that a terminal shows every column instead of cutting the line at
/// its edge (a narrow screen cannot hold the header's columns side by side).
fn fold(line: Line, screen: Option<usize>) -> Vec<Line> {
    let text: String = line.iter().map(|(t, _)| t.as_str()).collect();
    let text = text.trim_end();
    let Some(w) = screen.filter(|w| text.chars().count() > *w && *w > FOLD_HANG.len() + 1) else {
        return vec![line];
    };
    wrap_ranges(text, w, w - FOLD_HANG.len())
        .into_iter()
        .enumerate()
        .map(|(k, range)| {
            let mut out = if k == 0 {
                Vec::new()
            } else {
                vec![(FOLD_HANG.to_string(), Paint::None)]
            };
            let mut piece = slice_pieces(&line, range);
            // The spaces a break fell after would start the continuation line.
            if k > 0 {
                if let Some((first, _)) = piece.first_mut() {
                    *first = first.trim_start().to_string();
                }
            }
            out.append(&mut piece);
            out
        })
        .collect()
}

/// What a folded line's continuation lines start with.
const FOLD_HANG: &str = "  ";

/// An ordinary row: its cells padded to their columns, the last one wrapped within its
/// column, or below the row (after `hang`) when the column has less than [`MIN_WRAP`].
fn row_lines(r: &Row, widths: &[usize], starts: &[usize], width: Option<usize>) -> Vec<Line> {
    let Some(((last, last_paint), head)) = r.cells.split_last() else {
        return vec![Vec::new()];
    };
    let mut first: Line = Vec::new();
    for (i, (text, paint)) in head.iter().enumerate() {
        first.push((text.clone(), *paint));
        first.push((
            " ".repeat(widths[i] - text.chars().count() + 3),
            Paint::None,
        ));
    }
    let start = starts.get(head.len()).copied().unwrap_or(0);
    let room = width.map(|w| w.saturating_sub(start));
    match room {
        Some(room) if last.chars().count() > room && room >= MIN_WRAP => {
            let mut lines = Vec::new();
            for (k, piece) in wrap(last, room, room).into_iter().enumerate() {
                let mut line = if k == 0 {
                    first.clone()
                } else {
                    // The hang keeps a tree's lines drawn; spaces up to the column.
                    let hang: String = r.hang.chars().take(start).collect();
                    let pad = start - hang.chars().count();
                    vec![(format!("{hang}{}", " ".repeat(pad)), Paint::None)]
                };
                line.push((piece, *last_paint));
                lines.push(line);
            }
            lines
        }
        Some(_) if start + last.chars().count() > width.unwrap_or(usize::MAX) => {
            let w = width.unwrap_or(usize::MAX);
            let hang = r.hang.chars().count();
            let mut lines = vec![first];
            for piece in wrap(last, w.saturating_sub(hang), w.saturating_sub(hang)) {
                lines.push(vec![(r.hang.clone(), Paint::None), (piece, *last_paint)]);
            }
            lines
        }
        _ => {
            first.push((last.clone(), *last_paint));
            vec![first]
        }
    }
}

/// A heading row: its first cell, then its last one from the last column's start (or
/// three spaces on when the first is longer), the whole wrapped at the width with
/// continuation lines after `hang`. Cells between are empty in every heading.
fn span_lines(r: &Row, starts: &[usize], width: Option<usize>) -> Vec<Line> {
    let Some((name, name_paint)) = r.cells.first() else {
        return vec![Vec::new()];
    };
    let last_start = starts
        .get(r.cells.len().saturating_sub(1))
        .copied()
        .unwrap_or(0);
    let mut pieces: Line = vec![(name.clone(), *name_paint)];
    if let Some((info, info_paint)) = r.cells.last().filter(|_| r.cells.len() > 1) {
        if !info.is_empty() {
            let len = name.chars().count();
            let gap = if len + 3 <= last_start {
                last_start - len
            } else {
                3
            };
            pieces.push((" ".repeat(gap), Paint::None));
            pieces.push((info.clone(), *info_paint));
        }
    }
    let text: String = pieces.iter().map(|(t, _)| t.as_str()).collect();
    let w = width.unwrap_or(usize::MAX);
    if text.chars().count() <= w {
        return vec![pieces];
    }
    let hang = r.hang.chars().count();
    let ranges = wrap_ranges(&text, w, w.saturating_sub(hang));
    ranges
        .into_iter()
        .enumerate()
        .map(|(k, range)| {
            let mut line = if k == 0 {
                Vec::new()
            } else {
                vec![(r.hang.clone(), Paint::None)]
            };
            line.extend(slice_pieces(&pieces, range));
            line
        })
        .collect()
}

/// The painted pieces covering characters `range` of their concatenation.
fn slice_pieces(pieces: &[(String, Paint)], range: std::ops::Range<usize>) -> Line {
    let mut out = Vec::new();
    let mut at = 0;
    for (text, paint) in pieces {
        let len = text.chars().count();
        let (from, to) = (range.start.max(at), range.end.min(at + len));
        if from < to {
            let part: String = text.chars().skip(from - at).take(to - from).collect();
            out.push((part, *paint));
        }
        at += len;
    }
    out
}

/// `text` wrapped at spaces into lines of at most `first` characters, then `rest`; a word
/// longer than a line is cut. Spaces at a break are dropped.
fn wrap(text: &str, first: usize, rest: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    wrap_ranges(text, first, rest)
        .into_iter()
        .map(|r| chars[r].iter().collect::<String>().trim_end().to_string())
        .collect()
}

/// The character ranges of [`wrap`]'s lines.
fn wrap_ranges(text: &str, first: usize, rest: usize) -> Vec<std::ops::Range<usize>> {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let mut lines = Vec::new();
    let mut start = 0;
    let mut limit = first.max(1);
    while start < n {
        if !lines.is_empty() {
            while start < n && chars[start] == ' ' {
                start += 1;
            }
            if start == n {
                break;
            }
        }
        if n - start <= limit {
            lines.push(start..n);
            break;
        }
        let end = start + limit;
        // `end < n` here, so `chars[end]` exists: a space there breaks the line exactly.
        match (start + 1..=end).rev().find(|&k| chars[k] == ' ') {
            Some(k) => {
                lines.push(start..k);
                start = k + 1;
            }
            None => {
                lines.push(start..end);
                start = end;
            }
        }
        limit = rest.max(1);
    }
    if lines.is_empty() {
        lines.push(0..0);
    }
    lines
}

/// `get rollouts -w`: one line per Rollout. Every column but NAME and STRATEGY comes from
/// the Rollout's status, one write of the controller, so a frame never pairs one version
/// with another's message: VERSION is `status.targetVersion`, and a `spec.version` the
/// controller has not seen yet is shown beside it, marked so. `width`: the screen's columns,
/// within which long messages wrap (`None`: no wrapping).
pub fn render_rollouts(
    rollouts: &[Rollout],
    all_namespaces: bool,
    width: Option<usize>,
    style: Style,
    now: DateTime<Utc>,
) -> String {
    let mut header = vec![
        "NAME",
        "STATUS",
        "STRATEGY",
        "STEP",
        "GATE",
        "DESIRED",
        "STAGED",
        "UPDATED",
        "AVAILABLE",
        "VERSION",
        "AGE",
        "MESSAGE",
    ];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut t = Table::new(&header);
    for r in rollouts {
        let st = r.status.clone().unwrap_or_default();
        let mut cells = vec![
            (r.metadata.name.clone(), Paint::None),
            (
                format!("{} {}", phase_symbol(st.phase), st.phase),
                phase_paint(st.phase),
            ),
            (strategy_name(r).into(), Paint::None),
            (step_text(r), Paint::None),
            (gate(r, now), Paint::None),
            (st.desired.to_string(), Paint::None),
            (st.staged.to_string(), Paint::None),
            (st.updated.to_string(), Paint::None),
            (st.available.to_string(), Paint::None),
            (elide_on_screen(&rollout_version(r), width), Paint::None),
            (
                super::output::age(r.metadata.creation_timestamp, now),
                Paint::None,
            ),
            (first_line(&st.message), Paint::None),
        ];
        if all_namespaces {
            let ns = r.namespace().unwrap_or(DEFAULT_NAMESPACE).to_string();
            cells.insert(0, (ns, Paint::None));
        }
        t.row(cells);
    }
    let mut out = String::new();
    if rollouts.is_empty() {
        out.push_str("No rollouts found.\n");
    } else {
        t.render(style, width, &mut out);
    }
    out
}

/// The widest a VERSION cell is drawn on a terminal; the MESSAGE below a row still
/// carries a long version whole.
const ELIDED_CELL: usize = 32;

/// `text` elided in the middle (`2.0.0-build.abc…89-build.a`) to [`ELIDED_CELL`]
/// characters on a screen; whole in a pipe (`width` `None`).
fn elide_on_screen(text: &str, width: Option<usize>) -> String {
    let n = text.chars().count();
    if width.is_none() || n <= ELIDED_CELL {
        return text.to_string();
    }
    let keep = ELIDED_CELL - 1;
    let head: String = text.chars().take(keep.div_ceil(2)).collect();
    let tail: String = text.chars().skip(n - keep / 2).collect();
    format!("{head}…{tail}")
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// What the detailed view draws besides its Rollout, read at one moment.
pub struct Scene<'a> {
    /// Any Instances; only those of the Rollout's Application (same namespace) are shown.
    pub instances: &'a [Instance],
    /// The Machines by name, and the time: a machine rollouts do not count (NotReady or
    /// cordoned) is marked in the tree, with why and since when.
    pub fleet: &'a Fleet,
    /// The screen's columns: long values and messages wrap within them (`None`: a pipe,
    /// no wrapping).
    pub width: Option<usize>,
}

/// The column values of `Label: value` lines start at.
const FIELD_INDENT: usize = 15;

/// `get rollout NAME -w`: the Rollout in detail, then its machines grouped by the
/// revision they run.
pub fn render_rollout(r: &Rollout, scene: &Scene, style: Style) -> String {
    let st = r.status.clone().unwrap_or_default();
    let mut out = String::new();
    // Values are escaped before they are painted: the paint is the only escape
    // sequence a field may carry. A long value wraps under itself.
    let room = scene
        .width
        .map(|w| w.saturating_sub(FIELD_INDENT).max(MIN_WRAP));
    let mut painted = |label: &str, value: &str, paint: Paint| {
        let value = escape(value);
        let pieces = match room {
            Some(room) => wrap(&value, room, room),
            None => vec![value.into_owned()],
        };
        for (k, piece) in pieces.iter().enumerate() {
            let label = if k == 0 {
                format!("{label}:")
            } else {
                String::new()
            };
            out.push_str(&format!(
                "{label:<FIELD_INDENT$}{}\n",
                style.paint(piece, paint)
            ));
        }
    };
    painted("Name", &r.metadata.name, Paint::Bold);
    painted(
        "Namespace",
        r.namespace().unwrap_or(DEFAULT_NAMESPACE),
        Paint::None,
    );
    painted("Application", &r.spec.application, Paint::None);
    painted(
        "Status",
        &format!("{} {}", phase_symbol(st.phase), st.phase),
        phase_paint(st.phase),
    );
    let mut field = |label: &str, value: String| painted(label, &value, Paint::None);
    if !st.message.is_empty() {
        field("Message", first_line(&st.message));
    }
    field("Strategy", strategy_name(r).into());
    let steps = &r.spec.strategy.steps;
    if !steps.is_empty() {
        let idx = st.current_step_index.map(|i| i as usize);
        let what = match idx.and_then(|i| steps.get(i)) {
            // Beside the step's wanted count, the machines on the target now, as Argo
            // shows its actual weight beside the set one.
            Some(s) => match s.machines_wanted(st.desired) {
                Some(want) => format!(
                    " ({}: {want} machine(s) wanted, {} on the target)",
                    describe_step(s),
                    st.updated
                ),
                None => format!(" ({})", describe_step(s)),
            },
            None if idx.is_some() => " (all steps done)".into(),
            None => String::new(),
        };
        field("  Step", format!("{}{what}", step_text(r)));
    }
    if let Some(a) = super::analysis::running_summary(&st.analysis_runs) {
        field("  Analysis", a);
    }
    field("  Gate", gate(r, scene.fleet.now));
    let (slots, min_staged) = resolved(r, &st);
    field(
        "  Slots",
        format!(
            "{}/{slots} busy (maxUnavailable {})",
            st.unavailable, r.spec.strategy.max_unavailable
        ),
    );
    field(
        "  MinStaged",
        format!("{min_staged} (minStaged {})", r.spec.strategy.min_staged),
    );
    if let Some(waves) = super::topology::waves_line(r, scene.fleet.now) {
        field("  Waves", waves);
    }
    if let Some(deps) = super::topology::depends_line(r) {
        field("  DependsOn", deps);
    }
    // The target is the version the status describes; a version asked for that the
    // controller has not seen yet is listed apart, so the rest of the frame (counts,
    // tree) is never read as describing it.
    let asked = r.spec.version.clone();
    let target = st.target_version.clone().unwrap_or_else(|| asked.clone());
    let stable = st.stable_version.clone();
    let mut tags = Vec::new();
    if stable.as_deref() == Some(target.as_str()) {
        tags.push("stable");
    }
    tags.push("target");
    let mut versions = vec![format!("{target} ({})", tags.join(", "))];
    if asked != target {
        versions.push(format!("{asked} (not yet observed)"));
    }
    if let Some(s) = stable.as_ref().filter(|s| **s != target) {
        versions.push(format!("{s} (stable)"));
    }
    field("Versions", versions.join(", "));
    out.push_str("Machines:\n");
    let mut count = |label: &str, n: u32, paint: Paint| {
        let v = n.to_string();
        let v = if n > 0 { style.paint(&v, paint) } else { v };
        out.push_str(&format!("  {:<13}{v}\n", format!("{label}:")));
    };
    count("Desired", st.desired, Paint::None);
    count("Staged", st.staged, Paint::None);
    count("Updated", st.updated, Paint::None);
    count("Available", st.available, Paint::None);
    count("Unavailable", st.unavailable, Paint::Yellow);
    count("Failed", st.failed, Paint::Red);
    out.push('\n');
    tree(r, &st, &target, stable.as_deref(), scene, style, &mut out);
    out
}

/// One group of the tree: a revision (or a version outside history) and its machines.
struct Group<'a> {
    name: String,
    info: String,
    members: Vec<&'a Instance>,
}

/// Revision → machine → instance phase, newest revision first, as `kubectl argo
/// rollouts get rollout` draws ReplicaSets and Pods.
fn tree(
    r: &Rollout,
    st: &RolloutStatus,
    target: &str,
    stable: Option<&str>,
    scene: &Scene,
    style: Style,
    out: &mut String,
) {
    let mut mine: Vec<&Instance> = scene
        .instances
        .iter()
        .filter(|i| {
            i.spec.application == r.spec.application
                && i.namespace().unwrap_or(DEFAULT_NAMESPACE)
                    == r.namespace().unwrap_or(DEFAULT_NAMESPACE)
        })
        .collect();
    mine.sort_by(|a, b| a.spec.machine.cmp(&b.spec.machine));
    let groups = groups(st, target, stable, &mine);

    let mut t = Table::new(&["NAME", "STATUS", "INFO"]);
    t.row(vec![
        (format!("⟳ {}", r.metadata.name), Paint::Bold),
        (
            format!("{} {}", phase_symbol(st.phase), st.phase),
            phase_paint(st.phase),
        ),
        (String::new(), Paint::None),
    ]);
    let last_group = groups.len().saturating_sub(1);
    for (g, group) in groups.iter().enumerate() {
        let (branch, indent) = if g == last_group {
            ("└──", "   ")
        } else {
            ("├──", "│  ")
        };
        let hang = if group.members.is_empty() {
            format!("{indent}     ")
        } else {
            format!("{indent}│    ")
        };
        t.span(
            vec![
                (format!("{branch}{}", group.name), Paint::None),
                (String::new(), Paint::None),
                (group.info.clone(), Paint::Dim),
            ],
            hang,
        );
        let last_member = group.members.len().saturating_sub(1);
        for (m, i) in group.members.iter().enumerate() {
            let (twig, under) = if m == last_member {
                ("└──", "   ")
            } else {
                ("├──", "│  ")
            };
            let (status, info) = machine_cells(i, target, scene.fleet);
            t.push(
                vec![
                    (format!("{indent}{twig}□ {}", i.spec.machine), Paint::None),
                    status,
                    info,
                ],
                false,
                format!("{indent}{under}    "),
            );
        }
    }
    if mine.is_empty() {
        t.row(vec![
            ("└──(no machines)".into(), Paint::Dim),
            (String::new(), Paint::None),
            (String::new(), Paint::None),
        ]);
    }
    t.render(style, scene.width, out);
}

/// The tree's groups, newest first: every revision in history that is the target, the
/// stable version, or run by a machine (only the newest revision of a version: after an
/// undo, revisions 3 and 1 of one version are one group); then versions outside history;
/// then machines with no version.
fn groups<'a>(
    st: &RolloutStatus,
    target: &str,
    stable: Option<&str>,
    mine: &[&'a Instance],
) -> Vec<Group<'a>> {
    // The version each machine runs now (what `current` points at on disk).
    let running = |i: &Instance| i.status.as_ref().and_then(|s| s.current_version.clone());
    let mut groups = Vec::new();
    let mut placed = vec![false; mine.len()];
    let mut seen = std::collections::BTreeSet::new();
    for rev in st.history.iter().rev() {
        if !seen.insert(rev.version.as_str()) {
            continue;
        }
        let mut members = Vec::new();
        for (k, i) in mine.iter().enumerate() {
            if !placed[k] && running(i).as_deref() == Some(rev.version.as_str()) {
                placed[k] = true;
                members.push(*i);
            }
        }
        let mut tags = Vec::new();
        if rev.version == target {
            tags.push("target");
        }
        if Some(rev.version.as_str()) == stable {
            tags.push("stable");
        }
        if members.is_empty() && tags.is_empty() {
            continue;
        }
        let mut info = tags.join(", ");
        if !rev.result.is_empty() {
            if !info.is_empty() {
                info.push_str(", ");
            }
            info.push_str(&rev.result.to_lowercase());
        }
        groups.push(Group {
            name: format!("# revision:{} {}", rev.revision, rev.version),
            info,
            members,
        });
    }
    let mut others: BTreeMap<Option<String>, Vec<&Instance>> = BTreeMap::new();
    for (k, i) in mine.iter().enumerate() {
        if !placed[k] {
            others.entry(running(i)).or_default().push(*i);
        }
    }
    // `None` sorts first in a BTreeMap; the machines without a version go last.
    let none = others.remove(&None);
    for (v, members) in others {
        let v = v.unwrap_or_default();
        groups.push(Group {
            name: format!("# version {v}"),
            info: String::new(),
            members,
        });
    }
    if let Some(members) = none {
        groups.push(Group {
            name: "# no version yet".into(),
            info: String::new(),
            members,
        });
    }
    groups
}

/// A machine's STATUS and INFO cells. A machine rollouts do not count shows that first,
/// in place of a phase its agent may no longer be there to change: `✖ NotReady` with
/// `not counted: NotReady: agent lease expired 40s ago; last reported Running, healthy`,
/// or `⊘ Cordoned` with what it runs.
fn machine_cells(i: &Instance, target: &str, fleet: &Fleet) -> ((String, Paint), (String, Paint)) {
    let phase = i.status.as_ref().map(|s| s.phase).unwrap_or_default();
    let (info, info_paint) = instance_info(i, target);
    let Some(n) = fleet.not_counted(&i.spec.machine) else {
        let (sym, paint) = instance_symbol(phase);
        return ((format!("{sym} {phase}"), paint), (info, info_paint));
    };
    let (status, paint, last) = if n.not_ready.is_some() {
        ("✖ NotReady", Paint::Red, format!("last reported {phase}"))
    } else {
        ("⊘ Cordoned", Paint::Yellow, phase.to_string())
    };
    let mut text = format!("not counted: {}; {last}", n.text());
    if !info.is_empty() {
        text.push_str(", ");
        text.push_str(&info);
    }
    ((status.into(), paint), (text, paint))
}

/// What a machine is doing beyond its phase; its last error wins, being what a person
/// needs first.
pub fn instance_info(i: &Instance, target: &str) -> (String, Paint) {
    let Some(s) = i.status.as_ref() else {
        return ("no status yet".into(), Paint::Dim);
    };
    if let Some(f) = &s.failure {
        return (
            format!(
                "{} {} failed: {}: {}",
                f.operation,
                f.version,
                f.reason,
                first_line(&f.message)
            ),
            Paint::Red,
        );
    }
    let mut parts = Vec::new();
    let current = s.current_version.as_deref();
    if let Some(want) = i.spec.current.as_deref() {
        if current != Some(want) {
            parts.push(format!("switching to {want}"));
        }
    }
    if current != Some(target) {
        if s.staged_versions.iter().any(|v| v == target) {
            parts.push(format!("{target} staged"));
        } else if i.spec.staged.iter().any(|v| v.version == target) {
            parts.push(format!("staging {target}"));
        }
    }
    if current.is_some() {
        parts.push(if s.healthy { "healthy" } else { "unhealthy" }.into());
        if s.available {
            parts.push("available".into());
        }
    }
    (parts.join(", "), Paint::None)
}

/// How often a terminal's frame is redrawn with nothing changed, so that its ages move.
const AGE_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// What `watch` shows and how.
pub struct WatchOptions {
    pub scope: Scope,
    /// One name: the detailed view with its machines; none or several: one line each.
    pub names: Vec<String>,
    pub selector: LabelSelector,
    pub all_namespaces: bool,
    /// `--no-color`.
    pub no_color: bool,
}

/// Where frames go and how.
pub struct Screen<W> {
    pub out: W,
    /// Redraw in place with ANSI cursor codes; otherwise print each changed frame.
    pub terminal: bool,
    pub style: Style,
}

/// Prints the live view to stdout until Ctrl-C or SIGTERM.
pub async fn watch(client: &Client, opts: WatchOptions) -> anyhow::Result<i32> {
    let terminal = std::io::stdout().is_terminal();
    let screen = Screen {
        out: std::io::stdout(),
        terminal,
        style: Style::decide(opts.no_color, std::env::var_os("NO_COLOR"), terminal),
    };
    watch_into(client, &opts, screen, shutdown_signal()).await
}

/// Prints the live view until `shutdown` resolves or the watch ends. On a terminal each
/// frame replaces the last in place; elsewhere each changed frame is printed as a plain
/// block followed by a blank line. Returns the exit code.
pub async fn watch_into<W: Write>(
    client: &Client,
    opts: &WatchOptions,
    mut screen: Screen<W>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<i32> {
    let style = screen.style;
    let single = (opts.names.len() == 1).then(|| opts.names[0].clone());
    let wants = |r: &Rollout| {
        (opts.names.is_empty() || opts.names.iter().any(|n| n == r.name()))
            && opts.selector.matches(&r.metadata.labels)
    };
    let mut rollouts_stream = client.list_watch::<Rollout>(opts.scope.clone());
    // Instances and Machines only matter for the per-machine tree of one named Rollout.
    let (mut instance_stream, mut machine_stream) = match single {
        Some(_) => (
            client.list_watch::<Instance>(opts.scope.clone()),
            client.list_watch::<Machine>(Scope::All),
        ),
        None => (
            futures::stream::pending().boxed(),
            futures::stream::pending().boxed(),
        ),
    };
    let mut rollouts: BTreeMap<String, Rollout> = BTreeMap::new();
    let mut instances: BTreeMap<String, Instance> = BTreeMap::new();
    let mut machines: BTreeMap<String, Machine> = BTreeMap::new();
    // Whether each stream has delivered its first list; nothing is drawn before all have.
    let mut listed = [false, single.is_none(), single.is_none()];
    let mut last_frame = String::new();
    if screen.terminal {
        // Clear once; later frames overwrite from the top-left corner.
        write!(screen.out, "\x1b[2J")?;
    }
    // On a terminal the frame is redrawn now and then with nothing changed, so that
    // "lease expired 40s ago" keeps counting; a pipe gets a block per change only.
    let mut tick = tokio::time::interval(AGE_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            ev = rollouts_stream.next() => match ev {
                None => return Ok(0),
                Some(Err(e)) if !listed[0] => return Err(e.into()),
                Some(Err(e)) => tracing::warn!(error = %e, "rollout watch interrupted; resuming"),
                Some(Ok(ev)) => {
                    listed[0] = true;
                    apply_event(&mut rollouts, ev);
                }
            },
            ev = instance_stream.next() => match ev {
                None => return Ok(0),
                Some(Err(e)) if !listed[1] => return Err(e.into()),
                Some(Err(e)) => tracing::warn!(error = %e, "instance watch interrupted; resuming"),
                Some(Ok(ev)) => {
                    listed[1] = true;
                    apply_event(&mut instances, ev);
                }
            },
            ev = machine_stream.next() => match ev {
                None => return Ok(0),
                Some(Err(e)) if !listed[2] => return Err(e.into()),
                Some(Err(e)) => tracing::warn!(error = %e, "machine watch interrupted; resuming"),
                Some(Ok(ev)) => {
                    listed[2] = true;
                    apply_event(&mut machines, ev);
                }
            },
            _ = tick.tick(), if screen.terminal => {}
            _ = &mut shutdown => return Ok(0),
        }
        if !listed.iter().all(|l| *l) {
            continue;
        }
        // The screen's size first: the frame wraps its long lines within it.
        let size = if screen.terminal {
            crossterm::terminal::size()
                .ok()
                .map(|(cols, rows)| (cols as usize, rows as usize))
        } else {
            None
        };
        let width = size.map(|(cols, _)| cols);
        let shown: Vec<Rollout> = rollouts.values().filter(|r| wants(r)).cloned().collect();
        let frame = match &single {
            Some(name) => match shown.first() {
                Some(r) => {
                    let all: Vec<Instance> = instances.values().cloned().collect();
                    let fleet = Fleet {
                        now: chrono::Utc::now(),
                        machines: machines.clone(),
                    };
                    let scene = Scene {
                        instances: &all,
                        fleet: &fleet,
                        width,
                    };
                    render_rollout(r, &scene, style)
                }
                None => format!("rollout {name:?} not found; waiting for it to appear\n"),
            },
            None => render_rollouts(
                &shown,
                opts.all_namespaces,
                width,
                style,
                chrono::Utc::now(),
            ),
        };
        if frame == last_frame {
            continue;
        }
        let text = if screen.terminal {
            // Home, each line cleared to its end, then the rest of the screen cleared.
            // A frame taller or wider than the screen would scroll and break the redraw.
            let body = fit(&frame, size);
            format!("\x1b[H{body}\x1b[J")
        } else {
            format!("{frame}\n")
        };
        match screen
            .out
            .write_all(text.as_bytes())
            .and_then(|()| screen.out.flush())
        {
            // The reader went away (`| head`): done, as `kubectl get -w` is.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
            other => other?,
        }
        last_frame = frame;
    }
}

/// The frame cut to the screen, each line ending with clear-to-end-of-line: lines cut to
/// `cols` visible characters (escape codes do not count), and when the frame is taller
/// than `rows`, its first lines and a last one saying how many were left out.
fn fit(frame: &str, screen: Option<(usize, usize)>) -> String {
    let (cols, rows) = screen.unwrap_or((usize::MAX, usize::MAX));
    let lines: Vec<&str> = frame.lines().collect();
    let room = rows.max(2) - 1; // the cursor's last line stays empty, or the screen scrolls
    let (shown, hidden) = if lines.len() > room {
        (&lines[..room - 1], lines.len() - (room - 1))
    } else {
        (&lines[..], 0)
    };
    let mut out = String::new();
    for l in shown {
        out.push_str(&cut(l, cols));
        out.push_str("\x1b[K\n");
    }
    if hidden > 0 {
        let note =
            format!("… {hidden} more line(s); widen the terminal or use `deployctl describe`");
        out.push_str(&cut(&note, cols));
        out.push_str("\x1b[K\n");
    }
    out
}

/// `line` cut to `cols` visible characters; SGR codes (`ESC [ … m`) are kept and cost
/// nothing, and a cut line resets colour.
fn cut(line: &str, cols: usize) -> String {
    let mut out = String::new();
    let mut visible = 0;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            out.push(c);
            for e in chars.by_ref() {
                out.push(e);
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        if visible == cols {
            out.push_str("\x1b[0m");
            return out;
        }
        visible += 1;
        out.push(c);
    }
    out
}

fn apply_event<K: Object>(cache: &mut BTreeMap<String, K>, ev: ObjectEvent<K>) {
    match ev {
        ObjectEvent::Applied(o) => {
            cache.insert(o.meta().key(), o);
        }
        ObjectEvent::Deleted(o) => {
            cache.remove(&o.meta().key());
        }
        ObjectEvent::Restarted(items) => {
            *cache = items.into_iter().map(|o| (o.meta().key(), o)).collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        Condition, ConditionStatus, FailureAction, InstanceFailure, InstanceSpec, InstanceStatus,
        IntOrPercent, MachineFailure, PauseCondition, PauseStep, Revision, RolloutSpec, VersionRef,
    };
    use chrono::{DateTime, TimeZone, Utc};
    use std::path::PathBuf;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_790_000_000 + secs, 0)
            .single()
            .expect("a fixed, valid timestamp")
    }

    /// Compares with `tests/snapshots/view/<name>.txt`; `DEPLOYCTL_BLESS=1` rewrites it.
    fn check(name: &str, got: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/snapshots/view")
            .join(format!("{name}.txt"));
        if std::env::var_os("DEPLOYCTL_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().expect("the path has a folder"))
                .expect("can create tests/snapshots/view");
            std::fs::write(&path, got).expect("can write the snapshot");
            return;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != got {
            let diff = similar::TextDiff::from_lines(want.as_str(), got);
            panic!(
                "snapshot {} differs (- stored, + rendered); if the change is wanted, refresh with: \
                 DEPLOYCTL_BLESS=1 cargo test view::\n{}",
                path.display(),
                diff.unified_diff().context_radius(2)
            );
        }
    }

    /// The detailed view of `r` over `insts`, every machine Ready, drawn for a pipe.
    fn detail(r: &Rollout, insts: &[Instance], style: Style) -> String {
        let fleet = Fleet::at(at(200));
        let scene = Scene {
            instances: insts,
            fleet: &fleet,
            width: None,
        };
        render_rollout(r, &scene, style)
    }

    fn rollout(version: &str, status: Option<RolloutStatus>) -> Rollout {
        let mut r = Rollout::new(
            "api",
            RolloutSpec {
                application: "api".into(),
                version: version.into(),
                ..Default::default()
            },
        );
        r.metadata.creation_timestamp = Some(at(0));
        r.status = status;
        r
    }

    fn canary(r: &mut Rollout) {
        r.spec.strategy.max_unavailable = IntOrPercent::Percent("40%".into());
        r.spec.strategy.steps = vec![
            Step {
                set_weight: Some(20),
                ..Default::default()
            },
            Step {
                pause: Some(PauseStep { duration: None }),
                ..Default::default()
            },
            Step {
                set_weight: Some(60),
                ..Default::default()
            },
            Step {
                pause: Some(PauseStep {
                    duration: Some("5m".into()),
                }),
                ..Default::default()
            },
        ];
    }

    fn history(versions: &[(&str, &str)]) -> Vec<Revision> {
        versions
            .iter()
            .enumerate()
            .map(|(i, (v, result))| Revision {
                revision: i as u32 + 1,
                version: v.to_string(),
                sha256: None,
                started_at: at(i as i64 * 100),
                completed_at: (!result.is_empty()).then(|| at(i as i64 * 100 + 50)),
                result: result.to_string(),
            })
            .collect()
    }

    fn status(phase: RolloutPhase, message: &str, counts: [u32; 6]) -> RolloutStatus {
        let [desired, staged, updated, available, unavailable, failed] = counts;
        RolloutStatus {
            observed_generation: 2,
            phase,
            message: message.into(),
            stable_version: Some("1.0".into()),
            target_version: Some("2.0".into()),
            desired,
            staged,
            updated,
            available,
            unavailable,
            failed,
            history: history(&[("1.0", "Complete"), ("2.0", "")]),
            conditions: vec![Condition {
                type_: "Progressing".into(),
                status: ConditionStatus::True,
                reason: "RolloutProgressing".into(),
                message: message.into(),
                last_transition_time: Some(at(100)),
            }],
            ..Default::default()
        }
    }

    /// One Instance of `api` on `machine`: running `current`, with `staged` on disk.
    fn inst(
        machine: &str,
        phase: InstancePhase,
        current: Option<&str>,
        staged: &[&str],
    ) -> Instance {
        let mut i = Instance::new(
            &Instance::name_for("api", machine),
            InstanceSpec {
                machine: machine.into(),
                application: "api".into(),
                current: current.map(str::to_string),
                staged: staged
                    .iter()
                    .map(|v| VersionRef {
                        version: v.to_string(),
                        sha256: None,
                    })
                    .collect(),
                ..Default::default()
            },
        );
        i.status = Some(InstanceStatus {
            observed_generation: 1,
            phase,
            current_version: current.map(str::to_string),
            staged_versions: staged.iter().map(|v| v.to_string()).collect(),
            healthy: phase == InstancePhase::Running,
            available: phase == InstancePhase::Running,
            ..Default::default()
        });
        i
    }

    fn wants(i: &mut Instance, version: &str) {
        i.spec.current = Some(version.into());
    }

    fn fail(i: &mut Instance, operation: &str, reason: &str, message: &str) {
        let s = i.status.as_mut().expect("fixtures always have a status");
        s.phase = InstancePhase::Failed;
        s.healthy = false;
        s.available = false;
        s.failure = Some(InstanceFailure {
            version: "2.0".into(),
            operation: operation.into(),
            reason: reason.into(),
            message: message.into(),
            time: at(150),
        });
    }

    fn fleet_on_stable() -> Vec<Instance> {
        (1..=5)
            .map(|m| {
                inst(
                    &format!("web-{m}"),
                    InstancePhase::Running,
                    Some("1.0"),
                    &["1.0"],
                )
            })
            .collect()
    }

    /// Text with every kind of control character a hostile status could carry.
    const HOSTILE: &str = "\x1b[2J\x1b]0;owned\x07\r\u{9b}1m\u{202e}\x7f";

    /// What remains of `text` once the view's own paint codes are removed.
    fn without_paint(text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find("\x1b[") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if after[digits..].starts_with('m') {
                rest = &after[digits + 1..];
            } else {
                // Not a paint code: keep it, so that the test sees it.
                out.push_str("\x1b[");
                rest = after;
            }
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn view_should_escape_control_characters_in_values_from_the_store() {
        let mut st = status(
            RolloutPhase::Degraded,
            &format!("bad{HOSTILE}"),
            [2, 1, 1, 0, 1, 1],
        );
        st.history = history(&[("1.0", "Complete"), (&format!("2.0{HOSTILE}"), "")]);
        st.abort_reason = Some(format!("why{HOSTILE}"));
        st.aborted = true;
        let mut r = rollout(&format!("2.0{HOSTILE}"), Some(st));
        r.metadata.name = format!("api{HOSTILE}");
        r.spec.application = format!("api{HOSTILE}");
        let mut insts = vec![
            inst("web-1", InstancePhase::Running, Some("1.0"), &["1.0"]),
            inst(
                &format!("web-2{HOSTILE}"),
                InstancePhase::Running,
                Some("9\x1b"),
                &[],
            ),
        ];
        for i in &mut insts {
            i.spec.application = r.spec.application.clone();
        }
        fail(
            &mut insts[0],
            "stage",
            "HookFailed",
            &format!("exit 3{HOSTILE}\nsecond"),
        );
        for style in [Style::PLAIN, Style::COLOR] {
            for frame in [
                detail(&r, &insts, style),
                render_rollouts(std::slice::from_ref(&r), true, None, style, at(0)),
            ] {
                let bare = without_paint(&frame);
                for raw in ['\x1b', '\x07', '\r', '\u{9b}', '\u{202e}', '\x7f'] {
                    assert!(!bare.contains(raw), "{raw:?} reached the frame:\n{frame}");
                }
                assert!(
                    bare.contains(r"\e[2J\e]0;owned\a\r\u{9b}1m\u{202e}\u{7f}"),
                    "{bare}"
                );
            }
        }
        let detail = detail(&r, &insts, Style::PLAIN);
        for want in [
            "Name:          api\\e[2J",
            "Message:       bad\\e[2J",
            "rolled back (why\\e[2J",
            "□ web-2\\e[2J",
            "failed: HookFailed: exit 3\\e[2J",
        ] {
            assert!(detail.contains(want), "{want:?} not in\n{detail}");
        }
    }

    #[test]
    fn view_should_render_a_pending_rollout() {
        let r = rollout("2.0", None);
        let mut insts = vec![inst("web-1", InstancePhase::Pending, None, &[])];
        insts[0].status = None;
        check("pending", &detail(&r, &insts, Style::PLAIN));
    }

    #[test]
    fn view_should_render_progressing_waiting_for_stage() {
        let r = rollout(
            "2.0",
            Some(status(
                RolloutPhase::Progressing,
                "waiting for staged 3/5 (minStaged) before any switch",
                [5, 3, 0, 0, 0, 0],
            )),
        );
        let mut insts = fleet_on_stable();
        for (k, i) in insts.iter_mut().enumerate() {
            i.spec.staged.push(VersionRef {
                version: "2.0".into(),
                sha256: None,
            });
            if k < 3 {
                i.status
                    .as_mut()
                    .expect("fixtures have a status")
                    .staged_versions
                    .push("2.0".into());
            } else {
                i.status.as_mut().expect("fixtures have a status").phase = InstancePhase::Staging;
            }
        }
        let out = detail(&r, &insts, Style::PLAIN);
        assert!(out.contains("Gate:        waiting for staged 3/5"), "{out}");
        check("progressing_waiting_for_stage", &out);
    }

    #[test]
    fn view_should_render_progressing_with_busy_slots() {
        let mut st = status(
            RolloutPhase::Progressing,
            "switching: slots 2/2 busy, 1/5 available on 2.0",
            [5, 5, 3, 1, 2, 0],
        );
        st.current_step_index = Some(2);
        let mut r = rollout("2.0", Some(st));
        canary(&mut r);
        let mut insts = fleet_on_stable();
        for i in insts.iter_mut() {
            i.status
                .as_mut()
                .expect("fixtures have a status")
                .staged_versions
                .push("2.0".into());
        }
        insts[0] = inst(
            "web-1",
            InstancePhase::Running,
            Some("2.0"),
            &["1.0", "2.0"],
        );
        insts[1] = inst(
            "web-2",
            InstancePhase::Verifying,
            Some("2.0"),
            &["1.0", "2.0"],
        );
        insts[1].status.as_mut().expect("set above").healthy = true;
        wants(&mut insts[2], "2.0");
        insts[2].status.as_mut().expect("set above").phase = InstancePhase::Switching;
        insts[2].status.as_mut().expect("set above").available = false;
        let out = detail(&r, &insts, Style::PLAIN);
        assert!(out.contains("slots 2/2 busy"), "{out}");
        assert!(
            out.contains("Step:        3/4 (setWeight 60%: 3 machine(s) wanted, 3 on the target)"),
            "{out}"
        );
        check("progressing_slots_busy", &out);
    }

    #[test]
    fn view_should_render_waves_done_baking_and_waiting_and_dependencies() {
        let mut st = status(
            RolloutPhase::Progressing,
            "wave 1/3 (zone=a) done, baking 4m left",
            [5, 5, 2, 2, 0, 0],
        );
        let wave = |value: &str, phase: &str, machines, available, until: Option<i64>| {
            crate::api::WaveStatus {
                value: value.into(),
                version: "2.0".into(),
                phase: phase.into(),
                machines,
                available,
                done_at: None,
                bake_until: until.map(at),
            }
        };
        st.waves = vec![
            wave("a", "Baking", 2, 2, Some(200 + 245)),
            wave("b", "Waiting", 2, 0, None),
            wave("c", "Waiting", 1, 0, None),
        ];
        let mut r = rollout("2.0", Some(st));
        r.spec.strategy.waves = Some(crate::api::Waves {
            label_key: "zone".into(),
            order: vec!["a".into(), "b".into(), "c".into()],
            bake: Some("10m".into()),
            ..Default::default()
        });
        r.spec.depends_on = vec![crate::api::Dependency {
            rollout: "db".into(),
            namespace: None,
        }];
        let out = detail(&r, &fleet_on_stable(), Style::PLAIN);
        assert!(
            out.contains("Waves:       zone: a baking 4m left (2/2), b waiting (0/2), c waiting (0/1) [bake 10m]"),
            "{out}"
        );
        assert!(out.contains("DependsOn:   db"), "{out}");
        check("progressing_waves", &out);
    }

    #[test]
    fn view_should_render_paused_at_a_step() {
        let mut st = status(
            RolloutPhase::Paused,
            "paused at step 2/4: `deployctl rollout promote` continues",
            [5, 5, 1, 1, 0, 0],
        );
        st.current_step_index = Some(1);
        st.pause_conditions = vec![PauseCondition {
            reason: PAUSE_STEP.into(),
            start_time: at(120),
            until: None,
        }];
        let mut r = rollout("2.0", Some(st));
        canary(&mut r);
        let mut insts = fleet_on_stable();
        insts[0] = inst(
            "web-1",
            InstancePhase::Running,
            Some("2.0"),
            &["1.0", "2.0"],
        );
        let out = detail(&r, &insts, Style::PLAIN);
        assert!(out.contains("paused at step 2/4 until promoted"), "{out}");
        check("paused_at_step", &out);
    }

    #[test]
    fn view_should_render_paused_by_user() {
        let mut r = rollout(
            "2.0",
            Some(status(
                RolloutPhase::Paused,
                "paused by user: `deployctl rollout resume` continues",
                [5, 5, 2, 2, 0, 0],
            )),
        );
        r.spec.paused = true;
        let mut insts = fleet_on_stable();
        insts[0] = inst(
            "web-1",
            InstancePhase::Running,
            Some("2.0"),
            &["1.0", "2.0"],
        );
        insts[1] = inst(
            "web-2",
            InstancePhase::Running,
            Some("2.0"),
            &["1.0", "2.0"],
        );
        let out = detail(&r, &insts, Style::PLAIN);
        assert!(out.contains("Status:        ॥ Paused"), "{out}");
        assert!(out.contains("Gate:        paused by user"), "{out}");
        check("paused_by_user", &out);
    }

    #[test]
    fn view_should_render_degraded_with_failed_machines() {
        let mut st = status(
            RolloutPhase::Degraded,
            "2 machine(s) failed version 2.0: web-2: HookFailed: exit status 3",
            [5, 5, 2, 0, 2, 2],
        );
        st.pause_conditions = vec![PauseCondition {
            reason: PAUSE_FAILURE.into(),
            start_time: at(150),
            until: None,
        }];
        st.failed_machines = vec![MachineFailure {
            machine: "web-2".into(),
            version: "2.0".into(),
            operation: "Switch".into(),
            message: "HookFailed: exit status 3".into(),
            time: at(150),
        }];
        let mut r = rollout("2.0", Some(st));
        r.spec.strategy.max_unavailable = IntOrPercent::Int(2);
        let mut insts = fleet_on_stable();
        insts[1] = inst(
            "web-2",
            InstancePhase::Running,
            Some("2.0"),
            &["1.0", "2.0"],
        );
        fail(
            &mut insts[1],
            "Switch",
            "HookFailed",
            "exit status 3\nsecond line",
        );
        insts[2] = inst(
            "web-3",
            InstancePhase::Running,
            Some("2.0"),
            &["1.0", "2.0"],
        );
        fail(
            &mut insts[2],
            "Health",
            "HealthDeadline",
            "http://127.0.0.1:8080/health: connection refused",
        );
        let out = detail(&r, &insts, Style::PLAIN);
        assert!(
            out.contains("Switch 2.0 failed: HookFailed: exit status 3"),
            "the last error shows: {out}"
        );
        assert!(!out.contains("second line"), "{out}");
        check("degraded_failed_machines", &out);
    }

    #[test]
    fn view_should_render_rolling_back() {
        let mut st = status(
            RolloutPhase::RollingBack,
            "rolling back to 1.0: 2 machine(s) still on 2.0",
            [5, 5, 2, 0, 1, 1],
        );
        st.aborted = true;
        st.abort_reason = Some("RolledBack".into());
        let mut r = rollout("2.0", Some(st));
        r.spec.failure_policy.action = FailureAction::Rollback;
        let mut insts = fleet_on_stable();
        insts[0] = inst(
            "web-1",
            InstancePhase::Running,
            Some("2.0"),
            &["1.0", "2.0"],
        );
        wants(&mut insts[0], "1.0");
        insts[0].status.as_mut().expect("set above").phase = InstancePhase::Switching;
        insts[0].status.as_mut().expect("set above").available = false;
        insts[1] = inst(
            "web-2",
            InstancePhase::Running,
            Some("2.0"),
            &["1.0", "2.0"],
        );
        fail(
            &mut insts[1],
            "Health",
            "HealthDeadline",
            "unhealthy for 60s",
        );
        let out = detail(&r, &insts, Style::PLAIN);
        assert!(out.contains("↺ RollingBack"), "{out}");
        assert!(out.contains("switching to 1.0"), "{out}");
        check("rolling_back", &out);
    }

    /// `text` as one line: wrapped lines joined, the tree's lines and indents dropped.
    fn unwrapped(text: &str) -> String {
        text.lines()
            .map(|l| l.trim_start_matches(['│', ' ']))
            .collect::<Vec<_>>()
            .join(" ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A Machine named `name`, Ready or not since `secs` before `at(200)`, maybe cordoned.
    fn machine(name: &str, ready: bool, cordoned: bool, secs: i64) -> Machine {
        let mut m = Machine::new(name, Default::default());
        m.spec.unschedulable = cordoned;
        let mut st = crate::api::MachineStatus::default();
        let (status, reason) = if ready {
            (ConditionStatus::True, "AgentLeaseAlive")
        } else {
            (ConditionStatus::False, "AgentLeaseExpired")
        };
        crate::api::set_condition(
            &mut st.conditions,
            "Ready",
            status,
            reason,
            "",
            at(200 - secs),
        );
        m.status = Some(st);
        m
    }

    /// A rollout of a 128-character version with long messages, over five machines: one
    /// failed with a long message, one NotReady, one cordoned.
    fn long_scene() -> (Rollout, Vec<Instance>, Fleet) {
        let long = format!("2.0.0-{}", "build.abcdef0123456789-".repeat(6));
        let long = format!("{long:x<128}")[..128].to_string();
        assert_eq!(long.chars().count(), 128);
        let message = format!(
            "1 machine(s) failed version {long}: web-2: HealthCheckFailed: never passed: \
             connection refused (3 tries over 6 s); 2 machine(s) not counted: NotReady or cordoned"
        );
        let mut st = status(RolloutPhase::Degraded, &message, [3, 3, 1, 0, 1, 1]);
        st.target_version = Some(long.clone());
        st.history = history(&[("1.0", "Complete"), (&long, "")]);
        st.pause_conditions = vec![PauseCondition {
            reason: PAUSE_FAILURE.into(),
            start_time: at(150),
            until: None,
        }];
        let r = rollout(&long, Some(st));
        let mut insts = fleet_on_stable();
        insts[1] = inst(
            "web-2",
            InstancePhase::Running,
            Some(&long),
            &["1.0", &long],
        );
        fail(
            &mut insts[1],
            "Health",
            "HealthCheckFailed",
            "never passed: connection refused (3 tries over 6 s); the service on 127.0.0.1:8080 \
             exited with status 1 after 2 restarts, last output: bind: address already in use",
        );
        let fleet = Fleet {
            now: at(200),
            machines: [
                machine("web-1", true, false, 600),
                machine("web-2", true, false, 600),
                machine("web-3", false, false, 40),
                machine("web-4", true, true, 600),
                machine("web-5", true, false, 600),
            ]
            .into_iter()
            .map(|m| (m.metadata.name.clone(), m))
            .collect(),
        };
        (r, insts, fleet)
    }

    #[test]
    fn view_should_wrap_long_versions_and_messages_and_mark_machines_not_counted() {
        let (r, insts, fleet) = long_scene();
        for width in [80, 120] {
            let scene = Scene {
                instances: &insts,
                fleet: &fleet,
                width: Some(width),
            };
            let out = render_rollout(&r, &scene, Style::PLAIN);
            for line in out.lines() {
                assert!(
                    line.chars().count() <= width,
                    "a line wider than {width} columns:\n{line}\nin\n{out}"
                );
            }
            let flat = unwrapped(&out);
            for want in [
                "exited with status 1 after 2 restarts, last output: bind: address already in use",
                "✖ NotReady not counted: NotReady: agent lease expired 40s ago; last reported Running, healthy, available",
                "⊘ Cordoned not counted: cordoned; Running, healthy, available",
                "2 machine(s) not counted: NotReady or cordoned",
            ] {
                assert!(flat.contains(want), "{want:?} not in\n{out}");
            }
            check(&format!("long_{width}_columns"), &out);
            let list = render_rollouts(
                std::slice::from_ref(&r),
                false,
                Some(width),
                Style::PLAIN,
                at(0),
            );
            let flat = unwrapped(&list);
            assert!(
                flat.contains("2 machine(s) not counted: NotReady or cordoned"),
                "the message wraps, whole: {list}"
            );
            // Every column is on the screen: lines fold rather than run past its edge.
            for l in list.lines() {
                assert!(l.chars().count() <= width, "{l:?} past {width} columns");
            }
            for column in ["DESIRED", "AVAILABLE", "VERSION", "AGE", "MESSAGE"] {
                assert!(list.contains(column), "{column} lost at {width}: {list}");
            }
            assert!(
                list.contains("2.0.0-build.abcd…3456789-build.a   0s"),
                "{list}"
            );
            check(&format!("list_long_{width}_columns"), &list);
        }
        // A pipe: nothing wraps, and colour changes nothing but the paint.
        let scene = Scene {
            instances: &insts,
            fleet: &fleet,
            width: None,
        };
        let plain = render_rollout(&r, &scene, Style::PLAIN);
        assert!(plain
            .lines()
            .any(|l| l.contains("already in use") && l.contains("web-2")));
        let painted = render_rollout(&r, &scene, Style::COLOR);
        assert_eq!(without_paint(&painted), plain);
        assert!(painted.contains("\x1b[31m✖ NotReady\x1b[0m"), "{painted:?}");
    }

    #[test]
    fn a_frame_should_pair_the_version_with_the_status_that_describes_it() {
        // After `undo`: the spec asks for 1.0 while the status still describes 2.0.
        let mut st = status(
            RolloutPhase::Progressing,
            "switching: slots 1/1 busy, 0/5 available on 2.0",
            [5, 5, 1, 0, 1, 0],
        );
        st.history = history(&[("1.0", "Complete"), ("2.0", ""), ("1.0", "")]);
        st.history[2].revision = 3;
        let mut r = rollout("1.0", Some(st));
        let list = render_rollouts(std::slice::from_ref(&r), false, None, Style::PLAIN, at(0));
        let row = list.lines().nth(1).expect("a row");
        assert!(
            row.contains(
                "2.0 (1.0 not yet observed)   0s    switching: slots 1/1 busy, 0/5 available on 2.0"
            ),
            "{list}"
        );
        let out = detail(&r, &fleet_on_stable(), Style::PLAIN);
        assert!(
            out.contains("Versions:      2.0 (target), 1.0 (not yet observed)"),
            "{out}"
        );
        // Revisions 3 and 1 of one version are one group, the newest.
        assert!(out.contains("# revision:3 1.0"), "{out}");
        assert!(!out.contains("# revision:1 1.0"), "{out}");
        // Once observed, the version is the status's alone.
        r.status.as_mut().expect("set above").target_version = Some("1.0".into());
        let list = render_rollouts(std::slice::from_ref(&r), false, None, Style::PLAIN, at(0));
        assert!(!list.contains("not yet observed"), "{list}");
        // A user's pause of a complete rollout shows.
        let st = r.status.as_mut().expect("set above");
        st.phase = RolloutPhase::Complete;
        r.spec.paused = true;
        assert_eq!(gate(&r, at(48)), "paused by user");
    }

    #[test]
    fn view_should_render_complete() {
        let mut st = status(
            RolloutPhase::Complete,
            "5 machine(s) run version 2.0",
            [5, 5, 5, 5, 0, 0],
        );
        st.stable_version = Some("2.0".into());
        st.history = history(&[("1.0", "Complete"), ("2.0", "Complete")]);
        let r = rollout("2.0", Some(st));
        let insts: Vec<Instance> = (1..=5)
            .map(|m| {
                inst(
                    &format!("web-{m}"),
                    InstancePhase::Running,
                    Some("2.0"),
                    &["1.0", "2.0"],
                )
            })
            .collect();
        let out = detail(&r, &insts, Style::PLAIN);
        assert!(out.contains("Status:        ✔ Complete"), "{out}");
        assert!(
            !out.contains("revision:1"),
            "an empty old revision is hidden: {out}"
        );
        check("complete", &out);
    }

    #[test]
    fn view_should_list_rollouts_one_line_each() {
        let mut a = rollout(
            "2.0",
            Some(status(
                RolloutPhase::Progressing,
                "waiting for staged 3/5 (minStaged) before any switch",
                [5, 3, 0, 0, 0, 0],
            )),
        );
        a.metadata.name = "api".into();
        let mut b = rollout(
            "7",
            Some(status(
                RolloutPhase::Complete,
                "3 machine(s) run version 7",
                [3, 3, 3, 3, 0, 0],
            )),
        );
        b.metadata.name = "web".into();
        b.metadata.namespace = Some("shop".into());
        b.status.as_mut().expect("set above").target_version = Some("7".into());
        // Drawn 3m25s after both were created: AGE says so.
        let list = render_rollouts(&[a.clone(), b.clone()], false, None, Style::PLAIN, at(205));
        assert!(
            list.lines()
                .all(|l| l.contains(" AGE ") || l.contains(" 3m25s ")),
            "{list}"
        );
        check("list", &list);
        check(
            "list_all_namespaces",
            &render_rollouts(&[a, b], true, None, Style::PLAIN, at(0)),
        );
        assert_eq!(
            render_rollouts(&[], false, None, Style::PLAIN, at(0)),
            "No rollouts found.\n"
        );
    }

    #[test]
    fn colour_should_add_ansi_codes_and_no_color_should_remove_them() {
        let r = rollout(
            "2.0",
            Some(status(RolloutPhase::Degraded, "failed", [5, 5, 1, 0, 1, 1])),
        );
        let insts = fleet_on_stable();
        let on = Style::decide(false, None, true);
        assert_eq!(on, Style::COLOR);
        let painted = detail(&r, &insts, on);
        assert!(painted.contains("\x1b[31m✖ Degraded\x1b[0m"), "{painted:?}");
        assert!(
            render_rollouts(std::slice::from_ref(&r), false, None, on, at(0)).contains("\x1b[")
        );
        // Colour never shifts columns: without the codes it is the plain rendering.
        let stripped = painted
            .split("\x1b[")
            .enumerate()
            .map(|(k, part)| {
                if k == 0 {
                    part
                } else {
                    part.split_once('m').map_or(part, |p| p.1)
                }
            })
            .collect::<String>();
        assert_eq!(stripped, detail(&r, &insts, Style::PLAIN));

        for off in [
            Style::decide(false, Some("1".into()), true),
            Style::decide(true, None, true),
            Style::decide(false, None, false),
        ] {
            assert_eq!(off, Style::PLAIN);
            assert!(!detail(&r, &insts, off).contains('\x1b'));
        }
        // NO_COLOR set but empty does not count (no-color.org).
        assert_eq!(Style::decide(false, Some("".into()), true), Style::COLOR);
    }

    #[test]
    fn view_should_say_when_the_controller_has_not_seen_a_new_version() {
        let mut st = status(RolloutPhase::Complete, "", [5, 5, 5, 5, 0, 0]);
        st.stable_version = Some("2.0".into());
        let r = rollout("3.0", Some(st));
        let out = detail(&r, &[], Style::PLAIN);
        assert!(
            out.contains("Versions:      2.0 (stable, target), 3.0 (not yet observed)"),
            "{out}"
        );
    }

    #[test]
    fn fit_should_keep_a_frame_within_the_screen() {
        let frame = "\x1b[31m✖ Degraded\x1b[0m and more\nb\nc\nd\ne\n";
        // Fits: every line kept, each cleared to its end.
        assert_eq!(
            fit(frame, None),
            "\x1b[31m✖ Degraded\x1b[0m and more\x1b[K\nb\x1b[K\nc\x1b[K\nd\x1b[K\ne\x1b[K\n"
        );
        // 4 rows: 2 lines, a note, and the cursor's empty last line.
        let small = fit(frame, Some((6, 4)));
        assert_eq!(
            small,
            "\x1b[31m✖ Degr\x1b[0m\x1b[K\nb\x1b[K\n… 3 mo\x1b[0m\x1b[K\n"
        );
        assert_eq!(small.matches('\n').count(), 3);
    }

    #[test]
    fn gate_should_resolve_percent_slots_against_desired_machines() {
        let mut st = status(RolloutPhase::Progressing, "", [10, 10, 4, 1, 3, 0]);
        st.current_step_index = Some(0);
        let mut r = rollout("2.0", Some(st));
        canary(&mut r); // maxUnavailable 40% of 10 = 4
        assert_eq!(gate(&r, at(48)), "slots 3/4 busy");
        r.spec.strategy.min_staged = IntOrPercent::Percent("50%".into());
        r.status.as_mut().expect("set above").staged = 4;
        assert_eq!(gate(&r, at(48)), "waiting for staged 4/5");
        r.status.as_mut().expect("set above").desired = 1;
        r.spec.strategy.max_unavailable = IntOrPercent::Percent("10%".into());
        r.status.as_mut().expect("set above").staged = 1;
        assert_eq!(gate(&r, at(48)), "slots 3/1 busy", "slots are at least 1");

        // A timed pause step counts down.
        let st = r.status.as_mut().expect("set above");
        st.phase = RolloutPhase::Paused;
        st.current_step_index = Some(3);
        st.pause_conditions = vec![PauseCondition {
            reason: PAUSE_STEP.into(),
            start_time: at(0),
            until: Some(at(300)),
        }];
        assert_eq!(gate(&r, at(48)), "paused at step 4/4, 4m12s left");
        assert_eq!(gate(&r, at(300)), "paused at step 4/4, going on");
        r.spec.paused = true;
        assert_eq!(
            gate(&r, at(48)),
            "paused by user",
            "the user's pause comes first"
        );
    }
}

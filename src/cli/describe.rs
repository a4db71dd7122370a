//! `deployctl describe`: one object as a page for people, kubectl style.

use super::output::{self, age, human_duration};
use super::{connect, for_kind, ns_for, parse_kind, within, CliError, GlobalArgs};
use crate::api::{
    Application, Condition, Event, GitSync, Instance, KindName, Machine, Object, ObjectMeta,
    Rollout,
};
use crate::store::{Client, Scope};
use chrono::{DateTime, Utc};
use clap::Args;
use std::collections::BTreeMap;
use std::fmt::Write;

pub const EXAMPLES: &str = "\
Examples:
  # A rollout's progress, history, failed machines and events
  deployctl describe rollout api

  # An application and the instance on each machine
  deployctl describe app api -n prod

  # A machine's conditions and what it runs
  deployctl describe machine web-1";

/// How many recent events a page shows.
const EVENTS_SHOWN: usize = 10;

#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// machines (mc), applications (app), rollouts (ro), instances (inst), events (ev).
    pub kind: String,
    pub name: String,
}

/// One line of a page: an aligned `Label: value` field, or text as it is.
enum Line {
    Field {
        indent: usize,
        label: String,
        value: String,
    },
    Text(String),
}

/// A page under construction: `Label:  value` lines, nested by indentation. Values of
/// consecutive fields at one indentation line up, as kubectl's tabwriter makes them.
/// Every label, value and line goes through [`output::escape`] on its way in, so a value
/// from the store can neither break the page nor reach the terminal raw.
#[derive(Default)]
pub struct Page {
    lines: Vec<Line>,
}

impl Page {
    pub fn field(&mut self, indent: usize, label: &str, value: impl std::fmt::Display) {
        self.lines.push(Line::Field {
            indent,
            label: if label.is_empty() {
                String::new()
            } else {
                format!("{}:", output::escape(label))
            },
            value: output::escape(&value.to_string()).into_owned(),
        });
    }

    pub fn line(&mut self, indent: usize, text: impl std::fmt::Display) {
        let text = text.to_string();
        self.lines.push(Line::Text(format!(
            "{}{}",
            " ".repeat(indent * 2),
            output::escape(&text)
        )));
    }

    /// A table indented under a heading.
    pub fn table(&mut self, indent: usize, headers: &[&str], rows: &[Vec<String>]) {
        let dashes: Vec<String> = headers.iter().map(|h| "-".repeat(h.len())).collect();
        let mut all = vec![dashes];
        all.extend(rows.iter().cloned());
        for l in output::render(Some(headers), &all).lines() {
            self.line(indent, l);
        }
    }

    pub fn map(&mut self, label: &str, map: &BTreeMap<String, String>) {
        if map.is_empty() {
            self.field(0, label, "<none>");
            return;
        }
        for (i, (k, v)) in map.iter().enumerate() {
            let text = format!("{k}={v}");
            if i == 0 {
                self.field(0, label, text);
            } else {
                // Continuation lines align under the first value.
                self.field(0, "", text);
            }
        }
    }

    pub fn finish(self) -> String {
        let n = self.lines.len();
        // Each field's value column: the widest label of its group, the fields at one
        // indentation not separated by text or by a shallower field.
        let mut widths = vec![0usize; n];
        for i in 0..n {
            let Line::Field { indent, .. } = &self.lines[i] else {
                continue;
            };
            if widths[i] != 0 {
                continue;
            }
            let mut members = Vec::new();
            for (k, line) in self.lines.iter().enumerate().skip(i) {
                match line {
                    Line::Field { indent: d, .. } if d == indent => members.push(k),
                    Line::Field { indent: d, .. } if d > indent => {}
                    _ => break,
                }
            }
            let widest = members
                .iter()
                .filter_map(|&k| match &self.lines[k] {
                    Line::Field { label, .. } => Some(label.len()),
                    Line::Text(_) => None,
                })
                .max()
                .unwrap_or(0);
            // kubectl's top level lines values up at column 14 at least.
            let w = (widest + 1).max(14usize.saturating_sub(indent * 2));
            for k in members {
                widths[k] = w;
            }
        }
        let mut out = String::new();
        for (line, w) in self.lines.iter().zip(widths) {
            match line {
                Line::Text(t) => {
                    let _ = writeln!(out, "{t}");
                }
                Line::Field {
                    indent,
                    label,
                    value,
                } => {
                    let pad = " ".repeat(indent * 2);
                    if value.is_empty() {
                        let _ = writeln!(out, "{pad}{label}");
                    } else {
                        let _ = writeln!(out, "{pad}{label:<w$}{value}");
                    }
                }
            }
        }
        out
    }
}

fn opt(v: Option<impl std::fmt::Display>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "<none>".into())
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc2822())
        .unwrap_or_else(|| "<unknown>".into())
}

fn meta_fields(p: &mut Page, meta: &ObjectMeta) {
    p.field(0, "Name", &meta.name);
    if let Some(ns) = &meta.namespace {
        p.field(0, "Namespace", ns);
    }
    p.map("Labels", &meta.labels);
    p.map("Annotations", &meta.annotations);
    p.field(0, "Generation", opt(meta.generation));
    p.field(0, "Created", time(meta.creation_timestamp));
}

fn conditions(p: &mut Page, conds: &[Condition], now: DateTime<Utc>) {
    if conds.is_empty() {
        p.field(0, "Conditions", "<none>");
        return;
    }
    p.field(0, "Conditions", "");
    let rows: Vec<Vec<String>> = conds
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.to_string(),
                c.reason.clone(),
                age(c.last_transition_time, now),
                c.message.clone(),
            ]
        })
        .collect();
    p.table(1, &["Type", "Status", "Reason", "Age", "Message"], &rows);
}

fn events(p: &mut Page, evs: &[Event], now: DateTime<Utc>) {
    if evs.is_empty() {
        p.field(0, "Events", "<none>");
        return;
    }
    p.field(0, "Events", "");
    let rows: Vec<Vec<String>> = evs
        .iter()
        .map(|e| {
            vec![
                e.spec.type_.clone(),
                e.spec.reason.clone(),
                age(e.spec.time.or(e.metadata.creation_timestamp), now),
                e.spec.source.clone(),
                e.spec.message.clone(),
            ]
        })
        .collect();
    p.table(1, &["Type", "Reason", "Age", "From", "Message"], &rows);
}

/// The last [`EVENTS_SHOWN`] events about one object, oldest first.
pub fn events_for(
    all: Vec<Event>,
    kind: KindName,
    namespace: Option<&str>,
    name: &str,
) -> Vec<Event> {
    let mut evs: Vec<Event> = all
        .into_iter()
        .filter(|e| {
            let o = &e.spec.involved_object;
            o.kind == kind.kind()
                && o.name == name
                && (namespace.is_none() || o.namespace.as_deref() == namespace)
        })
        .collect();
    evs.sort_by_key(|e| e.spec.time.or(e.metadata.creation_timestamp));
    let skip = evs.len().saturating_sub(EVENTS_SHOWN);
    evs.split_off(skip)
}

pub async fn run(g: &GlobalArgs, args: DescribeArgs) -> anyhow::Result<i32> {
    let kind = parse_kind(&args.kind)?;
    let client = connect(g).await?;
    let ns = ns_for(kind, g);
    let page = for_kind!(kind, K => {
        let obj: Option<K> = within(g, client.get(ns, &args.name)).await?;
        let obj = obj.ok_or_else(|| CliError::NotFound { plural: K::PLURAL, name: args.name.clone() })?;
        let evs: Vec<Event> = if kind == KindName::Event {
            Vec::new()
        } else {
            let listed = within(g, client.list::<Event>(&Scope::All)).await?;
            events_for(listed.items, kind, ns, &args.name)
        };
        obj.describe(&client, g, evs, Utc::now()).await?
    });
    out!("{page}");
    Ok(0)
}

/// A kind's page. Async because some pages list related objects (an Application's
/// Instances).
trait Describe: Object {
    async fn describe(
        &self,
        client: &Client,
        g: &GlobalArgs,
        evs: Vec<Event>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<String>;
}

impl Describe for Rollout {
    async fn describe(
        &self,
        _c: &Client,
        _g: &GlobalArgs,
        evs: Vec<Event>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        Ok(describe_rollout(self, &evs, now))
    }
}

pub fn describe_rollout(ro: &Rollout, evs: &[Event], now: DateTime<Utc>) -> String {
    let mut p = Page::default();
    meta_fields(&mut p, &ro.metadata);
    let s = &ro.spec;
    p.field(0, "Application", &s.application);
    p.field(0, "Version", &s.version);
    if let Some(sha) = &s.sha256 {
        p.field(0, "SHA256", sha);
    }
    p.field(0, "Paused", s.paused);
    p.field(0, "Strategy", "");
    let st = &s.strategy;
    p.field(1, "Max Unavailable", &st.max_unavailable);
    p.field(1, "Min Staged", &st.min_staged);
    p.field(1, "Max Parallel Stage", opt(st.max_parallel_stage));
    p.field(1, "Min Ready Seconds", st.min_ready_seconds);
    p.field(1, "Progress Deadline Seconds", st.progress_deadline_seconds);
    if !st.steps.is_empty() {
        p.field(1, "Steps", "");
        for (i, step) in st.steps.iter().enumerate() {
            let text = if let Some(w) = step.set_weight {
                format!("setWeight: {w}%")
            } else if let Some(m) = step.machines {
                format!("machines: {m}")
            } else if let Some(pause) = &step.pause {
                match &pause.duration {
                    Some(d) => format!("pause: {d}"),
                    None => "pause: until promoted".into(),
                }
            } else {
                "(empty)".into()
            };
            p.line(2, format!("{}. {text}", i + 1));
        }
    }
    p.field(
        0,
        "Failure Policy",
        format!(
            "{:?} after {} failures",
            s.failure_policy.action, s.failure_policy.max_failures
        ),
    );
    if let Some(r) = s.restart_at {
        p.field(0, "Restart At", time(Some(r)));
    }
    let status = ro.status.clone().unwrap_or_default();
    p.field(0, "Status", "");
    p.field(1, "Phase", status.phase);
    if !status.message.is_empty() {
        p.field(1, "Message", &status.message);
    }
    p.field(1, "Observed Generation", status.observed_generation);
    p.field(1, "Stable Version", opt(status.stable_version.as_ref()));
    p.field(1, "Target Version", opt(status.target_version.as_ref()));
    p.field(
        1,
        "Machines",
        format!(
            "{} desired | {} staged | {} updated | {} available | {} unavailable | {} failed",
            status.desired,
            status.staged,
            status.updated,
            status.available,
            status.unavailable,
            status.failed
        ),
    );
    if let Some(i) = status.current_step_index {
        p.field(
            1,
            "Current Step",
            if i as usize >= st.steps.len() {
                format!("done ({} of {})", st.steps.len(), st.steps.len())
            } else {
                format!("{} of {}", i + 1, st.steps.len())
            },
        );
    }
    for pc in &status.pause_conditions {
        let until = pc
            .until
            .map(|u| format!(" until {}", u.to_rfc2822()))
            .unwrap_or_default();
        p.field(
            1,
            "Paused By",
            format!(
                "{} since {}{until}",
                pc.reason,
                human_duration(now - pc.start_time)
            ),
        );
    }
    conditions(&mut p, &status.conditions, now);
    if status.history.is_empty() {
        p.field(0, "History", "<none>");
    } else {
        p.field(0, "History", "");
        p.table(
            1,
            &["Revision", "Version", "Started", "Completed", "Result"],
            &history_rows(&status.history, now),
        );
    }
    if !status.failed_machines.is_empty() {
        p.field(0, "Failed Machines", "");
        let rows: Vec<Vec<String>> = status
            .failed_machines
            .iter()
            .map(|f| {
                vec![
                    f.machine.clone(),
                    f.version.clone(),
                    f.operation.clone(),
                    age(Some(f.time), now),
                    f.message.clone(),
                ]
            })
            .collect();
        p.table(
            1,
            &["Machine", "Version", "Operation", "Age", "Message"],
            &rows,
        );
    }
    events(&mut p, evs, now);
    p.finish()
}

/// Rows of `rollout history` and of the History section.
pub fn history_rows(history: &[crate::api::Revision], now: DateTime<Utc>) -> Vec<Vec<String>> {
    history
        .iter()
        .map(|r| {
            vec![
                r.revision.to_string(),
                r.version.clone(),
                format!("{} ago", human_duration(now - r.started_at)),
                r.completed_at
                    .map(|c| format!("{} ago", human_duration(now - c)))
                    .unwrap_or_else(|| "-".into()),
                if r.result.is_empty() {
                    "InProgress".into()
                } else {
                    r.result.clone()
                },
            ]
        })
        .collect()
}

impl Describe for Application {
    async fn describe(
        &self,
        client: &Client,
        g: &GlobalArgs,
        evs: Vec<Event>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        let mut p = Page::default();
        meta_fields(&mut p, &self.metadata);
        let s = &self.spec;
        p.field(0, "Selector", output::selector_text(&s.selector));
        p.field(0, "Artifact", "");
        p.field(1, "URL", &s.artifact.url);
        if let Some(u) = &s.artifact.sha256_url {
            p.field(1, "SHA256 URL", u);
        }
        p.field(
            1,
            "Format",
            serde_json::to_value(s.artifact.format)?
                .as_str()
                .unwrap_or_default(),
        );
        p.field(
            0,
            "Path",
            s.path
                .as_deref()
                .unwrap_or("<agent root>/<namespace>/<app>"),
        );
        p.field(0, "Keep Releases", s.keep_releases);
        let hooks = [
            ("install", &s.hooks.install),
            ("beforeActivate", &s.hooks.before_activate),
            ("activate", &s.hooks.activate),
            ("afterActivate", &s.hooks.after_activate),
            ("clean", &s.hooks.clean),
        ];
        if hooks.iter().all(|(_, h)| h.is_empty()) {
            p.field(0, "Hooks", "<none>");
        } else {
            p.field(0, "Hooks", "");
            for (name, cmds) in hooks {
                for c in cmds {
                    p.field(
                        1,
                        name,
                        format!("{} (timeout {}s)", c.command, c.timeout_seconds),
                    );
                }
            }
        }
        match &s.health_check {
            None => p.field(0, "Health Check", "<none>"),
            Some(h) => {
                let what = if let Some(t) = &h.tcp {
                    format!(
                        "tcp {}:{}",
                        t.host.as_deref().unwrap_or("127.0.0.1"),
                        t.port
                    )
                } else if let Some(http) = &h.http {
                    format!("http GET {}", http.url)
                } else if let Some(e) = &h.exec {
                    format!("exec {}", e.command)
                } else {
                    "<none>".into()
                };
                p.field(
                    0,
                    "Health Check",
                    format!(
                        "{what} period={}s timeout={}s success={} failure={} deadline={}s",
                        h.period_seconds,
                        h.timeout_seconds,
                        h.success_threshold,
                        h.failure_threshold,
                        h.deadline_seconds
                    ),
                );
            }
        }
        if let Some(svc) = &s.service {
            p.field(0, "Service", &svc.command);
        }
        let st = self.status.clone().unwrap_or_default();
        p.field(0, "Status", "");
        p.field(
            1,
            "Machines",
            format!("{} selected, {} ready", st.machines, st.ready_machines),
        );
        p.field(1, "Stable Version", opt(st.stable_version.as_ref()));
        let ns = self.metadata.namespace.clone().unwrap_or_default();
        let instances = within(g, client.list::<Instance>(&Scope::Namespace(ns))).await?;
        let mut mine: Vec<Instance> = instances
            .items
            .into_iter()
            .filter(|i| i.spec.application == self.metadata.name)
            .collect();
        mine.sort_by(|a, b| a.spec.machine.cmp(&b.spec.machine));
        if mine.is_empty() {
            p.field(0, "Instances", "<none>");
        } else {
            p.field(0, "Instances", "");
            let rows: Vec<Vec<String>> = mine
                .iter()
                .map(|i| {
                    let ist = i.status.clone().unwrap_or_default();
                    vec![
                        i.spec.machine.clone(),
                        opt(ist.current_version.as_ref()),
                        opt(i.spec.current.as_ref()),
                        ist.phase.to_string(),
                        ist.healthy.to_string(),
                        ist.failure
                            .map(|f| format!("{}: {}", f.reason, f.message))
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            p.table(
                1,
                &["Machine", "Current", "Wanted", "Phase", "Healthy", "Error"],
                &rows,
            );
        }
        events(&mut p, &evs, now);
        Ok(p.finish())
    }
}

impl Describe for Machine {
    async fn describe(
        &self,
        _c: &Client,
        _g: &GlobalArgs,
        evs: Vec<Event>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        let mut p = Page::default();
        meta_fields(&mut p, &self.metadata);
        p.field(0, "Unschedulable", self.spec.unschedulable);
        let st = self.status.clone().unwrap_or_default();
        p.field(0, "State", output::machine_state(self));
        p.field(0, "Hostname", opt(st.hostname.as_ref()));
        p.field(0, "Agent Version", opt(st.agent_version.as_ref()));
        p.field(0, "Last Heartbeat", time(st.last_heartbeat));
        conditions(&mut p, &st.conditions, now);
        if st.applications.is_empty() {
            p.field(0, "Applications", "<none>");
        } else {
            p.field(0, "Applications", "");
            let rows: Vec<Vec<String>> = st
                .applications
                .iter()
                .map(|a| {
                    vec![
                        a.name.clone(),
                        opt(a.current_version.as_ref()),
                        a.phase.clone(),
                    ]
                })
                .collect();
            p.table(1, &["Name", "Version", "Phase"], &rows);
        }
        events(&mut p, &evs, now);
        Ok(p.finish())
    }
}

impl Describe for Instance {
    async fn describe(
        &self,
        _c: &Client,
        _g: &GlobalArgs,
        evs: Vec<Event>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        let mut p = Page::default();
        meta_fields(&mut p, &self.metadata);
        let s = &self.spec;
        p.field(0, "Machine", &s.machine);
        p.field(0, "Application", &s.application);
        p.field(0, "Artifact", &s.artifact.url);
        p.field(0, "Wanted", opt(s.current.as_ref()));
        p.field(
            0,
            "Staged Wanted",
            if s.staged.is_empty() {
                "<none>".into()
            } else {
                s.staged
                    .iter()
                    .map(|v| v.version.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        let st = self.status.clone().unwrap_or_default();
        p.field(0, "Status", "");
        p.field(1, "Phase", st.phase);
        p.field(1, "Current Version", opt(st.current_version.as_ref()));
        p.field(
            1,
            "Staged",
            if st.staged_versions.is_empty() {
                "<none>".into()
            } else {
                st.staged_versions.join(", ")
            },
        );
        p.field(1, "Healthy", st.healthy);
        p.field(1, "Available", st.available);
        p.field(1, "Observed Generation", st.observed_generation);
        p.field(1, "Updated", age(st.updated_at, now));
        if let Some(svc) = &st.service {
            p.field(1, "Service", "");
            let state = match (svc.running, svc.started_at, svc.next_restart_at) {
                (true, Some(at), _) => format!("Running (up {})", age(Some(at), now)),
                (true, None, _) => "Running".to_string(),
                (false, _, Some(next)) if next > now => {
                    format!("Waiting to restart (in {})", human_duration(next - now))
                }
                (false, _, _) => "Not running".to_string(),
            };
            p.field(2, "State", state);
            p.field(2, "Restarts", svc.restarts);
            if let Some(e) = &svc.last_exit {
                p.field(
                    2,
                    "Last Exit",
                    format!("{} ({} ago)", e.message, age(Some(e.time), now)),
                );
            }
        }
        if let Some(f) = &st.failure {
            p.field(
                1,
                "Failure",
                format!(
                    "{} {} of {}: {}: {}",
                    f.operation,
                    f.reason,
                    f.version,
                    age(Some(f.time), now),
                    f.message
                ),
            );
        }
        if !st.last_hook_output.is_empty() {
            p.field(0, "Last Hook Output", "");
            // The tail's line breaks stay line breaks; each line is escaped.
            for l in st.last_hook_output.iter().flat_map(|l| l.split('\n')) {
                p.line(1, l);
            }
        }
        events(&mut p, &evs, now);
        Ok(p.finish())
    }
}

impl Describe for GitSync {
    async fn describe(
        &self,
        _c: &Client,
        _g: &GlobalArgs,
        evs: Vec<Event>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        let mut p = Page::default();
        meta_fields(&mut p, &self.metadata);
        let s = &self.spec;
        p.field(0, "Repo", &s.repo);
        p.field(0, "Ref", opt(s.ref_.as_ref()));
        p.field(0, "Path", &s.path);
        p.field(0, "Prune", s.prune);
        p.field(
            0,
            "Interval",
            if s.interval_seconds == 0 {
                "<once>".to_string()
            } else {
                format!("{}s", s.interval_seconds)
            },
        );
        let st = self.status.clone().unwrap_or_default();
        p.field(0, "Status", "");
        p.field(1, "Last Commit", opt(st.last_commit.as_ref()));
        p.field(1, "Last Sync", time(st.last_sync_time));
        p.field(1, "Objects", st.objects);
        p.field(1, "Last Error", opt(st.last_error.as_ref()));
        p.field(1, "Last Error Commit", opt(st.last_error_commit.as_ref()));
        if st.last_error_time.is_some() {
            p.field(1, "Last Error Time", time(st.last_error_time));
        }
        events(&mut p, &evs, now);
        Ok(p.finish())
    }
}

impl Describe for Event {
    async fn describe(
        &self,
        _c: &Client,
        _g: &GlobalArgs,
        _evs: Vec<Event>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        let mut p = Page::default();
        meta_fields(&mut p, &self.metadata);
        let s = &self.spec;
        let o = &s.involved_object;
        p.field(
            0,
            "Object",
            format!("{}/{}", o.kind.to_ascii_lowercase(), o.name),
        );
        p.field(0, "Type", &s.type_);
        p.field(0, "Reason", &s.reason);
        p.field(0, "Source", &s.source);
        p.field(0, "Age", age(s.time, now));
        p.field(0, "Message", &s.message);
        Ok(p.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        set_condition, ConditionStatus, EventSpec, ObjectReference, Revision, RolloutSpec,
        RolloutStatus,
    };

    fn event(name: &str, kind: &str, obj: &str, secs_ago: i64, now: DateTime<Utc>) -> Event {
        Event::new(
            name,
            EventSpec {
                involved_object: ObjectReference {
                    kind: kind.into(),
                    namespace: Some("default".into()),
                    name: obj.into(),
                },
                type_: "Normal".into(),
                reason: format!("R{name}"),
                message: "m".into(),
                source: "controller".into(),
                time: Some(now - chrono::Duration::seconds(secs_ago)),
            },
        )
    }

    #[test]
    fn describe_should_show_the_last_ten_events_of_the_object_only() {
        let now = Utc::now();
        let mut all: Vec<Event> = (0..15)
            .map(|i| event(&format!("e{i}"), "Rollout", "api", 100 - i, now))
            .collect();
        all.push(event("other", "Rollout", "web", 1, now));
        all.push(event("app", "Application", "api", 1, now));
        let evs = events_for(all, KindName::Rollout, Some("default"), "api");
        let names: Vec<&str> = evs.iter().map(|e| e.metadata.name.as_str()).collect();
        assert_eq!(
            names,
            (5..15)
                .map(|i| format!("e{i}"))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn pages_should_escape_control_characters_in_values_from_the_store() {
        let now = Utc::now();
        let hostile = "\x1b[2J\x1b]0;owned\x07\r\n\u{9b}1m\u{202e}\x7f";
        let mut ro = Rollout::new(
            "api",
            RolloutSpec {
                application: "api".into(),
                version: format!("1.2{hostile}"),
                ..Default::default()
            },
        );
        ro.metadata
            .labels
            .insert("team".into(), format!("core{hostile}"));
        ro.metadata
            .annotations
            .insert(format!("note{hostile}"), format!("text{hostile}"));
        let mut st = RolloutStatus {
            message: format!("stuck{hostile}"),
            ..Default::default()
        };
        set_condition(
            &mut st.conditions,
            "Staged",
            ConditionStatus::False,
            "NotYet",
            &format!("cond{hostile}"),
            now,
        );
        st.history.push(Revision {
            revision: 1,
            version: format!("1.1{hostile}"),
            sha256: None,
            started_at: now,
            completed_at: None,
            result: String::new(),
        });
        ro.status = Some(st);
        let mut ev = event("e1", "Rollout", "api", 5, now);
        ev.spec.message = format!("event{hostile}");
        let page = describe_rollout(&ro, &[ev], now);
        for raw in ['\x1b', '\x07', '\r', '\u{9b}', '\u{202e}', '\x7f'] {
            assert!(!page.contains(raw), "{raw:?} reached the page:\n{page}");
        }
        let shown = r"\e[2J\e]0;owned\a\r\n\u{9b}1m\u{202e}\u{7f}";
        for want in [
            format!("Labels:         team=core{shown}\n"),
            format!("Annotations:    note{shown}=text{shown}\n"),
            format!("Version:        1.2{shown}\n"),
            format!("Message:             stuck{shown}\n"),
            format!("cond{shown}\n"),
            format!("1.1{shown}"),
            format!("event{shown}\n"),
        ] {
            assert!(page.contains(&want), "{want:?} not in\n{page}");
        }
    }

    #[test]
    fn a_page_should_keep_line_breaks_between_lines_and_escape_within_them() {
        let mut p = Page::default();
        p.field(0, "Last Hook Output", "");
        for l in "ok\n\x1b[31mred\x07".split('\n') {
            p.line(1, l);
        }
        assert_eq!(p.finish(), "Last Hook Output:\n  ok\n  \\e[31mred\\a\n");
    }

    #[test]
    fn rollout_page_should_show_spec_status_conditions_history_and_events() {
        let now = Utc::now();
        let mut ro = Rollout::new(
            "api",
            RolloutSpec {
                application: "api".into(),
                version: "1.2".into(),
                ..Default::default()
            },
        );
        ro.metadata.labels.insert("team".into(), "core".into());
        let mut st = RolloutStatus {
            phase: crate::api::RolloutPhase::Progressing,
            updated: 2,
            desired: 5,
            ..Default::default()
        };
        set_condition(
            &mut st.conditions,
            "Staged",
            ConditionStatus::True,
            "AllStaged",
            "5 of 5 staged",
            now,
        );
        st.history.push(Revision {
            revision: 1,
            version: "1.1".into(),
            sha256: None,
            started_at: now,
            completed_at: Some(now),
            result: "Complete".into(),
        });
        ro.status = Some(st);
        let page = describe_rollout(&ro, &[event("e1", "Rollout", "api", 5, now)], now);
        for want in [
            "Name:           api\n",
            "Namespace:      default\n",
            "Labels:         team=core\n",
            "Version:        1.2\n",
            "  Phase:               Progressing\n",
            "  Observed Generation: 0\n",
            "5 desired | 0 staged | 2 updated",
            "Conditions:\n  Type     Status   Reason      Age   Message\n",
            "  Staged   True     AllStaged   0s    5 of 5 staged\n",
            "History:\n  Revision",
            "Complete",
            "Events:\n  Type",
            "Re1",
        ] {
            assert!(page.contains(want), "{want:?} not in\n{page}");
        }
    }
}

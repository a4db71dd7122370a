//! `deployctl describe`: one object as a page for people, kubectl style.

use super::output::{self, age, human_duration, NotCounted};
use super::{connect, for_kind, ns_for, parse_kind, within, CliError, GlobalArgs};
use crate::api::{
    Application, Condition, Event, GitSync, Instance, KindName, Machine, Notifier, Object,
    ObjectMeta, Rollout, Task, DEFAULT_NAMESPACE,
};
use crate::store::{Client, Presence, Scope};
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
    /// machines (mc), applications (app), rollouts (ro), instances (inst), events (ev),
    /// notifiers (nt), tasks (tk).
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
        client: &Client,
        g: &GlobalArgs,
        evs: Vec<Event>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        let mine =
            application_instances(client, g, self.namespace(), &self.spec.application).await?;
        let fleet = fleet_of(client, g, now).await?;
        Ok(describe_rollout(self, &evs, &mine, &fleet))
    }
}

/// The Instances of application `app` in `namespace`, by machine name.
async fn application_instances(
    client: &Client,
    g: &GlobalArgs,
    namespace: Option<&str>,
    app: &str,
) -> anyhow::Result<Vec<Instance>> {
    let ns = namespace.unwrap_or(DEFAULT_NAMESPACE).to_string();
    let instances = within(g, client.list::<Instance>(&Scope::Namespace(ns))).await?;
    let mut mine: Vec<Instance> = instances
        .items
        .into_iter()
        .filter(|i| i.spec.application == app)
        .collect();
    mine.sort_by(|a, b| a.spec.machine.cmp(&b.spec.machine));
    Ok(mine)
}

/// Every Machine, to say which of them a rollout leaves out and why.
async fn fleet_of(
    client: &Client,
    g: &GlobalArgs,
    now: DateTime<Utc>,
) -> anyhow::Result<output::Fleet> {
    let machines = within(g, client.list::<Machine>(&Scope::All)).await?;
    Ok(output::Fleet {
        now,
        machines: machines
            .items
            .into_iter()
            .map(|m| (m.metadata.name.clone(), m))
            .collect(),
    })
}

/// One row per Instance: what its machine runs and whether rollouts count it.
fn instances_table(p: &mut Page, mine: &[Instance], fleet: &output::Fleet) {
    if mine.is_empty() {
        p.field(0, "Instances", "<none>");
        return;
    }
    p.field(0, "Instances", "");
    let rows: Vec<Vec<String>> = mine
        .iter()
        .map(|i| {
            let ist = i.status.clone().unwrap_or_default();
            let counted = match fleet.not_counted(&i.spec.machine) {
                Some(why) => format!("no: {}", why.text()),
                None => "yes".to_string(),
            };
            vec![
                i.spec.machine.clone(),
                opt(ist.current_version.as_ref()),
                opt(i.spec.current.as_ref()),
                ist.phase.to_string(),
                ist.healthy.to_string(),
                counted,
                ist.failure
                    .map(|f| format!("{}: {}", f.reason, f.message))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    p.table(
        1,
        &[
            "Machine", "Current", "Wanted", "Phase", "Healthy", "Counted", "Error",
        ],
        &rows,
    );
}

/// The Rollout's page; `machines` are its Application's Instances, each marked with
/// whether the rollout counts it (`fleet` says why not).
pub fn describe_rollout(
    ro: &Rollout,
    evs: &[Event],
    machines: &[Instance],
    fleet: &output::Fleet,
) -> String {
    let now = fleet.now;
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
    if let Some(waves) = super::topology::waves_line(ro, now) {
        p.field(1, "Waves", waves);
    }
    if let Some(deps) = super::topology::depends_line(ro) {
        p.field(0, "Depends On", deps);
    }
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
            } else if let Some(a) = &step.analysis {
                super::analysis::step_text(a)
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
    if !status.analysis_runs.is_empty() {
        p.field(0, "Analysis Runs", "");
        p.table(
            1,
            &super::analysis::RUN_HEADERS,
            &super::analysis::run_rows(&status.analysis_runs, now),
        );
    }
    let current_revision = status
        .history
        .last()
        .filter(|r| status.target_version.as_deref() == Some(r.version.as_str()))
        .map(|r| r.revision);
    let current_failures = status
        .failure_history
        .iter()
        .rev()
        .find(|e| Some(e.revision) == current_revision);
    let last_failed = status
        .failure_history
        .iter()
        .rev()
        .find(|e| Some(e.revision) != current_revision);
    if current_failures.is_none() && !status.failed_machines.is_empty() {
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
    if current_failures.is_some() || last_failed.is_some() {
        p.field(0, "Failures", "");
        for (entry, which) in [(current_failures, "current"), (last_failed, "last failed")] {
            if let Some(e) = entry {
                revision_failures(&mut p, e, which, now);
            }
        }
    }
    instances_table(&mut p, machines, fleet);
    events(&mut p, evs, now);
    p.finish()
}

/// One revision's failures: who failed, why, and the last lines its hooks printed.
fn revision_failures(
    p: &mut Page,
    e: &crate::api::RevisionFailures,
    which: &str,
    now: DateTime<Utc>,
) {
    p.line(
        1,
        format!(
            "Revision {} ({which}), version {}: {} machine(s) failed",
            e.revision, e.version, e.failed
        ),
    );
    let rows: Vec<Vec<String>> = e
        .machines
        .iter()
        .map(|f| {
            vec![
                f.machine.clone(),
                f.operation.clone(),
                f.reason.clone(),
                age(Some(f.time), now),
                f.message.clone(),
            ]
        })
        .collect();
    p.table(
        2,
        &["Machine", "Operation", "Reason", "Age", "Message"],
        &rows,
    );
    for f in e.machines.iter().filter(|f| !f.output.is_empty()) {
        p.line(
            2,
            format!("Output of {} (last {} lines):", f.machine, f.output.len()),
        );
        for l in &f.output {
            p.line(3, l);
        }
    }
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
        let mine = application_instances(client, g, self.namespace(), &self.metadata.name).await?;
        let fleet = fleet_of(client, g, now).await?;
        instances_table(&mut p, &mine, &fleet);
        events(&mut p, &evs, now);
        Ok(p.finish())
    }
}

impl Describe for Machine {
    async fn describe(
        &self,
        client: &Client,
        g: &GlobalArgs,
        evs: Vec<Event>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        let name = self.name().to_string();
        let instances = within(g, client.list::<Instance>(&Scope::Machine(name.clone()))).await?;
        let presence = within(g, client.presence(&name)).await?;
        Ok(describe_machine(
            self,
            &instances.items,
            presence.as_ref(),
            &evs,
            now,
        ))
    }
}

/// The Machine page: whether rollouts count it and why not, its agent's last heartbeat
/// (from the presence lease: its keep-alives are the heartbeat, so nothing is written per
/// beat), and the applications on it (from its Instances).
pub fn describe_machine(
    m: &Machine,
    instances: &[Instance],
    presence: Option<&Presence>,
    evs: &[Event],
    now: DateTime<Utc>,
) -> String {
    let mut p = Page::default();
    meta_fields(&mut p, &m.metadata);
    p.field(0, "Unschedulable", m.spec.unschedulable);
    let st = m.status.clone().unwrap_or_default();
    p.field(0, "State", output::machine_state(m));
    let not_counted = NotCounted::of(m, now);
    p.field(
        0,
        "Rollouts",
        match &not_counted {
            Some(n) => format!("not counted: {}", n.text()),
            None => "counted".into(),
        },
    );
    p.field(0, "Hostname", opt(st.hostname.as_ref()));
    p.field(0, "Agent Version", opt(st.agent_version.as_ref()));
    p.field(0, "Registered", time(st.last_heartbeat));
    p.field(
        0,
        "Last Heartbeat",
        heartbeat(presence, not_counted.as_ref()),
    );
    conditions(&mut p, &st.conditions, now);
    let mut mine: Vec<&Instance> = instances
        .iter()
        .filter(|i| i.spec.machine == m.metadata.name)
        .collect();
    mine.sort_by_key(|i| (i.metadata.namespace.clone(), i.spec.application.clone()));
    if mine.is_empty() {
        p.field(0, "Applications", "<none>");
    } else {
        p.field(0, "Applications", "");
        let rows: Vec<Vec<String>> = mine
            .iter()
            .map(|i| {
                let ist = i.status.clone().unwrap_or_default();
                vec![
                    format!(
                        "{}/{}",
                        i.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
                        i.spec.application
                    ),
                    opt(ist.current_version.as_ref()),
                    opt(i.spec.current.as_ref()),
                    ist.phase.to_string(),
                    ist.healthy.to_string(),
                    ist.available.to_string(),
                    ist.failure
                        .map(|f| format!("{}: {}", f.reason, f.message))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        p.table(
            1,
            &[
                "Name",
                "Current",
                "Wanted",
                "Phase",
                "Healthy",
                "Available",
                "Error",
            ],
            &rows,
        );
    }
    events(&mut p, evs, now);
    p.finish()
}

/// `3s ago (lease 10s, expires in 7s)` from a live presence; without one, why not.
pub fn heartbeat(presence: Option<&Presence>, not_counted: Option<&NotCounted>) -> String {
    let secs =
        |d: std::time::Duration| human_duration(chrono::Duration::seconds(d.as_secs() as i64));
    match presence {
        Some(pr) => match (pr.ttl, pr.since_refresh()) {
            (Some(ttl), Some(since)) => format!(
                "{} ago (lease {}, expires in {})",
                secs(since),
                secs(ttl.granted),
                secs(ttl.remaining)
            ),
            _ => "none: the agent's lease expired just now".into(),
        },
        None => match not_counted.and_then(|n| n.not_ready.as_deref()) {
            Some(why) => format!("none: {why}"),
            // Ready by its status, but the lease is gone: the controller has not
            // noticed yet.
            None => "none: the agent's lease has expired".into(),
        },
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

impl Describe for Task {
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
        p.field(0, "Application", &s.application);
        p.field(0, "Task", opt(s.task_name.as_ref()));
        p.field(0, "Command", &s.command);
        p.field(0, "Selector", output::selector_text(&s.selector));
        if !s.machines.is_empty() {
            p.field(0, "Machines", s.machines.join(","));
        }
        p.field(0, "One", s.one);
        p.field(0, "Max Parallel", &s.max_parallel);
        p.field(0, "Timeout", format!("{}s", s.timeout_seconds));
        p.field(0, "Stop On Failure", s.stop_on_failure);
        p.field(
            0,
            "TTL After Finished",
            format!("{}s", s.ttl_seconds_after_finished),
        );
        let st = self.status.clone().unwrap_or_default();
        p.field(0, "Status", "");
        p.field(1, "Phase", format!("{:?}", st.phase));
        p.field(1, "Message", opt(st.message.as_ref()));
        p.field(1, "Started", time(st.start_time));
        p.field(1, "Completed", time(st.completion_time));
        if st.machines.is_empty() {
            p.field(0, "Machines Run", "<none>");
        } else {
            p.field(0, "Machines Run", "");
            let rows: Vec<Vec<String>> = st
                .machines
                .iter()
                .map(|m| {
                    let duration = match (m.start_time, m.finish_time) {
                        (Some(a), Some(b)) => {
                            format!("{:.1}s", (b - a).num_milliseconds() as f64 / 1000.0)
                        }
                        _ => String::new(),
                    };
                    vec![
                        m.machine.clone(),
                        m.phase.as_str().to_string(),
                        m.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                        duration,
                        m.message.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            p.table(
                1,
                &["Machine", "Phase", "Exit", "Duration", "Message"],
                &rows,
            );
            for m in st.machines.iter().filter(|m| !m.output_tail.is_empty()) {
                p.field(1, &format!("Output of {}", m.machine), "");
                for line in &m.output_tail {
                    p.line(2, line);
                }
            }
        }
        events(&mut p, &evs, now);
        Ok(p.finish())
    }
}

impl Describe for crate::api::AnalysisTemplate {
    async fn describe(
        &self,
        _c: &Client,
        _g: &GlobalArgs,
        evs: Vec<Event>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<String> {
        let mut p = Page::default();
        meta_fields(&mut p, &self.metadata);
        for a in &self.spec.args {
            p.field(
                0,
                &format!("Arg {}", a.name),
                a.value.as_deref().unwrap_or("<none>"),
            );
        }
        p.line(0, "Metrics:");
        for m in &self.spec.metrics {
            p.field(1, "Name", &m.name);
            let provider = &m.provider;
            if let Some(pr) = &provider.prometheus {
                p.field(2, "Prometheus", &pr.address);
                p.field(2, "Query", &pr.query);
            }
            if let Some(h) = &provider.http {
                p.field(2, "HTTP", &h.url);
                p.field(2, "JSONPath", &h.json_path);
            }
            if let Some(e) = &provider.exec {
                p.field(2, "Exec", &e.command);
            }
            for (label, c) in [
                ("Success", &m.success_condition),
                ("Failure", &m.failure_condition),
            ] {
                if let Some(c) = c {
                    p.field(2, label, c);
                }
            }
            p.field(
                2,
                "Schedule",
                format!(
                    "count {}, interval {}, initial delay {}",
                    m.count.unwrap_or(1),
                    m.interval.as_deref().unwrap_or("1m"),
                    m.initial_delay.as_deref().unwrap_or("0s")
                ),
            );
            p.field(
                2,
                "Limits",
                format!(
                    "failure {}, inconclusive {}, consecutive errors {}, on no data {:?}",
                    m.failure_limit, m.inconclusive_limit, m.consecutive_error_limit, m.on_no_data
                ),
            );
        }
        events(&mut p, &evs, now);
        Ok(p.finish())
    }
}

impl Describe for Notifier {
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
        p.field(0, "Selector", output::selector_text(&s.selector));
        p.field(0, "Events", output::notifier_events(self));
        p.field(0, "Sink", output::notifier_sink(self));
        let source =
            |url: &Option<String>, from: &Option<crate::api::SecretSource>| match (url, from) {
                (Some(u), _) => u.clone(),
                (None, Some(f)) => secret_source_text(f),
                (None, None) => "<none>".into(),
            };
        if let Some(w) = &s.webhook {
            p.field(1, "URL", source(&w.url, &w.url_from));
            for (k, v) in &w.headers {
                p.field(1, &format!("Header {k}"), v);
            }
            p.field(
                1,
                "Signing Key",
                w.secret_ref
                    .as_ref()
                    .map(secret_source_text)
                    .unwrap_or_else(|| "<none: unsigned>".into()),
            );
        }
        if let Some(sl) = &s.slack {
            p.field(1, "URL", source(&sl.url, &sl.url_from));
        }
        if let Some(g) = &s.graphite {
            p.field(1, "URL", source(&g.url, &g.url_from));
            p.field(1, "Tags", g.tags.join(","));
        }
        p.field(
            0,
            "Timeout",
            format!("{}s", s.timeout_seconds.unwrap_or(10)),
        );
        let st = self.status.clone().unwrap_or_default();
        p.field(0, "Status", "");
        p.field(1, "Deliveries", st.deliveries);
        p.field(1, "Failed Attempts", st.failed_attempts);
        match &st.last_delivered {
            Some(d) => p.field(
                1,
                "Last Delivered",
                format!(
                    "{} {} ({} ago, id {})",
                    d.event,
                    d.rollout,
                    age(d.time, now),
                    d.id
                ),
            ),
            None => p.field(1, "Last Delivered", "<none>"),
        }
        p.field(1, "Resumes After Revision", st.last_delivered_revision);
        p.field(1, "Last Error", opt(st.last_error.as_ref()));
        if st.last_error_time.is_some() {
            p.field(1, "Last Error Time", time(st.last_error_time));
        }
        events(&mut p, &evs, now);
        Ok(p.finish())
    }
}

/// `file /etc/...` or `env NAME`: where the controller reads a secret (never its value).
fn secret_source_text(s: &crate::api::SecretSource) -> String {
    match (&s.file, &s.env) {
        (Some(f), _) => format!("from file {f}"),
        (None, Some(e)) => format!("from env {e}"),
        (None, None) => "<none>".into(),
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
        let page = describe_rollout(&ro, &[ev], &[], &output::Fleet::at(now));
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

    fn instance_on(machine: &str, app: &str, version: &str) -> Instance {
        let mut i = Instance::new(
            &Instance::name_for(app, machine),
            crate::api::InstanceSpec {
                machine: machine.into(),
                application: app.into(),
                current: Some(version.into()),
                ..Default::default()
            },
        );
        i.status = Some(crate::api::InstanceStatus {
            phase: crate::api::InstancePhase::Running,
            current_version: Some(version.into()),
            healthy: true,
            available: true,
            ..Default::default()
        });
        i
    }

    #[test]
    fn machine_page_should_list_its_applications_and_the_heartbeat_from_its_lease() {
        let now = Utc::now();
        let mut m = Machine::new("web-1", Default::default());
        let mut st = crate::api::MachineStatus {
            last_heartbeat: Some(now - chrono::Duration::hours(2)),
            ..Default::default()
        };
        set_condition(
            &mut st.conditions,
            "Ready",
            ConditionStatus::True,
            "AgentLeaseAlive",
            "the agent holds its lease",
            now,
        );
        m.status = Some(st);
        let insts = [
            instance_on("web-1", "api", "2.0"),
            instance_on("web-1", "worker", "7"),
            instance_on("web-2", "api", "2.0"),
        ];
        let presence = Presence {
            started_at: None,
            ttl: Some(crate::store::LeaseTtl {
                granted: std::time::Duration::from_secs(10),
                remaining: std::time::Duration::from_secs(7),
            }),
        };
        let page = describe_machine(&m, &insts, Some(&presence), &[], now);
        for want in [
            "State:          Ready\n",
            "Rollouts:       counted\n",
            "Last Heartbeat: 3s ago (lease 10s, expires in 7s)\n",
            "Applications:\n  Name",
            "  default/api      2.0       2.0      Running",
            "  default/worker   7         7        Running",
        ] {
            assert!(page.contains(want), "{want:?} not in\n{page}");
        }
        assert!(
            !page.contains("web-2"),
            "another machine's instance: {page}"
        );
    }

    #[test]
    fn machine_page_should_say_why_a_dead_or_cordoned_machine_is_not_counted() {
        let now = Utc::now();
        let mut m = Machine::new("web-1", Default::default());
        m.spec.unschedulable = true;
        let mut st = crate::api::MachineStatus::default();
        set_condition(
            &mut st.conditions,
            "Ready",
            ConditionStatus::False,
            "AgentLeaseExpired",
            "the agent's lease expired: it stopped or lost the store",
            now - chrono::Duration::seconds(40),
        );
        m.status = Some(st);
        let page = describe_machine(&m, &[], None, &[], now);
        for want in [
            "State:          NotReady,SchedulingDisabled\n",
            "Rollouts:       not counted: NotReady: agent lease expired 40s ago; cordoned\n",
            "Last Heartbeat: none: agent lease expired 40s ago\n",
            "Applications: <none>\n",
        ] {
            assert!(page.contains(want), "{want:?} not in\n{page}");
        }
    }

    #[test]
    fn rollout_page_should_list_its_machines_and_say_which_are_not_counted() {
        let now = Utc::now();
        let ro = Rollout::new(
            "api",
            RolloutSpec {
                application: "api".into(),
                version: "2.0".into(),
                ..Default::default()
            },
        );
        let mut fleet = output::Fleet::at(now);
        for (name, ready) in [("web-1", true), ("web-2", false)] {
            let mut m = Machine::new(name, Default::default());
            let mut st = crate::api::MachineStatus::default();
            set_condition(
                &mut st.conditions,
                "Ready",
                if ready {
                    ConditionStatus::True
                } else {
                    ConditionStatus::False
                },
                if ready {
                    "AgentReady"
                } else {
                    "AgentLeaseExpired"
                },
                "",
                now - chrono::Duration::seconds(40),
            );
            m.status = Some(st);
            fleet.machines.insert(name.into(), m);
        }
        let instances: Vec<Instance> = ["web-1", "web-2"]
            .iter()
            .map(|m| {
                let mut i = Instance::new(&format!("api.{m}"), Default::default());
                i.spec.machine = m.to_string();
                i.spec.application = "api".into();
                i.spec.current = Some("2.0".into());
                i
            })
            .collect();
        let page = describe_rollout(&ro, &[], &instances, &fleet);
        let rows: Vec<&str> = page.lines().filter(|l| l.contains("web-")).collect();
        assert_eq!(rows.len(), 2, "{page}");
        assert!(rows[0].trim_end().ends_with(" yes"), "{}", rows[0]);
        assert!(
            rows[1].contains("no: NotReady: agent lease expired 40s ago"),
            "{}",
            rows[1]
        );
    }

    #[test]
    fn rollout_page_should_show_the_current_and_the_last_failed_revisions_failures_with_output() {
        let now = Utc::now();
        let mut ro = Rollout::new(
            "api",
            RolloutSpec {
                application: "api".into(),
                version: "3.0".into(),
                ..Default::default()
            },
        );
        let failure = |machine: &str, marker: &str| crate::api::FailureDetail {
            machine: machine.into(),
            operation: "Switch".into(),
            reason: "HookFailed".into(),
            message: "activate hook failed: exit status: 3".into(),
            time: now,
            output: vec!["starting".into(), marker.into()],
        };
        let revision = |n: u32, v: &str| Revision {
            revision: n,
            version: v.into(),
            sha256: None,
            started_at: now,
            completed_at: None,
            result: String::new(),
        };
        let st = RolloutStatus {
            target_version: Some("3.0".into()),
            failed: 1,
            history: vec![revision(1, "1.0"), revision(2, "2.0"), revision(3, "3.0")],
            failure_history: vec![
                crate::api::RevisionFailures {
                    revision: 1,
                    version: "1.0".into(),
                    failed: 1,
                    machines: vec![failure("m9", "OLDEST")],
                },
                crate::api::RevisionFailures {
                    revision: 2,
                    version: "2.0".into(),
                    failed: 2,
                    machines: vec![failure("m1", "MARKER-rev2")],
                },
                crate::api::RevisionFailures {
                    revision: 3,
                    version: "3.0".into(),
                    failed: 1,
                    machines: vec![failure("m0", "MARKER-rev3")],
                },
            ],
            ..Default::default()
        };
        ro.status = Some(st);
        let page = describe_rollout(&ro, &[], &[], &output::Fleet::at(now));
        for want in [
            "Failures:\n  Revision 3 (current), version 3.0: 1 machine(s) failed\n",
            "Revision 2 (last failed), version 2.0: 2 machine(s) failed\n",
            "    Output of m0 (last 2 lines):\n      starting\n      MARKER-rev3\n",
            "MARKER-rev2",
            "HookFailed",
        ] {
            assert!(page.contains(want), "{want:?} not in\n{page}");
        }
        assert!(
            !page.contains("OLDEST"),
            "only the newest other revision:\n{page}"
        );
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
        let page = describe_rollout(
            &ro,
            &[event("e1", "Rollout", "api", 5, now)],
            &[],
            &output::Fleet::at(now),
        );
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

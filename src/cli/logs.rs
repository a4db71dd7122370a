//! `deployctl logs`: the recent output of an Instance's hooks and service (or of every
//! machine of a Rollout), asked of each machine's agent through the store.
//!
//! Per machine: a request key on a short lease of this process's, the answer chunks the
//! agent writes on the same lease, watched; the lease is revoked at the end, so nothing
//! stays in the store. The agent never opens a port.

use super::{connect, output, within, CliError, GlobalArgs};
use crate::agent::logs::{LogAnswer, LogLine, LogRequest, MAX_TAIL, SOURCES};
use crate::api::{Instance, KindName, Object, Rollout, Task};
use crate::store::{Client, Error as StoreError, LeaseId, ObjectEvent, Scope};
use chrono::{DateTime, Utc};
use clap::Args;
use futures::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub const EXAMPLES: &str = "\
Examples:
  # The last 100 lines of every hook and the service of one Instance
  deployctl logs instance api.web-1

  # Only the install hook's last line
  deployctl logs instance api.web-1 --hook install --tail 1

  # Every machine of a rollout, each line prefixed with its machine
  deployctl logs rollout api -n prod

  # The whole output (up to 1000 lines per machine) of a deployctl run
  deployctl logs task web-run-5f3a9c

  # The same while it runs, ending when the task finishes
  deployctl logs task web-run-5f3a9c -f

  # Follow the service while the agent runs (Ctrl-C to stop)
  deployctl logs instance api.web-1 --hook service -f";

/// How long a machine has to send the first chunk of its answer.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(5);
/// The lease of a request and its answer: the keys go this long after this process
/// stops refreshing it (a crash), and a follower stops then too.
const REQUEST_TTL: Duration = Duration::from_secs(10);
/// Machines asked at once by `logs rollout` without `-f`: bounds the store's load from
/// one command on a large fleet.
const PARALLEL_MACHINES: usize = 16;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// `instance` (inst), `rollout` (ro) or `task` (tk).
    pub kind: String,
    /// The Instance (`<app>.<machine>`), Rollout or Task.
    pub name: String,
    /// Only this hook's output, or the service's.
    #[arg(long, value_name = "HOOK", value_parser = clap::builder::PossibleValuesParser::new(SOURCES))]
    pub hook: Option<String>,
    /// How many of the most recent lines, per machine.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_TAIL)))]
    pub tail: u32,
    /// Keep printing new lines as the agent writes them, until interrupted (a task's: until
    /// the task finishes).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Look for the object in every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// Why a machine's logs could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("machine {machine} did not answer within {}s: its agent is NotReady", ANSWER_DEADLINE.as_secs())]
    NotReady { machine: String },
    #[error("machine {machine} did not answer within {}s although its agent is Ready (an agent older than this deployctl, or one denied {prefix})", ANSWER_DEADLINE.as_secs())]
    NoAnswer { machine: String, prefix: String },
    #[error("machine {machine}'s agent went away (NotReady); no more lines")]
    WentAway { machine: String },
    #[error("machine {machine} refused the request: {message}")]
    Refused { machine: String, message: String },
    #[error("machine {machine} sent an unreadable answer: {message}")]
    BadAnswer { machine: String, message: String },
    #[error("cannot ask machine {machine} for logs: {source}")]
    Store { machine: String, source: StoreError },
    #[error("{kind} {name:?} is in several namespaces ({namespaces}); pick one with -n")]
    Ambiguous {
        kind: &'static str,
        name: String,
        namespaces: String,
    },
    #[error("rollout {name:?} has no instances: its application {app:?} runs on no machine")]
    NoInstances { name: String, app: String },
    #[error("logs are kept for instances, rollouts and tasks, not for {0}")]
    WrongKind(String),
}

/// One machine to ask, and which application's logs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    machine: String,
    namespace: String,
    app: String,
    /// Only the lines written within these times (a Task's run on this machine).
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

impl Target {
    fn shows(&self, line: &LogLine) -> bool {
        self.window
            .is_none_or(|(start, end)| start <= line.time && line.time <= end)
    }
}

/// What one machine's answer adds, as it comes.
enum Update {
    Lines(Vec<LogLine>),
    Skipped(u64),
}

pub async fn run(g: &GlobalArgs, args: LogsArgs) -> anyhow::Result<i32> {
    let kind = super::parse_kind(&args.kind)?;
    if !matches!(
        kind,
        KindName::Instance | KindName::Rollout | KindName::Task
    ) {
        return Err(LogsError::WrongKind(kind.plural().to_string()).into());
    }
    let client = connect(g).await?;
    if kind == KindName::Task && args.follow {
        return Ok(i32::from(follow_task(g, &client, &args).await?));
    }
    let (targets, prefix) = match kind {
        KindName::Rollout => (rollout_targets(g, &client, &args).await?, true),
        KindName::Task => (task_targets(&find_task(g, &client, &args).await?), true),
        _ => (vec![instance_target(g, &client, &args).await?], false),
    };
    let request = |t: &Target| match t.window {
        // The agent keeps the task source's recent lines; this run's are among them.
        Some(_) => LogRequest {
            namespace: t.namespace.clone(),
            app: t.app.clone(),
            source: Some("task".into()),
            tail: MAX_TAIL,
            follow: false,
        },
        None => LogRequest {
            namespace: t.namespace.clone(),
            app: t.app.clone(),
            source: args.hook.clone(),
            tail: args.tail,
            follow: args.follow,
        },
    };
    let failed = if args.follow {
        follow(&client, &targets, &request, prefix).await
    } else {
        fetch(&client, &targets, &request, prefix).await
    };
    Ok(if failed { 1 } else { 0 })
}

/// Asks every machine (a few at a time) and prints each one's lines in machine order.
/// True when any machine failed (its error is printed).
async fn fetch(
    client: &Client,
    targets: &[Target],
    request: &dyn Fn(&Target) -> LogRequest,
    prefix: bool,
) -> bool {
    let mut answers = futures::stream::iter(targets.iter().map(|t| {
        let req = request(t);
        async move {
            let mut lines = Vec::new();
            let res = ask(client, t, &req, None, |u| {
                if let Update::Lines(l) = u {
                    lines.extend(l)
                }
            })
            .await;
            (t, lines, res)
        }
    }))
    .buffered(PARALLEL_MACHINES);
    let mut failed = false;
    while let Some((t, lines, res)) = answers.next().await {
        for line in lines.iter().filter(|l| t.shows(l)) {
            outln!("{}", format_line(prefix.then_some(&t.machine), line));
        }
        if let Err(e) = res {
            eprintln!("error: {}", output::escape(&e.to_string()));
            failed = true;
        }
    }
    failed
}

/// Follows every machine at once and prints lines as they come, until SIGINT/SIGTERM or
/// every machine has stopped. True when any machine failed.
async fn follow(
    client: &Client,
    targets: &[Target],
    request: &dyn Fn(&Target) -> LogRequest,
    prefix: bool,
) -> bool {
    let stop = super::get::shutdown_signal();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let leases = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for t in targets {
        let (client, t, req, tx) = (client.clone(), t.clone(), request(t), tx.clone());
        let leases = leases.clone();
        tasks.spawn(async move {
            let machine = t.machine.clone();
            let res = ask(&client, &t, &req, Some(&leases), |u| {
                let _ = tx.send((machine.clone(), Ok(u)));
            })
            .await;
            if let Err(e) = res {
                let _ = tx.send((machine, Err(e)));
            }
        });
    }
    drop(tx);
    tokio::pin!(stop);
    let mut failed = false;
    loop {
        let item = tokio::select! {
            _ = &mut stop => break,
            item = rx.recv() => item,
        };
        let Some((machine, update)) = item else { break };
        match update {
            Ok(Update::Lines(lines)) => {
                for line in &lines {
                    outln!("{}", format_line(prefix.then_some(&machine), line));
                }
            }
            Ok(Update::Skipped(n)) => eprintln!(
                "warning: machine {}: {n} line(s) skipped: this follower fell behind",
                output::escape(&machine)
            ),
            Err(e) => {
                eprintln!("error: {}", output::escape(&e.to_string()));
                failed = true;
            }
        }
    }
    // The requests' leases would run out within REQUEST_TTL; revoke them now instead,
    // so that the agents stop following at once.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let leases = std::mem::take(&mut *leases.lock().expect("lease list lock: no panics inside"));
    let revokes =
        futures::future::join_all(leases.into_iter().map(|l| client.store().revoke_lease(l)));
    let _ = tokio::time::timeout(super::CONNECT_TIMEOUT, revokes).await;
    failed
}

/// One request to one machine: writes it, reads the answer chunks until the last (or,
/// following, until the agent goes away), and removes every key it made by revoking
/// their lease. A follower that may be stopped midway lists its lease in `leases` for
/// the caller to revoke.
async fn ask(
    client: &Client,
    t: &Target,
    req: &LogRequest,
    leases: Option<&Mutex<Vec<LeaseId>>>,
    on_update: impl FnMut(Update),
) -> Result<(), LogsError> {
    let store_err = |source| LogsError::Store {
        machine: t.machine.clone(),
        source,
    };
    let lease = client
        .store()
        .grant_lease(REQUEST_TTL)
        .await
        .map_err(store_err)?;
    if let Some(list) = leases {
        list.lock()
            .expect("lease list lock: no panics inside")
            .push(lease);
    }
    let res = exchange(client, t, req, lease, on_update).await;
    // The request and its answer go at once instead of after REQUEST_TTL.
    let _ = client.store().revoke_lease(lease).await;
    res.map_err(|e| match e {
        Exchange::Store(source) => store_err(source),
        Exchange::Logs(e) => e,
    })
}

enum Exchange {
    Store(StoreError),
    Logs(LogsError),
}

impl From<StoreError> for Exchange {
    fn from(e: StoreError) -> Self {
        Exchange::Store(e)
    }
}

async fn exchange(
    client: &Client,
    t: &Target,
    req: &LogRequest,
    lease: LeaseId,
    mut on_update: impl FnMut(Update),
) -> Result<(), Exchange> {
    let machine = &t.machine;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let value = serde_json::to_vec(req).expect("a request of strings serializes");
    let rev = client.put_log_request(machine, &id, value, lease).await?;
    let mut answers = client.watch_log_answers(machine, &id, rev + 1).await?;
    let deadline = tokio::time::sleep(ANSWER_DEADLINE);
    tokio::pin!(deadline);
    let mut refresh = tokio::time::interval(REQUEST_TTL / 3);
    refresh.tick().await; // the first tick is immediate
    let mut answered = false;
    loop {
        let chunk = tokio::select! {
            _ = &mut deadline, if !answered => {
                return Err(Exchange::Logs(if client.machine_present(machine).await? {
                    LogsError::NoAnswer {
                        machine: machine.clone(),
                        prefix: crate::store::keys::machine_logs_prefix(machine),
                    }
                } else {
                    LogsError::NotReady { machine: machine.clone() }
                }));
            }
            _ = refresh.tick() => {
                client.store().keep_alive(lease).await?;
                if answered && !client.machine_present(machine).await? {
                    return Err(Exchange::Logs(LogsError::WentAway { machine: machine.clone() }));
                }
                continue;
            }
            chunk = answers.next() => chunk,
        };
        let bytes = match chunk {
            Some(Ok(b)) => b,
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(Exchange::Store(StoreError::Other(
                    "the answer's watch ended".into(),
                )))
            }
        };
        answered = true;
        let answer: LogAnswer = serde_json::from_slice(&bytes).map_err(|e| {
            Exchange::Logs(LogsError::BadAnswer {
                machine: machine.clone(),
                message: e.to_string(),
            })
        })?;
        if let Some(message) = answer.error {
            return Err(Exchange::Logs(LogsError::Refused {
                machine: machine.clone(),
                message,
            }));
        }
        if answer.skipped > 0 {
            on_update(Update::Skipped(answer.skipped));
        }
        on_update(Update::Lines(answer.lines));
        if answer.done {
            return Ok(());
        }
    }
}

/// `[machine] time source version stream: text`, every field from the machine escaped.
fn format_line(machine: Option<&String>, l: &LogLine) -> String {
    let prefix = machine.map_or(String::new(), |m| format!("[{}] ", output::escape(m)));
    format!(
        "{prefix}{} {} {} {}: {}",
        l.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        output::escape(&l.source),
        output::escape(&l.version),
        l.stream.as_str(),
        output::escape(&l.text)
    )
}

/// The namespaces to look in: `-n`'s, or every one with `-A`.
fn scope(g: &GlobalArgs, args: &LogsArgs) -> Scope {
    if args.all_namespaces {
        Scope::All
    } else {
        Scope::Namespace(g.namespace.clone())
    }
}

/// The one object named `name` in scope; several (with `-A`) is an error naming them.
fn the_one<K: Object>(items: Vec<K>, name: &str, kind: KindName) -> anyhow::Result<K> {
    let mut found: Vec<K> = items.into_iter().filter(|o| o.name() == name).collect();
    match found.len() {
        0 => Err(CliError::NotFound {
            plural: kind.plural(),
            name: name.to_string(),
        }
        .into()),
        1 => Ok(found.remove(0)),
        _ => Err(LogsError::Ambiguous {
            kind: kind.singular(),
            name: name.to_string(),
            namespaces: found
                .iter()
                .map(|o| o.meta().namespace.clone().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into()),
    }
}

async fn instance_target(
    g: &GlobalArgs,
    client: &Client,
    args: &LogsArgs,
) -> anyhow::Result<Target> {
    let listed = within(g, client.list::<Instance>(&scope(g, args))).await?;
    let inst = the_one(listed.items, &args.name, KindName::Instance)?;
    Ok(Target {
        machine: inst.spec().machine.clone(),
        namespace: inst.meta().namespace.clone().unwrap_or_default(),
        app: inst.spec().application.clone(),
        window: None,
    })
}

async fn rollout_targets(
    g: &GlobalArgs,
    client: &Client,
    args: &LogsArgs,
) -> anyhow::Result<Vec<Target>> {
    let listed = within(g, client.list::<Rollout>(&scope(g, args))).await?;
    let rollout = the_one(listed.items, &args.name, KindName::Rollout)?;
    let namespace = rollout.meta().namespace.clone().unwrap_or_default();
    let app = rollout.spec().application.clone();
    let instances = within(
        g,
        client.list::<Instance>(&Scope::Namespace(namespace.clone())),
    )
    .await?;
    let mut targets: Vec<Target> = instances
        .items
        .iter()
        .filter(|i| i.spec().application == app)
        .map(|i| Target {
            machine: i.spec().machine.clone(),
            namespace: namespace.clone(),
            app: app.clone(),
            window: None,
        })
        .collect();
    targets.sort_by(|a, b| a.machine.cmp(&b.machine));
    if targets.is_empty() {
        return Err(LogsError::NoInstances {
            name: args.name.clone(),
            app,
        }
        .into());
    }
    Ok(targets)
}

async fn find_task(g: &GlobalArgs, client: &Client, args: &LogsArgs) -> anyhow::Result<Task> {
    let listed = within(g, client.list::<Task>(&scope(g, args))).await?;
    the_one(listed.items, &args.name, KindName::Task)
}

/// The machines a Task ran on (or runs on), each with its run's start and finish (or now).
fn task_targets(task: &Task) -> Vec<Target> {
    let namespace = task.meta().namespace.clone().unwrap_or_default();
    let status = task.status.clone().unwrap_or_default();
    status
        .machines
        .iter()
        .filter_map(|m| {
            Some(Target {
                machine: m.machine.clone(),
                namespace: namespace.clone(),
                app: task.spec.application.clone(),
                window: Some((
                    m.start_time?,
                    m.finish_time.unwrap_or(DateTime::<Utc>::MAX_UTC),
                )),
            })
        })
        .collect()
}

/// The request for one machine's lines of a Task (the agent's `task` source).
fn task_request(t: &Target, follow: bool) -> LogRequest {
    LogRequest {
        namespace: t.namespace.clone(),
        app: t.app.clone(),
        source: Some("task".into()),
        tail: MAX_TAIL,
        follow,
    }
}

/// `logs task NAME -f`: each machine's lines of the run as they come, from the time its
/// run starts, until the Task finishes (or SIGINT/SIGTERM); then each machine's lines up
/// to its finish that had not come yet, so that the last ones are never lost. True when
/// any machine failed.
async fn follow_task(g: &GlobalArgs, client: &Client, args: &LogsArgs) -> anyhow::Result<bool> {
    let mut task = find_task(g, client, args).await?;
    let name = task.name().to_string();
    let namespace = task.meta().namespace.clone().unwrap_or_default();
    let mut watch = client.list_watch::<Task>(Scope::Namespace(namespace));
    let stop = super::get::shutdown_signal();
    tokio::pin!(stop);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut follow = TaskFollow::new(client.clone(), tx);
    loop {
        let finished = task.status.as_ref().is_some_and(|s| s.phase.is_finished());
        follow.targets(task_targets(&task), !finished);
        if finished {
            break;
        }
        tokio::select! {
            _ = &mut stop => {
                follow.stop().await;
                return Ok(follow.failed);
            }
            Some((machine, update)) = rx.recv() => follow.show(&machine, update),
            event = watch.next() => match event {
                None => anyhow::bail!("the watch on task {name:?} ended"),
                Some(Ok(ObjectEvent::Restarted(items))) => {
                    task = items
                        .into_iter()
                        .find(|t| t.name() == name)
                        .ok_or_else(|| anyhow::anyhow!("task {name:?} was deleted"))?;
                }
                Some(Ok(ObjectEvent::Applied(t))) if t.name() == name => task = t,
                Some(Ok(ObjectEvent::Deleted(t))) if t.name() == name => {
                    anyhow::bail!("task {name:?} was deleted")
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "watch interrupted; resuming"),
            },
        }
    }
    follow.stop().await;
    while let Ok((machine, update)) = rx.try_recv() {
        follow.show(&machine, update);
    }
    follow.catch_up().await;
    Ok(follow.failed)
}

/// The machines `logs task -f` follows and what it printed of each.
struct TaskFollow {
    client: Client,
    tx: mpsc::UnboundedSender<(String, Result<Update, LogsError>)>,
    /// Each machine's run, by machine: its window filters the lines shown.
    targets: std::collections::BTreeMap<String, Target>,
    printed: std::collections::HashMap<String, Printed>,
    leases: Arc<Mutex<Vec<LeaseId>>>,
    followers: tokio::task::JoinSet<()>,
    failed: bool,
}

impl TaskFollow {
    fn new(client: Client, tx: mpsc::UnboundedSender<(String, Result<Update, LogsError>)>) -> Self {
        TaskFollow {
            client,
            tx,
            targets: Default::default(),
            printed: Default::default(),
            leases: Arc::new(Mutex::new(Vec::new())),
            followers: tokio::task::JoinSet::new(),
            failed: false,
        }
    }

    /// Takes the runs' current windows and, with `follow`, follows each machine whose run
    /// has started (a finished Task's lines are only fetched, by [`Self::catch_up`]).
    fn targets(&mut self, targets: Vec<Target>, follow: bool) {
        for t in targets {
            if follow && !self.targets.contains_key(&t.machine) {
                let (client, req, tx) =
                    (self.client.clone(), task_request(&t, true), self.tx.clone());
                let (leases, target) = (self.leases.clone(), t.clone());
                self.followers.spawn(async move {
                    let machine = target.machine.clone();
                    let res = ask(&client, &target, &req, Some(&leases), |u| {
                        let _ = tx.send((machine.clone(), Ok(u)));
                    })
                    .await;
                    if let Err(e) = res {
                        let _ = tx.send((machine, Err(e)));
                    }
                });
            }
            self.targets.insert(t.machine.clone(), t);
        }
    }

    /// Prints the lines of `machine`'s run not printed before.
    fn show(&mut self, machine: &str, update: Result<Update, LogsError>) {
        let lines = match update {
            Ok(Update::Lines(lines)) => lines,
            Ok(Update::Skipped(n)) => {
                eprintln!(
                    "warning: machine {}: {n} line(s) skipped: this follower fell behind",
                    output::escape(machine)
                );
                return;
            }
            Err(e) => {
                eprintln!("error: {}", output::escape(&e.to_string()));
                self.failed = true;
                return;
            }
        };
        let Some(target) = self.targets.get(machine) else {
            return;
        };
        let printed = self.printed.entry(machine.to_string()).or_default();
        for line in lines.iter().filter(|l| target.shows(l)) {
            let text = format_line(Some(&target.machine), line);
            if printed.fresh(line.time, &text) {
                outln!("{text}");
            }
        }
    }

    /// Stops following: the followers end and their leases (and keys) go at once.
    async fn stop(&mut self) {
        self.followers.abort_all();
        while self.followers.join_next().await.is_some() {}
        let leases = std::mem::take(
            &mut *self
                .leases
                .lock()
                .expect("lease list lock: no panics inside"),
        );
        let store = self.client.store();
        let revokes = futures::future::join_all(leases.into_iter().map(|l| store.revoke_lease(l)));
        let _ = tokio::time::timeout(super::CONNECT_TIMEOUT, revokes).await;
    }

    /// Asks each machine once more for its run's lines: those written just before the
    /// Task finished may not have reached the follower yet.
    async fn catch_up(&mut self) {
        let targets: Vec<Target> = self.targets.values().cloned().collect();
        for t in &targets {
            let mut lines = Vec::new();
            let res = ask(&self.client, t, &task_request(t, false), None, |u| {
                if let Update::Lines(l) = u {
                    lines.extend(l)
                }
            })
            .await;
            self.show(&t.machine, Ok(Update::Lines(lines)));
            if let Err(e) = res {
                self.show(&t.machine, Err(e));
            }
        }
    }
}

/// What was printed of one machine, to print each line once when a follower's first
/// lines and the last fetch overlap what came before. Lines come in time order, so only
/// the last time's lines need keeping: memory stays bounded however long the run.
#[derive(Default)]
struct Printed {
    last: Option<DateTime<Utc>>,
    at_last: std::collections::HashSet<String>,
}

impl Printed {
    fn fresh(&mut self, time: DateTime<Utc>, text: &str) -> bool {
        match self.last {
            Some(last) if time < last => false,
            Some(last) if time == last => self.at_last.insert(text.to_string()),
            _ => {
                self.last = Some(time);
                self.at_last.clear();
                self.at_last.insert(text.to_string());
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::logs::Stream;

    #[test]
    fn a_followed_line_should_print_once_when_the_last_fetch_overlaps_it() {
        let t = |s: u32| DateTime::<Utc>::from_timestamp(1_700_000_000 + i64::from(s), 0).unwrap();
        let mut p = Printed::default();
        assert!(p.fresh(t(1), "a"));
        assert!(p.fresh(t(2), "b"));
        assert!(p.fresh(t(2), "c"), "another line at the same time");
        assert!(!p.fresh(t(1), "a"), "an earlier line, printed before");
        assert!(!p.fresh(t(2), "b"), "the same line again");
        assert!(p.fresh(t(3), "b"), "the same text later is a new line");
    }

    #[test]
    fn a_line_should_name_its_machine_source_version_and_stream_with_control_characters_escaped() {
        let line = LogLine {
            time: "2026-01-02T03:04:05.678901Z".parse().unwrap(),
            source: "install".into(),
            version: "1.0".into(),
            stream: Stream::Stderr,
            text: "red \x1b[31mtext\x07".into(),
        };
        assert_eq!(
            format_line(Some(&"web-1".to_string()), &line),
            "[web-1] 2026-01-02T03:04:05.678Z install 1.0 stderr: red \\e[31mtext\\a"
        );
        assert_eq!(
            format_line(None, &line),
            "2026-01-02T03:04:05.678Z install 1.0 stderr: red \\e[31mtext\\a"
        );
    }
}

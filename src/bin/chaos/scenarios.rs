//! The scenarios: a fleet, N runs (rollouts, or rounds of concurrent writers), the
//! scheduled faults of each run, and the invariants checked after it.

use crate::faults::{self, Anchor, Fault, Kind};
use crate::fleet::{self, Etcd, Fleet, LEASE_TTL, MACHINES, MAX_UNAVAILABLE};
use crate::invariants::{self, Violation, Write, WriteKind, Written};
use crate::journal::{self, Edge};
use anyhow::{bail, Context as _};
use deployctl::api::{find_condition, RolloutPhase};
use deployctl::testing::{EtcdCluster, EtcdServer};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a run may take to converge once its faults are healed (I3's deadline).
const CONVERGE_DEADLINE: Duration = Duration::from_secs(90);
/// How long the first activation may take to come before a fault anchored on it fires
/// anyway.
const FIRST_SWITCH_WAIT: Duration = Duration::from_secs(20);
/// I5: a silenced machine must be NotReady within the TTL and this.
const NOT_READY_SLACK: Duration = Duration::from_secs(2);
/// Concurrent CLI writers in a writers round (I6).
const WRITERS: usize = 32;
/// Between polls of the store, the journal and the disks.
const TICK: Duration = Duration::from_millis(50);

/// Set by SIGINT/SIGTERM: every wait loop stops, and drops clean up.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// One scenario: which faults it draws from, and how its fleet is made.
pub struct Scenario {
    pub name: &'static str,
    pub kinds: &'static [Kind],
    /// Runs the last agent in a network namespace (for partitions).
    pub isolate: bool,
    /// Runs rounds of concurrent CLI writers (I6) instead of rollouts.
    pub writers: bool,
    /// Runs on a 3-member etcd.
    pub cluster: bool,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "controller",
        kinds: &[Kind::ControllerKill, Kind::ControllerStop, Kind::Compact],
        isolate: false,
        writers: false,
        cluster: false,
    },
    Scenario {
        name: "agent",
        kinds: &[Kind::AgentKill, Kind::AgentStop],
        isolate: false,
        writers: false,
        cluster: false,
    },
    Scenario {
        name: "etcd",
        kinds: &[Kind::EtcdRestart, Kind::Compact],
        isolate: false,
        writers: false,
        cluster: false,
    },
    Scenario {
        name: "partition",
        kinds: &[Kind::Partition, Kind::AgentKill],
        isolate: true,
        writers: false,
        cluster: false,
    },
    Scenario {
        name: "mixed",
        kinds: &[
            Kind::ControllerKill,
            Kind::ControllerStop,
            Kind::AgentKill,
            Kind::AgentStop,
            Kind::EtcdRestart,
            Kind::Compact,
            Kind::Partition,
        ],
        isolate: true,
        writers: false,
        cluster: false,
    },
    Scenario {
        name: "writers",
        kinds: &[],
        isolate: false,
        writers: true,
        cluster: false,
    },
    Scenario {
        name: "cluster-leader",
        kinds: &[Kind::EtcdLeaderKill, Kind::Compact],
        isolate: false,
        writers: false,
        cluster: true,
    },
    Scenario {
        name: "cluster-follower",
        kinds: &[Kind::EtcdFollowerKill, Kind::ControllerStop],
        isolate: false,
        writers: false,
        cluster: true,
    },
];

/// What one scenario did and found.
pub struct Report {
    pub scenario: &'static str,
    pub seed: u64,
    pub runs: usize,
    pub faults: BTreeMap<&'static str, usize>,
    pub violations: Vec<Violation>,
    /// Per run: seconds from the action to convergence.
    pub convergence: Vec<f64>,
    /// Per violation: the run's schedule and journal excerpt, for the failure report.
    pub excerpts: Vec<String>,
    /// The work dir, kept when something was violated.
    pub kept: Option<PathBuf>,
    /// CLI calls made while one etcd member of three was down, and how many failed (I7).
    pub member_down_calls: (usize, usize),
    /// Warnings the agents logged while one member was down (retried store errors).
    pub member_down_agent_warnings: usize,
    /// CPU seconds of each agent process alive at the end (since its last start): an
    /// agent that spins shows up here.
    pub agent_cpu: BTreeMap<String, f64>,
}

impl Report {
    pub fn json(&self) -> Value {
        let mut by_invariant: BTreeMap<&str, usize> = BTreeMap::new();
        for v in &self.violations {
            *by_invariant.entry(v.invariant).or_default() += 1;
        }
        let mut c = self.convergence.clone();
        c.sort_by(f64::total_cmp);
        let round = |x: f64| (x * 100.0).round() / 100.0;
        let conv = if c.is_empty() {
            Value::Null
        } else {
            let n = c.len();
            let median = if n % 2 == 1 {
                c[n / 2]
            } else {
                (c[n / 2 - 1] + c[n / 2]) / 2.0
            };
            json!({
                "min": round(c[0]),
                "median": round(median),
                "max": round(c[n - 1]),
            })
        };
        json!({
            "scenario": self.scenario,
            "seed": self.seed,
            "runs": self.runs,
            "faults": self.faults,
            "violations": self.violations.len(),
            "violated": by_invariant,
            "convergence_s": conv,
            "agent_cpu_s": self.agent_cpu.iter().map(|(k, v)| (k.clone(), round(*v))).collect::<BTreeMap<_, _>>(),
            "member_down": {
                "cli_calls": self.member_down_calls.0,
                "cli_failures": self.member_down_calls.1,
                "agent_warnings": self.member_down_agent_warnings,
            },
        })
    }
}

/// The seed of one scenario: the run's seed mixed with the scenario's name, so that each
/// scenario replays alone with `--scenario NAME` exactly as within `all`.
pub fn scenario_seed(seed: u64, name: &str) -> u64 {
    name.bytes().fold(seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a run should end in.
#[derive(Clone, Debug)]
struct Expect {
    version: String,
    /// The version failed and the Rollout rolled back to `version`.
    rolled_back: bool,
}

/// A fault being applied.
struct Active {
    fault: Fault,
    started: Instant,
    /// The controller it hit (controller faults).
    controller: Option<usize>,
    /// When its machine was first seen NotReady (agent faults).
    not_ready: Option<Instant>,
    /// The etcd member it took down (member faults).
    member: Option<usize>,
    /// Agent log sizes when it began (member faults: the warnings logged meanwhile).
    agent_logs: Vec<u64>,
    /// CLI calls made meanwhile and their failures (member faults).
    calls: usize,
    failures: Vec<String>,
    /// Machines seen NotReady meanwhile (member faults).
    not_ready_machines: BTreeSet<String>,
}

struct Runner<'a> {
    scenario: &'a Scenario,
    fleet: Fleet,
    rng: StdRng,
    report: Report,
    /// When each agent was SIGKILLed (journal clock), for I2's one allowed re-run.
    killed: BTreeMap<String, Vec<u64>>,
    /// The next version number.
    next: u32,
    /// I4 findings already reported (the logs are re-read after every run).
    seen_i4: BTreeSet<String>,
}

/// Runs one scenario to the end and reports; an error is a harness failure (the fleet
/// could not be set up), not a violation.
pub fn run(
    scenario: &'static Scenario,
    seed: u64,
    runs: usize,
    deployctl: PathBuf,
    keep: bool,
) -> anyhow::Result<Report> {
    let seed = scenario_seed(seed, scenario.name);
    eprintln!("chaos: scenario {} (seed {seed}): starting", scenario.name);
    let etcd = if scenario.cluster {
        Etcd::Cluster(EtcdCluster::start(3))
    } else {
        Etcd::Single(EtcdServer::start())
    };
    let fleet = Fleet::start(deployctl, etcd, scenario.isolate)?;
    let mut runner = Runner {
        scenario,
        fleet,
        rng: StdRng::seed_from_u64(seed),
        report: Report {
            scenario: scenario.name,
            seed,
            runs: 0,
            faults: BTreeMap::new(),
            violations: Vec::new(),
            convergence: Vec::new(),
            excerpts: Vec::new(),
            kept: None,
            member_down_calls: (0, 0),
            member_down_agent_warnings: 0,
            agent_cpu: BTreeMap::new(),
        },
        killed: BTreeMap::new(),
        next: 2,
        seen_i4: BTreeSet::new(),
    };
    runner.set_up()?;
    for run in 1..=runs {
        check_interrupted()?;
        if scenario.writers {
            runner.writers_round(run)?;
        } else {
            runner.rollout(run)?;
        }
        runner.report.runs = run;
    }
    for a in &runner.fleet.agents {
        if let Some(cpu) = a
            .pid()
            .and_then(|p| deployctl::testing::cpu_seconds(p.as_raw() as u32).ok())
        {
            runner.report.agent_cpu.insert(a.name.clone(), cpu);
        }
    }
    let mut report = runner.report;
    if keep || !report.violations.is_empty() {
        report.kept = Some(runner.fleet.work.path().to_path_buf());
        // Keep the work dir (logs, journal, roots) for the report's reader.
        let Fleet { work, .. } = runner.fleet;
        let _ = work.keep();
    }
    Ok(report)
}

impl Runner<'_> {
    fn violate(&mut self, invariant: &'static str, run: usize, detail: String) {
        eprintln!(
            "chaos: VIOLATION {invariant} in {} run {run}: {detail}",
            self.scenario.name
        );
        self.report.violations.push(Violation {
            invariant,
            run,
            detail,
        });
    }

    fn build(&self, version: &str) -> anyhow::Result<()> {
        fleet::build_artifact(&self.fleet.artifacts(), version)
    }

    /// Applies the Application and the Rollout at v1 and waits for it, with no faults.
    fn set_up(&mut self) -> anyhow::Result<()> {
        self.build("v1")?;
        let docs = [self.fleet.application(), Fleet::rollout("v1", json!({}))];
        let out = self.fleet.apply(&docs);
        if out.code != 0 {
            bail!("cannot apply the application: {}", out.stderr);
        }
        let expect = Expect {
            version: "v1".into(),
            rolled_back: false,
        };
        if let Err(last) = self.wait_converged(&expect)? {
            self.violate("I3", 0, format!("never converged at v1: {last}"));
        }
        Ok(())
    }

    /// The CLI call that starts run `run`, and what it should end in.
    fn act(&mut self, run: usize) -> anyhow::Result<Option<Expect>> {
        let stable = self
            .fleet
            .get_rollout()?
            .status
            .and_then(|s| s.stable_version)
            .unwrap_or_default();
        let (args, expect): (Vec<String>, Expect) = match run % 5 {
            2 => {
                let r = self.fleet.get_rollout()?;
                let history = r.status.map(|s| s.history).unwrap_or_default();
                let Some(target) = history.iter().rev().find(|h| h.version != r.spec.version)
                else {
                    bail!("nothing to undo to in the rollout's history");
                };
                let expect = Expect {
                    version: target.version.clone(),
                    rolled_back: false,
                };
                (
                    vec!["rollout".into(), "undo".into(), fleet::APP.into()],
                    expect,
                )
            }
            4 => {
                let version = format!("v{}-bad", self.next);
                self.next += 1;
                self.build(&version)?;
                let expect = Expect {
                    version: stable,
                    rolled_back: true,
                };
                (
                    vec!["set".into(), "version".into(), fleet::APP.into(), version],
                    expect,
                )
            }
            _ => {
                let version = format!("v{}", self.next);
                self.next += 1;
                self.build(&version)?;
                let expect = Expect {
                    version: version.clone(),
                    rolled_back: false,
                };
                (
                    vec!["set".into(), "version".into(), fleet::APP.into(), version],
                    expect,
                )
            }
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.fleet.cli(&args);
        if out.code != 0 {
            self.violate(
                "I7",
                run,
                format!(
                    "`deployctl {}` failed: {}",
                    args.join(" "),
                    out.stderr.trim()
                ),
            );
            return Ok(None);
        }
        Ok(Some(expect))
    }

    /// One rollout run: the action, its faults, convergence, and the checks.
    fn rollout(&mut self, run: usize) -> anyhow::Result<()> {
        let faults = faults::draw(&mut self.rng, self.scenario.kinds, self.fleet.isolated);
        let schedule: Vec<String> = faults.iter().map(|f| f.to_string()).collect();
        let before = self.fleet.currents();
        let mark = journal::now_ns();
        let t0 = Instant::now();
        let Some(expect) = self.act(run)? else {
            return Ok(());
        };
        eprintln!(
            "chaos: {} run {run}: towards {}{}; faults: [{}]",
            self.scenario.name,
            expect.version,
            if expect.rolled_back {
                " (rolled back)"
            } else {
                ""
            },
            schedule.join("; ")
        );
        let violations_before = self.report.violations.len();
        self.inject(run, faults, mark, Instant::now())?;
        match self.wait_converged(&expect)? {
            Ok(()) => self.report.convergence.push(t0.elapsed().as_secs_f64()),
            Err(last) => self.violate(
                "I3",
                run,
                format!(
                    "not converged at {} within {CONVERGE_DEADLINE:?} of the last fault: {last}",
                    expect.version
                ),
            ),
        }
        self.check_journal(run, mark, &before);
        self.check_fencing(run);
        if self.report.violations.len() > violations_before {
            self.excerpt(run, mark, &schedule);
        }
        Ok(())
    }

    fn excerpt(&mut self, run: usize, mark: u64, schedule: &[String]) {
        let window = self.fleet.journal_since(mark);
        self.report.excerpts.push(format!(
            "scenario {} seed {} run {run}\nfaults: [{}]\njournal (ms after the action):\n{}",
            self.scenario.name,
            self.report.seed,
            schedule.join("; "),
            journal::excerpt(&window, mark)
        ));
    }

    /// I1 and I2 over the run's journal window.
    fn check_journal(&mut self, run: usize, mark: u64, before: &BTreeMap<String, Option<String>>) {
        let (records, bad) = journal::read(&self.fleet.journal());
        for line in bad {
            self.violate("journal", run, format!("malformed journal line {line:?}"));
        }
        let now = journal::now_ns();
        let window = journal::window(&records, mark, now);
        let (most, at) = invariants::most_in_flight(&window, now);
        if most > MAX_UNAVAILABLE {
            self.violate(
                "I1",
                run,
                format!(
                    "{most} activations in flight at +{} ms (maxUnavailable {MAX_UNAVAILABLE})",
                    (at - mark) / 1_000_000
                ),
            );
        }
        for d in invariants::double_switches(&window, before, &self.killed) {
            self.violate("I2", run, d);
        }
    }

    /// I4 over every controller log so far (new findings only).
    fn check_fencing(&mut self, run: usize) {
        let logs: Vec<_> = self
            .fleet
            .controller_logs()
            .into_iter()
            .map(|(id, path)| invariants::read_controller_log(&id, &path))
            .collect();
        if logs.iter().all(|l| l.terms.is_empty()) {
            self.violate(
                "I4",
                run,
                "no controller logged a term: cannot check fencing".into(),
            );
            return;
        }
        for d in invariants::deposed_writes(&logs) {
            if self.seen_i4.insert(d.clone()) {
                self.violate("I4", run, d);
            }
        }
    }

    /// Applies the run's faults in order, each at its moment, and heals them; checks I5
    /// for those that silence an agent past its TTL.
    fn inject(
        &mut self,
        run: usize,
        faults: Vec<Fault>,
        mark: u64,
        acted: Instant,
    ) -> anyhow::Result<()> {
        let mut pending: VecDeque<Fault> = faults.into();
        let mut first_switch: Option<Instant> = None;
        let mut healed_at = acted;
        let mut active: Option<Active> = None;
        while !pending.is_empty() || active.is_some() {
            check_interrupted()?;
            let now = Instant::now();
            if first_switch.is_none()
                && self
                    .fleet
                    .journal_since(mark)
                    .iter()
                    .any(|r| r.edge == Edge::Start)
            {
                first_switch = Some(now);
            }
            if let Some(a) = active.as_mut() {
                if a.fault.kind.silences_agent() && a.not_ready.is_none() {
                    let name = format!("m{}", a.fault.agent);
                    if self.fleet.machine_ready(&name) == Some(false) {
                        a.not_ready = Some(now);
                    }
                }
                if a.fault.kind.downs_a_member() {
                    Self::probe_availability(&self.fleet, a);
                }
                if now >= a.started + a.fault.hold {
                    let a = active.take().expect("matched Some just above");
                    self.heal(run, a)?;
                    healed_at = Instant::now();
                }
            } else if let Some(f) = pending.front() {
                let anchor = match f.anchor {
                    Anchor::Action => Some(acted),
                    Anchor::FirstSwitch => {
                        first_switch.or_else(|| (now >= acted + FIRST_SWITCH_WAIT).then_some(now))
                    }
                    Anchor::PreviousHealed => Some(healed_at),
                };
                if anchor.is_some_and(|a| now >= a + f.delay) {
                    let f = pending.pop_front().expect("front() was Some");
                    active = Some(self.apply_fault(f)?);
                }
            }
            std::thread::sleep(TICK); // the poll interval of the fault clock
        }
        Ok(())
    }

    fn apply_fault(&mut self, fault: Fault) -> anyhow::Result<Active> {
        use nix::sys::signal::Signal;
        // A fault on a controller needs one leading; an agent's I5 needs one to notice.
        let leader = self.fleet.wait_leader(Duration::from_secs(15));
        *self.report.faults.entry(fault.kind.name()).or_default() += 1;
        let mut controller = None;
        let mut member = None;
        let agent = fault.agent;
        match fault.kind {
            Kind::ControllerKill | Kind::ControllerStop => {
                let i = leader.unwrap_or(0);
                controller = Some(i);
                if fault.kind == Kind::ControllerKill {
                    self.fleet.controllers[i].kill();
                } else {
                    self.fleet.controllers[i].signal(Signal::SIGSTOP);
                    self.fleet.controllers[i].stopped = true;
                }
            }
            Kind::AgentKill => {
                self.fleet.agents[agent].kill();
                self.killed
                    .entry(format!("m{agent}"))
                    .or_default()
                    .push(journal::now_ns());
            }
            Kind::AgentStop => {
                self.fleet.agents[agent].signal(Signal::SIGSTOP);
                self.fleet.agents[agent].stopped = true;
            }
            Kind::EtcdRestart => match &mut self.fleet.etcd {
                Etcd::Single(e) => e.kill(),
                Etcd::Cluster(_) => bail!("etcd-restart is for the single etcd"),
            },
            Kind::EtcdLeaderKill | Kind::EtcdFollowerKill => {
                let Etcd::Cluster(c) = &mut self.fleet.etcd else {
                    bail!("{} needs the 3-member etcd", fault.kind.name());
                };
                let leading = c.wait_for_leader();
                let i = if fault.kind == Kind::EtcdLeaderKill {
                    leading
                } else {
                    let followers: Vec<usize> = (0..c.size()).filter(|&m| m != leading).collect();
                    followers[fault.agent % followers.len()]
                };
                c.kill(i);
                member = Some(i);
            }
            Kind::Compact => {
                if let Err(e) = self.fleet.compact() {
                    eprintln!("chaos: compaction failed: {e}");
                }
            }
            Kind::Partition => self
                .fleet
                .netns
                .as_ref()
                .context("a partition needs the namespaced agent")?
                .partition()?,
        }
        let hit = match (controller, member) {
            (Some(i), _) => format!(" (hit {})", self.fleet.controllers[i].identity()),
            (_, Some(m)) => format!(" (hit member {m})"),
            _ => String::new(),
        };
        eprintln!("chaos:   fault {fault}{hit}");
        Ok(Active {
            fault,
            started: Instant::now(),
            controller,
            not_ready: None,
            member,
            agent_logs: self.fleet.agent_log_sizes(),
            calls: 0,
            failures: Vec::new(),
            not_ready_machines: BTreeSet::new(),
        })
    }

    fn heal(&mut self, run: usize, a: Active) -> anyhow::Result<()> {
        use nix::sys::signal::Signal;
        let agent = a.fault.agent;
        match a.fault.kind {
            Kind::ControllerKill => {
                let i = a.controller.expect("set for controller faults");
                self.fleet.start_controller(i)?;
            }
            Kind::ControllerStop => {
                let i = a.controller.expect("set for controller faults");
                self.fleet.controllers[i].signal(Signal::SIGCONT);
                self.fleet.controllers[i].stopped = false;
            }
            Kind::AgentKill => self.fleet.start_agent(agent)?,
            Kind::AgentStop => {
                self.fleet.agents[agent].signal(Signal::SIGCONT);
                self.fleet.agents[agent].stopped = false;
            }
            Kind::EtcdRestart => match &mut self.fleet.etcd {
                Etcd::Single(e) => e.restart(),
                Etcd::Cluster(_) => {}
            },
            Kind::EtcdLeaderKill | Kind::EtcdFollowerKill => {
                if let (Etcd::Cluster(c), Some(m)) = (&mut self.fleet.etcd, a.member) {
                    c.restart(m);
                }
                self.judge_availability(run, &a);
            }
            Kind::Compact => {}
            Kind::Partition => self
                .fleet
                .netns
                .as_ref()
                .context("a partition needs the namespaced agent")?
                .heal()?,
        }
        // I5: silenced past TTL + slack, the machine must have gone NotReady by then.
        let bound = LEASE_TTL + NOT_READY_SLACK;
        let silenced = a.started.elapsed();
        if a.fault.kind.silences_agent() && silenced >= bound {
            let seen = a.not_ready.map(|t| t - a.started);
            if seen.is_none_or(|s| s > bound) {
                self.violate(
                    "I5",
                    run,
                    format!(
                        "m{agent} silenced by {} for {silenced:?}: NotReady {} (bound {bound:?})",
                        a.fault.kind.name(),
                        match seen {
                            Some(s) => format!("after {s:?}"),
                            None => "never seen".into(),
                        }
                    ),
                );
            }
        }
        Ok(())
    }

    /// One round of I7's probes while a member is down: a CLI read (as a user would run
    /// it) and every machine's readiness (the agents' keep-alives).
    fn probe_availability(fleet: &Fleet, a: &mut Active) {
        let out = fleet.cli(&["get", "rollouts"]);
        a.calls += 1;
        if out.code != 0 {
            a.failures.push(out.stderr.trim().to_string());
        }
        for agent in &fleet.agents {
            if fleet.machine_ready(&agent.name) == Some(false) {
                a.not_ready_machines.insert(agent.name.clone());
            }
        }
    }

    /// I7 at the end of a member's outage: no CLI call failed, no machine went NotReady.
    fn judge_availability(&mut self, run: usize, a: &Active) {
        let warnings = self.fleet.agent_warnings_since(&a.agent_logs);
        self.report.member_down_calls.0 += a.calls;
        self.report.member_down_calls.1 += a.failures.len();
        self.report.member_down_agent_warnings += warnings.len();
        let what = a.fault.kind.name();
        if let Some(first) = a.failures.first() {
            self.violate(
                "I7",
                run,
                format!(
                    "{} of {} CLI calls failed during {what}; first: {first}",
                    a.failures.len(),
                    a.calls
                ),
            );
        }
        if !a.not_ready_machines.is_empty() {
            let names: Vec<&str> = a.not_ready_machines.iter().map(String::as_str).collect();
            self.violate(
                "I7",
                run,
                format!(
                    "machines went NotReady during {what}: {}; agent warnings meanwhile: {}",
                    names.join(", "),
                    warnings
                        .iter()
                        .take(3)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" | ")
                ),
            );
        }
    }

    /// Waits for the fleet to converge on `expect` (I3): the Rollout done (or rolled back),
    /// every machine's `current` at the version, every Instance's status saying so.
    /// `Ok(Err(last))`: the deadline passed; `last` says what was still off.
    fn wait_converged(&mut self, expect: &Expect) -> anyhow::Result<Result<(), String>> {
        let deadline = Instant::now() + CONVERGE_DEADLINE;
        let mut last = String::new();
        while Instant::now() < deadline {
            check_interrupted()?;
            if let Err(e) = self.fleet.check_alive() {
                self.violate("crash", self.report.runs + 1, e.to_string());
            }
            match self.converged(expect) {
                Ok(()) => return Ok(Ok(())),
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(200)); // polling the fleet, not a sync stand-in
        }
        Ok(Err(last))
    }

    fn converged(&self, expect: &Expect) -> Result<(), String> {
        let r = self.fleet.get_rollout().map_err(|e| e.to_string())?;
        let st = r.status.clone().unwrap_or_default();
        if st.observed_generation != r.metadata.generation.unwrap_or(0) {
            return Err(format!(
                "status observed generation {}, spec is {}",
                st.observed_generation,
                r.metadata.generation.unwrap_or(0)
            ));
        }
        let version = expect.version.as_str();
        let done = if expect.rolled_back {
            st.phase == RolloutPhase::Degraded
                && find_condition(&st.conditions, "Degraded")
                    .is_some_and(|c| c.reason == "RolledBack")
        } else {
            st.phase == RolloutPhase::Complete
                && st.desired as usize == MACHINES
                && st.available as usize == MACHINES
        };
        if !done || st.stable_version.as_deref() != Some(version) {
            return Err(format!(
                "rollout {:?} stable {:?} desired {} available {} ({})",
                st.phase, st.stable_version, st.desired, st.available, st.message
            ));
        }
        let disk = self.fleet.currents();
        let off: Vec<String> = disk
            .iter()
            .filter(|(_, v)| v.as_deref() != Some(version))
            .map(|(m, v)| format!("{m} on {v:?}"))
            .collect();
        if !off.is_empty() {
            return Err(format!("disk: {}", off.join(", ")));
        }
        let instances = self.fleet.instances().map_err(|e| e.to_string())?;
        let off: Vec<String> = instances
            .iter()
            .filter_map(|i| {
                let reported = i.status.as_ref().and_then(|s| s.current_version.clone());
                let on_disk = disk.get(&i.spec.machine).cloned().flatten();
                (reported != on_disk)
                    .then(|| format!("{}: status {reported:?}, disk {on_disk:?}", i.spec.machine))
            })
            .collect();
        if instances.len() != MACHINES || !off.is_empty() {
            return Err(format!(
                "{} instances; status differs from disk: {}",
                instances.len(),
                off.join(", ")
            ));
        }
        Ok(())
    }
}

impl Runner<'_> {
    /// I6: 32 concurrent CLI writers on the Rollout; every write lands or fails with a
    /// clean conflict, every change in the store's history is one that succeeded, and the
    /// final state is the last one written. Then the fleet must converge on it (I1–I3).
    fn writers_round(&mut self, run: usize) -> anyhow::Result<()> {
        let base = self.fleet.get_rollout()?.spec.version;
        let kinds: Vec<WriteKind> = (0..WRITERS)
            .map(|j| match j % 4 {
                0 | 1 => WriteKind::SetVersion(format!("w{run}-{j}")),
                2 if (j / 4) % 2 == 0 => WriteKind::Pause,
                2 => WriteKind::Resume,
                _ => WriteKind::Label(format!("{run}-{j}")),
            })
            .collect();
        for k in &kinds {
            if let WriteKind::SetVersion(v) = k {
                self.build(v)?;
            }
        }
        let key = "/deployctl/rollouts/default/api";
        let (_, from) = self
            .fleet
            .rt
            .block_on(self.fleet.client.store().list(key, None))?;
        let before = self.fleet.currents();
        let mark = journal::now_ns();
        let t0 = Instant::now();
        eprintln!("chaos: writers run {run}: {WRITERS} concurrent writers from {base}");
        let fleet = &self.fleet;
        let writes: Vec<Write> = std::thread::scope(|s| {
            let handles: Vec<_> = kinds
                .iter()
                .enumerate()
                .map(|(writer, what)| {
                    let base = base.clone();
                    s.spawn(move || {
                        let out = match what {
                            WriteKind::SetVersion(v) => {
                                fleet.cli(&["set", "version", fleet::APP, v])
                            }
                            WriteKind::Pause => fleet.cli(&["rollout", "pause", fleet::APP]),
                            WriteKind::Resume => fleet.cli(&["rollout", "resume", fleet::APP]),
                            WriteKind::Label(l) => {
                                fleet.apply(&[Fleet::rollout(&base, json!({ "chaos-writer": l }))])
                            }
                        };
                        Write {
                            writer,
                            what: what.clone(),
                            ok: out.code == 0,
                            stderr: out.stderr,
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a writer thread does not panic"))
                .collect()
        });
        let history = self.history(key, from)?;
        self.check_writes(run, &writes, &history, from)?;
        // Converge on whatever the writes left, resumed.
        let final_spec = self.fleet.get_rollout()?.spec;
        if final_spec.paused {
            let out = self.fleet.cli(&["rollout", "resume", fleet::APP]);
            if out.code != 0 {
                self.violate("I6", run, format!("cannot resume: {}", out.stderr.trim()));
            }
        }
        let expect = Expect {
            version: final_spec.version.clone(),
            rolled_back: false,
        };
        match self.wait_converged(&expect)? {
            Ok(()) => self.report.convergence.push(t0.elapsed().as_secs_f64()),
            Err(last) => self.violate(
                "I3",
                run,
                format!(
                    "not converged at {} after the writers: {last}",
                    expect.version
                ),
            ),
        }
        let violations_before = self.report.violations.len();
        self.check_journal(run, mark, &before);
        self.check_fencing(run);
        if self.report.violations.len() > violations_before {
            self.excerpt(run, mark, &[format!("{WRITERS} writers")]);
        }
        Ok(())
    }

    /// Every value the Rollout's spec key took after revision `from`, up to now, from a
    /// watch (nothing compacts during a writers round).
    fn history(&self, key: &str, from: i64) -> anyhow::Result<Vec<(i64, Written)>> {
        let store = self.fleet.client.store().clone();
        let key = key.to_string();
        self.fleet.rt.block_on(async move {
            // The watch ends at the key's last write (other keys move the store's revision).
            let (kvs, _) = store.list(&key, None).await?;
            let now = kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(from);
            let mut events = store.watch(&key, from + 1).await?;
            let mut history = Vec::new();
            let mut seen = from;
            while seen < now {
                let batch = tokio::time::timeout(Duration::from_secs(10), events.next())
                    .await
                    .context("the watch went quiet before the current revision")?
                    .context("the watch ended")??;
                for e in batch {
                    seen = seen.max(e.kv.mod_revision);
                    if e.kv.key != key || e.kv.mod_revision > now {
                        continue;
                    }
                    let w = Written::parse(&e.kv.value)
                        .context("a spec value that is not a rollout")?;
                    history.push((e.kv.mod_revision, w));
                }
            }
            Ok(history)
        })
    }

    fn check_writes(
        &mut self,
        run: usize,
        writes: &[Write],
        history: &[(i64, Written)],
        from: i64,
    ) -> anyhow::Result<()> {
        let start = self
            .fleet
            .rt
            .block_on(
                self.fleet
                    .client
                    .store()
                    .list("/deployctl/rollouts/default/api", Some(from)),
            )
            .ok()
            .and_then(|(kvs, _)| kvs.first().and_then(|kv| Written::parse(&kv.value)));
        let mut found = invariants::lost_writes(writes, start.as_ref(), history);
        let now = Written::parse(
            &serde_json::to_vec(&self.fleet.get_rollout()?).context("a rollout serializes")?,
        );
        if let (Some((rev, last)), Some(now)) = (history.last(), now) {
            if *last != now {
                found.push(format!(
                    "the final state {now:?} is not the last write ({rev}: {last:?})"
                ));
            }
        }
        eprintln!(
            "chaos: writers run {run}: {} of {WRITERS} calls succeeded, {} revisions",
            writes.iter().filter(|w| w.ok).count(),
            history.len()
        );
        for f in found {
            self.violate("I6", run, f);
        }
        Ok(())
    }
}

//! What one Rollout reconcile costs the controller at N machines, in memory (no store):
//! `machine_views` + `plan_instances` + `rollout::plan` + the diff that picks the writes.
//!
//! ```text
//! cargo run --release --bin bench-reconcile -- [--machines 10000] [--runs 20]
//! ```
//!
//! The state is a Rollout mid-way from v1 to v2 (`maxUnavailable: 10%`, `minStaged:
//! 100%`): every machine has staged v2, 40% run it, 10% are switching, the rest wait.
//! Two cases are timed: a reconcile that writes a few stage/switch orders (agents just
//! reported), and one that finds nothing to write (the steady state between reports).

use deployctl::api::{
    Application, Instance, InstancePhase, InstanceSpec, InstanceStatus, IntOrPercent, Machine,
    MachineSpec, Object, Rollout, VersionRef,
};
use deployctl::controller::context::decide_rollout;
use deployctl::store::Write;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts allocations (and bytes) so the benchmark can print them per reconcile.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to mimalloc (the binaries' allocator) unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size as u64, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const APPLICATION: &str = include_str!("../../manifests/application_basic.yaml");

struct State {
    rollout: Rollout,
    app: Application,
    machines: Vec<Arc<Machine>>,
    presence: BTreeSet<String>,
    instances: Vec<Arc<Instance>>,
}

fn version(v: &str) -> VersionRef {
    VersionRef {
        version: v.into(),
        sha256: Some(format!("{:064}", v.len())),
    }
}

/// N machines and Instances of `web`, every one staged v2; the first 40% run v2, the
/// next 10% are switching to it, the others run v1. Both lists are shuffled, as the
/// informer (a hash map) lists them.
fn build(n: usize) -> anyhow::Result<State> {
    let app: Application = serde_yaml::from_str(APPLICATION)?;
    let mut rollout: Rollout =
        serde_yaml::from_str(include_str!("../../manifests/rollout_basic.yaml"))?;
    rollout.spec.version = "2.0.0".into();
    rollout.spec.sha256 = version("2.0.0").sha256;
    rollout.spec.strategy.max_unavailable = IntOrPercent::Percent("10%".into());
    rollout.spec.strategy.min_staged = IntOrPercent::Percent("100%".into());
    rollout.metadata.generation = Some(2);
    let mut machines = Vec::with_capacity(n);
    let mut presence = BTreeSet::new();
    let mut instances = Vec::with_capacity(n);
    let t = chrono::Utc::now();
    for i in 0..n {
        let name = format!("node-{i:05}.dc1.example.com");
        let mut m = Machine::new(&name, MachineSpec::default());
        m.metadata.labels = [
            ("role", "web".to_string()),
            ("zone", format!("zone-{}", i % 8)),
            ("rack", format!("rack-{}", i % 200)),
            ("os", "debian-12".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        m.metadata.resource_version = Some((10 + i).to_string());
        presence.insert(name.clone());
        machines.push(Arc::new(m));

        let mut inst = Instance::new(&Instance::name_for("web", &name), InstanceSpec::default());
        inst.metadata.namespace = Some("default".into());
        inst.metadata.labels = [
            ("deployctl.dev/application".to_string(), "web".to_string()),
            ("deployctl.dev/machine".to_string(), name.clone()),
        ]
        .into();
        deployctl::reconcilers::application::snapshot(&app, &name, &mut inst.spec);
        let on_v2 = i < n * 4 / 10;
        let switching = !on_v2 && i < n / 2;
        inst.spec.current = Some(if on_v2 || switching { "2.0.0" } else { "1.0.0" }.into());
        inst.spec.staged = if on_v2 || switching {
            vec![version("2.0.0"), version("1.0.0")]
        } else {
            vec![version("1.0.0"), version("2.0.0")]
        };
        inst.metadata.generation = Some(3);
        inst.metadata.resource_version = Some((20_000 + i).to_string());
        inst.status = Some(InstanceStatus {
            observed_generation: 3,
            phase: if switching {
                InstancePhase::Verifying
            } else {
                InstancePhase::Running
            },
            current_version: Some(if on_v2 { "2.0.0" } else { "1.0.0" }.into()),
            staged_versions: vec!["1.0.0".into(), "2.0.0".into()],
            healthy: !switching,
            ready_since: Some(t),
            available: !switching,
            updated_at: Some(t),
            ..Default::default()
        });
        instances.push(Arc::new(inst));
    }
    // The informer's caches are hash maps: the controller lists them in no useful order.
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    machines.shuffle(&mut rng);
    instances.shuffle(&mut rng);
    let mut state = State {
        rollout,
        app,
        machines,
        presence,
        instances,
    };
    // The Rollout's status as the controller last wrote it, at 1.0.0 stable.
    let mut st = deployctl::api::RolloutStatus {
        stable_version: Some("1.0.0".into()),
        stable_sha256: version("1.0.0").sha256,
        ..Default::default()
    };
    st.target_version = Some("1.0.0".into());
    state.rollout.status = Some(st);
    let (_, plan) = decide(&state);
    state.rollout.status = Some(plan.status);
    Ok(state)
}

fn decide(
    s: &State,
) -> (
    Vec<Write<Instance>>,
    deployctl::reconcilers::rollout::RolloutPlan,
) {
    decide_rollout(
        &s.rollout,
        &s.app,
        &s.machines,
        &s.presence,
        &s.instances,
        Default::default(),
        chrono::Utc::now(),
    )
}

/// Applies the writes as the store would: new spec, generation + 1.
fn apply(s: &mut State, writes: Vec<Write<Instance>>) {
    for w in writes {
        if let Write::Replace {
            current,
            mut desired,
        } = w
        {
            desired.metadata.generation = Some(current.metadata.generation.unwrap_or(0) + 1);
            if let Some(slot) = s.instances.iter_mut().find(|i| i.name() == desired.name()) {
                *slot = Arc::new(desired);
            }
        }
    }
}

struct Sample {
    time: Duration,
    allocs: u64,
    bytes: u64,
    writes: usize,
}

fn measure(s: &State) -> Sample {
    let (a0, b0) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
    let start = Instant::now();
    let (writes, plan) = decide(s);
    let n = writes.len();
    drop(std::hint::black_box((writes, plan)));
    Sample {
        time: start.elapsed(),
        allocs: ALLOCS.load(Relaxed) - a0,
        bytes: BYTES.load(Relaxed) - b0,
        writes: n,
    }
}

/// Where one steady reconcile's time goes, step by step (the steps of `decide_rollout`),
/// median of `runs` each.
fn breakdown(s: &State, runs: usize) {
    use deployctl::reconcilers::{application, rollout, MachineView};
    let mut steps: [Vec<Duration>; 4] = Default::default();
    for _ in 0..runs {
        let now = chrono::Utc::now();
        let t = Instant::now();
        let views: Vec<MachineView> = s
            .machines
            .iter()
            .filter(|m| s.app.spec.selector.matches(&m.metadata.labels))
            .map(|m| MachineView {
                machine: Arc::clone(m),
                ready: s.presence.contains(m.name()),
            })
            .collect();
        steps[0].push(t.elapsed());
        let t = Instant::now();
        let stable = rollout::stable_ref(s.rollout.status.as_ref().unwrap_or(&Default::default()));
        let membership = application::plan_instances(
            &s.app,
            &views,
            &s.instances,
            stable.as_ref(),
            s.rollout.spec.strategy.min_ready_seconds,
        );
        steps[1].push(t.elapsed());
        let t = Instant::now();
        let desired: rollout::MachineSet = views
            .iter()
            .filter(|m| m.schedulable_and_ready())
            .map(|m| m.name())
            .collect();
        let plan = rollout::plan(rollout::RolloutInput {
            rollout: &s.rollout,
            instances: membership.keep,
            desired_machines: &desired,
            now,
            topology: Default::default(),
        });
        steps[2].push(t.elapsed());
        let t = Instant::now();
        let unchanged = plan
            .instances
            .iter()
            .zip(&membership.read)
            .filter(|(i, r)| r.as_ref().is_some_and(|r| Arc::ptr_eq(i, r)))
            .count();
        std::hint::black_box(unchanged);
        steps[3].push(t.elapsed());
        drop(std::hint::black_box((plan, membership.delete, views)));
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    println!(
        "{{\"case\":\"breakdown\",\"views_ms\":{:.2},\"plan_instances_ms\":{:.2},\"rollout_plan_ms\":{:.2},\"diff_ms\":{:.2}}}",
        median(&mut steps[0]),
        median(&mut steps[1]),
        median(&mut steps[2]),
        median(&mut steps[3]),
    );
}

fn report(case: &str, n: usize, mut samples: Vec<Sample>) {
    samples.sort_by_key(|s| s.time);
    let median = &samples[samples.len() / 2];
    let min = &samples[0];
    println!(
        "{{\"case\":\"{case}\",\"machines\":{n},\"runs\":{},\"median_ms\":{:.2},\"min_ms\":{:.2},\"allocs\":{},\"alloc_mb\":{:.1},\"writes\":{}}}",
        samples.len(),
        median.time.as_secs_f64() * 1e3,
        min.time.as_secs_f64() * 1e3,
        median.allocs,
        median.bytes as f64 / 1e6,
        median.writes,
    );
}

fn main() -> anyhow::Result<()> {
    let mut n = 10_000;
    let mut runs = 20;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| -> anyhow::Result<usize> {
            let v = args
                .next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a number"))?;
            v.parse().map_err(|e| anyhow::anyhow!("{flag} {v:?}: {e}"))
        };
        match a.as_str() {
            "--machines" => n = value("--machines")?,
            "--runs" => runs = value("--runs")?.max(1),
            other => anyhow::bail!("unknown argument {other:?}: --machines N, --runs N"),
        }
    }
    let mut state = build(n)?;

    // Agents just reported: 1% of the switching machines became available, so the
    // reconcile hands out that many new switch orders.
    let mut reported = Vec::new();
    for run in 0..runs + 1 {
        let mut s = State {
            rollout: state.rollout.clone(),
            app: state.app.clone(),
            machines: state.machines.clone(),
            presence: state.presence.clone(),
            instances: state.instances.clone(),
        };
        let switching = |i: &Instance| {
            i.status.as_ref().is_some_and(|st| !st.available)
                && i.spec.current.as_deref() == Some("2.0.0")
        };
        for inst in s
            .instances
            .iter_mut()
            .filter(|i| switching(i))
            .take(n / 100)
        {
            let mut i = Instance::clone(inst);
            if let Some(st) = i.status.as_mut() {
                st.current_version = Some("2.0.0".into());
                st.available = true;
                st.healthy = true;
                st.phase = InstancePhase::Running;
            }
            *inst = Arc::new(i);
        }
        let sample = measure(&s);
        if run > 0 {
            reported.push(sample);
        }
    }
    report("after_reports", n, reported);

    // Steady: the writes of one decision applied, the next finds nothing to do.
    let (writes, plan) = decide(&state);
    apply(&mut state, writes);
    state.rollout.status = Some(plan.status);
    let mut steady = Vec::new();
    for run in 0..runs + 1 {
        let sample = measure(&state);
        if run > 0 {
            steady.push(sample);
        }
    }
    report("steady", n, steady);
    breakdown(&state, runs);
    Ok(())
}

//! `deployctl cordon`, `uncordon` and `drain`: take a Machine out of rollouts and back.

use super::get::shutdown_signal;
use super::{connect, duration_in, reference, within, CliError, GlobalArgs};
use crate::api::{Application, Instance, InstancePhase, KindName, Machine, Object, Rollout};
use crate::reconcilers::machine::is_ready;
use crate::store::{Client, Scope};
use clap::Args;
use std::collections::BTreeMap;
use std::time::Duration;

pub const CORDON_EXAMPLES: &str = "\
Examples:
  # New rollouts leave web-1 out; what it runs keeps running
  deployctl cordon web-1";

pub const UNCORDON_EXAMPLES: &str = "\
Examples:
  # Back into rollouts
  deployctl uncordon web-1";

pub const DRAIN_EXAMPLES: &str = "\
Examples:
  # Before maintenance: cordon web-1, then wait until no rollout counts it
  deployctl drain web-1

  # Give up (exit 1) if a rollout still counts it after two minutes
  deployctl drain web-1 --timeout 2m";

/// How often `drain` reads the store again while it waits.
const DRAIN_POLL: Duration = Duration::from_millis(500);

#[derive(Args, Debug)]
pub struct MachineArgs {
    /// The Machine.
    pub machine: String,
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    /// The Machine.
    pub machine: String,
    /// Give up (exit 1, the machine stays cordoned) after this long, within 1s..=1d.
    #[arg(long, default_value = "5m", value_parser = duration_in(Duration::from_secs(1), Duration::from_secs(86_400)))]
    pub timeout: Duration,
}

/// Sets `spec.unschedulable` to `cordoned` with one compare-and-swap update; prints
/// `cordoned`, `uncordoned` or `already ...` as kubectl does.
pub async fn set_cordon(g: &GlobalArgs, name: &str, cordoned: bool) -> anyhow::Result<i32> {
    let client = connect(g).await?;
    set_cordon_with(g, &client, name, cordoned).await?;
    Ok(0)
}

async fn set_cordon_with(
    g: &GlobalArgs,
    client: &Client,
    name: &str,
    cordoned: bool,
) -> anyhow::Result<()> {
    let mut was = false;
    let update = client.update::<Machine>(None, name, |m| {
        was = m.spec.unschedulable;
        m.spec.unschedulable = cordoned;
    });
    match within(g, update).await {
        Ok(_) => {}
        Err(e) => {
            return match e.downcast_ref::<crate::store::Error>() {
                Some(crate::store::Error::NotFound(_)) => Err(CliError::NotFound {
                    plural: Machine::PLURAL,
                    name: name.to_string(),
                }
                .into()),
                _ => Err(e),
            }
        }
    }
    let word = if cordoned { "cordoned" } else { "uncordoned" };
    let already = if was == cordoned { "already " } else { "" };
    outln!("{} {already}{word}", reference(KindName::Machine, name));
    Ok(())
}

/// Cordons the machine, then waits until no Rollout counts it: every Rollout whose
/// Application selects it has recounted its desired machines without it, and its
/// Instances there have finished what they were asked to do. Stops no service.
pub async fn drain(g: &GlobalArgs, args: DrainArgs) -> anyhow::Result<i32> {
    let client = connect(g).await?;
    set_cordon_with(g, &client, &args.machine, true).await?;
    let deadline = tokio::time::Instant::now() + args.timeout;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut last = Vec::new();
    loop {
        let fleet = Fleet::read(g, &client, &args.machine).await?;
        if !fleet.machines.iter().any(|m| m.name() == args.machine) {
            anyhow::bail!("machine {:?} was deleted while draining", args.machine);
        }
        let counting = fleet.still_counting(&args.machine);
        if counting.is_empty() {
            outln!("{} drained", reference(KindName::Machine, &args.machine));
            return Ok(0);
        }
        if counting != last {
            for why in &counting {
                eprintln!("waiting: {}", super::output::escape(why));
            }
            last = counting;
        }
        tokio::select! {
            _ = tokio::time::sleep(DRAIN_POLL) => {}
            _ = tokio::time::sleep_until(deadline) => {
                eprintln!(
                    "error: timed out after {} draining machine {:?}: {}",
                    humantime::format_duration(args.timeout),
                    args.machine,
                    super::output::escape(&last.join("; "))
                );
                return Ok(1);
            }
            _ = &mut shutdown => return Ok(1),
        }
    }
}

/// What `drain` reads each time: the machines, and the Applications, Rollouts and this
/// machine's Instances of every namespace.
pub struct Fleet {
    pub machines: Vec<Machine>,
    pub applications: Vec<Application>,
    pub rollouts: Vec<Rollout>,
    /// The Instances on the drained machine.
    pub instances: Vec<Instance>,
}

impl Fleet {
    async fn read(g: &GlobalArgs, client: &Client, machine: &str) -> anyhow::Result<Fleet> {
        Ok(Fleet {
            machines: within(g, client.list::<Machine>(&Scope::All)).await?.items,
            applications: within(g, client.list::<Application>(&Scope::All))
                .await?
                .items,
            rollouts: within(g, client.list::<Rollout>(&Scope::All)).await?.items,
            instances: within(g, client.list::<Instance>(&Scope::Machine(machine.into())))
                .await?
                .items,
        })
    }

    /// Why rollouts still count `machine`, one sentence per Rollout; empty when none does.
    ///
    /// A Rollout counts it while its Application selects it and either its status still
    /// counts more desired machines than the selected, ready, uncordoned ones (the
    /// controller has not recounted since the cordon), or its Instance on the machine
    /// (when the machine is ready: a dead agent finishes nothing) has not finished the
    /// generation it was given or is staging, switching or verifying.
    pub fn still_counting(&self, machine: &str) -> Vec<String> {
        let Some(m) = self.machines.iter().find(|m| m.name() == machine) else {
            return vec![format!("machine {machine:?} is gone")];
        };
        let apps: BTreeMap<(Option<&str>, &str), &Application> = self
            .applications
            .iter()
            .map(|a| ((a.namespace(), a.name()), a))
            .collect();
        let mut why = Vec::new();
        for ro in &self.rollouts {
            let Some(app) = apps.get(&(ro.namespace(), ro.spec.application.as_str())) else {
                continue;
            };
            if !app.spec.selector.matches(&m.metadata.labels) {
                continue;
            }
            let counted = self
                .machines
                .iter()
                .filter(|o| app.spec.selector.matches(&o.metadata.labels))
                .filter(|o| is_ready(o) && !o.spec.unschedulable)
                .count();
            let desired = ro.status.as_ref().map_or(0, |s| s.desired) as usize;
            let name = format!("{}/{}", ro.namespace().unwrap_or_default(), ro.name());
            if desired > counted {
                why.push(format!(
                    "rollout {name} counts {desired} desired machines, not yet recounted without {machine}"
                ));
                continue;
            }
            if !is_ready(m) {
                continue;
            }
            let inst = self
                .instances
                .iter()
                .find(|i| i.spec.application == app.name() && i.namespace() == app.namespace());
            if let Some(busy) = inst.and_then(busy) {
                why.push(format!(
                    "rollout {name}: instance {} on {machine} is {busy}",
                    inst.map_or("", |i| i.name())
                ));
            }
        }
        why
    }
}

/// What an Instance is still doing, or `None` when it has finished its spec.
fn busy(i: &Instance) -> Option<String> {
    let generation = i.metadata.generation.unwrap_or(0);
    let Some(st) = &i.status else {
        return Some("not reported yet".into());
    };
    if st.observed_generation < generation {
        return Some(format!(
            "on generation {} of {generation}",
            st.observed_generation
        ));
    }
    match st.phase {
        InstancePhase::Staging | InstancePhase::Switching | InstancePhase::Verifying => {
            Some(st.phase.to_string().to_lowercase())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        set_condition, ApplicationSpec, ConditionStatus, InstanceSpec, InstanceStatus,
        MachineStatus, RolloutSpec, RolloutStatus,
    };
    use chrono::Utc;

    fn machine(name: &str, ready: bool, cordoned: bool) -> Machine {
        let mut m = Machine::new(name, Default::default());
        m.metadata.labels.insert("role".into(), "web".into());
        m.spec.unschedulable = cordoned;
        let mut st = MachineStatus::default();
        let status = if ready {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        };
        set_condition(&mut st.conditions, "Ready", status, "x", "", Utc::now());
        m.status = Some(st);
        m
    }

    fn fleet(desired: u32, phase: InstancePhase, observed: i64) -> Fleet {
        let mut app = Application::new(
            "api",
            serde_json::from_value::<ApplicationSpec>(serde_json::json!({
                "selector": {"matchLabels": {"role": "web"}},
                "artifact": {"url": "https://example.com/a.tar.gz"}
            }))
            .expect("a valid spec"),
        );
        app.metadata.namespace = Some("default".into());
        let mut ro = Rollout::new(
            "api",
            RolloutSpec {
                application: "api".into(),
                version: "1".into(),
                ..Default::default()
            },
        );
        ro.metadata.namespace = Some("default".into());
        ro.status = Some(RolloutStatus {
            desired,
            ..Default::default()
        });
        let mut inst = Instance::new(
            "api.m1",
            InstanceSpec {
                machine: "m1".into(),
                application: "api".into(),
                ..Default::default()
            },
        );
        inst.metadata.namespace = Some("default".into());
        inst.metadata.generation = Some(2);
        inst.status = Some(InstanceStatus {
            observed_generation: observed,
            phase,
            ..Default::default()
        });
        Fleet {
            machines: vec![machine("m1", true, true), machine("m2", true, false)],
            applications: vec![app],
            rollouts: vec![ro],
            instances: vec![inst],
        }
    }

    #[test]
    fn a_cordoned_machine_should_stay_counted_until_the_rollout_recounts_and_its_instance_settles()
    {
        let why = fleet(2, InstancePhase::Running, 2).still_counting("m1");
        assert_eq!(
            why,
            ["rollout default/api counts 2 desired machines, not yet recounted without m1"]
        );
        let why = fleet(1, InstancePhase::Switching, 2).still_counting("m1");
        assert_eq!(
            why,
            ["rollout default/api: instance api.m1 on m1 is switching"]
        );
        let why = fleet(1, InstancePhase::Running, 1).still_counting("m1");
        assert_eq!(
            why,
            ["rollout default/api: instance api.m1 on m1 is on generation 1 of 2"]
        );
        assert!(fleet(1, InstancePhase::Running, 2)
            .still_counting("m1")
            .is_empty());
        assert!(fleet(1, InstancePhase::Failed, 2)
            .still_counting("m1")
            .is_empty());
    }

    #[test]
    fn a_machine_no_application_selects_should_drain_at_once() {
        let mut f = fleet(2, InstancePhase::Switching, 1);
        f.machines[0].metadata.labels.clear();
        assert!(f.still_counting("m1").is_empty());
        assert_eq!(f.still_counting("gone"), ["machine \"gone\" is gone"]);
    }
}

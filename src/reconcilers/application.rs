//! Application: one Instance per selected machine, each a self-contained snapshot of the
//! Application; a new machine gets the stable version at once.

use super::MachineView;
use crate::api::{Application, ApplicationStatus, Instance, InstanceSpec, Object, VersionRef};
use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::Arc;

/// The Instances an Application should have.
#[derive(Debug, Default)]
pub struct InstancePlan {
    /// Every Instance that should exist, existing ones (with their status and metadata, spec
    /// refreshed from the Application) and new ones (no resourceVersion yet).
    pub keep: Vec<Arc<Instance>>,
    /// For each of `keep`, the Instance as read from `existing` (`None` for a new one): what
    /// a write compares against, found without a lookup by name.
    pub read: Vec<Option<Arc<Instance>>>,
    /// Instances whose machine is gone or no longer selected.
    pub delete: Vec<Arc<Instance>>,
}

/// Copies what an agent needs from the Application into an Instance spec, leaving the
/// versions (`staged`, `current`, `restartAt`, `attempt`) as they are.
/// [`matches_snapshot`] must compare exactly the fields written here.
pub fn snapshot(app: &Application, machine: &str, into: &mut InstanceSpec) {
    let s = &app.spec;
    into.machine = machine.to_string();
    into.application = app.metadata.name.clone();
    into.artifact = s.artifact.clone();
    into.path = s.path.clone();
    into.shell = s.shell.clone();
    into.env = s.env.clone();
    into.hooks = s.hooks.clone();
    into.get_version = s.get_version.clone();
    into.health_check = s.health_check.clone();
    into.service = s.service.clone();
    into.keep_releases = s.keep_releases;
}

/// True when [`snapshot`] would leave `spec` unchanged: compared in place, so that an
/// Instance already in step with its Application is not copied.
pub fn matches_snapshot(app: &Application, machine: &str, spec: &InstanceSpec) -> bool {
    let s = &app.spec;
    spec.machine == machine
        && spec.application == app.metadata.name
        && spec.artifact == s.artifact
        && spec.path == s.path
        && spec.shell == s.shell
        && spec.env == s.env
        && spec.hooks == s.hooks
        && spec.get_version == s.get_version
        && spec.health_check == s.health_check
        && spec.service == s.service
        && spec.keep_releases == s.keep_releases
}

/// Decides which Instances `app` should have on `machines`, the Machines its selector
/// selects (the caller selects them: the Rollout decision needs that list too, and
/// matching the selector again was a tenth of a decision at 10,000 machines).
///
/// `existing` are the Instances of this Application. `stable` is the version a new machine
/// gets at once (the Rollout's stable version), if any. `min_ready_seconds` comes from
/// the Rollout. An existing Instance whose spec needs no change is kept as the same `Arc`
/// (callers may skip it by `Arc::ptr_eq`); one that changes is copied on write.
pub fn plan_instances(
    app: &Application,
    machines: &[MachineView],
    existing: &[Arc<Instance>],
    stable: Option<&VersionRef>,
    min_ready_seconds: u32,
) -> InstancePlan {
    let mut by_machine: FxHashMap<&str, &Arc<Instance>> =
        FxHashMap::with_capacity_and_hasher(existing.len(), Default::default());
    by_machine.extend(existing.iter().map(|i| (i.spec.machine.as_str(), i)));
    let namespace = app.namespace().unwrap_or(crate::api::DEFAULT_NAMESPACE);
    let mut keep: Vec<(Arc<Instance>, Option<Arc<Instance>>)> = Vec::with_capacity(existing.len());
    let mut delete = Vec::new();
    let mut selected: FxHashSet<&str> =
        FxHashSet::with_capacity_and_hasher(machines.len(), Default::default());
    for m in machines {
        selected.insert(m.name());
        match by_machine.get(m.name()) {
            Some(read) => {
                let mut inst = Arc::clone(read);
                if !matches_snapshot(app, m.name(), &inst.spec)
                    || inst.spec.min_ready_seconds != min_ready_seconds
                {
                    let inst = Arc::make_mut(&mut inst);
                    snapshot(app, m.name(), &mut inst.spec);
                    inst.spec.min_ready_seconds = min_ready_seconds;
                }
                keep.push((inst, Some(Arc::clone(read))));
            }
            None if m.schedulable_and_ready() => {
                let mut inst = Instance::new(
                    &Instance::name_for(&app.metadata.name, m.name()),
                    InstanceSpec::default(),
                );
                inst.metadata.namespace = Some(namespace.to_string());
                inst.metadata.labels = [
                    (
                        "deployctl.dev/application".to_string(),
                        app.metadata.name.clone(),
                    ),
                    ("deployctl.dev/machine".to_string(), m.name().to_string()),
                ]
                .into();
                snapshot(app, m.name(), &mut inst.spec);
                inst.spec.min_ready_seconds = min_ready_seconds;
                if let Some(v) = stable {
                    inst.spec.staged = vec![v.clone()];
                    inst.spec.current = Some(v.version.clone());
                }
                keep.push((Arc::new(inst), None));
            }
            None => {}
        }
    }
    for inst in existing {
        if !selected.contains(inst.spec.machine.as_str()) {
            delete.push(inst.clone());
        }
    }
    // Names are unique within a namespace: the unstable sort orders exactly as a stable one.
    keep.sort_unstable_by(|a, b| a.0.metadata.name.cmp(&b.0.metadata.name));
    let (keep, read) = keep.into_iter().unzip();
    InstancePlan { keep, read, delete }
}

/// The status an Application should have, or `None` when it already has it.
pub fn plan_status(
    app: &Application,
    machines: &[MachineView],
    stable_version: Option<&str>,
) -> Option<ApplicationStatus> {
    let selected: Vec<&MachineView> = machines
        .iter()
        .filter(|m| app.spec.selector.matches(m.labels()))
        .collect();
    let status = ApplicationStatus {
        observed_generation: app.metadata.generation.unwrap_or(0),
        machines: selected.len() as u32,
        ready_machines: selected.iter().filter(|m| m.ready).count() as u32,
        stable_version: stable_version.map(str::to_string),
    };
    (app.status.as_ref() != Some(&status)).then_some(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApplicationSpec, Artifact};

    pub(crate) fn machine(name: &str, role: &str, ready: bool) -> MachineView {
        let mut m = crate::api::Machine::new(name, Default::default());
        m.metadata.labels = [("role".to_string(), role.to_string())].into();
        MachineView {
            machine: Arc::new(m),
            ready,
        }
    }

    /// `plan_instances` of the machines `app` selects, as the Rollout decision calls it.
    fn plan_of(
        app: &Application,
        machines: &[MachineView],
        existing: &[Arc<Instance>],
        stable: Option<&VersionRef>,
        min_ready_seconds: u32,
    ) -> InstancePlan {
        let selected: Vec<MachineView> = machines
            .iter()
            .filter(|m| app.spec.selector.matches(m.labels()))
            .cloned()
            .collect();
        plan_instances(app, &selected, existing, stable, min_ready_seconds)
    }

    fn app() -> Application {
        let mut app = Application::new(
            "api",
            ApplicationSpec {
                artifact: Artifact {
                    url: "file:///a/{{version}}.tar.gz".into(),
                    ..Default::default()
                },
                keep_releases: 3,
                ..Default::default()
            },
        );
        app.spec
            .selector
            .match_labels
            .insert("role".into(), "web".into());
        app
    }

    #[test]
    fn new_ready_machine_should_get_the_stable_version_at_once() {
        let stable = VersionRef {
            version: "1.0".into(),
            sha256: None,
        };
        let plan = plan_of(
            &app(),
            &[
                machine("m1", "web", true),
                machine("m2", "db", true),
                machine("m3", "web", false),
            ],
            &[],
            Some(&stable),
            5,
        );
        assert_eq!(plan.keep.len(), 1, "only m1: selected and ready");
        let inst = &plan.keep[0];
        assert_eq!(inst.metadata.name, "api.m1");
        assert_eq!(inst.spec.current.as_deref(), Some("1.0"));
        assert_eq!(inst.spec.staged, vec![stable]);
        assert_eq!(inst.spec.min_ready_seconds, 5);
        assert_eq!(inst.spec.artifact.url, "file:///a/{{version}}.tar.gz");
    }

    #[test]
    fn instance_on_unselected_machine_should_be_deleted_and_not_ready_ones_kept() {
        let first = plan_of(
            &app(),
            &[machine("m1", "web", true), machine("m2", "web", true)],
            &[],
            None,
            0,
        );
        let existing: Vec<Arc<Instance>> = first.keep;
        let plan = plan_of(
            &app(),
            &[machine("m1", "web", false), machine("m2", "db", true)],
            &existing,
            None,
            0,
        );
        assert_eq!(plan.keep.len(), 1);
        assert_eq!(
            plan.keep[0].spec.machine, "m1",
            "not ready: kept, converges when back"
        );
        assert_eq!(plan.delete.len(), 1);
        assert_eq!(plan.delete[0].spec.machine, "m2");
    }

    #[test]
    fn an_instance_in_step_with_its_application_should_be_kept_uncopied() {
        let machines = [machine("m1", "web", true)];
        let existing = plan_of(&app(), &machines, &[], None, 5).keep;
        let again = plan_of(&app(), &machines, &existing, None, 5);
        assert!(Arc::ptr_eq(&existing[0], &again.keep[0]));

        let mut changed = app();
        changed.spec.env.insert("MODE".into(), "fast".into());
        let plan = plan_of(&changed, &machines, &existing, None, 5);
        assert!(!Arc::ptr_eq(&existing[0], &plan.keep[0]));
        assert_eq!(
            plan.keep[0].spec.env.get("MODE").map(String::as_str),
            Some("fast")
        );
        assert!(
            existing[0].spec.env.is_empty(),
            "the cached copy stays as read"
        );

        let plan = plan_of(&app(), &machines, &existing, None, 7);
        assert_eq!(plan.keep[0].spec.min_ready_seconds, 7);
    }

    #[test]
    fn snapshot_and_its_comparison_should_agree() {
        let mut spec = InstanceSpec::default();
        assert!(!matches_snapshot(&app(), "m1", &spec));
        snapshot(&app(), "m1", &mut spec);
        assert!(matches_snapshot(&app(), "m1", &spec));
        assert!(!matches_snapshot(&app(), "m2", &spec));
        let mut other = app();
        other.spec.keep_releases = 5;
        assert!(!matches_snapshot(&other, "m1", &spec));
    }

    #[test]
    fn application_status_should_count_selected_and_ready_machines() {
        let st = plan_status(
            &app(),
            &[
                machine("m1", "web", true),
                machine("m2", "web", false),
                machine("m3", "db", true),
            ],
            Some("2.0"),
        )
        .unwrap();
        assert_eq!((st.machines, st.ready_machines), (2, 1));
        assert_eq!(st.stable_version.as_deref(), Some("2.0"));
    }
}

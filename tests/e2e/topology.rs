//! Fleet topology end to end, on both stores: waves by zone with a bake, and a Rollout
//! that depends on another, bumped in the same `apply`. Real controller and agents
//! (the `rollouts.rs` fleet); the order is read from the hooks' timestamps.

use crate::common::Backend;
use crate::rollouts::{build_artifact, Fleet};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The activate hook: `<ns since epoch> <app> <machine> <version>`, one short append.
const STAMP_ACTIVATIONS: &str =
    r#"echo "$(date +%s%N) $DEPLOY_APP $DEPLOY_MACHINE $DEPLOY_VERSION" >> "$LOGS/activations""#;

fn stamping_hooks() -> Value {
    json!({ "activate": [{ "command": STAMP_ACTIVATIONS, "timeoutSeconds": 30 }] })
}

/// One activation line.
struct Activation {
    ns: i128,
    app: String,
    machine: String,
    version: String,
}

fn activations(f: &Fleet) -> Vec<Activation> {
    f.log_lines("activations")
        .iter()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(w.len(), 4, "activation line {l:?}");
            Activation {
                ns: w[0].parse().unwrap_or_else(|_| panic!("no time in {l:?}")),
                app: w[1].to_string(),
                machine: w[2].to_string(),
                version: w[3].to_string(),
            }
        })
        .collect()
}

fn ns_of(t: chrono::DateTime<chrono::Utc>) -> i128 {
    i128::from(
        t.timestamp_nanos_opt()
            .expect("a time within the nanosecond range"),
    )
}

/// 6 agents in zones a, b, c; v1 flat, then v2 in waves a, b, c with a 2 s bake: every
/// activation of a zone comes after the previous zone's bake ended (which is after its
/// last machine activated).
fn waves_should_finish_each_zone_and_bake_before_the_next(label: &'static str, backend: Backend) {
    let mut f = Fleet::new(label, backend);
    for v in ["v1", "v2"] {
        build_artifact(&f.artifacts(), v);
    }
    f.start_controller_with("ctl-a", &[]);
    let zones: BTreeMap<String, &str> = (0..6)
        .map(|i| (format!("m{i}"), ["a", "b", "c"][i / 2]))
        .collect();
    for (m, z) in &zones {
        f.start_agent_labelled(m, &format!("role=web,zone={z}"), &[]);
    }
    let app = f.app(stamping_hooks(), json!({}));
    f.apply(&[
        app.clone(),
        Fleet::rollout("v1", json!({ "maxUnavailable": 2 }), json!({})),
    ]);
    f.wait_complete("v1", 6);
    let waves = json!({
        "maxUnavailable": 2,
        "waves": { "labelKey": "zone", "order": ["a", "b", "c"], "bake": "2s" },
    });
    f.apply(&[app, Fleet::rollout("v2", waves, json!({}))]);
    let done = f.wait_complete("v2", 6);
    let st = done.status.expect("a complete rollout has a status");
    let wave_values: Vec<&str> = st.waves.iter().map(|w| w.value.as_str()).collect();
    assert_eq!(wave_values, ["a", "b", "c"], "[{label}] {:#?}", st.waves);
    assert!(
        st.waves.iter().all(|w| w.phase == "Done"),
        "[{label}] {:#?}",
        st.waves
    );

    let v2: Vec<Activation> = activations(&f)
        .into_iter()
        .filter(|a| a.version == "v2")
        .collect();
    assert_eq!(v2.len(), 6, "[{label}] one v2 activation per machine");
    let times = |zone: &str| -> Vec<i128> {
        v2.iter()
            .filter(|a| zones[&a.machine] == zone)
            .map(|a| a.ns)
            .collect()
    };
    for (k, (earlier, later)) in [("a", "b"), ("b", "c")].into_iter().enumerate() {
        let last_earlier = *times(earlier).iter().max().expect("two machines per zone");
        let first_later = *times(later).iter().min().expect("two machines per zone");
        let bake_until = st.waves[k]
            .bake_until
            .unwrap_or_else(|| panic!("[{label}] wave {earlier} baked: {:#?}", st.waves));
        let done_at = st.waves[k].done_at.expect("a done wave has its time");
        assert!(
            last_earlier < ns_of(done_at),
            "[{label}] zone {earlier} finished (activated) before it was done"
        );
        assert!(
            ns_of(bake_until) - ns_of(done_at) >= 2_000_000_000,
            "[{label}] a 2 s bake"
        );
        assert!(
            first_later >= ns_of(bake_until),
            "[{label}] zone {later} started at {first_later}, before zone {earlier}'s bake ended at {bake_until}"
        );
    }
}

#[test]
fn waves_should_finish_each_zone_and_bake_before_the_next_on_the_embedded_store() {
    waves_should_finish_each_zone_and_bake_before_the_next("embedded", Backend::embedded());
}

#[test]
fn waves_should_finish_each_zone_and_bake_before_the_next_on_etcd() {
    waves_should_finish_each_zone_and_bake_before_the_next("etcd", Backend::etcd());
}

/// The Application `name` (a copy of the fleet's `api` with another name).
fn app_named(f: &Fleet, name: &str) -> Value {
    let mut app = f.app(stamping_hooks(), json!({}));
    app["metadata"]["name"] = json!(name);
    app
}

fn rollout_named(name: &str, version: &str, depends_on: &[&str]) -> Value {
    let mut ro = Fleet::rollout(version, json!({ "maxUnavailable": 1 }), json!({}));
    ro["metadata"]["name"] = json!(name);
    ro["spec"]["application"] = json!(name);
    if !depends_on.is_empty() {
        let deps: Vec<Value> = depends_on.iter().map(|d| json!({ "rollout": d })).collect();
        ro["spec"]["dependsOn"] = json!(deps);
    }
    ro
}

/// `web` dependsOn `api`, both bumped to v2 in one apply (web's document first): web's
/// first v2 activation comes after api's v2 revision completed.
fn a_dependent_should_switch_only_after_its_dependency_completes(
    label: &'static str,
    backend: Backend,
) {
    let mut f = Fleet::new(label, backend);
    for v in ["v1", "v2"] {
        build_artifact(&f.artifacts(), v);
    }
    f.start_controller_with("ctl-a", &[]);
    for m in ["m0", "m1", "m2"] {
        f.start_agent(m);
    }
    let (api, web) = (app_named(&f, "api"), app_named(&f, "web"));
    let both = |version: &str| {
        vec![
            web.clone(),
            api.clone(),
            rollout_named("web", version, &["api"]),
            rollout_named("api", version, &[]),
        ]
    };
    f.apply(&both("v1"));
    f.wait_complete("v1", 3);
    f.wait("web complete at v1", || {
        let st = f.get_rollout_named("web").status?;
        (st.stable_version.as_deref() == Some("v1") && st.available == 3).then_some(())
    });
    f.apply(&both("v2"));
    let api_done = f.wait_complete("v2", 3);
    f.wait("web complete at v2", || {
        let st = f.get_rollout_named("web").status?;
        (st.stable_version.as_deref() == Some("v2") && st.available == 3).then_some(())
    });
    let completed = api_done
        .status
        .expect("complete")
        .history
        .iter()
        .find(|r| r.version == "v2")
        .and_then(|r| r.completed_at)
        .expect("api's v2 revision completed");
    let web_first = activations(&f)
        .iter()
        .filter(|a| a.app == "web" && a.version == "v2")
        .map(|a| a.ns)
        .min()
        .expect("web activated v2");
    assert!(
        web_first > ns_of(completed),
        "[{label}] web's first v2 activation at {web_first} came before api completed at {completed}"
    );
}

#[test]
fn a_dependent_should_switch_only_after_its_dependency_completes_on_the_embedded_store() {
    a_dependent_should_switch_only_after_its_dependency_completes("embedded", Backend::embedded());
}

#[test]
fn a_dependent_should_switch_only_after_its_dependency_completes_on_etcd() {
    a_dependent_should_switch_only_after_its_dependency_completes("etcd", Backend::etcd());
}

/// A cycle closed with a stored Rollout is refused by `apply`, naming the document and
/// the cycle, and nothing is written; the same Rollout without the cycle applies.
fn apply_should_refuse_a_dependency_cycle_with_the_store(label: &str, backend: Backend) {
    let store = backend.url();
    let dir = crate::common::tempdir();
    let doc = |name: &str, dep: &str| {
        format!(
            "apiVersion: deployctl.dev/v1\nkind: Rollout\nmetadata: {{name: {name}}}\n\
             spec: {{application: {name}, version: '1', dependsOn: [{{rollout: {dep}}}]}}\n"
        )
    };
    let first = crate::common::write(dir.path(), "web.yaml", &doc("web", "api"));
    crate::common::run(&store, &["apply", "-f", &first]).ok();
    let second = crate::common::write(dir.path(), "api.yaml", &doc("api", "web"));
    let out = crate::common::run(&store, &["apply", "-f", &second]).code(1);
    assert!(
        out.stderr.contains(&format!(
            "{second}: document 1 (line 1), Rollout \"api\": spec.dependsOn: dependency cycle: api -> web -> api"
        )),
        "[{label}] {}",
        out.stderr
    );
    crate::common::run(&store, &["get", "rollout", "api"]).code(1);
    let fixed = crate::common::write(dir.path(), "api.yaml", &doc("api", "db"));
    crate::common::run(&store, &["apply", "-f", &fixed]).ok();
}

#[test]
fn apply_should_refuse_a_dependency_cycle_with_the_store_on_the_embedded_store() {
    apply_should_refuse_a_dependency_cycle_with_the_store("embedded", Backend::embedded());
}

#[test]
fn apply_should_refuse_a_dependency_cycle_with_the_store_on_etcd() {
    apply_should_refuse_a_dependency_cycle_with_the_store("etcd", Backend::etcd());
}

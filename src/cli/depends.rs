//! `dependsOn` in manifests: Rollouts written dependencies first, and cycles refused
//! before anything is written.

use super::manifest::{Loaded, Manifest, ManifestError};
use crate::api::{Object, Rollout, DEFAULT_NAMESPACE};
use crate::controller::context::dependency_keys;
use crate::reconcilers::rollout::find_cycle;
use std::collections::{BTreeMap, BTreeSet};

fn key(ro: &Rollout) -> (String, String) {
    (
        ro.namespace().unwrap_or(DEFAULT_NAMESPACE).to_string(),
        ro.name().to_string(),
    )
}

/// Reorders the Rollouts among `loaded` (which the loader keeps together, last but
/// Notifiers) so that each comes after the ones it depends on that are also loaded: a
/// commit that bumps both reaches the controller's cache in that order. Otherwise the
/// order is kept; Rollouts in a cycle keep theirs.
pub fn order_rollouts(loaded: &mut Vec<Loaded>) {
    let is_rollout = |l: &Loaded| matches!(l.manifest, Manifest::Rollout(_));
    let Some(start) = loaded.iter().position(is_rollout) else {
        return;
    };
    let end = start + loaded[start..].iter().take_while(|l| is_rollout(l)).count();
    let mut pending: Vec<Loaded> = loaded.drain(start..end).collect();
    let here: BTreeSet<(String, String)> = pending
        .iter()
        .filter_map(|l| match &l.manifest {
            Manifest::Rollout(r) => Some(key(r)),
            _ => None,
        })
        .collect();
    let mut placed: BTreeSet<(String, String)> = BTreeSet::new();
    let mut ordered = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        // The first Rollout whose loaded dependencies are all placed; in a cycle, the first.
        let ready = pending
            .iter()
            .position(|l| match &l.manifest {
                Manifest::Rollout(r) => dependency_keys(r)
                    .iter()
                    .all(|d| !here.contains(d) || placed.contains(d)),
                _ => true,
            })
            .unwrap_or(0);
        let next = pending.remove(ready);
        if let Manifest::Rollout(r) = &next.manifest {
            placed.insert(key(r));
        }
        ordered.push(next);
    }
    loaded.splice(start..start, ordered);
}

/// A `dependsOn` cycle through a loaded Rollout, over the stored Rollouts as these
/// manifests would change them: one error per Rollout that closes one, naming it.
pub fn cycles(loaded: &[Loaded], stored: &[Rollout]) -> Vec<ManifestError> {
    let mut graph: BTreeMap<(String, String), Vec<(String, String)>> = stored
        .iter()
        .map(|r| (key(r), dependency_keys(r)))
        .collect();
    for l in loaded {
        if let Manifest::Rollout(r) = &l.manifest {
            graph.insert(key(r), dependency_keys(r));
        }
    }
    let mut errors = Vec::new();
    for l in loaded {
        let Manifest::Rollout(r) = &l.manifest else {
            continue;
        };
        if r.spec.depends_on.is_empty() {
            continue;
        }
        let (ns, name) = key(r);
        let cycle = find_cycle((&ns, &name), |ns, n| {
            graph.get(&(ns.to_string(), n.to_string())).cloned()
        });
        if let Some(cycle) = cycle {
            errors.push(ManifestError {
                origin: l.origin.clone(),
                kind: Some("Rollout".to_string()),
                name: Some(name.clone()),
                path: Some("spec.dependsOn".to_string()),
                message: format!("dependency cycle: {}", cycle.join(" -> ")),
            });
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Dependency, RolloutSpec};
    use crate::cli::manifest::Origin;

    fn ro(name: &str, deps: &[&str]) -> Rollout {
        let mut r = Rollout::new(
            name,
            RolloutSpec {
                application: name.into(),
                version: "1".into(),
                depends_on: deps
                    .iter()
                    .map(|d| Dependency {
                        rollout: d.to_string(),
                        namespace: None,
                    })
                    .collect(),
                ..Default::default()
            },
        );
        r.metadata.namespace = Some("default".into());
        r
    }

    fn loaded(r: Rollout, doc: usize) -> Loaded {
        Loaded {
            origin: Origin {
                source: "ro.yaml".into(),
                doc,
                item: None,
                line: None,
            },
            manifest: Manifest::Rollout(r),
        }
    }

    fn names(l: &[Loaded]) -> Vec<String> {
        l.iter().map(|l| l.manifest.meta().name.clone()).collect()
    }

    #[test]
    fn rollouts_should_be_applied_after_the_ones_they_depend_on() {
        let mut l = vec![
            loaded(ro("web", &["api"]), 1),
            loaded(ro("api", &["db"]), 2),
            loaded(ro("other", &[]), 3),
            loaded(ro("db", &[]), 4),
        ];
        order_rollouts(&mut l);
        assert_eq!(names(&l), ["other", "db", "api", "web"]);
    }

    #[test]
    fn a_cycle_should_be_refused_naming_the_document_and_the_cycle() {
        // The store has db -> web; the manifest adds web -> api -> db.
        let l = vec![
            loaded(ro("web", &["api"]), 1),
            loaded(ro("api", &["db"]), 2),
        ];
        let errors = cycles(&l, &[ro("db", &["web"]), ro("api", &[])]);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(text[0].starts_with("ro.yaml: document 1"), "{}", text[0]);
        assert!(
            text[0].contains("dependency cycle: web -> api -> db -> web"),
            "{}",
            text[0]
        );
        assert!(cycles(&l, &[ro("db", &[])]).is_empty());
    }
}

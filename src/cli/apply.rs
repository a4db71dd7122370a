//! `deployctl apply`: create or update objects from manifests, all or nothing.

use super::manifest::{self, Manifest};
use super::{connect, reference, within, CliError, GlobalArgs};
use crate::api::selector::LabelSelector;
use crate::api::{KindName, Machine, Object, ObjectMeta, Rollout};
use crate::store::{Client, Error, Scope};
use clap::Args;
use std::collections::BTreeMap;

pub const EXAMPLES: &str = "\
Examples:
  # Apply every manifest under a directory (Machines and Applications before Rollouts)
  deployctl apply -f manifests/

  # Check a change without writing anything
  deployctl apply -f rollout_api.yaml --dry-run

  # From stdin
  cat app.yaml | deployctl apply -f -";

/// Create-or-update attempts before giving up on an object that keeps changing.
const APPLY_RETRIES: usize = 16;

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// A file, a directory (read recursively: *.yaml, *.yml, *.json) or `-` for stdin.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        required = true
    )]
    pub files: Vec<String>,
    /// Validate and compare with the store, print what would happen, write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What apply did to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        })
    }
}

pub async fn run(g: &GlobalArgs, args: ApplyArgs) -> anyhow::Result<i32> {
    let loaded = match manifest::load(&args.files, &g.namespace) {
        Ok(l) => l,
        Err(errors) => {
            manifest::print_errors(&errors);
            return Err(CliError::Exit(1).into());
        }
    };
    let client = connect(g).await?;
    refuse_dependency_cycles(g, &client, &loaded).await?;
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    let mut selectors: Vec<(String, LabelSelector)> = Vec::new();
    let mut declared_machines: Vec<BTreeMap<String, String>> = Vec::new();
    for l in loaded {
        let kind = l.manifest.kind();
        let name = l.manifest.meta().name.clone();
        match &l.manifest {
            Manifest::Application(a) => selectors.push((name.clone(), a.spec.selector.clone())),
            Manifest::Machine(m) => declared_machines.push(m.metadata.labels.clone()),
            Manifest::Rollout(_) | Manifest::Notifier(_) => {}
        }
        let outcome = match l.manifest {
            Manifest::Machine(o) => within(g, apply_object(&client, o, args.dry_run)).await,
            Manifest::Application(o) => within(g, apply_object(&client, o, args.dry_run)).await,
            Manifest::Rollout(o) => within(g, apply_object(&client, o, args.dry_run)).await,
            Manifest::Notifier(o) => within(g, apply_object(&client, o, args.dry_run)).await,
        }
        .map_err(|e| anyhow::anyhow!("{}: applying {}: {e:#}", l.origin, reference(kind, &name)))?;
        outln!("{} {outcome}{suffix}", reference(kind, &name));
    }
    if !selectors.is_empty() {
        warn_unmatched_selectors(g, &client, &selectors, declared_machines).await?;
    }
    Ok(0)
}

/// Refuses the whole apply, writing nothing, when a Rollout's `dependsOn` would close a
/// cycle with the stored Rollouts; each error names the document and the cycle.
async fn refuse_dependency_cycles(
    g: &GlobalArgs,
    client: &Client,
    loaded: &[manifest::Loaded],
) -> anyhow::Result<()> {
    let depends = loaded
        .iter()
        .any(|l| matches!(&l.manifest, Manifest::Rollout(r) if !r.spec.depends_on.is_empty()));
    if !depends {
        return Ok(());
    }
    let stored = within(g, client.list::<Rollout>(&Scope::All)).await?;
    let errors = super::depends::cycles(loaded, &stored.items);
    if errors.is_empty() {
        return Ok(());
    }
    let errors: Vec<manifest::LoadError> = errors
        .into_iter()
        .map(manifest::LoadError::Manifest)
        .collect();
    manifest::print_errors(&errors);
    Err(CliError::Exit(1).into())
}

/// A warning (stderr; the exit status stays 0) for each Application whose selector
/// matches no Machine, in the store or in these manifests: its Rollout would deploy
/// nothing. Reads the Machines once.
async fn warn_unmatched_selectors(
    g: &GlobalArgs,
    client: &Client,
    selectors: &[(String, LabelSelector)],
    mut machine_labels: Vec<BTreeMap<String, String>>,
) -> anyhow::Result<()> {
    let machines = within(g, client.list::<Machine>(&Scope::All)).await?;
    machine_labels.extend(machines.items.into_iter().map(|m| m.metadata.labels));
    for name in unmatched(selectors, &machine_labels) {
        eprintln!(
            "warning: {}: its selector matches no Machine; a Rollout of it deploys nothing until one matches",
            reference(KindName::Application, name)
        );
    }
    Ok(())
}

/// The Applications whose selector matches none of `machine_labels`.
fn unmatched<'a>(
    selectors: &'a [(String, LabelSelector)],
    machine_labels: &[BTreeMap<String, String>],
) -> Vec<&'a str> {
    selectors
        .iter()
        .filter(|(_, sel)| !machine_labels.iter().any(|l| sel.matches(l)))
        .map(|(name, _)| name.as_str())
        .collect()
}

/// `current` with the manifest's labels, annotations and spec. Request annotations
/// (`deployctl.dev/*`) the manifest does not set are kept: a later `apply` must not
/// undo a `rollout promote` the controller has not seen yet.
pub fn merge<K: Object>(current: &K, manifest: &K) -> K {
    let mut desired = current.clone();
    let want: &ObjectMeta = manifest.meta();
    let meta = desired.meta_mut();
    meta.labels = want.labels.clone();
    let mut annotations = want.annotations.clone();
    for (k, v) in &current.meta().annotations {
        if k.starts_with(&format!("{}/", crate::api::GROUP)) && !annotations.contains_key(k) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    meta.annotations = annotations;
    *desired.spec_mut() = manifest.spec().clone();
    desired
}

/// Creates the object or replaces its labels, annotations and spec; a lost race is
/// retried from fresh state.
pub async fn apply_object<K: Object>(
    client: &Client,
    manifest: K,
    dry_run: bool,
) -> crate::store::Result<Outcome> {
    let ns = manifest.namespace().map(str::to_string);
    for _ in 0..APPLY_RETRIES {
        let current: Option<K> = client.get(ns.as_deref(), manifest.name()).await?;
        match current {
            None => {
                if dry_run {
                    return Ok(Outcome::Created);
                }
                let mut new = manifest.clone();
                *new.status_mut() = None;
                match client.create(&new).await {
                    Ok(_) => return Ok(Outcome::Created),
                    // Somebody created it between our get and create: compare with theirs.
                    Err(Error::AlreadyExists(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            Some(current) => {
                let desired = merge(&current, &manifest);
                let same = desired.meta().labels == current.meta().labels
                    && desired.meta().annotations == current.meta().annotations
                    && desired.spec() == current.spec();
                if same {
                    return Ok(Outcome::Unchanged);
                }
                if dry_run {
                    return Ok(Outcome::Configured);
                }
                match client.replace(&current, desired).await {
                    Ok(_) => return Ok(Outcome::Configured),
                    Err(Error::Conflict(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Err(Error::Conflict(format!(
        "{}.{}/{} (still changing after {APPLY_RETRIES} attempts)",
        K::SINGULAR,
        crate::api::GROUP,
        manifest.name()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Rollout, RolloutSpec, ANNOTATION_PROMOTE};

    #[test]
    fn unmatched_should_name_only_applications_whose_selector_matches_no_machine() {
        let sel = |k: &str, v: &str| LabelSelector {
            match_labels: [(k.to_string(), v.to_string())].into(),
            ..Default::default()
        };
        let selectors = vec![
            ("web".to_string(), sel("role", "web")),
            ("db".to_string(), sel("role", "db")),
        ];
        let machines = vec![[("role".to_string(), "web".to_string())].into()];
        assert_eq!(unmatched(&selectors, &machines), ["db"]);
        assert_eq!(unmatched(&selectors, &[]), ["web", "db"]);
    }

    #[test]
    fn merge_should_keep_request_annotations_the_manifest_does_not_set() {
        let mut current = Rollout::new("api", RolloutSpec::default());
        current
            .metadata
            .annotations
            .insert(ANNOTATION_PROMOTE.into(), "t1".into());
        current
            .metadata
            .annotations
            .insert("team".into(), "a".into());
        current.metadata.labels.insert("old".into(), "x".into());
        current.metadata.generation = Some(3);
        let mut manifest = Rollout::new("api", RolloutSpec::default());
        manifest.spec.version = "2".into();
        manifest.metadata.labels.insert("new".into(), "y".into());
        let merged = merge(&current, &manifest);
        assert_eq!(merged.spec.version, "2");
        assert_eq!(merged.metadata.generation, Some(3));
        assert_eq!(merged.metadata.labels.keys().collect::<Vec<_>>(), ["new"]);
        // The user's own annotation left the manifest, so it goes; the request stays.
        assert_eq!(
            merged.metadata.annotations.keys().collect::<Vec<_>>(),
            [ANNOTATION_PROMOTE]
        );
    }
}

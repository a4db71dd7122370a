//! `deployctl apply`: create or update objects from manifests, all or nothing.

use super::manifest::{self, Manifest};
use super::{connect, output, reference, within, CliError, GlobalArgs};
use crate::api::selector::LabelSelector;
use crate::api::{KindName, Machine, Object, ObjectMeta, Rollout};
use crate::store::{check_request_size, encode_create, encode_replace, Client, Error, Scope, Txn};
use clap::Args;
use std::collections::BTreeMap;

pub const EXAMPLES: &str = "\
Examples:
  # Apply every manifest under a directory (Machines and Applications first)
  deployctl apply -f manifests/

  # Check a change without writing anything: against the files and the store,
  # then also with every check the write would make (conflicts, ownership)
  deployctl apply -f rollout_api.yaml --dry-run
  deployctl apply -f rollout_api.yaml --dry-run=server

  # From stdin
  cat app.yaml | deployctl apply -f -

  # A file saved by `get -o yaml` keeps its resourceVersion: it applies only
  # if the object is unchanged since (else a conflict; nothing is written)
  deployctl get machine web-1 -o yaml > web-1.yaml
  deployctl apply -f web-1.yaml";

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
    /// Accepted for kubectl's sake: directories are always read recursively.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Write nothing. `client` (also a bare --dry-run): validate the files, compare with
    /// the store and print what would happen. `server`: also build every write as it
    /// would be sent and check it against the store's rules (the request size limit),
    /// and warn of objects a sync owns. `none`: apply.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "client"
    )]
    pub dry_run: Option<DryRun>,
}

/// `--dry-run`'s modes, kubectl's words.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DryRun {
    None,
    Client,
    Server,
}

/// What apply did to one object, and who else owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// The sync whose label (`deployctl.dev/sync`) the object carries in the store: its
    /// next pass reverts a change made here.
    pub sync: Option<String>,
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
    let mode = args.dry_run.unwrap_or(DryRun::None);
    let dry_run = mode != DryRun::None;
    let suffix = match mode {
        DryRun::None => "",
        DryRun::Client => " (dry run)",
        DryRun::Server => " (server dry run)",
    };
    let mut selectors: Vec<(String, LabelSelector)> = Vec::new();
    let mut declared_machines: Vec<BTreeMap<String, String>> = Vec::new();
    for l in loaded {
        let kind = l.manifest.kind();
        let name = l.manifest.meta().name.clone();
        match &l.manifest {
            Manifest::Application(a) => selectors.push((name.clone(), a.spec.selector.clone())),
            Manifest::Machine(m) => declared_machines.push(m.metadata.labels.clone()),
            Manifest::Rollout(_) | Manifest::Notifier(_) | Manifest::AnalysisTemplate(_) => {}
        }
        let checked = mode != DryRun::Client;
        let applied = match l.manifest {
            Manifest::Machine(o) => within(g, apply_checked(&client, o, dry_run, checked)).await,
            Manifest::Application(o) => {
                within(g, apply_checked(&client, o, dry_run, checked)).await
            }
            Manifest::Rollout(o) => within(g, apply_checked(&client, o, dry_run, checked)).await,
            Manifest::Notifier(o) => within(g, apply_checked(&client, o, dry_run, checked)).await,
            Manifest::AnalysisTemplate(o) => {
                within(g, apply_checked(&client, o, dry_run, checked)).await
            }
        }
        .map_err(|e| anyhow::anyhow!("{}: applying {}: {e:#}", l.origin, reference(kind, &name)))?;
        outln!("{} {}{suffix}", reference(kind, &name), applied.outcome);
        if let (Some(sync), Outcome::Configured, true) = (&applied.sync, applied.outcome, checked) {
            eprintln!(
                "warning: {} is managed by sync {:?}: its next pass reverts this change (change it in Git instead)",
                reference(kind, &name),
                output::escape(sync)
            );
        }
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
/// undo a `rollout promote` the controller has not seen yet. So is the owning sync's
/// label (`deployctl.dev/sync`): without it the sync would take the object back as
/// new rather than report and revert the drift.
pub fn merge<K: Object>(current: &K, manifest: &K) -> K {
    let mut desired = current.clone();
    let want: &ObjectMeta = manifest.meta();
    let meta = desired.meta_mut();
    meta.labels = want.labels.clone();
    if let Some(owner) = current.meta().labels.get(crate::api::LABEL_SYNC) {
        meta.labels
            .entry(crate::api::LABEL_SYNC.to_string())
            .or_insert_with(|| owner.clone());
    }
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
    Ok(apply_checked(client, manifest, dry_run, true)
        .await?
        .outcome)
}

/// [`apply_object`], saying which sync owns the object. `checked` (a server dry run,
/// or a write): a dry run builds the transaction the write would send and checks it
/// as the store does first, so that it fails where the write would.
pub async fn apply_checked<K: Object>(
    client: &Client,
    manifest: K,
    dry_run: bool,
    checked: bool,
) -> crate::store::Result<Applied> {
    let ns = manifest.namespace().map(str::to_string);
    let done = |outcome: Outcome, current: Option<&K>| Applied {
        outcome,
        sync: current.and_then(|c| c.meta().labels.get(crate::api::LABEL_SYNC).cloned()),
    };
    for _ in 0..APPLY_RETRIES {
        let current: Option<K> = client.get(ns.as_deref(), manifest.name()).await?;
        match current {
            None => {
                if dry_run {
                    if checked {
                        let mut txn = Txn::default();
                        encode_create(&manifest, &mut txn)?;
                        check_request_size(&txn)?;
                    }
                    return Ok(done(Outcome::Created, None));
                }
                let mut new = manifest.clone();
                *new.status_mut() = None;
                new.meta_mut().resource_version = None;
                match client.create(&new).await {
                    Ok(_) => return Ok(done(Outcome::Created, None)),
                    // Somebody created it between our get and create: compare with theirs.
                    Err(Error::AlreadyExists(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            Some(current) => {
                stale_check(&current, &manifest)?;
                let desired = merge(&current, &manifest);
                let same = desired.meta().labels == current.meta().labels
                    && desired.meta().annotations == current.meta().annotations
                    && desired.spec() == current.spec();
                if same {
                    return Ok(done(Outcome::Unchanged, Some(&current)));
                }
                if dry_run {
                    if checked {
                        let mut txn = Txn::default();
                        encode_replace(&current, desired, &mut txn)?;
                        check_request_size(&txn)?;
                    }
                    return Ok(done(Outcome::Configured, Some(&current)));
                }
                match client.replace(&current, desired).await {
                    Ok(_) => return Ok(done(Outcome::Configured, Some(&current))),
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

/// A manifest that names a `resourceVersion` (saved by `get -o yaml`, say) applies only
/// to that version of the object, as kubectl's does: a newer one in the store is a
/// conflict, for a write and a server dry run alike, never overwritten.
fn stale_check<K: Object>(current: &K, manifest: &K) -> crate::store::Result<()> {
    let Some(wanted) = manifest.meta().resource_version.as_deref() else {
        return Ok(());
    };
    let found = current.meta().resource_version.as_deref().unwrap_or("none");
    if wanted == found {
        return Ok(());
    }
    Err(Error::Conflict(format!(
        "{}.{}/{}: the manifest names resourceVersion {wanted} but the store has {found} (the object changed since it was read; get it again, or remove metadata.resourceVersion to apply over it)",
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

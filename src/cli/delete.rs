//! `deployctl delete`: by kind and names, or by the manifests that declared the objects.

use super::manifest::{self, LoadError, ManifestError};
use super::{connect, for_kind, parse_kind, reference, within, CliError, GlobalArgs};
use crate::api::selector::LabelSelector;
use crate::api::{KindName, Object};
use crate::store::Client;
use clap::Args;
use serde_json::Value;
use std::time::Duration;

/// How often `--wait` reads an object again.
const WAIT_POLL: Duration = Duration::from_millis(200);

pub const EXAMPLES: &str = "\
Examples:
  # One rollout
  deployctl delete rollout api

  # Everything a directory of manifests declared
  deployctl delete -f manifests/

  # Idempotent cleanup in a script
  deployctl delete machines web-1 web-2 --ignore-not-found

  # Every machine with a label, or every rollout in a namespace
  deployctl delete machines -l retired=true
  deployctl delete rollouts --all -n staging

  # Do not wait for a Rollout to be gone (waiting is the default for Rollouts)
  deployctl delete rollout api --wait=false";

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The kind, then the names (not with -f).
    #[arg(value_name = "KIND NAME", conflicts_with = "files")]
    pub what: Vec<String>,
    /// Delete what these manifests declare (file, directory, or `-`).
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<String>,
    /// A missing object is not an error.
    #[arg(long)]
    pub ignore_not_found: bool,
    /// Every object of the kind that matches this label selector (`k=v`, `k!=v`, `k in (a,b)`).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR", conflicts_with_all = ["files", "all"])]
    pub selector: Option<String>,
    /// Every object of the kind (in the namespace, for namespaced kinds).
    #[arg(long, conflicts_with = "files")]
    pub all: bool,
    /// Wait until each deleted object is gone from a fresh read before reporting it
    /// deleted. On by default for Rollouts; `--wait=false` turns it off, `--wait` turns
    /// it on for every kind.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub wait: Option<bool>,
    /// How long --wait waits for each object, within 1s..=1h.
    #[arg(long, default_value = "30s", value_parser = super::duration_in(Duration::from_secs(1), Duration::from_secs(3600)))]
    pub timeout: Duration,
}

/// One object to delete.
struct Target {
    kind: KindName,
    namespace: Option<String>,
    name: String,
}

pub async fn run(g: &GlobalArgs, args: DeleteArgs) -> anyhow::Result<i32> {
    // Files and words are checked before connecting: bad input needs no store.
    let from_files = match args.what.first() {
        _ if !args.files.is_empty() => Some(targets_from_files(&args.files, &g.namespace)?),
        Some(kind) => {
            parse_kind(kind)?;
            None
        }
        None => anyhow::bail!(
            "nothing to delete: give a kind and names, -l SELECTOR, --all, or -f FILE"
        ),
    };
    let client = connect(g).await?;
    let targets = match from_files {
        Some(targets) => targets,
        None => targets_from_words(g, &client, &args).await?,
    };
    let mut not_found: Vec<CliError> = Vec::new();
    for t in targets {
        let deleted = for_kind!(t.kind, K => delete_one::<K>(g, &client, &t).await?);
        if deleted {
            if args.wait.unwrap_or(t.kind == KindName::Rollout) {
                for_kind!(t.kind, K => wait_gone::<K>(g, &client, &t, args.timeout).await?);
            }
            outln!("{} deleted", reference(t.kind, &t.name));
            if t.kind == KindName::Rollout {
                eprintln!("{}", history_warning(&t.name));
            }
        } else if !args.ignore_not_found {
            not_found.push(CliError::NotFound {
                plural: t.kind.plural(),
                name: t.name.clone(),
            });
        }
    }
    match not_found.pop() {
        None => Ok(0),
        Some(last) => {
            for e in not_found {
                eprintln!("{}", super::output::escape(&e.to_string()));
            }
            Err(last.into())
        }
    }
}

/// The targets of `delete KIND NAME...`, `delete KIND -l SELECTOR` and `delete KIND --all`.
async fn targets_from_words(
    g: &GlobalArgs,
    client: &Client,
    args: &DeleteArgs,
) -> anyhow::Result<Vec<Target>> {
    let Some((kind, names)) = args.what.split_first() else {
        anyhow::bail!("nothing to delete: give a kind and names, -l SELECTOR, --all, or -f FILE");
    };
    let kind = parse_kind(kind)?;
    let selection = match (&args.selector, args.all) {
        (Some(s), _) => Some(LabelSelector::parse(s).map_err(anyhow::Error::msg)?),
        (None, true) => Some(LabelSelector::default()),
        (None, false) => None,
    };
    let names: Vec<String> = match selection {
        Some(_) if !names.is_empty() => {
            let how = if args.all { "--all" } else { "-l" };
            anyhow::bail!("names and {how} cannot be given together");
        }
        Some(sel) => {
            let names = for_kind!(kind, K => super::selected_names::<K>(g, client, &sel).await?);
            if names.is_empty() {
                eprintln!("No {} matched.", kind.plural());
            }
            names
        }
        None if names.is_empty() => anyhow::bail!(
            "no {} named: give at least one name, -l SELECTOR or --all, e.g. `deployctl delete {} NAME`",
            kind.plural(),
            kind.singular()
        ),
        None => names.to_vec(),
    };
    Ok(names
        .into_iter()
        .map(|name| Target {
            kind,
            namespace: kind.namespaced().then(|| g.namespace.clone()),
            name,
        })
        .collect())
}

/// Reads the object again until it is absent, up to `timeout`. The store deletes spec
/// and status in one transaction, so this normally returns on the first read; it is
/// what tells a script that a later `get` (on any etcd member) will not see it.
async fn wait_gone<K: Object>(
    g: &GlobalArgs,
    client: &Client,
    t: &Target,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if within(g, client.get::<K>(t.namespace.as_deref(), &t.name))
            .await?
            .is_none()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "timed out after {} waiting for {} to be gone",
                humantime::format_duration(timeout),
                reference(t.kind, &t.name)
            );
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// What a deleted Rollout takes with it: a new one starts with no revision to undo to.
fn history_warning(name: &str) -> String {
    format!(
        "warning: the history of {} (its revisions, failures and stable version) went with it; \
         a Rollout applied again adopts the version every machine runs, with no revision to undo to",
        reference(KindName::Rollout, name)
    )
}

async fn delete_one<K: Object>(
    g: &GlobalArgs,
    client: &Client,
    t: &Target,
) -> anyhow::Result<bool> {
    within(g, client.delete::<K>(t.namespace.as_deref(), &t.name, None)).await
}

/// Reads kind, name and namespace of every document; nothing else needs to be valid.
fn targets_from_files(files: &[String], default_namespace: &str) -> anyhow::Result<Vec<Target>> {
    let sources = match manifest::read_sources(files) {
        Ok(s) => s,
        Err(errors) => return Err(report(errors)),
    };
    let mut targets = Vec::new();
    let errors = manifest::parse_all(&sources, |doc, errors| {
        let kind_text = doc.value.get("kind").and_then(Value::as_str);
        let name = doc
            .value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str);
        let namespace = doc
            .value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str);
        let kind = kind_text.and_then(KindName::from_kind);
        match (kind, name) {
            (Some(kind), Some(name)) => targets.push(Target {
                kind,
                namespace: kind
                    .namespaced()
                    .then(|| namespace.unwrap_or(default_namespace).to_string()),
                name: name.to_string(),
            }),
            _ => errors.push(LoadError::Manifest(ManifestError {
                origin: doc.origin.clone(),
                kind: kind_text.map(str::to_string),
                name: name.map(str::to_string),
                path: None,
                message: "needs a known kind and metadata.name to be deleted".into(),
            })),
        }
    });
    if errors.is_empty() {
        Ok(targets)
    } else {
        Err(report(errors))
    }
}

fn report(errors: Vec<LoadError>) -> anyhow::Error {
    manifest::print_errors(&errors);
    CliError::Exit(1).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_from_files_should_refuse_more_documents_than_one_command_may_hold() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file: String = (0..1000)
            .map(|i| format!("---\nkind: Machine\nmetadata: {{name: m{i}}}\n"))
            .collect();
        let files = |n: usize| {
            for i in 0..n {
                std::fs::write(dir.path().join(format!("f{i:02}.yaml")), &file).expect("writable");
            }
            vec![dir.path().display().to_string()]
        };
        // 10 files of 1,000 documents each: at the limit, every target is read.
        let targets = targets_from_files(&files(10), "default").expect("at the limit");
        assert_eq!(targets.len(), manifest::limits::MAX_DOCUMENTS);
        // One more file: past it, refused (and nothing would be deleted).
        assert!(targets_from_files(&files(11), "default").is_err());
    }
}

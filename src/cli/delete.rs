//! `deployctl delete`: by kind and names, or by the manifests that declared the objects.

use super::manifest::{self, LoadError, ManifestError};
use super::{connect, for_kind, parse_kind, reference, within, CliError, GlobalArgs};
use crate::api::{KindName, Object};
use crate::store::Client;
use clap::Args;
use serde_json::Value;

pub const EXAMPLES: &str = "\
Examples:
  # One rollout
  deployctl delete rollout api

  # Everything a directory of manifests declared
  deployctl delete -f manifests/

  # Idempotent cleanup in a script
  deployctl delete machines web-1 web-2 --ignore-not-found";

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
}

/// One object to delete.
struct Target {
    kind: KindName,
    namespace: Option<String>,
    name: String,
}

pub async fn run(g: &GlobalArgs, args: DeleteArgs) -> anyhow::Result<i32> {
    let targets = if !args.files.is_empty() {
        targets_from_files(&args.files, &g.namespace)?
    } else {
        let Some((kind, names)) = args.what.split_first() else {
            anyhow::bail!("nothing to delete: give a kind and names, or -f FILE");
        };
        let kind = parse_kind(kind)?;
        if names.is_empty() {
            anyhow::bail!(
                "no {} named: give at least one name, e.g. `deployctl delete {} NAME`",
                kind.plural(),
                kind.singular()
            );
        }
        names
            .iter()
            .map(|n| Target {
                kind,
                namespace: kind.namespaced().then(|| g.namespace.clone()),
                name: n.clone(),
            })
            .collect()
    };
    let client = connect(g).await?;
    let mut not_found: Vec<CliError> = Vec::new();
    for t in targets {
        let deleted = for_kind!(t.kind, K => delete_one::<K>(g, &client, &t).await?);
        if deleted {
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
    let mut errors = Vec::new();
    let mut targets = Vec::new();
    for source in &sources {
        let (docs, parse_errors) = manifest::parse_documents(source);
        errors.extend(parse_errors.into_iter().map(LoadError::Manifest));
        for doc in docs {
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
        }
    }
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

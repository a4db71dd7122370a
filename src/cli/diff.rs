//! `deployctl diff`: what `apply` would change, as a unified diff of each object's YAML.

use super::apply::merge;
use super::manifest::{self, Manifest};
use super::{connect, reference, within, GlobalArgs};
use crate::api::Object;
use crate::store::Client;
use clap::Args;

pub const EXAMPLES: &str = "\
Examples:
  # What would apply change? (exit 1: differences, 0: none, 2: error)
  deployctl diff -f manifests/

  # In CI, before applying
  deployctl diff -f rollout_api.yaml || deployctl apply -f rollout_api.yaml";

/// Exit status when the diff could not be made (1 means \"differences\", as kubectl).
pub const EXIT_ERROR: i32 = 2;

#[derive(Args, Debug)]
pub struct DiffArgs {
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
}

/// Runs `diff`; every failure is printed here and becomes exit status 2, since 1 means
/// "there are differences".
pub async fn run(g: &GlobalArgs, args: DiffArgs) -> anyhow::Result<i32> {
    let loaded = match manifest::load(&args.files, &g.namespace) {
        Ok(l) => l,
        Err(errors) => {
            manifest::print_errors(&errors);
            return Ok(EXIT_ERROR);
        }
    };
    let result: anyhow::Result<bool> = async {
        let client = connect(g).await?;
        let mut differs = false;
        for l in &loaded {
            let text = within(g, manifest_diff(&client, &l.manifest)).await?;
            if let Some(text) = text {
                out!("{text}");
                differs = true;
            }
        }
        Ok(differs)
    }
    .await;
    match result {
        Ok(true) => Ok(1),
        Ok(false) => Ok(0),
        Err(e) => {
            eprintln!("error: {}", super::output::escape(&format!("{e:#}")));
            Ok(EXIT_ERROR)
        }
    }
}

/// The object as a user compares it: no status, none of the metadata the store sets.
pub fn comparable<K: Object>(obj: &K) -> K {
    let mut o = obj.clone();
    *o.status_mut() = None;
    let m = o.meta_mut();
    m.uid = None;
    m.generation = None;
    m.resource_version = None;
    m.creation_timestamp = None;
    m.status_version = 0;
    o
}

/// The YAML of an object as [`comparable`] shows it.
pub fn yaml<K: Object>(obj: &K) -> crate::store::Result<String> {
    serde_yaml::to_string(&comparable(obj)).map_err(|e| {
        crate::store::Error::Other(format!("cannot render {} as yaml: {e}", obj.name()))
    })
}

/// A unified diff of two texts, with kubectl's `live/` and `merged/` headers; `None`
/// when they are equal.
pub fn unified(reference: &str, live: &str, merged: &str) -> Option<String> {
    if live == merged {
        return None;
    }
    let diff = similar::TextDiff::from_lines(live, merged);
    Some(
        diff.unified_diff()
            .context_radius(3)
            .header(&format!("live/{reference}"), &format!("merged/{reference}"))
            .to_string(),
    )
}

/// What applying `manifest` would change in the stored object (all of it when absent).
pub async fn object_diff<K: Object>(
    client: &Client,
    manifest: &K,
) -> crate::store::Result<Option<String>> {
    let current: Option<K> = client.get(manifest.namespace(), manifest.name()).await?;
    let (live, merged) = match &current {
        None => (String::new(), yaml(manifest)?),
        Some(c) => (yaml(c)?, yaml(&merge(c, manifest))?),
    };
    let kind = crate::api::KindName::from_kind(K::KIND)
        .expect("every Object kind has a KindName (same table)");
    Ok(unified(&reference(kind, manifest.name()), &live, &merged))
}

/// [`object_diff`] for any kind a manifest may declare.
pub async fn manifest_diff(
    client: &Client,
    manifest: &Manifest,
) -> crate::store::Result<Option<String>> {
    match manifest {
        Manifest::Machine(o) => object_diff(client, o).await,
        Manifest::Application(o) => object_diff(client, o).await,
        Manifest::Rollout(o) => object_diff(client, o).await,
        Manifest::Notifier(o) => object_diff(client, o).await,
        Manifest::AnalysisTemplate(o) => object_diff(client, o).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_diff_should_use_live_and_merged_headers() {
        let d = unified(
            "rollout.deployctl.dev/api",
            "spec:\n  version: '1'\n",
            "spec:\n  version: '2'\n",
        )
        .expect("the texts differ");
        assert!(
            d.starts_with(
                "--- live/rollout.deployctl.dev/api\n+++ merged/rollout.deployctl.dev/api\n"
            ),
            "{d}"
        );
        assert!(d.contains("-  version: '1'\n+  version: '2'\n"), "{d}");
        assert_eq!(unified("x", "a\n", "a\n"), None);
    }
}

//! `deployctl label` and `deployctl annotate`: kubectl's metadata edits, each object one
//! compare-and-swap update retried from fresh state.

use super::output::escape;
use super::{connect, for_kind, parse_kind, reference, within, CliError, GlobalArgs};
use crate::api::selector::LabelSelector;
use crate::api::validation::{check_label_key, check_label_value};
use crate::api::{KindName, Object};
use crate::store::Client;
use clap::Args;
use std::collections::BTreeMap;

pub const LABEL_EXAMPLES: &str = "\
Examples:
  # Put a machine in the canary group (a new key needs no --overwrite)
  deployctl label machine web-1 group=canary
  deployctl label machine/web-2 group=canary

  # Change an existing label, and remove another (KEY-)
  deployctl label machine web-1 group=stable --overwrite
  deployctl label machine web-1 zone-

  # Every machine that matches a selector, or every machine
  deployctl label machines -l role=web tier=front
  deployctl label machines --all owner=ops";

pub const ANNOTATE_EXAMPLES: &str = "\
Examples:
  # Record why a rollout was paused
  deployctl annotate rollout api note='paused for the db migration'

  # Change it, then remove it
  deployctl annotate rollout api note='migration done' --overwrite
  deployctl annotate rollout api note-

  # Every application that matches a selector
  deployctl annotate apps -l team=payments owner=payments@example.com";

/// The longest annotation value: what is worth keeping on an object, far below the
/// store's request limit.
const MAX_ANNOTATION_VALUE: usize = 64 * 1024;

#[derive(Args, Debug)]
pub struct MetaArgs {
    /// The kind, then the names (none with -l or --all), then `KEY=VALUE` to set and
    /// `KEY-` to remove.
    #[arg(value_name = "KIND [NAME...] KEY=VALUE|KEY-", required = true, num_args = 1..)]
    pub words: Vec<String>,
    /// Change keys that already have another value (without it, that is refused).
    #[arg(long)]
    pub overwrite: bool,
    /// Every object of the kind that matches this label selector (`k=v`, `k!=v`, `k in (a,b)`).
    #[arg(
        short = 'l',
        long = "selector",
        value_name = "SELECTOR",
        conflicts_with = "all"
    )]
    pub selector: Option<String>,
    /// Every object of the kind (in the namespace, for namespaced kinds).
    #[arg(long)]
    pub all: bool,
}

/// Labels or annotations: what differs between the two commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Labels,
    Annotations,
}

impl Field {
    /// `labeled`, `annotated`: what kubectl prints after the reference.
    fn done(self) -> &'static str {
        match self {
            Field::Labels => "labeled",
            Field::Annotations => "annotated",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Field::Labels => "label",
            Field::Annotations => "annotation",
        }
    }

    fn of(self, meta: &mut crate::api::ObjectMeta) -> &mut BTreeMap<String, String> {
        match self {
            Field::Labels => &mut meta.labels,
            Field::Annotations => &mut meta.annotations,
        }
    }
}

/// Why a label or annotate command is refused before anything is written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetaError {
    #[error("no {0} change given: add KEY=VALUE to set or KEY- to remove")]
    NoChange(&'static str),
    #[error("no {plural} named: give names, -l SELECTOR or --all")]
    NoTarget { plural: &'static str },
    #[error("names and {0} cannot be given together")]
    NamesAndSelection(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("{key:?} is both set and removed")]
    SetAndRemoved { key: String },
    #[error("{key:?} already has a value ({value}), and --overwrite is false")]
    Exists { key: String, value: String },
}

/// The changes of one command: keys to set and keys to remove.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub set: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

/// Splits the words after the kind into names and changes, and validates the changes:
/// keys by Kubernetes' rules, label values too, annotation values by size.
pub fn parse_words(words: &[String], field: Field) -> Result<(Vec<String>, Changes), MetaError> {
    let mut names = Vec::new();
    let mut changes = Changes::default();
    for w in words {
        if let Some((key, value)) = w.split_once('=') {
            check_label_key(key).map_err(MetaError::Invalid)?;
            match field {
                Field::Labels => check_label_value(value).map_err(MetaError::Invalid)?,
                Field::Annotations => check_annotation_value(key, value)?,
            }
            changes.set.insert(key.to_string(), value.to_string());
        } else if let Some(key) = w.strip_suffix('-') {
            check_label_key(key).map_err(MetaError::Invalid)?;
            changes.remove.push(key.to_string());
        } else {
            names.push(w.clone());
        }
    }
    if let Some(key) = changes.remove.iter().find(|k| changes.set.contains_key(*k)) {
        return Err(MetaError::SetAndRemoved { key: key.clone() });
    }
    if changes.set.is_empty() && changes.remove.is_empty() {
        return Err(MetaError::NoChange(field.word()));
    }
    Ok((names, changes))
}

fn check_annotation_value(key: &str, value: &str) -> Result<(), MetaError> {
    if value.contains('\0') {
        return Err(MetaError::Invalid(format!(
            "invalid value of annotation {key:?}: contains a NUL byte"
        )));
    }
    if value.len() > MAX_ANNOTATION_VALUE {
        return Err(MetaError::Invalid(format!(
            "invalid value of annotation {key:?}: {} bytes, more than {MAX_ANNOTATION_VALUE}",
            value.len()
        )));
    }
    Ok(())
}

/// Applies `changes` to `map`. Leaves `map` unchanged and says why when a key already
/// has another value and `overwrite` is false. Returns whether anything changed.
pub fn apply_changes(
    map: &mut BTreeMap<String, String>,
    changes: &Changes,
    overwrite: bool,
) -> Result<bool, MetaError> {
    if !overwrite {
        for (key, value) in &changes.set {
            if let Some(old) = map.get(key).filter(|old| *old != value) {
                return Err(MetaError::Exists {
                    key: key.clone(),
                    value: old.clone(),
                });
            }
        }
    }
    let before = map.clone();
    for key in &changes.remove {
        map.remove(key);
    }
    for (key, value) in &changes.set {
        map.insert(key.clone(), value.clone());
    }
    Ok(*map != before)
}

pub async fn run(g: &GlobalArgs, args: MetaArgs, field: Field) -> anyhow::Result<i32> {
    let (kind_word, rest) = args
        .words
        .split_first()
        .expect("clap requires at least one word");
    // `machine/web-1` as kubectl takes it: the kind and the first name in one word.
    let (kind_word, first_name) = match kind_word.split_once('/') {
        Some((k, n)) => (k, Some(n.to_string())),
        None => (kind_word.as_str(), None),
    };
    let kind = parse_kind(kind_word)?;
    let (mut names, changes) = parse_words(rest, field)?;
    names.splice(0..0, first_name);
    let selection = match (&args.selector, args.all) {
        (Some(s), _) => Some(LabelSelector::parse(s).map_err(anyhow::Error::msg)?),
        (None, true) => Some(LabelSelector::default()),
        (None, false) => None,
    };
    match (&selection, names.is_empty()) {
        (Some(_), false) => {
            let how = if args.all { "--all" } else { "-l" };
            return Err(MetaError::NamesAndSelection(how).into());
        }
        (None, true) => {
            return Err(MetaError::NoTarget {
                plural: kind.plural(),
            }
            .into())
        }
        _ => {}
    }
    let client = connect(g).await?;
    let names = match selection {
        Some(sel) => for_kind!(kind, K => super::selected_names::<K>(g, &client, &sel).await?),
        None => names,
    };
    let mut failed = 0;
    for name in &names {
        let outcome = for_kind!(kind, K => change_one::<K>(g, &client, kind, name, &changes, args.overwrite, field).await);
        match outcome {
            Ok(true) => outln!("{} {}", reference(kind, name), field.done()),
            Ok(false) => outln!("{} not {}", reference(kind, name), field.done()),
            Err(e) => {
                failed += 1;
                match e.downcast_ref::<CliError>() {
                    Some(nf @ CliError::NotFound { .. }) => {
                        eprintln!("{}", escape(&nf.to_string()))
                    }
                    _ => eprintln!("error: {}", escape(&format!("{e:#}"))),
                }
            }
        }
    }
    if names.is_empty() {
        eprintln!("No {} matched.", kind.plural());
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// One compare-and-swap update of one object; the overwrite check runs on each fresh
/// read, so a retry after a conflict decides again.
async fn change_one<K: Object>(
    g: &GlobalArgs,
    client: &Client,
    kind: KindName,
    name: &str,
    changes: &Changes,
    overwrite: bool,
    field: Field,
) -> anyhow::Result<bool> {
    let mut outcome = Ok(false);
    let ns = super::ns_for(kind, g);
    let updated = within(
        g,
        client.update::<K>(ns, name, |obj| {
            // A refusal leaves the object as read, so nothing is written.
            outcome = apply_changes(field.of(obj.meta_mut()), changes, overwrite);
        }),
    )
    .await;
    match updated {
        Ok(_) => Ok(outcome.map_err(|e| {
            anyhow::anyhow!("cannot {} {}: {e}", field.word(), reference(kind, name))
        })?),
        Err(e) => match e.downcast_ref::<crate::store::Error>() {
            Some(crate::store::Error::NotFound(_)) => Err(CliError::NotFound {
                plural: kind.plural(),
                name: name.to_string(),
            }
            .into()),
            _ => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn words_should_split_into_names_sets_and_removals() {
        let (names, changes) = parse_words(
            &words(&["web-1", "web-2", "a=1", "b-", "c="]),
            Field::Labels,
        )
        .unwrap();
        assert_eq!(names, ["web-1", "web-2"]);
        assert_eq!(
            changes.set,
            BTreeMap::from([("a".into(), "1".into()), ("c".into(), String::new())])
        );
        assert_eq!(changes.remove, ["b"]);
    }

    #[test]
    fn bad_keys_and_values_should_be_refused_naming_them() {
        for (w, field, want) in [
            ("bad key=1", Field::Labels, "invalid key \"bad key\""),
            ("a=has space", Field::Labels, "invalid value \"has space\""),
            ("-x-", Field::Labels, "invalid key \"-x\""),
            ("note=has\0nul", Field::Annotations, "contains a NUL byte"),
        ] {
            let err = parse_words(&words(&["m", w]), field).unwrap_err();
            assert!(err.to_string().contains(want), "{w:?}: {err}");
        }
        // Annotation values may hold what a label value may not.
        parse_words(&words(&["m", "note=paused for the db"]), Field::Annotations).unwrap();
        assert_eq!(
            parse_words(&words(&["m"]), Field::Labels).unwrap_err(),
            MetaError::NoChange("label")
        );
        assert!(matches!(
            parse_words(&words(&["a=1", "a-"]), Field::Labels).unwrap_err(),
            MetaError::SetAndRemoved { .. }
        ));
    }

    #[test]
    fn an_existing_key_should_change_only_with_overwrite() {
        let mut map = BTreeMap::from([("a".to_string(), "1".to_string())]);
        let change = |set: &[(&str, &str)], remove: &[&str]| Changes {
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            remove: remove.iter().map(|k| k.to_string()).collect(),
        };
        let err = apply_changes(&mut map, &change(&[("a", "2"), ("b", "1")], &[]), false);
        assert_eq!(
            err.unwrap_err().to_string(),
            "\"a\" already has a value (1), and --overwrite is false"
        );
        assert_eq!(map.len(), 1, "a refused change changes nothing");
        assert!(!apply_changes(&mut map, &change(&[("a", "1")], &[]), false).unwrap());
        assert!(apply_changes(&mut map, &change(&[("a", "2")], &[]), true).unwrap());
        assert_eq!(map["a"], "2");
        assert!(apply_changes(&mut map, &change(&[], &["a"]), false).unwrap());
        assert!(!apply_changes(&mut map, &change(&[], &["a"]), false).unwrap());
        assert!(map.is_empty());
    }
}

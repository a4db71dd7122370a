//! `deployctl edit`: an object's YAML in the user's editor, written back with
//! compare-and-swap; invalid YAML or a conflict reopens the file with the error on top.

use super::manifest::{self, limits::MAX_FILE_BYTES, Manifest, Source};
use super::output::{escape, to_yaml};
use super::{connect, for_kind, parse_kind, reference, within, CliError, GlobalArgs};
use crate::api::{KindName, Object};
use crate::store::{Client, Error as StoreError};
use clap::Args;
use serde_json::Value;
use std::io::Read;
use std::path::Path;

pub const EXAMPLES: &str = "\
Examples:
  # Change a rollout's strategy in $KUBE_EDITOR, $EDITOR or vi
  deployctl edit rollout api

  # With another editor, which may take arguments
  KUBE_EDITOR='code --wait' deployctl edit machine web-1";

/// The lines atop every opened file.
const HEADER: &str = "\
# Please edit the object below. Lines beginning with a '#' will be ignored,
# and an empty file will abort the edit. If an error occurs while saving this file will be
# reopened with the relevant failures.
#
";

#[derive(Args, Debug)]
pub struct EditArgs {
    /// The kind and the name (`rollout api` or `rollout/api`).
    #[arg(value_name = "KIND NAME", required = true, num_args = 1..=2)]
    pub what: Vec<String>,
}

/// Why `edit` stopped without writing.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("give a kind and a name, e.g. `deployctl edit rollout api`")]
    Usage,
    #[error(
        "{0} are written by deployctl itself: edit machines, applications, rollouts or notifiers"
    )]
    NotUserKind(&'static str),
    #[error("cannot split the editor {var}={value:?} into words: unbalanced quotes")]
    EditorWords { var: &'static str, value: String },
    #[error("the editor {var}={value:?} is empty")]
    EditorEmpty { var: &'static str, value: String },
    #[error("cannot run the editor {program:?}: {source}")]
    EditorStart {
        program: String,
        source: std::io::Error,
    },
    #[error("the editor {program:?} failed ({status}); nothing was changed")]
    EditorFailed { program: String, status: String },
    #[error("cannot use the edit file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("the edit file {path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: String },
}

/// The editor as a program and its arguments: `$KUBE_EDITOR`, then `$EDITOR`, then `vi`.
/// The value is split into words as a POSIX shell splits them (quotes and backslashes
/// included) but no shell runs: the file's path is one more argument, and nothing read
/// from the store ever reaches a command line.
pub fn editor_command(
    kube_editor: Option<String>,
    editor: Option<String>,
) -> Result<Vec<String>, EditError> {
    let (var, value) = match (kube_editor, editor) {
        (Some(v), _) if !v.trim().is_empty() => ("KUBE_EDITOR", v),
        (_, Some(v)) if !v.trim().is_empty() => ("EDITOR", v),
        _ => return Ok(vec!["vi".into()]),
    };
    let words = shlex::split(&value).ok_or_else(|| EditError::EditorWords {
        var,
        value: value.clone(),
    })?;
    if words.is_empty() {
        return Err(EditError::EditorEmpty { var, value });
    }
    Ok(words)
}

pub async fn run(g: &GlobalArgs, args: EditArgs) -> anyhow::Result<i32> {
    let (kind, name) = target(&args.what)?;
    if !kind.is_user_kind() {
        return Err(EditError::NotUserKind(kind.plural()).into());
    }
    let editor = editor_command(
        std::env::var("KUBE_EDITOR").ok(),
        std::env::var("EDITOR").ok(),
    )?;
    let client = connect(g).await?;
    for_kind!(kind, K => edit::<K>(g, &client, kind, &name, &editor).await)
}

/// `KIND NAME` or `KIND/NAME`.
fn target(words: &[String]) -> anyhow::Result<(KindName, String)> {
    match words {
        [kind, name] => Ok((parse_kind(kind)?, name.clone())),
        [both] => match both.split_once('/') {
            Some((kind, name)) if !name.is_empty() => Ok((parse_kind(kind)?, name.to_string())),
            _ => Err(EditError::Usage.into()),
        },
        _ => Err(EditError::Usage.into()),
    }
}

/// One edit session: open, read back, validate, write; reopen on an error until the
/// object is written or the user saves it unchanged (or empty).
async fn edit<K: Object>(
    g: &GlobalArgs,
    client: &Client,
    kind: KindName,
    name: &str,
    editor: &[String],
) -> anyhow::Result<i32> {
    let ns = super::ns_for(kind, g);
    let mut base: K = read::<K>(g, client, kind, ns, name).await?;
    let original = to_yaml(&base)? + "\n";
    let dir = tempfile::Builder::new()
        .prefix("deployctl-edit-")
        .tempdir()
        .map_err(|source| EditError::File {
            path: std::env::temp_dir().display().to_string(),
            source,
        })?;
    let path = dir.path().join("object.yaml");
    let mut shown = original.clone();
    let mut error: Option<String> = None;
    // The text shown was refused as invalid (not merely reopened after a conflict):
    // saving it again unfixed ends the session.
    let mut invalid = false;
    loop {
        let body = open_in_editor(editor, &path, error.as_deref(), &shown)?;
        if body.trim().is_empty() || body == original {
            outln!("Edit cancelled, no changes made.");
            return Ok(0);
        }
        if invalid && body == shown {
            eprintln!("error: Edit cancelled, no valid changes were saved.");
            return Ok(1);
        }
        let (edited_value, desired) = match check::<K>(&body, &path, kind, &base, &g.namespace) {
            Ok(v) => v,
            Err(why) => {
                error = Some(why);
                invalid = true;
                shown = body;
                continue;
            }
        };
        if desired == base {
            outln!("Edit cancelled, no changes made.");
            return Ok(0);
        }
        match within(g, client.replace(&base, desired)).await {
            Ok(_) => {
                outln!("{} edited", reference(kind, name));
                return Ok(0);
            }
            Err(e) if is_conflict(&e) => {
                let fresh: K = read::<K>(g, client, kind, ns, name).await?;
                shown = reapply(&base, &edited_value, &fresh)?;
                base = fresh;
                invalid = false;
                error = Some(format!(
                    "{} changed in the store while it was open; your changes are applied \
                     below to its newest version: save to write them, or empty the file to cancel",
                    reference(kind, name)
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_conflict(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<StoreError>(),
        Some(StoreError::Conflict(_))
    )
}

async fn read<K: Object>(
    g: &GlobalArgs,
    client: &Client,
    kind: KindName,
    ns: Option<&str>,
    name: &str,
) -> anyhow::Result<K> {
    within(g, client.get::<K>(ns, name)).await?.ok_or_else(|| {
        CliError::NotFound {
            plural: kind.plural(),
            name: name.to_string(),
        }
        .into()
    })
}

/// Writes the header, the error (as `#` lines) and `text` to `path`, runs the editor on
/// it, and returns what was saved without its `#` lines.
fn open_in_editor(
    editor: &[String],
    path: &Path,
    error: Option<&str>,
    text: &str,
) -> Result<String, EditError> {
    let mut file = String::from(HEADER);
    if let Some(e) = error {
        for line in escape(e).lines() {
            file.push_str("# ");
            file.push_str(line);
            file.push('\n');
        }
        file.push_str("#\n");
    }
    file.push_str(text);
    let io = |source| EditError::File {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(path, file).map_err(io)?;
    let (program, args) = editor
        .split_first()
        .expect("editor_command returns at least one word");
    let status = std::process::Command::new(program)
        .args(args)
        .arg(path)
        .status()
        .map_err(|source| EditError::EditorStart {
            program: program.clone(),
            source,
        })?;
    if !status.success() {
        return Err(EditError::EditorFailed {
            program: program.clone(),
            status: status.to_string(),
        });
    }
    let mut saved = String::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut saved)
        .map_err(io)?;
    if saved.len() as u64 > MAX_FILE_BYTES {
        return Err(EditError::TooLarge {
            path: path.display().to_string(),
        });
    }
    Ok(strip_comments(&saved))
}

/// The text without the `#` lines at its top (the header and the error written there).
/// Comments further down are left to the YAML parser: a line starting with `#` inside a
/// hook's block scalar is part of the script, not a comment.
fn strip_comments(text: &str) -> String {
    let mut rest = text;
    while rest.starts_with('#') {
        rest = rest.split_once('\n').map_or("", |(_, after)| after);
    }
    rest.to_string()
}

/// Validates the saved text as `apply` validates a manifest, and checks that it is still
/// the same object. Returns its value (for a later reapply) and `base` with the edited
/// labels, annotations and spec; the error text otherwise.
fn check<K: Object>(
    body: &str,
    path: &Path,
    kind: KindName,
    base: &K,
    default_namespace: &str,
) -> Result<(Value, K), String> {
    let source = Source {
        name: path.display().to_string(),
        text: body.to_string(),
        json: false,
    };
    let (docs, errors) = manifest::parse_documents(&source);
    if !errors.is_empty() {
        return Err(lines(&errors));
    }
    let [doc] = docs.as_slice() else {
        return Err(format!("must hold exactly one object, not {}", docs.len()));
    };
    let namespace = base.namespace().unwrap_or(default_namespace);
    let manifest = manifest::validate_document(doc, namespace).map_err(|e| lines(&e))?;
    let meta = manifest.meta();
    if manifest.kind() != kind
        || meta.name != base.name()
        || (kind.namespaced() && meta.namespace.as_deref() != base.namespace())
    {
        return Err(format!(
            "kind, name and namespace cannot be changed: this file edits {}",
            reference(kind, base.name())
        ));
    }
    let edited: K = serde_json::from_value(manifest_value(&manifest))
        .map_err(|e| format!("cannot read the edited {}: {e}", kind.singular()))?;
    let mut desired = base.clone();
    desired.meta_mut().labels = edited.meta().labels.clone();
    desired.meta_mut().annotations = edited.meta().annotations.clone();
    *desired.spec_mut() = edited.spec().clone();
    Ok((doc.value.clone(), desired))
}

fn lines<E: std::fmt::Display>(errors: &[E]) -> String {
    manifest::bounded_lines(errors).join("\n")
}

/// The validated object as a value (it serializes: it was just deserialized).
fn manifest_value(m: &Manifest) -> Value {
    let v = match m {
        Manifest::Machine(o) => serde_json::to_value(o),
        Manifest::Application(o) => serde_json::to_value(o),
        Manifest::Rollout(o) => serde_json::to_value(o),
        Manifest::Notifier(o) => serde_json::to_value(o),
        Manifest::AnalysisTemplate(o) => serde_json::to_value(o),
    };
    v.expect("a validated object serializes")
}

/// The user's changes (from `base`, as opened, to `edited`) applied to `fresh`, as YAML:
/// what a reopened file shows after a conflict, so that neither the user's edit nor the
/// change made meanwhile is lost. Lists are replaced whole, as in a JSON merge patch.
fn reapply<K: Object>(base: &K, edited: &Value, fresh: &K) -> anyhow::Result<String> {
    let patch = merge_diff(&serde_json::to_value(base)?, edited);
    let mut out = serde_json::to_value(fresh)?;
    merge_apply(&mut out, &patch);
    Ok(to_yaml(&out)? + "\n")
}

/// The JSON merge patch (RFC 7386) that turns `from` into `to`.
fn merge_diff(from: &Value, to: &Value) -> Value {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut patch = serde_json::Map::new();
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            for (k, v) in b {
                match a.get(k) {
                    Some(old) if old == v => {}
                    Some(old) => {
                        patch.insert(k.clone(), merge_diff(old, v));
                    }
                    None => {
                        patch.insert(k.clone(), v.clone());
                    }
                }
            }
            Value::Object(patch)
        }
        _ => to.clone(),
    }
}

/// Applies a JSON merge patch (RFC 7386) to `target`.
fn merge_apply(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let map = target.as_object_mut().expect("made an object just above");
    for (k, v) in changes {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_apply(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_editor_should_come_from_kube_editor_then_editor_then_vi_split_into_words() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(editor_command(None, None).unwrap(), ["vi"]);
        assert_eq!(editor_command(some(" "), None).unwrap(), ["vi"]);
        assert_eq!(editor_command(None, some("nano")).unwrap(), ["nano"]);
        assert_eq!(
            editor_command(some("code --wait"), some("nano")).unwrap(),
            ["code", "--wait"]
        );
        assert_eq!(
            editor_command(
                None,
                some(r#"'/opt/my editor/bin/ed' -c "set ft=yaml" a\ b"#)
            )
            .unwrap(),
            ["/opt/my editor/bin/ed", "-c", "set ft=yaml", "a b"]
        );
        // A shell would run the second command; here `;` is just a word.
        assert_eq!(
            editor_command(None, some("vi; rm -rf x")).unwrap(),
            ["vi;", "rm", "-rf", "x"]
        );
        assert!(matches!(
            editor_command(some("vi 'unclosed"), None),
            Err(EditError::EditorWords {
                var: "KUBE_EDITOR",
                ..
            })
        ));
    }

    #[test]
    fn a_reapplied_edit_should_keep_both_the_users_change_and_the_concurrent_one() {
        let base = json!({"metadata": {"labels": {"a": "1", "gone": "x"}}, "spec": {"version": "1", "steps": [1, 2]}});
        let edited =
            json!({"metadata": {"labels": {"a": "1"}}, "spec": {"version": "2", "steps": [3]}});
        let mut fresh = json!({"metadata": {"labels": {"a": "1", "gone": "x", "b": "new"}}, "spec": {"version": "1", "paused": true, "steps": [1, 2]}});
        merge_apply(&mut fresh, &merge_diff(&base, &edited));
        assert_eq!(
            fresh,
            json!({"metadata": {"labels": {"a": "1", "b": "new"}}, "spec": {"version": "2", "paused": true, "steps": [3]}})
        );
    }

    #[test]
    fn only_the_comment_lines_at_the_top_should_be_dropped() {
        assert_eq!(
            strip_comments("# a\n#\nkind: X\nspec:\n  run: |\n    # kept\n    true\n"),
            "kind: X\nspec:\n  run: |\n    # kept\n    true\n"
        );
        assert_eq!(strip_comments("# only\n#"), "");
    }
}

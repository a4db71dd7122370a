//! Shell completion: `completion bash|zsh|fish` scripts that call the hidden
//! `__complete`, which completes subcommands and flags from the clap definition and
//! kinds, object names, machines and namespaces by asking the store (briefly).

use super::GlobalArgs;
use crate::api::{KindName, Object};
use crate::store::{Client, Scope};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long completion may wait for the store: a shell must not hang on a dead one.
const STORE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The shells `completion` writes a script for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

const BASH: &str = r#"# deployctl completion for bash: source it, or put it in /etc/bash_completion.d/
_deployctl() {
    local IFS=$'\n'
    COMPREPLY=($(deployctl __complete -- "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null))
}
complete -o default -F _deployctl deployctl
"#;

const ZSH: &str = r#"#compdef deployctl
# deployctl completion for zsh: put it in a directory of $fpath as _deployctl
_deployctl() {
    local -a candidates
    candidates=("${(@f)$(deployctl __complete -- "${(@)words[2,CURRENT]}" 2>/dev/null)}")
    compadd -a candidates
}
if [ "$funcstack[1]" = "_deployctl" ]; then
    _deployctl "$@"
else
    compdef _deployctl deployctl
fi
"#;

const FISH: &str = r#"# deployctl completion for fish: put it in ~/.config/fish/completions/
function __deployctl_complete
    set -l words (commandline -opc) (commandline -ct)
    deployctl __complete -- $words[2..-1] 2>/dev/null
end
complete -c deployctl -f -a '(__deployctl_complete)'
"#;

/// The script for `shell`.
pub fn script(shell: Shell) -> &'static str {
    match shell {
        Shell::Bash => BASH,
        Shell::Zsh => ZSH,
        Shell::Fish => FISH,
    }
}

/// Subcommands whose first argument is a KIND and the next ones its names.
const KIND_THEN_NAMES: [&str; 6] = ["get", "describe", "delete", "edit", "label", "annotate"];

/// What the word under the cursor is.
#[derive(Debug, PartialEq, Eq)]
enum Want {
    Subcommands,
    Flags(Vec<String>),
    Kinds {
        with_all: bool,
    },
    Names(KindName),
    /// `KIND/NAME`: names of the kind, each prefixed.
    SlashNames(KindName, String),
    Namespaces,
    Nothing,
}

/// Decides what to complete from the words before the cursor (`words`, the last one
/// being the word being typed).
fn want(words: &[String]) -> Want {
    let Some((current, before)) = words.split_last() else {
        return Want::Subcommands;
    };
    if let Some(prev) = before.last() {
        if prev == "-n" || prev == "--namespace" {
            return Want::Namespaces;
        }
    }
    // Positional words after the subcommand, skipping flags and their values.
    let mut positional: Vec<&str> = Vec::new();
    let mut skip_value = false;
    for w in before {
        if skip_value {
            skip_value = false;
            continue;
        }
        if w.starts_with('-') {
            skip_value = takes_value(w);
            continue;
        }
        positional.push(w);
    }
    let Some((&sub, args)) = positional.split_first() else {
        return if current.starts_with('-') {
            Want::Flags(flags_of(&[]))
        } else {
            Want::Subcommands
        };
    };
    if current.starts_with('-') {
        let path: Vec<&str> = match (sub, args.first()) {
            ("rollout" | "set", Some(verb)) => vec![sub, verb],
            _ => vec![sub],
        };
        return Want::Flags(flags_of(&path));
    }
    if KIND_THEN_NAMES.contains(&sub) {
        if let Some((kind, _)) = current.split_once('/') {
            return match KindName::parse(kind) {
                Some(k) => Want::SlashNames(k, kind.to_string()),
                None => Want::Nothing,
            };
        }
        return match args.first() {
            None => Want::Kinds {
                with_all: sub == "get",
            },
            Some(kind) => match kind.split(',').next().and_then(KindName::parse) {
                Some(k) if !kind.contains(',') => Want::Names(k),
                _ => Want::Nothing,
            },
        };
    }
    match (sub, args) {
        ("rollout", []) => Want::Flags(subcommands_of("rollout")),
        ("set", []) => Want::Flags(subcommands_of("set")),
        ("rollout", [_]) | ("set", [_]) => Want::Names(KindName::Rollout),
        ("logs", []) => Want::Kinds { with_all: false },
        ("logs", [kind]) => KindName::parse(kind).map_or(Want::Nothing, Want::Names),
        ("run", []) => Want::Names(KindName::Application),
        ("cordon" | "uncordon" | "drain", []) => Want::Names(KindName::Machine),
        ("explain", []) => Want::Kinds { with_all: false },
        _ => Want::Nothing,
    }
}

/// Whether a flag word is followed by its value (`-n prod`, not `-n=prod` or `-A`).
fn takes_value(flag: &str) -> bool {
    if flag.contains('=') {
        return false;
    }
    let cmd = <super::Cli as clap::CommandFactory>::command();
    let mut all: Vec<clap::Command> = vec![cmd.clone()];
    all.extend(cmd.get_subcommands().cloned());
    all.iter()
        .flat_map(|c| c.get_arguments().cloned().collect::<Vec<_>>())
        .any(|a| {
            let named = a.get_long().is_some_and(|l| flag == format!("--{l}"))
                || a.get_short().is_some_and(|s| flag == format!("-{s}"));
            named && a.get_action().takes_values()
        })
}

/// The visible subcommands below the command at `path`.
fn subcommands_of(path: &str) -> Vec<String> {
    let cmd = <super::Cli as clap::CommandFactory>::command();
    cmd.find_subcommand(path)
        .map(|c| {
            c.get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(|s| s.get_name().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The long flags of the command at `path` (the global ones included).
fn flags_of(path: &[&str]) -> Vec<String> {
    let mut cmd = <super::Cli as clap::CommandFactory>::command();
    cmd.build();
    let mut at = &cmd;
    for p in path {
        match at.find_subcommand(p) {
            Some(c) => at = c,
            None => break,
        }
    }
    at.get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect()
}

/// The kind words offered: plurals, as kubectl offers them.
fn kind_words(with_all: bool) -> Vec<String> {
    let mut out: Vec<String> = KindName::ALL
        .iter()
        .map(|k| k.plural().to_string())
        .collect();
    if with_all {
        out.push("all".into());
    }
    out
}

/// Names of `kind` in scope, or nothing when the store does not answer in time.
async fn names(g: &GlobalArgs, kind: KindName) -> Vec<String> {
    let scope = Scope::Namespace(g.namespace.clone());
    let listed = async {
        let client = super::connect(g).await.ok()?;
        super::for_kind!(kind, K => names_of::<K>(&client, &scope).await)
    };
    tokio::time::timeout(STORE_TIMEOUT, listed)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

async fn names_of<K: Object>(client: &Client, scope: &Scope) -> Option<Vec<String>> {
    let listed = client.list::<K>(scope).await.ok()?;
    Some(listed.items.iter().map(|o| o.name().to_string()).collect())
}

/// Every namespace an object of the store is in, and `default`.
async fn namespaces(g: &GlobalArgs) -> Vec<String> {
    let listed = async {
        let client = super::connect(g).await.ok()?;
        let mut out = BTreeSet::from(["default".to_string()]);
        for kind in KindName::ALL.into_iter().filter(|k| k.namespaced()) {
            let found = super::for_kind!(kind, K => namespaces_of::<K>(&client).await)?;
            out.extend(found);
        }
        Some(out.into_iter().collect::<Vec<_>>())
    };
    tokio::time::timeout(STORE_TIMEOUT, listed)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| vec!["default".to_string()])
}

async fn namespaces_of<K: Object>(client: &Client) -> Option<Vec<String>> {
    let listed = client.list::<K>(&Scope::All).await.ok()?;
    Some(
        listed
            .items
            .iter()
            .filter_map(|o| o.namespace().map(str::to_string))
            .collect(),
    )
}

/// `__complete WORDS...`: prints the candidates for the last word, one a line.
pub async fn run(g: &GlobalArgs, words: Vec<String>) -> anyhow::Result<i32> {
    let current = words.last().cloned().unwrap_or_default();
    let candidates = match want(&words) {
        Want::Subcommands => {
            let cmd = <super::Cli as clap::CommandFactory>::command();
            cmd.get_subcommands()
                .filter(|s| !s.is_hide_set())
                .map(|s| s.get_name().to_string())
                .collect()
        }
        Want::Flags(list) => list,
        Want::Kinds { with_all } => kind_words(with_all),
        Want::Names(kind) => names(g, kind).await,
        Want::SlashNames(kind, word) => names(g, kind)
            .await
            .into_iter()
            .map(|n| format!("{word}/{n}"))
            .collect(),
        Want::Namespaces => namespaces(g).await,
        Want::Nothing => Vec::new(),
    };
    for c in candidates.iter().filter(|c| c.starts_with(&current)) {
        outln!("{c}");
    }
    Ok(0)
}

/// The global flags typed on the line being completed (`--store`, `-n`) over those of
/// the environment, so that names come from the store and namespace the line names.
pub fn globals_from_words(g: &GlobalArgs, words: &[String]) -> GlobalArgs {
    let mut g = g.clone();
    let before = &words[..words.len().saturating_sub(1)];
    for pair in before.windows(2) {
        match pair[0].as_str() {
            "--store" => g.store = Some(pair[1].clone()),
            "-n" | "--namespace" => g.namespace = pair[1].clone(),
            _ => {}
        }
    }
    for w in before {
        if let Some(v) = w.strip_prefix("--store=") {
            g.store = Some(v.to_string());
        } else if let Some(v) = w.strip_prefix("--namespace=") {
            g.namespace = v.to_string();
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expected: Want) {
        let mut words: Vec<String> = line.split(' ').map(String::from).collect();
        if line.is_empty() {
            words = vec![String::new()];
        }
        assert_eq!(want(&words), expected, "{line:?}");
    }

    #[test]
    fn completion_should_offer_what_fits_the_word_under_the_cursor() {
        check("", Want::Subcommands);
        check("ge", Want::Subcommands);
        check("get ", Want::Kinds { with_all: true });
        check("describe ro", Want::Kinds { with_all: false });
        check("get ro ", Want::Names(KindName::Rollout));
        check("get -n prod machines a", Want::Names(KindName::Machine));
        check("get -A --show-labels ro ", Want::Names(KindName::Rollout));
        check("get ro/a", Want::SlashNames(KindName::Rollout, "ro".into()));
        check("delete app ", Want::Names(KindName::Application));
        check("get -n ", Want::Namespaces);
        check("rollout status ", Want::Names(KindName::Rollout));
        check("set version ", Want::Names(KindName::Rollout));
        check("logs inst ", Want::Names(KindName::Instance));
        check("run ", Want::Names(KindName::Application));
        check("edit ro ", Want::Names(KindName::Rollout));
        check("label --overwrite machine ", Want::Names(KindName::Machine));
        check(
            "annotate app/",
            Want::SlashNames(KindName::Application, "app".into()),
        );
        check("cordon ", Want::Names(KindName::Machine));
        check("drain --timeout 5m ", Want::Names(KindName::Machine));
        check("uncordon web-1 ", Want::Nothing);
        check("explain ", Want::Kinds { with_all: false });
        check("get ro,app ", Want::Nothing);
        check("get nonsense ", Want::Nothing);
        let Want::Flags(flags) = want(&["get".into(), "--sh".into()]) else {
            panic!("flags")
        };
        assert!(
            flags.contains(&"--show-labels".to_string())
                && flags.contains(&"--namespace".to_string())
        );
        let Want::Flags(verbs) = want(&["rollout".into(), String::new()]) else {
            panic!("verbs")
        };
        assert!(verbs.contains(&"promote".to_string()));
    }
}

//! The command reference (`docs/cli.md`), generated from the clap definitions, so that
//! it says what `--help` says. A test keeps the checked-in copy fresh
//! (`DEPLOYCTL_BLESS=1 cargo test --lib cli::docs`).

use clap::CommandFactory;

/// The width the help is rendered at: fixed, so the file does not depend on the terminal.
const WIDTH: usize = 100;

/// `docs/cli.md`: every visible command, in the order `deployctl --help` lists them,
/// with its whole `--help` (usage, arguments, flags, examples).
pub fn markdown() -> String {
    let mut cli = super::Cli::command().term_width(WIDTH);
    cli.build();
    let mut out = String::from(
        "# Command reference\n\n\
         <!-- Generated from the command definitions by src/cli/docs.rs; do not edit.\n     \
         Refresh with: DEPLOYCTL_BLESS=1 cargo test --lib cli::docs -->\n\n\
         Every command's `--help`, as `deployctl COMMAND --help` prints it. The objects'\n\
         fields are in [reference.md](reference.md); `deployctl explain` prints them too.\n",
    );
    let mut names = Vec::new();
    collect(&cli, "", &mut names);
    out.push_str("\n## Commands\n\n");
    for (path, _) in &names {
        out.push_str(&format!("- [`{path}`](#{})\n", anchor(path)));
    }
    for (path, help) in names {
        out.push_str(&format!(
            "\n## {path}\n\n```text\n{}\n```\n",
            help.trim_end()
        ));
    }
    out
}

/// Every visible command below `cmd` (itself first), depth first, with its long help.
fn collect(cmd: &clap::Command, parent: &str, out: &mut Vec<(String, String)>) {
    let path = format!("{parent} {}", cmd.get_name()).trim().to_string();
    // The environment's values (`[env: DEPLOYCTL_STORE=...]`) are this machine's, not
    // the command's.
    let help = cmd
        .clone()
        .mut_args(|a| a.hide_env_values(true))
        .render_long_help()
        .to_string();
    out.push((path.clone(), help));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        collect(sub, &path, out);
    }
}

/// GitHub's heading anchor for `path`: lowercase, spaces to `-`.
fn anchor(path: &str) -> String {
    path.to_lowercase().replace(' ', "-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_command_reference_should_match_the_checked_in_copy() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md");
        let want = markdown();
        if std::env::var_os("DEPLOYCTL_BLESS").is_some() {
            std::fs::write(&path, &want).expect("can write docs/cli.md");
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/cli.md is stale or missing; refresh it with: DEPLOYCTL_BLESS=1 cargo test --lib cli::docs"
        );
    }

    #[test]
    fn the_command_reference_should_hold_every_verb_with_its_examples() {
        let doc = markdown();
        for verb in [
            "## deployctl edit",
            "## deployctl label",
            "## deployctl annotate",
            "## deployctl cordon",
            "## deployctl drain",
            "## deployctl explain",
            "## deployctl rollout undo",
            "## deployctl rollout status",
            "## deployctl completion",
        ] {
            assert!(doc.contains(&format!("{verb}\n")), "no {verb:?}");
        }
        assert!(
            !doc.contains("## deployctl __complete"),
            "a hidden command is listed"
        );
        assert!(doc.contains("--to-revision"));
        assert!(doc.matches("Examples:").count() > 20);
    }
}

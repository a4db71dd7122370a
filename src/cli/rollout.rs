//! `deployctl rollout ...` and `deployctl set version`: requests to a Rollout, each one
//! compare-and-swap update, plus `status` (follow until done) and `history`.

use super::output::{escape, render};
use super::{connect, duration_in, get::shutdown_signal, within, CliError, GlobalArgs};
use crate::api::request::Request;
use crate::api::validation::check_version;
use crate::api::{find_condition, ConditionStatus, Object, Rollout, RolloutPhase};
use crate::reconcilers::rollout::REASON_NO_MACHINES;
use crate::store::{Client, ObjectEvent, Scope};
use chrono::Utc;
use clap::{Args, Subcommand};
use futures::StreamExt;
use std::time::Duration;

pub const EXAMPLES: &str = "\
Examples:
  # Follow a rollout until it completes (exit 0), degrades (1: failures,
  # progress deadline, or no ready machine matching until it) or times out (2);
  # 3: no such rollout, 4: the store cannot be reached
  deployctl rollout status api --timeout 15m

  # Stop starting new switches, then go on
  deployctl rollout pause api
  deployctl rollout resume api

  # Past a canary pause step; or skip every remaining step
  deployctl rollout promote api
  deployctl rollout promote api --full

  # Back to the previous version, or a given revision
  deployctl rollout undo api
  deployctl rollout undo api --to-revision 3";

pub const SET_EXAMPLES: &str = "\
Examples:
  # What CI runs after publishing an artifact
  deployctl set version api 1.4.2
  deployctl set version api 1.4.2 \\
    --sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// The shortest `rollout status --timeout`.
const STATUS_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// The longest `rollout status --timeout`: a week covers canary pauses of days.
const STATUS_TIMEOUT_MAX: Duration = Duration::from_secs(7 * 86_400);

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Follow a rollout: one line per change until Complete (0), Degraded (1; also when no
    /// ready machine matched by the progress deadline) or timeout (2).
    #[command(after_help = STATUS_HELP)]
    Status {
        name: String,
        /// Give up after this long (exit 2), within 1s..=7d (a canary may pause for days).
        #[arg(long, default_value = "10m", value_parser = duration_in(STATUS_TIMEOUT_MIN, STATUS_TIMEOUT_MAX))]
        timeout: Duration,
    },
    /// The revisions this rollout went through.
    #[command(after_help = "Examples:\n  deployctl rollout history api")]
    History { name: String },
    /// Stop starting new stages and switches (sets spec.paused).
    #[command(after_help = "Examples:\n  deployctl rollout pause api")]
    Pause { name: String },
    /// Clear a user's pause (a pause step or the failure policy needs `promote` or `retry`).
    #[command(after_help = "Examples:\n  deployctl rollout resume api")]
    Resume { name: String },
    /// Go past the current canary pause or analysis step; `--full` skips every remaining
    /// step, analysis included.
    #[command(
        after_help = "Examples:\n  deployctl rollout promote api\n  deployctl rollout promote api --full"
    )]
    Promote {
        name: String,
        #[arg(long)]
        full: bool,
    },
    /// Go back to the stable version on every updated machine.
    #[command(after_help = "Examples:\n  deployctl rollout abort api")]
    Abort { name: String },
    /// Forget failures and try the target version again.
    #[command(after_help = "Examples:\n  deployctl rollout retry api")]
    Retry { name: String },
    /// Re-run activation (and restart the service) on every machine, under the slots.
    #[command(after_help = "Examples:\n  deployctl rollout restart api")]
    Restart { name: String },
    /// Roll back to a previous revision's version, straight to every machine.
    #[command(
        after_help = "Examples:\n  deployctl rollout undo api\n  deployctl rollout undo api --to-revision 2"
    )]
    Undo {
        name: String,
        /// The revision (see `rollout history`); default: the newest with another version.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        to_revision: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SetCommand {
    /// Set a Rollout's version (and the artifact's sha256, which goes with it).
    #[command(after_help = SET_EXAMPLES)]
    Version(SetVersionArgs),
}

#[derive(Args, Debug)]
pub struct SetVersionArgs {
    /// The Rollout.
    pub rollout: String,
    /// The new version, e.g. `1.4.2`.
    pub version: String,
    /// The artifact's hex sha256. Without it a changed version drops the old digest.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
}

/// `rollout status`'s exit codes and examples, after its options.
const STATUS_HELP: &str = "\
Exit status:
  0  the rollout is Complete at its version
  1  the rollout is Degraded (failures, progress deadline, no ready machine)
  2  --timeout passed first
  3  the rollout does not exist (or was deleted while followed)
  4  the store cannot be reached

Examples:
  deployctl rollout status api
  deployctl rollout status api --timeout 30m -n prod";

/// `rollout status`'s exit codes, as its help lists them.
pub mod status_code {
    pub const COMPLETE: i32 = 0;
    pub const DEGRADED: i32 = 1;
    pub const TIMEOUT: i32 = 2;
    pub const NOT_FOUND: i32 = 3;
    pub const UNREACHABLE: i32 = 4;
}

pub async fn run(g: &GlobalArgs, cmd: RolloutCommand) -> anyhow::Result<i32> {
    let (name, request) = match cmd {
        RolloutCommand::Status { name, timeout } => return status_command(g, &name, timeout).await,
        RolloutCommand::History { name } => {
            let client = connect(g).await?;
            return history(g, &client, &g.namespace, &name).await;
        }
        RolloutCommand::Pause { name } => (name, Request::Pause),
        RolloutCommand::Resume { name } => (name, Request::Resume),
        RolloutCommand::Promote { name, full } => (name, Request::Promote { full }),
        RolloutCommand::Abort { name } => (name, Request::Abort),
        RolloutCommand::Retry { name } => (name, Request::Retry),
        RolloutCommand::Restart { name } => (name, Request::Restart),
        RolloutCommand::Undo { name, to_revision } => (name, Request::Undo { to_revision }),
    };
    let client = connect(g).await?;
    let ns = g.namespace.as_str();
    if matches!(request, Request::Promote { .. }) {
        // A promote on a finished rollout would be acted on as a no-op: say so instead of
        // claiming "promoted".
        let current = within(g, client.get::<Rollout>(Some(ns), &name))
            .await?
            .ok_or_else(|| CliError::NotFound {
                plural: Rollout::PLURAL,
                name: name.clone(),
            })?;
        if let Some(why) = request.nothing_to_do(&current) {
            outln!(
                "{} is {}",
                super::reference(crate::api::KindName::Rollout, &name),
                escape(&why)
            );
            return Ok(0);
        }
    }
    let token = uuid::Uuid::new_v4().to_string();
    let now = Utc::now();
    let mut outcome: Result<String, String> = Err(String::new());
    change(g, &client, ns, &name, |r| {
        outcome = request.apply(r, &token, now);
    })
    .await?;
    let done = match outcome {
        Ok(what) => what,
        Err(e) => anyhow::bail!("cannot {} rollout {name:?}: {e}", request.verb()),
    };
    outln!(
        "{} {}",
        super::reference(crate::api::KindName::Rollout, &name),
        escape(&done)
    );
    Ok(0)
}

/// One compare-and-swap update, retried from fresh state on conflict.
async fn change(
    g: &GlobalArgs,
    client: &Client,
    ns: &str,
    name: &str,
    f: impl FnMut(&mut Rollout),
) -> anyhow::Result<Rollout> {
    match within(g, client.update::<Rollout>(Some(ns), name, f)).await {
        Ok(r) => Ok(r),
        Err(e) => match e.downcast_ref::<crate::store::Error>() {
            Some(crate::store::Error::NotFound(_)) => Err(CliError::NotFound {
                plural: Rollout::PLURAL,
                name: name.to_string(),
            }
            .into()),
            _ => Err(e),
        },
    }
}

pub async fn run_set(g: &GlobalArgs, cmd: SetCommand) -> anyhow::Result<i32> {
    let SetCommand::Version(args) = cmd;
    check_version(&args.version).map_err(anyhow::Error::msg)?;
    if let Some(s) = &args.sha256 {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::bail!("invalid sha256 {s:?}: must be 64 hex digits");
        }
    }
    let client = connect(g).await?;
    change(g, &client, &g.namespace, &args.rollout, |r| {
        r.spec.set_version(&args.version, args.sha256.as_deref());
    })
    .await?;
    outln!(
        "{} version set to {}",
        super::reference(crate::api::KindName::Rollout, &args.rollout),
        args.version
    );
    Ok(0)
}

async fn history(g: &GlobalArgs, client: &Client, ns: &str, name: &str) -> anyhow::Result<i32> {
    let ro: Rollout = within(g, client.get(Some(ns), name))
        .await?
        .ok_or_else(|| CliError::NotFound {
            plural: Rollout::PLURAL,
            name: name.to_string(),
        })?;
    let history = ro.status.map(|s| s.history).unwrap_or_default();
    if history.is_empty() {
        eprintln!("No history for rollout {name:?} yet.");
        return Ok(0);
    }
    let rows = super::describe::history_rows(&history, Utc::now());
    outln!(
        "{}",
        render(
            Some(&["REVISION", "VERSION", "STARTED", "COMPLETED", "RESULT"]),
            &rows
        )
    );
    Ok(0)
}

/// Where a followed rollout stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Complete at the wanted version, for the current generation.
    Done,
    /// Degraded for the current generation: the message says why.
    Failed(String),
    Waiting,
}

/// Done only when the controller has seen this generation, completed it, and its target
/// is the wanted version: an old `Complete` must not end a new rollout's wait.
pub fn verdict(r: &Rollout) -> Verdict {
    let Some(st) = &r.status else {
        return Verdict::Waiting;
    };
    if st.observed_generation != r.metadata.generation.unwrap_or(0) {
        return Verdict::Waiting;
    }
    let at_version = st.target_version.as_deref() == Some(r.spec.version.as_str());
    // A user's pause of a complete rollout shows as Paused; every machine runs the version.
    let complete = find_condition(&st.conditions, "Complete")
        .is_some_and(|c| c.status == ConditionStatus::True);
    match st.phase {
        RolloutPhase::Complete if at_version => Verdict::Done,
        RolloutPhase::Paused if at_version && complete => Verdict::Done,
        RolloutPhase::Degraded if no_machines(r) => Verdict::Failed(no_machines_message(r)),
        RolloutPhase::Degraded => Verdict::Failed(if st.message.is_empty() {
            "degraded".into()
        } else {
            st.message.clone()
        }),
        _ => Verdict::Waiting,
    }
}

/// The status says that no ready machine matches the Application's selector.
fn no_machines(r: &Rollout) -> bool {
    r.status.as_ref().is_some_and(|st| {
        find_condition(&st.conditions, "Available")
            .is_some_and(|c| c.status == ConditionStatus::False && c.reason == REASON_NO_MACHINES)
    })
}

fn no_machines_message(r: &Rollout) -> String {
    format!(
        "the selector of application {:?} matches no ready machine: nothing runs version {}",
        r.spec.application, r.spec.version
    )
}

/// One line of `rollout status`, its values [`escape`]d: one line whatever they hold.
pub fn progress_line(r: &Rollout) -> String {
    let st = r.status.clone().unwrap_or_default();
    let mut line = format!(
        "rollout {:?} to {}: {}, {} of {} machines updated, {} staged, {} available",
        r.metadata.name,
        escape(&r.spec.version),
        st.phase,
        st.updated,
        st.desired,
        st.staged,
        st.available
    );
    if !st.message.is_empty() {
        line.push_str(": ");
        line.push_str(&escape(&st.message));
    }
    line
}

/// How following a rollout ended, before it becomes an exit code.
#[derive(Debug, thiserror::Error)]
enum StatusError {
    #[error("{0}")]
    NotFound(CliError),
    #[error("rollout {0:?} was deleted")]
    Deleted(String),
    #[error("{0:#}")]
    Unreachable(anyhow::Error),
}

/// `rollout status`: follows the rollout and maps how that ended to [`status_code`].
async fn status_command(g: &GlobalArgs, name: &str, timeout: Duration) -> anyhow::Result<i32> {
    let client = match connect(g).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "error: {}",
                crate::cli::output::escape_lines(&format!("{e:#}"))
            );
            return Ok(status_code::UNREACHABLE);
        }
    };
    match status(&client, &g.namespace, name, timeout).await {
        Ok(code) => Ok(code),
        Err(e) => {
            let code = match &e {
                StatusError::NotFound(_) | StatusError::Deleted(_) => status_code::NOT_FOUND,
                StatusError::Unreachable(_) => status_code::UNREACHABLE,
            };
            let text = match &e {
                StatusError::NotFound(nf) => nf.to_string(),
                other => format!("error: {other}"),
            };
            eprintln!("{}", crate::cli::output::escape_lines(&text));
            Ok(code)
        }
    }
}

async fn status(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<i32, StatusError> {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut stream = client.list_watch::<Rollout>(Scope::Namespace(ns.to_string()));
    let mut last_line = String::new();
    let mut listed = false;
    // Why it still waits, when the last status said so: no machine to roll out to.
    let mut why_waiting = String::new();
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = &mut deadline => {
                eprintln!("error: timed out after {} waiting for rollout {name:?}{why_waiting}", humantime::format_duration(timeout));
                return Ok(status_code::TIMEOUT);
            }
            _ = &mut shutdown => return Ok(1),
        };
        let Some(event) = event else {
            return Err(StatusError::Unreachable(anyhow::anyhow!(
                "the watch on rollout {name:?} ended"
            )));
        };
        let ro = match event {
            Ok(ObjectEvent::Restarted(items)) => {
                let found = items.into_iter().find(|r| r.metadata.name == name);
                match found {
                    Some(r) => r,
                    None if !listed => {
                        return Err(StatusError::NotFound(CliError::NotFound {
                            plural: Rollout::PLURAL,
                            name: name.to_string(),
                        }))
                    }
                    None => return Err(StatusError::Deleted(name.to_string())),
                }
            }
            Ok(ObjectEvent::Applied(r)) if r.metadata.name == name => r,
            Ok(ObjectEvent::Deleted(r)) if r.metadata.name == name => {
                return Err(StatusError::Deleted(name.to_string()))
            }
            Ok(_) => continue,
            Err(e) if !listed => return Err(StatusError::Unreachable(e.into())),
            Err(e) => {
                tracing::warn!(error = %e, "watch interrupted; resuming");
                continue;
            }
        };
        listed = true;
        why_waiting = if no_machines(&ro) {
            format!(": {}", escape(&no_machines_message(&ro)))
        } else {
            String::new()
        };
        let line = progress_line(&ro);
        if line != last_line {
            outln!("{line}");
            last_line = line;
        }
        match verdict(&ro) {
            Verdict::Done => {
                outln!(
                    "rollout {name:?} successfully rolled out to {}",
                    escape(&ro.spec.version)
                );
                return Ok(status_code::COMPLETE);
            }
            Verdict::Failed(why) => {
                eprintln!("error: rollout {name:?} is degraded: {}", escape(&why));
                return Ok(status_code::DEGRADED);
            }
            Verdict::Waiting => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::request::undo;
    use crate::api::ANNOTATION_UNDO;
    use crate::api::{Revision, RolloutSpec, RolloutStatus};

    fn rollout(version: &str, generation: i64, status: Option<RolloutStatus>) -> Rollout {
        let mut r = Rollout::new(
            "api",
            RolloutSpec {
                application: "api".into(),
                version: version.into(),
                ..Default::default()
            },
        );
        r.metadata.generation = Some(generation);
        r.status = status;
        r
    }

    fn st(phase: RolloutPhase, observed: i64, target: &str) -> Option<RolloutStatus> {
        Some(RolloutStatus {
            phase,
            observed_generation: observed,
            target_version: Some(target.into()),
            ..Default::default()
        })
    }

    fn with_condition(
        mut st: Option<RolloutStatus>,
        type_: &str,
        status: ConditionStatus,
        reason: &str,
    ) -> Option<RolloutStatus> {
        let s = st.as_mut().expect("a status to add to");
        crate::api::set_condition(&mut s.conditions, type_, status, reason, "", Utc::now());
        st
    }

    #[test]
    fn status_should_fail_saying_the_selector_matches_no_ready_machine() {
        let waiting = with_condition(
            st(RolloutPhase::Progressing, 2, "2"),
            "Available",
            ConditionStatus::False,
            REASON_NO_MACHINES,
        );
        assert_eq!(
            verdict(&rollout("2", 2, waiting)),
            Verdict::Waiting,
            "machines may still be registering: wait until the progress deadline"
        );
        let s = with_condition(
            st(RolloutPhase::Degraded, 2, "2"),
            "Available",
            ConditionStatus::False,
            REASON_NO_MACHINES,
        );
        match verdict(&rollout("2", 2, s)) {
            Verdict::Failed(why) => assert!(
                why.contains("selector of application \"api\" matches no ready machine"),
                "{why}"
            ),
            other => panic!("not a failure: {other:?}"),
        }
    }

    #[test]
    fn status_should_finish_on_a_complete_rollout_the_user_paused() {
        let paused = with_condition(
            st(RolloutPhase::Paused, 2, "2"),
            "Complete",
            ConditionStatus::True,
            "RolloutCompleted",
        );
        assert_eq!(verdict(&rollout("2", 2, paused)), Verdict::Done);
        let paused_midway = with_condition(
            st(RolloutPhase::Paused, 2, "2"),
            "Complete",
            ConditionStatus::False,
            "RolloutNotComplete",
        );
        assert_eq!(verdict(&rollout("2", 2, paused_midway)), Verdict::Waiting);
    }

    #[test]
    fn status_should_finish_only_on_a_complete_current_generation_at_the_wanted_version() {
        assert_eq!(verdict(&rollout("2", 2, None)), Verdict::Waiting);
        assert_eq!(
            verdict(&rollout("2", 2, st(RolloutPhase::Complete, 1, "1"))),
            Verdict::Waiting
        );
        assert_eq!(
            verdict(&rollout("2", 2, st(RolloutPhase::Complete, 2, "1"))),
            Verdict::Waiting
        );
        assert_eq!(
            verdict(&rollout("2", 2, st(RolloutPhase::Progressing, 2, "2"))),
            Verdict::Waiting
        );
        assert_eq!(
            verdict(&rollout("2", 2, st(RolloutPhase::Complete, 2, "2"))),
            Verdict::Done
        );
        // A degraded old generation is not this rollout's failure.
        assert_eq!(
            verdict(&rollout("2", 2, st(RolloutPhase::Degraded, 1, "1"))),
            Verdict::Waiting
        );
        assert!(matches!(
            verdict(&rollout("2", 2, st(RolloutPhase::Degraded, 2, "2"))),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn a_progress_line_should_stay_one_line_with_control_characters_escaped() {
        let mut status = st(RolloutPhase::Degraded, 2, "2").expect("a status");
        status.message = "hook failed\n\x1b[2Jfake: Complete\x07".into();
        let line = progress_line(&rollout("2\u{202e}", 2, Some(status)));
        assert_eq!(
            line,
            r#"rollout "api" to 2\u{202e}: Degraded, 0 of 0 machines updated, 0 staged, 0 available: hook failed\n\e[2Jfake: Complete\a"#
        );
    }

    fn rev(n: u32, v: &str) -> Revision {
        Revision {
            revision: n,
            version: v.into(),
            sha256: Some(format!("{v:0>64}")),
            started_at: Utc::now(),
            completed_at: None,
            result: String::new(),
        }
    }

    #[test]
    fn undo_should_pick_the_newest_other_version_and_mark_the_next_generation() {
        let history = vec![rev(1, "1"), rev(2, "2"), rev(3, "3")];
        let mut r = rollout(
            "3",
            5,
            Some(RolloutStatus {
                history,
                ..Default::default()
            }),
        );
        let what = undo(&mut r, None).unwrap();
        assert_eq!(what, "rolled back to revision 2 (version 2)");
        assert_eq!(r.spec.version, "2");
        assert_eq!(
            r.spec.sha256.as_deref(),
            Some(format!("{:0>64}", "2").as_str())
        );
        assert_eq!(
            r.metadata
                .annotations
                .get(ANNOTATION_UNDO)
                .map(String::as_str),
            Some("6")
        );

        let mut r2 = rollout("3", 5, r.status.clone());
        undo(&mut r2, Some(1)).unwrap();
        assert_eq!(r2.spec.version, "1");

        let before = rollout("3", 5, r.status.clone());
        let mut r3 = before.clone();
        assert!(undo(&mut r3, Some(9))
            .unwrap_err()
            .contains("no revision 9"));
        assert_eq!(r3, before, "a failed undo changes nothing");
        let mut empty = rollout("3", 5, None);
        assert!(undo(&mut empty, None).is_err());
    }
}

//! `deployctl run` end to end: a controller and agents as processes, Tasks run from the
//! command line on both stores.

use crate::common::Backend;
use crate::rollouts::{wait_until, Fleet};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

#[test]
fn deployctl_run_should_stream_results_run_named_tasks_and_exit_by_outcome() {
    for (label, backend) in Backend::all() {
        let (f, machines) = task_fleet(label, backend, 3);
        let mut app = f.app(json!({}), json!({}));
        app["spec"]["tasks"] = json!({
            "migrate": { "command": "echo \"$DEPLOY_MACHINE\" >> \"$LOGS/migrations\"", "timeoutSeconds": 30 }
        });
        f.apply(&[app]);

        // Every machine, each line as it comes, the output tail, a summary, exit 0.
        let out = f
            .run(&[
                "run",
                "api",
                "--max-parallel",
                "2",
                "--output",
                "--",
                "echo \"$DEPLOY_MACHINE $(cat VERSION) $DEPLOY_VERSION\"",
            ])
            .ok();
        for m in &machines {
            assert!(
                out.stdout.contains(&format!("{m}: exit 0 (")),
                "[{label}] {}",
                out.stdout
            );
            assert!(
                out.stdout.contains(&format!("  {m} v1 v1\n")),
                "[{label}] {}",
                out.stdout
            );
        }
        assert!(
            out.stdout.contains("3/3 machines succeeded"),
            "[{label}] {}",
            out.stdout
        );

        // Injection: a version with shell characters never reaches a machine (validation
        // refuses it), and the command sees the version only through its environment: the
        // text is passed as written, nothing is substituted into it.
        let out = f.run(&["set", "version", "api", "v1;touch${IFS}pwned"]);
        assert_ne!(out.code, 0, "[{label}] {}", out.stdout);
        assert!(
            out.stderr.contains("invalid version"),
            "[{label}] {}",
            out.stderr
        );
        let out = f
            .run(&[
                "run",
                "api",
                "--one",
                "--output",
                "--",
                "printf '%s\\n' '{{version}} $DEPLOY_VERSION' \"$DEPLOY_VERSION\"",
            ])
            .ok();
        assert!(
            out.stdout.contains("  {{version}} $DEPLOY_VERSION\n  v1\n"),
            "[{label}] {}",
            out.stdout
        );

        // A named task on one machine only.
        let out = f.run(&["run", "api", "--one", "migrate"]).ok();
        assert!(
            out.stdout.contains("1/1 machines succeeded"),
            "[{label}] {}",
            out.stdout
        );
        let migrations = std::fs::read_to_string(f.gate().with_file_name("migrations"))
            .expect("the migrate task wrote its log");
        assert_eq!(migrations.lines().count(), 1, "[{label}] {migrations}");

        // An unknown task is a usage error listing the known ones.
        let out = f.run(&["run", "api", "seed"]).code(2);
        assert!(
            out.stderr
                .contains("has no task \"seed\"; its tasks: migrate"),
            "[{label}] {}",
            out.stderr
        );

        // A failure names the machine, stops the rest and exits 1.
        let out = f
            .run(&["run", "api", "--", "test \"$DEPLOY_MACHINE\" != m1"])
            .code(1);
        assert!(
            out.stdout.contains("m0: exit 0 ("),
            "[{label}] {}",
            out.stdout
        );
        assert!(
            out.stdout.contains("m1: exit 1 ("),
            "[{label}] {}",
            out.stdout
        );
        assert!(!out.stdout.contains("m2: "), "[{label}] {}", out.stdout);
        assert!(
            out.stdout
                .contains("1/3 machines succeeded; failed: m1 (Failed); 1 not started"),
            "[{label}] {}",
            out.stdout
        );

        // --detach returns at once; describe shows each machine's result.
        let out = f
            .run(&["run", "api", "--detach", "--", "echo detached"])
            .ok();
        let name = out
            .stdout
            .trim()
            .strip_prefix("task.deployctl.dev/")
            .and_then(|s| s.strip_suffix(" created"))
            .unwrap_or_else(|| panic!("[{label}] {}", out.stdout))
            .to_string();
        let page = wait_until("the detached task done", Duration::from_secs(60), || {
            let out = f.run(&["describe", "task", &name]).ok();
            let done = out
                .stdout
                .lines()
                .any(|l| l.trim_start().starts_with("Phase:") && l.ends_with("Succeeded"));
            done.then_some(out.stdout)
        });
        for m in &machines {
            assert!(page.contains(m.as_str()), "[{label}] {page}");
        }
        assert!(
            page.contains("detached"),
            "[{label}] the output tail: {page}"
        );
        // logs task: every machine's lines of this run, and none of the earlier runs'.
        let logs = f.run(&["logs", "task", &name]).ok();
        for m in &machines {
            assert!(
                logs.stdout
                    .lines()
                    .any(|l| l.starts_with(&format!("[{m}] ")) && l.ends_with("stdout: detached")),
                "[{label}] {m}: {}",
                logs.stdout
            );
        }
        assert!(!logs.stdout.contains("v1 v1"), "[{label}] {}", logs.stdout);
        let list = f.run(&["get", "tasks"]).ok();
        assert!(list.stdout.contains(&name), "[{label}] {}", list.stdout);
    }
}

#[test]
fn an_agent_killed_mid_command_should_report_interrupted_kill_the_group_and_never_run_it_again() {
    for (label, backend) in Backend::all() {
        let (mut f, _machines) = task_fleet(label, backend, 1);
        let starts = f.logs().join("starts");
        let leader_file = f.logs().join("leader.pid");
        let pid_file = f.logs().join("sleeper.pid");
        // The command's shell leads its process group; the sleeper is a member.
        let command = format!(
            "echo $$ > {leader}; echo start >> {starts}; sh -c 'echo $$ > {pid}; exec sleep 300'",
            leader = leader_file.display(),
            starts = starts.display(),
            pid = pid_file.display()
        );
        let out = f.run(&["run", "api", "--detach", "--", &command]).ok();
        let name = detached_name(&out.stdout);
        let _sleeper: i32 = wait_until("the command started", Duration::from_secs(60), || {
            std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
        });
        let pgid: i32 = std::fs::read_to_string(&leader_file)
            .expect("the shell wrote its pid before the sleeper's")
            .trim()
            .parse()
            .expect("a pid");
        assert!(group_alive(pgid), "[{label}] the command runs");
        f.kill_agent("m0");
        assert!(
            group_alive(pgid),
            "[{label}] a SIGKILLed agent leaves its command running"
        );
        f.start_agent("m0");
        let page = wait_until("the task finished", Duration::from_secs(60), || {
            let out = f.run(&["describe", "task", &name]).ok();
            let done = out
                .stdout
                .lines()
                .any(|l| l.trim_start().starts_with("Phase:") && l.ends_with("Failed"));
            done.then_some(out.stdout)
        });
        assert!(page.contains("Interrupted"), "[{label}] {page}");
        assert!(
            page.contains("its process group was killed"),
            "[{label}] {page}"
        );
        // The restarted agent killed what its predecessor left.
        wait_until(
            "the command's process group gone",
            Duration::from_secs(60),
            || (!group_alive(pgid)).then_some(()),
        );
        let runs = std::fs::read_to_string(&starts).expect("the command ran");
        assert_eq!(runs.lines().count(), 1, "[{label}] never run again: {runs}");
    }
}

/// True while a live (not zombie) process is in process group `pgid`, read from
/// `/proc/*/stat` (after the command name: state, ppid, pgrp).
fn group_alive(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok).any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().take(3).collect();
        fields.len() == 3 && fields[0] != "Z" && fields[2] == pgid.to_string()
    })
}

/// `deployctl run ... --detach`'s Task name.
fn detached_name(stdout: &str) -> String {
    stdout
        .trim()
        .strip_prefix("task.deployctl.dev/")
        .and_then(|s| s.strip_suffix(" created"))
        .unwrap_or_else(|| panic!("not a detached run's output: {stdout}"))
        .to_string()
}

/// `machines` agents on v1 of `api`, one switch at a time, pausing on a failure: the
/// fleet every Task test runs on.
fn task_fleet(label: &'static str, backend: Backend, machines: usize) -> (Fleet, Vec<String>) {
    Fleet::at_v1(
        label,
        backend,
        machines,
        json!({}),
        json!({}),
        json!({ "maxUnavailable": 1 }),
        json!({ "maxFailures": 0, "action": "Pause" }),
    )
}

#[test]
fn four_agents_with_max_parallel_two_should_never_overlap_more_than_two_and_delete_should_kill() {
    for (label, backend) in Backend::all() {
        let (f, machines) = task_fleet(label, backend, 4);
        let log = f.logs().join("spans");
        // The sleep makes runs long enough to overlap if the limit were broken; the test
        // reads the recorded times, it never waits on the sleep.
        let command = format!(
            "echo \"$DEPLOY_MACHINE start $(date +%s%N)\" >> {log}; sleep 0.5; \
             echo \"$DEPLOY_MACHINE end $(date +%s%N)\" >> {log}",
            log = log.display()
        );
        f.run(&["run", "api", "--max-parallel", "2", "--", &command])
            .ok();
        let text = std::fs::read_to_string(&log).expect("the runs wrote their times");
        let mut spans: BTreeMap<String, (Option<u128>, Option<u128>)> = BTreeMap::new();
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            let t: u128 = parts[2].parse().expect("date +%s%N prints nanoseconds");
            let span = spans.entry(parts[0].to_string()).or_default();
            let slot = if parts[1] == "start" {
                &mut span.0
            } else {
                &mut span.1
            };
            assert!(slot.is_none(), "[{label}] {} ran twice: {text}", parts[0]);
            *slot = Some(t);
        }
        let ran: Vec<&String> = spans.keys().collect();
        assert_eq!(ran, machines.iter().collect::<Vec<_>>(), "[{label}] {text}");
        let spans: Vec<(u128, u128)> = spans
            .values()
            .map(|(a, b)| (a.expect("a start"), b.expect("an end")))
            .collect();
        for &(start, _) in &spans {
            let at_once = spans
                .iter()
                .filter(|(a, b)| *a <= start && start < *b)
                .count();
            assert!(at_once <= 2, "[{label}] {at_once} at once: {text}");
        }

        // `delete task` mid-run kills the running command's process group.
        let pid_file = f.logs().join("sleeper.pid");
        let command = format!("sh -c 'echo $$ > {}; exec sleep 300'", pid_file.display());
        let out = f
            .run(&["run", "api", "--one", "--detach", "--", &command])
            .ok();
        let name = detached_name(&out.stdout);
        let pid: i32 = wait_until("the sleeper started", Duration::from_secs(60), || {
            std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
        });
        f.run(&["delete", "task", &name]).ok();
        wait_until("the sleeper killed", Duration::from_secs(60), || {
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
            (!alive).then_some(())
        });
        std::fs::remove_file(&pid_file).expect("the pid file is ours");
    }
}

#[test]
fn logs_task_follow_should_print_each_line_once_and_end_when_the_task_finishes() {
    for (label, backend) in Backend::all() {
        let (f, machines) = task_fleet(label, backend, 2);
        // Each machine prints a line, waits for the test's go, prints its last line.
        let go = f.logs().join("task-go");
        let command = format!(
            "echo \"first-$DEPLOY_MACHINE\"; while [ ! -e {go} ]; do sleep 0.05; done; \
             echo \"last-$DEPLOY_MACHINE\"",
            go = go.display()
        );
        let out = f
            .run(&[
                "run",
                "api",
                "--max-parallel",
                "2",
                "--detach",
                "--",
                &command,
            ])
            .ok();
        let name = detached_name(&out.stdout);
        let mut follow = crate::common::spawn(&f.store, &["logs", "task", &name, "-f"]);
        for m in &machines {
            let first = |l: &str| {
                l.starts_with(&format!("[{m}] ")) && l.ends_with(&format!("stdout: first-{m}"))
            };
            if !follow.seen.iter().any(|l| first(l)) {
                follow.wait_for_line("a machine's first line", first);
            }
        }
        std::fs::write(&go, "").expect("the logs dir is writable");
        let (code, lines) = follow.exit_by_itself();
        assert_eq!(code, Some(0), "[{label}] ends 0 with the task: {lines:#?}");
        for m in &machines {
            for word in ["first", "last"] {
                let n = lines
                    .iter()
                    .filter(|l| {
                        l.starts_with(&format!("[{m}] "))
                            && l.ends_with(&format!("stdout: {word}-{m}"))
                    })
                    .count();
                assert_eq!(n, 1, "[{label}] {word}-{m} once: {lines:#?}");
            }
        }

        // Following a finished Task prints its lines and ends at once.
        let out = f.run(&["logs", "task", &name, "-f"]).ok();
        for m in &machines {
            for word in ["first", "last"] {
                let n = out
                    .stdout
                    .lines()
                    .filter(|l| l.ends_with(&format!("stdout: {word}-{m}")))
                    .count();
                assert_eq!(n, 1, "[{label}] {word}-{m} once: {}", out.stdout);
            }
        }
    }
}

//! The process group of each running Task command, recorded on disk, so that an agent
//! restarted after a crash kills the command its predecessor left running.
//!
//! A record is one file, `<root>/.taskgroups/<namespace>_<task>`, holding the group id
//! (the shell's pid: the command runs in its own group) and that process's start time
//! from `/proc/<pid>/stat`, which tells the command's process from a later one that got
//! the same pid. (`.taskgroups` cannot clash with a namespace: those start with a letter
//! or digit; names never hold `_`, so a file name maps back to one Task.)

use std::io;
use std::path::{Path, PathBuf};

/// The records of one agent's deploy root.
#[derive(Clone, Debug)]
pub struct Records {
    dir: PathBuf,
}

/// What [`Records::kill_left`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Left {
    /// No record: the command finished, or the agent died before recording it.
    Nothing,
    /// The group was sent SIGKILL: its leader was the recorded process, or had exited
    /// (then only that group's members can still carry the id).
    Killed,
    /// The pid now belongs to another process: nothing was signalled.
    Reused,
}

impl Records {
    pub fn new(root: &Path) -> Records {
        Records {
            dir: root.join(".taskgroups"),
        }
    }

    fn file(&self, namespace: &str, task: &str) -> PathBuf {
        self.dir.join(format!("{namespace}_{task}"))
    }

    /// Records that Task `namespace/task`'s command runs as process group `pgid`.
    pub fn record(&self, namespace: &str, task: &str, pgid: i32) -> io::Result<()> {
        let start = start_time(pgid)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no process {pgid}")))?;
        std::fs::create_dir_all(&self.dir)?;
        let path = self.file(namespace, task);
        let tmp = self.dir.join(format!(".{namespace}_{task}.tmp"));
        std::fs::write(&tmp, format!("{pgid} {start}\n"))?;
        std::fs::rename(&tmp, &path)
    }

    /// Drops the record of a command that ended (or was killed by this agent).
    pub fn forget(&self, namespace: &str, task: &str) {
        let _ = std::fs::remove_file(self.file(namespace, task));
    }

    /// Kills the group a previous agent recorded for Task `namespace/task`, unless its pid
    /// now names another process, and drops the record.
    pub fn kill_left(&self, namespace: &str, task: &str) -> Left {
        let path = self.file(namespace, task);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Left::Nothing;
        };
        let left = match parse_record(&text) {
            None => {
                tracing::warn!(path = %path.display(), "unreadable task process record; dropped");
                Left::Nothing
            }
            Some((pgid, recorded)) => match start_time(pgid) {
                Some(now) if now != recorded => Left::Reused,
                _ => {
                    super::hooks::kill_group(pgid, nix::sys::signal::Signal::SIGKILL);
                    Left::Killed
                }
            },
        };
        let _ = std::fs::remove_file(&path);
        left
    }

    /// The (namespace, task) of every record: the commands a previous agent may have left.
    pub fn all(&self) -> Vec<(String, String)> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (ns, task) = name.split_once('_')?;
                // A dot-file is a record being written.
                (!ns.starts_with('.')).then(|| (ns.to_string(), task.to_string()))
            })
            .collect()
    }
}

/// Removes a record when dropped: a command this agent ran is gone by then (it ended,
/// or its group was killed when its run was dropped).
pub struct RecordGuard<'a> {
    records: &'a Records,
    namespace: &'a str,
    task: &'a str,
}

impl<'a> RecordGuard<'a> {
    pub fn new(records: &'a Records, namespace: &'a str, task: &'a str) -> Self {
        RecordGuard {
            records,
            namespace,
            task,
        }
    }

    /// Records the command's group; a failure is logged (the command still runs, but a
    /// crash would leave it unkillable by the next agent).
    pub fn started(&self, pgid: i32) {
        if let Err(e) = self.records.record(self.namespace, self.task, pgid) {
            tracing::warn!(task = %self.task, pgid, error = %e, "cannot record a task's process group");
        }
    }
}

impl Drop for RecordGuard<'_> {
    fn drop(&mut self) {
        self.records.forget(self.namespace, self.task);
    }
}

fn parse_record(text: &str) -> Option<(i32, u64)> {
    let mut words = text.split_whitespace();
    let pgid = words.next()?.parse().ok().filter(|p: &i32| *p > 1)?;
    let start = words.next()?.parse().ok()?;
    Some((pgid, start))
}

/// The start time of process `pid` (`/proc/<pid>/stat` field 22, in clock ticks since
/// boot); `None` when there is no such process (a zombie counts as none).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    start_time_in(&stat)
}

/// Field 22 of a stat line. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses, so fields are counted after its last `)`: field 3 (the state)
/// is the first there, field 22 the twentieth.
fn start_time_in(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn alive(pid: i32) -> bool {
        start_time(pid).is_some()
    }

    fn wait_gone(pid: i32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(pid) {
            assert!(Instant::now() < deadline, "process {pid} still alive");
            std::thread::yield_now();
        }
    }

    /// `sh -c 'sleep 300 & wait'` in its own group: the leader and a member.
    fn group() -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 300 & wait"])
            .process_group(0)
            .spawn()
            .expect("sh runs")
    }

    #[test]
    fn a_stat_line_should_give_field_22_even_when_the_name_holds_spaces_and_parentheses() {
        let line = "4242 (a) (b c) S 1 4242 4242 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 2000000 300 18446744073709551615";
        assert_eq!(start_time_in(line), Some(987_654));
        let zombie = "4242 (sh) Z 1 4242 4242 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 55 0 0";
        assert_eq!(start_time_in(zombie), None, "a zombie is no process");
        assert_eq!(start_time_in("4242 (sh) S 1"), None, "a short line");
        assert!(start_time(std::process::id() as i32).is_some());
    }

    #[test]
    fn a_recorded_group_should_be_killed_whole_and_a_reused_pid_should_be_left_alone() {
        let root = tempfile::tempdir().expect("temp dir");
        let records = Records::new(root.path());
        let mut child = group();
        let pgid = child.id() as i32;
        records.record("default", "run-1", pgid).expect("record");
        assert_eq!(
            records.all(),
            [("default".to_string(), "run-1".to_string())]
        );
        assert_eq!(records.kill_left("default", "run-1"), Left::Killed);
        child.wait().expect("the leader is reaped");
        assert!(records.all().is_empty(), "the record is dropped");
        assert_eq!(records.kill_left("default", "run-1"), Left::Nothing);

        // A record whose start time is not the live process's: the pid was reused.
        let mut other = group();
        let pid = other.id() as i32;
        std::fs::write(records.file("default", "run-2"), format!("{pid} 1\n")).expect("write");
        assert_eq!(records.kill_left("default", "run-2"), Left::Reused);
        assert!(alive(pid), "another process is never signalled");
        super::super::hooks::kill_group(pid, nix::sys::signal::Signal::SIGKILL);
        other.wait().expect("reaped");
        wait_gone(pid);
    }

    #[test]
    fn a_record_guard_should_drop_its_record() {
        let root = tempfile::tempdir().expect("temp dir");
        let records = Records::new(root.path());
        let guard = RecordGuard::new(&records, "default", "run-1");
        guard.started(std::process::id() as i32);
        assert_eq!(records.all().len(), 1);
        drop(guard);
        assert!(records.all().is_empty());
    }
}

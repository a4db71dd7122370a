//! The disk state of one Instance: `releases/<version>` (staged when marked) and `current`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Written inside a release once `install` succeeded; a release without it is not staged.
pub const STAGED_MARKER: &str = ".deployctl-staged";

/// Written before a switch starts and removed once it is done: its presence at start
/// means the switch was interrupted and is to be run again.
pub const SWITCHING_MARKER: &str = ".switching";

/// The contents of the switching marker: what was being switched to, under which spec.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Switching {
    pub version: String,
    pub generation: i64,
}

/// Where one Instance lives on disk.
#[derive(Clone, Debug)]
pub struct Layout {
    /// `spec.path`, or `<root>/<namespace>/<app>`.
    pub path: PathBuf,
}

impl Layout {
    pub fn new(path: PathBuf) -> Layout {
        Layout { path }
    }
    pub fn releases(&self) -> PathBuf {
        self.path.join("releases")
    }
    pub fn release(&self, version: &str) -> PathBuf {
        self.releases().join(version)
    }
    pub fn current_link(&self) -> PathBuf {
        self.path.join("current")
    }
    /// Downloads in progress.
    pub fn tmp(&self) -> PathBuf {
        self.path.join(".tmp")
    }

    /// True when `releases/<version>` exists and carries the staged marker.
    pub fn is_staged(&self, version: &str) -> bool {
        self.release(version).join(STAGED_MARKER).is_file()
    }

    /// Marks a release staged (after `install` succeeded).
    pub fn mark_staged(&self, version: &str) -> io::Result<()> {
        fs::write(self.release(version).join(STAGED_MARKER), b"")
    }

    /// Every directory under `releases/` that is not a temp dir (staged or not).
    fn release_dirs(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(self.releases()) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect()
    }

    /// Removes half-done work: unmarked releases (an interrupted install), temp unpack
    /// dirs and downloads. Never touches the release `current` points at.
    pub fn remove_unfinished(&self) -> io::Result<Vec<String>> {
        let current = self.current_version();
        let mut removed = Vec::new();
        if let Ok(rd) = fs::read_dir(self.releases()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let temp = name.starts_with('.') && name.contains(".tmp-");
                let unmarked = !name.starts_with('.')
                    && !self.is_staged(&name)
                    && current.as_deref() != Some(&name);
                if temp || unmarked {
                    fs::remove_dir_all(e.path())?;
                    removed.push(name);
                }
            }
        }
        let _ = fs::remove_dir_all(self.tmp());
        Ok(removed)
    }

    /// The version `current` points at (`releases/<version>`), if any.
    pub fn current_version(&self) -> Option<String> {
        let target = fs::read_link(self.current_link()).ok()?;
        let name = target.file_name()?.to_str()?.to_string();
        let parent = target.parent()?;
        (parent == Path::new("releases") || parent == self.releases()).then_some(name)
    }

    /// Points `current` at `releases/<version>` atomically: a new symlink renamed over it.
    pub fn switch_current(&self, version: &str) -> io::Result<()> {
        let tmp = self
            .path
            .join(format!("current.tmp-{:08x}", rand::random::<u32>()));
        std::os::unix::fs::symlink(Path::new("releases").join(version), &tmp)?;
        if let Err(e) = fs::rename(&tmp, self.current_link()) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(())
    }

    /// `<path>/.switching`.
    pub fn switching_marker(&self) -> PathBuf {
        self.path.join(SWITCHING_MARKER)
    }

    /// Records that a switch to `version` begins (written to a temp file, then renamed).
    pub fn mark_switching(&self, version: &str, generation: i64) -> io::Result<()> {
        let body = serde_json::to_vec(&Switching {
            version: version.to_string(),
            generation,
        })
        .expect("a struct of a string and an integer serializes");
        fs::create_dir_all(&self.path)?;
        let tmp = self.path.join(format!(
            "{SWITCHING_MARKER}.tmp-{:08x}",
            rand::random::<u32>()
        ));
        fs::write(&tmp, body)?;
        if let Err(e) = fs::rename(&tmp, self.switching_marker()) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(())
    }

    /// The unfinished switch, if any. A marker that cannot be parsed still means one,
    /// of an unknown version (the empty string).
    pub fn switching(&self) -> Option<Switching> {
        let body = fs::read(self.switching_marker()).ok()?;
        Some(serde_json::from_slice(&body).unwrap_or(Switching {
            version: String::new(),
            generation: 0,
        }))
    }

    /// The switch is done.
    pub fn clear_switching(&self) -> io::Result<()> {
        match fs::remove_file(self.switching_marker()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads what one step of the agent decides on and reports: the release
    /// directories, which of them are staged, `current` and the switching marker. One
    /// directory listing and one marker check per release.
    pub fn read(&self) -> Disk {
        let mut releases: Vec<Release> = self
            .release_dirs()
            .into_iter()
            .map(|name| Release {
                staged: self.is_staged(&name),
                name,
            })
            .collect();
        releases.sort_by(|a, b| a.name.cmp(&b.name));
        Disk {
            releases,
            current: self.current_version(),
            switching: self.switching(),
        }
    }

    /// Releases to delete: not in `keep`, not current, beyond the `keep_releases` newest
    /// (by mtime). Every version in `keep` and the current one count toward the limit,
    /// staged or not yet: a release the spec asks for makes room for itself first, so that
    /// the old one is gone (and reported gone) by the time the new one is staged. Oldest
    /// first. Release times are read only when there is something to choose between.
    pub fn releases_to_clean(
        &self,
        disk: &Disk,
        keep: &[String],
        keep_releases: u32,
    ) -> Vec<String> {
        let mut wanted: Vec<&str> = keep.iter().map(String::as_str).collect();
        wanted.extend(disk.current.as_deref());
        wanted.sort_unstable();
        wanted.dedup();
        let budget = (keep_releases as usize).saturating_sub(wanted.len());
        let candidates: Vec<&str> = disk
            .releases
            .iter()
            .map(|r| r.name.as_str())
            .filter(|v| !wanted.contains(v))
            .collect();
        if candidates.len() <= budget {
            return Vec::new();
        }
        let mut by_age: Vec<(std::time::SystemTime, &str)> = candidates
            .into_iter()
            .map(|v| {
                let t = fs::metadata(self.release(v))
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (t, v)
            })
            .collect();
        by_age.sort_by(|a, b| b.cmp(a)); // newest first
        let mut out: Vec<String> = by_age
            .into_iter()
            .skip(budget)
            .map(|(_, v)| v.to_string())
            .collect();
        out.reverse();
        out
    }
}

/// One release directory as [`Layout::read`] saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub name: String,
    /// Carries the staged marker.
    pub staged: bool,
}

/// The disk state of one Instance at one moment ([`Layout::read`]): what a step decides
/// on and the status reports. Read again after anything that changes the disk.
#[derive(Clone, Debug, PartialEq)]
pub struct Disk {
    /// Release directories (staged or not; temp dirs left out), sorted by name.
    pub releases: Vec<Release>,
    /// The version `current` points at.
    pub current: Option<String>,
    /// An unfinished switch.
    pub switching: Option<Switching>,
}

impl Disk {
    /// Staged versions, sorted by name.
    pub fn staged_versions(&self) -> Vec<String> {
        self.releases
            .iter()
            .filter(|r| r.staged)
            .map(|r| r.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(l: &Layout, v: &str) {
        fs::create_dir_all(l.release(v)).unwrap();
        l.mark_staged(v).unwrap();
    }

    #[test]
    fn current_should_switch_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path().to_path_buf());
        assert_eq!(l.current_version(), None);
        staged(&l, "1.0");
        staged(&l, "2.0");
        l.switch_current("1.0").unwrap();
        assert_eq!(l.current_version().as_deref(), Some("1.0"));
        l.switch_current("2.0").unwrap();
        assert_eq!(l.current_version().as_deref(), Some("2.0"));
        let leftovers = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp-")
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn a_release_without_the_marker_should_not_count_and_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path().to_path_buf());
        staged(&l, "1.0");
        fs::create_dir_all(l.release("2.0")).unwrap();
        fs::create_dir_all(l.releases().join(".3.0.tmp-0000abcd")).unwrap();
        assert_eq!(l.read().staged_versions(), vec!["1.0"]);
        let mut removed = l.remove_unfinished().unwrap();
        removed.sort();
        assert_eq!(removed, vec![".3.0.tmp-0000abcd", "2.0"]);
        assert!(l.is_staged("1.0"));
    }

    #[test]
    fn the_switching_marker_should_round_trip_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path().join("app"));
        assert_eq!(l.switching(), None);
        l.mark_switching("2.0", 7).unwrap();
        assert_eq!(
            l.switching(),
            Some(Switching {
                version: "2.0".into(),
                generation: 7
            })
        );
        l.clear_switching().unwrap();
        assert_eq!(l.switching(), None);
        l.clear_switching().unwrap();
        // A garbled marker still says a switch was interrupted.
        fs::write(l.switching_marker(), b"{").unwrap();
        assert!(l.switching().is_some());
    }

    #[test]
    fn cleaning_should_keep_wanted_current_and_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path().to_path_buf());
        for (i, v) in ["1", "2", "3", "4", "5"].iter().enumerate() {
            staged(&l, v);
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            fs::File::open(l.release(v))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        l.switch_current("1").unwrap();
        // keep 3: "1" (current) and "5" (wanted) are protected, one more: "4".
        let disk = l.read();
        assert_eq!(disk.current.as_deref(), Some("1"));
        assert_eq!(disk.staged_versions(), vec!["1", "2", "3", "4", "5"]);
        assert_eq!(l.releases_to_clean(&disk, &["5".into()], 3), vec!["2", "3"]);
        // A wanted version not staged yet counts too: room is made for it first.
        assert_eq!(
            l.releases_to_clean(&disk, &["5".into(), "6".into()], 3),
            vec!["2", "3", "4"]
        );
        // Room for all: nothing to clean.
        assert_eq!(
            l.releases_to_clean(&disk, &["5".into()], 5),
            Vec::<String>::new()
        );
    }
}

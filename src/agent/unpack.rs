//! Unpacks an artifact into `releases/<version>`, atomically, refusing entries that escape it.

use crate::api::ArtifactFormat;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

pub type Result<T, E = UnpackError> = std::result::Result<T, E>;

/// Why an artifact could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry would land (or point) outside the release directory, or is a device.
    #[error("refusing entry {entry:?} in {archive}: {why}")]
    Unsafe {
        archive: PathBuf,
        entry: String,
        why: String,
    },
    #[error("cannot read archive {archive}: {message}")]
    Corrupt { archive: PathBuf, message: String },
    #[error("invalid file name {0:?} for a plain-file artifact")]
    BadFileName(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl UnpackError {
    pub fn reason(&self) -> &'static str {
        match self {
            UnpackError::Unsafe { .. } => "UnsafeArchive",
            UnpackError::Corrupt { .. } => "CorruptArchive",
            _ => "UnpackFailed",
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Unpacks `archive` into `<releases>/.<version>.tmp-<rand>` and renames that to
/// `<releases>/<version>` (replacing a leftover unmarked one). Returns the release dir.
/// Blocking: call from `spawn_blocking`.
pub fn unpack(
    archive: &Path,
    format: ArtifactFormat,
    file_name: &str,
    releases: &Path,
    version: &str,
) -> Result<PathBuf> {
    fs::create_dir_all(releases).map_err(io(releases))?;
    let tmp = releases.join(format!(".{version}.tmp-{:08x}", rand::random::<u32>()));
    fs::create_dir(&tmp).map_err(io(&tmp))?;
    let result = match format {
        ArtifactFormat::TarGz => {
            let f = fs::File::open(archive).map_err(io(archive))?;
            unpack_tar(archive, flate2::read::GzDecoder::new(f), &tmp)
        }
        ArtifactFormat::Tar => {
            let f = fs::File::open(archive).map_err(io(archive))?;
            unpack_tar(archive, f, &tmp)
        }
        ArtifactFormat::Zip => unpack_zip(archive, &tmp),
        ArtifactFormat::File => copy_plain(archive, file_name, &tmp),
    };
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dest = releases.join(version);
    if dest.exists() {
        fs::remove_dir_all(&dest).map_err(io(&dest))?;
    }
    if let Err(e) = fs::rename(&tmp, &dest) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(UnpackError::Io {
            path: dest,
            source: e,
        });
    }
    Ok(dest)
}

/// The entry path as relative components, or why it is unsafe.
fn safe_relative(path: &Path) -> std::result::Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains a `..` component".into()),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".into()),
        }
    }
    Ok(out)
}

/// True when `target`, read from the directory `parent` (relative to the release root),
/// stays inside the root. Lexical: every symlink already unpacked was checked the same way.
fn link_stays_inside(parent: &Path, target: &Path) -> bool {
    let mut depth: i64 = parent.components().count() as i64;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fn unpack_tar(archive: &Path, reader: impl Read, dir: &Path) -> Result<()> {
    let corrupt = |e: std::io::Error| UnpackError::Corrupt {
        archive: archive.to_path_buf(),
        message: e.to_string(),
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_overwrite(true);
    for entry in ar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path().map_err(corrupt)?.into_owned();
        let name = raw.display().to_string();
        let unsafe_entry = |why: String| UnpackError::Unsafe {
            archive: archive.to_path_buf(),
            entry: name.clone(),
            why,
        };
        let rel = safe_relative(&raw).map_err(unsafe_entry)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .ok_or_else(|| unsafe_entry("symlink without a target".into()))?;
                let parent = rel.parent().unwrap_or(Path::new(""));
                if !link_stays_inside(parent, &target) {
                    return Err(unsafe_entry(format!(
                        "symlink target {} escapes the release directory",
                        target.display()
                    )));
                }
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .ok_or_else(|| unsafe_entry("hardlink without a target".into()))?;
                safe_relative(&target).map_err(|why| {
                    unsafe_entry(format!(
                        "hardlink target {} is outside the release directory: {why}",
                        target.display()
                    ))
                })?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(unsafe_entry(
                    "device files and fifos are not allowed".into(),
                ));
            }
            _ => {}
        }
        // `unpack_in` also refuses to write through a symlink that leaves `dir`.
        let ok = entry.unpack_in(dir).map_err(|e| UnpackError::Io {
            path: dir.join(&rel),
            source: e,
        })?;
        if !ok {
            return Err(unsafe_entry(
                "it would be written outside the release directory".into(),
            ));
        }
    }
    Ok(())
}

const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;

fn unpack_zip(archive: &Path, dir: &Path) -> Result<()> {
    let corrupt = |message: String| UnpackError::Corrupt {
        archive: archive.to_path_buf(),
        message,
    };
    let f = fs::File::open(archive).map_err(io(archive))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| corrupt(e.to_string()))?;
    for i in 0..zip.len() {
        let mut file = zip.by_index(i).map_err(|e| corrupt(e.to_string()))?;
        let name = file.name().to_string();
        let unsafe_entry = |why: String| UnpackError::Unsafe {
            archive: archive.to_path_buf(),
            entry: name.clone(),
            why,
        };
        let rel = safe_relative(Path::new(&name)).map_err(unsafe_entry)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let dest = dir.join(&rel);
        let mode = file.unix_mode();
        let kind = mode.map(|m| m & S_IFMT).filter(|k| *k != 0);
        let is_dir = file.is_dir() || kind == Some(S_IFDIR);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        match kind {
            Some(S_IFLNK) => {
                let mut target = String::new();
                file.read_to_string(&mut target)
                    .map_err(|e| corrupt(format!("{name}: {e}")))?;
                let parent = rel.parent().unwrap_or(Path::new(""));
                if !link_stays_inside(parent, Path::new(&target)) {
                    return Err(unsafe_entry(format!(
                        "symlink target {target} escapes the release directory"
                    )));
                }
                std::os::unix::fs::symlink(&target, &dest).map_err(io(&dest))?;
                continue;
            }
            None | Some(S_IFREG) | Some(S_IFDIR) => {}
            Some(_) => {
                return Err(unsafe_entry(
                    "device files and fifos are not allowed".into(),
                ))
            }
        }
        if is_dir {
            fs::create_dir_all(&dest).map_err(io(&dest))?;
            continue;
        }
        // Refuse to write through a symlink unpacked earlier.
        if let Ok(real_parent) = dest.parent().unwrap_or(dir).canonicalize() {
            let real_dir = dir.canonicalize().map_err(io(dir))?;
            if !real_parent.starts_with(&real_dir) {
                return Err(unsafe_entry("it would be written through a symlink".into()));
            }
        }
        let mut out = fs::File::create(&dest).map_err(io(&dest))?;
        std::io::copy(&mut file, &mut out).map_err(|e| corrupt(format!("{name}: {e}")))?;
        if let Some(m) = mode {
            fs::set_permissions(&dest, fs::Permissions::from_mode(m & 0o777)).map_err(io(&dest))?;
        }
    }
    Ok(())
}

fn copy_plain(archive: &Path, file_name: &str, dir: &Path) -> Result<()> {
    if file_name.is_empty() || file_name == "." || file_name == ".." || file_name.contains('/') {
        return Err(UnpackError::BadFileName(file_name.to_string()));
    }
    let dest = dir.join(file_name);
    fs::copy(archive, &dest).map_err(io(&dest))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).map_err(io(&dest))?;
    Ok(())
}

/// The file name for a plain-file artifact: `fileName`, else the URL's last segment.
pub fn plain_file_name(file_name: Option<&str>, url: &str) -> String {
    match file_name {
        Some(n) => n.to_string(),
        None => url
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Builds a tar with raw headers so that unsafe paths can be written at all.
    fn tar_with(entries: &[(&str, tar::EntryType, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            // Write the name bytes directly: `set_path` refuses `..` and absolute paths.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                let ln = &mut h.as_old_mut().linkname;
                ln[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack_bytes(bytes: &[u8], format: ArtifactFormat) -> (tempfile::TempDir, Result<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("artifact");
        fs::write(&archive, bytes).unwrap();
        let res = unpack(
            &archive,
            format,
            "app.bin",
            &dir.path().join("releases"),
            "1.0",
        );
        (dir, res)
    }

    #[test]
    fn a_tar_gz_should_unpack_into_the_version_dir_with_nothing_left_over() {
        let tar = tar_with(&[
            ("bin/", tar::EntryType::Directory, None, b""),
            ("bin/run", tar::EntryType::Regular, None, b"#!/bin/sh\n"),
            ("link", tar::EntryType::Symlink, Some("bin/run"), b""),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let (dir, res) = unpack_bytes(&gz.finish().unwrap(), ArtifactFormat::TarGz);
        let rel = res.unwrap();
        assert_eq!(rel, dir.path().join("releases/1.0"));
        assert_eq!(fs::read(rel.join("link")).unwrap(), b"#!/bin/sh\n");
        let names: Vec<_> = fs::read_dir(dir.path().join("releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["1.0"]);
    }

    #[test]
    fn unpack_should_refuse_every_escape_and_name_the_entry() {
        use tar::EntryType::*;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("/etc/evil", tar_with(&[("/etc/evil", Regular, None, b"x")])),
            ("../evil", tar_with(&[("../evil", Regular, None, b"x")])),
            (
                "a/../../evil",
                tar_with(&[("a/../../evil", Regular, None, b"x")]),
            ),
            ("up", tar_with(&[("up", Symlink, Some("../.."), b"")])),
            ("abs", tar_with(&[("abs", Symlink, Some("/etc"), b"")])),
            ("d/up", tar_with(&[("d/up", Symlink, Some("../../x"), b"")])),
            (
                "hard",
                tar_with(&[("hard", Link, Some("/etc/passwd"), b"")]),
            ),
            (
                "hard2",
                tar_with(&[("hard2", Link, Some("../outside"), b"")]),
            ),
            ("dev", tar_with(&[("dev", Char, None, b"")])),
            ("blk", tar_with(&[("blk", Block, None, b"")])),
        ];
        for (entry, bytes) in cases {
            let (dir, res) = unpack_bytes(&bytes, ArtifactFormat::Tar);
            let err = res
                .err()
                .unwrap_or_else(|| panic!("{entry} must be refused"));
            assert!(err.to_string().contains(entry), "{entry}: {err}");
            assert_eq!(err.reason(), "UnsafeArchive", "{entry}: {err}");
            let left = fs::read_dir(dir.path().join("releases")).unwrap().count();
            assert_eq!(left, 0, "{entry}: nothing may be left in releases/");
        }
    }

    #[test]
    fn symlinks_that_stay_inside_should_be_kept() {
        use tar::EntryType::*;
        let tar = tar_with(&[
            ("d/", Directory, None, b""),
            ("d/up", Symlink, Some("../f"), b""),
            ("f", Regular, None, b"ok"),
        ]);
        let (_dir, res) = unpack_bytes(&tar, ArtifactFormat::Tar);
        assert_eq!(fs::read(res.unwrap().join("d/up")).unwrap(), b"ok");
    }

    fn zip_with(entries: &[(&str, Option<u32>, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, mode, data) in entries {
            let mut opts = zip::write::SimpleFileOptions::default();
            if let Some(m) = mode {
                opts = opts.unix_permissions(*m);
            }
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn a_zip_should_unpack_and_refuse_escapes() {
        let ok = zip_with(&[("a/run.sh", Some(0o755), b"echo hi")]);
        let (_dir, res) = unpack_bytes(&ok, ArtifactFormat::Zip);
        let run = res.unwrap().join("a/run.sh");
        assert_eq!(fs::read(&run).unwrap(), b"echo hi");
        assert_eq!(
            fs::metadata(&run).unwrap().permissions().mode() & 0o777,
            0o755
        );

        let bad = zip_with(&[("../evil", None, b"x")]);
        let (_dir, res) = unpack_bytes(&bad, ArtifactFormat::Zip);
        assert!(res.err().unwrap().to_string().contains("../evil"));
    }

    #[test]
    fn a_plain_file_should_be_copied_with_mode_755() {
        let (_dir, res) = unpack_bytes(b"binary", ArtifactFormat::File);
        let f = res.unwrap().join("app.bin");
        assert_eq!(fs::read(&f).unwrap(), b"binary");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            plain_file_name(None, "https://x/y/tool-1.0?x=1"),
            "tool-1.0"
        );
    }
}

//! Unpacks an artifact into `releases/<version>`, atomically, beneath a directory handle
//! that no entry can lead out of.
//!
//! Every filesystem operation of an unpack goes through one [`cap_std::fs::Dir`] opened on
//! the release's temporary directory (openat2 `RESOLVE_BENEATH` on Linux): a path that a
//! symlink would send outside fails in the kernel, whatever the order of the entries, so
//! nothing is created or written outside. The archive readers ([`unpack_tar`],
//! [`unpack_zip`], [`copy_plain`]) only parse; [`Sink`] is where entries touch the disk,
//! counted against [`UnpackOptions`]' limits. After the last entry, [`links::check`]
//! follows every symlink left in the tree and refuses the archive when one leads out.

mod links;
#[cfg(test)]
mod tests;

use crate::api::{Artifact, ArtifactFormat};
use cap_std::fs::{Dir, OpenOptions};
use std::cell::Cell;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

pub type Result<T, E = UnpackError> = std::result::Result<T, E>;

/// Default cap on the bytes an unpack writes: far above any real release, low enough
/// that a bomb stops before it fills a machine's disk.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 8 << 30;
/// Default cap on entries: twice a large `node_modules` tree. Each costs a little memory
/// in the symlink check, so this also bounds that.
pub const DEFAULT_MAX_ENTRIES: u64 = 200_000;
/// What the tar parser may read between two entries' data: headers, GNU long names, PAX
/// records, sparse maps, zero blocks and skipped data. The tar crate holds long names and
/// PAX records in memory, so this bounds memory as well as time.
const MAX_TAR_METADATA: u64 = 1 << 20;
/// Longest symlink target accepted (Linux's PATH_MAX).
const MAX_LINK_TARGET: u64 = 4096;

/// The limits and choices an unpack applies, from `spec.artifact`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackOptions {
    pub max_unpacked_bytes: u64,
    pub max_entries: u64,
    /// Keep setuid, setgid and sticky bits from the archive. Off: an artifact server
    /// must not be able to plant a setuid-root program on the machine.
    pub preserve_setid: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            preserve_setid: false,
        }
    }
}

impl UnpackOptions {
    /// The artifact's own limits, the defaults where it sets none.
    pub fn for_artifact(a: &Artifact) -> UnpackOptions {
        UnpackOptions {
            max_unpacked_bytes: a.max_unpacked_bytes.unwrap_or(DEFAULT_MAX_UNPACKED_BYTES),
            max_entries: a.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES),
            preserve_setid: a.preserve_setid,
        }
    }

    /// The most a download may be: the byte limit and an eighth, for what an archive adds
    /// to its content (tar headers and padding, zip records, incompressible gzip).
    pub fn max_download_bytes(&self) -> u64 {
        self.max_unpacked_bytes
            .saturating_add(self.max_unpacked_bytes / 8)
            .saturating_add(1 << 20)
    }

    /// The permission bits kept from an archive's mode.
    fn mode(&self, mode: u32) -> u32 {
        if self.preserve_setid {
            mode & 0o7777
        } else {
            mode & 0o777
        }
    }
}

/// A limit an archive went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    UnpackedBytes(u64),
    Entries(u64),
    TarMetadata(u64),
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::UnpackedBytes(n) => write!(
                f,
                "the limit of {n} unpacked bytes (spec.artifact.maxUnpackedBytes)"
            ),
            Limit::Entries(n) => write!(f, "the limit of {n} entries (spec.artifact.maxEntries)"),
            Limit::TarMetadata(n) => write!(
                f,
                "the limit of {n} bytes of tar headers and skipped data before one entry"
            ),
        }
    }
}

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
    #[error("refusing entry {entry:?} in {archive}: it goes past {limit}")]
    TooLarge {
        archive: PathBuf,
        entry: String,
        limit: Limit,
    },
    #[error("not enough free space in {dir} to unpack {archive}: it needs at least {needed} bytes and {available} are free")]
    NotEnoughSpace {
        archive: PathBuf,
        dir: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("no space left on {dir} while writing entry {entry:?} of {archive}: {source}")]
    NoSpace {
        archive: PathBuf,
        dir: PathBuf,
        entry: String,
        source: io::Error,
    },
    #[error("cannot write entry {entry:?} of {archive}: {source}")]
    Entry {
        archive: PathBuf,
        entry: String,
        source: io::Error,
    },
    #[error("invalid file name {0:?} for a plain-file artifact")]
    BadFileName(String),
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl UnpackError {
    pub fn reason(&self) -> &'static str {
        match self {
            UnpackError::Unsafe { .. } => "UnsafeArchive",
            UnpackError::Corrupt { .. } => "CorruptArchive",
            UnpackError::TooLarge { .. } => "ArtifactTooLarge",
            UnpackError::NotEnoughSpace { .. } | UnpackError::NoSpace { .. } => "NoSpaceLeft",
            _ => "UnpackFailed",
        }
    }
}

fn io(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// True for the refusal of a path that a symlink (or `..`) led outside the directory
/// handle: EXDEV from openat2, or cap-std's own error where it resolves by hand.
fn is_escape(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EXDEV)
        || (e.kind() == io::ErrorKind::PermissionDenied
            && e.to_string().contains("outside of the filesystem"))
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Unpacks `archive` into `<releases>/.<version>.tmp-<rand>` and renames that to
/// `<releases>/<version>` (replacing a leftover unmarked one). Returns the release dir.
/// A refused archive leaves nothing behind. Blocking: call from `spawn_blocking`.
pub fn unpack(
    archive: &Path,
    format: ArtifactFormat,
    file_name: &str,
    releases: &Path,
    version: &str,
    opts: &UnpackOptions,
) -> Result<PathBuf> {
    fs::create_dir_all(releases).map_err(io(releases))?;
    let tmp = releases.join(format!(".{version}.tmp-{:08x}", rand::random::<u32>()));
    fs::create_dir(&tmp).map_err(io(&tmp))?;
    if let Err(e) = unpack_into(archive, format, file_name, &tmp, opts) {
        // std's remove_dir_all never follows a symlink out of the tree it removes.
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dest = releases.join(version);
    if fs::symlink_metadata(&dest).is_ok() {
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

/// Checks the free space, unpacks by format, then checks the links left in the tree.
fn unpack_into(
    archive: &Path,
    format: ArtifactFormat,
    file_name: &str,
    tmp: &Path,
    opts: &UnpackOptions,
) -> Result<()> {
    let root = Dir::open_ambient_dir(tmp, cap_std::ambient_authority()).map_err(io(tmp))?;
    let mut sink = Sink::new(archive, root, tmp, *opts);
    let archive_size = fs::metadata(archive).map_err(io(archive))?.len();
    match format {
        ArtifactFormat::TarGz => {
            // Compressed bytes are the least a tar.gz can unpack to.
            sink.check_free_space(archive_size)?;
            let f = fs::File::open(archive).map_err(io(archive))?;
            unpack_tar(flate2::read::MultiGzDecoder::new(f), &mut sink)?;
        }
        ArtifactFormat::Tar => {
            sink.check_free_space(archive_size)?;
            let f = fs::File::open(archive).map_err(io(archive))?;
            unpack_tar(io::BufReader::new(f), &mut sink)?;
        }
        ArtifactFormat::Zip => unpack_zip(&mut sink)?,
        ArtifactFormat::File => {
            sink.check_free_space(archive_size)?;
            copy_plain(file_name, &mut sink)?;
        }
    }
    sink.finish()
}

/// Where entries touch the disk: beneath `root`, counted against the limits.
struct Sink<'a> {
    archive: &'a Path,
    /// The release's temporary directory; every operation resolves beneath it.
    root: Dir,
    /// `root`'s path, for messages only.
    tmp: &'a Path,
    opts: UnpackOptions,
    written: u64,
    entries: u64,
    /// Directory modes, applied at the end so that a read-only directory does not stop
    /// the entries beneath it.
    dir_modes: Vec<(PathBuf, u32)>,
    buf: Vec<u8>,
}

impl<'a> Sink<'a> {
    fn new(archive: &'a Path, root: Dir, tmp: &'a Path, opts: UnpackOptions) -> Sink<'a> {
        Sink {
            archive,
            root,
            tmp,
            opts,
            written: 0,
            entries: 0,
            dir_modes: Vec::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    fn unsafe_entry(&self, entry: &str, why: impl Into<String>) -> UnpackError {
        UnpackError::Unsafe {
            archive: self.archive.to_path_buf(),
            entry: entry.to_string(),
            why: why.into(),
        }
    }

    fn corrupt(&self, message: String) -> UnpackError {
        UnpackError::Corrupt {
            archive: self.archive.to_path_buf(),
            message,
        }
    }

    fn too_large(&self, entry: &str, limit: Limit) -> UnpackError {
        UnpackError::TooLarge {
            archive: self.archive.to_path_buf(),
            entry: entry.to_string(),
            limit,
        }
    }

    /// A failed filesystem operation on `entry`, named for what it was.
    fn fs_error(&self, entry: &str, e: io::Error) -> UnpackError {
        if is_escape(&e) {
            self.unsafe_entry(
                entry,
                "it would be written through a symlink that leads outside the release directory",
            )
        } else if is_no_space(&e) {
            UnpackError::NoSpace {
                archive: self.archive.to_path_buf(),
                dir: self.tmp.to_path_buf(),
                entry: entry.to_string(),
                source: e,
            }
        } else {
            UnpackError::Entry {
                archive: self.archive.to_path_buf(),
                entry: entry.to_string(),
                source: e,
            }
        }
    }

    /// Refuses to start when the file system cannot hold `needed` bytes (capped at the
    /// byte limit, which stops the unpack anyway).
    fn check_free_space(&self, needed: u64) -> Result<()> {
        let needed = needed.min(self.opts.max_unpacked_bytes);
        let st = nix::sys::statvfs::statvfs(self.tmp).map_err(|e| UnpackError::Io {
            path: self.tmp.to_path_buf(),
            source: e.into(),
        })?;
        #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
        let available = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
        if needed > available {
            return Err(UnpackError::NotEnoughSpace {
                archive: self.archive.to_path_buf(),
                dir: self.tmp.to_path_buf(),
                needed,
                available,
            });
        }
        Ok(())
    }

    /// Counts one more entry against the entry limit.
    fn count_entry(&mut self, entry: &str) -> Result<()> {
        self.entries += 1;
        if self.entries > self.opts.max_entries {
            return Err(self.too_large(entry, Limit::Entries(self.opts.max_entries)));
        }
        Ok(())
    }

    fn create_parent(&self, rel: &Path, entry: &str) -> Result<()> {
        let Some(p) = rel.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(());
        };
        self.root.create_dir_all(p).map_err(|e| {
            // A symlink in the way reports "exists" even when it leads out: follow it
            // (beneath the root) to say which.
            let e = match self.root.metadata(p) {
                Err(followed) if is_escape(&followed) => followed,
                _ => e,
            };
            self.fs_error(entry, e)
        })
    }

    /// Removes what a previous entry left at `rel` (a later entry wins), except a
    /// directory, which only another directory entry may reuse.
    fn clear(&self, rel: &Path, entry: &str) -> Result<()> {
        match self.root.symlink_metadata(rel) {
            Ok(m) if m.is_dir() => Err(self.fs_error(
                entry,
                io::Error::new(io::ErrorKind::AlreadyExists, "a directory is already there"),
            )),
            Ok(_) => self
                .root
                .remove_file(rel)
                .map_err(|e| self.fs_error(entry, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.fs_error(entry, e)),
        }
    }

    fn dir(&mut self, rel: &Path, entry: &str, mode: Option<u32>) -> Result<()> {
        self.root
            .create_dir_all(rel)
            .map_err(|e| self.fs_error(entry, e))?;
        if let Some(m) = mode {
            self.dir_modes.push((rel.to_path_buf(), self.opts.mode(m)));
        }
        Ok(())
    }

    /// Writes a regular file from `data`, counting every byte against the byte limit
    /// (what a header says about the size is not trusted).
    fn file(
        &mut self,
        rel: &Path,
        entry: &str,
        data: &mut dyn Read,
        mode: u32,
        mtime: Option<SystemTime>,
    ) -> Result<()> {
        self.create_parent(rel, entry)?;
        self.clear(rel, entry)?;
        let mut out = self
            .root
            .open_with(rel, OpenOptions::new().write(true).create_new(true))
            .map_err(|e| self.fs_error(entry, e))?
            .into_std();
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.corrupt(format!("entry {entry:?}: {e}"))),
            };
            if self.written + n as u64 > self.opts.max_unpacked_bytes {
                return Err(
                    self.too_large(entry, Limit::UnpackedBytes(self.opts.max_unpacked_bytes))
                );
            }
            out.write_all(&self.buf[..n])
                .map_err(|e| self.fs_error(entry, e))?;
            self.written += n as u64;
        }
        out.set_permissions(fs::Permissions::from_mode(self.opts.mode(mode)))
            .map_err(|e| self.fs_error(entry, e))?;
        if let Some(t) = mtime {
            out.set_modified(t).map_err(|e| self.fs_error(entry, e))?;
        }
        Ok(())
    }

    /// Creates a symlink. Its text is checked here on its own; [`links::check`] later
    /// follows it through the whole tree.
    fn symlink(&mut self, rel: &Path, entry: &str, target: &Path) -> Result<()> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if !link_stays_inside(parent, target) {
            return Err(self.unsafe_entry(
                entry,
                format!(
                    "symlink target {} escapes the release directory",
                    target.display()
                ),
            ));
        }
        self.written += target.as_os_str().len() as u64;
        if self.written > self.opts.max_unpacked_bytes {
            return Err(self.too_large(entry, Limit::UnpackedBytes(self.opts.max_unpacked_bytes)));
        }
        self.create_parent(rel, entry)?;
        self.clear(rel, entry)?;
        self.root
            .symlink(target, rel)
            .map_err(|e| self.fs_error(entry, e))
    }

    /// Creates a hardlink to a regular file already unpacked (`target` is relative to the
    /// release root, as tar stores it).
    fn hardlink(&mut self, rel: &Path, entry: &str, target: &Path) -> Result<()> {
        let target = safe_relative(target).map_err(|why| {
            self.unsafe_entry(
                entry,
                format!(
                    "hardlink target {} is outside the release directory: {why}",
                    target.display()
                ),
            )
        })?;
        match self.root.symlink_metadata(&target) {
            Ok(m) if m.is_file() => {}
            Err(e) if is_escape(&e) => return Err(self.fs_error(entry, e)),
            _ => {
                return Err(self.unsafe_entry(
                    entry,
                    format!(
                        "hardlink target {} is not a regular file unpacked before it",
                        target.display()
                    ),
                ))
            }
        }
        self.create_parent(rel, entry)?;
        self.clear(rel, entry)?;
        self.root
            .hard_link(&target, &self.root, rel)
            .map_err(|e| self.fs_error(entry, e))
    }

    /// Refuses a tree with a symlink that leads out, then applies directory modes.
    fn finish(self) -> Result<()> {
        links::check(&self.root).map_err(|refusal| match refusal {
            links::Refusal::Link { link, why } => self.unsafe_entry(&link, why),
            links::Refusal::Io { path, source } => self.fs_error(&path, source),
        })?;
        for (rel, mode) in self.dir_modes.iter().rev() {
            let entry = rel.display().to_string();
            match self.root.symlink_metadata(rel) {
                Ok(m) if m.is_dir() => self
                    .root
                    .set_permissions(
                        rel,
                        cap_std::fs::Permissions::from_std(fs::Permissions::from_mode(*mode)),
                    )
                    .map_err(|e| self.fs_error(&entry, e))?,
                // Replaced by a later entry: the later one wins.
                _ => continue,
            }
        }
        Ok(())
    }
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
/// stays inside the root when read as text. Only a first check: a chain of links each
/// harmless on its own is caught by [`links::check`].
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

/// Lets the tar parser read at most `MAX_TAR_METADATA` bytes between two entries' data
/// (`budget` is `Some(left)` then, `None` while an entry's data is read).
struct Metered<R> {
    inner: R,
    budget: Rc<Cell<Option<u64>>>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.budget.get() else {
            return self.inner.read(buf);
        };
        if left == 0 {
            return Err(io::Error::other("too much tar metadata before one entry"));
        }
        let cap = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..cap])?;
        self.budget.set(Some(left - n as u64));
        Ok(n)
    }
}

/// Reads a tar stream (every gzip member of it, for tar.gz) into the sink. Zero blocks
/// between archives are skipped, so concatenated archives unpack whole.
fn unpack_tar(reader: impl Read, sink: &mut Sink) -> Result<()> {
    let budget = Rc::new(Cell::new(None));
    let mut ar = tar::Archive::new(Metered {
        inner: reader,
        budget: budget.clone(),
    });
    ar.set_ignore_zeros(true);
    let mut entries = ar.entries().map_err(|e| sink.corrupt(e.to_string()))?;
    let mut previous = String::new();
    loop {
        budget.set(Some(MAX_TAR_METADATA));
        let next = entries.next();
        let exhausted = budget.get() == Some(0);
        budget.set(None);
        let mut entry = match next {
            None => break,
            Some(Ok(e)) => e,
            Some(Err(_)) if exhausted => {
                return Err(sink.too_large(
                    &format!("(the one after {previous:?})"),
                    Limit::TarMetadata(MAX_TAR_METADATA),
                ))
            }
            Some(Err(e)) => {
                let at = match previous.as_str() {
                    "" => String::new(),
                    p => format!(" after entry {p:?}"),
                };
                return Err(sink.corrupt(format!("{e}{at}")));
            }
        };
        let raw = entry
            .path()
            .map_err(|e| sink.corrupt(e.to_string()))?
            .into_owned();
        let name = raw.display().to_string();
        tar_entry(&mut entry, &raw, &name, sink)?;
        previous = name;
    }
    Ok(())
}

/// One tar entry into the sink, by its type.
fn tar_entry<R: Read>(
    entry: &mut tar::Entry<R>,
    raw: &Path,
    name: &str,
    sink: &mut Sink,
) -> Result<()> {
    sink.count_entry(name)?;
    let rel = safe_relative(raw).map_err(|why| sink.unsafe_entry(name, why))?;
    let header = entry.header();
    let kind = header.entry_type();
    let mode = header.mode().unwrap_or(0o644);
    if kind.is_pax_global_extensions() || rel.as_os_str().is_empty() {
        return Ok(());
    }
    let link_target = |entry: &tar::Entry<R>, what: &str| -> Result<PathBuf> {
        let target = entry
            .link_name()
            .map_err(|e| sink.corrupt(format!("entry {name:?}: {e}")))?
            .ok_or_else(|| sink.unsafe_entry(name, format!("{what} without a target")))?;
        if target.as_os_str().len() as u64 > MAX_LINK_TARGET {
            return Err(sink.unsafe_entry(
                name,
                format!("{what} target is longer than {MAX_LINK_TARGET} bytes"),
            ));
        }
        Ok(target.into_owned())
    };
    match kind {
        tar::EntryType::Directory => sink.dir(&rel, name, Some(mode)),
        tar::EntryType::Symlink => {
            let target = link_target(entry, "symlink")?;
            sink.symlink(&rel, name, &target)
        }
        tar::EntryType::Link => {
            let target = link_target(entry, "hardlink")?;
            sink.hardlink(&rel, name, &target)
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            Err(sink.unsafe_entry(name, "device files and fifos are not allowed"))
        }
        // Regular, contiguous, sparse, and (like tar itself) any type it does not know.
        _ => {
            let mtime = header
                .mtime()
                .ok()
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
            sink.file(&rel, name, entry, mode, mtime)
        }
    }
}

const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;

/// Reads a zip into the sink: entry count and declared size checked first.
fn unpack_zip(sink: &mut Sink) -> Result<()> {
    let archive = sink.archive;
    let f = fs::File::open(archive).map_err(io(archive))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| sink.corrupt(e.to_string()))?;
    let declared = zip_declared_size(&mut zip, sink)?;
    sink.check_free_space(declared)?;
    for i in 0..zip.len() {
        let mut file = zip.by_index(i).map_err(|e| sink.corrupt(e.to_string()))?;
        let name = file.name().to_string();
        sink.count_entry(&name)?;
        let rel = safe_relative(Path::new(&name)).map_err(|why| sink.unsafe_entry(&name, why))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let mode = file.unix_mode();
        let kind = mode.map(|m| m & S_IFMT).filter(|k| *k != 0);
        match kind {
            Some(S_IFLNK) => {
                let mut target = Vec::new();
                (&mut file)
                    .take(MAX_LINK_TARGET + 1)
                    .read_to_end(&mut target)
                    .map_err(|e| sink.corrupt(format!("entry {name:?}: {e}")))?;
                if target.len() as u64 > MAX_LINK_TARGET {
                    return Err(sink.unsafe_entry(
                        &name,
                        format!("symlink target is longer than {MAX_LINK_TARGET} bytes"),
                    ));
                }
                let target = String::from_utf8_lossy(&target).into_owned();
                sink.symlink(&rel, &name, Path::new(&target))?;
            }
            None | Some(S_IFREG) | Some(S_IFDIR) => {
                if file.is_dir() || kind == Some(S_IFDIR) {
                    sink.dir(&rel, &name, mode)?;
                } else {
                    sink.file(&rel, &name, &mut file, mode.unwrap_or(0o644), None)?;
                }
            }
            Some(_) => {
                return Err(sink.unsafe_entry(&name, "device files and fifos are not allowed"))
            }
        }
    }
    Ok(())
}

/// The zip's declared unpacked size, after refusing one with too many entries (the
/// entry named is the first past the limit).
fn zip_declared_size(zip: &mut zip::ZipArchive<fs::File>, sink: &Sink) -> Result<u64> {
    let max = sink.opts.max_entries;
    if zip.len() as u64 > max {
        let i = usize::try_from(max).expect("max < zip.len(), a usize");
        let name = zip
            .by_index_raw(i)
            .map(|f| f.name().to_string())
            .unwrap_or_else(|_| format!("#{i}"));
        return Err(sink.too_large(&name, Limit::Entries(max)));
    }
    let mut total = 0u64;
    for i in 0..zip.len() {
        let f = zip
            .by_index_raw(i)
            .map_err(|e| sink.corrupt(e.to_string()))?;
        total = total.saturating_add(f.size());
    }
    Ok(total)
}

fn copy_plain(file_name: &str, sink: &mut Sink) -> Result<()> {
    if file_name.is_empty() || file_name == "." || file_name == ".." || file_name.contains('/') {
        return Err(UnpackError::BadFileName(file_name.to_string()));
    }
    let archive = sink.archive;
    let mut f = fs::File::open(archive).map_err(io(archive))?;
    sink.count_entry(file_name)?;
    sink.file(Path::new(file_name), file_name, &mut f, 0o755, None)
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

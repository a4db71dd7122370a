//! `deployctl sync`: keeps the store equal to the manifests of a Git repository (GitOps).
//!
//! One pass: fetch the repository into a cache (the `git` command line, never a shell),
//! resolve the ref, check the commit out, load every manifest with `apply`'s loader (all
//! or nothing), create or update each object (compare-and-swap, labelled and annotated
//! with the sync name, commit and file), restore drifted objects (an Event `Drift`),
//! prune what left the repository (`--prune`), and record the outcome in the `Sync`
//! object's status.

use super::apply::{merge, Outcome};
use super::diff::{self, yaml};
use super::manifest::{self, LoadError, Manifest};
use super::output::{escape, escape_lines, short_commit};
use super::{connect, duration_in, reference, GlobalArgs};
use crate::api::validation::check_name;
use crate::api::{
    Application, GitSync, GitSyncSpec, KindName, Machine, Notifier, Object, ObjectReference,
    Rollout, ANNOTATION_SYNC_COMMIT, ANNOTATION_SYNC_HASH, ANNOTATION_SYNC_PATH, LABEL_SYNC,
};
use crate::store::{self, Client, EventRecorder, Scope};
use clap::Args;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

pub const EXAMPLES: &str = "\
Examples:
  # Apply the manifests/ directory of the main branch once
  deployctl sync --repo https://git.example.com/ops/fleet.git --ref main \\
    --path manifests --once

  # Follow the repository every 30s, deleting objects removed from it
  deployctl sync --repo https://git.example.com/ops/fleet.git \\
    --path manifests --prune

  # The same as a service whose logs go to a log shipper: one JSON object a line
  deployctl -v --log-format json sync \\
    --repo https://git.example.com/ops/fleet.git --path manifests

  # What would the next sync change? (exit 1: differences, 0: none, 2: error)
  deployctl sync --repo /srv/fleet --path manifests --prune --dry-run";

/// Create-or-update (or delete) attempts before giving up on an object that keeps changing.
const RETRIES: usize = 16;
/// How long one git command (a fetch over a slow network) may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(300);
/// The shortest `--interval`: a fetch a second is already a busy Git server's load.
const INTERVAL_MIN: Duration = Duration::from_secs(1);
/// The longest `--interval`: past a day, a sync no longer restores drift in useful time.
const INTERVAL_MAX: Duration = Duration::from_secs(86_400);

#[derive(Args, Debug, Clone)]
pub struct SyncArgs {
    /// The repository: any URL `git fetch` understands, or a local path.
    #[arg(long, value_name = "URL|PATH")]
    pub repo: String,
    /// The branch, tag or commit to follow (default: the repository's default branch).
    #[arg(long = "ref", value_name = "BRANCH|TAG|SHA")]
    pub git_ref: Option<String>,
    /// The directory of the repository holding the manifests.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub path: String,
    /// How often to fetch and sync again, within 1s..=1d.
    #[arg(long, default_value = "30s", value_parser = duration_in(INTERVAL_MIN, INTERVAL_MAX), value_name = "DURATION")]
    pub interval: Duration,
    /// Delete objects this sync created that have left the repository.
    #[arg(long)]
    pub prune: bool,
    /// Sync once and exit: 0 when applied, 1 on a bad commit or a store error.
    #[arg(long)]
    pub once: bool,
    /// Print what would change as a unified diff (and what would be pruned); write
    /// nothing. Exits 1 when there are differences, 0 when none, 2 on error.
    #[arg(long)]
    pub dry_run: bool,
    /// The name of this sync source: the `deployctl.dev/sync` label of its objects and
    /// the name of its Sync object (default: derived from the repository's last path
    /// segment).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Where clones are kept (default: $XDG_CACHE_HOME/deployctl/sync, or
    /// ~/.cache/deployctl/sync).
    #[arg(long, env = "DEPLOYCTL_SYNC_CACHE", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// What can go wrong in one sync pass.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("git {args}: {message}")]
    Git { args: String, message: String },
    #[error("cannot run git: {0} (install it, e.g. `apt-get install git`)")]
    NoGit(String),
    #[error("cache directory {path}: {message}")]
    Cache { path: String, message: String },
    #[error("ref {0:?} not found in {1} (not a branch, a tag or a fetched commit)")]
    RefNotFound(String, String),
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The commit has invalid manifests; nothing from it was applied.
    #[error("commit {}: {}", short_commit(.commit), .errors.join("\n"))]
    BadCommit { commit: String, errors: Vec<String> },
    #[error("commit {}: {reference} is managed by sync {owner:?}, not {name:?}; nothing applied", short_commit(.commit))]
    Owned {
        commit: String,
        reference: String,
        owner: String,
        name: String,
    },
    #[error("commit {}: {reference}: {source}", short_commit(.commit))]
    Store {
        commit: String,
        reference: String,
        source: store::Error,
    },
    #[error("sync status: {0}")]
    Status(store::Error),
}

impl SyncError {
    /// The commit the error is about, when the pass got that far.
    fn commit(&self) -> Option<&str> {
        match self {
            SyncError::BadCommit { commit, .. }
            | SyncError::Owned { commit, .. }
            | SyncError::Store { commit, .. } => Some(commit),
            _ => None,
        }
    }

    /// A word for logs that must not repeat the message.
    fn kind(&self) -> &'static str {
        match self {
            SyncError::BadCommit { .. } => "invalid manifests",
            SyncError::Owned { .. } => "owned by another sync",
            _ => "error",
        }
    }
}

type Result<T, E = SyncError> = std::result::Result<T, E>;

/// A DNS-1123 label from the last path segment of a repository URL or path.
pub fn default_name(repo: &str) -> String {
    let trimmed = repo.trim_end_matches('/');
    let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
    let last = last.strip_suffix(".git").unwrap_or(last);
    let mut name = String::new();
    for c in last.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let name: String = name.trim_matches('-').chars().take(63).collect();
    let name = name.trim_end_matches('-').to_string();
    if name.is_empty() {
        "repo".into()
    } else {
        name
    }
}

/// A clone of one repository in the cache: a bare git dir and a separate work tree, so
/// that walking the manifests never enters `.git`.
pub struct Repo {
    /// What `git fetch` is given: the URL, or the absolute local path.
    url: String,
    git_dir: PathBuf,
    work_tree: PathBuf,
    /// Held (an exclusive `flock`) for as long as this process uses the clone: two syncs
    /// of the same repository on one host would check out over each other.
    _lock: std::fs::File,
}

impl Repo {
    /// Prepares `<cache>/<hash of url>/{git,tree}`, creating the bare repository once.
    pub async fn open(repo: &str, cache: Option<&Path>) -> Result<Repo> {
        if repo.is_empty() || repo.starts_with('-') {
            return Err(SyncError::Invalid {
                field: "--repo",
                message: format!("{repo:?} is not a repository URL or path"),
            });
        }
        let local = Path::new(repo);
        let url = if local.exists() {
            std::fs::canonicalize(local)
                .map_err(|e| SyncError::Invalid {
                    field: "--repo",
                    message: format!("{repo}: {e}"),
                })?
                .display()
                .to_string()
        } else {
            repo.to_string()
        };
        let cache = match cache {
            Some(c) => c.to_path_buf(),
            None => default_cache_dir()?,
        };
        let hash = hex::encode(Sha256::digest(url.as_bytes()));
        let root = cache.join(&hash[..16]);
        let cache_err = |path: &Path, e: std::io::Error| SyncError::Cache {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let work_tree = root.join("tree");
        std::fs::create_dir_all(&work_tree).map_err(|e| cache_err(&work_tree, e))?;
        let lock_path = root.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| cache_err(&lock_path, e))?;
        lock_exclusive(&lock).map_err(|e| SyncError::Cache {
            path: root.display().to_string(),
            message: if e.kind() == std::io::ErrorKind::WouldBlock {
                "in use by another deployctl sync of the same repository (give each its own --cache-dir)".into()
            } else {
                format!("cannot lock: {e}")
            },
        })?;
        let r = Repo {
            url,
            git_dir: root.join("git"),
            work_tree,
            _lock: lock,
        };
        if !r.git_dir.join("HEAD").exists() {
            let dir = r.git_dir.display().to_string();
            git(None, &["init", "--quiet", "--bare", &dir]).await?;
        }
        Ok(r)
    }

    async fn git(&self, args: &[&str]) -> Result<String> {
        git(Some(self), args).await
    }

    /// Fetches branches and tags (and HEAD, to know the default branch).
    pub async fn fetch(&self, git_ref: Option<&str>) -> Result<()> {
        let mut args = vec![
            "fetch",
            "--quiet",
            "--force",
            "--prune",
            "--no-tags",
            "--end-of-options",
            &self.url,
            "+refs/heads/*:refs/remotes/origin/*",
            "+refs/tags/*:refs/tags/*",
        ];
        if git_ref.is_none() {
            args.push("+HEAD:refs/deployctl/HEAD");
        }
        self.git(&args).await.map(|_| ())
    }

    /// The commit a ref names: a branch, then a tag, then a commit id (fetched by id
    /// when the remote allows it).
    pub async fn resolve(&self, git_ref: Option<&str>) -> Result<String> {
        let Some(r) = git_ref else {
            return self
                .rev_parse("refs/deployctl/HEAD")
                .await
                .ok_or_else(|| SyncError::RefNotFound("HEAD".into(), self.url.clone()));
        };
        if r.is_empty() || r.starts_with('-') || r.contains("..") {
            return Err(SyncError::Invalid {
                field: "--ref",
                message: format!("{r:?} is not a branch, tag or commit"),
            });
        }
        for candidate in [format!("refs/remotes/origin/{r}"), format!("refs/tags/{r}")] {
            if let Some(sha) = self.rev_parse(&candidate).await {
                return Ok(sha);
            }
        }
        if r.len() >= 4 && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Some(sha) = self.rev_parse(r).await {
                return Ok(sha);
            }
            // Not reachable from a branch or tag: ask for it by id.
            if self
                .git(&["fetch", "--quiet", "--end-of-options", &self.url, r])
                .await
                .is_ok()
            {
                if let Some(sha) = self.rev_parse(r).await {
                    return Ok(sha);
                }
            }
        }
        Err(SyncError::RefNotFound(r.to_string(), self.url.clone()))
    }

    async fn rev_parse(&self, what: &str) -> Option<String> {
        let spec = format!("{what}^{{commit}}");
        self.git(&[
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &spec,
        ])
        .await
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
    }

    /// Checks `sha` out into the work tree (detached; stray files removed).
    pub async fn checkout(&self, sha: &str) -> Result<&Path> {
        self.git(&["checkout", "--quiet", "--force", "--detach", sha])
            .await?;
        self.git(&["clean", "-ffdxq"]).await?;
        Ok(&self.work_tree)
    }
}

/// Takes an exclusive advisory lock on `file` without waiting; released when it closes.
fn lock_exclusive(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only reads the descriptor number, which `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn default_cache_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .ok_or_else(|| SyncError::Cache {
            path: "$XDG_CACHE_HOME".into(),
            message: "neither XDG_CACHE_HOME nor HOME is set; give --cache-dir".into(),
        })?;
    Ok(base.join("deployctl").join("sync"))
}

/// Runs git with arguments (no shell), in the repo's git dir and work tree when given.
async fn git(repo: Option<&Repo>, args: &[&str]) -> Result<String> {
    let mut cmd = tokio::process::Command::new("git");
    if let Some(r) = repo {
        cmd.arg("--git-dir").arg(&r.git_dir);
        cmd.arg("--work-tree").arg(&r.work_tree);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ADVICE", "0")
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // kill_on_drop: a fetch that hangs (network) is killed, not left behind.
    let out = match tokio::time::timeout(GIT_TIMEOUT, cmd.output()).await {
        Ok(out) => out.map_err(|e| SyncError::NoGit(e.to_string()))?,
        Err(_) => {
            return Err(SyncError::Git {
                args: args.first().copied().unwrap_or_default().to_string(),
                message: format!("no answer within {}s", GIT_TIMEOUT.as_secs()),
            })
        }
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // git's own words: its `fatal:`/`error:` line names the repository or the ref.
        let lines: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let message = lines
            .iter()
            .find(|l| l.starts_with("fatal:") || l.starts_with("error:"))
            .or(lines.first())
            .map(|l| l.to_string())
            .unwrap_or_else(|| format!("failed ({})", out.status));
        Err(SyncError::Git {
            args: args.first().copied().unwrap_or_default().to_string(),
            message,
        })
    }
}

/// A relative path inside the repository: no `..`, not absolute.
fn check_path(path: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    let ok = p
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !ok {
        return Err(SyncError::Invalid {
            field: "--path",
            message: format!(
                "{path:?} must be a directory inside the repository (relative, no '..')"
            ),
        });
    }
    Ok(p.to_path_buf())
}

/// Loads the manifests of a checked-out commit; every error names the commit and the
/// file relative to the repository root.
fn load_commit(
    tree: &Path,
    path: &Path,
    sha: &str,
    namespace: &str,
) -> Result<Vec<manifest::Loaded>> {
    let dir = tree.join(path);
    let arg = dir.display().to_string();
    let prefix = format!("{}/", tree.display());
    let relative = |s: &str| -> String {
        if s == tree.display().to_string() {
            ".".into()
        } else {
            s.strip_prefix(&prefix).unwrap_or(s).to_string()
        }
    };
    match manifest::load(&[arg], namespace) {
        Ok(mut loaded) => {
            for l in &mut loaded {
                l.origin.source = relative(&l.origin.source);
            }
            Ok(loaded)
        }
        Err(errors) => Err(SyncError::BadCommit {
            commit: sha.to_string(),
            errors: manifest::bounded_lines(
                &errors
                    .into_iter()
                    .map(|e| match e {
                        LoadError::Manifest(mut m) => {
                            m.origin.source = relative(&m.origin.source);
                            m.to_string()
                        }
                        LoadError::Source(mut s) => {
                            s.source_name = relative(&s.source_name);
                            s.message = s.message.replace(&prefix, "");
                            s.to_string()
                        }
                    })
                    .collect::<Vec<_>>(),
            ),
        }),
    }
}

/// A hash of the labels and spec of an object, recorded when sync writes it: a stored
/// object whose hash differs was edited by someone else.
fn content_hash<K: Object>(obj: &K) -> String {
    let text = serde_json::to_string(&(&obj.meta().labels, obj.spec()))
        .expect("labels and spec always serialize (they were deserialized)");
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

/// Marks a manifest object as this sync's: label, commit, file and content hash.
fn stamp<K: Object>(mut obj: K, name: &str, sha: &str, file: &str) -> K {
    let m = obj.meta_mut();
    m.labels.insert(LABEL_SYNC.into(), name.into());
    m.annotations
        .insert(ANNOTATION_SYNC_COMMIT.into(), sha.into());
    m.annotations
        .insert(ANNOTATION_SYNC_PATH.into(), file.into());
    let hash = content_hash(&obj);
    obj.meta_mut()
        .annotations
        .insert(ANNOTATION_SYNC_HASH.into(), hash);
    obj
}

fn object_ref<K: Object>(obj: &K) -> ObjectReference {
    ObjectReference {
        kind: K::KIND.to_string(),
        namespace: obj.namespace().map(str::to_string),
        name: obj.name().to_string(),
    }
}

fn kind_of<K: Object>() -> KindName {
    KindName::from_kind(K::KIND).expect("every Object kind has a KindName (same table)")
}

fn ref_of<K: Object>(obj: &K) -> String {
    reference(kind_of::<K>(), obj.name())
}

/// The result of one pass.
#[derive(Debug, Default)]
pub struct Report {
    pub commit: String,
    /// `rollout.deployctl.dev/api configured`, one per object that changed.
    pub lines: Vec<String>,
    pub objects: u32,
    pub changed: usize,
    pub drifted: usize,
    pub pruned: usize,
    /// Dry run: the diff text, and whether there was any.
    pub diff: String,
}

/// One sync source bound to a store.
pub struct Syncer {
    pub client: Client,
    pub name: String,
    pub spec: GitSyncSpec,
    pub namespace: String,
    pub prune: bool,
    pub dry_run: bool,
    path: PathBuf,
    repo: Repo,
    events: EventRecorder,
}

impl Syncer {
    pub async fn new(g: &GlobalArgs, client: Client, args: &SyncArgs) -> Result<Syncer> {
        let path = check_path(&args.path)?;
        let repo = Repo::open(&args.repo, args.cache_dir.as_deref()).await?;
        // From the resolved URL, so that `--repo .` is named after the directory.
        let name = args.name.clone().unwrap_or_else(|| default_name(&repo.url));
        check_name(&name).map_err(|message| SyncError::Invalid {
            field: "--name",
            message,
        })?;
        Ok(Syncer {
            events: EventRecorder::new(client.clone(), format!("sync/{name}")),
            client,
            spec: GitSyncSpec {
                repo: repo.url.clone(),
                ref_: args.git_ref.clone(),
                path: args.path.clone(),
                prune: args.prune,
                interval_seconds: if args.once {
                    0
                } else {
                    args.interval.as_secs()
                },
            },
            name,
            namespace: g.namespace.clone(),
            prune: args.prune,
            dry_run: args.dry_run,
            path,
            repo,
        })
    }

    /// One pass; on failure the Sync status records the error (not in a dry run).
    pub async fn sync_once(&self) -> Result<Report> {
        let result = self.pass().await;
        if !self.dry_run {
            let status = match &result {
                Ok(r) => self.record_success(r).await,
                Err(e) => self.record_error(e).await,
            };
            if let Err(e) = status {
                tracing::warn!(sync = %self.name, error = %e, "could not write the sync status");
                if result.is_ok() {
                    return Err(e);
                }
            }
        }
        result
    }

    async fn pass(&self) -> Result<Report> {
        self.repo.fetch(self.spec.ref_.as_deref()).await?;
        let sha = self.repo.resolve(self.spec.ref_.as_deref()).await?;
        let result = self.apply_commit(&sha).await;
        if let Err(e @ (SyncError::BadCommit { .. } | SyncError::Owned { .. })) = &result {
            if !self.dry_run {
                self.keep_last_good(&sha, e).await;
            }
        }
        result
    }

    /// A bad commit leaves the last good one in force: re-apply it, so that drift is
    /// still restored (and pruned objects stay pruned) until a good commit comes.
    async fn keep_last_good(&self, bad: &str, e: &SyncError) {
        let last: Option<GitSync> = match self.client.get(None, &self.name).await {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(sync = %self.name, error = %err, "cannot read the last good commit");
                return;
            }
        };
        let Some(good) = last.and_then(|s| s.status).and_then(|st| st.last_commit) else {
            return;
        };
        if good == bad {
            return;
        }
        // The reason is the error the caller prints (and the Sync status records): say it
        // once, here only what happens instead.
        tracing::warn!(sync = %self.name, reason = e.kind(), "commit {} refused; keeping {} in force", short_commit(bad), short_commit(&good));
        match self.apply_commit(&good).await {
            Ok(r) => {
                for l in &r.lines {
                    outln!("{} (kept from {})", escape(l), escape(short_commit(&good)));
                }
            }
            Err(err) => {
                tracing::warn!(sync = %self.name, error = %err, "cannot re-apply the last good commit")
            }
        }
    }

    /// Checks `sha` out and applies it (and prunes, with `--prune`): all or nothing.
    async fn apply_commit(&self, sha: &str) -> Result<Report> {
        let sha = sha.to_string();
        let tree = self.repo.checkout(&sha).await?;
        let loaded = load_commit(tree, &self.path, &sha, &self.namespace)?;
        let mut report = Report {
            commit: sha.clone(),
            objects: loaded.len() as u32,
            ..Default::default()
        };
        // Stamp every object, then check that no other sync owns one: all or nothing.
        let stamped: Vec<Manifest> = loaded
            .into_iter()
            .map(|l| {
                let file = l.origin.source.clone();
                match l.manifest {
                    Manifest::Machine(o) => Manifest::Machine(stamp(o, &self.name, &sha, &file)),
                    Manifest::Application(o) => {
                        Manifest::Application(stamp(o, &self.name, &sha, &file))
                    }
                    Manifest::Rollout(o) => Manifest::Rollout(stamp(o, &self.name, &sha, &file)),
                    Manifest::Notifier(o) => Manifest::Notifier(stamp(o, &self.name, &sha, &file)),
                    Manifest::AnalysisTemplate(o) => {
                        Manifest::AnalysisTemplate(stamp(o, &self.name, &sha, &file))
                    }
                }
            })
            .collect();
        for m in &stamped {
            match m {
                Manifest::Machine(o) => self.check_owner(o, &sha).await?,
                Manifest::Application(o) => self.check_owner(o, &sha).await?,
                Manifest::Rollout(o) => self.check_owner(o, &sha).await?,
                Manifest::Notifier(o) => self.check_owner(o, &sha).await?,
                Manifest::AnalysisTemplate(o) => self.check_owner(o, &sha).await?,
            }
        }
        let mut wanted: BTreeSet<(KindName, String)> = BTreeSet::new();
        for m in &stamped {
            wanted.insert((m.kind(), m.meta().key()));
            match m {
                Manifest::Machine(o) => self.apply(o, &sha, &mut report).await?,
                Manifest::Application(o) => self.apply(o, &sha, &mut report).await?,
                Manifest::Rollout(o) => self.apply(o, &sha, &mut report).await?,
                Manifest::Notifier(o) => self.apply(o, &sha, &mut report).await?,
                Manifest::AnalysisTemplate(o) => self.apply(o, &sha, &mut report).await?,
            }
        }
        if self.prune {
            // Notifiers and Rollouts before the Applications they name, Machines last.
            self.prune_kind::<Notifier>(&wanted, &sha, &mut report)
                .await?;
            self.prune_kind::<Rollout>(&wanted, &sha, &mut report)
                .await?;
            self.prune_kind::<crate::api::AnalysisTemplate>(&wanted, &sha, &mut report)
                .await?;
            self.prune_kind::<Application>(&wanted, &sha, &mut report)
                .await?;
            self.prune_kind::<Machine>(&wanted, &sha, &mut report)
                .await?;
        }
        Ok(report)
    }

    fn store_err<K: Object>(&self, obj: &K, sha: &str) -> impl Fn(store::Error) -> SyncError {
        let reference = ref_of(obj);
        let commit = sha.to_string();
        move |source| SyncError::Store {
            commit: commit.clone(),
            reference: reference.clone(),
            source,
        }
    }

    async fn check_owner<K: Object>(&self, want: &K, sha: &str) -> Result<()> {
        let current: Option<K> = self
            .client
            .get(want.namespace(), want.name())
            .await
            .map_err(self.store_err(want, sha))?;
        match current
            .as_ref()
            .and_then(|c| c.meta().labels.get(LABEL_SYNC))
        {
            Some(owner) if *owner != self.name => Err(SyncError::Owned {
                commit: sha.to_string(),
                reference: ref_of(want),
                owner: owner.clone(),
                name: self.name.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Creates or updates one object like `apply`, noticing hand edits (drift).
    async fn apply<K: Object>(&self, want: &K, sha: &str, report: &mut Report) -> Result<()> {
        let err = self.store_err(want, sha);
        for _ in 0..RETRIES {
            let current: Option<K> = self
                .client
                .get(want.namespace(), want.name())
                .await
                .map_err(&err)?;
            let outcome = match &current {
                None => {
                    if self.dry_run {
                        Outcome::Created
                    } else {
                        let mut new = want.clone();
                        *new.status_mut() = None;
                        match self.client.create(&new).await {
                            Ok(_) => Outcome::Created,
                            Err(store::Error::AlreadyExists(_)) => continue,
                            Err(e) => return Err(err(e)),
                        }
                    }
                }
                Some(cur) => {
                    if let Some(owner) = cur.meta().labels.get(LABEL_SYNC) {
                        if *owner != self.name {
                            return Err(SyncError::Owned {
                                commit: sha.to_string(),
                                reference: ref_of(want),
                                owner: owner.clone(),
                                name: self.name.clone(),
                            });
                        }
                    }
                    let desired = merge(cur, want);
                    let same = desired.meta().labels == cur.meta().labels
                        && desired.meta().annotations == cur.meta().annotations
                        && desired.spec() == cur.spec();
                    if same {
                        Outcome::Unchanged
                    } else if self.dry_run {
                        Outcome::Configured
                    } else {
                        match self.client.replace(cur, desired).await {
                            Ok(_) => Outcome::Configured,
                            Err(store::Error::Conflict(_)) => continue,
                            Err(e) => return Err(err(e)),
                        }
                    }
                }
            };
            if self.dry_run {
                let live = match &current {
                    Some(c) => yaml(c).map_err(&err)?,
                    None => String::new(),
                };
                let merged = match &current {
                    Some(c) => yaml(&merge(c, want)).map_err(&err)?,
                    None => yaml(want).map_err(&err)?,
                };
                if let Some(d) = diff::unified(&ref_of(want), &live, &merged) {
                    report.diff.push_str(&d);
                }
            }
            if outcome != Outcome::Unchanged {
                report.changed += 1;
                let suffix = if self.dry_run { " (dry run)" } else { "" };
                report
                    .lines
                    .push(format!("{} {outcome}{suffix}", ref_of(want)));
            }
            if let Some(cur) = &current {
                self.notice_drift(cur, want, sha, outcome, report).await;
            }
            return Ok(());
        }
        Err(err(store::Error::Conflict(format!(
            "{} (still changing after {RETRIES} attempts)",
            ref_of(want)
        ))))
    }

    /// A managed object whose labels or spec are not what sync last wrote was edited by
    /// hand: warn, and record an Event (once restored; not in a dry run).
    async fn notice_drift<K: Object>(
        &self,
        cur: &K,
        want: &K,
        sha: &str,
        outcome: Outcome,
        report: &mut Report,
    ) {
        let managed = cur.meta().labels.get(LABEL_SYNC) == Some(&self.name);
        let recorded = cur.meta().annotations.get(ANNOTATION_SYNC_HASH);
        let edited = managed && recorded.is_some_and(|h| *h != content_hash(cur));
        if !edited || outcome == Outcome::Unchanged {
            return;
        }
        report.drifted += 1;
        let mut fields = Vec::new();
        if cur.spec() != want.spec() {
            fields.push("spec");
        }
        if cur.meta().labels != want.meta().labels {
            fields.push("labels");
        }
        let message = format!(
            "{} was edited outside Git ({}); {} it to commit {}",
            ref_of(cur),
            fields.join(", "),
            if self.dry_run {
                "would restore"
            } else {
                "restored"
            },
            short_commit(sha)
        );
        tracing::warn!(sync = %self.name, object = %ref_of(cur), "drift: {message}");
        if !self.dry_run {
            self.events
                .record(object_ref(cur), "Warning", "Drift", &message)
                .await;
        }
    }

    /// Deletes this sync's objects of one kind that the commit no longer declares,
    /// each at the revision read; a conflict re-reads and decides again.
    async fn prune_kind<K: Object>(
        &self,
        wanted: &BTreeSet<(KindName, String)>,
        sha: &str,
        report: &mut Report,
    ) -> Result<()> {
        let kind = kind_of::<K>();
        let listed =
            self.client
                .list::<K>(&Scope::All)
                .await
                .map_err(|source| SyncError::Store {
                    commit: sha.to_string(),
                    reference: kind.plural().to_string(),
                    source,
                })?;
        for obj in listed.items {
            if obj.meta().labels.get(LABEL_SYNC) != Some(&self.name)
                || wanted.contains(&(kind, obj.meta().key()))
            {
                continue;
            }
            let err = self.store_err(&obj, sha);
            if self.dry_run {
                if let Some(d) = diff::unified(&ref_of(&obj), &yaml(&obj).map_err(&err)?, "") {
                    report.diff.push_str(&d);
                }
                report.pruned += 1;
                report
                    .lines
                    .push(format!("{} pruned (dry run)", ref_of(&obj)));
                continue;
            }
            let mut current = Some(obj);
            let mut attempts = 0;
            while let Some(obj) = current.take() {
                attempts += 1;
                let rev = obj.meta().revision();
                match self
                    .client
                    .delete::<K>(obj.namespace(), obj.name(), Some(rev))
                    .await
                {
                    Ok(_) => {
                        report.pruned += 1;
                        report.lines.push(format!("{} pruned", ref_of(&obj)));
                    }
                    Err(store::Error::Conflict(_)) if attempts < RETRIES => {
                        // Changed since listed: prune only if it is still ours.
                        let fresh: Option<K> = self
                            .client
                            .get(obj.namespace(), obj.name())
                            .await
                            .map_err(&err)?;
                        current =
                            fresh.filter(|f| f.meta().labels.get(LABEL_SYNC) == Some(&self.name));
                    }
                    Err(e) => return Err(err(e)),
                }
            }
        }
        Ok(())
    }

    /// Creates the Sync object, or brings its spec up to date (compare-and-swap).
    async fn ensure_object(&self) -> Result<(), store::Error> {
        for _ in 0..RETRIES {
            let current: Option<GitSync> = self.client.get(None, &self.name).await?;
            match current {
                None => match self
                    .client
                    .create(&GitSync::new(&self.name, self.spec.clone()))
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(store::Error::AlreadyExists(_)) => continue,
                    Err(e) => return Err(e),
                },
                Some(cur) if cur.spec == self.spec => return Ok(()),
                Some(cur) => {
                    let mut desired = cur.clone();
                    desired.spec = self.spec.clone();
                    match self.client.replace(&cur, desired).await {
                        Ok(_) => return Ok(()),
                        Err(store::Error::Conflict(_)) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Err(store::Error::Conflict(format!(
            "sync {} (still changing)",
            self.name
        )))
    }

    async fn record_success(&self, r: &Report) -> Result<()> {
        self.ensure_object().await.map_err(SyncError::Status)?;
        self.client
            .update_status::<GitSync>(None, &self.name, |st| {
                st.last_commit = Some(r.commit.clone());
                st.last_sync_time = Some(chrono::Utc::now());
                st.objects = r.objects;
                st.last_error = None;
                st.last_error_commit = None;
                st.last_error_time = None;
            })
            .await
            .map_err(SyncError::Status)?;
        Ok(())
    }

    async fn record_error(&self, e: &SyncError) -> Result<()> {
        self.ensure_object().await.map_err(SyncError::Status)?;
        let message = e.to_string();
        let commit = e.commit().map(str::to_string);
        let mut new_error = false;
        let obj = self
            .client
            .update_status::<GitSync>(None, &self.name, |st| {
                new_error = st.last_error.as_deref() != Some(message.as_str());
                if new_error {
                    st.last_error_time = Some(chrono::Utc::now());
                }
                st.last_error = Some(message.clone());
                st.last_error_commit = commit.clone();
            })
            .await
            .map_err(SyncError::Status)?;
        // Once per distinct error, not once per interval.
        if new_error {
            let reason = match e {
                SyncError::BadCommit { .. } | SyncError::Owned { .. } => "BadCommit",
                _ => "SyncFailed",
            };
            self.events
                .record(object_ref(&obj), "Warning", reason, &message)
                .await;
        }
        Ok(())
    }
}

fn print_report(s: &Syncer, r: &Report, always: bool) {
    for l in &r.lines {
        outln!("{}", escape(l));
    }
    if always || !r.lines.is_empty() {
        outln!(
            "sync {}: commit {} applied ({} objects: {} changed, {} drifted, {} pruned)",
            escape(&s.name),
            escape(short_commit(&r.commit)),
            r.objects,
            r.changed,
            r.drifted,
            r.pruned
        );
    }
}

pub async fn run(g: &GlobalArgs, args: SyncArgs) -> anyhow::Result<i32> {
    let client = connect(g).await?;
    let syncer = match Syncer::new(g, client, &args).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}", escape_lines(&e.to_string()));
            return Ok(if args.dry_run { diff::EXIT_ERROR } else { 1 });
        }
    };
    if args.dry_run {
        return Ok(match syncer.sync_once().await {
            Ok(r) => {
                out!("{}", r.diff);
                for l in &r.lines {
                    eprintln!("{}", escape(l));
                }
                if r.diff.is_empty() {
                    0
                } else {
                    1
                }
            }
            Err(e) => {
                eprintln!("error: {}", escape_lines(&e.to_string()));
                diff::EXIT_ERROR
            }
        });
    }
    if args.once {
        return Ok(match syncer.sync_once().await {
            Ok(r) => {
                print_report(&syncer, &r, true);
                0
            }
            Err(e) => {
                eprintln!("error: {}", escape_lines(&e.to_string()));
                1
            }
        });
    }
    let mut stop = tokio::spawn(super::get::shutdown_signal());
    let mut last_commit: Option<String> = None;
    // Printed once while it lasts, not once per interval (the Sync status has it too).
    let mut last_error: Option<String> = None;
    loop {
        match syncer.sync_once().await {
            Ok(r) => {
                let new_commit = last_commit.as_deref() != Some(r.commit.as_str());
                print_report(&syncer, &r, new_commit);
                last_commit = Some(r.commit);
                last_error = None;
            }
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    eprintln!("error: {}", escape_lines(&text));
                    last_error = Some(text);
                }
                last_commit = None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = &mut stop => return Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_should_be_dns_labels_from_the_last_path_segment() {
        for (repo, want) in [
            (
                "https://git.example.com/ops/Fleet_Config.git",
                "fleet-config",
            ),
            ("git@github.com:ops/fleet.git", "fleet"),
            ("/srv/repos/fleet/", "fleet"),
            ("/", "repo"),
            ("https://x/--a..b--", "a-b"),
        ] {
            let got = default_name(repo);
            assert_eq!(got, want, "{repo}");
            check_name(&got).expect("a default name is a valid name");
        }
    }

    #[test]
    fn paths_outside_the_repository_should_be_refused() {
        assert!(check_path("manifests/prod").is_ok());
        assert!(check_path(".").is_ok());
        let e = check_path("../etc").unwrap_err().to_string();
        assert!(e.contains("--path"), "{e}");
        assert!(check_path("/etc").is_err());
    }

    #[test]
    fn the_content_hash_should_change_with_spec_and_labels_only() {
        let mut a = Rollout::new("api", Default::default());
        a.spec.version = "1".into();
        let h = content_hash(&a);
        a.metadata.annotations.insert("x".into(), "y".into());
        assert_eq!(content_hash(&a), h);
        a.metadata.labels.insert("x".into(), "y".into());
        assert_ne!(content_hash(&a), h);
        let mut b = a.clone();
        b.spec.version = "2".into();
        assert_ne!(content_hash(&b), content_hash(&a));
    }
}

//! The `Store` trait and its two backends; only this module knows the key layout.
//!
//! The trait is etcd's model, kept small: keys and bytes, a global revision that every
//! write bumps, compare-and-swap transactions, watches from a revision, and leases.
//! [`Client`] turns it into typed objects with spec and status under separate keys.

pub mod batch;
mod client;
pub mod embedded;
pub mod etcd;
pub mod keys;
mod leased;
pub mod metered;
mod task_orders;

pub use batch::Write;
pub use client::LeaderRecord;
pub use client::{
    encode_create, encode_replace, encode_status, Client, ListResult, LogRequestEvent, ObjectEvent,
    ObjectWatch, Scope,
};
pub use leased::{event_lease_id, EventRecorder, Presence, PresenceEvent, EVENT_TTL};
pub use metered::MeteredStore;
pub use task_orders::{watch_task_results, TaskOrderEvent};

use async_trait::async_trait;
use futures::stream::BoxStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The largest transaction either store takes: etcd's default `--max-request-bytes`
/// (1.5 MiB), counted as [`request_bytes`] does. The embedded store keeps the same limit
/// so that what works on one store works on the other.
pub const MAX_REQUEST_BYTES: usize = 3 << 19;

/// What `txn` costs against [`MAX_REQUEST_BYTES`]: every key and value it carries, and
/// a few bytes per part for etcd's framing (protobuf tags, lengths, the lease).
pub fn request_bytes(txn: &Txn) -> usize {
    const PART: usize = 16;
    let compares: usize = txn
        .compares
        .iter()
        .map(|c| {
            let value = match &c.target {
                CompareTarget::Value(v) => v.len(),
                _ => 0,
            };
            PART + c.key.len() + value
        })
        .sum();
    let ops: usize = txn
        .ops
        .iter()
        .map(|op| match op {
            Op::Put { key, value, .. } => PART + key.len() + value.len(),
            Op::Delete { key } => PART + key.len(),
        })
        .sum();
    PART + compares + ops
}

/// Refuses a transaction past [`MAX_REQUEST_BYTES`], naming its largest key: both
/// backends call it first, so the embedded store takes no more than etcd would.
pub fn check_request_size(txn: &Txn) -> Result<()> {
    let size = request_bytes(txn);
    if size <= MAX_REQUEST_BYTES {
        return Ok(());
    }
    let largest = txn.ops.iter().max_by_key(|op| match op {
        Op::Put { key, value, .. } => key.len() + value.len(),
        Op::Delete { key } => key.len(),
    });
    let what = match largest {
        Some(Op::Put { key, .. }) if txn.ops.len() == 1 => format!("the write of {key}"),
        Some(Op::Put { key, .. }) => {
            format!(
                "a transaction of {} writes (the largest {key})",
                txn.ops.len()
            )
        }
        _ => "a transaction".to_string(),
    };
    Err(Error::TooLarge {
        what,
        size,
        limit: MAX_REQUEST_BYTES,
    })
}

/// The largest encoded object `apply` sends: the request limit less room for the
/// object's keys, the transaction's compares and etcd's framing.
pub const MAX_OBJECT_BYTES: usize = MAX_REQUEST_BYTES - (16 << 10);

/// What can go wrong talking to a store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A compare-and-swap lost: somebody wrote first. Re-read and try again.
    #[error("conflict: {0} was changed by someone else; re-read and retry")]
    Conflict(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
    /// The watch asked for a revision that compaction removed: relist.
    #[error("revision {requested} has been compacted (oldest kept: {compacted}); relist")]
    Compacted { requested: i64, compacted: i64 },
    #[error("lease {0} not found or expired")]
    LeaseNotFound(i64),
    /// A fenced write failed because this process no longer holds the leader lease.
    #[error("not the leader any more")]
    NotLeader,
    #[error("cannot reach store at {endpoint}: {message}")]
    Unavailable { endpoint: String, message: String },
    /// The TLS handshake failed: wrong or missing CA, client certificate refused, or one
    /// side speaks TLS and the other does not. Not transient: the configuration is wrong.
    #[error("TLS handshake with store at {endpoint} failed: {message}")]
    Tls { endpoint: String, message: String },
    /// etcd refused the user, the password or the request (RBAC).
    #[error("store at {endpoint} refused access: {message}")]
    Auth { endpoint: String, message: String },
    /// Connection settings that cannot work (an unreadable certificate file, a user
    /// without a password); the message names the file or flag.
    #[error("{0}")]
    Config(String),
    #[error("corrupt value at {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("store error: {0}")]
    Other(String),
    /// A transaction larger than [`MAX_REQUEST_BYTES`]; refused before it is sent.
    #[error(
        "{what} is {size} bytes, larger than the store's limit of {limit} bytes (1.5 MiB, \
         etcd's default --max-request-bytes)"
    )]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
}

impl Error {
    /// True when retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Other(_))
    }
}

pub type LeaseId = i64;

/// What the store says of a live lease: the TTL it was granted and how much is left, so
/// that a reader can tell when it was last refreshed (`granted - remaining` ago) without
/// the holder writing anything per refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTtl {
    pub granted: Duration,
    pub remaining: Duration,
}

/// One key as stored, with etcd's revision bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last delete).
    pub create_revision: i64,
    /// Revision of the last write to the key: the `resourceVersion`.
    pub mod_revision: i64,
    /// The lease the key is bound to (0: none).
    pub lease: LeaseId,
}

/// The field a [`Compare`] looks at. A missing key has revisions 0 and no value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    ModRevision(i64),
    CreateRevision(i64),
    Value(Vec<u8>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// One condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    /// The key's mod revision is `rev` (0: the key must not exist).
    pub fn mod_revision(key: impl Into<String>, rev: i64) -> Self {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(rev),
        }
    }
    /// The key exists.
    pub fn exists(key: impl Into<String>) -> Self {
        Compare {
            key: key.into(),
            op: CompareOp::Greater,
            target: CompareTarget::CreateRevision(0),
        }
    }
    /// The key does not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::CreateRevision(0),
        }
    }
    pub fn create_revision(key: impl Into<String>, rev: i64) -> Self {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::CreateRevision(rev),
        }
    }
}

/// One write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Sets the key; `lease` 0 for none.
    Put {
        key: String,
        value: Vec<u8>,
        lease: LeaseId,
    },
    /// Deletes the key if present.
    Delete { key: String },
}

/// All of `ops` happen at one new revision if every compare holds; otherwise nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The store's revision after the transaction (the new one when it wrote).
    pub revision: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Put,
    Delete,
}

/// One change seen by a watch. For a delete, `kv.value` is empty and `kv.mod_revision`
/// is the revision of the delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventType,
    pub kv: KeyValue,
}

/// Events in revision order. A stream item is all events of one or more revisions.
/// An `Err(Error::Compacted)` means: relist. The stream resumes by itself after a
/// broken connection, from the revision after the last one it delivered.
pub type WatchStream = BoxStream<'static, Result<Vec<WatchEvent>>>;

/// The storage a deployctl control plane runs on.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A human-readable endpoint for error messages (`etcd://127.0.0.1:2379`).
    fn endpoint(&self) -> String;

    /// One key, at the current revision.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Every key starting with `prefix`, sorted by key, at `revision` (None: the
    /// current one). Returns the keys and the revision they were read at.
    async fn list(&self, prefix: &str, revision: Option<i64>) -> Result<(Vec<KeyValue>, i64)>;

    /// Atomic compare-and-swap of many keys.
    async fn txn(&self, txn: Txn) -> Result<TxnResult>;

    /// Changes under `prefix` with revision ≥ `from_revision`, in order.
    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream>;

    /// A new lease that expires `ttl` after its last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;

    /// Grants the lease `id` (positive) for `ttl` unless it is alive already: `true` if
    /// this call granted it, `false` if it existed (its TTL is left as it was). For leases
    /// that many writers share without telling each other its id.
    async fn grant_lease_id(&self, id: LeaseId, ttl: Duration) -> Result<bool>;

    /// Refreshes a lease; `Err(LeaseNotFound)` once it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// Ends a lease now, deleting every key bound to it.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;

    /// The granted and remaining TTL of `lease`; `None` once it has expired or never was.
    /// A read: it neither refreshes nor ends the lease.
    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<LeaseTtl>>;

    /// Forgets history before `revision` (watches from earlier revisions get `Compacted`).
    async fn compact(&self, revision: i64) -> Result<()>;

    /// Convenience: put one key unconditionally.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<TxnResult> {
        self.txn(Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: key.to_string(),
                value,
                lease: 0,
            }],
        })
        .await
    }
}

/// How to reach a secured etcd: TLS files and a user. The default is plain etcd.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Speak TLS even when no file below asks for it (`etcds://`).
    pub tls: bool,
    /// PEM file of the CA that signed etcd's server certificate.
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key, for etcd's `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// etcd user (`--etcd-user`); its password comes only from the environment.
    pub user: Option<String>,
    /// From `DEPLOYCTL_ETCD_PASSWORD` only: a flag would show in `ps`. Never printed.
    pub password: Option<String>,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl EtcdOptions {
    /// True when no option is set: plain `etcd://`.
    pub fn is_empty(&self) -> bool {
        *self == EtcdOptions::default()
    }

    /// True when the connection must use TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls || self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The flags that were given, for "only for etcd" messages.
    fn given_flags(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (set, flag) in [
            (self.ca.is_some(), "--etcd-ca"),
            (self.cert.is_some(), "--etcd-cert"),
            (self.key.is_some(), "--etcd-key"),
            (self.user.is_some(), "--etcd-user"),
        ] {
            if set {
                out.push(flag);
            }
        }
        out
    }

    /// Checks that the options can work together, before any file is read.
    pub fn check(&self) -> std::result::Result<(), String> {
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return Err("--etcd-cert needs --etcd-key (DEPLOYCTL_ETCD_KEY) too".into())
            }
            (None, Some(_)) => {
                return Err("--etcd-key needs --etcd-cert (DEPLOYCTL_ETCD_CERT) too".into())
            }
            _ => {}
        }
        if self.uses_tls() && self.ca.is_none() {
            return Err(
                "TLS to etcd needs --etcd-ca FILE (DEPLOYCTL_ETCD_CA): the CA that \
                 signed etcd's server certificate"
                    .into(),
            );
        }
        if let Some(user) = &self.user {
            if user.is_empty() {
                return Err("--etcd-user is empty".into());
            }
            if self.password.as_deref().is_none_or(str::is_empty) {
                return Err(format!(
                    "--etcd-user {user} needs its password in DEPLOYCTL_ETCD_PASSWORD \
                     (there is no flag: it would show in ps)"
                ));
            }
        }
        Ok(())
    }
}

/// Which store to use, from `--store` or `DEPLOYCTL_STORE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// `etcd://h1:2379,h2:2379`: plain etcd, no TLS, no user.
    Etcd(Vec<String>),
    /// `etcds://h1:2379,...`, or `etcd://` with `--etcd-*` options: TLS and/or a user.
    EtcdSecure {
        endpoints: Vec<String>,
        options: EtcdOptions,
    },
    /// `sqlite:///path/to/store.db`, or a plain path, or nothing (the default path).
    Embedded(std::path::PathBuf),
}

impl StoreUrl {
    /// Parses a store URL; `None` selects the embedded store at its default path.
    pub fn parse(url: Option<&str>) -> std::result::Result<StoreUrl, String> {
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            return Ok(StoreUrl::Embedded(embedded::default_path()));
        };
        let (tls, rest) = match (url.strip_prefix("etcds://"), url.strip_prefix("etcd://")) {
            (Some(rest), _) => (true, Some(rest)),
            (None, rest) => (false, rest),
        };
        if let Some(rest) = rest {
            let endpoints: Vec<String> = rest
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect();
            if endpoints.is_empty() {
                return Err(format!("invalid store URL {url:?}: no etcd endpoint given"));
            }
            for e in &endpoints {
                let ok = e
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    return Err(format!(
                        "invalid store URL {url:?}: endpoint {e:?} must be host:port"
                    ));
                }
            }
            if tls {
                return Ok(StoreUrl::EtcdSecure {
                    endpoints,
                    options: EtcdOptions {
                        tls: true,
                        ..EtcdOptions::default()
                    },
                });
            }
            return Ok(StoreUrl::Etcd(endpoints));
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            return Ok(StoreUrl::Embedded(path.into()));
        }
        if url.contains("://") {
            return Err(format!(
                "invalid store URL {url:?}: use etcd://host:port[,host:port...], \
                 etcds://host:port[,...] (TLS) or a file path"
            ));
        }
        Ok(StoreUrl::Embedded(url.into()))
    }

    /// Adds TLS and user options (from flags or the environment) to an etcd URL. Empty
    /// options change nothing; options on the embedded store are an error, since they
    /// would silently do nothing.
    pub fn with_etcd_options(self, extra: EtcdOptions) -> std::result::Result<StoreUrl, String> {
        if extra.is_empty() {
            return Ok(self);
        }
        let url = match self {
            StoreUrl::Etcd(endpoints) => StoreUrl::EtcdSecure {
                endpoints,
                options: extra,
            },
            StoreUrl::EtcdSecure { endpoints, options } => StoreUrl::EtcdSecure {
                endpoints,
                options: EtcdOptions {
                    tls: options.tls || extra.tls,
                    ..extra
                },
            },
            StoreUrl::Embedded(path) => {
                let flags = extra.given_flags();
                if flags.is_empty() {
                    // Only a password in the environment: nothing to use it for, harmless.
                    return Ok(StoreUrl::Embedded(path));
                }
                let verb = if flags.len() == 1 { "applies" } else { "apply" };
                return Err(format!(
                    "{} only {verb} to an etcd store, but the store is the embedded one at \
                     {} (use --store etcd://host:port or etcds://host:port)",
                    flags.join(", "),
                    path.display()
                ));
            }
        };
        if let StoreUrl::EtcdSecure { options, .. } = &url {
            options.check()?;
        }
        Ok(url)
    }

    /// Connects, failing within a few seconds when the store cannot be reached.
    pub async fn connect(&self) -> Result<Arc<dyn Store>> {
        match self {
            StoreUrl::Etcd(endpoints) => Ok(Arc::new(etcd::EtcdStore::connect(endpoints).await?)),
            StoreUrl::EtcdSecure { endpoints, options } => Ok(Arc::new(
                etcd::EtcdStore::connect_with(endpoints, options).await?,
            )),
            StoreUrl::Embedded(path) => Ok(Arc::new(embedded::EmbeddedStore::open(path)?)),
        }
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Etcd(e) => write!(f, "etcd://{}", e.join(",")),
            StoreUrl::EtcdSecure { endpoints, options } => {
                let scheme = if options.uses_tls() { "etcds" } else { "etcd" };
                write!(f, "{scheme}://{}", endpoints.join(","))
            }
            StoreUrl::Embedded(p) => write!(f, "{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_should_parse_or_say_why_not() {
        assert_eq!(
            StoreUrl::parse(Some("etcd://a:2379,b:2379")).unwrap(),
            StoreUrl::Etcd(vec!["a:2379".into(), "b:2379".into()])
        );
        assert_eq!(
            StoreUrl::parse(Some("/tmp/x.db")).unwrap(),
            StoreUrl::Embedded("/tmp/x.db".into())
        );
        assert!(StoreUrl::parse(Some("etcd://")).is_err());
        assert!(StoreUrl::parse(Some("etcd://host")).is_err());
        assert!(StoreUrl::parse(Some("redis://x")).is_err());
        assert!(matches!(
            StoreUrl::parse(None).unwrap(),
            StoreUrl::Embedded(_)
        ));
        assert!(matches!(
            StoreUrl::parse(Some("etcds://a:2379")).unwrap(),
            StoreUrl::EtcdSecure { options, .. } if options.tls
        ));
    }

    #[test]
    fn etcd_options_should_apply_only_to_etcd_and_say_what_is_missing() {
        let ca = EtcdOptions {
            ca: Some("/ca.pem".into()),
            ..EtcdOptions::default()
        };
        let url = StoreUrl::parse(Some("etcd://a:2379"))
            .unwrap()
            .with_etcd_options(ca.clone())
            .unwrap();
        assert_eq!(url.to_string(), "etcds://a:2379");
        let err = StoreUrl::parse(Some("/tmp/x.db"))
            .unwrap()
            .with_etcd_options(ca)
            .unwrap_err();
        assert!(
            err.contains("--etcd-ca only applies to an etcd store"),
            "{err}"
        );
        // etcds:// without a CA.
        let err = StoreUrl::parse(Some("etcds://a:2379"))
            .unwrap()
            .with_etcd_options(EtcdOptions {
                user: Some("agent".into()),
                password: Some("pw".into()),
                ..EtcdOptions::default()
            })
            .unwrap_err();
        assert!(err.contains("--etcd-ca"), "{err}");
        let err = StoreUrl::parse(Some("etcd://a:2379"))
            .unwrap()
            .with_etcd_options(EtcdOptions {
                user: Some("agent".into()),
                ..EtcdOptions::default()
            })
            .unwrap_err();
        assert!(err.contains("DEPLOYCTL_ETCD_PASSWORD"), "{err}");
        let err = EtcdOptions {
            ca: Some("/ca".into()),
            cert: Some("/c".into()),
            ..EtcdOptions::default()
        }
        .check()
        .unwrap_err();
        assert!(err.contains("--etcd-key"), "{err}");
        let shown = format!(
            "{:?}",
            EtcdOptions {
                password: Some("hunter2".into()),
                ..EtcdOptions::default()
            }
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

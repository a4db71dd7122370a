//! The etcd backend: the `Store` trait over etcd's v3 gRPC API (etcd-client).
//!
//! One client per cluster member (`etcd/endpoints.rs` picks the member for each request
//! and tries another when one is down or cannot serve); etcd multiplexes every request and
//! every watch of a client over one HTTP/2 connection. Every unary request runs within
//! [`REQUEST_TIMEOUT`], so a dead etcd turns into `Error::Unavailable` instead of a hang.
//! Watches resume by themselves after a broken stream, on another member if need be, from
//! the revision after the last one they delivered.

use super::*;
use endpoints::{Endpoints, Failure, Pace};
use etcd_client as ec;
use futures::StreamExt;
use std::future::Future;

mod endpoints;
mod mux;

/// How long connecting (TCP + HTTP/2 handshake, and logging in) may take before we call
/// a member unreachable; also the budget of `connect`'s first request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The budget of one unary request, over all its attempts on every member.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings find a silently dead connection (a partition, not a restart) this fast.
/// etcd refuses pings more often than every 5 s (`--grpc-keepalive-min-time`).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// First and largest pause between attempts to re-open a broken watch.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(3);
/// Keys per range request when listing: keeps each response far below gRPC's size limit.
const LIST_PAGE: i64 = 1000;
/// Largest gRPC message we accept (etcd itself sends up to 2 GiB).
const MAX_DECODE: usize = 256 * 1024 * 1024;

/// A connection to an etcd cluster. Cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
    /// `etcd://h1:2379,h2:2379`, for error messages.
    endpoint: String,
}

struct Inner {
    /// A client per member, and which one a request goes to.
    endpoints: Endpoints,
    /// The one watch stream that every watch of this store shares.
    watches: mux::Mux,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to `endpoints` (`host:port`, or `http://host:port`) and checks with one
    /// cheap request that etcd answers. Fails within a few seconds with
    /// `Error::Unavailable` when no member does.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore> {
        EtcdStore::connect_with(endpoints, &EtcdOptions::default()).await
    }

    /// Like [`connect`](Self::connect), with TLS and/or a user. An unreadable file is
    /// `Error::Config` naming it; a failed handshake `Error::Tls`; a refused user or
    /// password `Error::Auth`; each names the endpoint. Succeeds when one member answers:
    /// the others are connected when a request first goes to them.
    pub async fn connect_with(endpoints: &[String], opts: &EtcdOptions) -> Result<EtcdStore> {
        let tls = opts.uses_tls();
        let scheme = if tls { "etcds" } else { "etcd" };
        let bare: Vec<&str> = endpoints
            .iter()
            .map(|e| {
                e.trim_start_matches("http://")
                    .trim_start_matches("https://")
            })
            .collect();
        let endpoint = format!("{scheme}://{}", bare.join(","));
        if endpoints.is_empty() {
            return Err(Error::Unavailable {
                endpoint,
                message: "no etcd endpoint given".into(),
            });
        }
        opts.check().map_err(Error::Config)?;
        let mut options = ec::ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT);
        // etcd-client picks TLS from the scheme: give every endpoint the one we mean.
        let urls: Vec<String> = bare
            .iter()
            .map(|e| format!("{}://{e}", if tls { "https" } else { "http" }))
            .collect();
        if tls {
            options = options.with_tls(tls_options(opts)?);
        }
        if let (Some(user), Some(password)) = (&opts.user, &opts.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        let store = EtcdStore {
            inner: Arc::new(Inner {
                endpoints: Endpoints::new(&bare, &urls, options),
                watches: mux::Mux::new(),
            }),
            endpoint: endpoint.clone(),
        };
        // Clients connect lazily: only a request proves that etcd is there (with a user,
        // connecting logs in). A range read (not `status`) so that a user without read
        // access is told so now.
        let count_only = ec::GetOptions::new().with_count_only();
        let probe = store
            .inner
            .endpoints
            .call(
                CONNECT_TIMEOUT,
                Pace::READ,
                |_| true,
                |c| {
                    let opts = count_only.clone();
                    async move { kv(&c).get(super::keys::ROOT, Some(opts)).await }
                },
            )
            .await;
        match probe {
            Ok(_) => Ok(store),
            // Permission denied on the root only means a narrow role (an agent's): the
            // connection and the login work, which is what this probe is for.
            Err(Failure::Answer(ec::Error::GRpcStatus(s)))
                if s.message().contains("permission denied") =>
            {
                Ok(store)
            }
            Err(Failure::Answer(e)) => Err(connect_error(&endpoint, opts, e)),
            Err(Failure::Unreachable(each)) => Err(unreachable_error(&endpoint, opts, each)),
            Err(Failure::TimedOut(budget, last)) => Err(Error::Unavailable {
                endpoint,
                message: format!("no answer within {budget:?}{}", last_error(last)),
            }),
        }
    }

    /// Runs one request (an attempt per call of `op`, see `etcd/endpoints.rs`) within
    /// [`REQUEST_TIMEOUT`], mapping its errors. Only for requests that may run twice.
    async fn call<T, Fut>(
        &self,
        what: &str,
        pace: Pace,
        op: impl Fn(ec::Client) -> Fut,
    ) -> Result<T>
    where
        Fut: Future<Output = Result<T, ec::Error>>,
    {
        self.call_until(what, pace, |_| true, op).await
    }

    /// Like [`call`](Self::call); an answer that is not `done` (a lost compare) waits for
    /// the request's other attempts still running.
    async fn call_until<T, Fut>(
        &self,
        what: &str,
        pace: Pace,
        done: impl Fn(&T) -> bool,
        op: impl Fn(ec::Client) -> Fut,
    ) -> Result<T>
    where
        Fut: Future<Output = Result<T, ec::Error>>,
    {
        self.inner
            .endpoints
            .call(REQUEST_TIMEOUT, pace, done, op)
            .await
            .map_err(|f| self.failure(what, f))
    }

    /// Our error for a request that failed after its attempts.
    fn failure(&self, what: &str, failure: Failure) -> Error {
        match failure {
            Failure::Answer(e) => map_error(&self.endpoint, what, e),
            Failure::Unreachable(each) => Error::Unavailable {
                endpoint: self.endpoint.clone(),
                message: format!("{what}: {}", each_endpoint(&each)),
            },
            Failure::TimedOut(budget, last) => Error::Unavailable {
                endpoint: self.endpoint.clone(),
                message: format!("{what}: no answer within {budget:?}{}", last_error(last)),
            },
        }
    }

    /// The compaction revision, learned the only way etcd tells it: a watch from revision 1
    /// is cancelled with it. Used to give `Compacted` errors of a range a true number.
    async fn compacted_revision(&self) -> Option<i64> {
        let opts = ec::WatchOptions::new().with_start_revision(1);
        let first = |c: ec::Client| {
            let opts = opts.clone();
            async move {
                let (_watcher, mut stream) = c.watch_client().watch("\0", Some(opts)).await?;
                stream.message().await
            }
        };
        let resp = self
            .inner
            .endpoints
            .call(CONNECT_TIMEOUT, Pace::READ, |_| true, first)
            .await
            .ok()??;
        (resp.compact_revision() > 0).then_some(resp.compact_revision())
    }
}

/// A client's KV service, taking responses as large as [`MAX_DECODE`].
fn kv(client: &ec::Client) -> ec::KvClient {
    client.kv_client().max_decoding_message_size(MAX_DECODE)
}

/// `host:port: why` for each endpoint, joined.
fn each_endpoint(each: &[(String, ec::Error)]) -> String {
    each.iter()
        .map(|(endpoint, e)| format!("{endpoint}: {}", error_text(e)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `" (last error at host:port: why)"`, or nothing.
fn last_error(last: Option<(String, ec::Error)>) -> String {
    last.map(|(endpoint, e)| format!(" (last error at {endpoint}: {})", error_text(&e)))
        .unwrap_or_default()
}

/// A lease TTL in etcd's whole seconds, rounded up so that a lease never lives shorter
/// than asked.
fn lease_secs(ttl: Duration) -> i64 {
    ttl.as_millis().div_ceil(1000).max(1) as i64
}

/// Reads the TLS files into etcd-client's options; `Error::Config` names an unreadable one.
fn tls_options(opts: &EtcdOptions) -> Result<ec::TlsOptions> {
    fn read_pem(what: &str, path: &std::path::Path) -> Result<Vec<u8>> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::Config(format!("cannot read etcd {what} {}: {e}", path.display()))
        })?;
        if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(Error::Config(format!(
                "etcd {what} {} is not a PEM file (no -----BEGIN line)",
                path.display()
            )));
        }
        Ok(bytes)
    }
    let mut tls = ec::TlsOptions::new();
    if let Some(ca) = &opts.ca {
        tls = tls.ca_certificate(ec::Certificate::from_pem(read_pem(
            "CA certificate (--etcd-ca)",
            ca,
        )?));
    }
    if let (Some(cert), Some(key)) = (&opts.cert, &opts.key) {
        let cert = read_pem("client certificate (--etcd-cert)", cert)?;
        let key = read_pem("client key (--etcd-key)", key)?;
        tls = tls.identity(ec::Identity::from_pem(cert, key));
    }
    Ok(tls)
}

/// Every message in an error's source chain: tonic's transport errors say only
/// "transport error" at the top.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        parts.push(s.to_string());
        next = s.source();
    }
    parts
}

/// Joins messages, dropping empty ones, tonic's bare "transport error" and any message
/// that another one already contains.
fn join_messages(parts: Vec<String>) -> String {
    let parts: Vec<String> = parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty() && p != "transport error")
        .collect();
    let mut kept: Vec<&String> = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let covered = parts
            .iter()
            .enumerate()
            .any(|(j, q)| j != i && q.contains(p.as_str()) && (q != p || j < i));
        if !covered {
            kept.push(p);
        }
    }
    if kept.is_empty() {
        return "transport error".into();
    }
    kept.iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(": ")
}

/// An error's whole story in one line: a gRPC status's own message, then what caused it
/// (rustls says why a handshake failed there, the OS that a connection was refused).
fn error_text(e: &ec::Error) -> String {
    match e {
        ec::Error::GRpcStatus(status) => {
            let mut parts = vec![status.message().to_string()];
            if let Some(source) = std::error::Error::source(status) {
                parts.extend(error_chain(source));
            }
            join_messages(parts)
        }
        other => join_messages(error_chain(other)),
    }
}

/// Nothing listens there: the connection was refused, so TLS cannot be the reason.
fn is_refused(text: &str) -> bool {
    text.to_lowercase().contains("connection refused")
}

/// No member could be reached while connecting: names each with why. A TLS failure when
/// every member failed so; otherwise unavailability.
fn unreachable_error(endpoint: &str, opts: &EtcdOptions, each: Vec<(String, ec::Error)>) -> Error {
    let mut all_tls = !each.is_empty();
    let mut lines = Vec::with_capacity(each.len());
    for (member, e) in each {
        match connect_error(&member, opts, e) {
            Error::Tls { message, .. } => lines.push(format!("{member}: {message}")),
            Error::Unavailable { message, .. } | Error::Auth { message, .. } => {
                all_tls = false;
                lines.push(format!("{member}: {message}"))
            }
            other => {
                all_tls = false;
                lines.push(format!("{member}: {other}"))
            }
        }
    }
    let message = lines.join("; ");
    let endpoint = endpoint.to_string();
    if all_tls {
        Error::Tls { endpoint, message }
    } else {
        Error::Unavailable { endpoint, message }
    }
}

/// Classifies an error of connecting: TLS, authentication, or plain unavailability.
fn connect_error(endpoint: &str, opts: &EtcdOptions, e: ec::Error) -> Error {
    let text = error_text(&e);
    let lower = text.to_lowercase();
    if let ec::Error::GRpcStatus(status) = &e {
        let msg = status.message().trim_start_matches("etcdserver: ");
        if msg.contains("authentication failed") || msg.contains("invalid auth token") {
            let user = opts.user.as_deref().unwrap_or("(none)");
            return Error::Auth {
                endpoint: endpoint.to_string(),
                message: format!(
                    "authentication failed for user {user}: wrong user or password \
                     (DEPLOYCTL_ETCD_PASSWORD)"
                ),
            };
        }
        if msg.contains("authentication is not enabled") {
            return Error::Auth {
                endpoint: endpoint.to_string(),
                message: "etcd has authentication disabled; drop --etcd-user".into(),
            };
        }
        if msg.contains("user name is empty") || msg.contains("user name not found") {
            return Error::Auth {
                endpoint: endpoint.to_string(),
                message: "etcd requires a user: give --etcd-user and DEPLOYCTL_ETCD_PASSWORD"
                    .into(),
            };
        }
    }
    let tls_words = [
        "certificate",
        "tls",
        "handshake",
        "unknownissuer",
        "corrupt message",
        "invalidcontenttype",
    ];
    if tls_words.iter().any(|w| lower.contains(w)) {
        let hint = if opts.uses_tls() {
            "check that --etcd-ca is the CA that signed etcd's certificate and, if etcd \
             checks clients, --etcd-cert/--etcd-key"
        } else {
            "etcd may serve TLS: use etcds:// with --etcd-ca"
        };
        return Error::Tls {
            endpoint: endpoint.to_string(),
            message: format!("{text} ({hint})"),
        };
    }
    match map_error(endpoint, "connect", e) {
        // Nothing listens there: no TLS hint, which would mislead.
        Error::Unavailable { endpoint, .. } if is_refused(&text) => Error::Unavailable {
            endpoint,
            message: text,
        },
        // A plain client talking to a TLS port sees the connection dropped.
        Error::Unavailable { endpoint, message } if !opts.uses_tls() => Error::Unavailable {
            endpoint,
            message: format!("{message} (if etcd serves TLS, use etcds:// with --etcd-ca)"),
        },
        Error::Unavailable { endpoint, message } if opts.cert.is_none() => Error::Unavailable {
            endpoint,
            message: format!(
                "{message} (etcd closed the TLS connection: if it checks client \
                 certificates, give --etcd-cert and --etcd-key; or it does not serve TLS \
                 on that port)"
            ),
        },
        Error::Unavailable { endpoint, message } => Error::Unavailable {
            endpoint,
            message: format!("{message} (or etcd does not serve TLS on that port)"),
        },
        other => other,
    }
}

/// Maps an etcd-client error to ours. `what` names the request for the message.
fn map_error(endpoint: &str, what: &str, e: ec::Error) -> Error {
    let unavailable = |message: String| Error::Unavailable {
        endpoint: endpoint.to_string(),
        message: format!("{what}: {message}"),
    };
    match e {
        ec::Error::GRpcStatus(status) => {
            let msg = status.message();
            if msg.contains("required revision has been compacted") {
                // The caller fills in the revisions it knows.
                return Error::Compacted {
                    requested: 0,
                    compacted: 0,
                };
            }
            if msg.contains("requested lease not found") {
                return Error::LeaseNotFound(0);
            }
            if msg.contains("permission denied") {
                return Error::Auth {
                    endpoint: endpoint.to_string(),
                    message: format!(
                        "{what}: permission denied (the etcd user's role lacks access to \
                         that key; see `deployctl agent --help` for the keys an agent needs)"
                    ),
                };
            }
            if msg.contains("invalid auth token")
                || msg.contains("user name is empty")
                || msg.contains("authentication failed")
            {
                return Error::Auth {
                    endpoint: endpoint.to_string(),
                    message: format!("{what}: {}", msg.trim_start_matches("etcdserver: ")),
                };
            }
            // gRPC status codes (tonic is not re-exported, its `Code` converts to i32).
            const CANCELLED: i32 = 1;
            const UNKNOWN: i32 = 2;
            const DEADLINE_EXCEEDED: i32 = 4;
            const ABORTED: i32 = 10;
            const UNAVAILABLE: i32 = 14;
            match i32::from(status.code()) {
                CANCELLED | DEADLINE_EXCEEDED | ABORTED | UNAVAILABLE => {
                    unavailable(msg.to_string())
                }
                // Transport failures surface as `Unknown` with the transport's message.
                UNKNOWN if msg.contains("transport") || msg.contains("connect") => {
                    unavailable(msg.to_string())
                }
                _ => Error::Other(format!(
                    "{what} at {endpoint}: {}",
                    msg.trim_start_matches("etcdserver: ")
                )),
            }
        }
        ec::Error::TransportError(e) => unavailable(e.to_string()),
        ec::Error::IoError(e) => unavailable(e.to_string()),
        ec::Error::LeaseKeepAliveError(m) if m.contains("not found") => Error::LeaseNotFound(0),
        ec::Error::LeaseKeepAliveError(m) | ec::Error::WatchError(m) => unavailable(m),
        other => Error::Other(format!("{what} at {endpoint}: {other}")),
    }
}

fn convert_kv(kv: &ec::KeyValue) -> Result<KeyValue> {
    let key = String::from_utf8(kv.key().to_vec()).map_err(|_| Error::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        message: "key is not utf-8".into(),
    })?;
    Ok(KeyValue {
        key,
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    })
}

fn header_revision(header: Option<&ec::ResponseHeader>) -> i64 {
    header.map(|h| h.revision()).unwrap_or(0)
}

fn convert_compare(c: &Compare) -> ec::Compare {
    let op = match c.op {
        CompareOp::Equal => ec::CompareOp::Equal,
        CompareOp::NotEqual => ec::CompareOp::NotEqual,
        CompareOp::Greater => ec::CompareOp::Greater,
        CompareOp::Less => ec::CompareOp::Less,
    };
    match &c.target {
        CompareTarget::ModRevision(r) => ec::Compare::mod_revision(c.key.as_str(), op, *r),
        CompareTarget::CreateRevision(r) => ec::Compare::create_revision(c.key.as_str(), op, *r),
        CompareTarget::Value(v) => ec::Compare::value(c.key.as_str(), op, v.clone()),
    }
}

fn convert_op(op: &Op) -> ec::TxnOp {
    match op {
        Op::Put { key, value, lease } => {
            let opts = (*lease != 0).then(|| ec::PutOptions::new().with_lease(*lease));
            ec::TxnOp::put(key.as_str(), value.clone(), opts)
        }
        Op::Delete { key } => ec::TxnOp::delete(key.as_str(), None),
    }
}

/// The range end that selects every key starting with `prefix` (etcd's `GetPrefixRangeEnd`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Empty prefix, or all 0xff: every key from `prefix` on.
    vec![0]
}

#[async_trait]
impl Store for EtcdStore {
    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self
            .call(&format!("get {key}"), Pace::READ, |c| async move {
                kv(&c).get(key, None).await
            })
            .await?;
        resp.kvs().first().map(convert_kv).transpose()
    }

    async fn list(&self, prefix: &str, revision: Option<i64>) -> Result<(Vec<KeyValue>, i64)> {
        let end = prefix_end(prefix);
        // Empty prefix: etcd reads key "" as "from the first key" only with range_end \0.
        let mut start: Vec<u8> = if prefix.is_empty() {
            vec![0]
        } else {
            prefix.as_bytes().to_vec()
        };
        let mut at = revision.unwrap_or(0);
        let mut out = Vec::new();
        loop {
            let opts = ec::GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE)
                .with_revision(at);
            let resp = match self
                .call(&format!("list {prefix}"), Pace::READ, |c| {
                    let (start, opts) = (start.clone(), opts.clone());
                    async move { kv(&c).get(start, Some(opts)).await }
                })
                .await
            {
                Err(Error::Compacted { .. }) => {
                    return Err(Error::Compacted {
                        requested: at,
                        compacted: self.compacted_revision().await.unwrap_or(at),
                    })
                }
                other => other?,
            };
            if at == 0 {
                // Later pages read the same snapshot as the first.
                at = header_revision(resp.header());
            }
            for kv in resp.kvs() {
                out.push(convert_kv(kv)?);
            }
            match (resp.more(), out.last()) {
                (true, Some(last)) => {
                    start = last.key.as_bytes().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok((out, at))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        super::check_request_size(&txn)?;
        let what = match txn.ops.first() {
            Some(Op::Put { key, .. }) | Some(Op::Delete { key }) if txn.ops.len() == 1 => {
                format!("write {key}")
            }
            _ => format!("transaction of {} writes", txn.ops.len()),
        };
        let request = ec::Txn::new()
            .when(txn.compares.iter().map(convert_compare).collect::<Vec<_>>())
            .and_then(txn.ops.iter().map(convert_op).collect::<Vec<_>>());
        // Repeated by a retry, a transaction whose compares held the first time fails them
        // the second: an ambiguous attempt (timed out, connection lost) that did land is
        // then reported as a conflict, which callers handle by re-reading. Blind puts and
        // deletes leave the same state when repeated.
        let attempt = |c: ec::Client| {
            let request = request.clone();
            async move { kv(&c).txn(request).await }
        };
        let succeeded = |r: &ec::TxnResponse| r.succeeded();
        let resp = match self
            .call_until(&what, Pace::WRITE, succeeded, attempt)
            .await
        {
            Err(Error::LeaseNotFound(_)) => {
                let lease = txn
                    .ops
                    .iter()
                    .find_map(|op| match op {
                        Op::Put { lease, .. } if *lease != 0 => Some(*lease),
                        _ => None,
                    })
                    .unwrap_or(0);
                return Err(Error::LeaseNotFound(lease));
            }
            Err(Error::Other(m)) if m.contains("too many operations in txn") => {
                return Err(Error::Other(format!(
                    "{m} (etcd allows 128 by default: start it with a larger --max-txn-ops)"
                )))
            }
            other => other?,
        };
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: header_revision(resp.header()),
        })
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        let mut watch = Watch {
            store: self.clone(),
            endpoint: self.endpoint.clone(),
            prefix: prefix.to_string(),
            next_revision: from_revision.max(1),
            open: None,
            backoff: WATCH_BACKOFF_MIN,
            done: false,
        };
        // The first open is not retried: a caller with a bad store hears it at once.
        watch.open().await?;
        Ok(futures::stream::unfold(watch, |mut w| async move {
            let item = w.next_batch().await?;
            Some((item, w))
        })
        .boxed())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = lease_secs(ttl);
        // Repeated by a retry after an ambiguous attempt, a grant leaves an unused lease
        // behind, which expires after `ttl`.
        let resp = self
            .call("grant lease", Pace::WRITE, |c| async move {
                c.lease_client().grant(secs, None).await
            })
            .await?;
        if !resp.error().is_empty() {
            return Err(Error::Other(format!(
                "grant lease at {}: {}",
                self.endpoint,
                resp.error()
            )));
        }
        Ok(resp.id())
    }

    async fn grant_lease_id(&self, id: LeaseId, ttl: Duration) -> Result<bool> {
        let secs = lease_secs(ttl);
        let opts = ec::LeaseGrantOptions::new().with_id(id);
        // Repeated by a retry after an ambiguous attempt that did land, this reports the
        // lease as existing (`false`): true, and what a sharer of the id expects anyway.
        match self
            .call(&format!("grant lease {id}"), Pace::WRITE, |c| {
                let opts = opts.clone();
                async move { c.lease_client().grant(secs, Some(opts)).await }
            })
            .await
        {
            Ok(resp) if resp.error().is_empty() => Ok(true),
            Ok(resp) => Err(Error::Other(format!(
                "grant lease {id} at {}: {}",
                self.endpoint,
                resp.error()
            ))),
            Err(e) if e.to_string().contains("lease already exists") => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        // A stream per refresh, closed when it has answered: opening one costs etcd more than
        // a message on an open one, but an open stream is two goroutines that etcd's GC
        // scans on every cycle, and at 10,000 agents those scans cost more than the opening
        // (BENCHMARKS.md, "A keep-alive stream per refresh again"). Opening sends one
        // refresh and reads its answer; TTL 0 there means expired.
        match self
            .call(
                &format!("keep lease {lease} alive"),
                Pace::WRITE,
                |c| async move { c.lease_client().keep_alive(lease).await },
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::LeaseNotFound(_)) => Err(Error::LeaseNotFound(lease)),
            Err(e) => Err(e),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        // Repeated by a retry after an ambiguous attempt that did land, this reports
        // `LeaseNotFound`, which callers take as "gone", as it is.
        match self
            .call(
                &format!("revoke lease {lease}"),
                Pace::WRITE,
                |c| async move { c.lease_client().revoke(lease).await },
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::LeaseNotFound(_)) => Err(Error::LeaseNotFound(lease)),
            Err(e) => Err(e),
        }
    }

    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<LeaseTtl>> {
        let resp = match self
            .call(
                &format!("read the TTL of lease {lease}"),
                Pace::READ,
                |c| async move { c.lease_client().time_to_live(lease, None).await },
            )
            .await
        {
            Ok(resp) => resp,
            Err(Error::LeaseNotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        // etcd answers TTL -1 for a lease that has expired or never existed.
        if resp.ttl() < 0 {
            return Ok(None);
        }
        let secs = |s: i64| Duration::from_secs(u64::try_from(s).unwrap_or(0));
        Ok(Some(LeaseTtl {
            granted: secs(resp.granted_ttl()),
            remaining: secs(resp.ttl()),
        }))
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        // Physical: return only once the old revisions are really gone, so that a watch
        // from before `revision` started right after this call sees `Compacted`.
        let opts = ec::CompactionOptions::new().with_physical();
        match self
            .call(&format!("compact to {revision}"), Pace::WRITE, |c| {
                let opts = opts.clone();
                async move { kv(&c).compact(revision, Some(opts)).await }
            })
            .await
        {
            Ok(_) => Ok(()),
            // Already compacted at or past `revision`: nothing left to forget. (etcd says
            // ErrCompacted; the Store contract makes compaction idempotent, as a periodic
            // compactor may race another.)
            Err(Error::Compacted { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The state of one resuming watch.
struct Watch {
    /// The store, for its current client: a re-login swaps it.
    store: EtcdStore,
    endpoint: String,
    prefix: String,
    /// The first revision not yet delivered: where a re-opened watch starts.
    next_revision: i64,
    /// The live watch on the store's shared stream; dropping it cancels the watch.
    open: Option<mux::Sub>,
    /// The pause before the next re-open attempt; reset by every delivered batch.
    backoff: Duration,
    /// Set after `Compacted` was yielded: the stream ends.
    done: bool,
}

impl Watch {
    /// Opens an etcd watch from `next_revision`, on the store's shared stream.
    async fn open(&mut self) -> Result<()> {
        let key = if self.prefix.is_empty() {
            vec![0]
        } else {
            self.prefix.as_bytes().to_vec()
        };
        let what = format!("watch {}", self.prefix);
        let store = self.store.clone();
        let sub = store
            .inner
            .watches
            .subscribe(
                &store,
                &what,
                key,
                prefix_end(&self.prefix),
                self.next_revision,
            )
            .await?;
        self.open = Some(sub);
        Ok(())
    }

    /// The next batch of events, re-opening the watch as often as needed. `None`: ended.
    async fn next_batch(&mut self) -> Option<Result<Vec<WatchEvent>>> {
        if self.done {
            return None;
        }
        loop {
            let Some(sub) = self.open.as_mut() else {
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(WATCH_BACKOFF_MAX);
                match self.open().await {
                    // Retrying cannot help: say so once and end.
                    Err(Error::Other(m)) if m.contains("permission denied") => {
                        self.done = true;
                        return Some(Err(Error::Other(m)));
                    }
                    // Still failing at the longest pause: worth a person's attention.
                    Err(e) if self.backoff == WATCH_BACKOFF_MAX => {
                        tracing::warn!(prefix = %self.prefix, error = %e, "cannot re-open watch; retrying")
                    }
                    Err(e) => {
                        tracing::debug!(prefix = %self.prefix, error = %e, "re-opening watch failed")
                    }
                    Ok(()) => {
                        tracing::debug!(prefix = %self.prefix, from = self.next_revision, "watch re-opened")
                    }
                }
                continue;
            };
            let resp = match sub.next().await {
                mux::Msg::Resp(resp) => resp,
                mux::Msg::Broken(why) => {
                    tracing::debug!(prefix = %self.prefix, %why, "watch broke; re-opening");
                    self.open = None;
                    continue;
                }
            };
            if resp.compact_revision() > 0 {
                self.done = true;
                self.open = None;
                return Some(Err(Error::Compacted {
                    requested: self.next_revision,
                    compacted: resp.compact_revision(),
                }));
            }
            if resp.canceled() {
                let reason = resp.cancel_reason().to_string();
                self.open = None;
                if reason.contains("permission denied") {
                    // Retrying cannot help: say so once and end.
                    self.done = true;
                    return Some(Err(Error::Other(format!(
                        "watch {} at {}: {}",
                        self.prefix,
                        self.endpoint,
                        reason.trim_start_matches("etcdserver: ")
                    ))));
                }
                // Cancelled for another reason (e.g. the member lost its leader): resume.
                tracing::warn!(prefix = %self.prefix, %reason, "watch cancelled by etcd; re-opening");
                continue;
            }
            if resp.events().is_empty() {
                // A progress notification or a late "created": nothing to deliver.
                continue;
            }
            let mut events = Vec::with_capacity(resp.events().len());
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let kv = match convert_kv(kv) {
                    Ok(kv) => kv,
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping watch event with a bad key");
                        continue;
                    }
                };
                let kind = match ev.event_type() {
                    ec::EventType::Put => EventType::Put,
                    ec::EventType::Delete => EventType::Delete,
                };
                events.push(WatchEvent { kind, kv });
            }
            // etcd never splits one revision across responses (without `fragment`), so
            // resuming after the last delivered revision loses nothing and repeats nothing.
            if let Some(last) = resp.events().iter().rev().find_map(|e| e.kv()) {
                self.next_revision = self.next_revision.max(last.mod_revision() + 1);
            }
            self.backoff = WATCH_BACKOFF_MIN;
            if events.is_empty() {
                continue;
            }
            return Some(Ok(events));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_should_be_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[tokio::test]
    async fn connect_should_fail_fast_and_name_an_unreachable_endpoint() {
        // A port nobody listens on: bind one, learn its number, close it.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback bind works");
            l.local_addr().expect("bound socket has an address").port()
        };
        let endpoint = format!("127.0.0.1:{port}");
        let started = std::time::Instant::now();
        let err = EtcdStore::connect(std::slice::from_ref(&endpoint))
            .await
            .expect_err("nothing listens there");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "took {:?}",
            started.elapsed()
        );
        match &err {
            Error::Unavailable { endpoint: e, .. } => assert!(e.contains(&endpoint)),
            other => panic!("want Unavailable, got {other:?}"),
        }
        assert!(err.to_string().contains(&endpoint), "{err}");
    }

    #[tokio::test]
    async fn connect_should_time_out_on_a_server_that_never_answers() {
        // Accepts TCP (the kernel's backlog does) but never speaks HTTP/2.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback bind works");
        let endpoint = silent
            .local_addr()
            .expect("bound socket has an address")
            .to_string();
        let started = std::time::Instant::now();
        let err = EtcdStore::connect(std::slice::from_ref(&endpoint))
            .await
            .expect_err("nothing answers there");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(8), "took {took:?}");
        assert!(
            took >= CONNECT_TIMEOUT / 2,
            "failed suspiciously fast: {err}"
        );
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
        assert!(err.to_string().contains(&endpoint), "{err}");
    }

    /// A gauge from etcd's /metrics, e.g. `etcd_debugging_mvcc_watch_stream_total`.
    async fn gauge(etcd: &crate::testing::EtcdServer, name: &str) -> f64 {
        let body = reqwest::get(format!("http://{}/metrics", etcd.endpoint()))
            .await
            .expect("etcd serves /metrics")
            .text()
            .await
            .expect("a metrics body");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in etcd's metrics"))
    }

    /// Waits until `gauge` reads `want`, for at most 10 s.
    async fn wait_gauge(etcd: &crate::testing::EtcdServer, name: &str, want: f64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = gauge(etcd, name).await;
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} is {got}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The next batch of a watch, within 20 s.
    async fn next_batch(w: &mut WatchStream) -> Vec<WatchEvent> {
        tokio::time::timeout(Duration::from_secs(20), w.next())
            .await
            .expect("an event within the deadline")
            .expect("the watch goes on")
            .expect("no error")
    }

    #[tokio::test]
    async fn watches_of_one_store_should_share_one_etcd_stream_and_survive_a_restart() {
        const STREAMS: &str = "etcd_debugging_mvcc_watch_stream_total";
        const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";
        let mut etcd = crate::testing::EtcdServer::start();
        let store = EtcdStore::connect(&[etcd.endpoint()])
            .await
            .expect("the test etcd answers");
        let mut watches = Vec::new();
        for i in 0..40 {
            watches.push(store.watch(&format!("/m/{i}/"), 1).await.expect("watch"));
        }
        // One stream; 40 watches plus the anchor that opened it.
        assert_eq!(gauge(&etcd, STREAMS).await, 1.0);
        assert_eq!(gauge(&etcd, WATCHERS).await, 41.0);
        assert_eq!(store.inner.watches.watches(), 40);

        // Each watch sees its own prefix only, in order.
        for i in 0..40 {
            store
                .put(&format!("/m/{i}/k"), format!("a{i}").into_bytes())
                .await
                .expect("put");
        }
        for (i, w) in watches.iter_mut().enumerate() {
            let events = next_batch(w).await;
            let keys: Vec<&str> = events.iter().map(|e| e.kv.key.as_str()).collect();
            assert_eq!(keys, vec![format!("/m/{i}/k")], "watch {i}");
        }

        // Dropping a watch cancels it on the stream.
        watches.truncate(10);
        wait_gauge(&etcd, WATCHERS, 11.0).await;
        assert_eq!(store.inner.watches.watches(), 10);

        // etcd restarts: every watch resumes on one new stream, losing nothing written
        // meanwhile and repeating nothing.
        etcd.restart();
        for i in 0..10 {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while let Err(e) = store
                .put(&format!("/m/{i}/k"), format!("b{i}").into_bytes())
                .await
            {
                assert!(
                    e.is_transient() && std::time::Instant::now() < deadline,
                    "still failing: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for (i, w) in watches.iter_mut().enumerate() {
            let events = next_batch(w).await;
            let values: Vec<&[u8]> = events.iter().map(|e| e.kv.value.as_slice()).collect();
            assert_eq!(values, vec![format!("b{i}").as_bytes()], "watch {i}");
        }
        assert_eq!(gauge(&etcd, STREAMS).await, 1.0);
        assert_eq!(gauge(&etcd, WATCHERS).await, 11.0);
    }

    #[tokio::test]
    async fn a_user_should_stay_logged_in_across_an_etcd_restart() {
        let mut etcd = crate::testing::EtcdServer::start();
        let mut admin = ec::Client::connect([etcd.endpoint()], None)
            .await
            .expect("the test etcd answers");
        admin
            .user_add("root", "pw", None)
            .await
            .expect("user added");
        admin
            .user_grant_role("root", "root")
            .await
            .expect("role granted");
        admin.auth_enable().await.expect("auth enabled");
        let opts = EtcdOptions {
            user: Some("root".into()),
            password: Some("pw".into()),
            ..EtcdOptions::default()
        };
        let store = EtcdStore::connect_with(&[etcd.endpoint()], &opts)
            .await
            .expect("root logs in");
        store.put("/t/k", b"v".to_vec()).await.expect("put");
        let mut watch = store.watch("/t/", 1).await.expect("watch");
        assert!(watch.next().await.is_some(), "the watch sees the put");

        // etcd forgets every token when it restarts.
        etcd.restart();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let last = loop {
            match store.get("/t/k").await {
                Ok(Some(kv)) => break kv,
                Ok(None) => panic!("the key is gone after a restart"),
                Err(e) => {
                    assert!(
                        e.is_transient() && std::time::Instant::now() < deadline,
                        "still failing: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert_eq!(last.value, b"v");
        // The watch logs in again too and sees a new write.
        store
            .put("/t/k", b"w".to_vec())
            .await
            .expect("put after restart");
        let events = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .expect("the watch delivers within the deadline")
            .expect("the watch goes on")
            .expect("no error");
        assert_eq!(
            events.last().map(|e| e.kv.value.clone()),
            Some(b"w".to_vec())
        );
    }
}

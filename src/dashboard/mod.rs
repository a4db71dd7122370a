//! `deployctl dashboard`: a live web view of the fleet, and the rollout actions for a
//! signed-in user.
//!
//! # Layout
//! - this file: the HTTP server (hyper), its limits, the routes and their answers;
//! - [`model`]: informers on the store and the tables of rows each page shows, with the
//!   sequence numbers that let a client be sent diffs;
//! - [`rows`]: what a page shows of an object, as JSON. Pure;
//! - [`stream`]: one client's Server-Sent Events;
//! - [`auth`]: the token, the session cookie, `Host` and `Origin`. Pure;
//! - [`assets`]: the page itself (HTML, CSS, JS), embedded in the binary.
//!
//! The page is one HTML document and one script with no framework and no build step:
//! it renders rows it is sent with `textContent`, never as markup.

pub mod assets;
pub mod auth;
pub mod model;
pub mod rows;
pub mod stream;

use crate::api::request::Request as RolloutRequest;
use crate::api::{validation::check_name, Rollout};
use crate::store::{Client, Error as StoreError};
use crate::webhook::limit::RateLimits;
use auth::Access;
use auth::Credential;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use model::{Model, Topic};
use serde_json::json;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Where `deployctl dashboard` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3100";
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 128;
/// Live streams at once (a browser tab holds one); more are answered 503.
pub const MAX_STREAMS: usize = 64;
/// A request's line and headers.
pub const MAX_HEADER_BYTES: usize = 16 << 10;
/// How long a client may take to send its headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body (a sign-in or an action's arguments).
pub const MAX_BODY_BYTES: usize = 4 << 10;
/// How long a client may take to send its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an action's store write may take.
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Machines whose heartbeat one request may ask for (the page shows 200 at a time).
pub const MAX_HEARTBEATS: usize = 200;
/// How long the heartbeats of one request may take to read.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// Wrong tokens and unknown sessions one address may present per minute; past them even
/// a right one is refused until the minute is over.
pub const FAILED_AUTH_PER_MINUTE: u32 = 10;
/// Heartbeat lookups one address may ask for per minute (an open Machines page asks
/// every 10 s and when its rows change).
pub const HEARTBEAT_ASKS_PER_MINUTE: u32 = 60;
/// Live streams one address may hold (a proxy in front makes every user one address).
pub const MAX_STREAMS_PER_SOURCE: usize = 16;
/// How long a connection is served: a stream's lifetime and a minute more, so that a
/// client that stopped reading a stream is cut off.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(31 * 60);

/// The Content-Security-Policy of every answer: the page's own script and style only,
/// no inline script, no frames, no other origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

type Body = BoxBody<Bytes, Infallible>;

/// How `deployctl dashboard` runs.
pub struct DashboardConfig {
    pub access: Access,
}

struct Shared {
    client: Client,
    model: Arc<Model>,
    access: Access,
    streams: StreamSlots,
    sessions: auth::Sessions,
    /// Failed sign-ins and wrong credentials, per source address.
    failures: Mutex<RateLimits>,
    /// Heartbeat lookups (each up to 200 store reads), per source address.
    heartbeat_asks: Mutex<RateLimits>,
    shutdown: CancellationToken,
}

/// The caps on live streams: [`MAX_STREAMS`] in all, [`MAX_STREAMS_PER_SOURCE`] per
/// source address.
struct StreamSlots {
    all: Arc<Semaphore>,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// A stream's place in [`StreamSlots`], given back when the stream ends.
pub struct StreamSlot {
    _permit: OwnedSemaphorePermit,
    source: IpAddr,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl StreamSlots {
    fn take(&self, source: IpAddr) -> Result<StreamSlot, String> {
        let mut counts = self
            .per_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(source).or_default();
        if *n >= MAX_STREAMS_PER_SOURCE {
            return Err(format!(
                "too many live pages open from {source} (at most {MAX_STREAMS_PER_SOURCE}): close some tabs"
            ));
        }
        let permit = self.all.clone().try_acquire_owned().map_err(|_| {
            format!("too many live pages open (at most {MAX_STREAMS}): close some tabs")
        })?;
        *n += 1;
        Ok(StreamSlot {
            _permit: permit,
            source,
            per_source: self.per_source.clone(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self
            .per_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// Watches the store and serves on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    client: Client,
    config: DashboardConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let model = Model::start(client.clone(), shutdown.clone());
    let shared = Arc::new(Shared {
        client,
        model,
        access: config.access,
        streams: StreamSlots {
            all: Arc::new(Semaphore::new(MAX_STREAMS)),
            per_source: Arc::default(),
        },
        sessions: auth::Sessions::default(),
        failures: Mutex::new(RateLimits::new(FAILED_AUTH_PER_MINUTE)),
        heartbeat_asks: Mutex::new(RateLimits::new(HEARTBEAT_ASKS_PER_MINUTE)),
        shutdown: shutdown.clone(),
    });
    let conn_shutdown = shutdown.clone();
    let mut conns = crate::webhook::accept::accept_loop(
        &listener,
        MAX_CONNECTIONS,
        &shutdown,
        move |stream, peer| {
            let shared = shared.clone();
            let shutdown = conn_shutdown.clone();
            async move {
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(answer(&shared, peer, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_HEADER_BYTES)
                    .serve_connection(TokioIo::new(stream), service);
                // A stream ends at its lifetime only when its client reads; one that stopped
                // reading is cut here.
                tokio::select! {
                    r = tokio::time::timeout(CONNECTION_LIFETIME, conn) => match r {
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
                        Err(_) => tracing::debug!(%peer, "connection closed at its lifetime"),
                        Ok(Ok(())) => {}
                    },
                    _ = shutdown.cancelled() => {}
                }
            }
        },
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// Adds the headers every answer carries.
fn secure(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_answer(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    full(status, "application/json", body.to_string())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json_answer(status, json!({ "error": message.into() }))
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// One request's answer.
async fn answer(shared: &Shared, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    secure(route(shared, peer, req).await)
}

async fn route(shared: &Shared, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let access = &shared.access;
    let host = header_str(&req, header::HOST).map(str::to_string);
    if !access.host_allowed(host.as_deref()) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown Host: open the dashboard at the address it printed",
        );
    }
    let now = Instant::now();
    let src = source(peer);
    let session = header_str(&req, header::HeaderName::from_static(auth::SESSION_HEADER))
        .map(str::to_string)
        .or_else(|| query_value(req.uri().query().unwrap_or(""), "session"));
    let credential = access.credential(
        header_str(&req, header::AUTHORIZATION),
        session.as_deref(),
        &shared.sessions,
        now,
    );
    if credential != Credential::None {
        // Guessing a token or a session id costs a try of the source's few a minute, and
        // once they are spent even a right guess is not told apart.
        let mut failures = shared
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if failures.exhausted(src, now) {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many wrong tokens or sessions from this address: wait a minute",
            );
        }
        if credential == Credential::Invalid {
            failures.allow(src, now);
        }
    }
    let signed_in = credential == Credential::Valid;
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    // The page and its assets need no session: the sign-in form is part of it.
    if let Some(asset) = assets::find(&path) {
        if method != Method::GET && method != Method::HEAD {
            return error(StatusCode::METHOD_NOT_ALLOWED, "only GET");
        }
        let mut r = full(StatusCode::OK, asset.content_type, asset.body);
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return r;
    }
    match (method.clone(), path.as_str()) {
        (Method::GET, "/healthz") => return full(StatusCode::OK, "text/plain", "ok\n"),
        (Method::GET, "/api/config") => {
            return json_answer(
                StatusCode::OK,
                json!({
                    "signInNeeded": access.reads_need_session && !signed_in,
                    "canSignIn": access.can_sign_in(),
                    "signedIn": signed_in,
                    "actions": access.actions_allowed && signed_in,
                    "actionsAllowed": access.actions_allowed,
                    "synced": shared.model.synced(),
                }),
            )
        }
        (Method::POST, "/api/login") => return sign_in(shared, peer, req).await,
        (Method::POST, "/api/logout") => {
            if !auth::same_origin(header_str(&req, header::ORIGIN), host.as_deref()) {
                return error(StatusCode::FORBIDDEN, "cross-origin request refused");
            }
            if let Some(id) = &session {
                shared.sessions.close(id);
            }
            return json_answer(StatusCode::OK, json!({}));
        }
        _ => {}
    }
    if access.reads_need_session && !signed_in {
        return error(
            StatusCode::UNAUTHORIZED,
            "sign in with the dashboard's token",
        );
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["api", "stream"]) => live(shared, src, req.uri().query().unwrap_or("")),
        (Method::GET, ["api", "heartbeats"]) => {
            let allowed = shared
                .heartbeat_asks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .allow(src, now);
            if !allowed {
                return error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many heartbeat lookups from this address: wait a few seconds",
                );
            }
            heartbeats(shared, req.uri().query().unwrap_or("")).await
        }
        (Method::GET, ["api", "namespaces", ns, "rollouts", name, "machines"]) => {
            group_machines(shared, ns, name, req.uri().query().unwrap_or(""))
        }
        (Method::POST, ["api", "namespaces", ns, "rollouts", name, "actions", verb]) => {
            let (ns, name, verb) = (ns.to_string(), name.to_string(), verb.to_string());
            if !access.actions_allowed {
                return error(
                    StatusCode::FORBIDDEN,
                    "actions are off: start the dashboard with --allow-actions and --token-file",
                );
            }
            if !signed_in {
                return error(
                    StatusCode::FORBIDDEN,
                    "sign in with the dashboard's token to act",
                );
            }
            if !auth::same_origin(header_str(&req, header::ORIGIN), host.as_deref()) {
                return error(StatusCode::FORBIDDEN, "cross-origin request refused");
            }
            action(shared, peer, &ns, &name, &verb, req).await
        }
        (Method::GET | Method::POST, _) => {
            error(StatusCode::NOT_FOUND, format!("no such page: {path}"))
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST"),
    }
}

/// The query's value of `key`, percent-decoded.
fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// `GET /api/stream?topic=rollouts|machines|events|rollout&namespace=NS&name=NAME`.
fn live(shared: &Shared, src: IpAddr, query: &str) -> Response<Body> {
    let topic = match query_value(query, "topic").as_deref() {
        Some("rollouts") => Topic::Rollouts,
        Some("machines") => Topic::Machines,
        Some("events") => Topic::Events,
        Some("rollout") => {
            let ns = query_value(query, "namespace").unwrap_or_else(|| "default".into());
            let name = query_value(query, "name").unwrap_or_default();
            for (what, v) in [("namespace", &ns), ("name", &name)] {
                if let Err(e) = check_name(v) {
                    return error(StatusCode::BAD_REQUEST, format!("{what}: {e}"));
                }
            }
            Topic::Rollout {
                namespace: ns,
                name,
            }
        }
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("topic {other:?}: use rollouts, machines, events or rollout"),
            )
        }
    };
    let permit = match shared.streams.take(src) {
        Ok(p) => p,
        Err(why) => return error(StatusCode::SERVICE_UNAVAILABLE, why),
    };
    let events = stream::events(shared.model.clone(), topic, permit, shared.shutdown.clone())
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(events)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// `GET /api/namespaces/NS/rollouts/NAME/machines?version=V&state=S&offset=N`: one page
/// of a grid group's machines (`version` empty or `-`: machines with no version).
fn group_machines(shared: &Shared, ns: &str, name: &str, query: &str) -> Response<Body> {
    for (what, v) in [("namespace", ns), ("name", name)] {
        if let Err(e) = check_name(v) {
            return error(StatusCode::BAD_REQUEST, format!("{what}: {e}"));
        }
    }
    let Some(r) = shared.model.rollouts.get(Some(ns), name) else {
        return error(StatusCode::NOT_FOUND, format!("no rollout {ns}/{name}"));
    };
    let state = query_value(query, "state").unwrap_or_default();
    let Some(state) = rows::GridState::parse(&state) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("state {state:?}: not a grid state"),
        );
    };
    let version = query_value(query, "version").filter(|v| !v.is_empty() && v != "-");
    let offset = match query_value(query, "offset").map(|o| o.parse::<usize>()) {
        None => 0,
        Some(Ok(o)) => o,
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "offset: not a number"),
    };
    let instances = shared.model.instances.filter(|i| {
        i.spec.application == r.spec.application && i.metadata.namespace == r.metadata.namespace
    });
    let machines = |m: &str| shared.model.machines.get(None, m);
    let page = rows::group_page(
        instances.iter().map(|i| &**i),
        &machines,
        &rows::target_of(&r),
        version.as_deref(),
        state,
        offset,
        chrono::Utc::now(),
    );
    json_answer(StatusCode::OK, page)
}

/// `GET /api/heartbeats?names=a,b,...`: the last heartbeat of each (at most
/// [`MAX_HEARTBEATS`]), read from its agent's lease as `describe machine` reads it. The
/// page asks for the machines it shows.
async fn heartbeats(shared: &Shared, query: &str) -> Response<Body> {
    let names_text = query_value(query, "names").unwrap_or_default();
    let names: Vec<&str> = names_text.split(',').filter(|n| !n.is_empty()).collect();
    if names.len() > MAX_HEARTBEATS {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "names: {} machines; ask for at most {MAX_HEARTBEATS}",
                names.len()
            ),
        );
    }
    for n in &names {
        if let Err(e) = check_name(n) {
            return error(StatusCode::BAD_REQUEST, format!("names: {n:?}: {e}"));
        }
    }
    let now = chrono::Utc::now();
    // Each name once, and only Machines the dashboard knows: no store read for others.
    let names: std::collections::BTreeSet<String> = names.into_iter().map(str::to_string).collect();
    let (client, machines) = (shared.client.clone(), shared.model.machines.clone());
    let read = futures::stream::iter(names)
        .map(move |name| {
            let (client, machines) = (client.clone(), machines.clone());
            async move {
                if machines.get(None, &name).is_none() {
                    return (name, serde_json::Value::String("unknown machine".into()));
                }
                let text = match client.presence(&name).await {
                    Ok(p) => {
                        let m = machines.get(None, &name);
                        rows::heartbeat(p.as_ref(), m.as_deref(), now)
                    }
                    Err(e) => format!("unknown: {e}"),
                };
                (name, serde_json::Value::String(text))
            }
        })
        .buffer_unordered(16)
        .collect::<serde_json::Map<String, serde_json::Value>>();
    match tokio::time::timeout(HEARTBEAT_TIMEOUT, read).await {
        Ok(map) => json_answer(StatusCode::OK, serde_json::Value::Object(map)),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the store did not answer within {}s",
                HEARTBEAT_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// Reads a small body, bounded in size and time.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let read = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body: larger than {MAX_BODY_BYTES} bytes"),
        )),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {e}"),
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!("body: not received within {}s", BODY_TIMEOUT.as_secs()),
        )),
    }
}

/// `POST /api/login` with `{"token": "..."}`: sets the session cookie.
async fn sign_in(shared: &Shared, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let host = header_str(&req, header::HOST).map(str::to_string);
    if !auth::same_origin(header_str(&req, header::ORIGIN), host.as_deref()) {
        return error(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    if !shared.access.can_sign_in() {
        return error(
            StatusCode::FORBIDDEN,
            "this dashboard has no token: start it with --token-file to sign in",
        );
    }
    let now = Instant::now();
    let src = source(peer);
    if shared
        .failures
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .exhausted(src, now)
    {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong tokens from this address: wait a minute",
        );
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SignIn {
        token: String,
    }
    let given: SignIn = match serde_json::from_slice(&body) {
        Ok(g) => g,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    if !shared.access.token_matches(given.token.trim().as_bytes()) {
        shared
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .allow(src, now);
        tracing::warn!(%peer, "refused a dashboard sign-in with a wrong token");
        return error(StatusCode::FORBIDDEN, "wrong token");
    }
    let session = shared.sessions.open(now);
    json_answer(
        StatusCode::OK,
        json!({ "signedIn": true, "session": session, "expiresInSeconds": auth::SESSION_TTL.as_secs() }),
    )
}

/// The address a rate limit counts: IPv4 (also when mapped into IPv6, as a `[::]`
/// listener sees it), or IPv6 by its /64, as one host usually has one.
fn source(peer: SocketAddr) -> IpAddr {
    match peer.ip().to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The request a verb names; `undo` may carry `{"toRevision": N}`.
fn parse_action(verb: &str, body: &[u8]) -> Result<(RolloutRequest, Seen), String> {
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Args {
        to_revision: Option<u32>,
        generation: Option<i64>,
        step: Option<u32>,
    }
    let args: Args = if body.iter().all(u8::is_ascii_whitespace) {
        Args::default()
    } else {
        serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?
    };
    if args.to_revision.is_some() && verb != "undo" {
        return Err("body.toRevision: only undo takes a revision".into());
    }
    if args.to_revision == Some(0) {
        return Err("body.toRevision: revisions start at 1".into());
    }
    let seen = Seen {
        generation: args.generation,
        step: args.step,
    };
    let request = match verb {
        "pause" => RolloutRequest::Pause,
        "resume" => RolloutRequest::Resume,
        "promote" => RolloutRequest::Promote { full: false },
        "promote-full" => RolloutRequest::Promote { full: true },
        "abort" => RolloutRequest::Abort,
        "retry" => RolloutRequest::Retry,
        "undo" => RolloutRequest::Undo {
            to_revision: args.to_revision,
        },
        other => {
            return Err(format!(
                "action {other:?}: use promote, promote-full, pause, resume, abort, retry or undo"
            ))
        }
    };
    Ok((request, seen))
}

/// What the page showed when the user clicked: an action applies only to that, so a
/// stale page cannot promote past a gate it did not see, nor a second click undo the
/// first one's undo. `None`: not checked (a script that does not say).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `status.currentStepIndex`.
    pub step: Option<u32>,
}

impl Seen {
    /// `Err` saying what changed when `r` is no longer what was seen.
    pub fn check(&self, r: &Rollout) -> Result<(), String> {
        if let Some(g) = self.generation {
            if r.metadata.generation != Some(g) {
                return Err(format!(
                    "the rollout changed since the page showed it (generation {g}, now {}): \
                     look again",
                    r.metadata.generation.unwrap_or(0)
                ));
            }
        }
        if let Some(step) = self.step {
            let now = r.status.as_ref().and_then(|s| s.current_step_index);
            if now != Some(step) {
                return Err(format!(
                    "the rollout moved on since the page showed it (step {}, now {}): look again",
                    step + 1,
                    now.map_or("none".to_string(), |i| (i + 1).to_string())
                ));
            }
        }
        Ok(())
    }
}

/// `POST /api/namespaces/NS/rollouts/NAME/actions/VERB`: the CLI's request, written as
/// the CLI writes it (one compare-and-swap update, retried from fresh state).
async fn action(
    shared: &Shared,
    peer: SocketAddr,
    ns: &str,
    name: &str,
    verb: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    for (what, v) in [("namespace", ns), ("name", name)] {
        if let Err(e) = check_name(v) {
            return error(StatusCode::BAD_REQUEST, format!("{what}: {e}"));
        }
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (request, seen) = match parse_action(verb, &body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let client = &shared.client;
    let write = async {
        if matches!(request, RolloutRequest::Promote { .. }) {
            let current = client.get::<Rollout>(Some(ns), name).await?;
            if let Some(why) = current.as_ref().and_then(|r| request.nothing_to_do(r)) {
                return Ok(Ok((false, why)));
            }
        }
        let token = uuid::Uuid::new_v4().to_string();
        let now = chrono::Utc::now();
        let mut outcome: Result<String, String> = Err(String::new());
        client
            .update::<Rollout>(Some(ns), name, |r| {
                outcome = seen.check(r).and_then(|()| request.apply(r, &token, now));
            })
            .await?;
        Ok::<_, StoreError>(outcome.map(|m| (true, m)))
    };
    let result = match tokio::time::timeout(ACTION_TIMEOUT, write).await {
        Ok(r) => r,
        Err(_) => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the store did not answer within {}s",
                    ACTION_TIMEOUT.as_secs()
                ),
            )
        }
    };
    match result {
        Ok(Ok((changed, message))) => {
            tracing::info!(%peer, rollout = %format!("{ns}/{name}"), action = request.verb(),
                changed, "dashboard action");
            json_answer(
                StatusCode::OK,
                json!({ "changed": changed, "message": message }),
            )
        }
        Ok(Err(why)) => error(StatusCode::CONFLICT, format!("cannot {verb}: {why}")),
        Err(StoreError::NotFound(_)) => {
            error(StatusCode::NOT_FOUND, format!("no rollout {ns}/{name}"))
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Object;

    #[test]
    fn an_action_should_be_one_of_the_cli_verbs_with_only_undo_taking_a_revision() {
        assert_eq!(
            parse_action("promote", b"").unwrap().0,
            RolloutRequest::Promote { full: false }
        );
        assert_eq!(
            parse_action("promote-full", b" ").unwrap().0,
            RolloutRequest::Promote { full: true }
        );
        assert_eq!(
            parse_action("undo", br#"{"toRevision": 2}"#).unwrap().0,
            RolloutRequest::Undo {
                to_revision: Some(2)
            }
        );
        assert!(parse_action("pause", br#"{"toRevision": 2}"#)
            .unwrap_err()
            .contains("only undo"));
        assert!(parse_action("undo", br#"{"toRevision": 0}"#)
            .unwrap_err()
            .contains("start at 1"));
        assert!(parse_action("undo", br#"{"x": 1}"#)
            .unwrap_err()
            .starts_with("body:"));
        assert!(parse_action("delete", b"")
            .unwrap_err()
            .contains("use promote"));
        assert!(
            parse_action("restart", b"").is_err(),
            "not a dashboard action"
        );
    }

    #[test]
    fn an_action_should_apply_only_to_the_rollout_the_page_showed() {
        let (_, seen) = parse_action("promote", br#"{"generation": 3, "step": 1}"#).unwrap();
        assert_eq!(
            seen,
            Seen {
                generation: Some(3),
                step: Some(1)
            }
        );
        let mut r = Rollout::new(
            "api",
            crate::api::RolloutSpec {
                application: "api".into(),
                version: "v2".into(),
                ..Default::default()
            },
        );
        r.metadata.generation = Some(3);
        r.status = Some(crate::api::RolloutStatus {
            current_step_index: Some(1),
            ..Default::default()
        });
        assert_eq!(seen.check(&r), Ok(()));
        r.status.as_mut().unwrap().current_step_index = Some(2);
        assert!(seen.check(&r).unwrap_err().contains("step 2, now 3"));
        r.metadata.generation = Some(4);
        assert!(seen.check(&r).unwrap_err().contains("generation 3, now 4"));
        assert_eq!(
            Seen::default().check(&r),
            Ok(()),
            "a script that does not say"
        );
    }

    #[test]
    fn a_query_value_should_be_percent_decoded() {
        assert_eq!(
            query_value("topic=rollout&name=a%2Fb&x", "name").as_deref(),
            Some("a/b")
        );
        assert_eq!(query_value("x", "x").as_deref(), Some(""));
        assert_eq!(query_value("a=1", "b"), None);
    }
}

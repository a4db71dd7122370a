//! `deployctl webhook`: the build trigger. A CI job or a registry relay POSTs a signed
//! version to `/v1/namespaces/NS/rollouts/NAME/version`, and the Rollout's
//! `spec.version` (and `spec.sha256`) is set the way `set version` sets it.
//!
//! # Layout
//! - this file: the HTTP server (hyper), its limits, and the answers.
//! - [`payload`]: reading a body (generic JSON or Docker Hub's) into a version. Pure.
//! - [`limit`]: the per-source rate limit. Pure, given the time.
//! - [`accept`]: the accept loop this server and the dashboard share.

pub mod accept;
pub mod limit;
pub mod payload;

use crate::api::{validation::check_name, Rollout};
use crate::signing;
use crate::store::{Client, Error as StoreError};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Largest body accepted: a version and a digest, or Docker Hub's payload, fit many times.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a client may take to send its request line and headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its body, once its headers are in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take from its headers to its answer (body and store write).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;

/// How `deployctl webhook` runs.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The HMAC key every request is signed with.
    pub secret: Vec<u8>,
    /// Requests each source address may make per minute (and at once, in a burst).
    pub per_minute: u32,
}

struct Shared {
    client: Client,
    config: WebhookConfig,
    limits: Mutex<limit::RateLimits>,
}

/// Serves on `listener` until `shutdown`; requests in flight then get
/// [`REQUEST_TIMEOUT`] to finish.
pub async fn serve(
    listener: TcpListener,
    client: Client,
    config: WebhookConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        limits: Mutex::new(limit::RateLimits::new(config.per_minute)),
        client,
        config,
    });
    let mut conns = accept::accept_loop(&listener, MAX_CONNECTIONS, &shutdown, |stream, peer| {
        let shared = shared.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&shared, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// An answer: a status and a small JSON body.
fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&body).expect("a JSON value always serializes"),
    )));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": message.into() }))
}

/// The `NS` and `NAME` of `/v1/namespaces/NS/rollouts/NAME/version`.
pub fn route(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v1/namespaces/")?;
    let (ns, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("rollouts/")?;
    let (name, tail) = rest.split_once('/')?;
    (tail == "version" && !ns.is_empty() && !name.is_empty()).then_some((ns, name))
}

/// One request, start to answer, within [`REQUEST_TIMEOUT`].
async fn answer(
    shared: &Shared,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let allowed = shared
        .limits
        .lock()
        .expect("the rate limit lock is never poisoned: no panics inside")
        .allow(peer.ip(), Instant::now());
    if !allowed {
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "rate limit: at most {} requests a minute from one address",
                shared.config.per_minute
            ),
        );
        resp.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("60"),
        );
        return resp;
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, handle(shared, peer, req)).await {
        Ok(resp) => resp,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request took longer than {}s",
                REQUEST_TIMEOUT.as_secs()
            ),
        ),
    }
}

async fn handle(
    shared: &Shared,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some((ns, name)) = route(req.uri().path()) else {
        return error(
            StatusCode::NOT_FOUND,
            "no such endpoint: POST /v1/namespaces/NS/rollouts/NAME/version",
        );
    };
    let (ns, name) = (ns.to_string(), name.to_string());
    if req.method() != Method::POST {
        let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "only POST is allowed");
        resp.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("POST"),
        );
        return resp;
    }
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (timestamp, signature) = (
        header(signing::TIMESTAMP_HEADER),
        header(signing::SIGNATURE_HEADER),
    );
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let read = Limited::new(req.into_body(), MAX_BODY_BYTES).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!("body: not received within {}s", BODY_TIMEOUT.as_secs()),
            )
        }
    };
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = signing::verify(
        &shared.config.secret,
        timestamp.as_deref(),
        signature.as_deref(),
        &body,
        now,
    ) {
        tracing::warn!(%peer, error = %e, "refused an unsigned or badly signed request");
        return error(StatusCode::UNAUTHORIZED, e.to_string());
    }
    let wanted = match payload::parse(&body) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // A name that cannot exist names no Rollout.
    if check_name(&ns).is_err() || check_name(&name).is_err() {
        return not_found(&ns, &name);
    }
    let mut changed = false;
    let res = shared
        .client
        .update::<Rollout>(Some(&ns), &name, |r| {
            changed = r
                .spec
                .set_version(&wanted.version, wanted.sha256.as_deref());
        })
        .await;
    match res {
        Ok(_) => {
            tracing::info!(%peer, namespace = %ns, rollout = %name, version = %wanted.version, changed, source = wanted.source, "version set");
            json(
                StatusCode::OK,
                serde_json::json!({
                    "namespace": ns, "rollout": name, "version": wanted.version,
                    "sha256": wanted.sha256, "changed": changed,
                }),
            )
        }
        Err(StoreError::NotFound(_)) => not_found(&ns, &name),
        Err(e) => {
            tracing::warn!(namespace = %ns, rollout = %name, error = %e, "cannot set the version");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot set the version: {e}"),
            )
        }
    }
}

fn too_large() -> Response<Full<Bytes>> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body: larger than {MAX_BODY_BYTES} bytes"),
    )
}

fn not_found(ns: &str, name: &str) -> Response<Full<Bytes>> {
    error(
        StatusCode::NOT_FOUND,
        format!("rollout {name:?} not found in namespace {ns:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_should_take_only_the_version_path() {
        assert_eq!(
            route("/v1/namespaces/shop/rollouts/api/version"),
            Some(("shop", "api"))
        );
        for bad in [
            "/",
            "/v1/namespaces/shop/rollouts/api",
            "/v1/namespaces/shop/rollouts/api/version/x",
            "/v1/namespaces//rollouts/api/version",
            "/v1/namespaces/shop/applications/api/version",
            "/v2/namespaces/shop/rollouts/api/version",
        ] {
            assert_eq!(route(bad), None, "{bad}");
        }
    }
}

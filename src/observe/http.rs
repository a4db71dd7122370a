//! The `--http-addr` server of the controller and the agent: `GET /metrics`, `/healthz`
//! and `/readyz`, read-only, on hyper's HTTP/1 server.
//!
//! Nothing here writes or reveals more than the metrics do, so there is no
//! authentication: the controller listens on loopback unless told otherwise, the agent
//! not at all. Every connection is bounded: headers within [`MAX_HEADER_BYTES`] and
//! [`HEADER_READ_TIMEOUT`], at most [`MAX_CONNECTIONS`] at once, each closed after
//! [`CONNECTION_LIFETIME`]. Request bodies are never read.

use super::{metrics, Role};
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The controller's address when `--http-addr` is not given: loopback, and none of the
/// ports of Prometheus itself (9090), the Pushgateway (9091), Alertmanager (9093) or the
/// node exporter (9100), which often run on the same host. (Prometheus' list of exporter
/// ports, 9100-9999, is full; a port taken by another exporter is only a warning.)
pub const DEFAULT_CONTROLLER_ADDR: &str = "127.0.0.1:9479";

/// How long `/healthz` waits for the store's answer.
pub const HEALTH_DEADLINE: Duration = Duration::from_secs(2);
/// A request's line and headers: Prometheus and probes send a few hundred bytes.
pub const MAX_HEADER_BYTES: usize = 16 << 10;
/// How long a client may take to send its headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// How long one (keep-alive) connection is served before it is closed.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// What `/healthz` runs: a cheap store read. `Err` says what failed.
pub type HealthCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Where to listen, and whether failing to is fatal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    /// True for the default address: if another process holds it (a second controller
    /// on the host), the daemon runs without endpoints and says so, rather than not at all.
    pub optional: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr} (--http-addr): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Parses `--http-addr`: `host:port` (an IP address), or `off`.
pub fn parse_addr(text: &str) -> Result<Option<SocketAddr>, String> {
    if text == "off" {
        return Ok(None);
    }
    text.parse::<SocketAddr>().map(Some).map_err(|_| {
        format!(
            "{text:?} is not an address: use IP:PORT (127.0.0.1:9479, [::1]:9479, \
             0.0.0.0:9479 for every interface) or off"
        )
    })
}

/// Binds `listen`. `Ok(None)`: an optional address was taken (logged).
pub async fn bind(listen: &Listen) -> Result<Option<TcpListener>, Error> {
    match TcpListener::bind(listen.addr).await {
        Ok(l) => {
            let addr = l.local_addr().unwrap_or(listen.addr);
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
            Ok(Some(l))
        }
        Err(source) if listen.optional => {
            tracing::warn!(addr = %listen.addr, error = %source,
                "cannot listen on the default --http-addr; running without /metrics");
            Ok(None)
        }
        Err(source) => Err(Error::Bind {
            addr: listen.addr,
            source,
        }),
    }
}

/// Serves `role`'s endpoints on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    role: Role,
    health: HealthCheck,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return, // never closed
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "cannot accept a connection on --http-addr");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let health = health.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, role, health.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {}
            }
            drop(permit);
        });
    }
}

/// One request's answer. Only GET (and HEAD) of the three paths; everything else is
/// 404 or 405.
async fn answer(
    req: Request<Incoming>,
    role: Role,
    health: HealthCheck,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path();
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if !known {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "not found: use /metrics, /healthz or /readyz\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return Ok(r);
    }
    Ok(match path {
        "/metrics" => {
            let mut r = Response::new(Full::from(metrics().encode(role)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(super::CONTENT_TYPE),
            );
            r
        }
        "/healthz" => match tokio::time::timeout(HEALTH_DEADLINE, health()).await {
            Ok(Ok(())) => text(StatusCode::OK, "ok\n".into()),
            Ok(Err(e)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store: no answer within {}s\n", HEALTH_DEADLINE.as_secs()),
            ),
        },
        _ => {
            let ready = match role {
                Role::Controller => metrics().controller_ready(),
                Role::Agent => metrics().agent_ready(),
            };
            match ready {
                Ok(()) => text(StatusCode::OK, "ok\n".into()),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
            }
        }
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Binds `listen` (if any) and serves in the background until `shutdown`. A `Bind` error
/// only for an address given explicitly.
pub async fn start(
    listen: Option<&Listen>,
    role: Role,
    health: HealthCheck,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let Some(listen) = listen else {
        return Ok(());
    };
    if let Some(listener) = bind(listen).await? {
        tokio::spawn(serve(listener, role, health, shutdown));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_addr_should_take_an_ip_and_port_or_off_and_refuse_a_hostname() {
        assert_eq!(
            parse_addr("127.0.0.1:9479").unwrap(),
            Some("127.0.0.1:9479".parse().unwrap())
        );
        assert_eq!(
            parse_addr("[::1]:0").unwrap(),
            Some("[::1]:0".parse().unwrap())
        );
        assert_eq!(parse_addr("off").unwrap(), None);
        for bad in ["localhost:9479", "9479", "", "127.0.0.1"] {
            let err = parse_addr(bad).unwrap_err();
            assert!(err.contains("IP:PORT"), "{bad:?}: {err}");
        }
        assert_eq!(
            parse_addr(DEFAULT_CONTROLLER_ADDR)
                .unwrap()
                .map(|a| a.ip().is_loopback()),
            Some(true)
        );
    }
}

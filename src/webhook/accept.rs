//! The accept loop of deployctl's own HTTP servers (`webhook`, `dashboard`): at most a
//! number of connections at once (more wait in the kernel's backlog), each served on its
//! own task, accept errors waited out instead of spun on.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Accepts on `listener` until `shutdown`, serving each connection with `serve` while
/// at most `max_connections` are served at once. Returns the connections still being
/// served, for the caller to wait for (or not).
pub async fn accept_loop<F>(
    listener: &TcpListener,
    max_connections: usize,
    shutdown: &CancellationToken,
    mut serve: impl FnMut(TcpStream, SocketAddr) -> F,
) -> JoinSet<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let served = serve(stream, peer);
        conns.spawn(async move {
            served.await;
            drop(permit);
        });
    }
    conns
}

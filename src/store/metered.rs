//! A [`Store`] that counts and times every call of the store it wraps
//! (`deployctl_store_requests_total`, `deployctl_store_request_duration_seconds`), for
//! both backends alike.

use super::{LeaseId, LeaseTtl, Result, Store, Txn, TxnResult, WatchStream};
use crate::observe::metrics;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records each call of `inner` in the process's metrics; answers exactly as `inner` does.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
}

impl MeteredStore {
    /// `inner`, metered.
    pub fn wrap(inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(MeteredStore { inner })
    }
}

/// The `result` label of a call that returned `r`.
fn outcome<T>(r: &Result<T>) -> &'static str {
    if r.is_ok() {
        "ok"
    } else {
        "error"
    }
}

/// Runs one call of `op`, recording its result and time.
async fn timed<T>(
    op: &'static str,
    call: impl std::future::Future<Output = Result<T>>,
    result: impl FnOnce(&Result<T>) -> &'static str,
) -> Result<T> {
    let started = Instant::now();
    let r = call.await;
    metrics().store_request(op, result(&r), started.elapsed());
    r
}

#[async_trait]
impl Store for MeteredStore {
    fn endpoint(&self) -> String {
        self.inner.endpoint()
    }

    async fn get(&self, key: &str) -> Result<Option<super::KeyValue>> {
        timed("get", self.inner.get(key), outcome).await
    }

    async fn list(
        &self,
        prefix: &str,
        revision: Option<i64>,
    ) -> Result<(Vec<super::KeyValue>, i64)> {
        timed("list", self.inner.list(prefix, revision), outcome).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        timed("txn", self.inner.txn(txn), |r| match r {
            Ok(t) if !t.succeeded => "compare_failed",
            r => outcome(r),
        })
        .await
    }

    /// Counts opening the watch; the events it then delivers are not store requests.
    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        timed("watch", self.inner.watch(prefix, from_revision), outcome).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        timed("grant_lease", self.inner.grant_lease(ttl), outcome).await
    }

    async fn grant_lease_id(&self, id: LeaseId, ttl: Duration) -> Result<bool> {
        timed("grant_lease", self.inner.grant_lease_id(id, ttl), outcome).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        timed("keep_alive", self.inner.keep_alive(lease), outcome).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        timed("revoke_lease", self.inner.revoke_lease(lease), outcome).await
    }

    async fn lease_ttl(&self, lease: LeaseId) -> Result<Option<LeaseTtl>> {
        timed("lease_ttl", self.inner.lease_ttl(lease), outcome).await
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        timed("compact", self.inner.compact(revision), outcome).await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<TxnResult> {
        timed("txn", self.inner.put(key, value), outcome).await
    }
}

//! Many object writes in few transactions: how the controller writes 10,000 Instances.

use super::client::{encode_create, encode_delete, encode_replace};
use super::{Client, Result, Txn};
use crate::api::Object;
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// etcd refuses transactions with more than 128 compares or ops (`--max-txn-ops`);
/// stay below it with room for the leader fence.
const MAX_TXN_OPS: usize = 120;

/// One write in a batch.
#[derive(Debug)]
pub enum Write<K> {
    Create(K),
    /// Compare-and-swap from `current` (as read) to `desired`.
    Replace {
        current: Arc<K>,
        desired: K,
    },
    /// Delete if still at the revision read.
    Delete(Arc<K>),
}

/// How many of a batch's transactions are in flight at once: at 10,000 machines a
/// rollout's stage orders are 84 transactions. One after another, the last agents hear of
/// the new version 84 round trips after the first; 8 at a time, the later ones queue in
/// etcd behind the staged reports of the agents that got theirs first (etcd applies in
/// the order it was asked). All 84 at once are in etcd's log before most of those reports.
const MAX_TXNS_IN_FLIGHT: usize = 128;

/// One transaction of a batch, encoded, with the objects it writes.
struct Part<K> {
    txn: Txn,
    /// Names the transaction in a conflict error.
    what: String,
    /// The created and replaced objects, to return with the transaction's revision.
    written: Vec<K>,
}

impl Client {
    /// Applies `writes` in as few transactions as etcd allows, up to
    /// [`MAX_TXNS_IN_FLIGHT`] at once. Each transaction is all or nothing, with the
    /// compare-and-swap of each of its writes and the leader fence. When one fails, no
    /// further transaction starts, those in flight finish, and the first failure (in batch
    /// order) is returned (`Error::Conflict`, `Error::NotLeader`, ...); transactions that
    /// succeeded stay written, so the caller retries from fresh state. Returns the created
    /// and replaced objects as written (with their new resourceVersion), in batch order.
    pub async fn write_batch<K: Object>(&self, writes: Vec<Write<K>>) -> Result<Vec<K>> {
        let parts = encode_parts(writes)?;
        let failed = std::sync::atomic::AtomicBool::new(false);
        let failed = &failed;
        let mut results = futures::stream::iter(parts)
            .map(|part| async move {
                if failed.load(Ordering::Relaxed) {
                    return None;
                }
                let res = self.commit(part.txn, &part.what).await;
                if res.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                Some(res.map(|r| (r.revision, part.written)))
            })
            .buffered(MAX_TXNS_IN_FLIGHT);
        let mut written = Vec::new();
        let mut first_error = None;
        // Drain every result, so that no transaction of this batch is still in flight
        // when it returns.
        while let Some(result) = results.next().await {
            match result {
                Some(Ok((revision, objects))) => {
                    written.extend(objects.into_iter().map(|o| with_revision(o, revision)))
                }
                Some(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                None => {}
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }
}

/// Packs `writes` into transactions of at most [`MAX_TXN_OPS`] ops and compares each,
/// a write never split across two.
fn encode_parts<K: Object>(writes: Vec<Write<K>>) -> Result<Vec<Part<K>>> {
    let mut parts = Vec::new();
    let mut current: Option<Part<K>> = None;
    for w in writes {
        let mut part = Txn::default();
        let mut result = None;
        match &w {
            Write::Create(obj) => {
                result = Some(encode_create(obj, &mut part)?);
            }
            Write::Replace { current, desired } => {
                match encode_replace(current.as_ref(), desired.clone(), &mut part)? {
                    None => continue,
                    Some(new) => result = Some(new),
                }
            }
            Write::Delete(obj) => {
                let ns = obj.namespace().map(str::to_string);
                part.compares.push(super::Compare::mod_revision(
                    super::keys::spec_key(K::PLURAL, ns.as_deref(), obj.name()),
                    obj.meta().revision(),
                ));
                encode_delete::<K>(ns.as_deref(), obj.name(), &mut part);
            }
        }
        let fits = current.as_ref().is_some_and(|c| {
            c.txn.ops.len() + part.ops.len() <= MAX_TXN_OPS
                && c.txn.compares.len() + part.compares.len() <= MAX_TXN_OPS
        });
        if !fits {
            parts.extend(current.take());
        }
        let c = current.get_or_insert_with(|| Part {
            txn: Txn::default(),
            what: format!("{} batch from {}", K::PLURAL, obj_name(&w)),
            written: Vec::new(),
        });
        c.txn.compares.extend(part.compares);
        c.txn.ops.extend(part.ops);
        c.written.extend(result);
    }
    parts.extend(current);
    Ok(parts)
}

fn with_revision<K: Object>(mut obj: K, revision: i64) -> K {
    obj.meta_mut().resource_version = Some(revision.to_string());
    obj
}

fn obj_name<K: Object>(w: &Write<K>) -> &str {
    match w {
        Write::Create(o) => o.name(),
        Write::Replace { current, .. } => current.name(),
        Write::Delete(o) => o.name(),
    }
}

//! Many object writes in few transactions: how the controller writes 10,000 Instances.

use super::client::{encode_create, encode_delete, encode_replace};
use super::{Client, Result, Txn};
use crate::api::Object;
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

impl Client {
    /// Applies `writes` in as few transactions as etcd allows. Each transaction is all or
    /// nothing; a conflict in one stops the batch with `Error::Conflict` (those before it
    /// stay written). Returns the created and replaced objects as written (with their
    /// new resourceVersion).
    pub async fn write_batch<K: Object>(&self, writes: Vec<Write<K>>) -> Result<Vec<K>> {
        let mut written = Vec::new();
        let mut pending: Vec<K> = Vec::new();
        let mut txn = Txn::default();
        let mut in_txn = 0;
        let mut what = String::new();
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
            let fits = txn.ops.len() + part.ops.len() <= MAX_TXN_OPS
                && txn.compares.len() + part.compares.len() <= MAX_TXN_OPS;
            if !fits {
                let res = self.commit(std::mem::take(&mut txn), &what).await?;
                written.extend(pending.drain(..).map(|o| with_revision(o, res.revision)));
                in_txn = 0;
            }
            if in_txn == 0 {
                what = format!("{} batch from {}", K::PLURAL, obj_name(&w));
            }
            txn.compares.extend(part.compares);
            txn.ops.extend(part.ops);
            pending.extend(result);
            in_txn += 1;
        }
        if in_txn > 0 {
            let res = self.commit(txn, &what).await?;
            written.extend(pending.drain(..).map(|o| with_revision(o, res.revision)));
        }
        Ok(written)
    }
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

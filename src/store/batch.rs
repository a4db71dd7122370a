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
    /// stay written). Returns how many objects were written.
    pub async fn write_batch<K: Object>(&self, writes: Vec<Write<K>>) -> Result<usize> {
        let mut written = 0;
        let mut txn = Txn::default();
        let mut in_txn = 0;
        let mut what = String::new();
        for w in writes {
            let mut part = Txn::default();
            match &w {
                Write::Create(obj) => {
                    encode_create(obj, &mut part)?;
                }
                Write::Replace { current, desired } => {
                    if encode_replace(current.as_ref(), desired.clone(), &mut part)?.is_none() {
                        continue;
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
                self.commit(std::mem::take(&mut txn), &what).await?;
                written += in_txn;
                in_txn = 0;
            }
            if in_txn == 0 {
                what = format!("{} batch from {}", K::PLURAL, obj_name(&w));
            }
            txn.compares.extend(part.compares);
            txn.ops.extend(part.ops);
            in_txn += 1;
        }
        if in_txn > 0 {
            self.commit(txn, &what).await?;
            written += in_txn;
        }
        Ok(written)
    }
}

fn obj_name<K: Object>(w: &Write<K>) -> &str {
    match w {
        Write::Create(o) => o.name(),
        Write::Replace { current, .. } => current.name(),
        Write::Delete(o) => o.name(),
    }
}

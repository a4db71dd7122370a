//! Task orders and results: the controller writes an order under a machine's own prefix,
//! the machine's agent writes its result under its own status prefix, and nothing else.

use super::keys;
use super::{Client, Compare, Error, EventType, KeyValue, Op, Result, Store, Txn};
use crate::api::{MachineRun, TaskOrder};
use futures::{stream::BoxStream, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A change to one machine's Task orders, as its agent sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskOrderEvent {
    /// An order exists (seen at start, after a relist, or written now).
    Put {
        namespace: String,
        task: String,
        /// `None` when the stored value is not a valid order: the agent reports it.
        order: Option<TaskOrder>,
    },
    /// The order is gone: the Task was deleted, so a running command is killed.
    Deleted { namespace: String, task: String },
    /// A (re)list ended: its orders were just sent as `Put`s and these are all that exist,
    /// so an order missing here was withdrawn while the watch was broken.
    Listed { orders: BTreeSet<(String, String)> },
}

/// What a relisting watch yields.
enum Seen {
    Change(EventType, KeyValue),
    /// A list ended: every key under the prefix was just yielded as a put; these keys.
    Listed(Vec<String>),
}

impl Client {
    /// Orders `machines` to run Task `namespace/task`; an order already written is left
    /// alone (so a retried reconcile never orders a machine twice).
    pub async fn put_task_orders(
        &self,
        namespace: &str,
        task: &str,
        order: &TaskOrder,
        machines: &[String],
    ) -> Result<()> {
        let value = serde_json::to_vec(order).expect("an order is plain fields: always encodes");
        for m in machines {
            let key = keys::task_order_key(m, namespace, task);
            if self.store().get(&key).await?.is_some() {
                continue;
            }
            let txn = Txn {
                compares: vec![Compare::absent(&key)],
                ops: vec![Op::Put {
                    key,
                    value: value.clone(),
                    lease: 0,
                }],
            };
            self.commit(
                txn,
                &format!("task {namespace}/{task} order to machine {m}"),
            )
            .await?;
        }
        Ok(())
    }

    /// The agent's report of Task `namespace/task` on `machine`.
    pub async fn put_task_result(
        &self,
        machine: &str,
        namespace: &str,
        task: &str,
        run: &MachineRun,
    ) -> Result<()> {
        let value = serde_json::to_vec(run).expect("a result is plain fields: always encodes");
        let txn = Txn {
            compares: vec![],
            ops: vec![Op::Put {
                key: keys::task_result_key(machine, namespace, task),
                value,
                lease: 0,
            }],
        };
        self.commit(
            txn,
            &format!("task {namespace}/{task} result of machine {machine}"),
        )
        .await?;
        Ok(())
    }

    /// The results the agents of `machines` wrote for Task `namespace/task`, by machine;
    /// an unreadable result is left out (its machine stays running until it goes away).
    pub async fn task_results(
        &self,
        namespace: &str,
        task: &str,
        machines: &[String],
    ) -> Result<BTreeMap<String, MachineRun>> {
        let mut out = BTreeMap::new();
        for m in machines {
            let Some(kv) = self
                .store()
                .get(&keys::task_result_key(m, namespace, task))
                .await?
            else {
                continue;
            };
            match serde_json::from_slice::<MachineRun>(&kv.value) {
                Ok(run) => {
                    out.insert(m.clone(), run);
                }
                Err(e) => tracing::warn!(machine = %m, error = %e, "unreadable task result"),
            }
        }
        Ok(out)
    }

    /// The result `machine`'s agent wrote for Task `namespace/task`, if any: what it reads
    /// at start-up to tell a finished command from one a crash interrupted.
    pub async fn task_result(
        &self,
        machine: &str,
        namespace: &str,
        task: &str,
    ) -> Result<Option<MachineRun>> {
        let Some(kv) = self
            .store()
            .get(&keys::task_result_key(machine, namespace, task))
            .await?
        else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&kv.value).ok())
    }

    /// Deletes the orders and results of Task `namespace/task` on `machines`: a running
    /// command's agent sees its order go and kills it.
    pub async fn delete_task_keys(
        &self,
        namespace: &str,
        task: &str,
        machines: &[String],
    ) -> Result<()> {
        for chunk in machines.chunks(50) {
            let ops = chunk
                .iter()
                .flat_map(|m| {
                    [
                        Op::Delete {
                            key: keys::task_order_key(m, namespace, task),
                        },
                        Op::Delete {
                            key: keys::task_result_key(m, namespace, task),
                        },
                    ]
                })
                .collect();
            self.commit(
                Txn {
                    compares: vec![],
                    ops,
                },
                &format!("task {namespace}/{task} orders and results"),
            )
            .await?;
        }
        Ok(())
    }

    /// Every order of every machine, as (machine, namespace, task): what the controller
    /// compares with its Tasks at start, to withdraw the orders of Tasks deleted while no
    /// controller ran.
    pub async fn all_task_orders(&self) -> Result<Vec<(String, String, String)>> {
        let (kvs, _) = self.store().list(&keys::task_orders_root(), None).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| keys::parse_task_order_key(&kv.key))
            .map(|(m, ns, t)| (m.to_string(), ns.to_string(), t.to_string()))
            .collect())
    }

    /// The Task orders to `machine`: those that exist first, then `Listed`, then changes.
    /// Relists after a compaction or a broken watch (an order seen twice is the reader's
    /// to skip; one deleted meanwhile is missing from the next `Listed`).
    pub fn watch_task_orders(&self, machine: &str) -> BoxStream<'static, Result<TaskOrderEvent>> {
        let machine = machine.to_string();
        relisting_watch(self.store().clone(), keys::task_orders_prefix(&machine))
            .filter_map(move |item| {
                let out = match item {
                    Err(e) => Some(Err(e)),
                    Ok(Seen::Change(kind, kv)) => order_event(&machine, kind, kv).map(Ok),
                    Ok(Seen::Listed(listed)) => {
                        let orders = listed
                            .iter()
                            .filter_map(|k| keys::parse_task_key(&machine, k))
                            .map(|(ns, task)| (ns.to_string(), task.to_string()))
                            .collect();
                        Some(Ok(TaskOrderEvent::Listed { orders }))
                    }
                };
                futures::future::ready(out)
            })
            .boxed()
    }
}

/// The (namespace, task) of every Task result written by any agent: first those that
/// exist, then each write. What wakes the controller's Task reconciles.
pub fn watch_task_results(client: &Client) -> BoxStream<'static, Result<(String, String)>> {
    relisting_watch(client.store().clone(), keys::task_results_root())
        .filter_map(|item| {
            let out = match item {
                Err(e) => Some(Err(e)),
                Ok(Seen::Change(_, kv)) => keys::parse_task_result_key(&kv.key)
                    .map(|(_, ns, task)| Ok((ns.to_string(), task.to_string()))),
                Ok(Seen::Listed(_)) => None,
            };
            futures::future::ready(out)
        })
        .boxed()
}

fn order_event(machine: &str, kind: EventType, kv: KeyValue) -> Option<TaskOrderEvent> {
    let (ns, task) = keys::parse_task_key(machine, &kv.key)?;
    let (namespace, task) = (ns.to_string(), task.to_string());
    Some(match kind {
        EventType::Put => TaskOrderEvent::Put {
            namespace,
            task,
            order: serde_json::from_slice(&kv.value).ok(),
        },
        EventType::Delete => TaskOrderEvent::Deleted { namespace, task },
    })
}

/// Every key under `prefix` (as puts) and a `Listed` marker, then the changes from the
/// revision listed; on a compaction or a closed watch, lists again.
fn relisting_watch(store: Arc<dyn Store>, prefix: String) -> BoxStream<'static, Result<Seen>> {
    futures::stream::unfold(None, move |watch: Option<super::WatchStream>| {
        let store = store.clone();
        let prefix = prefix.clone();
        async move {
            let Some(mut watch) = watch else {
                let (kvs, rev) = match store.list(&prefix, None).await {
                    Ok(x) => x,
                    Err(e) => return Some((vec![Err(e)], None)),
                };
                let listed = Seen::Listed(kvs.iter().map(|kv| kv.key.clone()).collect());
                let found = kvs
                    .into_iter()
                    .map(|kv| Ok(Seen::Change(EventType::Put, kv)))
                    .chain([Ok(listed)])
                    .collect();
                return match store.watch(&prefix, rev + 1).await {
                    Ok(w) => Some((found, Some(w))),
                    Err(e) => Some((vec![Err(e)], None)),
                };
            };
            match watch.next().await {
                None | Some(Err(Error::Compacted { .. })) => Some((vec![], None)),
                Some(Err(e)) => Some((vec![Err(e)], None)),
                Some(Ok(events)) => Some((
                    events
                        .into_iter()
                        .map(|ev| Ok(Seen::Change(ev.kind, ev.kv)))
                        .collect(),
                    Some(watch),
                )),
            }
        }
    })
    .flat_map(futures::stream::iter)
    .boxed()
}

//! Informers, the work queue, leader election and the reconcile runtime.
//!
//! `run` campaigns for leadership; while it leads, it feeds informer caches from the
//! store, turns their changes into queued keys, and runs the reconcilers on them with
//! every write fenced on the leader key. When leadership is lost it stops everything and
//! campaigns again.

mod analysis;
pub mod context;
pub mod informer;
pub mod leader;
pub mod queue;
pub mod runtime;
mod tasks;

use crate::api::{Application, Instance, Machine, Rollout, Task};
use crate::observe::http::{self, Listen};
use crate::observe::{metrics, Role};
use crate::store::{Client, EventRecorder, MeteredStore, PresenceEvent, Scope, StoreUrl};
use context::{Context, Key};
use futures::StreamExt;
use informer::Informer;
use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How `deployctl controller` runs.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub store: StoreUrl,
    /// Names this controller in the leader key and in events (default: hostname-pid).
    pub identity: String,
    /// Leader lease TTL: a standby takes over within this long after the leader dies.
    pub lease_ttl: Duration,
    /// Reconciles run at once (different keys).
    pub workers: usize,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`None`: nowhere).
    pub http: Option<Listen>,
}

/// How often the leader counts the fleet's machines for `deployctl_machines` (and its
/// Tasks for `deployctl_tasks`).
const MACHINE_COUNT_PERIOD: Duration = Duration::from_secs(5);

/// Runs the control loop until `shutdown` is cancelled.
pub async fn run(config: ControllerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let health_client = Arc::new(OnceLock::<Client>::new());
    // The endpoints stop when this returns, error or not.
    let http_stop = shutdown.child_token();
    let _stop_http = http_stop.clone().drop_guard();
    http::start(
        config.http.as_ref(),
        Role::Controller,
        health_check(health_client.clone()),
        http_stop,
    )
    .await?;
    let store = MeteredStore::wrap(config.store.connect().await?);
    let client = Client::new(store);
    let _ = health_client.set(client.clone());
    let elector =
        leader::LeaderElector::new(client.clone(), config.identity.clone(), config.lease_ttl);
    loop {
        tracing::info!(identity = %config.identity, "campaigning for leadership");
        let leadership = match elector.campaign(&shutdown).await {
            Ok(l) => l,
            Err(_) if shutdown.is_cancelled() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        tracing::info!(identity = %config.identity, "leading");
        let leading = shutdown.child_token();
        let lost = leadership.lost();
        let stop = leading.clone();
        let watcher = tokio::spawn(async move {
            lost.cancelled().await;
            stop.cancel();
        });
        metrics().set_leader(true);
        lead(
            leadership.client(),
            leadership.term(),
            config.workers,
            leading.clone(),
        )
        .await;
        metrics().set_leader(false);
        metrics().set_controller_synced(false);
        metrics().forget_fleet();
        watcher.abort();
        if shutdown.is_cancelled() {
            if let Err(e) = leadership.resign().await {
                tracing::warn!(error = %e, "could not resign leadership; it expires with its lease");
            }
            return Ok(());
        }
        tracing::warn!("lost leadership; stopped reconciling, campaigning again");
    }
}

/// `/healthz`: the store answers a read of the leader key (once connected).
fn health_check(client: Arc<OnceLock<Client>>) -> http::HealthCheck {
    Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            let Some(client) = client.get() else {
                return Err("not connected yet".to_string());
            };
            client.leader().await.map(|_| ()).map_err(|e| e.to_string())
        })
    })
}

/// Counts the cached machines into `deployctl_machines`, and the cached Tasks by phase
/// into `deployctl_tasks`, every [`MACHINE_COUNT_PERIOD`], until `stop`.
async fn count_machines(ctx: Arc<Context>, stop: CancellationToken) {
    loop {
        let tasks = ctx.tasks.list();
        metrics().set_tasks(tasks.iter().map(|t| {
            t.status
                .as_ref()
                .map_or(crate::api::TaskPhase::Pending, |s| s.phase)
        }));
        let (mut ready, mut not_ready, mut cordoned) = (0, 0, 0);
        for m in ctx.machines.list() {
            if crate::reconcilers::machine::is_ready(&m) {
                ready += 1;
            } else {
                not_ready += 1;
            }
            if m.spec.unschedulable {
                cordoned += 1;
            }
        }
        metrics().set_machines(ready, not_ready, cordoned);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(MACHINE_COUNT_PERIOD) => {}
        }
    }
}

/// Everything a leader runs, until `stop`.
async fn lead(client: Client, term: i64, workers: usize, stop: CancellationToken) {
    let queue = queue::WorkQueue::<Key>::new();
    queue.export_metrics();
    let presence = Arc::new(RwLock::new(BTreeSet::new()));
    // The context needs the readers and the handlers need the context: build the
    // context around informers whose handlers reach it through a OnceLock.
    let ctx_cell: Arc<std::sync::OnceLock<Arc<Context>>> = Arc::new(std::sync::OnceLock::new());
    macro_rules! handler {
        ($method:ident) => {{
            let cell = ctx_cell.clone();
            move |obj: &_, kind| {
                if let Some(ctx) = cell.get() {
                    ctx.$method(obj, kind);
                }
            }
        }};
    }
    let machines = Informer::<Machine>::spawn(
        client.clone(),
        Scope::All,
        handler!(on_machine),
        stop.clone(),
    );
    let applications = Informer::<Application>::spawn(
        client.clone(),
        Scope::All,
        handler!(on_application),
        stop.clone(),
    );
    let rollouts = Informer::<Rollout>::spawn(
        client.clone(),
        Scope::All,
        handler!(on_rollout),
        stop.clone(),
    );
    let instances = Informer::<Instance>::spawn(
        client.clone(),
        Scope::All,
        handler!(on_instance),
        stop.clone(),
    );
    let tasks =
        Informer::<Task>::spawn(client.clone(), Scope::All, handler!(on_task), stop.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        term,
        machines,
        applications,
        rollouts,
        instances,
        tasks,
        presence: presence.clone(),
        queue: queue.clone(),
        events: EventRecorder::new(client.clone(), "controller"),
        written_instances: Default::default(),
        written_rollouts: Default::default(),
        rollout_pacing: Default::default(),
    });
    let _ = ctx_cell.set(ctx.clone());

    // Presence: which agents hold their lease.
    let presence_synced = CancellationToken::new();
    {
        let ctx = ctx.clone();
        let stop = stop.clone();
        let synced = presence_synced.clone();
        tokio::spawn(async move {
            let mut retry = Duration::from_millis(200);
            loop {
                let mut events = ctx.client.watch_presence();
                loop {
                    let next = tokio::select! {
                        _ = stop.cancelled() => return,
                        n = events.next() => n,
                    };
                    match next {
                        Some(Ok(ev)) => {
                            retry = Duration::from_millis(200);
                            let changed: Vec<String> = {
                                let mut set = ctx
                                    .presence
                                    .write()
                                    .expect("presence lock is never poisoned");
                                match ev {
                                    PresenceEvent::Restarted(all) => {
                                        let changed =
                                            set.symmetric_difference(&all).cloned().collect();
                                        *set = all;
                                        synced.cancel();
                                        changed
                                    }
                                    PresenceEvent::Up(m) => {
                                        set.insert(m.clone()).then_some(m).into_iter().collect()
                                    }
                                    PresenceEvent::Down(m) => {
                                        set.remove(&m).then_some(m).into_iter().collect()
                                    }
                                }
                            };
                            if !changed.is_empty() {
                                for m in changed {
                                    ctx.queue.add(Key::Machine(m));
                                }
                                ctx.enqueue_all();
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "presence watch failed; retrying");
                            break;
                        }
                        None => break,
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(Duration::from_secs(30));
            }
        });
    }

    // The event leases of this window and the next, granted ahead: the whole fleet's
    // events share one lease per window, and no agent grants one in a rollout's burst.
    {
        let ctx = ctx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let wait = match ctx.events.grant_windows().await {
                    Ok(()) => EventRecorder::grant_period(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot grant the event leases ahead; retrying");
                        Duration::from_secs(10)
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
    }

    // Workers start only once every cache has synced (sample-controller's rule).
    let synced = async {
        let _ = ctx.machines.wait_synced().await;
        let _ = ctx.applications.wait_synced().await;
        let _ = ctx.rollouts.wait_synced().await;
        let _ = ctx.instances.wait_synced().await;
        let _ = ctx.tasks.wait_synced().await;
        presence_synced.cancelled().await;
    };
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = synced => {}
    }
    tracing::info!(
        machines = ctx.machines.len(),
        rollouts = ctx.rollouts.len(),
        instances = ctx.instances.len(),
        "caches synced; reconciling"
    );
    metrics().set_controller_synced(true);
    let counting = tokio::spawn(count_machines(ctx.clone(), stop.clone()));
    for m in ctx.machines.list() {
        queue.add(Key::Machine(m.metadata.name.clone()));
    }
    ctx.enqueue_all();

    tasks::sweep_orphan_orders(&ctx).await;
    // Task results: every agent's write enqueues its Task.
    tokio::spawn(tasks::watch_results(
        ctx.clone(),
        client.clone(),
        stop.clone(),
    ));

    // Notifications: their own tasks, so that a slow sink never delays a reconcile.
    tokio::spawn(crate::notify::run(client.clone(), stop.clone()));
    // Analysis measurements: their own tasks, written into the Rollouts' status.
    tokio::spawn(analysis::run(ctx.clone(), stop.clone()));

    let runner = runtime::Controller::new(queue.clone(), workers).export_metrics(context::key_kind);
    let reconcile_ctx = ctx.clone();
    runner
        .run(
            move |key: Key| {
                let ctx = reconcile_ctx.clone();
                async move { ctx.reconcile(key).await }
            },
            |_key: &Key, err: &context::Error| match err {
                context::Error::Store(crate::store::Error::NotLeader) => {
                    runtime::Action::await_change()
                }
                _ => runtime::Action::backoff(),
            },
            stop.clone(),
        )
        .await;
    // Done before `run` forgets the fleet's series, so that none outlives the lead.
    let _ = counting.await;
}

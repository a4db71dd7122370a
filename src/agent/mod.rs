//! The node agent: registers its Machine, holds a presence lease, watches its own
//! Instances and runs one task per Instance (artifacts, hooks, health, service, disk).
//!
//! Layout: [`artifact`] fetches and verifies, [`unpack`] stages safely, [`hooks`] runs
//! commands, [`health`] checks, [`service`] supervises, [`release`] is the disk state,
//! [`instance`] the per-instance state machine, [`logs`] keeps hook and service output and
//! answers `deployctl logs`; this file wires them to the store.

pub mod artifact;
pub mod executor;
pub mod health;
pub mod hooks;
pub mod instance;
pub mod logs;
pub mod release;
pub mod report;
pub mod service;
pub mod unpack;

use crate::api::{Instance, Machine, MachineSpec, Object};
use crate::store::{
    Client, Error as StoreError, EventRecorder, LeaseId, ObjectEvent, Scope, StoreUrl,
};
use anyhow::Context as _;
use chrono::Utc;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How `deployctl agent` runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub store: StoreUrl,
    /// The Machine name (a DNS-1123 label).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Deploy root: `<root>/<namespace>/<app>/releases/<version>` and `current`.
    pub root: PathBuf,
    /// Presence lease TTL: the machine turns NotReady this long after the agent dies.
    pub lease_ttl: Duration,
}

/// One running instance task and the channel that feeds it specs (latest wins).
struct Running {
    specs: watch::Sender<Option<Instance>>,
    handle: JoinHandle<()>,
}

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::api::validation::check_name(&config.name)
        .map_err(|e| anyhow::anyhow!("invalid machine name: {e}"))?;
    let store = config
        .store
        .connect()
        .await
        .with_context(|| format!("cannot connect to store {}", config.store))?;
    run_with(Client::new(store), config, None, shutdown).await
}

/// Runs the agent on an existing store client, with `executor` in place of the real
/// fetch/unpack/hooks/health (`None`: the real ones). `config.store` is not connected
/// to; it only names the store in messages. Benchmarks run many agents this way on a few
/// shared clients.
pub async fn run_with(
    client: Client,
    config: AgentConfig,
    executor: Option<Arc<dyn executor::Executor>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::api::validation::check_name(&config.name)
        .map_err(|e| anyhow::anyhow!("invalid machine name: {e}"))?;
    let hostname = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_string());
    register_machine(&client, &config, &hostname).await?;
    let started_at = Utc::now();
    let presence_value = serde_json::to_vec(&serde_json::json!({
        "hostname": hostname,
        "startedAt": started_at,
    }))
    .expect("a JSON object of strings serializes");
    let lease = grant_presence(&client, &config, &presence_value)
        .await
        .with_context(|| format!("cannot register presence of machine {}", config.name))?;
    let presence = tokio::spawn(keep_presence(
        client.clone(),
        config.clone(),
        presence_value,
        lease,
        shutdown.clone(),
    ));
    tracing::info!(machine = %config.name, lease, "agent registered");

    let ctx = Arc::new(instance::Context {
        client: client.clone(),
        machine: config.name.clone(),
        root: config.root.clone(),
        retry: artifact::Retry::default(),
        events: Arc::new(EventRecorder::new(
            client.clone(),
            format!("agent/{}", config.name),
        )),
        executor,
    });
    let tasks_shutdown = shutdown.child_token();
    let log_answers = tokio::spawn(logs::serve(
        client.clone(),
        config.name.clone(),
        config.root.clone(),
        tasks_shutdown.clone(),
    ));
    let mut tasks: HashMap<String, Running> = HashMap::new();
    // Specs only: this agent is the only writer of its Instances' status, so watching
    // the status keys would echo every report back to it.
    let mut watch = client.list_watch_specs::<Instance>(Scope::Machine(config.name.clone()));
    let mut error_backoff = Duration::from_millis(500);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = watch.next() => ev,
        };
        match event {
            None => {
                tracing::error!("instance watch ended; starting a new one");
                watch = client.list_watch_specs::<Instance>(Scope::Machine(config.name.clone()));
            }
            Some(Err(e)) => {
                // The stream relists by itself on the next poll; do not spin.
                tracing::warn!(error = %e, ?error_backoff, "instance watch failed; relisting");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(error_backoff) => {}
                }
                error_backoff = (error_backoff * 2).min(Duration::from_secs(30));
            }
            Some(Ok(ev)) => {
                error_backoff = Duration::from_millis(500);
                match ev {
                    ObjectEvent::Restarted(items) => {
                        let keys: Vec<String> = items.iter().map(|i| i.meta().key()).collect();
                        let gone: Vec<String> = tasks
                            .keys()
                            .filter(|k| !keys.contains(k))
                            .cloned()
                            .collect();
                        for key in gone {
                            stop_task(&mut tasks, &key);
                        }
                        for obj in items {
                            deliver(&mut tasks, &ctx, &config.name, obj, &tasks_shutdown);
                        }
                    }
                    ObjectEvent::Applied(obj) => {
                        deliver(&mut tasks, &ctx, &config.name, obj, &tasks_shutdown)
                    }
                    ObjectEvent::Deleted(obj) => stop_task(&mut tasks, &obj.meta().key()),
                }
            }
        }
    }
    tracing::info!(machine = %config.name, "agent shutting down");
    tasks_shutdown.cancel();
    for (_, t) in tasks.drain() {
        let _ = t.handle.await;
    }
    let _ = log_answers.await;
    let _ = presence.await;
    Ok(())
}

/// Hands `obj` to its task, starting one if there is none (or it ended).
fn deliver(
    tasks: &mut HashMap<String, Running>,
    ctx: &Arc<instance::Context>,
    machine: &str,
    obj: Instance,
    shutdown: &CancellationToken,
) {
    if obj.spec().machine != machine {
        tracing::warn!(instance = %obj.meta().key(), spec_machine = %obj.spec().machine,
            "instance under this machine names another machine; ignoring it");
        return;
    }
    let key = obj.meta().key();
    if let Some(t) = tasks.get(&key) {
        if !t.handle.is_finished() {
            t.specs.send_replace(Some(obj));
            return;
        }
    }
    let (specs, rx) = watch::channel(Some(obj));
    let handle = tokio::spawn(instance::run(ctx.clone(), rx, shutdown.clone()));
    tasks.insert(key, Running { specs, handle });
}

/// Tells a deleted instance's task to stop its service and end.
fn stop_task(tasks: &mut HashMap<String, Running>, key: &str) {
    if let Some(t) = tasks.remove(key) {
        t.specs.send_replace(None);
    }
}

/// Creates the Machine (or merges our labels into it) and records who runs it.
async fn register_machine(
    client: &Client,
    config: &AgentConfig,
    hostname: &str,
) -> anyhow::Result<()> {
    let name = &config.name;
    loop {
        let existing = client
            .get::<Machine>(None, name)
            .await
            .with_context(|| format!("cannot read machine {name}"))?;
        match existing {
            None => {
                let mut m = Machine::new(name, MachineSpec::default());
                m.meta_mut().labels = config.labels.clone();
                match client.create(&m).await {
                    Ok(_) => {
                        tracing::info!(machine = %name, "machine created");
                        break;
                    }
                    // Created meanwhile (by the user or a racing start): merge labels instead.
                    Err(StoreError::AlreadyExists(_)) => continue,
                    Err(e) => return Err(e).context(format!("cannot create machine {name}")),
                }
            }
            Some(m) => {
                let missing = config
                    .labels
                    .iter()
                    .any(|(k, v)| m.meta().labels.get(k) != Some(v));
                if missing {
                    client
                        .update::<Machine>(None, name, |m| {
                            for (k, v) in &config.labels {
                                m.meta_mut().labels.insert(k.clone(), v.clone());
                            }
                        })
                        .await
                        .with_context(|| format!("cannot update labels of machine {name}"))?;
                }
                break;
            }
        }
    }
    let version = env!("CARGO_PKG_VERSION");
    client
        .update_status::<Machine>(None, name, |s| {
            s.hostname = Some(hostname.to_string());
            s.agent_version = Some(version.to_string());
            s.last_heartbeat = Some(Utc::now());
        })
        .await
        .with_context(|| format!("cannot write status of machine {name}"))?;
    Ok(())
}

async fn grant_presence(
    client: &Client,
    config: &AgentConfig,
    value: &[u8],
) -> Result<LeaseId, StoreError> {
    let lease = client.store().grant_lease(config.lease_ttl).await?;
    client
        .register_presence(&config.name, lease, value.to_vec())
        .await?;
    Ok(lease)
}

/// Keeps the presence lease alive every ttl/3; when it has expired (e.g. the store was
/// unreachable too long), grants a new one and puts the presence key again.
async fn keep_presence(
    client: Client,
    config: AgentConfig,
    value: Vec<u8>,
    mut lease: LeaseId,
    shutdown: CancellationToken,
) {
    let every = (config.lease_ttl / 3).max(Duration::from_millis(100));
    let mut lost = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if lost {
            match grant_presence(&client, &config, &value).await {
                Ok(l) => {
                    tracing::info!(lease = l, "presence re-registered with a new lease");
                    lease = l;
                    lost = false;
                }
                Err(e) => tracing::warn!(error = %e, "cannot re-register presence"),
            }
            continue;
        }
        match client.store().keep_alive(lease).await {
            Ok(()) => {}
            Err(StoreError::LeaseNotFound(_)) => {
                tracing::warn!(lease, "presence lease expired; registering again");
                lost = true;
                match grant_presence(&client, &config, &value).await {
                    Ok(l) => {
                        lease = l;
                        lost = false;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot re-register presence"),
                }
            }
            Err(e) => tracing::warn!(lease, error = %e, "lease keep-alive failed"),
        }
    }
}

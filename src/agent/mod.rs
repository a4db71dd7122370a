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
pub mod switch_lock;
pub mod task_groups;
pub mod tasks;
pub mod unpack;

use crate::api::{Instance, Machine, MachineSpec, Object};
use crate::observe::http::{self, Listen};
use crate::observe::{metrics, Role};
use crate::store::{
    Client, Error as StoreError, EventRecorder, LeaseId, MeteredStore, ObjectEvent, Scope, StoreUrl,
};
use anyhow::Context as _;
use chrono::Utc;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`None`: nowhere, the default).
    pub http: Option<Listen>,
}

/// One running instance task and the channel that feeds it specs (latest wins).
struct Running {
    specs: watch::Sender<Option<Instance>>,
    handle: JoinHandle<()>,
}

/// The first wait before trying the store again at start-up.
const STARTUP_RETRY_FIRST: Duration = Duration::from_millis(200);
/// The longest wait between start-up tries: an agent started before its store (at boot,
/// or 200 of them on one embedded store) is registered within 10 s of the store being
/// able to take it, and an unreachable store costs one try every 10 s.
const STARTUP_RETRY_CAP: Duration = Duration::from_secs(10);

/// True when a start-up step may succeed if tried again: the store is unreachable, or
/// its file is locked or busy (SQLite under many processes starting at once), or a write
/// lost a race. Anything else (TLS, access refused, a bad flag or path, a corrupt file)
/// needs a person, and the agent exits naming it.
fn transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<StoreError>(),
            Some(StoreError::Unavailable { .. } | StoreError::Conflict(_))
        )
    })
}

/// The waits between start-up tries: doubling from [`STARTUP_RETRY_FIRST`] to
/// [`STARTUP_RETRY_CAP`], each a random part of the bound ("full jitter") so that agents
/// that failed together do not all come back together.
#[derive(Debug)]
struct StartupBackoff {
    bound: Duration,
}

impl StartupBackoff {
    fn new() -> StartupBackoff {
        StartupBackoff {
            bound: STARTUP_RETRY_FIRST,
        }
    }

    /// The next bound (the wait is up to it), then doubled for the next time.
    fn next_bound(&mut self) -> Duration {
        let b = self.bound;
        self.bound = (self.bound * 2).min(STARTUP_RETRY_CAP);
        b
    }

    fn next_wait(&mut self) -> Duration {
        let bound = self.next_bound();
        let ms = bound.as_millis().max(1) as u64;
        Duration::from_millis(ms / 2 + rand::random::<u64>() % (ms / 2 + 1))
    }
}

/// Runs one start-up step until it succeeds, waiting (with backoff and jitter) and
/// logging what it waits for while the error is [`transient`]; a permanent error is
/// returned at once. `None`: `shutdown` came first.
async fn until_done<T, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut step: F,
) -> anyhow::Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut backoff = StartupBackoff::new();
    let mut tries = 0u32;
    loop {
        tries += 1;
        match step().await {
            Ok(v) => {
                if tries > 1 {
                    tracing::info!(tries, "{what}: done");
                }
                return Ok(Some(v));
            }
            Err(e) if transient(&e) => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?wait, tries,
                    "waiting for the store to {what}");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs the agent until `shutdown` is cancelled. Start-up (opening the store,
/// registering the Machine, granting the presence lease) waits out a store that is
/// unreachable or busy, however long; only a permanent error ends it.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::api::validation::check_name(&config.name)
        .map_err(|e| anyhow::anyhow!("invalid machine name: {e}"))?;
    let health_client = Arc::new(OnceLock::<Client>::new());
    // The endpoints stop when this returns, error or not.
    let http_stop = shutdown.child_token();
    let _stop_http = http_stop.clone().drop_guard();
    http::start(
        config.http.as_ref(),
        Role::Agent,
        health_check(health_client.clone(), config.name.clone()),
        http_stop,
    )
    .await?;
    let connect = until_done("open", &shutdown, || async {
        config
            .store
            .connect()
            .await
            .with_context(|| format!("cannot connect to store {}", config.store))
    })
    .await?;
    let Some(store) = connect else {
        return Ok(());
    };
    let client = Client::new(MeteredStore::wrap(store));
    let _ = health_client.set(client.clone());
    let result = run_with(client, config, None, shutdown).await;
    metrics().set_agent_registered(false);
    result
}

/// `/healthz`: the store answers a read of this agent's own Machine (the one key every
/// agent may read, whatever its etcd role), once connected.
fn health_check(client: Arc<OnceLock<Client>>, machine: String) -> http::HealthCheck {
    Arc::new(move || {
        let client = client.clone();
        let machine = machine.clone();
        Box::pin(async move {
            let Some(client) = client.get() else {
                return Err("not connected yet".to_string());
            };
            client
                .get::<Machine>(None, &machine)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    })
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
    // Presence first, then the Machine with who runs it: whoever sees the Machine's
    // status with this start in it can find the lease, so the controller never calls a
    // starting agent's lease expired (`reconcilers::machine`, AgentRegistering).
    let started_at = Utc::now();
    let presence_value = serde_json::to_vec(&serde_json::json!({
        "hostname": hostname,
        "startedAt": started_at,
    }))
    .expect("a JSON object of strings serializes");
    let lease = until_done("grant the presence lease", &shutdown, || async {
        grant_presence(&client, &config, &presence_value)
            .await
            .with_context(|| format!("cannot register presence of machine {}", config.name))
    })
    .await?;
    let Some(lease) = lease else {
        return Ok(());
    };
    let presence = tokio::spawn(keep_presence(
        client.clone(),
        config.clone(),
        presence_value,
        lease,
        shutdown.clone(),
    ));
    let registered = until_done("register the machine", &shutdown, || {
        register_machine(&client, &config, &hostname)
    })
    .await?;
    if registered.is_none() {
        let _ = presence.await;
        return Ok(());
    }
    tracing::info!(machine = %config.name, lease, "agent registered");
    metrics().set_agent_registered(true);

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
    let task_orders = tokio::spawn(tasks::serve(
        client.clone(),
        config.name.clone(),
        config.root.clone(),
        tasks_shutdown.clone(),
    ));
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
    let _ = task_orders.await;
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
    // In the agent's span: an Instance's log lines name the machine too.
    let handle = tokio::spawn(instance::run(ctx.clone(), rx, shutdown.clone()).in_current_span());
    tasks.insert(key, Running { specs, handle });
}

/// Tells a deleted instance's task to stop its service and end.
fn stop_task(tasks: &mut HashMap<String, Running>, key: &str) {
    if let Some(t) = tasks.remove(key) {
        t.specs.send_replace(None);
    }
}

/// Creates the Machine (or merges our labels into it) and records who runs it: the
/// status goes in with a create, so the Machine is never seen without it.
async fn register_machine(
    client: &Client,
    config: &AgentConfig,
    hostname: &str,
) -> anyhow::Result<()> {
    let name = &config.name;
    let record = |s: &mut crate::api::MachineStatus| {
        s.hostname = Some(hostname.to_string());
        s.agent_version = Some(env!("CARGO_PKG_VERSION").to_string());
        s.last_heartbeat = Some(Utc::now());
    };
    loop {
        let existing = client
            .get::<Machine>(None, name)
            .await
            .with_context(|| format!("cannot read machine {name}"))?;
        let Some(m) = existing else {
            let mut m = Machine::new(name, MachineSpec::default());
            m.meta_mut().labels = config.labels.clone();
            record(m.status.get_or_insert_with(Default::default));
            match client.create_with_status(&m).await {
                Ok(_) => {
                    tracing::info!(machine = %name, "machine created");
                    return Ok(());
                }
                // Created meanwhile (by the user or a racing start): merge labels instead.
                Err(StoreError::AlreadyExists(_)) => continue,
                Err(e) => return Err(e).context(format!("cannot create machine {name}")),
            }
        };
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
    client
        .update_status::<Machine>(None, name, record)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn locked() -> anyhow::Error {
        anyhow::Error::new(StoreError::Unavailable {
            endpoint: "/var/lib/deployctl/store.db".into(),
            message: "store file is locked by another process: database is locked".into(),
        })
        .context("cannot connect to store /var/lib/deployctl/store.db")
    }

    #[test]
    fn startup_backoff_should_double_from_200ms_to_10s_with_jitter_below_the_bound() {
        let mut b = StartupBackoff::new();
        let bounds: Vec<u128> = (0..9).map(|_| b.next_bound().as_millis()).collect();
        assert_eq!(
            bounds,
            vec![200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]
        );
        let mut b = StartupBackoff::new();
        for bound in bounds {
            let w = b.next_wait().as_millis();
            assert!(
                w >= bound / 2 && w <= bound,
                "{w} ms outside [{}, {bound}]",
                bound / 2
            );
        }
    }

    #[test]
    fn only_an_unreachable_or_locked_store_or_a_lost_race_should_count_as_transient() {
        assert!(transient(&locked()));
        assert!(transient(
            &anyhow::Error::new(StoreError::Conflict("machines/m1".into())).context("x")
        ));
        for permanent in [
            StoreError::Other("cannot open store file /x/store.db: permission denied".into()),
            StoreError::Auth {
                endpoint: "e".into(),
                message: "permission denied".into(),
            },
            StoreError::Config("cannot read --cacert ca.pem".into()),
        ] {
            assert!(!transient(&anyhow::Error::new(permanent).context("x")));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_up_step_should_be_retried_while_the_store_is_locked_and_not_after_a_permanent_error(
    ) {
        let tries = AtomicU32::new(0);
        let shutdown = CancellationToken::new();
        let start = tokio::time::Instant::now();
        let got = until_done("open", &shutdown, || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0..=5 => Err(locked()),
                _ => Ok("open"),
            }
        })
        .await
        .unwrap();
        assert_eq!(got, Some("open"));
        assert_eq!(tries.load(Ordering::SeqCst), 7);
        // Six waits, each at least half its bound: 100+200+400+800+1600+3200 ms.
        assert!(
            start.elapsed() >= Duration::from_millis(6300),
            "{:?}",
            start.elapsed()
        );
        assert!(
            start.elapsed() <= Duration::from_millis(12600),
            "{:?}",
            start.elapsed()
        );

        let tries = AtomicU32::new(0);
        let err = until_done("open", &shutdown, || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(anyhow::Error::new(StoreError::Other(
                "cannot open store file /x/store.db: permission denied".into(),
            )))
        })
        .await
        .unwrap_err();
        assert_eq!(tries.load(Ordering::SeqCst), 1);
        assert!(err.to_string().contains("permission denied"), "{err}");

        // Shutdown while waiting: no error, nothing started.
        shutdown.cancel();
        let got = until_done("open", &shutdown, || async { Err::<(), _>(locked()) })
            .await
            .unwrap();
        assert_eq!(got, None);
    }
}

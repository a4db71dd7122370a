//! The node agent: artifacts, hooks, health checks, the service, local state.

pub mod artifact;
pub mod health;
pub mod hooks;
pub mod release;
pub mod service;
pub mod unpack;

use crate::store::StoreUrl;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
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

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = (config, shutdown);
    anyhow::bail!("agent not written yet")
}

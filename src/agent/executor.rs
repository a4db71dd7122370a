//! The seam between the instance state machine and the work it orders, so that a
//! benchmark can run the real agent protocol with simulated work.
//!
//! `None` in [`super::instance::Context::executor`] is the real executor: fetch, verify,
//! unpack, hooks, service and health checks. A [`Executor`] given there replaces exactly
//! that work; the disk layout (`releases/<v>`, the staged marker, the `current` symlink),
//! the status reports and events stay real.

use async_trait::async_trait;
use std::path::Path;
use std::time::Duration;

/// Work an agent orders for one instance, in place of the real fetch/hooks/health.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Produces `version` in `release_dir` (created empty before the call); the caller
    /// marks it staged when this returns `Ok`. `Err` is the failure message.
    async fn stage(&self, instance: &str, version: &str, release_dir: &Path) -> Result<(), String>;
    /// Runs after `current` points at `version`: activation and the health check.
    async fn activate(&self, instance: &str, version: &str) -> Result<(), String>;
}

/// Every step takes the same time (zero: the agent protocol alone) and succeeds.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimulatedStep {
    pub duration: Duration,
}

impl SimulatedStep {
    async fn step(&self) {
        if !self.duration.is_zero() {
            tokio::time::sleep(self.duration).await;
        }
    }
}

#[async_trait]
impl Executor for SimulatedStep {
    async fn stage(&self, _: &str, _: &str, _: &Path) -> Result<(), String> {
        self.step().await;
        Ok(())
    }
    async fn activate(&self, _: &str, _: &str) -> Result<(), String> {
        self.step().await;
        Ok(())
    }
}

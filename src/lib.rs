//! deployctl: continuous deployment for fleets of plain servers, driven the way
//! Kubernetes drives Pods.
//!
//! # Layout
//!
//! - [`api`]: the object types (Application, Rollout, Machine, Instance, Event) and
//!   their validation. Knows nothing of storage.
//! - [`store`]: the `Store` trait, its etcd and embedded (SQLite) backends, the key
//!   layout, and a typed [`store::Client`]. The only module that knows keys.
//! - [`controller`]: informers, the work queue, leader election, the reconcile runtime.
//! - [`reconcilers`]: Machine, Application and Rollout decisions (pure functions) and
//!   the thin effect steps that write them.
//! - [`agent`]: the node agent: artifacts, hooks, health checks, the service, local state.
//! - [`cli`]: the `deployctl` subcommands and their output.
//! - [`observe`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.
//! - [`notify`]: the leader's delivery of Rollout events to each Notifier's sink.
//! - [`webhook`]: `deployctl webhook`, the build trigger that sets a Rollout's version.
//! - [`signing`]: the HMAC headers both of them use.

pub mod agent;
pub mod analysis;
pub mod api;
pub mod cli;
pub mod controller;
pub mod dashboard;
pub mod notify;
pub mod observe;
pub mod reconcilers;
pub mod signing;
pub mod store;
pub mod testing;
pub mod webhook;

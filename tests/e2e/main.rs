//! End-to-end tests: the built `deployctl` binary as users and CI run it, against the
//! embedded store and a real etcd, deploying real artifacts.

mod analysis;
mod cli;
mod common;
mod completion;
mod dashboard;
mod etcd_cluster;
mod etcd_security;
mod get;
mod hostile_manifests;
mod logs;
mod manifests;
mod metrics;
mod notify;
mod rollouts;
mod sync;
mod tasks;
mod topology;
mod truth_agent;
mod truth_decision;
mod truth_views;
mod up;
mod verbs;
mod view;

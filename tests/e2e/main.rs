//! End-to-end tests: the built `deployctl` binary as users and CI run it, against the
//! embedded store and a real etcd, deploying real artifacts.

mod cli;
mod common;
mod etcd_security;
mod logs;
mod manifests;
mod rollouts;
mod sync;
mod up;
mod view;

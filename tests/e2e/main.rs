//! End-to-end tests: the built `deployctl` binary as real processes, on real stores
//! (a private etcd and the embedded store), deploying real artifacts.

mod manifests;
mod up;

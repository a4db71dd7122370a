//! The `deployctl` command line.

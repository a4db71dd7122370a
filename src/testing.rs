//! Test and benchmark support: a real etcd on a free loopback port.

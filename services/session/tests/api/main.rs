//! The session service through its gRPC client, on PostgreSQL and on SQLite.

// A test owns the tasks it spawns: they end with its runtime.
#![allow(clippy::disallowed_methods)]

mod boardrooms;
mod failures;
mod helpers;
mod pagination;
mod plans;
mod pool_admission;
mod read_replicas;
mod replicas;
mod sessions;
mod start_gate;
mod threads;
mod tls;

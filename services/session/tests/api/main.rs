//! The session service through its gRPC client, on PostgreSQL and on SQLite.

mod boardrooms;
mod failures;
mod helpers;
mod pagination;
mod plans;
mod replicas;
mod sessions;
mod threads;
mod tls;

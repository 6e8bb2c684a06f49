//! The session service through its gRPC client, on PostgreSQL and on SQLite.

mod boardrooms;
mod failures;
mod helpers;
mod pagination;
mod plans;
mod sessions;
mod threads;
mod tls;

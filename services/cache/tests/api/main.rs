//! The cache service through its gRPC API (one test binary).

// A test owns the tasks it spawns: they end with its runtime.
#![allow(clippy::disallowed_methods)]

mod helpers;
mod limits;
mod namespaces;
mod operations;

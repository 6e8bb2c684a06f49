//! The cache service through its gRPC API (one test binary).

mod helpers;
mod limits;
mod namespaces;
mod operations;

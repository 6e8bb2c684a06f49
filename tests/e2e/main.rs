//! The `boardroom` binary as users and Kubernetes run it: real processes, real signals, and
//! clients we did not write (grpcurl, the `openai` Python SDK).

// A test owns the tasks it spawns: they end with its runtime.
#![allow(clippy::disallowed_methods)]

mod binary;
mod grpcurl;
mod load;
mod openai_sdk;
mod otlp;
mod prometheus;
mod replicas;
mod scale;

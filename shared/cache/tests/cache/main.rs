//! The tiered cache against real Redis servers (one test binary).

// A test owns the tasks it spawns: they end with its runtime.
#![allow(clippy::disallowed_methods)]

mod cluster;
mod helpers;
mod kv;
mod pressure;
mod tiered;

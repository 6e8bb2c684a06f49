//! The conversation service through its gRPC API, with the real session service, the real
//! gateway (mock provider, or a fake OpenAI-compatible upstream), PostgreSQL and Redis.

// A test owns the tasks it spawns: they end with its runtime.
#![allow(clippy::disallowed_methods)]

mod deliberation;
mod failures;
mod helpers;
mod history;
mod memory;
mod replicas;
mod turns;
mod validation;

//! The LLM gateway through its gRPC API, against its mock provider and a fake
//! OpenAI-compatible upstream (one test binary).

// A test owns the tasks it spawns: they end with its runtime.
#![allow(clippy::disallowed_methods)]

mod caching;
mod chat;
mod helpers;
mod limits;
mod resilience;
mod semantic;

//! The LLM gateway through its gRPC API, against its mock provider and fakes of the
//! providers' wire formats (one test binary).

// A test owns the tasks it spawns: they end with its runtime.
#![allow(clippy::disallowed_methods)]

mod caching;
mod chat;
mod front_door;
mod helpers;
mod limits;
mod providers;
mod resilience;
mod semantic;

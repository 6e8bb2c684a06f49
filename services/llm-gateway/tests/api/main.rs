//! The LLM gateway through its gRPC API, against its mock provider and a fake
//! OpenAI-compatible upstream (one test binary).

mod caching;
mod chat;
mod helpers;
mod limits;
mod resilience;
mod semantic;

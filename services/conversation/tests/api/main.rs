//! The conversation service through its gRPC API, with the real session service, the real
//! gateway (mock provider, or a fake OpenAI-compatible upstream), PostgreSQL and Redis.

mod failures;
mod helpers;
mod history;
mod replicas;
mod turns;
mod validation;

//! The tiered cache against real Redis servers (one test binary).

mod helpers;
mod kv;
mod pressure;
mod tiered;

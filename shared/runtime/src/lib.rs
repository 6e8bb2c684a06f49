//! What every Boardroom service shares: typed config, telemetry, metrics and the admin port,
//! caller authentication, the gRPC server stack and client channels, the database pool,
//! signals and status helpers, the clock and page fingerprints, and the settings of the tiered
//! caches.

pub mod admission;
pub mod auth;
pub mod caching;
pub mod client;
pub mod clock;
pub mod config;
pub mod consistency;
pub mod db;
pub mod inbound;
pub mod metrics;
pub mod page;
mod rpc_metrics;
pub mod server;
pub mod signals;
pub mod status;
pub mod telemetry;

pub use config::Config;

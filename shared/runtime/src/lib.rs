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
pub mod gather;
pub mod inbound;
pub mod metrics;
pub mod page;
mod rpc_metrics;
pub mod server;
pub mod signals;
pub mod status;
pub mod telemetry;

pub use config::Config;

/// A boxed `Send` future: what the suite's public async entry points that do the work (bind,
/// build, connect, run) return, from a plain `#[inline(never)]` function over a private
/// `async fn`. A thin `async fn` that only awaits such entry points in turn (a service's
/// `build` that connects, migrates and calls `with_database`) needs no box: compiling it again
/// downstream stops at the boxes.
///
/// rustc treats every `async` body as inlinable across crates and compiles it again in each
/// crate that awaits it, and so on down the chain of bodies it awaits: a binary that awaited
/// `Application::build` and `run_until_stopped` compiled the whole of every service again,
/// alone at the end of the build (86 of the 580 s of a fresh release build). Behind a box the
/// body is compiled once, in its own crate; a caller pays one allocation per call, and these are
/// called once per process.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

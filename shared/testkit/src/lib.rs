//! Test helpers over real servers: PostgreSQL and Redis are found (`DATABASE_URL`/`REDIS_URL`,
//! then the standard local ports) or started from the installed binaries on a free port, and
//! every test gets its own schema or SQLite file.
//!
//! Nothing here skips: when no server can be found or started, the helper panics with what
//! it tried, so that a CI run without databases fails loudly.

mod ephemeral;
mod fake;
pub mod otlp;
mod postgres;
mod postgres_replica;
mod redis;
mod redis_cluster;
mod service;

pub use fake::{Behavior, FakeOpenAi, FakeProvider, Protocol, Reported};
pub use postgres::{TestDatabase, ephemeral_postgres_url, postgres_admin_url, sqlite_database};
pub use postgres_replica::ReplicatedPostgres;
pub use redis::{PrivateRedis, ephemeral_redis_url, redis_url};
pub use redis_cluster::{ClusterNode, RedisCluster};
pub use service::{
    FlakyProxy, channel, main_thread, metric_value, retry_after, scrape_metrics,
    service_test_config, test_config, user_thread,
};

/// Where a test server came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From `DATABASE_URL` / `REDIS_URL`.
    Environment,
    /// The server on the standard local port.
    Local,
    /// Started by the test kit from the installed binaries.
    Ephemeral,
}

/// Whether the test kit may start servers itself (off with `BOARDROOM_TESTKIT_NO_EPHEMERAL=1`);
/// `BOARDROOM_TESTKIT_FORCE_EPHEMERAL=1` skips the environment and local ports, to exercise
/// the ephemeral path.
fn force_ephemeral() -> bool {
    std::env::var("BOARDROOM_TESTKIT_FORCE_EPHEMERAL").is_ok_and(|v| v == "1")
}

fn ephemeral_allowed() -> bool {
    !std::env::var("BOARDROOM_TESTKIT_NO_EPHEMERAL").is_ok_and(|v| v == "1")
}

/// A unique, time-ordered name fragment.
pub fn unique_suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

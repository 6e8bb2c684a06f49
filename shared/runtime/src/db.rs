//! The database pool (PostgreSQL or SQLite through sea-orm), with per-query latency
//! histograms, a slow-query log and pool gauges.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{ConnectOptions, DatabaseBackend, DatabaseConnection, DbErr};
use tokio_util::sync::CancellationToken;

use crate::config::DatabaseConfig;

/// A pooled database connection that measures every named query.
#[derive(Clone, Debug)]
pub struct Database {
    conn: DatabaseConnection,
    slow_query: Duration,
    in_flight: Arc<AtomicI64>,
    max_connections: u32,
}

impl Database {
    /// Opens the pool described by `config`. SQLite runs in WAL mode with a busy timeout so
    /// that readers and the single writer do not block each other.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, DbErr> {
        let mut options = ConnectOptions::new(config.url.expose().to_owned());
        options
            .max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .connect_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .idle_timeout(Duration::from_millis(config.idle_timeout_ms))
            .max_lifetime(Duration::from_millis(config.max_lifetime_ms))
            .statement_timeout(Duration::from_millis(config.statement_timeout_ms))
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|opts| {
                opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true)
            });
        if config.ping_idle_after_ms > 0 {
            options
                .test_before_acquire_if_idle_for(Duration::from_millis(config.ping_idle_after_ms));
        }
        let conn = sea_orm::Database::connect(options).await?;
        Ok(Self {
            conn,
            slow_query: Duration::from_millis(config.slow_query_ms),
            in_flight: Arc::new(AtomicI64::new(0)),
            max_connections: config.max_connections,
        })
    }

    /// The sea-orm connection, for statements run through [`Database::timed`].
    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// PostgreSQL or SQLite.
    pub fn backend(&self) -> DatabaseBackend {
        self.conn.get_database_backend()
    }

    /// Runs `query`, recording `db_client_operation_duration_seconds{db_operation_name}` and
    /// logging it at WARN when slower than the configured threshold.
    pub async fn timed<T>(
        &self,
        name: &'static str,
        query: impl Future<Output = Result<T, DbErr>>,
    ) -> Result<T, DbErr> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = query.await;
        let elapsed = started.elapsed();
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::histogram!("db_client_operation_duration_seconds", "db_operation_name" => name, "outcome" => outcome)
            .record(elapsed.as_secs_f64());
        if elapsed >= self.slow_query {
            tracing::warn!(
                query = name,
                elapsed_ms = elapsed.as_secs_f64() * 1e3,
                outcome,
                "slow query"
            );
        }
        result
    }

    /// Pool state now: (open connections, idle connections, callers waiting for one).
    /// Waiters are estimated as queries in flight beyond the connections in use.
    pub fn pool_state(&self) -> (u32, usize, i64) {
        let (size, idle) = match self.backend() {
            DatabaseBackend::Postgres => {
                let pool = self.conn.get_postgres_connection_pool();
                (pool.size(), pool.num_idle())
            }
            DatabaseBackend::Sqlite => {
                let pool = self.conn.get_sqlite_connection_pool();
                (pool.size(), pool.num_idle())
            }
            _ => (0, 0),
        };
        let used = i64::from(size) - idle as i64;
        let waiting = (self.in_flight.load(Ordering::Relaxed) - used).max(0);
        (size, idle, waiting)
    }

    /// Publishes pool gauges every second until `shutdown`.
    pub async fn report_pool(self, pool_name: &'static str, shutdown: CancellationToken) {
        let max = f64::from(self.max_connections);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let (size, idle, waiting) = self.pool_state();
                    metrics::gauge!("db_client_connections_max", "pool_name" => pool_name).set(max);
                    metrics::gauge!("db_client_connections_usage", "pool_name" => pool_name, "state" => "idle").set(idle as f64);
                    metrics::gauge!("db_client_connections_usage", "pool_name" => pool_name, "state" => "used")
                        .set(f64::from(size) - idle as f64);
                    metrics::gauge!("db_client_connections_pending_requests", "pool_name" => pool_name).set(waiting as f64);
                }
            }
        }
    }
}

//! The database pool (PostgreSQL or SQLite through sea-orm), with per-query latency
//! histograms, a slow-query log, pool gauges and admission by the pool's queueing delay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{
    ConnectOptions, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, Statement,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::admission::QueueDelay;
use crate::config::DatabaseConfig;
use crate::consistency::{self, Lsn};

/// A pooled database connection that measures every named query.
#[derive(Clone, Debug)]
pub struct Database {
    conn: DatabaseConnection,
    /// The `pool_name` label of its metrics.
    pool_name: &'static str,
    slow_query: Duration,
    in_flight: Arc<AtomicI64>,
    max_connections: u32,
    slow_log: Arc<SlowLog>,
    /// Streaming replicas for reads that may be served from one (`None`: none configured).
    replicas: Option<Arc<Replicas>>,
    /// The primary pool's queue, watched for a standing one.
    gate: Arc<PoolGate>,
    /// When the primary pool pings a connection before handing it out.
    liveness: Arc<Liveness>,
}

/// When a pooled PostgreSQL connection is pinged before it is handed out. A ping is one more
/// round trip per checkout (two TLS records where the server offers TLS): pinging on every
/// checkout cost 7.9 % of the suite's CPU at 1000 users, for about seven checkouts a
/// user-round. With `database.ping_idle_after_ms` 0 (the default) every checkout pings; with
/// more, a connection is pinged only
/// - when it has been idle `database.ping_idle_after_ms` or longer (the server, or a
///   middlebox, may have dropped it meanwhile), and
/// - on every checkout for [`SUSPECT_FOR`] after a query of the pool failed on its connection
///   (the server went away: a database restart or a cut network kills every pooled
///   connection, and each would otherwise fail one call before the pool drops it). Each
///   failure starts the period again, so it lasts the whole outage and that long after.
///
/// A pool timeout or a refusal (overload: the connections are busy, not dead) does not start
/// it. SQLite's connections are files in this process and are not pinged. Not the default:
/// a PostgreSQL restart under load still costs more calls than pinging every checkout (the
/// queries sent before the first failure is seen; README, "Fewer system calls per round").
#[derive(Debug)]
struct Liveness {
    idle_after: Duration,
    epoch: Instant,
    /// Until when every checkout pings, in nanoseconds since `epoch` (0: not suspect).
    suspect_until: AtomicU64,
}

/// How long every checkout pings after a query failed on its connection.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

impl Liveness {
    fn new(idle_after: Duration) -> Self {
        Self {
            idle_after,
            epoch: Instant::now(),
            suspect_until: AtomicU64::new(0),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether a connection idle for `idle_for` is pinged when checked out at `now`.
    fn pings(&self, idle_for: Duration, now: Instant) -> bool {
        idle_for >= self.idle_after || self.nanos(now) < self.suspect_until.load(Ordering::Relaxed)
    }

    /// Notes a query's failure at `now`: a broken connection makes every checkout ping for
    /// [`SUSPECT_FOR`].
    fn failed(&self, err: &DbErr, now: Instant) {
        if is_broken_connection(err) {
            self.suspect_until
                .fetch_max(self.nanos(now + SUSPECT_FOR), Ordering::Relaxed);
        }
    }
}

/// The queue in front of a pool: every use of the primary through [`Database::timed`] takes
/// one of `max_connections` permits first (a transaction's statements run under their
/// transaction's), so the time it waits for one is the pool's queueing delay, watched as
/// `crate::admission` watches a server's queue. While the pool has a standing queue (even the
/// quickest query of an `admission_interval_ms` waited longer than `admission_target_ms`), a
/// gRPC call's first query on this pool (see [`in_call`]) that has waited `admission_target_ms`
/// is refused: the call answers UNAVAILABLE with `retry-after` within milliseconds, having done
/// little, and the calls that have had a connection of this pool keep their place: their later
/// queries, and work outside a call (a turn storing its answer), wait up to
/// `acquire_timeout_ms` as before. Calls that need no query (served from a cache) are never
/// refused here.
#[derive(Debug)]
pub struct PoolGate {
    permits: tokio::sync::Semaphore,
    /// Queries waiting for a permit now.
    waiting: AtomicUsize,
    delay: QueueDelay,
    target: Duration,
    acquire_timeout: Duration,
}

/// What a query refused by the gate fails with, and what the refused call is told
/// (UNAVAILABLE, see [`is_refused`]).
pub const REFUSED: &str = "server overloaded: queries queue for the database";

tokio::task_local! {
    /// The gates whose permit the current task holds (a query inside a timed transaction
    /// runs under the transaction's permit instead of waiting for a second one).
    static HELD: Vec<usize>;
    /// The gates of which the current gRPC call has had a connection (see [`in_call`]).
    static USED: std::cell::RefCell<Vec<usize>>;
}

/// Runs a server's handling of one call: until its first query on a pool gets a connection,
/// the call is new work to that pool, which refuses it rather than queue it while it has a
/// standing queue (see [`PoolGate`]).
pub async fn in_call<F: Future>(call: F) -> F::Output {
    USED.scope(std::cell::RefCell::new(Vec::new()), call).await
}

/// Decrements the waiter count however the wait ends (a cancelled call included).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PoolGate {
    fn new(config: &DatabaseConfig, max_connections: u32) -> Self {
        let target = Duration::from_millis(config.admission_target_ms);
        Self {
            permits: tokio::sync::Semaphore::new(max_connections as usize),
            waiting: AtomicUsize::new(0),
            delay: QueueDelay::new(target, Duration::from_millis(config.admission_interval_ms)),
            target,
            acquire_timeout: Duration::from_millis(config.acquire_timeout_ms),
        }
    }

    /// Whether the pool has a standing queue now (see [`PoolGate`]).
    pub fn overloaded(&self) -> bool {
        self.delay.overloaded()
    }

    /// Queries waiting for a connection now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// A permit, waiting `acquire_timeout` at most (then the pool's own timeout error), or
    /// `admission_target_ms` for a call's first query on this pool while it is overloaded.
    /// `pool_name` labels its metrics.
    async fn enter(
        &self,
        pool_name: &'static str,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, DbErr> {
        let started = Instant::now();
        let fresh = USED
            .try_with(|used| !used.borrow().contains(&self.id()))
            .unwrap_or(false);
        let permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let refusing = fresh && self.delay.overloaded();
                let patience = if refusing {
                    self.target
                } else {
                    self.acquire_timeout
                };
                self.waiting.fetch_add(1, Ordering::AcqRel);
                let _waiting = Waiting(&self.waiting);
                match tokio::time::timeout(patience, self.permits.acquire()).await {
                    Ok(Ok(permit)) => permit,
                    Err(_) if refusing => {
                        metrics::counter!("db_client_refused_total", "pool_name" => pool_name)
                            .increment(1);
                        return Err(DbErr::Custom(REFUSED.to_owned()));
                    }
                    _ => {
                        return Err(DbErr::ConnectionAcquire(
                            sea_orm::error::ConnAcquireErr::Timeout,
                        ));
                    }
                }
            }
        };
        if fresh {
            let _ = USED.try_with(|used| used.borrow_mut().push(self.id()));
        }
        if self.delay.admitted(started.elapsed(), Instant::now()) {
            let on = self.delay.overloaded();
            metrics::gauge!("db_client_overloaded", "pool_name" => pool_name).set(if on {
                1.0
            } else {
                0.0
            });
            if on {
                tracing::warn!(
                    pool_name,
                    "database pool overloaded: a call's first query on it that waits past the target is refused"
                );
            } else {
                tracing::info!(pool_name, "database pool no longer overloaded");
            }
        }
        Ok(permit)
    }
}

/// At most one slow-query line a second: when the database stalls (a restart), every query
/// is slow, and a line each would flood the logs. The lines held back are counted in the
/// next one (the latency histogram has them all).
#[derive(Debug)]
struct SlowLog {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last line (`u64::MAX`: none yet).
    last_ms: AtomicU64,
    held_back: AtomicU64,
}

impl SlowLog {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when this one may be written.
    fn admit(&self) -> Option<u64> {
        self.admit_at(self.epoch.elapsed().as_millis() as u64)
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != u64::MAX && now < last.saturating_add(1_000) {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .map(|_| self.held_back.swap(0, Ordering::Relaxed))
            .or_else(|| {
                self.held_back.fetch_add(1, Ordering::Relaxed);
                None
            })
    }
}

impl Database {
    /// Opens the pool described by `config`. SQLite runs in WAL mode with a busy timeout so
    /// that readers and the single writer do not block each other.
    #[inline(never)]
    pub fn connect(config: &DatabaseConfig) -> crate::BoxFuture<'_, Result<Self, DbErr>> {
        Box::pin(Self::connect_inner(config))
    }

    async fn connect_inner(config: &DatabaseConfig) -> Result<Self, DbErr> {
        let mut db = Self::open(config, false).await?;
        if !config.replica_urls.is_empty() {
            let replicas = Replicas::open(config).await?;
            replicas.clone().follow(db.conn.clone());
            crate::consistency::enable();
            db.replicas = Some(replicas);
        }
        Ok(db)
    }

    /// A second, small pool whose PostgreSQL commits do not wait for the WAL flush
    /// (`synchronous_commit = off`): for writes a crash may lose without harm, such as a
    /// lease that a later fenced, durable write checks. SQLite: the same as [`Database::connect`].
    #[inline(never)]
    pub fn connect_relaxed(config: &DatabaseConfig) -> crate::BoxFuture<'_, Result<Self, DbErr>> {
        Box::pin(Self::connect_relaxed_inner(config))
    }

    async fn connect_relaxed_inner(config: &DatabaseConfig) -> Result<Self, DbErr> {
        Self::open(config, true).await
    }

    async fn open(config: &DatabaseConfig, relaxed: bool) -> Result<Self, DbErr> {
        let max_connections = if relaxed {
            config.max_connections.div_ceil(4).max(1)
        } else {
            config.max_connections
        };
        let (options, liveness) = options(config, config.url.expose(), max_connections, relaxed);
        let conn = sea_orm::Database::connect(options).await?;
        Ok(Self {
            conn,
            pool_name: "default",
            slow_query: Duration::from_millis(config.slow_query_ms),
            in_flight: Arc::new(AtomicI64::new(0)),
            max_connections,
            slow_log: Arc::new(SlowLog::new()),
            replicas: None,
            gate: Arc::new(PoolGate::new(config, max_connections)),
            liveness,
        })
    }

    /// Names the pool in its metrics (`pool_name`: the service that owns it).
    pub fn named(mut self, pool_name: &'static str) -> Self {
        self.pool_name = pool_name;
        metrics::gauge!("db_client_overloaded", "pool_name" => pool_name).set(0.0);
        metrics::counter!("db_client_refused_total", "pool_name" => pool_name).increment(0);
        self
    }

    /// The primary's connection, for writes, transactions and reads that must see them,
    /// run through [`Database::timed`]. With replicas configured, the call's later reads
    /// stay on the primary too (they may read what it wrote).
    pub fn conn(&self) -> &DatabaseConnection {
        if self.replicas.is_some()
            && let Some(token) = consistency::current()
        {
            token.touch_primary(&self.conn);
        }
        &self.conn
    }

    /// A connection for a read that may be served by a replica: a replica that is up, within
    /// `database.max_replica_lag_ms`, and (when the call carries a consistency token) has
    /// replayed past the token, waiting `database.replica_wait_ms` at most for one; else the
    /// primary. Without replicas, the primary.
    pub async fn reader(&self) -> &DatabaseConnection {
        let Some(replicas) = &self.replicas else {
            return &self.conn;
        };
        let token = consistency::current();
        if token.as_ref().is_some_and(|t| t.touched_primary()) {
            return &self.conn;
        }
        let required = token.and_then(|t| t.required());
        match replicas.pick(required).await {
            Some(replica) => {
                metrics::counter!("db_client_reads_total", "pool_name" => self.pool_name, "target" => "replica").increment(1);
                &replica.conn
            }
            None => {
                metrics::counter!("db_client_reads_total", "pool_name" => self.pool_name, "target" => "primary").increment(1);
                &self.conn
            }
        }
    }

    /// Runs the read `query` as [`Database::timed`] on the connection [`Database::reader`]
    /// picks; when a replica fails (it went away between two polls: it is marked down; a
    /// recovery conflict; a schema it has not replayed yet), the read runs again on the
    /// primary, so a replica's trouble costs no call.
    pub async fn read<T, F>(&self, name: &'static str, query: F) -> Result<T, DbErr>
    where
        F: for<'c> Fn(&'c DatabaseConnection) -> ReadFuture<'c, T>,
    {
        let conn = self.reader().await;
        // A replica's pool is not the primary's: its reads do not queue at the primary's gate.
        let on_primary = std::ptr::eq(conn, &self.conn);
        match self.measured(name, query(conn), on_primary).await {
            // A replica's error (gone, a hot-standby recovery conflict, a schema it has not
            // replayed yet): the primary answers instead.
            Err(err) if !std::ptr::eq(conn, &self.conn) => {
                if let Some(replicas) = &self.replicas {
                    replicas.failed(conn, &err);
                }
                tracing::debug!(query = name, error = %err, "a replica read failed; reading the primary");
                self.timed(name, query(&self.conn)).await
            }
            other => other,
        }
    }

    /// With replicas configured, the primary's WAL position now (every write committed so far
    /// is at or before it): the consistency token of writes whose call cannot carry it in its
    /// response headers (a stream's). `None` without replicas or on error.
    pub async fn commit_position(&self) -> Option<Lsn> {
        self.replicas.as_ref()?;
        consistency::primary_position(&self.conn).await
    }

    /// PostgreSQL or SQLite.
    pub fn backend(&self) -> DatabaseBackend {
        self.conn.get_database_backend()
    }

    /// Runs `query` in a client span named `name` (when spans are exported), recording
    /// `db_client_operation_duration_seconds{db_operation_name}` and
    /// logging it at WARN when slower than the configured threshold (at most one line a
    /// second, counting the ones held back).
    pub async fn timed<T>(
        &self,
        name: &'static str,
        query: impl Future<Output = Result<T, DbErr>>,
    ) -> Result<T, DbErr> {
        self.measured(name, query, true).await
    }

    /// The queue in front of the primary pool, for the servers whose calls use it.
    pub fn gate(&self) -> Arc<PoolGate> {
        self.gate.clone()
    }

    /// [`Database::timed`], behind the primary's gate when `gated` (and the task does not
    /// hold its permit already).
    async fn measured<T>(
        &self,
        name: &'static str,
        query: impl Future<Output = Result<T, DbErr>>,
        gated: bool,
    ) -> Result<T, DbErr> {
        let system = match self.backend() {
            DatabaseBackend::Postgres => "postgresql",
            DatabaseBackend::Sqlite => "sqlite",
            _ => "other_sql",
        };
        // The statement's name, never its SQL or values.
        let span = tracing::info_span!(
            target: crate::telemetry::TRACE_TARGET,
            "db",
            otel.name = name,
            otel.kind = "client",
            db.system = system,
            db.operation.name = name,
            error.type = tracing::field::Empty,
        );
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let id = self.gate.id();
        let held = HELD.try_with(|held| held.clone()).ok();
        let result = if !gated || held.as_ref().is_some_and(|held| held.contains(&id)) {
            query.instrument(span.clone()).await
        } else {
            match self.gate.enter(self.pool_name).await {
                Ok(_permit) => {
                    let mut held = held.unwrap_or_default();
                    held.push(id);
                    HELD.scope(held, query.instrument(span.clone())).await
                }
                Err(err) => Err(err),
            }
        };
        if let Err(err) = &result {
            span.record("error.type", db_error_kind(err));
            self.liveness.failed(err, Instant::now());
        }
        let elapsed = started.elapsed();
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::histogram!("db_client_operation_duration_seconds", "pool_name" => self.pool_name, "db_operation_name" => name, "outcome" => outcome)
            .record(elapsed.as_secs_f64());
        if elapsed >= self.slow_query
            && let Some(held_back) = self.slow_log.admit()
        {
            tracing::warn!(
                query = name,
                elapsed_ms = elapsed.as_secs_f64() * 1e3,
                outcome,
                held_back,
                "slow query"
            );
        }
        result
    }

    /// Pool state now: (open connections, idle connections, callers waiting for one).
    /// Waiters are estimated as work in flight through [`Database::timed`] beyond the
    /// connections in use, so every use of the pool (transactions too) goes through `timed`.
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

/// The pool options of `url` (the primary's or a replica's), and when the pool pings.
fn options(
    config: &DatabaseConfig,
    url: &str,
    max_connections: u32,
    relaxed: bool,
) -> (ConnectOptions, Arc<Liveness>) {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
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
    if relaxed {
        options
            .min_connections(config.min_connections.min(1))
            .map_sqlx_postgres_opts(|opts| opts.options([("synchronous_commit", "off")]));
    }
    // The pool's own ping on every checkout is off; PostgreSQL's connections are pinged as
    // `liveness` decides.
    let liveness = Arc::new(Liveness::new(Duration::from_millis(
        config.ping_idle_after_ms,
    )));
    let pings = liveness.clone();
    options
        .test_before_acquire(false)
        .map_sqlx_postgres_before_acquire(move |conn, meta| {
            let ping = pings.pings(meta.idle_for, Instant::now());
            Box::pin(async move {
                if ping {
                    sea_orm::sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        });
    (options, liveness)
}

/// The future of a read run by [`Database::read`] on the connection it is given.
pub type ReadFuture<'c, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, DbErr>> + Send + 'c>>;

/// One streaming replica, as its follower last saw it.
#[derive(Debug)]
struct Replica {
    /// `host:port` (its metrics' `replica` label; never the credentials).
    name: String,
    conn: DatabaseConnection,
    up: AtomicBool,
    /// `pg_last_wal_replay_lsn()`.
    replayed: AtomicU64,
    lag_ms: AtomicU64,
    /// When its pool pings a connection before handing it out.
    liveness: Arc<Liveness>,
}

/// The replicas of a pool, balanced round-robin.
#[derive(Debug)]
struct Replicas {
    list: Vec<Replica>,
    next: AtomicUsize,
    max_lag_ms: u64,
    wait: Duration,
}

/// How often each replica's replay position and lag are read.
const REPLICA_POLL: Duration = Duration::from_millis(100);

impl Replicas {
    /// Opens a pool per replica URL, lazily: a replica that is down at start is skipped
    /// until it answers.
    async fn open(config: &DatabaseConfig) -> Result<Arc<Self>, DbErr> {
        let mut list = Vec::with_capacity(config.replica_urls.len());
        for url in &config.replica_urls {
            let (mut options, liveness) =
                options(config, url.expose(), config.max_connections, false);
            // A replica that went away fails fast: its reads go to the primary instead.
            let fail_fast = Duration::from_millis(config.acquire_timeout_ms.min(300));
            options
                .connect_lazy(true)
                .acquire_timeout(fail_fast)
                .connect_timeout(fail_fast);
            let conn = sea_orm::Database::connect(options).await?;
            list.push(Replica {
                name: host_port(url.expose()),
                conn,
                up: AtomicBool::new(false),
                replayed: AtomicU64::new(0),
                lag_ms: AtomicU64::new(u64::MAX),
                liveness,
            });
        }
        Ok(Arc::new(Self {
            list,
            next: AtomicUsize::new(0),
            max_lag_ms: config.max_replica_lag_ms,
            wait: Duration::from_millis(config.replica_wait_ms),
        }))
    }

    /// Notes a read's failure on the replica behind `conn`: when the replica is gone, it is out
    /// of rotation until its follower reads it again (and its pool pings meanwhile).
    fn failed(&self, conn: &DatabaseConnection, err: &DbErr) {
        let Some(replica) = self.list.iter().find(|r| std::ptr::eq(&r.conn, conn)) else {
            return;
        };
        replica.liveness.failed(err, Instant::now());
        if is_connection_failure(err) {
            replica.up.store(false, Ordering::Release);
            tracing::warn!(replica = %replica.name, "a read on the replica failed; it is skipped until it answers");
        }
    }

    fn usable(&self, replica: &Replica) -> bool {
        replica.up.load(Ordering::Acquire)
            && replica.lag_ms.load(Ordering::Acquire) <= self.max_lag_ms
    }

    /// A usable replica that has replayed `required`, round-robin; waits for one up to
    /// `wait`, reading the candidates' replay positions afresh.
    async fn pick(&self, required: Option<Lsn>) -> Option<&Replica> {
        let n = self.list.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let caught_up =
            |r: &Replica| required.is_none_or(|l| r.replayed.load(Ordering::Acquire) >= l.0);
        let candidates = || {
            (0..n)
                .map(move |k| &self.list[(start + k) % n])
                .filter(|r| self.usable(r))
        };
        if let Some(replica) = candidates().find(|r| caught_up(r)) {
            return Some(replica);
        }
        let required = required?;
        // Waiting is for a replica that is about to replay the write; one known to be further
        // behind than the wait would only delay the read: the primary answers at once.
        let wait_ms = u64::try_from(self.wait.as_millis()).unwrap_or(u64::MAX);
        if candidates().all(|r| r.lag_ms.load(Ordering::Acquire) > wait_ms) {
            return None;
        }
        let deadline = Instant::now() + self.wait;
        loop {
            for replica in candidates() {
                if let Some(replayed) = consistency::replayed_position(&replica.conn).await {
                    replica.replayed.fetch_max(replayed.0, Ordering::AcqRel);
                    if replayed >= required {
                        return Some(replica);
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Reads every replica's replay position and lag each [`REPLICA_POLL`] until the pool is
    /// dropped; publishes `db_replica_up` and `db_replica_lag_seconds`.
    fn follow(self: Arc<Self>, primary: DatabaseConnection) {
        let replicas = Arc::downgrade(&self);
        drop(self);
        // Owned: ends when the pool (its last Database clone) is dropped.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REPLICA_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(replicas) = replicas.upgrade() else {
                    return;
                };
                let head = consistency::primary_position(&primary).await;
                for replica in &replicas.list {
                    replicas.observe(replica, head).await;
                }
            }
        });
    }

    async fn observe(&self, replica: &Replica, head: Option<Lsn>) {
        let sql = "SELECT pg_last_wal_replay_lsn()::text AS lsn, \
                   COALESCE(EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp())) * 1000, 0)::float8 AS lag_ms";
        let row = tokio::time::timeout(
            REPLICA_POLL * 5,
            replica
                .conn
                .query_one_raw(Statement::from_string(DatabaseBackend::Postgres, sql)),
        )
        .await;
        let seen = match row {
            Ok(Ok(Some(row))) => {
                let lsn: Option<String> = row.try_get("", "lsn").ok().flatten();
                let since_commit: f64 = row.try_get("", "lag_ms").unwrap_or(f64::MAX);
                lsn.as_deref()
                    .and_then(Lsn::parse)
                    .map(|lsn| (lsn, since_commit))
            }
            _ => None,
        };
        let name = replica.name.clone();
        match seen {
            Some((replayed, since_commit)) => {
                replica.replayed.fetch_max(replayed.0, Ordering::AcqRel);
                // Caught up with the primary's position read just before: no lag, however
                // long ago the last commit was; else the time since the last replayed commit.
                let lag_ms = if head.is_some_and(|head| replayed >= head) {
                    0
                } else {
                    since_commit.max(0.0) as u64
                };
                replica.lag_ms.store(lag_ms, Ordering::Release);
                replica.up.store(true, Ordering::Release);
                metrics::gauge!("db_replica_lag_seconds", "replica" => name.clone())
                    .set(lag_ms as f64 / 1e3);
                metrics::gauge!("db_replica_up", "replica" => name).set(1.0);
            }
            None => {
                replica.up.store(false, Ordering::Release);
                metrics::gauge!("db_replica_up", "replica" => name).set(0.0);
            }
        }
    }
}

/// `host:port` of a `postgres://user:pass@host:port/db?…` URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

/// Whether a write failed on a unique constraint (a duplicate key: ALREADY_EXISTS, or an
/// idempotent retry that lost a race).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// Whether a query was refused because the pool has a standing queue (see [`PoolGate`]): the
/// call is answered UNAVAILABLE with `retry-after`, and nothing is logged (overload refuses
/// many).
pub fn is_refused(err: &DbErr) -> bool {
    matches!(err, DbErr::Custom(message) if message == REFUSED)
}

/// Whether a query failed because the server went away, the pool is exhausted or SQLite is
/// busy (the caller may retry: UNAVAILABLE), as opposed to a bad statement.
pub fn is_connection_failure(err: &DbErr) -> bool {
    if matches!(err, DbErr::ConnectionAcquire(_) | DbErr::Conn(_)) || is_refused(err) {
        return true;
    }
    let text = err.to_string().to_ascii_lowercase();
    [
        "connection refused",
        "connection reset",
        "broken pipe",
        "pool timed out",
        "closed",
        "terminating connection",
        "io error",
        "database is locked",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// Whether a query failed on its connection (the server or the network went away), as opposed
/// to a full pool, a refusal, a busy SQLite or a bad statement.
fn is_broken_connection(err: &DbErr) -> bool {
    use sea_orm::{ConnAcquireErr, RuntimeErr, sqlx::Error};
    match err {
        DbErr::ConnectionAcquire(ConnAcquireErr::Timeout) => false,
        DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed) => true,
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => match e.as_ref() {
            Error::Io(_) | Error::Tls(_) | Error::Protocol(_) | Error::WorkerCrashed => true,
            // Connection exceptions (08) and an operator's or a crash's shutdown (57P0x): the
            // server ended the session.
            Error::Database(db) => db
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
            _ => false,
        },
        DbErr::Conn(_) => true,
        // An error carried as text (a transaction's, say).
        err => {
            let text = err.to_string().to_ascii_lowercase();
            [
                "error communicating with database",
                "connection reset",
                "broken pipe",
                "terminating connection",
            ]
            .iter()
            .any(|needle| text.contains(needle))
        }
    }
}

/// A query error's kind for `error.type` (never its message, which may hold values).
fn db_error_kind(err: &DbErr) -> &'static str {
    match err {
        DbErr::ConnectionAcquire(_) => "connection_acquire",
        err if is_refused(err) => "refused",
        DbErr::Conn(_) => "connection",
        DbErr::Exec(_) => "exec",
        DbErr::Query(_) => "query",
        DbErr::RecordNotFound(_) => "record_not_found",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use sea_orm::ConnectionTrait;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Collects the `query` field of WARN events.
    #[derive(Clone, Default)]
    struct SlowQueries(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SlowQueries {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Query(Option<String>);
            impl tracing::field::Visit for Query {
                fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                    if field.name() == "query" {
                        self.0 = Some(value.to_owned());
                    }
                }
                fn record_debug(
                    &mut self,
                    _field: &tracing::field::Field,
                    _value: &dyn std::fmt::Debug,
                ) {
                }
            }
            if *event.metadata().level() == tracing::Level::WARN {
                let mut query = Query(None);
                event.record(&mut query);
                if let (Some(q), Ok(mut seen)) = (query.0, self.0.lock()) {
                    seen.push(q);
                }
            }
        }
    }

    #[test]
    fn a_connection_is_pinged_when_idle_or_after_a_broken_one_not_after_overload() {
        let live = Liveness::new(Duration::from_secs(1));
        let t0 = live.epoch;
        let ms = Duration::from_millis;
        assert!(!live.pings(ms(10), t0 + ms(5)));
        assert!(live.pings(ms(1000), t0 + ms(5)), "idle long enough");
        // Overload is not a dead connection.
        live.failed(
            &DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout),
            t0 + ms(10),
        );
        live.failed(&DbErr::Custom(REFUSED.into()), t0 + ms(10));
        live.failed(&DbErr::Custom("duplicate key".into()), t0 + ms(10));
        assert!(!live.pings(ms(10), t0 + ms(20)));
        // A broken connection: every checkout pings for SUSPECT_FOR after the last one.
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "peer closed connection");
        live.failed(
            &DbErr::Query(sea_orm::RuntimeErr::SqlxError(Arc::new(eof.into()))),
            t0 + ms(100),
        );
        assert!(live.pings(ms(0), t0 + ms(101)));
        live.failed(
            &DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::ConnectionClosed),
            t0 + ms(5000),
        );
        assert!(live.pings(ms(0), t0 + ms(5000) + SUSPECT_FOR - ms(1)));
        assert!(!live.pings(ms(0), t0 + ms(5000) + SUSPECT_FOR + ms(1)));
        // 0: every checkout.
        assert!(Liveness::new(Duration::ZERO).pings(Duration::ZERO, t0));
    }

    async fn database(slow_query_ms: u64) -> Database {
        let config = DatabaseConfig {
            url: crate::config::Secret::new("sqlite::memory:"),
            max_connections: 1,
            slow_query_ms,
            ..DatabaseConfig::default()
        };
        Database::connect(&config).await.expect("in-memory SQLite")
    }

    #[tokio::test]
    async fn queries_over_the_threshold_are_logged_by_name() {
        let seen = SlowQueries::default();
        let _guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(seen.clone()));
        let slow = database(0).await;
        slow.timed(
            "probe.select_one",
            slow.conn().execute_unprepared("SELECT 1"),
        )
        .await
        .expect("runs");
        let fast = database(60_000).await;
        fast.timed("probe.not_slow", fast.conn().execute_unprepared("SELECT 1"))
            .await
            .expect("runs");
        let seen = seen.0.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(seen, ["probe.select_one"]);
    }

    #[tokio::test]
    async fn a_burst_of_slow_queries_logs_one_line_a_second() {
        let seen = SlowQueries::default();
        let _guard =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(seen.clone()));
        let slow = database(0).await;
        for _ in 0..50 {
            slow.timed("probe.burst", slow.conn().execute_unprepared("SELECT 1"))
                .await
                .expect("runs");
        }
        assert_eq!(seen.0.lock().map(|s| s.len()).unwrap_or_default(), 1);
        assert_eq!(slow.slow_log.held_back.load(Ordering::Relaxed), 49);
        // A second after the last line the next one is written, with the count.
        let last = slow.slow_log.last_ms.load(Ordering::Relaxed);
        assert_eq!(slow.slow_log.admit_at(last + 999), None);
        assert_eq!(slow.slow_log.admit_at(last + 1_000), Some(50));
        assert_eq!(slow.slow_log.admit_at(last + 1_001), None);
    }

    /// An in-memory SQLite pool of one connection, whose queries wait `acquire_timeout_ms` for it.
    async fn one_connection(acquire_timeout_ms: u64) -> Database {
        Database::connect(&DatabaseConfig {
            url: crate::config::Secret::new("sqlite::memory:"),
            max_connections: 1,
            acquire_timeout_ms,
            ..DatabaseConfig::default()
        })
        .await
        .expect("in-memory SQLite")
    }

    /// The pool's only connection, held by a (timed) transaction until the returned sender
    /// fires; returns once it is held, with the holder to join.
    async fn holding(
        db: &Database,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), DbErr>>,
    ) {
        use sea_orm::TransactionTrait;
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (began, has_begun) = tokio::sync::oneshot::channel::<()>();
        let holder = {
            let db = db.clone();
            // Owned by the test that joins it.
            #[allow(clippy::disallowed_methods)]
            tokio::spawn(async move {
                db.timed("probe.holder", async {
                    let txn = db.conn().begin().await?;
                    let _ = began.send(());
                    let _ = released.await;
                    txn.commit().await
                })
                .await
            })
        };
        has_begun.await.expect("the holder began");
        (release, holder)
    }

    #[tokio::test]
    async fn a_statement_inside_a_timed_transaction_runs_under_its_permit() {
        use sea_orm::TransactionTrait;
        // A second permit asked for would fail fast instead of hanging the test.
        let db = one_connection(200).await;
        let inner = db
            .timed("probe.outer", async {
                let txn = db.conn().begin().await?;
                let inner = db
                    .timed("probe.inner", txn.execute_unprepared("SELECT 1"))
                    .await;
                txn.commit().await?;
                Ok(inner)
            })
            .await
            .expect("the transaction commits");
        assert!(inner.is_ok(), "the inner statement ran: {inner:?}");
        assert_eq!(db.gate().waiting(), 0);
    }

    #[tokio::test]
    async fn a_query_that_waits_out_the_acquire_timeout_fails_as_a_connection_failure() {
        let db = one_connection(50).await;
        let (release, holder) = holding(&db).await;
        let err = db
            .timed("probe.late", db.conn().execute_unprepared("SELECT 1"))
            .await
            .expect_err("no connection within the timeout");
        assert!(is_connection_failure(&err), "{err}");
        assert_eq!(db.gate().waiting(), 0, "the waiter left the queue");
        let _ = release.send(());
        holder.await.expect("joined").expect("held");
    }

    #[tokio::test]
    async fn a_query_waiting_for_a_connection_counts_as_a_waiter() {
        let db = database(60_000).await;
        let (release, holder) = holding(&db).await;
        let waiter = {
            let db = db.clone();
            // Owned by the test: joined below.
            #[allow(clippy::disallowed_methods)]
            tokio::spawn(async move {
                db.timed("probe.waiter", db.conn().execute_unprepared("SELECT 1"))
                    .await
                    .map(|_| ())
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while db.pool_state().2 < 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the waiter never showed: {:?}",
                db.pool_state()
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(db.pool_state().0, 1, "one connection open");
        let _ = release.send(());
        holder.await.expect("joined").expect("the holder commits");
        waiter
            .await
            .expect("joined")
            .expect("the waiter runs once the connection is free");
        assert_eq!(db.pool_state().2, 0);
    }
}

//! Prometheus metrics: one process-wide recorder, rendered on each service's admin HTTP port
//! together with `/livez` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Histogram buckets in seconds: fine below 10 ms, where our RPCs and queries live.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// What a metric family is, for its `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution, in buckets.
    Histogram,
}

/// A metric family and its `# HELP` text.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// What it counts, with its labels.
    pub help: &'static str,
}

/// Registers the HELP text of `families` with the process's recorder (installing it first);
/// each component describes its own.
pub fn describe(families: &[Family]) {
    if metrics_handle().is_ok() {
        register(families);
    }
}

fn register(families: &[Family]) {
    for family in families {
        match family.kind {
            Kind::Counter => metrics::describe_counter!(family.name, family.help),
            Kind::Gauge => metrics::describe_gauge!(family.name, family.help),
            Kind::Histogram => metrics::describe_histogram!(family.name, family.help),
        }
    }
}

/// The shared runtime's families: the gRPC server and clients, the database pool.
pub const FAMILIES: &[Family] = &[
    Family {
        name: "rpc_server_requests_total",
        kind: Kind::Counter,
        help: "gRPC calls served, by rpc_service, rpc_method and rpc_grpc_status_code.",
    },
    Family {
        name: "rpc_server_call_duration_seconds",
        kind: Kind::Histogram,
        help: "Time to serve a gRPC call (to the last message of a stream), by rpc_service and rpc_method.",
    },
    Family {
        name: "rpc_server_active_requests",
        kind: Kind::Gauge,
        help: "gRPC calls being served now, by rpc_service and rpc_method.",
    },
    Family {
        name: "rpc_server_shed_total",
        kind: Kind::Counter,
        help: "gRPC calls refused UNAVAILABLE because the server was at its concurrency limit with its queue full or the wait past the deadline.",
    },
    Family {
        name: "rpc_client_endpoints",
        kind: Kind::Gauge,
        help: "Endpoints an outgoing channel balances over, by target.",
    },
    Family {
        name: "rpc_client_resolutions_total",
        kind: Kind::Counter,
        help: "DNS resolutions of an outgoing channel's target, by target and result.",
    },
    Family {
        name: "db_client_connections_max",
        kind: Kind::Gauge,
        help: "Most connections the database pool may open.",
    },
    Family {
        name: "db_client_connections_usage",
        kind: Kind::Gauge,
        help: "Database pool connections, by state (idle, used).",
    },
    Family {
        name: "db_client_connections_pending_requests",
        kind: Kind::Gauge,
        help: "Callers waiting for a database pool connection.",
    },
    Family {
        name: "db_client_operation_duration_seconds",
        kind: Kind::Histogram,
        help: "Time of a database statement or transaction, by db_operation_name and outcome.",
    },
    // The tiered cache's (shared/cache, which every service uses and which knows no runtime).
    Family {
        name: "cache_requests_total",
        kind: Kind::Counter,
        help: "Tiered cache lookups, by cache, level (l1, l2) and result (hit, miss, …).",
    },
    Family {
        name: "cache_loads_total",
        kind: Kind::Counter,
        help: "Loads from the source of truth after a miss (one per key however many waited), by cache.",
    },
    Family {
        name: "cache_load_duration_seconds",
        kind: Kind::Histogram,
        help: "Time of a load from the source of truth, by cache.",
    },
    Family {
        name: "cache_refreshes_total",
        kind: Kind::Counter,
        help: "Entries refreshed in the background before they expired, by cache.",
    },
    Family {
        name: "cache_invalidations_total",
        kind: Kind::Counter,
        help: "Invalidations applied to L1, by cache and scope (key, tag, all).",
    },
    Family {
        name: "cache_evictions_total",
        kind: Kind::Counter,
        help: "Entries evicted from L1 (size or memory pressure), by cache and level.",
    },
    Family {
        name: "cache_memory_pressure",
        kind: Kind::Gauge,
        help: "1 while resident memory is above the cache's trigger and L1 sheds entries, else 0, by cache.",
    },
    Family {
        name: "cache_l1_entries",
        kind: Kind::Gauge,
        help: "Entries in L1 (the in-process level), by cache.",
    },
    Family {
        name: "cache_l1_bytes",
        kind: Kind::Gauge,
        help: "Weighed size of L1's entries in bytes, by cache.",
    },
    Family {
        name: "cache_l1_sheds_total",
        kind: Kind::Counter,
        help: "Times L1 shed entries under memory pressure, by cache.",
    },
    Family {
        name: "cache_l1_shed_bytes_total",
        kind: Kind::Counter,
        help: "Bytes of L1 entries shed under memory pressure, by cache.",
    },
    Family {
        name: "cache_l2_up",
        kind: Kind::Gauge,
        help: "1 while L2 (Redis) answers, else 0 (the cache then runs on L1 alone), by cache.",
    },
    Family {
        name: "cache_l2_duration_seconds",
        kind: Kind::Histogram,
        help: "Time of an L2 (Redis) round trip, by cache and op.",
    },
    Family {
        name: "cache_l2_errors_total",
        kind: Kind::Counter,
        help: "L2 (Redis) calls that failed or timed out (never raised to callers), by cache.",
    },
    Family {
        name: "cache_l2_pool_connections",
        kind: Kind::Gauge,
        help: "Redis pool connections, by cache and state (connected, disconnected).",
    },
    Family {
        name: "cache_l2_commands_queued",
        kind: Kind::Gauge,
        help: "Redis commands queued in the pool's clients, by cache.",
    },
    Family {
        name: "cache_l2_commands_in_flight",
        kind: Kind::Gauge,
        help: "L2 (Redis) calls in flight, by cache.",
    },
    Family {
        name: "cache_memory_trigger_bytes",
        kind: Kind::Gauge,
        help: "Resident memory above which L1 sheds entries, by cache.",
    },
];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            register(FAMILIES);
            Ok(handle)
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("installing the Prometheus recorder: {e}"))
}

/// Whether a service is ready for traffic (`/readyz`); false before start and during shutdown.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the service ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
    /// Whether it is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AdminState {
    handle: PrometheusHandle,
    ready: Readiness,
}

/// A bound admin HTTP server: `/metrics` (Prometheus text), `/livez`, `/readyz`.
pub struct AdminServer {
    listener: TcpListener,
    state: AdminState,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, ready: Readiness) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding admin address {addr}: {e}"))?;
        Ok(Self {
            listener,
            state: AdminState {
                handle: metrics_handle()?,
                ready,
            },
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled; also drains histogram samples every 5 s so that
    /// memory stays bounded when nobody scrapes.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let handle = self.state.handle.clone();
        let upkeep_stop = shutdown.clone();
        let upkeep = async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = upkeep_stop.cancelled() => break,
                    _ = tick.tick() => handle.run_upkeep(),
                }
            }
        };
        let app = Router::new()
            .route("/metrics", get(render_metrics))
            .route("/livez", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(self.state);
        let server =
            axum::serve(self.listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        let (served, ()) = tokio::join!(server, upkeep);
        served.map_err(Into::into)
    }
}

async fn render_metrics(State(state): State<AdminState>) -> String {
    state.handle.render()
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if state.ready.get() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

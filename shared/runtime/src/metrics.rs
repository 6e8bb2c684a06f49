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

mod process;

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
        help: "gRPC calls served, by server, rpc_service, rpc_method and rpc_grpc_status_code.",
    },
    Family {
        name: "rpc_server_call_duration_seconds",
        kind: Kind::Histogram,
        help: "Time to serve a gRPC call (to the last message of a stream), by server, rpc_service, rpc_method and rpc_grpc_status_code.",
    },
    Family {
        name: "rpc_server_active_requests",
        kind: Kind::Gauge,
        help: "gRPC calls being served now, by server, rpc_service and rpc_method.",
    },
    Family {
        name: "rpc_server_shed_total",
        kind: Kind::Counter,
        help: "gRPC calls refused UNAVAILABLE (with retry-after) because the server was overloaded: calls waiting too long to start, or its concurrency limit reached with its queue full, by server.",
    },
    Family {
        name: "rpc_server_overloaded",
        kind: Kind::Gauge,
        help: "1 while the server refuses calls that wait too long to start (the quickest admission of an interval waited longer than server.admission_target_ms), by server.",
    },
    Family {
        name: "admission_work_limit",
        kind: Kind::Gauge,
        help: "Costly work (turns) a gate admits at once now, adjusted from the runtime's scheduling delay, by gate.",
    },
    Family {
        name: "admission_work_in_flight",
        kind: Kind::Gauge,
        help: "Costly work (turns) a gate has admitted and not yet seen end, by gate.",
    },
    Family {
        name: "admission_work_refused_total",
        kind: Kind::Counter,
        help: "Work refused UNAVAILABLE (with retry-after) because its gate was at its limit, by gate.",
    },
    Family {
        name: "runtime_scheduling_delay_seconds",
        kind: Kind::Histogram,
        help: "How late the runtime ran a task that was ready: a timer's due instant until the task, put behind everything ready, ran again (sampled ten times an admission interval).",
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
        name: "db_client_overloaded",
        kind: Kind::Gauge,
        help: "1 while the database pool has a standing queue (the quickest query of an interval waited longer than database.admission_target_ms for a connection), by pool_name: a call's first query on it that waits that long is refused.",
    },
    Family {
        name: "db_client_refused_total",
        kind: Kind::Counter,
        help: "Calls refused UNAVAILABLE (with retry-after) because their first query waited database.admission_target_ms for a connection while the pool had a standing queue, by pool_name.",
    },
    Family {
        name: "db_client_operation_duration_seconds",
        kind: Kind::Histogram,
        help: "Time of a database statement or transaction, by pool_name, db_operation_name and outcome.",
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
    scope: Arc<MetricsScope>,
}

/// Which of the process's series an admin port serves: a service's own (in `boardroom serve`
/// all four share one recorder); the process's own (`process_*`) are on every port. A series is
/// the service's when its family starts with one of `families`, or one of its labels has one
/// of `labels`' values (`server` for the RPC metrics, `cache` for its caches, `pool_name`
/// for its database pool).
#[derive(Debug, Clone, Default)]
pub struct MetricsScope {
    all: bool,
    families: Vec<&'static str>,
    labels: Vec<(&'static str, &'static str)>,
}

impl MetricsScope {
    /// Every series of the process (a process that runs one server).
    pub fn everything() -> Self {
        Self {
            all: true,
            ..Self::default()
        }
    }

    /// The series of server `name` (its `server` label).
    pub fn server(name: &'static str) -> Self {
        Self::default().label("server", name)
    }

    /// Also the families whose names start with `prefix`.
    pub fn family(mut self, prefix: &'static str) -> Self {
        self.families.push(prefix);
        self
    }

    /// Also the series with label `name` = `value`.
    pub fn label(mut self, name: &'static str, value: &'static str) -> Self {
        self.labels.push((name, value));
        self
    }

    fn owns(&self, family: &str, sample: &str) -> bool {
        self.all
            || self.families.iter().any(|p| family.starts_with(p))
            || labels(sample).any(|(k, v)| self.labels.iter().any(|(n, w)| *n == k && *w == v))
    }

    /// The part of `text` (Prometheus exposition) this scope serves: its samples and those
    /// none of `others` owns (never lost, though then served by every port), and the HELP
    /// and TYPE of each family that kept one.
    pub fn filter(&self, text: &str, others: &[Arc<MetricsScope>]) -> String {
        if self.all {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len() / 2);
        let mut family = "";
        let mut header = String::new();
        let mut kept = false;
        for line in text.lines() {
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                let name = rest.split(' ').next().unwrap_or("");
                if name != family {
                    family = name;
                    header.clear();
                    kept = false;
                }
                header.push_str(line);
                header.push('\n');
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if self.owns(family, line) || !others.iter().any(|o| o.owns(family, line)) {
                if !kept {
                    out.push_str(&header);
                    kept = true;
                }
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// The labels of a sample line (`name{a="x",b="y"} 1`), unescaping nothing: values compare
/// as written.
fn labels(sample: &str) -> impl Iterator<Item = (&str, &str)> {
    let body = sample
        .split_once('{')
        .and_then(|(_, rest)| rest.rsplit_once('}'))
        .map_or("", |(body, _)| body);
    LabelPairs { rest: body }
}

struct LabelPairs<'a> {
    rest: &'a str,
}

impl<'a> Iterator for LabelPairs<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest.trim_start_matches(',');
        let (name, after) = rest.split_once("=\"")?;
        // The value ends at the first quote not escaped by a backslash.
        let bytes = after.as_bytes();
        let mut end = 0;
        while end < bytes.len() {
            match bytes[end] {
                b'\\' => end += 2,
                b'"' => break,
                _ => end += 1,
            }
        }
        let end = end.min(after.len());
        let value = &after[..end];
        self.rest = after.get(end + 1..).unwrap_or("");
        Some((name.trim(), value))
    }
}

/// A bound admin HTTP server: `/metrics` (Prometheus text), `/livez`, `/readyz`.
pub struct AdminServer {
    listener: TcpListener,
    state: AdminState,
}

impl AdminServer {
    /// Serves only `scope`'s series (by default, every series of the process), and those no
    /// scope of the process owns.
    pub fn set_scope(&mut self, scope: MetricsScope) {
        let scope = Arc::new(scope);
        SCOPES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(scope.clone());
        self.state.scope = scope;
    }

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
                scope: Arc::new(MetricsScope::everything()),
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

/// The scopes of the process's admin ports.
static SCOPES: std::sync::Mutex<Vec<Arc<MetricsScope>>> = std::sync::Mutex::new(Vec::new());

async fn render_metrics(State(state): State<AdminState>) -> String {
    let others: Vec<Arc<MetricsScope>> = SCOPES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|s| !Arc::ptr_eq(s, &state.scope))
        .cloned()
        .collect();
    let mut text = state.scope.filter(&state.handle.render(), &others);
    process::render(&mut text);
    text
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if state.ready.get() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROCESS: &str = r#"# HELP rpc_server_requests_total gRPC calls served.
# TYPE rpc_server_requests_total counter
rpc_server_requests_total{server="session",rpc_service="boardroom.session.v1.SessionService",rpc_method="GetThread"} 3
rpc_server_requests_total{server="conversation",rpc_service="boardroom.conversation.v1.ConversationService",rpc_method="RunTurn"} 1
rpc_server_requests_total{server="session",rpc_service="grpc.health.v1.Health",rpc_method="Watch"} 1
rpc_server_requests_total{server="conversation",rpc_service="grpc.health.v1.Health",rpc_method="Watch"} 1

# HELP cache_requests_total Tiered cache lookups.
# TYPE cache_requests_total counter
cache_requests_total{cache="session",level="l1",result="hit"} 5
cache_requests_total{cache="conversation_state",level="l1",result="miss"} 2

# HELP conversation_turns_total Turns.
# TYPE conversation_turns_total counter
conversation_turns_total{outcome="completed"} 1

# HELP db_client_connections_max Most connections.
# TYPE db_client_connections_max gauge
db_client_connections_max{pool_name="session"} 10
db_client_connections_max{pool_name="conversation"} 10
weird_unlabelled 1
"#;

    fn session() -> MetricsScope {
        MetricsScope::server("session")
            .label("cache", "session")
            .label("pool_name", "session")
    }

    fn conversation() -> MetricsScope {
        MetricsScope::server("conversation")
            .label("cache", "conversation_state")
            .label("pool_name", "conversation")
            .family("conversation_")
    }

    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn each_scope_keeps_its_own_series_with_their_help_and_type() {
        let text = session().filter(PROCESS, &[Arc::new(conversation())]);
        assert_eq!(
            samples(&text),
            [
                r#"rpc_server_requests_total{server="session",rpc_service="boardroom.session.v1.SessionService",rpc_method="GetThread"} 3"#,
                r#"rpc_server_requests_total{server="session",rpc_service="grpc.health.v1.Health",rpc_method="Watch"} 1"#,
                r#"cache_requests_total{cache="session",level="l1",result="hit"} 5"#,
                r#"db_client_connections_max{pool_name="session"} 10"#,
                // Nobody's: served rather than lost.
                "weird_unlabelled 1",
            ]
        );
        assert!(text.contains("# TYPE cache_requests_total counter\n"));
        assert!(
            !text.contains("conversation_turns_total"),
            "a family with no sample of its own is left out, HELP and all: {text}"
        );
        let theirs = conversation().filter(PROCESS, &[Arc::new(session())]);
        assert!(theirs.contains("\nconversation_turns_total{outcome=\"completed\"} 1\n"));
        assert!(theirs.starts_with("# HELP rpc_server_requests_total"));
    }

    #[test]
    fn scopes_split_the_process_and_lose_nothing_and_everything_keeps_all() {
        let mine = session().filter(PROCESS, &[Arc::new(conversation())]);
        let theirs = conversation().filter(PROCESS, &[Arc::new(session())]);
        let unowned = "weird_unlabelled 1";
        for line in samples(&mine) {
            assert!(
                line == unowned || !samples(&theirs).contains(&line),
                "{line} in both"
            );
        }
        // What no scope owns is served by both rather than lost.
        assert!(samples(&mine).contains(&unowned) && samples(&theirs).contains(&unowned));
        let everything = MetricsScope::everything().filter(PROCESS, &[]);
        assert_eq!(everything, PROCESS);
        let served = samples(&mine).len() + samples(&theirs).len();
        assert_eq!(
            served - 1,
            samples(PROCESS).iter().filter(|l| !l.is_empty()).count()
        );
    }

    #[test]
    fn label_values_with_escapes_and_commas_are_read_whole() {
        let pairs: Vec<_> = labels(r#"x{a="1,b=\"2\"",server="session"} 1"#).collect();
        assert_eq!(pairs, [("a", r#"1,b=\"2\""#), ("server", "session")]);
        assert_eq!(labels("x 1").count(), 0);
    }
}

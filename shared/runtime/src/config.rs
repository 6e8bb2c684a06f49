//! Typed configuration: defaults → optional TOML file → `BOARDROOM_*` environment variables.
//!
//! Nested keys use `__` in the environment: `BOARDROOM_DATABASE__URL`,
//! `BOARDROOM_SESSION__CACHE__TTL_MS`. Unknown keys and badly typed values are errors that
//! name the key. Tests build a [`Config`] in code and never touch the process environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod conversation;
mod llm;

pub use conversation::{BoardroomMemoryConfig, ConversationConfig, StateCacheConfig};

pub use llm::{
    BreakerConfig, CallerLimits, DeploymentConfig, LlmConfig, LlmLimits, LlmTimeouts, ModelAlias,
    OpenAiApiConfig, Price, ResponseCacheConfig, RetryConfig, SemanticConfig, VerifierConfig,
};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A configuration error, with the offending key in its message.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl From<figment::Error> for ConfigError {
    fn from(err: figment::Error) -> Self {
        // figment's Display omits the key path for some errors; say it explicitly.
        let messages: Vec<String> = err
            .into_iter()
            .map(|e| {
                let key = e.path.join(".");
                let source = e
                    .metadata
                    .as_ref()
                    .map(|m| m.name.to_string())
                    .unwrap_or_default();
                if key.is_empty() {
                    format!("{} (from {source})", e.kind)
                } else {
                    format!("key `{key}`: {} (from {source})", e.kind)
                }
            })
            .collect();
        ConfigError(messages.join("; "))
    }
}

/// A string that never appears in logs or `Debug` output (tokens, passwords).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The whole suite's configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Logging and tracing.
    pub telemetry: TelemetryConfig,
    /// The gRPC server stack shared by every service.
    pub server: ServerConfig,
    /// Caller authentication.
    pub auth: AuthConfig,
    /// Outgoing service-to-service channels.
    pub client: ClientConfig,
    /// The relational database (PostgreSQL or SQLite).
    pub database: DatabaseConfig,
    /// Redis, the shared L2 of the caches (none on the embedded default).
    pub redis: RedisConfig,
    /// When the caches give memory back.
    pub memory: MemoryConfig,
    /// The session service.
    pub session: SessionConfig,
    /// The cache service.
    pub cache: CacheServiceConfig,
    /// The LLM gateway.
    pub llm: LlmConfig,
    /// The conversation service.
    pub conversation: ConversationConfig,
}

impl Config {
    /// Loads defaults, then `file` if given (it must exist), then `BOARDROOM_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::figment(file).extract().map_err(ConfigError::from)
    }

    /// The layered sources, for callers that add their own layer (tests, the CLI).
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        // `BOARDROOM_CONFIG` names the file (the CLI reads it); it is not a key.
        figment.merge(Env::prefixed("BOARDROOM_").ignore(&["config"]).split("__"))
    }

    /// Checks cross-field rules serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let db = &self.database;
        if db.max_connections == 0 || db.min_connections > db.max_connections {
            return Err(ConfigError(format!(
                "key `database.min_connections` ({}) must be <= `database.max_connections` ({}), which must be > 0",
                db.min_connections, db.max_connections
            )));
        }
        if !db.replica_urls.is_empty() && !db.url.expose().starts_with("postgres") {
            return Err(ConfigError(
                "key `database.replica_urls` needs a PostgreSQL `database.url` (streaming replicas)"
                    .into(),
            ));
        }
        if let Some(bad) = db
            .replica_urls
            .iter()
            .position(|u| !u.expose().starts_with("postgres"))
        {
            return Err(ConfigError(format!(
                "key `database.replica_urls[{bad}]` must be a postgres:// URL"
            )));
        }
        if self.server.concurrency_limit == 0 {
            return Err(ConfigError(
                "key `server.concurrency_limit` must be > 0".into(),
            ));
        }
        let s = &self.session;
        if s.default_page_size == 0 || s.default_page_size > s.max_page_size {
            return Err(ConfigError(
                "key `session.default_page_size` must be in 1..=`session.max_page_size`".into(),
            ));
        }
        if s.start_admission_target_ms > 10_000
            || !(10..=10_000).contains(&s.start_admission_interval_ms)
        {
            return Err(ConfigError(
                "keys `session.start_admission_target_ms` must be in 0..=10000 and `start_admission_interval_ms` in 10..=10000"
                    .into(),
            ));
        }
        let m = &self.memory;
        if !(m.limit_share > 0.0 && m.limit_share <= 1.0) {
            return Err(ConfigError(
                "key `memory.limit_share` must be in (0, 1]".into(),
            ));
        }
        let l = &self.cache.limits;
        if l.min_ttl_ms == 0 || l.min_ttl_ms > l.max_ttl_ms {
            return Err(ConfigError(
                "key `cache.limits.min_ttl_ms` must be in 1..=`cache.limits.max_ttl_ms`".into(),
            ));
        }
        if !(l.min_ttl_ms..=l.max_ttl_ms).contains(&l.default_ttl_ms) {
            return Err(ConfigError(
                "key `cache.limits.default_ttl_ms` must be within `min_ttl_ms..=max_ttl_ms`".into(),
            ));
        }
        if l.max_tags > 255 || l.max_tag_bytes > 1024 || l.max_batch == 0 {
            return Err(ConfigError(
                "keys `cache.limits.max_tags` (<= 255), `max_tag_bytes` (<= 1024) and `max_batch` (> 0)"
                    .into(),
            ));
        }
        self.llm.check().map_err(ConfigError)?;
        self.conversation.check().map_err(ConfigError)?;
        if self.auth.enabled && self.auth.tokens.is_empty() && self.auth.tokens_dir.is_none() {
            return Err(ConfigError(
                "key `auth.enabled` is true but neither `auth.tokens` nor `auth.tokens_dir` is set"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The settings that differ between `self` and `new` but only take effect after a restart.
    pub fn restart_required_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.server != new.server {
            changed.push("server");
        }
        if self.auth != new.auth {
            changed.push("auth");
        }
        if self.client != new.client {
            changed.push("client");
        }
        if self.database != new.database {
            changed.push("database");
        }
        if self.redis != new.redis {
            changed.push("redis");
        }
        if self.memory != new.memory {
            changed.push("memory");
        }
        if self.cache != new.cache {
            changed.push("cache");
        }
        if self.llm != new.llm {
            changed.push("llm");
        }
        if self.conversation != new.conversation {
            changed.push("conversation");
        }
        if self.telemetry.format != new.telemetry.format
            || self.telemetry.otlp_endpoint != new.telemetry.otlp_endpoint
        {
            changed.push("telemetry.format/otlp_endpoint");
        }
        let (mut a, mut b) = (self.session.clone(), new.session.clone());
        a.cache.ttl_ms = 0;
        b.cache.ttl_ms = 0;
        a.cache.negative_ttl_ms = 0;
        b.cache.negative_ttl_ms = 0;
        if a != b {
            changed.push("session (other than cache TTLs)");
        }
        changed
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    #[default]
    Auto,
    /// Human-readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logging and tracing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// An `EnvFilter` directive; `RUST_LOG` wins over it. Reloads on SIGHUP.
    pub log_level: String,
    /// Log line format.
    pub format: LogFormat,
    /// OTLP gRPC endpoint; empty falls back to `OTEL_EXPORTER_OTLP_ENDPOINT`, and if that is
    /// unset too, no spans are exported.
    pub otlp_endpoint: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_level: "info,sqlx=warn,sea_orm=warn,h2=warn,tower=warn".into(),
            format: LogFormat::Auto,
            otlp_endpoint: String::new(),
        }
    }
}

/// TLS material for a server (and, with `client_ca_path`, mutual TLS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_path: PathBuf,
    /// PEM private key.
    pub key_path: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    pub client_ca_path: Option<PathBuf>,
}

/// The gRPC server stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Upper bound of every call; a smaller `grpc-timeout` from the client wins.
    pub request_timeout_ms: u64,
    /// Calls executing at once, per service instance.
    pub concurrency_limit: usize,
    /// Calls allowed to wait for a slot; beyond it calls are shed with UNAVAILABLE.
    pub max_pending: usize,
    /// Admission by queueing delay (`boardroom_runtime::admission`): when even the quickest
    /// call of an `admission_interval_ms` waited longer than this to start, calls that have
    /// waited this long are refused (UNAVAILABLE, `retry-after`) until the queue drains.
    /// 0 turns it off.
    pub admission_target_ms: u64,
    /// The interval over which the quickest admission is judged.
    pub admission_interval_ms: u64,
    /// Largest encoded message accepted or sent.
    pub max_message_bytes: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// How long in-flight calls may take to finish after shutdown starts.
    pub drain_timeout_ms: u64,
    /// Time between reporting NOT_SERVING and closing the listener (endpoint propagation).
    pub shutdown_delay_ms: u64,
    /// HTTP/2 PING interval for idle connections.
    pub http2_keepalive_interval_ms: u64,
    /// Optional TLS/mTLS.
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            request_timeout_ms: 30_000,
            concurrency_limit: 2048,
            max_pending: 8192,
            admission_target_ms: 10,
            admission_interval_ms: 100,
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 1024,
            drain_timeout_ms: 25_000,
            shutdown_delay_ms: 0,
            http2_keepalive_interval_ms: 30_000,
            tls: None,
        }
    }
}

impl ServerConfig {
    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Caller authentication by bearer token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require a known bearer token on every call but health checks.
    pub enabled: bool,
    /// Caller name → token.
    pub tokens: BTreeMap<String, Secret>,
    /// A folder of files, one per caller: the file name is the caller, its content the token
    /// (a mounted Kubernetes Secret).
    pub tokens_dir: Option<PathBuf>,
    /// The token this process presents when it calls other services.
    pub outgoing_token: Secret,
}

/// Outgoing gRPC channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// TCP + HTTP/2 handshake bound.
    pub connect_timeout_ms: u64,
    /// Default deadline of a call.
    pub request_timeout_ms: u64,
    /// HTTP/2 keep-alive PING interval.
    pub keepalive_interval_ms: u64,
    /// How often a service name (a headless Service) is resolved again to follow its pods.
    pub resolve_interval_ms: u64,
    /// PEM CA bundle to verify servers with (enables TLS).
    pub ca_path: Option<PathBuf>,
    /// PEM client certificate and key for mTLS.
    pub cert_path: Option<PathBuf>,
    /// PEM private key of `cert_path`.
    pub key_path: Option<PathBuf>,
    /// Call a service that runs in the same process (`boardroom serve` with every service)
    /// without a socket: through its own inbound layer (authentication, admission, deadline,
    /// metrics, trace context), with no TCP, HTTP/2 framing or connection tasks. Off: over
    /// loopback like any other address.
    pub in_process: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 2_000,
            request_timeout_ms: 10_000,
            keepalive_interval_ms: 20_000,
            resolve_interval_ms: 5_000,
            ca_path: None,
            cert_path: None,
            key_path: None,
            in_process: true,
        }
    }
}

/// The relational database and its pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://…` or `sqlite://path?mode=rwc`.
    pub url: Secret,
    /// Pool upper bound.
    pub max_connections: u32,
    /// Connections kept open when idle.
    pub min_connections: u32,
    /// How long a query may wait for a pooled connection before failing UNAVAILABLE.
    pub acquire_timeout_ms: u64,
    /// Admission by the pool's queueing delay (`boardroom_runtime::db::PoolGate`): when even
    /// the quickest query of an `admission_interval_ms` waited longer than this for a
    /// connection, a call's first query on the pool that has waited this long is refused (UNAVAILABLE,
    /// `retry-after`) instead of queueing behind the pool; calls that have a connection
    /// already, and work outside calls, keep waiting up to `acquire_timeout_ms`. 0 turns it off.
    pub admission_target_ms: u64,
    /// The interval over which the pool's quickest query is judged.
    pub admission_interval_ms: u64,
    /// Idle connections above `min_connections` close after this.
    pub idle_timeout_ms: u64,
    /// Connections are recycled after this.
    pub max_lifetime_ms: u64,
    /// Bound of one statement (PostgreSQL `statement_timeout`).
    pub statement_timeout_ms: u64,
    /// Queries slower than this are logged at WARN with their name.
    pub slow_query_ms: u64,
    /// 0 (the default): a pooled PostgreSQL connection is pinged before every use, a round
    /// trip per query. Otherwise it is pinged once it has been idle this long, and on every
    /// checkout for 10 s after a query failed on its connection (the server went away: the
    /// dead connections left in the pool are found by the ping rather than failing a call
    /// each; `boardroom_runtime::db::Liveness`). At 1000 users, 1000 saved about a twelfth of
    /// the suite's CPU per round, but a PostgreSQL restart under that load cost 50–125 retried
    /// calls instead of 13–54 (all of them retried successfully, none lost): README, "Fewer
    /// system calls per round".
    pub ping_idle_after_ms: u64,
    /// Apply pending migrations at start-up (the embedded default; Kubernetes runs a Job).
    pub migrate_on_start: bool,
    /// PostgreSQL streaming replicas of `url`: reads that may be served from a replica go to
    /// them, balanced (a read carrying a consistency token only to one that has replayed past
    /// it); writes and transactions to the primary. Empty: everything on the primary.
    pub replica_urls: Vec<Secret>,
    /// A replica further behind than this (or down) is skipped; its reads go to the primary.
    pub max_replica_lag_ms: u64,
    /// How long a read carrying a consistency token waits for a replica to replay past it
    /// before it goes to the primary.
    pub replica_wait_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("sqlite://boardroom.db?mode=rwc"),
            max_connections: 16,
            min_connections: 1,
            acquire_timeout_ms: 2_000,
            admission_target_ms: 25,
            admission_interval_ms: 100,
            idle_timeout_ms: 300_000,
            max_lifetime_ms: 1_800_000,
            statement_timeout_ms: 5_000,
            slow_query_ms: 50,
            ping_idle_after_ms: 0,
            migrate_on_start: true,
            replica_urls: Vec::new(),
            max_replica_lag_ms: 1_000,
            replica_wait_ms: 50,
        }
    }
}

/// Redis connection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db`; empty runs every cache on L1 and the loader only.
    pub url: Secret,
    /// Pooled connections per cache (plus two for invalidations).
    pub pool_size: usize,
    /// Bound of one Redis command; a slower answer counts as a miss.
    pub timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: Secret::default(),
            pool_size: 4,
            timeout_ms: 100,
        }
    }
}

/// When the caches give memory back (see `boardroom_cache::MemoryPressure`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Share of the memory limit above which the caches shed their coldest entries.
    pub limit_share: f64,
    /// The limit outside a container (or below the cgroup's); 0: the cgroup's only.
    pub ceiling_bytes: u64,
    /// How often resident memory is read.
    pub check_every_ms: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            limit_share: 0.85,
            ceiling_bytes: 0,
            check_every_ms: 1_000,
        }
    }
}

/// Addresses of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// gRPC listener.
    pub grpc_addr: SocketAddr,
    /// Admin HTTP listener: `/metrics`, `/livez`, `/readyz`.
    pub admin_addr: SocketAddr,
}

/// The read-through cache of the session service's Get RPCs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EntityCacheConfig {
    /// Feature switch: off sends every Get to the database.
    pub enabled: bool,
    /// Lifetime of a cached entity. Reloads on SIGHUP.
    pub ttl_ms: u64,
    /// Lifetime of a cached NotFound. Reloads on SIGHUP.
    pub negative_ttl_ms: u64,
    /// Memory bound of the cache (entries are weighed by their encoded size).
    pub max_bytes: u64,
    /// Refresh-ahead: a hit on an entry older than this share of its TTL reloads it in the
    /// background; 0 switches it off.
    pub refresh_ahead: f64,
}

impl Default for EntityCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_ms: 60_000,
            negative_ttl_ms: 2_000,
            max_bytes: 64 * 1024 * 1024,
            refresh_ahead: 0.8,
        }
    }
}

/// The session service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Where it listens.
    pub listen: Listen,
    /// Its Get cache.
    pub cache: EntityCacheConfig,
    /// Page size when a List request says 0.
    pub default_page_size: u32,
    /// Largest page a List request may ask for.
    pub max_page_size: u32,
    /// Most advisors in one boardroom.
    pub max_advisors: usize,
    /// The scheduling delay above which the start gate cuts the rate of the calls that start
    /// a user's work (CreateSession, CreateThread); 0 (the default) turns the gate off: it
    /// makes new users wait at the door for the users already at work (README, "The start
    /// gate"), a trade for the operator to choose.
    pub start_admission_target_ms: u64,
    /// How often the start gate's rate is adjusted (and the interval it counts over).
    pub start_admission_interval_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            listen: Listen {
                grpc_addr: ([127, 0, 0, 1], 50051).into(),
                admin_addr: ([127, 0, 0, 1], 9091).into(),
            },
            cache: EntityCacheConfig::default(),
            default_page_size: 50,
            max_page_size: 1000,
            max_advisors: 16,
            start_admission_target_ms: 0,
            start_admission_interval_ms: 100,
        }
    }
}

/// What L1 keeps when full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum L1Policy {
    /// Least recently used (the default: best on moving hot sets, `benches/hit_ratio.rs`).
    #[default]
    Lru,
    /// TinyLFU admission (best when popularity is stable and skewed).
    Tinylfu,
}

/// What one cache service request may carry; over a limit is INVALID_ARGUMENT naming it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheLimits {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Shortest TTL.
    pub min_ttl_ms: u64,
    /// Longest TTL.
    pub max_ttl_ms: u64,
    /// TTL of an entry written without one.
    pub default_ttl_ms: u64,
    /// Most keys, entries or tags in one request.
    pub max_batch: usize,
    /// Most tags on one entry.
    pub max_tags: usize,
    /// Longest tag, in bytes.
    pub max_tag_bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_key_bytes: 512,
            max_value_bytes: 1024 * 1024,
            min_ttl_ms: 100,
            max_ttl_ms: 7 * 24 * 3_600_000,
            default_ttl_ms: 300_000,
            max_batch: 1_000,
            max_tags: 16,
            max_tag_bytes: 128,
        }
    }
}

/// The cache service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheServiceConfig {
    /// Where it listens.
    pub listen: Listen,
    /// Memory bound of its L1, in bytes of keys and values.
    pub l1_max_bytes: u64,
    /// What L1 keeps when full.
    pub l1_policy: L1Policy,
    /// Request limits.
    pub limits: CacheLimits,
}

impl Default for CacheServiceConfig {
    fn default() -> Self {
        Self {
            listen: Listen {
                grpc_addr: ([127, 0, 0, 1], 50053).into(),
                admin_addr: ([127, 0, 0, 1], 9093).into(),
            },
            l1_max_bytes: 128 * 1024 * 1024,
            l1_policy: L1Policy::default(),
            limits: CacheLimits::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Toml;

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(ConfigError::from)
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults validate");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = from_toml("[database]\nmax_conections = 3\n").expect_err("typo must fail");
        let text = err.to_string();
        assert!(text.contains("max_conections"), "{text}");
    }

    #[test]
    fn bad_type_names_the_key() {
        let err =
            from_toml("[session.cache]\nttl_ms = \"soon\"\n").expect_err("bad type must fail");
        assert!(err.to_string().contains("session.cache.ttl_ms"), "{err}");
    }

    #[test]
    fn file_layer_overrides_defaults() {
        let config = from_toml("[session]\nmax_page_size = 10\n[session.cache]\nenabled = false\n")
            .expect("valid");
        assert_eq!(config.session.max_page_size, 10);
        assert!(!config.session.cache.enabled);
        assert_eq!(config.session.default_page_size, 50);
    }

    #[test]
    fn cross_field_rules_name_the_key() {
        let mut config = Config::default();
        config.database.min_connections = 99;
        let err = config.validate().expect_err("min > max");
        assert!(
            err.to_string().contains("database.min_connections"),
            "{err}"
        );
        // The turn log's idle window: 0 (always the short one) or at least the short one.
        for (idle, valid) in [(0, true), (1_000, true), (4, false), (60_001, false)] {
            let mut config = Config::default();
            config.conversation.turn_log_idle_write_ms = idle;
            match config.validate() {
                Ok(_) => assert!(valid, "{idle} accepted"),
                Err(err) => {
                    assert!(!valid, "{idle} refused: {err}");
                    assert!(
                        err.to_string()
                            .contains("conversation.turn_log_idle_write_ms"),
                        "{err}"
                    );
                }
            }
        }
        // The turn gate: a limit of at least one turn, an interval it can sample.
        for (running, target, interval, valid) in [
            (4_096, 3, 100, true),
            (1, 0, 10, true),
            (0, 3, 100, false),
            (4_096, 10_001, 100, false),
            (4_096, 3, 5, false),
        ] {
            let mut config = Config::default();
            config.conversation.max_running_turns = running;
            config.conversation.turn_admission_target_ms = target;
            config.conversation.turn_admission_interval_ms = interval;
            match config.validate() {
                Ok(_) => assert!(valid, "{running} {target} {interval} accepted"),
                Err(err) => {
                    assert!(!valid, "{running} {target} {interval} refused: {err}");
                    assert!(
                        err.to_string().contains("conversation.max_running_turns"),
                        "{err}"
                    );
                }
            }
        }
    }

    #[test]
    fn secret_never_prints() {
        let mut config = Config::default();
        config.auth.outgoing_token = Secret::new("hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn ttl_change_needs_no_restart_but_pool_change_does() {
        let old = Config::default();
        let mut new = old.clone();
        new.session.cache.ttl_ms = 5;
        assert!(old.restart_required_changes(&new).is_empty());
        new.database.max_connections = 3;
        assert_eq!(old.restart_required_changes(&new), vec!["database"]);
    }
}

//! The Redis clients of turn control (the cancel bus, the turn logs): every command bounded
//! by `redis.timeout_ms`, tried once, failing at once while disconnected, and reconnecting on
//! their own (50 ms doubling to 2 s).

use std::time::Duration;

use fred::types::config::{Config, ReconnectPolicy};
use fred::types::{Builder, RespVersion};

/// A builder of such clients for `url`, commands bounded by `timeout`. A `lasting` client
/// (one per instance) keeps trying when Redis is away at start, too; a short-lived one (made
/// for one call, while Redis is known to be up) fails at once instead (and connects at once:
/// fred delays a first connection it may retry).
pub fn builder(url: &str, timeout: Duration, lasting: bool) -> anyhow::Result<Builder> {
    let mut config = Config::from_url(url)?;
    config.fail_fast = !lasting;
    // RESP2: pub/sub messages arrive on the subscriber's own connection.
    config.version = RespVersion::RESP2;
    let mut builder = Builder::from_config(config);
    let connect = timeout.max(Duration::from_millis(200));
    builder
        .with_connection_config(|c| {
            c.connection_timeout = connect;
            c.internal_command_timeout = connect;
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| p.default_command_timeout = timeout)
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(builder)
}

//! The Redis clients of turn control (the cancel bus, the turn logs): every command bounded
//! by `redis.timeout_ms`, tried once, failing at once while disconnected, and reconnecting on
//! their own (50 ms doubling to 2 s).

use std::time::Duration;

use fred::types::config::Config;
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
    Ok(boardroom_cache::fred_builder(
        config,
        timeout,
        Duration::from_secs(2),
    ))
}

//! Redis for tests.

use tokio::sync::OnceCell;

use crate::{Origin, ephemeral, ephemeral_allowed, force_ephemeral};

static URL: OnceCell<(String, Origin)> = OnceCell::const_new();

fn answers(url: &str) -> bool {
    let hostport = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or_default();
    let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
    let Some((_, port)) = hostport.rsplit_once(':') else {
        return false;
    };
    port.parse().is_ok_and(ephemeral::port_answers)
}

/// The URL of a Redis server for tests, and where it came from. Panics (never skips) when
/// none can be found or started.
pub async fn redis_url() -> (String, Origin) {
    URL.get_or_init(|| async {
        let mut tried = Vec::new();
        if !force_ephemeral() {
            if let Ok(url) = std::env::var("REDIS_URL") {
                if answers(&url) {
                    return (url, Origin::Environment);
                }
                tried.push(format!("REDIS_URL={url}: unreachable"));
            }
            if ephemeral::port_answers(6379) {
                return ("redis://127.0.0.1:6379".to_owned(), Origin::Local);
            }
            tried.push("127.0.0.1:6379: unreachable".to_owned());
        }
        if ephemeral_allowed() {
            match tokio::task::spawn_blocking(|| {
                ephemeral::shared_server("redis", ephemeral::start_redis)
            })
            .await
            {
                Ok(Ok(port)) => return (format!("redis://127.0.0.1:{port}"), Origin::Ephemeral),
                Ok(Err(err)) => tried.push(format!("ephemeral server: {err:#}")),
                Err(err) => tried.push(format!("ephemeral server: {err}")),
            }
        }
        panic!(
            "no Redis for the tests (CI={}); tried: {}",
            std::env::var("CI").unwrap_or_default(),
            tried.join("; ")
        )
    })
    .await
    .clone()
}

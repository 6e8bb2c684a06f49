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

/// Starts (or reuses) a Redis server from the installed binary on a free port, shared by every
/// test process of this machine user; returns its URL.
pub async fn ephemeral_redis_url() -> anyhow::Result<String> {
    let port =
        tokio::task::spawn_blocking(|| ephemeral::shared_server("redis", ephemeral::start_redis))
            .await??;
    Ok(format!("redis://127.0.0.1:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn ping(url: &str) -> String {
        let addr = url.trim_start_matches("redis://");
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        stream.write_all(b"PING\r\n").await.expect("writes");
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await.expect("reads");
        String::from_utf8_lossy(&reply).into_owned()
    }

    #[tokio::test]
    async fn found_and_ephemeral_servers_answer_ping() {
        assert_eq!(ping(&redis_url().await.0).await, "+PONG\r\n");
        assert_eq!(
            ping(
                &ephemeral_redis_url()
                    .await
                    .expect("redis-server is installed")
            )
            .await,
            "+PONG\r\n"
        );
    }
}

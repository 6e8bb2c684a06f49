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

/// A Redis server of one test, which the test may stop and restart on the same port (to see
/// how a service behaves while Redis is away). Killed on drop.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts a new server on a free port.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = ephemeral::state_dir().join(format!("redis-{}", crate::unique_suffix()));
        std::fs::create_dir_all(&dir).expect("redis folder");
        let mut redis = Self {
            port,
            dir,
            child: None,
        };
        redis.restart();
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server and waits until its port is closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let child = ephemeral::redis_command(&self.dir, self.port)
            .expect("redis-server is installed")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ephemeral::port_answers(self.port) {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Sends one command (inline protocol) and returns the raw reply (a bulk reply whole).
    pub async fn command(&self, command: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connects");
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .await
            .expect("writes");
        let mut reply = Vec::new();
        let mut chunk = vec![0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.expect("reads");
            reply.extend_from_slice(&chunk[..n]);
            if n == 0 || reply_complete(&reply) {
                return String::from_utf8_lossy(&reply).into_owned();
            }
        }
    }
}

/// Whether `reply` holds a whole RESP reply: a line, or a bulk string of its stated length.
fn reply_complete(reply: &[u8]) -> bool {
    let Some(line_end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    if reply.first() != Some(&b'$') {
        return true;
    }
    let len: i64 = String::from_utf8_lossy(&reply[1..line_end])
        .parse()
        .unwrap_or(0);
    len < 0 || reply.len() >= line_end + 2 + len as usize + 2
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

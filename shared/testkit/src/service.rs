//! Running services in tests: a config on free ports, a connected channel, the admin port's
//! metrics, and a TCP proxy that can cut a service off from its database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use boardroom_runtime::Config;
use boardroom_runtime::config::{Listen, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::TestDatabase;

/// A config for one test: the given database, every listener on port 0, small pools and
/// short timeouts so that failures show quickly.
pub fn test_config(db: &TestDatabase) -> Config {
    let mut config = service_test_config();
    config.database.url = Secret::new(db.url.clone());
    config.database.max_connections = 8;
    config.database.acquire_timeout_ms = 1_000;
    // Off: these tests call without the contract's retry policy, and a burst of them (fifty
    // turns at once on 8 connections of a debug build sharing 2 cores with other tests) is a
    // standing queue for a few hundred milliseconds, whose new calls the pools would refuse
    // (UNAVAILABLE, retry-after). The pools' admission has its own tests, which turn it on.
    config.database.admission_target_ms = 0;
    // Likewise the turn gate: a loaded test machine runs tasks late, and the gate would
    // refuse turns these tests run at once. Its own tests turn it on.
    config.conversation.turn_admission_target_ms = 0;
    // And the start gate, for the sessions and threads these tests create in bursts.
    config.session.start_admission_target_ms = 0;
    config.database.migrate_on_start = true;
    config
}

/// A config for one test of a service without a database: every listener on port 0.
pub fn service_test_config() -> Config {
    let mut config = Config::default();
    let any_port = Listen {
        grpc_addr: ([127, 0, 0, 1], 0).into(),
        admin_addr: ([127, 0, 0, 1], 0).into(),
    };
    config.session.listen = any_port.clone();
    config.cache.listen = any_port.clone();
    config.conversation.listen = any_port.clone();
    config.llm.listen = any_port;
    config.llm.openai_api.addr = ([127, 0, 0, 1], 0).into();
    config
}

/// A channel to `addr`, connected.
pub async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid address")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connecting to the service under test")
}

/// The Prometheus text of an admin port.
pub async fn scrape_metrics(admin: SocketAddr) -> String {
    let mut stream = TcpStream::connect(admin)
        .await
        .expect("connecting to the admin port");
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes())
        .await
        .expect("writing the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("reading metrics");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The `retry-after` a refusal asks for (seconds, as sent), if it sent one.
pub fn retry_after(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
}

/// The value of one sample in Prometheus text whose name and labels contain every `needle`
/// (0 when absent).
pub fn metric_value(text: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#') && needles.iter().all(|n| line.contains(n)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A TCP proxy in front of a server that a test can take down and bring back, to see how a
/// service behaves when its database goes away.
#[derive(Debug, Clone)]
pub struct FlakyProxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    cut: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl FlakyProxy {
    /// Starts forwarding a local port to `target`; stops when the returned proxy's owner calls
    /// [`FlakyProxy::stop`] (or the test ends).
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let proxy = Self {
            addr: listener.local_addr().expect("proxy address"),
            down: Arc::new(AtomicBool::new(false)),
            cut: Arc::new(std::sync::Mutex::new(CancellationToken::new())),
            stop: CancellationToken::new(),
        };
        let worker = proxy.clone();
        // Owned by the proxy: ends on `stop`.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = worker.stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                if worker.down.load(Ordering::Acquire) {
                    drop(inbound);
                    continue;
                }
                let cut = worker.cut.lock().map(|c| c.clone()).unwrap_or_default();
                // Owned by the proxy: one copy loop per connection, ended by `cut` or either side closing.
                #[allow(clippy::disallowed_methods)]
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        proxy
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and refuses new ones.
    pub fn take_down(&self) {
        self.down.store(true, Ordering::Release);
        if let Ok(mut cut) = self.cut.lock() {
            cut.cancel();
            *cut = CancellationToken::new();
        }
    }

    /// Forwards again.
    pub fn bring_up(&self) {
        self.down.store(false, Ordering::Release);
    }

    /// Stops the proxy.
    pub fn stop(&self) {
        self.take_down();
        self.stop.cancel();
    }
}

/// A session in boardroom `boardroom_id` and its main thread, created through `sessions`: the
/// thread's id.
pub async fn main_thread(
    sessions: &mut boardroom_proto::session::v1::session_service_client::SessionServiceClient<
        Channel,
    >,
    boardroom_id: String,
) -> String {
    user_thread(sessions, boardroom_id, "user").await
}

/// A new session of `user` in `boardroom_id` and its main thread's id.
pub async fn user_thread(
    sessions: &mut boardroom_proto::session::v1::session_service_client::SessionServiceClient<
        Channel,
    >,
    boardroom_id: String,
    user: &str,
) -> String {
    use boardroom_proto::session::v1 as spb;
    let session = sessions
        .create_session(spb::CreateSessionRequest {
            boardroom_id,
            user_id: user.into(),
            title: "s".into(),
            request_id: String::new(),
        })
        .await
        .expect("session")
        .into_inner()
        .session
        .expect("session");
    sessions
        .create_thread(spb::CreateThreadRequest {
            session_id: session.id,
            thread_type: spb::ThreadType::Main as i32,
            title: "t".into(),
            request_id: String::new(),
        })
        .await
        .expect("thread")
        .into_inner()
        .thread
        .expect("thread")
        .id
}

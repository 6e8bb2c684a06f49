//! Client-side balancing over a resolved name: three servers on 127.0.0.1, 127.0.0.2 and
//! 127.0.0.3 behind a resolver the test controls.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boardroom_runtime::client::{ChannelFactory, Resolution, Resolve};
use boardroom_runtime::config::ClientConfig;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse, health_check_response};

/// What the name resolves to, as the test sets it.
#[derive(Debug, Default)]
struct TestDns(Mutex<Vec<SocketAddr>>);

impl TestDns {
    fn set(&self, addresses: &[SocketAddr]) {
        *self.0.lock().expect("lock") = addresses.to_vec();
    }
}

impl Resolve for TestDns {
    fn resolve<'a>(&'a self, host: &'a str, _port: u16) -> Resolution<'a> {
        assert_eq!(host, "boardroom-session.test.svc");
        let addresses = self.0.lock().expect("lock").clone();
        Box::pin(async move { Ok(addresses) })
    }
}

/// A health service that counts the calls it answers.
#[derive(Debug, Clone, Default)]
struct Counting(Arc<AtomicU64>);

#[tonic::async_trait]
impl Health for Counting {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.0.fetch_add(1, Ordering::Relaxed);
        // A little work, so calls overlap.
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(Response::new(HealthCheckResponse {
            status: health_check_response::ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

struct Instance {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

async fn instance(ip: [u8; 4]) -> Instance {
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::from(ip), 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counting = Counting::default();
    let calls = counting.0.clone();
    let stop = CancellationToken::new();
    let shutdown = stop.clone();
    let served = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(counting))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown.cancelled_owned(),
            )
            .await
            .expect("serve");
    });
    Instance {
        addr,
        calls,
        stop,
        served,
    }
}

const INTERVAL: Duration = Duration::from_millis(200);

/// Polls `check` until it holds, failing after `within`.
async fn wait_for(what: &str, check: impl Fn() -> bool, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_resolved_pods_follow_new_ones_and_drain_removed_ones() {
    let pods = [
        instance([127, 0, 0, 1]).await,
        instance([127, 0, 0, 2]).await,
        instance([127, 0, 0, 3]).await,
    ];
    let dns = Arc::new(TestDns::default());
    dns.set(&[pods[0].addr, pods[1].addr]);
    let factory = ChannelFactory::with_resolver(
        ClientConfig {
            resolve_interval_ms: INTERVAL.as_millis() as u64,
            ..ClientConfig::default()
        },
        dns.clone(),
    );
    let channel = factory
        .channel(&["http://boardroom-session.test.svc:50051".to_owned()])
        .expect("channel");
    let client = tonic_health::pb::health_client::HealthClient::new(channel);
    let failures = Arc::new(AtomicU64::new(0));
    let load = CancellationToken::new();
    // 16 callers in a loop until told to stop; every failure counted.
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let (mut client, failures, load) = (client.clone(), failures.clone(), load.clone());
            tokio::spawn(async move {
                while !load.is_cancelled() {
                    if client.check(HealthCheckRequest::default()).await.is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let calls = |i: usize| pods[i].calls.load(Ordering::Relaxed);
    wait_for(
        "both first pods serve",
        || calls(0) > 0 && calls(1) > 0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(calls(2), 0, "the third is not resolved yet");

    // A new pod gets calls within one re-resolve period (plus connecting).
    dns.set(&[pods[0].addr, pods[1].addr, pods[2].addr]);
    wait_for(
        "the added pod serves",
        || calls(2) > 0,
        INTERVAL + Duration::from_millis(300),
    )
    .await;

    // Spread: measured over a window once all three are in.
    let before: Vec<u64> = (0..3).map(calls).collect();
    wait_for(
        "3000 calls",
        || (0..3).map(calls).sum::<u64>() - before.iter().sum::<u64>() >= 3000,
        Duration::from_secs(30),
    )
    .await;
    let served: Vec<u64> = (0..3).map(|i| calls(i) - before[i]).collect();
    let mean = served.iter().sum::<u64>() as f64 / 3.0;
    for (i, n) in served.iter().enumerate() {
        let share = *n as f64 / mean;
        assert!(
            (0.85..=1.15).contains(&share),
            "pod {i} served {n} of {served:?}"
        );
    }

    // A pod that leaves DNS stops getting calls; then it shuts down, and nothing failed.
    dns.set(&[pods[0].addr, pods[1].addr]);
    let mut last = calls(2);
    let quiet_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(INTERVAL / 2).await;
        let now = calls(2);
        if now == last {
            break;
        }
        last = now;
        assert!(
            quiet_since.elapsed() < Duration::from_secs(5),
            "the removed pod still gets calls"
        );
    }
    pods[2].stop.cancel();
    let keep_going = calls(0) + calls(1) + 500;
    wait_for(
        "calls go on",
        || calls(0) + calls(1) > keep_going,
        Duration::from_secs(10),
    )
    .await;
    load.cancel();
    for caller in callers {
        caller.await.expect("caller");
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no call failed");
    for pod in pods {
        pod.stop.cancel();
        pod.served.await.expect("server");
    }
}

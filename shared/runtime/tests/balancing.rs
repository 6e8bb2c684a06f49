//! Client-side balancing: three servers on 127.0.0.1, 127.0.0.2 and 127.0.0.3, behind a
//! resolver the test controls, or given by address and followed by their health.

// A test owns the tasks it spawns: they end with its runtime.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::pin::Pin;

use boardroom_runtime::client::{BalancedChannel, ChannelFactory, Resolution, Resolve};
use boardroom_runtime::config::ClientConfig;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

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

/// A health service that counts the Check calls it answers and reports the status the test
/// sets to watchers.
#[derive(Debug, Clone)]
struct Counting {
    calls: Arc<AtomicU64>,
    status: Arc<watch::Sender<ServingStatus>>,
}

#[tonic::async_trait]
impl Health for Counting {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        // A little work, so calls overlap.
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let statuses = WatchStream::new(self.status.subscribe()).map(|status| {
            Ok(HealthCheckResponse {
                status: status as i32,
            })
        });
        Ok(Response::new(Box::pin(statuses)))
    }
}

struct Instance {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
    status: Arc<watch::Sender<ServingStatus>>,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

async fn instance(ip: [u8; 4]) -> Instance {
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::from(ip), 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counting = Counting {
        calls: Arc::default(),
        status: Arc::new(watch::channel(ServingStatus::Serving).0),
    };
    let (calls, status) = (counting.calls.clone(), counting.status.clone());
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
        status,
        stop,
        served,
    }
}

/// Instances on 127.0.0.1, 127.0.0.2 and 127.0.0.3.
async fn three_pods() -> [Instance; 3] {
    [
        instance([127, 0, 0, 1]).await,
        instance([127, 0, 0, 2]).await,
        instance([127, 0, 0, 3]).await,
    ]
}

/// Stops the callers, checks that no call failed, and stops the instances.
async fn finish(
    load: CancellationToken,
    callers: Vec<tokio::task::JoinHandle<()>>,
    failures: &AtomicU64,
    pods: [Instance; 3],
) {
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

/// 16 callers calling in a loop through `channel` until `load` is cancelled, every failure
/// counted.
fn callers(
    channel: BalancedChannel,
    load: &CancellationToken,
    failures: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = tonic_health::pb::health_client::HealthClient::new(channel);
    (0..16)
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
        .collect()
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

/// Waits until `pod` gets no new calls for half a period, failing after `within`.
async fn wait_quiet(what: &str, pod: &Instance, within: Duration) {
    let calls = || pod.calls.load(Ordering::Relaxed);
    let mut last = calls();
    let since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(INTERVAL / 2).await;
        let now = calls();
        if now == last {
            return;
        }
        last = now;
        assert!(since.elapsed() < within, "{what}: it still gets calls");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_resolved_pods_follow_new_ones_and_drain_removed_ones() {
    let pods = three_pods().await;
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
    let failures = Arc::new(AtomicU64::new(0));
    let load = CancellationToken::new();
    let callers = callers(channel, &load, &failures);
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
    wait_quiet("the removed pod", &pods[2], Duration::from_secs(5)).await;
    pods[2].stop.cancel();
    let keep_going = calls(0) + calls(1) + 500;
    wait_for(
        "calls go on",
        || calls(0) + calls(1) > keep_going,
        Duration::from_secs(10),
    )
    .await;
    finish(load, callers, &failures, pods).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_stops_serving_gets_no_new_calls_and_shuts_down_without_failed_calls() {
    let pods = three_pods().await;
    let factory = ChannelFactory::new(ClientConfig {
        resolve_interval_ms: INTERVAL.as_millis() as u64,
        ..ClientConfig::default()
    });
    let addresses: Vec<String> = pods.iter().map(|p| format!("http://{}", p.addr)).collect();
    let channel = factory.channel(&addresses).expect("channel");
    let failures = Arc::new(AtomicU64::new(0));
    let load = CancellationToken::new();
    let callers = callers(channel, &load, &failures);
    let calls = |i: usize| pods[i].calls.load(Ordering::Relaxed);
    wait_for(
        "all three serve",
        || (0..3).all(|i| calls(i) > 0),
        Duration::from_secs(5),
    )
    .await;

    // What a server does on SIGTERM: NOT_SERVING first, then it closes. The client stops
    // sending it calls as soon as it hears, and nothing fails when it goes.
    pods[2].status.send_replace(ServingStatus::NotServing);
    wait_quiet("the draining pod", &pods[2], INTERVAL * 4).await;
    pods[2].stop.cancel();
    let keep_going = calls(0) + calls(1) + 500;
    wait_for(
        "calls go on",
        || calls(0) + calls(1) > keep_going,
        Duration::from_secs(10),
    )
    .await;

    // Serving again: it is taken back.
    pods[1].status.send_replace(ServingStatus::NotServing);
    wait_quiet("the pod out of service", &pods[1], INTERVAL * 4).await;
    pods[1].status.send_replace(ServingStatus::Serving);
    let resumed = calls(1);
    wait_for(
        "the pod back in service gets calls",
        || calls(1) > resumed,
        INTERVAL * 3,
    )
    .await;

    // No instance serving: calls still go to the ones that answer (not to the one that is
    // gone) rather than nowhere.
    pods[0].status.send_replace(ServingStatus::NotServing);
    pods[1].status.send_replace(ServingStatus::NotServing);
    let before = calls(0) + calls(1);
    wait_for(
        "calls go on with no instance serving",
        || calls(0) + calls(1) > before + 500,
        Duration::from_secs(10),
    )
    .await;

    finish(load, callers, &failures, pods).await;
}

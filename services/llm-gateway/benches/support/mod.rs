//! What the gateway's benchmarks share: a single-threaded runtime per side, and open- and
//! closed-loop load with latency percentiles.

// Each bench compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One call of a load; `true` when it succeeded.
pub type Call =
    Arc<dyn Fn(u64) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// A runtime of one worker thread (upstream, gateway and load each get their own).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Four channels to the gateway at `addr` (calls spread over them), connected on `rt`.
pub fn gateway_clients(
    rt: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
) -> Vec<
    boardroom_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient<
        tonic::transport::Channel,
    >,
> {
    rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(
                boardroom_proto::llm::v1::llm_gateway_service_client::LlmGatewayServiceClient::new(
                    boardroom_testkit::channel(addr).await,
                ),
            );
        }
        clients
    })
}

/// Latency percentiles in ms, throughput and failures of one load.
#[derive(Clone, Copy)]
pub struct Summary {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub rps: f64,
    pub errors: u64,
}

fn histogram() -> Arc<Mutex<Histogram<u64>>> {
    Arc::new(Mutex::new(
        Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ))
}

fn summary(h: &Mutex<Histogram<u64>>, count: u64, seconds: f64, errors: u64) -> Summary {
    let h = h.lock().expect("lock");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Summary {
        p50: ms(0.5),
        p99: ms(0.99),
        p999: ms(0.999),
        rps: count as f64 / seconds,
        errors,
    }
}

/// Sends `rps` calls a second for `seconds`, each at its scheduled time (queueing is charged:
/// no coordinated omission); the first second left out as warm-up.
pub async fn open_loop(rps: u32, seconds: u64, call: Call) -> Summary {
    let h = histogram();
    let errors = Arc::new(AtomicU64::new(0));
    let total = u64::from(rps) * seconds;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / f64::from(rps));
        tokio::time::sleep_until(at).await;
        let (call, h, errors) = (call.clone(), h.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let ok = call(i).await;
            let micros = at.elapsed().as_micros() as u64;
            if !ok {
                errors.fetch_add(1, Ordering::Relaxed);
            } else if i >= u64::from(rps) {
                let _ = h.lock().expect("lock").record(micros.max(1));
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    summary(
        &h,
        total.saturating_sub(u64::from(rps)),
        seconds.saturating_sub(1).max(1) as f64,
        errors.load(Ordering::Relaxed),
    )
}

/// `connections` callers, each sending its next call when the last answered, for `seconds`
/// after one second of warm-up.
pub async fn closed_loop(connections: usize, seconds: u64, call: Call) -> Summary {
    let h = histogram();
    let (errors, count, next) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let measuring = Arc::new(AtomicBool::new(false));
    let end = Instant::now() + Duration::from_secs(seconds + 1);
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (call, h, errors, count, next, measuring) = (
                call.clone(),
                h.clone(),
                errors.clone(),
                count.clone(),
                next.clone(),
                measuring.clone(),
            );
            tokio::spawn(async move {
                while Instant::now() < end {
                    let started = Instant::now();
                    let ok = call(next.fetch_add(1, Ordering::Relaxed)).await;
                    if !measuring.load(Ordering::Relaxed) {
                        continue;
                    }
                    if ok {
                        count.fetch_add(1, Ordering::Relaxed);
                        let micros = started.elapsed().as_micros() as u64;
                        let _ = h.lock().expect("lock").record(micros.max(1));
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    summary(
        &h,
        count.load(Ordering::Relaxed),
        seconds as f64,
        errors.load(Ordering::Relaxed),
    )
}

//! Shared by the cache tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use boardroom_cache::{CacheConfig, Invalidation, RedisSettings, TieredCache};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

pub const TTL: Duration = Duration::from_secs(60);

pub async fn cache(url: &str, prefix: &str, stop: &CancellationToken) -> TieredCache {
    cache_with(url, prefix, stop, |_| {}).await
}

/// Two instances on the real Redis under a fresh prefix, both connected.
pub async fn two_connected(stop: &CancellationToken) -> (TieredCache, TieredCache) {
    let (url, _) = boardroom_testkit::redis_url().await;
    let prefix = format!("t{}:", boardroom_testkit::unique_suffix());
    let (a, b) = (
        cache(&url, &prefix, stop).await,
        cache(&url, &prefix, stop).await,
    );
    wait_until(a.l2_status(), true).await;
    wait_until(b.l2_status(), true).await;
    (a, b)
}

/// [`cache`] with `adjust` applied to its configuration.
pub async fn cache_with(
    url: &str,
    prefix: &str,
    stop: &CancellationToken,
    adjust: impl FnOnce(&mut CacheConfig),
) -> TieredCache {
    let mut config = CacheConfig {
        prefix: prefix.to_owned(),
        redis: Some(RedisSettings {
            url: url.to_owned(),
            pool_size: 2,
            timeout: Duration::from_millis(200),
        }),
        ..CacheConfig::default()
    };
    adjust(&mut config);
    TieredCache::new("test", config, stop.clone())
        .await
        .expect("cache")
}

/// A loader that counts its calls and returns `value`.
pub fn loader(
    calls: &Arc<AtomicUsize>,
    value: Option<&'static str>,
) -> impl Fn() -> std::future::Ready<Result<Option<Bytes>, anyhow::Error>> {
    let calls = calls.clone();
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(value.map(|v| Bytes::from_static(v.as_bytes()))))
    }
}

pub async fn wait_until(mut status: tokio::sync::watch::Receiver<bool>, wanted: bool) {
    tokio::time::timeout(Duration::from_secs(20), status.wait_for(|up| *up == wanted))
        .await
        .unwrap_or_else(|_| panic!("L2 never became {}", if wanted { "up" } else { "down" }))
        .expect("status channel open");
}

pub async fn next_invalidation(
    events: &mut tokio::sync::broadcast::Receiver<Invalidation>,
    wanted: &Invalidation,
) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if &events.recv().await.expect("events open") == wanted {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no invalidation {wanted:?}"));
}

/// Returns once `events` (another instance's) has heard every invalidation of `writer`'s
/// writes so far: Redis pushes them in order, so hearing a fresh write means the rest arrived.
pub async fn barrier(
    writer: &TieredCache,
    events: &mut tokio::sync::broadcast::Receiver<Invalidation>,
) {
    let key = format!("barrier-{}", boardroom_testkit::unique_suffix());
    writer.set(&key, Bytes::from_static(b"-"), TTL).await;
    next_invalidation(events, &Invalidation::Key(key.into())).await;
}

/// The documented bound between a write's acknowledgement and the last read of the value it
/// replaced, on another instance, while tracking is up.
pub const INVALIDATION_DELAY: Duration = Duration::from_millis(50);

/// What [`load`] saw.
pub struct LoadReport {
    /// Reads and the writes acknowledged (to the "database").
    pub reads: usize,
    pub writes: usize,
    /// Reads that saw a version older than one acknowledged `bound` before they started:
    /// (key, version read, version required, how long after the newer write).
    stale: Vec<(usize, u64, u64, Duration, Duration)>,
    /// When the fault ran, relative to the start, and how long it took.
    pub fault: Option<(Duration, Duration)>,
    /// The longest time a replaced value was still served.
    pub worst_lag: Duration,
}

impl LoadReport {
    /// Reads that started more than `bound` after a newer write was acknowledged.
    pub fn stale_past(&self, bound: Duration) -> Vec<String> {
        self.stale
            .iter()
            .filter(|s| s.3 > bound)
            .map(|(key, seen, required, lag, at)| {
                format!("k{key}: saw v{seen}, v{required} acknowledged {lag:?} before (at {at:?})")
            })
            .collect()
    }

    /// Panics unless the run was long enough, no read was stale past `bound`, and none at
    /// all (however short) after `recovery` from the fault's end.
    pub fn assert_fresh_after_fault(&self, bound: Duration, recovery: Duration) {
        let (began, took) = self.fault.expect("a fault ran");
        let settled = began + took + recovery;
        let late: Vec<String> = self
            .stale
            .iter()
            .filter(|s| s.4 > settled && s.3 > INVALIDATION_DELAY)
            .map(|(key, seen, required, lag, at)| {
                format!("k{key}: saw v{seen}, v{required} acknowledged {lag:?} before (at {at:?})")
            })
            .collect();
        let last = self
            .stale
            .iter()
            .filter(|s| s.3 > INVALIDATION_DELAY)
            .map(|s| s.4)
            .max();
        eprintln!(
            "stale reads during the fault: {}, the last at {last:?} (the fault ended at {:?})",
            self.stale
                .iter()
                .filter(|s| s.3 > INVALIDATION_DELAY)
                .count(),
            began + took
        );
        assert!(
            late.is_empty(),
            "{} reads were stale {recovery:?} after the fault ended, e.g. {:?}",
            late.len(),
            &late[..late.len().min(5)]
        );
        self.assert_fresh_outside(bound, began, settled);
    }

    fn assert_fresh_outside(&self, bound: Duration, from: Duration, to: Duration) {
        let outside = LoadReport {
            stale: self
                .stale
                .iter()
                .filter(|s| s.4 < from || s.4 > to)
                .cloned()
                .collect(),
            ..*self
        };
        outside.assert_fresh(bound);
    }

    /// Panics unless the run was long enough and no read was stale past `bound`.
    pub fn assert_fresh(&self, bound: Duration) {
        eprintln!(
            "reads: {}, writes: {}, fault at/for: {:?}, longest time a replaced value was still served: {:?}",
            self.reads, self.writes, self.fault, self.worst_lag
        );
        assert!(
            self.reads > 1000,
            "the run did enough reads: {}",
            self.reads
        );
        let stale = self.stale_past(bound);
        assert!(
            stale.is_empty(),
            "{} of {} reads were stale past {bound:?}, e.g. {:?}",
            stale.len(),
            self.reads,
            &stale[..stale.len().min(5)]
        );
    }
}

/// 64 clients read and write 256 keys (2 % writes) through the instances for `duration`;
/// `fault` (blocking) runs on its own thread from `duration / 4` on. The "database" is a
/// version per key: a write bumps it, then deletes the key from the cache (whatever the cache
/// answers: the database write is what the caller was told of); a read loads through the
/// cache and records the version it saw.
pub async fn load(
    instances: &[TieredCache],
    duration: Duration,
    fault: Option<Box<dyn FnOnce() + Send>>,
) -> LoadReport {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU64;
    use std::time::Instant;
    const KEYS: usize = 256;
    let truth: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    // Per key: (acknowledged at, version).
    type AckLog = Vec<Mutex<Vec<(Instant, u64)>>>;
    let acks: Arc<AckLog> = Arc::new((0..KEYS).map(|_| Mutex::new(Vec::new())).collect());
    let reads: Arc<Mutex<Vec<(usize, Instant, u64)>>> = Arc::default();
    let start = Instant::now();
    let deadline = start + duration;
    let fault = fault.map(|fault| {
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(duration / 4);
            let began = start.elapsed();
            fault();
            (began, start.elapsed() - began)
        })
    });
    let clients: Vec<_> = (0..64)
        .map(|client| {
            let (instances, truth, acks, reads) = (
                instances.to_vec(),
                truth.clone(),
                acks.clone(),
                reads.clone(),
            );
            tokio::spawn(async move {
                let mut n: usize = client;
                while Instant::now() < deadline {
                    // A real caller yields at its network I/O; an L1 hit alone never does, and a
                    // loop of them would starve the task that applies invalidations.
                    tokio::task::yield_now().await;
                    n = n.wrapping_mul(1103515245).wrapping_add(12345) % 1_000_003;
                    let key = n % KEYS;
                    let cache = &instances[n % instances.len()];
                    let name = format!("k{key}");
                    if n.is_multiple_of(50) {
                        // Write: the database first, then invalidate. (Concurrent writers of one
                        // key must not write values through: their SETs can land out of order.)
                        let version = truth[key].fetch_add(1, Ordering::SeqCst) + 1;
                        cache.delete(&name).await;
                        acks[key]
                            .lock()
                            .expect("lock")
                            .push((Instant::now(), version));
                    } else {
                        let started = Instant::now();
                        let truth = truth.clone();
                        let value = cache
                            .get_or_load(&name, TTL, move || {
                                let truth = truth.clone();
                                async move {
                                    let read = truth[key].load(Ordering::SeqCst);
                                    // The time a real query takes between reading and returning: the
                                    // window in which a write can overtake this fill.
                                    tokio::time::sleep(Duration::from_micros(500)).await;
                                    Ok::<_, anyhow::Error>(Some(Bytes::from(read.to_string())))
                                }
                            })
                            .await
                            .expect("read");
                        let version: u64 = std::str::from_utf8(&value.expect("present"))
                            .expect("utf8")
                            .parse()
                            .expect("number");
                        reads.lock().expect("lock").push((key, started, version));
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client");
    }
    let fault = match fault {
        Some(fault) => Some(fault.await.expect("fault")),
        None => None,
    };
    let reads = reads.lock().expect("lock");
    let mut stale = Vec::new();
    let mut worst_lag = Duration::ZERO;
    for &(key, started, version) in reads.iter() {
        // The first newer write acknowledged before this read started.
        let acks = acks[key].lock().expect("lock");
        let newer = acks
            .iter()
            .filter(|(acked, v)| *v > version && *acked <= started)
            .min_by_key(|(acked, _)| *acked);
        if let Some((acked, required)) = newer {
            let lag = started - *acked;
            worst_lag = worst_lag.max(lag);
            let latest = acks
                .iter()
                .filter(|(a, _)| *a <= started)
                .map(|(_, v)| *v)
                .max()
                .unwrap_or(*required);
            stale.push((key, version, latest, lag, started - start));
        }
    }
    LoadReport {
        reads: reads.len(),
        writes: acks.iter().map(|a| a.lock().expect("lock").len()).sum(),
        stale,
        fault,
        worst_lag,
    }
}

//! Admission by queueing delay: a server that cannot keep up refuses the excess at once
//! instead of letting every call wait in a queue that only grows (CoDel, Nichols and Jacobson
//! 2012; as Facebook applies it to RPC queues, "Fail at Scale", 2015).
//!
//! A call's queueing delay is the time from its arrival until it may run: waiting for the
//! runtime to first poll it (the scheduler's queue, where an overloaded process's calls wait)
//! and for a concurrency slot. Short bursts make delays that drain: some call in every
//! `interval` gets through quickly. A standing queue does not drain: when even the quickest
//! admission of a whole `interval` waited longer than `target`, the server is overloaded, and
//! until an interval passes whose quickest admission is back under `target`, a call that has
//! already waited `target` is refused (UNAVAILABLE with `retry-after`) rather than run late.
//! Otherwise a call may wait `interval` at most (Facebook's long and short queue timeouts).
//! Refusals cost next to nothing, so the queue drains; as load falls the callers' retries are
//! admitted again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The admission state of one server, shared by its connections.
#[derive(Debug)]
pub struct QueueDelay {
    target: Duration,
    interval: Duration,
    epoch: Instant,
    /// Start of the current interval, in nanoseconds since `epoch`.
    window_start: AtomicU64,
    /// The smallest queueing delay admitted in the current interval, in nanoseconds.
    window_min: AtomicU64,
    overloaded: AtomicBool,
}

impl QueueDelay {
    /// A controller refusing calls that waited `target` while the quickest admission of an
    /// `interval` waited longer than `target`. A zero `target` never refuses.
    pub fn new(target: Duration, interval: Duration) -> Self {
        Self {
            target,
            interval: interval.max(Duration::from_millis(1)),
            epoch: Instant::now(),
            window_start: AtomicU64::new(0),
            window_min: AtomicU64::new(u64::MAX),
            overloaded: AtomicBool::new(false),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// How long a call may wait to start now: `target` while overloaded, `interval`
    /// otherwise (a call that waited longer is stale: its caller is better served by a fast
    /// refusal and a retry than by a late answer).
    fn limit(&self) -> Duration {
        if self.overloaded.load(Ordering::Relaxed) {
            self.target
        } else {
            self.interval
        }
    }

    /// Whether a call that has waited `waited` so far is refused now.
    pub fn refuses(&self, waited: Duration) -> bool {
        !self.target.is_zero() && waited > self.limit()
    }

    /// How much longer a call that has waited `waited` may wait for a concurrency slot: until
    /// it has waited the limit (see [`QueueDelay::refuses`]), and never past `left`.
    pub fn patience(&self, waited: Duration, left: Duration) -> Duration {
        if self.target.is_zero() {
            left
        } else {
            self.limit().saturating_sub(waited).min(left)
        }
    }

    /// Whether the server is refusing late calls now.
    pub fn overloaded(&self) -> bool {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// Records the queueing delay of a call admitted at `now`; at the end of an interval,
    /// decides whether the next one refuses late calls. Whether the state changed.
    pub fn admitted(&self, waited: Duration, now: Instant) -> bool {
        if self.target.is_zero() {
            return false;
        }
        let waited = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.window_min.fetch_min(waited, Ordering::Relaxed);
        let now = self.nanos(now);
        let start = self.window_start.load(Ordering::Relaxed);
        let interval = u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX);
        if now.saturating_sub(start) < interval
            || self
                .window_start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        // This call closes the interval (one caller wins the exchange).
        let quickest = self.window_min.swap(u64::MAX, Ordering::AcqRel);
        let target = u64::try_from(self.target.as_nanos()).unwrap_or(u64::MAX);
        let overloaded = quickest > target;
        self.overloaded.swap(overloaded, Ordering::AcqRel) != overloaded
    }
}

/// How late the runtime runs a task that is ready: the time from a timer's due instant until
/// the task it woke has been put back behind everything else that is ready and polled again.
/// A process short of CPU (its threads waiting for a core, or tokio's queues long) runs
/// every task late by about this much; an idle one by the timer's resolution (~1 ms).
async fn scheduling_delay(period: Duration) -> Duration {
    let due = tokio::time::Instant::now() + period;
    tokio::time::sleep_until(due).await;
    // A woken task may run before the rest of the queue (tokio's LIFO slot); a yield puts it
    // behind what is ready, so the delay counts the queue as well.
    tokio::task::yield_now().await;
    tokio::time::Instant::now().saturating_duration_since(due)
}

/// The limit on costly work in flight, adjusted once an interval: cut to [`DECREASE`] of what
/// is in flight when the runtime ran late (at most once a `cooldown`, so that the work
/// already admitted shows its cost before the next cut), raised by a `1 / INCREASE` share
/// when the limit refused work and the runtime kept up. Additive increase and multiplicative
/// decrease, as TCP's congestion window; the signal is the scheduling delay rather than loss.
#[derive(Debug, Clone)]
struct Aimd {
    limit: f64,
    min: f64,
    max: f64,
    cooldown: Duration,
    cut_at: Option<Instant>,
}

/// The share of what is in flight that a cut leaves.
const DECREASE: f64 = 0.8;
/// A raise adds `limit / INCREASE` (at least one).
const INCREASE: f64 = 32.0;

impl Aimd {
    /// Starts at `max` (no limit until the runtime runs late).
    fn new(min: usize, max: usize, cooldown: Duration) -> Self {
        let (min, max) = (min.max(1) as f64, max.max(1) as f64);
        Self {
            limit: max,
            min: min.min(max),
            max,
            cooldown,
            cut_at: None,
        }
    }

    /// Sets the least time between two cuts (the admitted work's own duration).
    fn set_cooldown(&mut self, cooldown: Duration) {
        self.cooldown = cooldown;
    }

    /// The limit for the next interval, after one in which the runtime ran late or not
    /// (`late`), with `in_flight` now and `pressed` when the limit refused work.
    fn next(&mut self, late: bool, in_flight: usize, pressed: bool, now: Instant) -> usize {
        if late {
            if self
                .cut_at
                .is_none_or(|at| now.saturating_duration_since(at) >= self.cooldown)
            {
                self.limit = (self.limit.min(in_flight as f64) * DECREASE).max(self.min);
                self.cut_at = Some(now);
            }
        } else if pressed {
            self.limit = (self.limit + (self.limit / INCREASE).max(1.0)).min(self.max);
        }
        self.limit as usize
    }
}

/// Most seconds a refusal asks its caller to wait.
const MAX_RETRY_AFTER: u64 = 5;

/// How long a refused caller is asked to wait: 1 second plus up to `MAX_RETRY_AFTER - 1`
/// more, as the share of work refused (over about the last second) goes from none to all.
/// Callers asked to wait longer come back less often, so the share falls and so does the
/// wait (a negative feedback); a refusal storm does not take the CPU the admitted work needs.
#[derive(Debug, Clone, Default)]
struct RetryAfter {
    share: f64,
}

impl RetryAfter {
    /// After an interval of `interval` in which `refused` were refused and `admitted`
    /// admitted: the seconds to ask for.
    fn next(&mut self, refused: u64, admitted: u64, interval: Duration) -> u64 {
        // Weight of the newest interval: about a second of history.
        let alpha = interval.as_secs_f64().clamp(1e-3, 1.0);
        let total = refused + admitted;
        let share = if total == 0 {
            0.0
        } else {
            refused as f64 / total as f64
        };
        self.share += alpha * (share - self.share);
        1 + (self.share * (MAX_RETRY_AFTER - 1) as f64).round() as u64
    }
}

/// How long admitted work lasts: the mean of the work that ended, smoothed over about ten
/// intervals in which some ended.
#[derive(Debug, Default)]
struct Lasts {
    mean: Option<Duration>,
}

impl Lasts {
    /// After an interval in which `ended` pieces of work ended, having held their permits
    /// `micros` in all.
    fn next(&mut self, ended: u64, micros: u64) -> Duration {
        if let Some(mean_micros) = micros.checked_div(ended) {
            let latest = Duration::from_micros(mean_micros);
            self.mean = Some(match self.mean {
                None => latest,
                Some(mean) => mean.mul_f64(0.9) + latest.mul_f64(0.1),
            });
        }
        self.mean.unwrap_or_default()
    }
}

/// What [`WorkGate`] is told.
#[derive(Debug, Clone, Copy)]
pub struct WorkAdmission {
    /// The scheduling delay above which the runtime counts as late; zero turns the gate's
    /// adjustment off (only `max` holds).
    pub target: Duration,
    /// How often the limit is adjusted (the delay is sampled ten times an interval).
    pub interval: Duration,
    /// Least and most work in flight the limit allows.
    pub min: usize,
    pub max: usize,
}

/// Admits costly work (a turn) while the runtime keeps up: a limit on the work in flight,
/// adjusted by [`Aimd`] from [`scheduling_delay`]. Work past the limit is refused at once,
/// before it costs anything, so the work admitted keeps its normal latency.
#[derive(Debug, Clone)]
pub struct WorkGate {
    shared: Arc<GateShared>,
}

#[derive(Debug)]
struct GateShared {
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    /// Work refused, admitted and ended since the start, and how long the ended work held
    /// its permits in all (µs).
    refused: AtomicU64,
    admitted: AtomicU64,
    ended: AtomicU64,
    held_micros: AtomicU64,
    /// What a refusal asks its caller to wait, in seconds (see [`RetryAfter`]).
    retry_after: AtomicU64,
    /// The gate's series (`gate` label), looked up once.
    in_flight_gauge: metrics::Gauge,
    series: GateSeries,
}

/// A gate's limit and refusals as series (`gate` label), looked up once.
#[derive(Debug)]
struct GateSeries {
    limit: metrics::Gauge,
    refused: metrics::Counter,
}

impl GateSeries {
    /// The series of the gate `name`: the limit at `max`, the refusals at zero (before the
    /// first refusal, so that their rate exists).
    fn new(name: &'static str, max: usize) -> Self {
        let series = Self {
            limit: metrics::gauge!("admission_work_limit", "gate" => name),
            refused: metrics::counter!("admission_work_refused_total", "gate" => name),
        };
        series.limit.set(max as f64);
        series.refused.increment(0);
        series
    }
}

/// The gate's counters at one instant; subtracted, what happened in between.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    refused: u64,
    admitted: u64,
    ended: u64,
    held_micros: u64,
}

impl Counts {
    fn read(shared: &GateShared) -> Self {
        Self {
            refused: shared.refused.load(Ordering::Relaxed),
            admitted: shared.admitted.load(Ordering::Relaxed),
            ended: shared.ended.load(Ordering::Relaxed),
            held_micros: shared.held_micros.load(Ordering::Relaxed),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            refused: self.refused - before.refused,
            admitted: self.admitted - before.admitted,
            ended: self.ended - before.ended,
            held_micros: self.held_micros - before.held_micros,
        }
    }
}

/// One admitted piece of work; it leaves the gate when dropped.
#[derive(Debug)]
pub struct WorkPermit {
    shared: Arc<GateShared>,
    entered: Instant,
}

impl Drop for WorkPermit {
    fn drop(&mut self) {
        let held = u64::try_from(self.entered.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.shared.held_micros.fetch_add(held, Ordering::Relaxed);
        self.shared.ended.fetch_add(1, Ordering::Relaxed);
        let left = self.shared.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        self.shared.in_flight_gauge.set(left as f64);
    }
}

impl WorkGate {
    /// A gate named `name` (its metrics' `gate` label), adjusted until `stop` from the
    /// scheduling delay of the current runtime (see [`each_interval`]).
    pub fn start(
        name: &'static str,
        settings: WorkAdmission,
        stop: tokio_util::sync::CancellationToken,
    ) -> Self {
        let gate = Self {
            shared: Arc::new(GateShared {
                in_flight: AtomicUsize::new(0),
                limit: AtomicUsize::new(settings.max.max(1)),
                refused: AtomicU64::new(0),
                admitted: AtomicU64::new(0),
                ended: AtomicU64::new(0),
                held_micros: AtomicU64::new(0),
                retry_after: AtomicU64::new(1),
                in_flight_gauge: metrics::gauge!("admission_work_in_flight", "gate" => name),
                series: GateSeries::new(name, settings.max),
            }),
        };
        if !settings.target.is_zero() {
            gate.clone().adjust(settings, stop);
        }
        gate
    }

    /// A permit, or, when the work in flight is at the limit, how many seconds the caller
    /// is asked to wait before it tries again.
    pub fn try_enter(&self) -> Result<WorkPermit, u64> {
        let limit = self.shared.limit.load(Ordering::Relaxed);
        let entered =
            self.shared
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < limit).then_some(n + 1)
                });
        match entered {
            Ok(n) => {
                self.shared.admitted.fetch_add(1, Ordering::Relaxed);
                self.shared.in_flight_gauge.set((n + 1) as f64);
                Ok(WorkPermit {
                    shared: self.shared.clone(),
                    entered: Instant::now(),
                })
            }
            Err(_) => {
                self.shared.refused.fetch_add(1, Ordering::Relaxed);
                self.shared.series.refused.increment(1);
                Err(self.shared.retry_after.load(Ordering::Relaxed))
            }
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Ordering::Relaxed)
    }

    fn adjust(self, settings: WorkAdmission, stop: tokio_util::sync::CancellationToken) {
        let interval = settings.interval.max(Duration::from_millis(10));
        // At most one cut per the work's own duration (measured; an interval at first).
        let mut aimd = Aimd::new(settings.min, settings.max, interval);
        let mut lasts = Lasts::default();
        let mut retry_after = RetryAfter::default();
        let mut counted = Counts::default();
        each_interval(interval, settings.target, stop, move |late, now| {
            let in_flight = self.shared.in_flight.load(Ordering::Relaxed);
            let now_counted = Counts::read(&self.shared);
            let since = now_counted.since(counted);
            counted = now_counted;
            aimd.set_cooldown(
                lasts
                    .next(since.ended, since.held_micros)
                    .clamp(interval, interval * 100),
            );
            // Pressed: the limit refused work in the interval.
            let limit = aimd.next(late, in_flight, since.refused > 0, now);
            let asked = retry_after.next(since.refused, since.admitted, interval);
            self.shared.retry_after.store(asked, Ordering::Relaxed);
            if limit != self.shared.limit.swap(limit, Ordering::Relaxed) {
                self.shared.series.limit.set(limit as f64);
            }
        });
    }
}

/// After each `interval` until `stop`, calls `each` with whether the current runtime ran late
/// in it (the median of its ten [`scheduling_delay`] samples over `target`: one late sample, a
/// page fault or a burst, does not count) and the instant. The samples are taken by one
/// [`Probe`] for every gate of the runtime with the same interval, so a second gate adds no
/// timer and no wake-up.
fn each_interval(
    interval: Duration,
    target: Duration,
    stop: tokio_util::sync::CancellationToken,
    mut each: impl FnMut(bool, Instant) + Send + 'static,
) {
    let mut samples = Vec::with_capacity(16);
    let mut opened = Instant::now();
    Probe::subscribe(
        interval / 10,
        Box::new(move |delay, now| {
            if stop.is_cancelled() {
                return false;
            }
            samples.push(delay);
            if now.saturating_duration_since(opened) >= interval {
                opened = now;
                samples.sort_unstable();
                let late = samples[samples.len() / 2] > target;
                samples.clear();
                each(late, now);
            }
            true
        }),
    );
}

/// Told each sample of its probe and the instant; `false` once it wants no more.
type Subscriber = Box<dyn FnMut(Duration, Instant) -> bool + Send>;

/// A runtime and a sampling period.
type ProbeKey = (tokio::runtime::Id, Duration);

/// The probes running, one a runtime and period at most.
static PROBES: LazyLock<Mutex<HashMap<ProbeKey, Arc<Probe>>>> = LazyLock::new(Default::default);

/// Samples one runtime's [`scheduling_delay`] every period for its subscribers (the gates of
/// the runtime), while it has any: in `boardroom serve` the turn gate and the start gate share
/// one runtime, and each took its own samples (twice the timers and wake-ups of one).
#[derive(Default)]
struct Probe {
    subscribers: Mutex<Vec<Subscriber>>,
    /// Set, with [`PROBES`] held, once its task has ended or is ending: a subscriber then
    /// starts a new probe.
    ended: AtomicBool,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Probe {
    /// Adds `subscriber` to the current runtime's probe of `period`, started if there is none.
    fn subscribe(period: Duration, subscriber: Subscriber) {
        let key = (tokio::runtime::Handle::current().id(), period);
        let mut probes = locked(&PROBES);
        if let Some(probe) = probes.get(&key)
            && !probe.ended.load(Ordering::Acquire)
        {
            locked(&probe.subscribers).push(subscriber);
            return;
        }
        let probe = Arc::new(Probe::default());
        locked(&probe.subscribers).push(subscriber);
        probes.insert(key, probe.clone());
        drop(probes);
        // Ends when its last subscriber leaves, or with its runtime (`Leave` unregisters it).
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(probe.run(key));
    }

    async fn run(self: Arc<Self>, key: ProbeKey) {
        let _leave = Leave(key, self.clone());
        loop {
            let delay = scheduling_delay(key.1).await;
            metrics::histogram!("runtime_scheduling_delay_seconds").record(delay.as_secs_f64());
            let now = Instant::now();
            let mut subscribers = locked(&self.subscribers);
            subscribers.retain_mut(|told| told(delay, now));
            if subscribers.is_empty() {
                drop(subscribers);
                // Decided with the registry held, so that no subscriber joins a probe that ends.
                let probes = locked(&PROBES);
                if locked(&self.subscribers).is_empty() {
                    self.ended.store(true, Ordering::Release);
                    drop(probes);
                    return;
                }
            }
        }
    }

    /// The probes running on the current runtime.
    #[cfg(test)]
    fn running() -> usize {
        let id = tokio::runtime::Handle::current().id();
        locked(&PROBES)
            .iter()
            .filter(|((runtime, _), probe)| *runtime == id && !probe.ended.load(Ordering::Acquire))
            .count()
    }
}

/// Takes an ended probe out of [`PROBES`], however its task ended (its runtime shut down and
/// dropped it, too: a runtime started later may be given the same id).
struct Leave(ProbeKey, Arc<Probe>);

impl Drop for Leave {
    fn drop(&mut self) {
        let mut probes = locked(&PROBES);
        self.1.ended.store(true, Ordering::Release);
        if probes.get(&self.0).is_some_and(|p| Arc::ptr_eq(p, &self.1)) {
            probes.remove(&self.0);
        }
    }
}

/// Admits the calls that start new work (a user's session, a thread) at a rate, adjusted by
/// [`Aimd`] from [`scheduling_delay`] as [`WorkGate`] adjusts its limit: a new user's calls
/// are short, so a limit on those in flight would not hold them back, and a burst of them
/// (hundreds of users arriving a second) fills the cores that the users already at work need.
/// While the runtime runs late the rate is cut to [`DECREASE`] of what was admitted in the
/// last interval (at most once an interval); while it keeps up and the rate refused calls,
/// it grows by `1 / INCREASE`. Calls past the rate are refused at once (UNAVAILABLE with
/// `retry-after`), before they cost anything.
#[derive(Debug, Clone)]
pub struct RateGate {
    shared: Arc<RateShared>,
}

#[derive(Debug)]
struct RateShared {
    epoch: Instant,
    interval: Duration,
    /// Calls admitted an interval at most.
    limit: AtomicUsize,
    /// The interval (counted from `epoch`) that `in_window` counts, and its admissions.
    window: AtomicU64,
    in_window: AtomicUsize,
    refused: AtomicU64,
    admitted: AtomicU64,
    retry_after: AtomicU64,
    series: GateSeries,
}

impl RateGate {
    /// A gate named `name` (its metrics' `gate` label: `admission_work_limit` is then the
    /// calls admitted an interval), adjusted until `stop` from the scheduling delay of the
    /// current runtime; `min` and `max` bound the calls admitted an interval.
    pub fn start(
        name: &'static str,
        settings: WorkAdmission,
        stop: tokio_util::sync::CancellationToken,
    ) -> Self {
        let gate = Self::new(name, settings);
        if !settings.target.is_zero() {
            gate.clone().adjust(settings, stop);
        }
        gate
    }

    fn new(name: &'static str, settings: WorkAdmission) -> Self {
        Self {
            shared: Arc::new(RateShared {
                epoch: Instant::now(),
                interval: settings.interval.max(Duration::from_millis(10)),
                limit: AtomicUsize::new(settings.max.max(1)),
                window: AtomicU64::new(0),
                in_window: AtomicUsize::new(0),
                refused: AtomicU64::new(0),
                admitted: AtomicU64::new(0),
                retry_after: AtomicU64::new(1),
                series: GateSeries::new(name, settings.max),
            }),
        }
    }

    /// Admits the call, or, when this interval's calls have reached the rate, how many
    /// seconds the caller is asked to wait before it tries again.
    pub fn try_enter(&self) -> Result<(), u64> {
        self.try_enter_at(Instant::now())
    }

    fn try_enter_at(&self, now: Instant) -> Result<(), u64> {
        let shared = &self.shared;
        let window = u64::try_from(
            now.saturating_duration_since(shared.epoch).as_nanos() / shared.interval.as_nanos(),
        )
        .unwrap_or(u64::MAX);
        // The first call of a new interval starts its count (one caller wins the exchange).
        let seen = shared.window.load(Ordering::Acquire);
        if window > seen
            && shared
                .window
                .compare_exchange(seen, window, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            shared.in_window.store(0, Ordering::Release);
        }
        let limit = shared.limit.load(Ordering::Relaxed);
        let entered = shared
            .in_window
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            });
        if entered.is_ok() {
            shared.admitted.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            shared.series.refused.increment(1);
            Err(shared.retry_after.load(Ordering::Relaxed))
        }
    }

    /// The calls admitted an interval at most, now.
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Ordering::Relaxed)
    }

    fn adjust(self, settings: WorkAdmission, stop: tokio_util::sync::CancellationToken) {
        let interval = self.shared.interval;
        // A call's cost shows within the interval it ran in: a cut an interval at most.
        let mut aimd = Aimd::new(settings.min, settings.max, interval);
        let mut retry_after = RetryAfter::default();
        let (mut refused, mut admitted) = (0, 0);
        each_interval(interval, settings.target, stop, move |late, now| {
            let (r, a) = (
                self.shared.refused.load(Ordering::Relaxed),
                self.shared.admitted.load(Ordering::Relaxed),
            );
            let (since_refused, since_admitted) = (r - refused, a - admitted);
            (refused, admitted) = (r, a);
            let per_interval = usize::try_from(since_admitted).unwrap_or(usize::MAX);
            // Late with nothing admitted: these calls are not what the cores are busy with,
            // and the rate stays as it is.
            let limit = if late && since_admitted == 0 {
                self.limit()
            } else {
                aimd.next(late, per_interval, since_refused > 0, now)
            };
            let asked = retry_after.next(since_refused, since_admitted, interval);
            self.shared.retry_after.store(asked, Ordering::Relaxed);
            if limit != self.shared.limit.swap(limit, Ordering::Relaxed) {
                self.shared.series.limit.set(limit as f64);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_standing_queue_turns_refusal_on_and_a_quick_admission_turns_it_off() {
        let q = QueueDelay::new(5 * MS, 100 * MS);
        let t0 = q.epoch;
        // A burst: slow admissions, but one quick one in the interval.
        q.admitted(40 * MS, t0 + 10 * MS);
        q.admitted(MS, t0 + 20 * MS);
        assert!(!q.admitted(50 * MS, t0 + 101 * MS));
        assert!(!q.overloaded() && !q.refuses(80 * MS));
        // Not overloaded, a call may still wait an interval at most.
        assert!(q.refuses(101 * MS));
        assert_eq!(q.patience(30 * MS, Duration::from_secs(30)), 70 * MS);
        // A standing queue: every admission of an interval waited more than the target.
        for i in 1..10 {
            q.admitted(20 * MS, t0 + 110 * MS + i * 10 * MS);
        }
        assert!(q.admitted(30 * MS, t0 + 210 * MS), "turned on");
        assert!(q.overloaded());
        assert!(q.refuses(6 * MS) && !q.refuses(4 * MS));
        assert_eq!(q.patience(2 * MS, 30 * MS * 1000), 3 * MS);
        // Never past the call's own deadline.
        assert_eq!(q.patience(2 * MS, MS), MS);
        // Load falls: an interval with a quick admission turns it off.
        q.admitted(MS, t0 + 250 * MS);
        assert!(q.admitted(MS, t0 + 311 * MS), "turned off");
        assert!(!q.refuses(100 * MS));
        assert_eq!(q.patience(2 * MS, 30 * MS), 30 * MS);
        assert_eq!(q.patience(2 * MS, Duration::from_secs(30)), 98 * MS);
    }

    #[test]
    fn a_rate_gate_admits_its_limit_an_interval_and_counts_afresh_in_the_next() {
        let gate = RateGate::new(
            "test_rate",
            WorkAdmission {
                target: Duration::ZERO,
                interval: 100 * MS,
                min: 1,
                max: 3,
            },
        );
        let t0 = gate.shared.epoch + 1000 * MS;
        for i in 0..3 {
            assert_eq!(gate.try_enter_at(t0 + i * MS), Ok(()), "call {i}");
        }
        // The fourth call of the interval is refused at once, with the wait to ask for.
        assert_eq!(gate.try_enter_at(t0 + 50 * MS), Err(1));
        // The next interval admits three again.
        for i in 0..3 {
            assert_eq!(
                gate.try_enter_at(t0 + 100 * MS + i * MS),
                Ok(()),
                "call {i}"
            );
        }
        assert!(gate.try_enter_at(t0 + 150 * MS).is_err());
        assert_eq!(gate.shared.admitted.load(Ordering::Relaxed), 6);
        assert_eq!(gate.shared.refused.load(Ordering::Relaxed), 2);
        assert_eq!(gate.limit(), 3);
    }

    #[test]
    fn a_zero_target_never_refuses() {
        let q = QueueDelay::new(Duration::ZERO, 100 * MS);
        for i in 0..50 {
            q.admitted(Duration::from_secs(1), q.epoch + i * 10 * MS);
        }
        assert!(!q.overloaded() && !q.refuses(Duration::from_secs(10)));
    }

    #[test]
    fn the_work_limit_is_cut_when_the_runtime_runs_late_and_grows_back_while_it_keeps_up() {
        let t0 = Instant::now();
        let mut aimd = Aimd::new(4, 1000, 500 * MS);
        // No limit until the runtime runs late; unpressed, it stays.
        assert_eq!(aimd.next(false, 300, false, t0), 1000);
        // Late: cut to 0.8 of what is in flight (below the limit, so that the cut bites).
        assert_eq!(aimd.next(true, 300, true, t0 + 100 * MS), 240);
        // Still late within the cooldown: the turns admitted have not shown their cost yet.
        assert_eq!(aimd.next(true, 240, true, t0 + 200 * MS), 240);
        assert_eq!(aimd.next(true, 240, true, t0 + 600 * MS), 192);
        // Keeping up and refusing work: grows by 1/32 an interval, at least one.
        assert_eq!(aimd.next(false, 192, true, t0 + 700 * MS), 198);
        // Keeping up and refusing nothing: the limit is not what holds the work back.
        assert_eq!(aimd.next(false, 100, false, t0 + 800 * MS), 198);
        // Never below the least, never above the most.
        let mut low = Aimd::new(4, 1000, Duration::ZERO);
        for i in 0..50 {
            low.next(true, 3, true, t0 + i * 100 * MS);
        }
        assert_eq!(low.next(false, 3, true, t0 + 6 * 1000 * MS), 5);
        let mut high = Aimd::new(4, 10, Duration::ZERO);
        high.next(true, 10, true, t0);
        for i in 1..20 {
            high.next(false, 10, true, t0 + i * 100 * MS);
        }
        assert_eq!(high.next(false, 10, true, t0 + 3000 * MS), 10);
    }

    #[test]
    fn refused_callers_are_asked_to_wait_longer_the_more_is_refused() {
        let mut asked = RetryAfter::default();
        assert_eq!(asked.next(0, 50, 100 * MS), 1, "nothing refused: a second");
        // Nearly all refused for a second or more: the most.
        for _ in 0..30 {
            asked.next(250, 16, 100 * MS);
        }
        assert_eq!(asked.next(250, 16, 100 * MS), MAX_RETRY_AFTER);
        // Half refused: half way.
        for _ in 0..30 {
            asked.next(20, 20, 100 * MS);
        }
        assert_eq!(asked.next(20, 20, 100 * MS), 3);
        // The refusals stop: back to a second within about a second.
        for _ in 0..20 {
            asked.next(0, 40, 100 * MS);
        }
        assert_eq!(asked.next(0, 40, 100 * MS), 1);
        // An idle interval changes nothing.
        assert_eq!(asked.next(0, 0, 100 * MS), 1);
    }

    /// Busy for `busy` on the runtime's only thread, as a CPU-bound task that never yields.
    fn hog(busy: Duration) {
        let start = Instant::now();
        while start.elapsed() < busy {
            std::hint::spin_loop();
        }
    }

    /// A gate's settings for the busy-runtime tests: late above 5 ms, adjusted every 20 ms.
    fn busy_settings(max: usize) -> WorkAdmission {
        WorkAdmission {
            target: 5 * MS,
            interval: 20 * MS,
            min: 2,
            max,
        }
    }

    /// Stops a test's gate and waits for its task.
    async fn end(stop: tokio_util::sync::CancellationToken, tasks: tokio_util::task::TaskTracker) {
        stop.cancel();
        tasks.close();
        tasks.wait().await;
    }

    /// A task of `tasks` that takes the runtime's thread 10 ms at a time until the guard is
    /// dropped (or `stop`): everything ready runs late.
    fn keep_busy(
        tasks: &tokio_util::task::TaskTracker,
        stop: &tokio_util::sync::CancellationToken,
    ) -> CancellationTokenGuard {
        let busy = CancellationTokenGuard(stop.child_token());
        let hogging = busy.0.clone();
        tasks.spawn(async move {
            while !hogging.is_cancelled() {
                hog(10 * MS);
                tokio::task::yield_now().await;
            }
        });
        busy
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_gate_refuses_work_past_its_limit_and_cuts_it_while_the_runtime_is_busy() {
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let gate = WorkGate::start("test", busy_settings(40), stop.clone());
        // At the limit, the next is refused; a permit dropped makes room.
        let mut held: Vec<_> = (0..40)
            .map(|_| gate.try_enter().expect("under the limit"))
            .collect();
        assert_eq!(
            gate.try_enter().err(),
            Some(1),
            "refused, asked to wait a second"
        );
        held.pop();
        held.push(gate.try_enter().expect("room again"));
        // A task that takes the runtime's only thread 10 ms at a time: everything ready runs
        // late, and the limit falls below what is in flight.
        let busy = keep_busy(&tasks, &stop);
        let deadline = Instant::now() + Duration::from_secs(10);
        while gate.limit() >= 40 {
            assert!(Instant::now() < deadline, "the limit was never cut");
            tokio::task::yield_now().await;
        }
        let cut = gate.limit();
        assert!((2..40).contains(&cut), "{cut}");
        assert!(
            gate.try_enter().is_err(),
            "work in flight is over the limit now"
        );
        // The runtime keeps up again and the limit refuses work: it grows back.
        drop(busy);
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut more: Vec<WorkPermit> = Vec::new();
        while more.len() < 40 {
            assert!(
                Instant::now() < deadline,
                "the limit did not grow back: {}",
                gate.limit()
            );
            match gate.try_enter() {
                Ok(permit) => more.push(permit),
                Err(_) => tokio::time::sleep(MS).await,
            }
        }
        end(stop, tasks).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_rate_gate_cuts_its_rate_while_the_runtime_is_busy_and_regrows_it_after() {
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let gate = RateGate::start("test_rate_busy", busy_settings(1000), stop.clone());
        // A burst of calls while a task takes the runtime's only thread 10 ms at a time:
        // the runtime runs late with calls being admitted, so the rate is cut.
        let busy = keep_busy(&tasks, &stop);
        let deadline = Instant::now() + Duration::from_secs(10);
        while gate.limit() >= 1000 {
            assert!(Instant::now() < deadline, "the rate was never cut");
            let _ = gate.try_enter();
            tokio::task::yield_now().await;
        }
        assert!((2..1000).contains(&gate.limit()), "{}", gate.limit());
        // Past the rate within an interval, a call is refused at once.
        let refused = (0..2000).any(|_| gate.try_enter().is_err());
        assert!(refused, "the cut rate refused nothing");
        // The runtime keeps up again and the rate refuses calls: it grows back.
        drop(busy);
        let cut = gate.limit();
        let deadline = Instant::now() + Duration::from_secs(10);
        while gate.limit() <= cut {
            assert!(Instant::now() < deadline, "the rate did not grow back");
            while gate.try_enter().is_ok() {}
            tokio::time::sleep(MS).await;
        }
        end(stop, tasks).await;
    }

    /// Waits (10 s at most) until `done` holds.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(MS).await;
        }
    }

    /// Calls at `gate` while a task keeps the runtime busy, until its rate is cut.
    async fn cut_while_busy(
        what: &str,
        gate: &RateGate,
        tasks: &tokio_util::task::TaskTracker,
        stop: &tokio_util::sync::CancellationToken,
    ) {
        let before = gate.limit();
        let _busy = keep_busy(tasks, stop);
        until(what, || {
            let _ = gate.try_enter();
            gate.limit() < before
        })
        .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_gates_of_a_runtime_share_one_probe_until_the_last_of_them_stops() {
        let (turns_stop, starts_stop, other_stop, stop) = (
            tokio_util::sync::CancellationToken::new(),
            tokio_util::sync::CancellationToken::new(),
            tokio_util::sync::CancellationToken::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        let tasks = tokio_util::task::TaskTracker::new();
        assert_eq!(Probe::running(), 0);
        let settings = busy_settings(1000);
        let _turns = WorkGate::start("test_shared_turns", settings, turns_stop.clone());
        let starts = RateGate::start("test_shared_starts", settings, starts_stop.clone());
        assert_eq!(
            Probe::running(),
            1,
            "one probe for two gates of one interval"
        );
        // A gate of another interval is sampled at its own period.
        let other = WorkAdmission {
            interval: 50 * MS,
            ..settings
        };
        let _other = WorkGate::start("test_shared_other", other, other_stop.clone());
        assert_eq!(Probe::running(), 2);
        other_stop.cancel();
        until("the other interval's probe did not end", || {
            Probe::running() == 1
        })
        .await;
        // One of the two stops: the other is still told how late the runtime runs.
        turns_stop.cancel();
        cut_while_busy("the rate was never cut", &starts, &tasks, &stop).await;
        assert_eq!(Probe::running(), 1);
        // The last stops: so does the probe, and a gate started after it gets a new one.
        starts_stop.cancel();
        until("the probe outlived its gates", || Probe::running() == 0).await;
        let again = RateGate::start("test_shared_again", settings, stop.clone());
        assert_eq!(Probe::running(), 1);
        cut_while_busy("the new probe told the gate nothing", &again, &tasks, &stop).await;
        end(stop, tasks).await;
    }

    /// Cancels its token when dropped.
    struct CancellationTokenGuard(tokio_util::sync::CancellationToken);

    impl Drop for CancellationTokenGuard {
        fn drop(&mut self) {
            self.0.cancel();
        }
    }
}

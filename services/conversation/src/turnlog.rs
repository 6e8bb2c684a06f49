//! A turn's events, kept in order so that `JoinTurn` can replay and follow the turn from any
//! instance, and a caller that lost its stream loses nothing.
//!
//! Every event gets its index in the turn (from 1) as it is emitted. The instance running the
//! turn keeps the events in memory while it runs and for a short while after (bounded by
//! bytes); with Redis configured it also appends them, in batches, to a Redis Stream per turn
//! (`br:conv:turn:{thread}:{turn}`, entry ids `0-<index>`). While no other instance follows
//! the turn, a batch is written at most every `conversation.turn_log_idle_write_ms` (the
//! first at the short window, the last at once); a JoinTurn on another instance asks over the
//! turn bus, and from then on the batches go every `conversation.turn_log_write_ms`. The
//! stream expires `conversation.turn_log_ttl_ms` after its last write (the expiry is set with
//! the first batch, the last, and at least every quarter of the TTL in between). A join is
//! served from memory when the turn runs (or just ran) here, else from the stream: `XRANGE`
//! for what was missed, then blocking `XREAD`s for what comes, until the turn's last event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boardroom_runtime::telemetry::throttle::Throttle;
use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface, LuaInterface, StreamsInterface};
use fred::types::streams::XReadValue;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::domain::TurnEvent;
use crate::error::ConversationError;

/// Events of one turn buffered for a joiner before it must read on.
const JOIN_BUFFER: usize = 256;
/// Most entries one stream read returns.
const READ_BATCH: u64 = 512;
/// How long one blocking read waits before it looks at the service's shutdown again.
const BLOCK_MS: u64 = 1_000;
/// Joins following turns through Redis at once (each holds a connection while it blocks).
const MAX_REDIS_JOINS: usize = 1_024;

/// Failed appends to turn logs: one warning a second at most, whatever the turns retrying.
static APPEND_FAILED: std::sync::LazyLock<Throttle> =
    std::sync::LazyLock::new(|| Throttle::new(Duration::from_secs(1)));

/// An event and its position in the turn.
pub type IndexedEvent = (u64, TurnEvent);

/// Whether `event` ends its turn.
pub(crate) fn is_last(event: &TurnEvent) -> bool {
    matches!(
        event,
        TurnEvent::Completed { .. } | TurnEvent::Failed { .. }
    )
}

fn key(thread_id: Uuid, turn_id: Uuid) -> String {
    format!("br:conv:turn:{thread_id}:{turn_id}")
}

/// One turn's events in this instance.
#[derive(Debug)]
struct LocalLog {
    thread_id: Uuid,
    events: Mutex<Vec<TurnEvent>>,
    /// How many events there are (and whether the last one came), for followers.
    count: watch::Sender<(u64, bool)>,
    /// Whether an instance other than this one follows the turn (its writes then go at the
    /// short window), and the writer's wake-up when one starts to.
    followed: AtomicBool,
    hastened: Notify,
    /// How often its writer began waiting out the idle window (for tests to know it does).
    #[cfg(test)]
    idle_waits: std::sync::atomic::AtomicU64,
}

impl LocalLog {
    /// What the log holds: its events' slots (spare capacity included), what they hold on the
    /// heap, and the log itself.
    fn bytes(&self) -> u32 {
        let events = self.events.lock().map_or(0, |e| {
            e.capacity() * std::mem::size_of::<TurnEvent>()
                + e.iter().map(TurnEvent::heap_bytes).sum::<usize>()
        });
        u32::try_from(events + 256).unwrap_or(u32::MAX)
    }

    fn after(&self, after: u64) -> Vec<IndexedEvent> {
        let Ok(events) = self.events.lock() else {
            return Vec::new();
        };
        events
            .iter()
            .enumerate()
            .skip(usize::try_from(after).unwrap_or(usize::MAX))
            .map(|(i, e)| (i as u64 + 1, e.clone()))
            .collect()
    }
}

struct RedisLog {
    client: Client,
    /// Builds the connection a follower blocks on (its commands may take a whole block).
    readers: fred::types::Builder,
    ttl: Duration,
    /// How long the writer gathers events before a round trip to Redis while another
    /// instance follows the turn, and while none does.
    write_window: Duration,
    idle_window: Duration,
    joins: Arc<tokio::sync::Semaphore>,
}

/// The logs of the turns running here, by turn.
type Running = Arc<Mutex<HashMap<Uuid, Arc<LocalLog>>>>;

/// Every turn's event log of this instance.
#[derive(Clone)]
pub struct TurnLogs {
    /// Turns running here: never evicted while they run.
    running: Running,
    /// Finished ones, for a little while (bounded by bytes).
    local: moka::future::Cache<Uuid, Arc<LocalLog>>,
    redis: Option<Arc<RedisLog>>,
    /// Turns a follower elsewhere asked for before their log opened here, and when.
    early: Arc<Mutex<HashMap<Uuid, Instant>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// How long a follower's early request is kept for a log about to open.
const EARLY_KEPT: Duration = Duration::from_secs(10);

/// The windows of a turn log's writes to Redis.
#[derive(Debug, Clone, Copy)]
pub struct WriteWindows {
    /// While an instance other than the turn's follows it: its lag, at most.
    pub followed: Duration,
    /// While none does (zero: `followed` always).
    pub idle: Duration,
}

impl std::fmt::Debug for TurnLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnLogs")
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

/// A running turn's place among the running logs; removed when the turn's writer is gone.
#[derive(Debug)]
struct Open {
    running: Running,
    turn_id: Uuid,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&self.turn_id);
        }
    }
}

/// Where a running turn writes its events: the log, and its caller while it listens.
#[derive(Debug, Clone)]
pub struct TurnEvents {
    log: Option<Arc<LocalLog>>,
    caller: mpsc::Sender<IndexedEvent>,
    _open: Option<Arc<Open>>,
}

impl TurnEvents {
    /// Events to `caller` only (no log): for tests of the workflow.
    pub fn detached(caller: mpsc::Sender<IndexedEvent>) -> Self {
        Self {
            log: None,
            caller,
            _open: None,
        }
    }

    /// Appends `event` to the turn's log and sends it to the caller if it still listens
    /// (waiting while the caller's buffer is full). A caller that left is noticed by the
    /// turn's cancellation, not here.
    pub async fn emit(&self, event: TurnEvent) {
        let index = self.record(&event);
        let _ = self.caller.send((index, event)).await;
    }

    fn record(&self, event: &TurnEvent) -> u64 {
        let Some(log) = &self.log else {
            return 0;
        };
        let index = match log.events.lock() {
            Ok(mut events) => {
                events.push(event.clone());
                events.len() as u64
            }
            Err(_) => return 0,
        };
        log.count.send_replace((index, is_last(event)));
        index
    }

    /// Resolves when the caller stopped listening.
    pub async fn caller_gone(&self) {
        self.caller.closed().await;
    }
}

impl TurnLogs {
    /// Logs in memory now: of running turns, and of finished ones with their weighed bytes.
    pub async fn resident(&self) -> (u64, u64, u64) {
        self.local.run_pending_tasks().await;
        let running = self.running.lock().map_or(0, |r| r.len() as u64);
        (
            running,
            self.local.entry_count(),
            self.local.weighted_size(),
        )
    }

    /// Logs kept in memory up to `max_bytes` (finished turns for `linger`), and mirrored to
    /// Redis at `redis_url` when it is set, for `ttl` after their last event, in writes
    /// `windows` apart. Redis commands are bounded by `timeout`.
    pub fn new(
        (redis_url, timeout): (&str, Duration),
        max_bytes: u64,
        linger: Duration,
        (ttl, windows): (Duration, WriteWindows),
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let redis = if redis_url.is_empty() {
            None
        } else {
            let client = crate::redis::builder(redis_url, timeout, true)?.build()?;
            let _connection = client.connect();
            let readers =
                crate::redis::builder(redis_url, Duration::from_millis(BLOCK_MS) + timeout, false)?;
            let closing = (client.clone(), shutdown.clone());
            // Owned: ends with the service's shutdown token (and closes the connection).
            tasks.spawn(async move {
                closing.1.cancelled().await;
                let _ = closing.0.quit().await;
            });
            Some(Arc::new(RedisLog {
                client,
                readers,
                ttl,
                write_window: windows.followed,
                idle_window: windows.idle.max(windows.followed),
                joins: Arc::new(tokio::sync::Semaphore::new(MAX_REDIS_JOINS)),
            }))
        };
        Ok(Self {
            running: Running::default(),
            local: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, log: &Arc<LocalLog>| log.bytes())
                // A late joiner wants the turns that just ended.
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_idle(linger)
                .build(),
            redis,
            early: Arc::default(),
            tasks,
            shutdown,
        })
    }

    /// An instance other than this one follows `turn_id` of `thread_id` (a JoinTurn there):
    /// if it runs here, its writes go at the short window from now on, the events so far at
    /// once. Asked before the turn's log opened, the log opens followed. Whether it runs here.
    pub fn hasten(&self, thread_id: Uuid, turn_id: Uuid) -> bool {
        if let Some(log) = self
            .running_log(turn_id)
            .filter(|l| l.thread_id == thread_id)
        {
            if !log.followed.swap(true, Ordering::AcqRel) {
                log.hastened.notify_one();
            }
            return true;
        }
        if let Ok(mut early) = self.early.lock() {
            let now = Instant::now();
            if early.len() >= 1_024 {
                early.retain(|_, at| now.duration_since(*at) < EARLY_KEPT);
            }
            if early.len() < 4_096 {
                early.insert(turn_id, now);
            }
        }
        false
    }

    /// Whether a follower asked for `turn_id` before its log opened (and forgets it).
    fn asked_early(&self, turn_id: Uuid) -> bool {
        let Ok(mut early) = self.early.lock() else {
            return false;
        };
        if early.is_empty() {
            return false;
        }
        early
            .remove(&turn_id)
            .is_some_and(|at| at.elapsed() < EARLY_KEPT)
    }

    /// Opens the log of a turn that starts now; its events go to `caller` too.
    pub async fn open(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
        caller: mpsc::Sender<IndexedEvent>,
    ) -> TurnEvents {
        let (count, _) = watch::channel((0, false));
        let log = Arc::new(LocalLog {
            thread_id,
            events: Mutex::new(Vec::new()),
            count,
            followed: AtomicBool::new(self.asked_early(turn_id)),
            hastened: Notify::new(),
            #[cfg(test)]
            idle_waits: Default::default(),
        });
        if let Ok(mut running) = self.running.lock() {
            running.insert(turn_id, log.clone());
        }
        if let Some(redis) = self.redis.clone() {
            let (log, shutdown) = (log.clone(), self.shutdown.clone());
            // Owned: ends when the turn's last event is written, at shutdown, or when the turn
            // has been silent for the log's whole TTL (its task died without a last event).
            self.tasks.spawn(async move {
                redis.write(key(thread_id, turn_id), log, shutdown).await;
            });
        }
        TurnEvents {
            log: Some(log),
            caller,
            _open: Some(Arc::new(Open {
                running: self.running.clone(),
                turn_id,
            })),
        }
    }

    /// Keeps a finished turn's log for late joiners, weighed by its size (a turn whose task
    /// ended without saying so leaves nothing behind).
    pub async fn finished(&self, turn_id: Uuid) {
        // Kept before it leaves the running ones, so that a join in between finds it.
        if let Some(log) = self.running_log(turn_id) {
            // No more events come: the spare slots are given back before it is weighed.
            if let Ok(mut events) = log.events.lock() {
                events.shrink_to_fit();
            }
            self.local.insert(turn_id, log).await;
        }
        if let Ok(mut running) = self.running.lock() {
            running.remove(&turn_id);
        }
    }

    fn running_log(&self, turn_id: Uuid) -> Option<Arc<LocalLog>> {
        self.running.lock().ok()?.get(&turn_id).cloned()
    }

    /// The log of `turn_id` of `thread_id` in this instance's memory: the turn runs, or just
    /// ran, here.
    async fn here(&self, thread_id: Uuid, turn_id: Uuid) -> Option<Arc<LocalLog>> {
        let here = match self.running_log(turn_id) {
            Some(log) => Some(log),
            None => self.local.get(&turn_id).await,
        };
        here.filter(|l| l.thread_id == thread_id)
    }

    /// Whether a join of `turn_id` of `thread_id` would read Redis (the turn runs, or ran,
    /// on another instance), so that the joiner asks that instance to hasten first.
    pub async fn elsewhere(&self, thread_id: Uuid, turn_id: Uuid) -> bool {
        self.redis.is_some() && self.here(thread_id, turn_id).await.is_none()
    }

    /// The events of `turn_id` after `after`, then the live ones, to the end. `running`: the
    /// caller knows the turn runs (its lease says so), so a stream that does not exist yet is
    /// about to (the turn's first write may still be on its way).
    pub async fn join(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
        after: u64,
        running: bool,
    ) -> Result<mpsc::Receiver<IndexedEvent>, ConversationError> {
        let (tx, rx) = mpsc::channel(JOIN_BUFFER);
        if let Some(log) = self.here(thread_id, turn_id).await {
            let shutdown = self.shutdown.clone();
            // Owned: ends at the turn's last event, when the joiner leaves, or at shutdown.
            self.tasks
                .spawn(async move { follow_local(log, after, tx, shutdown).await });
            return Ok(rx);
        }
        let Some(redis) = self.redis.clone() else {
            return Err(not_kept(turn_id));
        };
        if !redis.client.is_connected() {
            return Err(ConversationError::Unavailable(
                "the turn log (Redis) cannot be reached".into(),
            ));
        }
        let key = key(thread_id, turn_id);
        let exists: i64 = redis
            .client
            .exists(&key)
            .await
            .map_err(|e| redis_unavailable(&e))?;
        if exists == 0 && !running {
            return Err(not_kept(turn_id));
        }
        let permit = redis.joins.clone().try_acquire_owned().map_err(|_| {
            ConversationError::Unavailable("too many joins follow turns at once".into())
        })?;
        let shutdown = self.shutdown.clone();
        // Owned: ends at the turn's last event, when the joiner leaves, or at shutdown.
        self.tasks.spawn(async move {
            let _permit = permit;
            redis.follow(key, after, tx, shutdown).await;
        });
        Ok(rx)
    }
}

fn not_kept(turn_id: Uuid) -> ConversationError {
    ConversationError::not_found("turn events", turn_id)
}

fn redis_unavailable(err: &fred::error::Error) -> ConversationError {
    tracing::warn!(error = %err, "the turn log's Redis failed");
    ConversationError::Unavailable("the turn log (Redis) cannot be reached".into())
}

/// Resolves when the log's last event is in (or its writer is gone).
async fn last_event(count: &mut watch::Receiver<(u64, bool)>) {
    while !count.borrow().1 {
        if count.changed().await.is_err() {
            return;
        }
    }
}

async fn follow_local(
    log: Arc<LocalLog>,
    mut after: u64,
    tx: mpsc::Sender<IndexedEvent>,
    shutdown: CancellationToken,
) {
    let mut count = log.count.subscribe();
    loop {
        for (index, event) in log.after(after) {
            let last = is_last(&event);
            if tx.send((index, event)).await.is_err() || last {
                return;
            }
            after = index;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            changed = count.changed() => if changed.is_err() { return },
        }
    }
}

/// Appends a batch of a turn's events to its stream in one command: `KEYS[1]` the stream,
/// `ARGV[1]` the seconds until it expires (empty: the expiry is left as it is), then each
/// event's entry id (`0-<index>`) and JSON. A pipeline of one XADD an event cost a write
/// system call an event here and in Redis (fred flushes a pipeline's commands one by one);
/// this is one each way. An entry already there (a batch tried again after its reply was
/// lost) is skipped, so a retry is harmless; a script runs whole or not at all.
const APPEND: &str = r"
for i = 2, #ARGV, 2 do
  local added = redis.pcall('XADD', KEYS[1], ARGV[i], 'e', ARGV[i + 1])
  if type(added) == 'table' and added.err and not string.find(added.err, 'equal or smaller', 1, true) then
    return added
  end
end
if ARGV[1] ~= '' then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return 1
";

impl RedisLog {
    /// Appends the turn's events to its stream as they come: woken by the first event after a
    /// quiet spell, it waits its write window (the idle one until another instance follows the
    /// turn, which cuts that wait short; no wait once the last event is in) and writes
    /// everything new in one command with the expiry. Serialising and writing happen here,
    /// never on the turn's own path, and a burst of events costs one round trip.
    async fn write(&self, key: String, log: Arc<LocalLog>, shutdown: CancellationToken) {
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        let mut count = log.count.subscribe();
        let mut written = 0u64;
        // While Redis fails: the next wait, and since when (given up after the log's TTL).
        let mut failing: Option<(Duration, tokio::time::Instant)> = None;
        // When the stream's expiry was last set: with the first batch, the last, and once a
        // quarter of the TTL has passed (not with every batch: a turn writes a few dozen).
        let mut expiry_set: Option<tokio::time::Instant> = None;
        loop {
            let (total, done) = *count.borrow_and_update();
            if total > written {
                // The first batch goes at the short window too: the stream exists from the
                // turn's start, and a joiner elsewhere finds it (rather than asking the
                // database whether the turn runs) and its first events at once.
                let followed = written == 0 || log.followed.load(Ordering::Acquire);
                let wait = match failing {
                    Some((backoff, _)) => Some(backoff),
                    None if done => None,
                    None if followed => Some(self.write_window),
                    None => Some(self.idle_window),
                };
                if let Some(wait) = wait {
                    let healthy = failing.is_none();
                    #[cfg(test)]
                    if healthy && !followed {
                        log.idle_waits.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                        // A follower elsewhere: what it waits for, now.
                        _ = log.hastened.notified(), if !followed && healthy => {}
                        // The turn's last event: the whole log, now.
                        _ = last_event(&mut count), if healthy => {}
                    }
                }
                let batch = log.after(written);
                let Some((last, last_event)) = batch.last() else {
                    continue;
                };
                let last = *last;
                let expire =
                    is_last(last_event) || expiry_set.is_none_or(|at| at.elapsed() >= self.ttl / 4);
                match self.append(&key, &batch, expire.then_some(ttl)).await {
                    Ok(()) => {
                        written = last;
                        failing = None;
                        if expire {
                            expiry_set = Some(tokio::time::Instant::now());
                        }
                    }
                    Err(err) => {
                        // Kept and tried again: a joiner elsewhere sees them late, not never.
                        metrics::counter!("conversation_turn_log_write_failures_total")
                            .increment(1);
                        // Every running turn retries while Redis is down: a line a second,
                        // `held_back` counting the failures not written since the last one.
                        if let Some(held_back) = APPEND_FAILED.admit() {
                            tracing::warn!(key, error = %err, held_back, "appending to a turn's log failed; retrying");
                        }
                        let since = failing.map_or_else(tokio::time::Instant::now, |(_, s)| s);
                        if since.elapsed() > self.ttl {
                            return;
                        }
                        let backoff = failing.map_or(Duration::from_millis(100), |(b, _)| {
                            (b * 2).min(Duration::from_secs(2))
                        });
                        failing = Some((backoff, since));
                    }
                }
                continue;
            }
            if done {
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = tokio::time::timeout(self.ttl, count.changed()) => {
                    if !matches!(changed, Ok(Ok(()))) {
                        return;
                    }
                }
            }
        }
    }

    /// One command: the events, then the stream's expiry when `ttl` is given (see
    /// [`APPEND`]).
    async fn append(
        &self,
        key: &str,
        batch: &[IndexedEvent],
        ttl: Option<i64>,
    ) -> Result<(), fred::error::Error> {
        if !self.client.is_connected() {
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::IO,
                "Redis is not connected",
            ));
        }
        let mut args = Vec::with_capacity(1 + 2 * batch.len());
        args.push(ttl.map_or_else(String::new, |ttl| ttl.to_string()));
        for (index, event) in batch {
            let Ok(json) = serde_json::to_string(event) else {
                continue;
            };
            args.push(format!("0-{index}"));
            args.push(json);
        }
        self.client
            .eval::<fred::types::Value, _, _, _>(APPEND, key, args)
            .await
            .map(|_| ())
    }

    /// Replays the stream after `after`, then follows it with blocking reads on a connection
    /// of its own, until the last event.
    async fn follow(
        &self,
        key: String,
        after: u64,
        tx: mpsc::Sender<IndexedEvent>,
        shutdown: CancellationToken,
    ) {
        let mut last = after;
        // Ranges are read on the shared connection (what was missed arrives in one round trip);
        // a connection of its own is opened only to block for what comes.
        let mut blocking: Option<Client> = None;
        loop {
            let read: Result<Vec<XReadValue<String, String, String>>, _> = self
                .client
                .xrange_values(&key, format!("0-{}", last + 1), "+", Some(READ_BATCH))
                .await;
            let entries = match read {
                Ok(entries) if !entries.is_empty() => entries,
                Ok(_) => {
                    let reader = match &blocking {
                        Some(reader) => reader.clone(),
                        None => {
                            let Ok(reader) = self.readers.build() else {
                                break;
                            };
                            let _connection = reader.connect();
                            if reader.wait_for_connect().await.is_err() {
                                break;
                            }
                            blocking = Some(reader.clone());
                            reader
                        }
                    };
                    // Caught up: wait for the next entries (or the joiner leaving).
                    let waited: Result<fred::types::Value, _> = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tx.closed() => break,
                        r = reader.xread(Some(1), Some(BLOCK_MS), &key, format!("0-{last}")) => r,
                    };
                    if waited.is_err() {
                        break;
                    }
                    continue;
                }
                Err(err) => {
                    tracing::warn!(key, error = %err, "reading a turn's log failed");
                    break;
                }
            };
            for (id, fields) in entries {
                let Some(index) = id.strip_prefix("0-").and_then(|i| i.parse::<u64>().ok()) else {
                    continue;
                };
                let Some(event) = fields
                    .get("e")
                    .and_then(|json| serde_json::from_str::<TurnEvent>(json).ok())
                else {
                    continue;
                };
                let end = is_last(&event);
                if tx.send((index, event)).await.is_err() || end {
                    if let Some(reader) = blocking {
                        let _ = reader.quit().await;
                    }
                    return;
                }
                last = index;
            }
        }
        if let Some(reader) = blocking {
            let _ = reader.quit().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished turn of `deltas` streamed pieces of `text`, as the engine writes it.
    async fn finish_turn(logs: &TurnLogs, deltas: usize, text: &str) -> Uuid {
        let (thread_id, turn_id) = (Uuid::now_v7(), Uuid::now_v7());
        let (caller, mut heard) = mpsc::channel(deltas + 1);
        let events = logs.open(thread_id, turn_id, caller).await;
        for _ in 0..deltas {
            events
                .emit(TurnEvent::AdvisorDelta {
                    advisor: "CFO".into(),
                    text: text.into(),
                    round: 1,
                })
                .await;
        }
        logs.finished(turn_id).await;
        drop(events);
        while heard.try_recv().is_ok() {}
        turn_id
    }

    #[tokio::test]
    async fn finished_logs_are_weighed_by_what_they_hold_and_stay_within_their_bound() {
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        let max_bytes = 256 * 1024;
        let logs = TurnLogs::new(
            ("", Duration::from_secs(1)),
            max_bytes,
            Duration::from_secs(60),
            (
                Duration::from_secs(60),
                WriteWindows {
                    followed: Duration::from_millis(5),
                    idle: Duration::ZERO,
                },
            ),
            tasks,
            stop.clone(),
        )
        .expect("logs");
        // 100 pieces of 200 bytes: at least the text and a slot per event.
        let text = "x".repeat(200);
        finish_turn(&logs, 100, &text).await;
        let (running, finished, bytes) = logs.resident().await;
        assert_eq!((running, finished), (0, 1));
        let floor = 100 * (std::mem::size_of::<TurnEvent>() + 200);
        assert!(
            bytes >= floor as u64,
            "weighed {bytes}, holds at least {floor}"
        );
        assert!(bytes < 2 * floor as u64, "no spare slots counted: {bytes}");

        // Many more turns than fit: the oldest leave, the bound holds.
        for _ in 0..40 {
            finish_turn(&logs, 100, &text).await;
        }
        let (_, finished, bytes) = logs.resident().await;
        assert!(bytes <= max_bytes, "{bytes} bytes kept, bound {max_bytes}");
        assert!(finished < 41, "{finished} of 41 logs kept");
        stop.cancel();
    }

    /// Logs on the Redis at `url` (kept for `ttl`, written every 5 ms while followed and
    /// every `idle` while not), a client of its own to look at it, and the logs' stop token.
    async fn logs_on(
        url: &str,
        ttl: Duration,
        idle: Duration,
    ) -> (TurnLogs, Client, CancellationToken) {
        let stop = CancellationToken::new();
        let logs = TurnLogs::new(
            (url, Duration::from_secs(5)),
            1 << 20,
            Duration::from_secs(60),
            (
                ttl,
                WriteWindows {
                    followed: Duration::from_millis(5),
                    idle,
                },
            ),
            TaskTracker::new(),
            stop.clone(),
        )
        .expect("logs");
        let client = crate::redis::builder(url, Duration::from_secs(5), false)
            .expect("builder")
            .build()
            .expect("client");
        let _connection = client.init().await.expect("connected");
        (logs, client, stop)
    }

    /// Calls of a Redis command since the server started.
    async fn calls(client: &Client, command: &str) -> u64 {
        let info: String = client
            .custom(fred::cmd!("INFO"), vec!["commandstats"])
            .await
            .expect("INFO");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_gets_its_expiry_with_its_first_and_last_batch_not_with_every_one() {
        let redis = boardroom_testkit::PrivateRedis::start();
        let ttl = Duration::from_secs(600);
        let (logs, client, stop) = logs_on(&redis.url(), ttl, Duration::ZERO).await;
        let (thread_id, turn_id) = (Uuid::now_v7(), Uuid::now_v7());
        let stream = key(thread_id, turn_id);
        let (caller, _heard) = mpsc::channel(16);
        let events = logs.open(thread_id, turn_id, caller).await;
        // Each event written before the next is emitted: a batch each.
        for n in 1..=5 {
            events
                .emit(TurnEvent::AdvisorDelta {
                    advisor: "CFO".into(),
                    text: format!("piece {n}"),
                    round: 1,
                })
                .await;
            entries(&client, &stream, n).await;
        }
        events
            .emit(TurnEvent::Completed {
                turn_id,
                state_version: 1,
                first_seq: 1,
                last_seq: 2,
                usage: Default::default(),
                replayed: false,
                commit_position: None,
                deliberation: Default::default(),
                rounds: Vec::new(),
                ranking: Vec::new(),
                memories_recalled: 0,
            })
            .await;
        entries(&client, &stream, 6).await;
        // The last batch's EXPIRE follows its entry in one command.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while calls(&client, "expire").await < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let remaining: i64 = client.pttl(&stream).await.expect("PTTL");
        assert!(
            remaining > 0 && remaining <= ttl.as_millis() as i64,
            "expires in {remaining} ms"
        );
        assert_eq!(calls(&client, "xadd").await, 6, "an entry per event");
        assert_eq!(
            calls(&client, "expire").await,
            2,
            "the expiry with the first batch and the last"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_batch_is_one_command_and_a_batch_tried_again_adds_nothing_twice() {
        let redis = boardroom_testkit::PrivateRedis::start();
        let (logs, client, stop) =
            logs_on(&redis.url(), Duration::from_secs(600), Duration::ZERO).await;
        let log = logs.redis.clone().expect("a Redis log");
        log.client.wait_for_connect().await.expect("connected");
        let stream = key(Uuid::now_v7(), Uuid::now_v7());
        let delta = |n: u64| {
            (
                n,
                TurnEvent::AdvisorDelta {
                    advisor: "CFO".into(),
                    text: format!("piece {n}"),
                    round: 1,
                },
            )
        };
        let before = calls(&client, "eval").await;
        log.append(&stream, &[delta(1), delta(2), delta(3)], Some(600))
            .await
            .expect("appended");
        assert_eq!(
            calls(&client, "eval").await - before,
            1,
            "one command a batch"
        );
        // The reply was lost, say: the batch again, with what came since.
        log.append(&stream, &[delta(2), delta(3), delta(4)], None)
            .await
            .expect("tried again");
        let ids: Vec<(String, HashMap<String, String>)> = client
            .xrange(&stream, "-", "+", None)
            .await
            .expect("XRANGE");
        let ids: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["0-1", "0-2", "0-3", "0-4"]);
        let remaining: i64 = client.ttl(&stream).await.expect("TTL");
        assert!((1..=600).contains(&remaining), "expires in {remaining} s");
        // Anything else Redis refuses fails the batch: here, a key of another type.
        let _: () = client
            .set(&stream, "x", None, None, false)
            .await
            .expect("SET");
        assert!(log.append(&stream, &[delta(5)], None).await.is_err());
        stop.cancel();
    }

    /// Waits (10 s at most) until the stream `key` holds `n` entries.
    async fn entries(client: &Client, key: &str, n: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let len: u64 = client.xlen(key).await.expect("XLEN");
            if len >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{len} of {n} entries written to {key}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A turn whose first event is written and whose writer then holds two more in its idle
    /// window: its thread, id, stream, events and caller.
    async fn idling_turn(
        logs: &TurnLogs,
        client: &Client,
    ) -> (Uuid, Uuid, String, TurnEvents, mpsc::Receiver<IndexedEvent>) {
        let (thread_id, turn_id) = (Uuid::now_v7(), Uuid::now_v7());
        let stream = key(thread_id, turn_id);
        let (caller, heard) = mpsc::channel(16);
        let events = logs.open(thread_id, turn_id, caller).await;
        events.emit(delta(1)).await;
        entries(client, &stream, 1).await;
        for n in 2..=3 {
            events.emit(delta(n)).await;
        }
        idle_wait(logs, turn_id).await;
        (thread_id, turn_id, stream, events, heard)
    }

    /// Waits (10 s at most) until the writer of running `turn_id` waits out its idle window.
    async fn idle_wait(logs: &TurnLogs, turn_id: Uuid) {
        let log = logs.running_log(turn_id).expect("running");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while log.idle_waits.load(Ordering::Relaxed) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the writer never idled"
            );
            tokio::task::yield_now().await;
        }
    }

    fn delta(n: usize) -> TurnEvent {
        TurnEvent::AdvisorDelta {
            advisor: "CFO".into(),
            text: format!("piece {n}"),
            round: 1,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unfollowed_turn_is_written_at_its_end_and_a_follower_elsewhere_hastens_it() {
        let redis = boardroom_testkit::PrivateRedis::start();
        // An idle window far past every deadline below: only a follower or the turn's last
        // event can bring a write within them.
        let idle = Duration::from_secs(600);
        let (logs, client, stop) = logs_on(&redis.url(), idle, idle).await;

        // Nobody follows: the first batch at the short window (the stream exists from the
        // turn's start), then nothing until the last event, which brings the rest at once.
        let (_, _, stream, events, _heard) = idling_turn(&logs, &client).await;
        events
            .emit(TurnEvent::Failed {
                reason: crate::domain::FailureReason::Cancelled,
                message: "cancelled".into(),
            })
            .await;
        entries(&client, &stream, 4).await;
        assert_eq!(calls(&client, "xadd").await, 4, "an entry per event");

        // A follower elsewhere asks: what was gathered goes at once, then every few ms.
        let (thread_id, turn_id, stream, events, _heard) = idling_turn(&logs, &client).await;
        assert!(
            !logs.hasten(Uuid::now_v7(), turn_id),
            "another thread's turn"
        );
        assert!(logs.hasten(thread_id, turn_id), "runs here");
        entries(&client, &stream, 3).await;
        events.emit(delta(4)).await;
        entries(&client, &stream, 4).await;
        events.emit(delta(5)).await;
        entries(&client, &stream, 5).await;

        // Asked before the turn's log opened here: it opens followed.
        let (thread_id, turn_id) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(!logs.hasten(thread_id, turn_id), "not open yet");
        let (caller, _heard) = mpsc::channel(16);
        let events = logs.open(thread_id, turn_id, caller).await;
        let stream = key(thread_id, turn_id);
        events.emit(delta(1)).await;
        entries(&client, &stream, 1).await;
        events.emit(delta(2)).await;
        entries(&client, &stream, 2).await;
        stop.cancel();
    }
}

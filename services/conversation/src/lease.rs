//! A running turn's lease on its thread, as one guard value.
//!
//! Taken when the turn starts ([`Leases::acquire`]); kept short and renewed by a heartbeat
//! while the turn runs, so a crashed instance frees its threads within one lease
//! (`conversation.turn_lease_ms`); released by the turn's own transaction when it is stored
//! ([`TurnLease::committed`]); on every other path given back by the guard: awaited by
//! [`TurnLease::release`], or in the background when the guard is dropped (a cancelled or
//! panicking task included). A lease that cannot be renewed (it expired, another turn took it)
//! is reported through [`TurnLease::lost`]: the turn cannot store itself, so it stops.

use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::error::ConversationError;
use crate::store::{ConversationStore, Head, lease_until};

/// What every lease of this instance shares: the store, its length, and the owner of the
/// background work (heartbeats, late releases).
#[derive(Debug, Clone)]
pub struct Leases {
    store: ConversationStore,
    length: Duration,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Leases {
    /// Leases of `length`, renewed every third of it; background work is tracked by `tasks`
    /// and ends with `shutdown`.
    pub fn new(
        store: ConversationStore,
        length: Duration,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            length,
            tasks,
            shutdown,
        }
    }

    /// How long a lease lasts without renewal: the bound on how long a dead instance keeps a
    /// thread.
    pub fn length(&self) -> Duration {
        self.length
    }

    /// Takes `thread_id`'s lease for `turn_id`: the guard and the head as it is now, or `None`
    /// when another turn holds an unexpired lease or waits in the thread's queue.
    pub async fn acquire(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
    ) -> Result<Option<(TurnLease, Head)>, ConversationError> {
        self.acquire_at(thread_id, turn_id, None).await
    }

    async fn acquire_at(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
        place: Option<i64>,
    ) -> Result<Option<(TurnLease, Head)>, ConversationError> {
        let Some(head) = self
            .store
            .acquire_lease(thread_id, turn_id, lease_until(self.length), place)
            .await?
        else {
            return Ok(None);
        };
        let lost = CancellationToken::new();
        let heartbeat = self.shutdown.child_token();
        let this = self.clone();
        let (beat, lost_signal) = (heartbeat.clone(), lost.clone());
        // Owned: ends when the guard is settled or dropped (it cancels `heartbeat`), or at
        // shutdown (a child of the service's token).
        self.tasks.spawn(async move {
            this.heartbeat(thread_id, turn_id, beat, lost_signal).await;
        });
        let lease = TurnLease {
            leases: self.clone(),
            thread_id,
            turn_id,
            heartbeat,
            lost,
            settled: false,
        };
        Ok(Some((lease, head)))
    }

    async fn heartbeat(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
        stop: CancellationToken,
        lost: CancellationToken,
    ) {
        let period = self.length / 3;
        let mut wait = period;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = period;
            match self
                .store
                .renew_lease(thread_id, turn_id, lease_until(self.length))
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    // Only a turn still running cares; a settled one stopped us first.
                    if !stop.is_cancelled() {
                        metrics::counter!("conversation_leases_lost_total").increment(1);
                        tracing::warn!(%thread_id, %turn_id, "a running turn lost its lease");
                        lost.cancel();
                    }
                    return;
                }
                // The database is away: keep trying; if the lease runs out meanwhile, the
                // next renewal finds it expired and the turn's fenced write fails anyway.
                Err(err) => {
                    metrics::counter!("conversation_lease_renewals_failed_total").increment(1);
                    tracing::warn!(%thread_id, %turn_id, error = %err, "renewing a turn's lease failed");
                    // Soon again: the lease runs out in two more periods.
                    wait = (period / 4).max(Duration::from_millis(100));
                }
            }
        }
    }

    /// Waits in the thread's queue at `place` (lower goes first) until the lease is free and
    /// no live entry is ahead, then takes it; `once_queued` runs as soon as the entry is in. `QueueFull` when `max` turns wait already. The
    /// entry is renewed while waiting and removed when the wait ends, however it ends (a
    /// caller that leaves drops this future). Waiters look every [`QUEUE_POLL`].
    pub async fn wait_for(
        &self,
        (thread_id, turn_id): (Uuid, Uuid),
        place: i64,
        max: u64,
        once_queued: impl Future<Output = Result<(), ConversationError>>,
    ) -> Result<(TurnLease, Head), ConversationError> {
        if !self
            .store
            .enqueue(thread_id, turn_id, place, lease_until(self.length), max)
            .await?
        {
            return Err(ConversationError::QueueFull(format!(
                "{max} turns wait for this thread already (conversation.max_queued_turns)"
            )));
        }
        let entry = QueueEntry {
            leases: self.clone(),
            thread_id,
            turn_id,
            left: false,
        };
        metrics::gauge!("conversation_turns_queued").increment(1.0);
        // In line first, then whatever frees the thread (an interrupt's cancel): nobody can
        // take the thread in between.
        once_queued.await?;
        let renew_every = self.length / 3;
        let mut renewed = tokio::time::Instant::now();
        let taken = loop {
            if let Some(taken) = self.acquire_at(thread_id, turn_id, Some(place)).await? {
                break taken;
            }
            if renewed.elapsed() >= renew_every {
                let until = lease_until(self.length);
                if !self.store.renew_queued(thread_id, turn_id, until).await? {
                    // It expired (a stall) and was cleaned up: back in at the same place.
                    self.store
                        .enqueue(thread_id, turn_id, place, until, u64::MAX)
                        .await?;
                }
                renewed = tokio::time::Instant::now();
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => {
                    return Err(ConversationError::Unavailable("the instance is shutting down".into()));
                }
                _ = tokio::time::sleep(QUEUE_POLL) => {}
            }
        };
        // Out of the queue before the turn runs, so that the next in line is not held up.
        entry.leave().await;
        Ok(taken)
    }

    /// Gives a lease back; when the database cannot take it now, retries in the background
    /// (250 ms doubling to 2 s) until it succeeds or the lease has expired anyway.
    async fn give_back(&self, thread_id: Uuid, turn_id: Uuid) {
        let Err(err) = self.store.release_lease(thread_id, turn_id).await else {
            return;
        };
        tracing::warn!(%thread_id, %turn_id, error = %err, "releasing a turn's lease failed; retrying in the background");
        self.give_back_later(thread_id, turn_id, Duration::from_millis(250));
    }

    fn give_back_later(&self, thread_id: Uuid, turn_id: Uuid, first_wait: Duration) {
        let this = self.clone();
        let expires = tokio::time::Instant::now() + self.length;
        // Owned: ends with the service's shutdown token, or by the lease's expiry.
        self.tasks.spawn(async move {
            if first_wait.is_zero() && this.store.release_lease(thread_id, turn_id).await.is_ok() {
                return;
            }
            let mut backoff = first_wait.max(Duration::from_millis(250));
            while tokio::time::Instant::now() + backoff < expires {
                tokio::select! {
                    _ = this.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                if this.store.release_lease(thread_id, turn_id).await.is_ok() {
                    metrics::counter!("conversation_lease_releases_retried_total").increment(1);
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
    }
}

/// How often a queued turn looks whether its thread is free.
pub const QUEUE_POLL: Duration = Duration::from_millis(50);

/// A turn's place in its thread's queue; removed (in the background) when dropped.
struct QueueEntry {
    leases: Leases,
    thread_id: Uuid,
    turn_id: Uuid,
    left: bool,
}

impl QueueEntry {
    async fn leave(mut self) {
        // Dropped half-way (the caller left), Drop removes it instead.
        match self
            .leases
            .store
            .leave_queue(self.thread_id, self.turn_id)
            .await
        {
            Ok(()) => {
                self.left = true;
                metrics::gauge!("conversation_turns_queued").decrement(1.0);
            }
            Err(err) => {
                tracing::warn!(error = %err, "leaving a thread's queue failed; the entry expires");
            }
        }
    }
}

impl Drop for QueueEntry {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        metrics::gauge!("conversation_turns_queued").decrement(1.0);
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let (store, thread_id, turn_id) = (self.leases.store.clone(), self.thread_id, self.turn_id);
        // Owned: one statement; an entry it cannot remove expires on its own.
        self.leases.tasks.spawn(async move {
            let _ = store.leave_queue(thread_id, turn_id).await;
        });
    }
}

/// A running turn's hold on its thread. See the module doc.
#[derive(Debug)]
pub struct TurnLease {
    leases: Leases,
    thread_id: Uuid,
    turn_id: Uuid,
    heartbeat: CancellationToken,
    lost: CancellationToken,
    settled: bool,
}

impl TurnLease {
    /// The turn holding the lease.
    pub fn turn_id(&self) -> Uuid {
        self.turn_id
    }

    /// Completes when the lease was lost (expired or taken by another turn).
    pub fn lost(&self) -> WaitForCancellationFutureOwned {
        self.lost.clone().cancelled_owned()
    }

    /// The turn is storing itself (a write fenced on the lease): the heartbeat stops, so that
    /// it cannot mistake the commit that clears the lease for a lost lease.
    pub fn storing(&self) {
        self.heartbeat.cancel();
    }

    /// The turn was stored: its transaction released the lease.
    pub fn committed(mut self) {
        self.settled = true;
        self.heartbeat.cancel();
    }

    /// Gives the lease back now (the turn stored nothing), so that the caller's next turn
    /// is not refused; retried in the background when the database is away.
    pub async fn release(mut self) {
        self.settled = true;
        self.heartbeat.cancel();
        self.leases.give_back(self.thread_id, self.turn_id).await;
    }
}

impl Drop for TurnLease {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.heartbeat.cancel();
        // Outside a runtime (a test's teardown) there is no one to give it back: it expires.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        // Not awaited here: given back by the service's tasks, at once.
        self.leases
            .give_back_later(self.thread_id, self.turn_id, Duration::ZERO);
    }
}

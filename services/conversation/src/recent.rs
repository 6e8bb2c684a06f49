//! Each thread's recent messages (after its summary) and the state its last turn here left,
//! kept in this instance's memory so that a turn reads neither back (from the database, from
//! Redis). Seqs are never rewritten, so a window that
//! ends at seq S is a correct prefix for as long as the summary does not move: a turn reads
//! only the messages after S (none, unless another instance or an append wrote some).

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::domain::{ConversationState, Message, heap_bytes};
use crate::error::ConversationError;
use crate::store::ConversationStore;

/// Messages kept per thread: what an advisor's context can use.
pub const RECENT_LIMIT: usize = 64;

#[derive(Debug)]
struct Window {
    /// The summary's end when the window was built: messages are all after it.
    after_seq: i64,
    /// The last seq the window has.
    through_seq: i64,
    messages: Vec<Message>,
    /// The state the last turn stored here left (versions never change, so it stays right).
    state: Option<Arc<ConversationState>>,
}

/// Recent-message windows by thread, bounded by bytes, leaving memory when idle.
#[derive(Clone)]
pub struct RecentWindows {
    windows: moka::future::Cache<Uuid, Arc<Window>>,
}

impl std::fmt::Debug for RecentWindows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentWindows")
            .field("entries", &self.windows.entry_count())
            .finish()
    }
}

fn weight(window: &Window) -> u32 {
    let bytes: usize = window.messages.capacity() * std::mem::size_of::<Message>()
        + window
            .messages
            .iter()
            .map(|m| heap_bytes(&m.author) + heap_bytes(&m.content))
            .sum::<usize>();
    let state = window.state.as_ref().map_or(0, |s| {
        <crate::state::StateCodec as boardroom_cache::Codec>::weight(s)
    });
    u32::try_from(bytes + state + 64).unwrap_or(u32::MAX)
}

/// Keeps the newest `RECENT_LIMIT` messages after `after_seq`.
fn trim(mut messages: Vec<Message>, after_seq: i64) -> Vec<Message> {
    messages.retain(|m| m.seq > after_seq);
    let excess = messages.len().saturating_sub(RECENT_LIMIT);
    messages.drain(..excess);
    messages
}

impl RecentWindows {
    /// Windows up to `max_bytes` in all; one untouched for `idle` leaves memory.
    pub fn new(max_bytes: u64, idle: Duration) -> Self {
        Self {
            windows: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, w: &Arc<Window>| weight(w))
                // The threads in use move on (a user opens a new one): recency, not frequency.
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_idle(idle)
                .build(),
        }
    }

    /// Windows in memory now, and their weighed bytes.
    pub async fn resident(&self) -> (u64, u64) {
        self.windows.run_pending_tasks().await;
        (self.windows.entry_count(), self.windows.weighted_size())
    }

    /// The state at `version` of a thread, if the last turn here left exactly that one.
    pub async fn state(&self, thread_id: Uuid, version: i64) -> Option<Arc<ConversationState>> {
        self.windows
            .get(&thread_id)
            .await?
            .state
            .clone()
            .filter(|s| s.version == version)
    }

    /// The newest messages after `after_seq` of a thread whose last seq is `last_seq`.
    pub async fn get(
        &self,
        store: &ConversationStore,
        thread_id: Uuid,
        after_seq: i64,
        last_seq: i64,
    ) -> Result<Vec<Message>, ConversationError> {
        let limit = RECENT_LIMIT as u64;
        let cached = self.windows.get(&thread_id).await;
        let state = cached.as_ref().and_then(|w| w.state.clone());
        let messages = match cached {
            Some(w) if w.after_seq <= after_seq && w.through_seq == last_seq => {
                metrics::counter!("conversation_recent_window_total", "result" => "hit")
                    .increment(1);
                trim(w.messages.clone(), after_seq)
            }
            Some(w) if w.after_seq <= after_seq && w.through_seq < last_seq => {
                metrics::counter!("conversation_recent_window_total", "result" => "extended")
                    .increment(1);
                let newer = store
                    .recent_messages(thread_id, w.through_seq.max(after_seq), limit)
                    .await?;
                let mut messages = w.messages.clone();
                messages.extend(newer);
                trim(messages, after_seq)
            }
            _ => {
                metrics::counter!("conversation_recent_window_total", "result" => "miss")
                    .increment(1);
                store.recent_messages(thread_id, after_seq, limit).await?
            }
        };
        self.put(thread_id, after_seq, last_seq, messages.clone(), state)
            .await;
        Ok(messages)
    }

    /// The window after a turn stored `stored` on top of `previous` (the window the turn
    /// read, ending at `previous_last_seq`).
    pub async fn after_turn(
        &self,
        thread_id: Uuid,
        after_seq: i64,
        previous: &[Message],
        previous_last_seq: i64,
        stored: &[Message],
        state: Arc<ConversationState>,
    ) {
        let Some(first) = stored.first() else {
            return;
        };
        // Messages appended while the turn ran sit between the two: let the next turn read them.
        if first.seq != previous_last_seq + 1 {
            self.windows.invalidate(&thread_id).await;
            return;
        }
        let mut messages = previous.to_vec();
        messages.extend(stored.iter().cloned());
        let through = stored.last().map_or(previous_last_seq, |m| m.seq);
        self.put(
            thread_id,
            after_seq,
            through,
            trim(messages, after_seq),
            Some(state),
        )
        .await;
    }

    async fn put(
        &self,
        thread_id: Uuid,
        after_seq: i64,
        through_seq: i64,
        messages: Vec<Message>,
        state: Option<Arc<ConversationState>>,
    ) {
        self.windows
            .insert(
                thread_id,
                Arc::new(Window {
                    after_seq,
                    through_seq,
                    messages,
                    state,
                }),
            )
            .await;
    }
}

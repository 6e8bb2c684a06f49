//! How a cancel reaches the instance that runs the turn. Every instance keeps a registry of the
//! turns it runs; with Redis configured, every instance also listens on one pub/sub channel,
//! and a CancelTurn received by an instance that does not run the turn is published there for
//! the one that does. Without Redis the registry is the whole bus (one instance).
//!
//! The same channel carries a JoinTurn's wish to follow a turn from another instance
//! (`follow <thread> <turn>`): the instance running it then writes its log to Redis at the
//! short window. An instance of an older version ignores it (not two ids), and a cancel's
//! message (two ids) is unchanged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::error::ConversationError;

/// The channel every instance hears.
const CHANNEL: &str = "br:conv:cancel";
/// What a follow message starts with (the rest is a cancel's message).
const FOLLOW: &str = "follow ";

/// What an instance is told to do with a turn it may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    Cancel(Uuid, Uuid),
    Follow(Uuid, Uuid),
}

/// Called with a thread and a turn another instance wants to follow.
type OnFollow = Arc<dyn Fn(Uuid, Uuid) + Send + Sync>;

/// A running turn of this instance.
#[derive(Debug, Clone)]
struct Running {
    turn_id: Uuid,
    cancel: CancellationToken,
}

/// The turns this instance runs, by thread.
#[derive(Debug, Clone, Default)]
struct Registry(Arc<Mutex<HashMap<Uuid, Running>>>);

impl Registry {
    fn cancel(&self, thread_id: Uuid, turn_id: Option<Uuid>) -> bool {
        let running = self
            .0
            .lock()
            .map(|r| r.get(&thread_id).cloned())
            .ok()
            .flatten();
        match running {
            Some(run) if turn_id.is_none_or(|t| t == run.turn_id) => {
                run.cancel.cancel();
                true
            }
            _ => false,
        }
    }
}

struct Shared {
    publisher: Client,
    subscriber: SubscriberClient,
    /// On a Redis Cluster the channel is sharded (SSUBSCRIBE/SPUBLISH): every instance listens
    /// on the one shard that owns it, so a publish counts every listener (a cluster's PUBLISH
    /// counts only the listeners on the node that took it).
    sharded: bool,
}

/// The registry of this instance's running turns, and the channel to the others.
#[derive(Clone, Default)]
pub struct TurnBus {
    running: Registry,
    shared: Option<Arc<Shared>>,
    on_follow: Arc<std::sync::OnceLock<OnFollow>>,
}

impl std::fmt::Debug for TurnBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnBus")
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// A running turn's entry in the registry; removed when dropped.
#[derive(Debug)]
pub struct Registration {
    running: Registry,
    thread_id: Uuid,
    turn_id: Uuid,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.0.lock()
            && running
                .get(&self.thread_id)
                .is_some_and(|r| r.turn_id == self.turn_id)
        {
            running.remove(&self.thread_id);
        }
    }
}

impl TurnBus {
    /// A bus within this instance only.
    pub fn local() -> Self {
        Self::default()
    }

    /// Turns registered here now.
    pub fn running(&self) -> usize {
        self.running.0.lock().map_or(0, |r| r.len())
    }

    /// A bus over Redis at `url` (empty: [`TurnBus::local`]). An unreachable Redis is not
    /// fatal: the clients reconnect on their own (and re-subscribe), and until then a cancel
    /// for a turn of another instance answers UNAVAILABLE. The listener is tracked by `tasks`
    /// and ends with `shutdown`.
    pub async fn connect(
        url: &str,
        timeout: Duration,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        if url.is_empty() {
            return Ok(Self::local());
        }
        let builder = crate::redis::builder(url, timeout, true)?;
        let publisher = builder.build()?;
        let subscriber = builder.build_subscriber_client()?;
        let _publisher_task = publisher.connect();
        let _subscriber_task = subscriber.connect();
        let _resubscribe_task = subscriber.manage_subscriptions();
        let bus = Self {
            running: Registry::default(),
            shared: Some(Arc::new(Shared {
                sharded: publisher.is_clustered(),
                publisher,
                subscriber,
            })),
            on_follow: Arc::default(),
        };
        let listener = bus.clone();
        // Subscribed before the service answers (when Redis is up), so that a cancel sent
        // right after start is heard.
        let subscribed = tokio::time::timeout(Duration::from_secs(1), listener.subscribe()).await;
        if !matches!(subscribed, Ok(true)) {
            tracing::warn!("the turn bus is not subscribed yet (Redis unreachable); retrying");
        }
        // Owned: ends with the service's shutdown token.
        tasks.spawn(async move { listener.listen(shutdown).await });
        Ok(bus)
    }

    async fn subscribe(&self) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        if shared.subscriber.wait_for_connect().await.is_err() {
            return false;
        }
        if shared.sharded {
            shared.subscriber.ssubscribe(CHANNEL).await.is_ok()
        } else {
            shared.subscriber.subscribe(CHANNEL).await.is_ok()
        }
    }

    async fn listen(&self, shutdown: CancellationToken) {
        let Some(shared) = &self.shared else { return };
        let mut messages = shared.subscriber.message_rx();
        let mut backoff = Duration::from_millis(50);
        let subscribed = || {
            if shared.sharded {
                !shared.subscriber.tracked_shard_channels().is_empty()
            } else {
                !shared.subscriber.tracked_channels().is_empty()
            }
        };
        while !subscribed() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                subscribed = self.subscribe() => if subscribed { break },
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                message = messages.recv() => message,
            };
            match message {
                Ok(message) => {
                    let Some(text) = message.value.as_string() else {
                        continue;
                    };
                    match parse(&text) {
                        Some(Message::Cancel(thread_id, turn_id)) => {
                            let hit = self.running.cancel(thread_id, Some(turn_id));
                            if hit {
                                metrics::counter!("conversation_cancels_heard_total").increment(1);
                            }
                        }
                        Some(Message::Follow(thread_id, turn_id)) => {
                            if let Some(on_follow) = self.on_follow.get() {
                                on_follow(thread_id, turn_id);
                            }
                        }
                        None => {}
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "the turn bus fell behind");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
        let _ = shared.subscriber.quit().await;
        let _ = shared.publisher.quit().await;
    }

    /// Whether cancels reach other instances.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Records a turn this instance runs, cancelled through `cancel`; it leaves the registry
    /// when the registration is dropped.
    pub fn register(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
        cancel: CancellationToken,
    ) -> Registration {
        if let Ok(mut running) = self.running.0.lock() {
            running.insert(thread_id, Running { turn_id, cancel });
        }
        Registration {
            running: self.running.clone(),
            thread_id,
            turn_id,
        }
    }

    /// Cancels the thread's turn if this instance runs it (only `turn_id`, when given).
    pub fn cancel_here(&self, thread_id: Uuid, turn_id: Option<Uuid>) -> bool {
        self.running.cancel(thread_id, turn_id)
    }

    /// What the listener does when another instance wants to follow a turn (set once: the
    /// turn logs' [`crate::turnlog::TurnLogs::hasten`]).
    pub fn on_follow(&self, f: impl Fn(Uuid, Uuid) + Send + Sync + 'static) {
        let _ = self.on_follow.set(Arc::new(f));
    }

    /// Tells every instance that this one follows `turn_id` of `thread_id` through its log in
    /// Redis. Best effort: unheard, the joiner's lag is the idle write window.
    pub async fn publish_follow(&self, thread_id: Uuid, turn_id: Uuid) {
        if let Err(err) = self.publish(format!("{FOLLOW}{thread_id} {turn_id}")).await {
            tracing::warn!(error = %err, "asking to follow a turn failed");
        }
    }

    /// Publishes `message` on the channel: how many listeners heard it.
    async fn publish(&self, message: String) -> Result<i64, fred::error::Error> {
        let Some(shared) = &self.shared else {
            return Ok(0);
        };
        if !shared.publisher.is_connected() {
            return Err(fred::error::Error::new(
                fred::error::ErrorKind::IO,
                "Redis is not connected",
            ));
        }
        if shared.sharded {
            shared.publisher.spublish(CHANNEL, message).await
        } else {
            shared.publisher.publish(CHANNEL, message).await
        }
    }

    /// Tells every instance to cancel `turn_id` of `thread_id`.
    pub async fn publish_cancel(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
    ) -> Result<(), ConversationError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        if !shared.publisher.is_connected() {
            return Err(ConversationError::Unavailable(
                "the instance running the turn cannot be reached (Redis is down)".into(),
            ));
        }
        let heard = self
            .publish(format!("{thread_id} {turn_id}"))
            .await
            .map_err(|err| {
                tracing::warn!(error = %err, "publishing a cancel failed");
                ConversationError::Unavailable(
                    "the instance running the turn cannot be reached (Redis)".into(),
                )
            })?;
        // Every instance listens, this one too when its subscription is up: no other listener
        // means the one running the turn may not have heard (its subscription reconnecting).
        let own = i64::from(shared.subscriber.is_connected());
        if heard <= own {
            return Err(ConversationError::Unavailable(
                "the instance running the turn is not listening for cancels right now".into(),
            ));
        }
        Ok(())
    }
}

fn parse(text: &str) -> Option<Message> {
    let (follow, ids) = match text.strip_prefix(FOLLOW) {
        Some(ids) => (true, ids),
        None => (false, text),
    };
    let (thread, turn) = ids.split_once(' ')?;
    let ids = (Uuid::parse_str(thread).ok()?, Uuid::parse_str(turn).ok()?);
    Some(if follow {
        Message::Follow(ids.0, ids.1)
    } else {
        Message::Cancel(ids.0, ids.1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_leaves_when_dropped_and_only_its_turn_is_cancelled() {
        let bus = TurnBus::local();
        let (thread, turn) = (Uuid::now_v7(), Uuid::now_v7());
        let token = CancellationToken::new();
        let registration = bus.register(thread, turn, token.clone());
        assert!(!bus.cancel_here(thread, Some(Uuid::now_v7())));
        assert!(!token.is_cancelled());
        assert!(bus.cancel_here(thread, Some(turn)));
        assert!(token.is_cancelled());
        drop(registration);
        assert!(!bus.cancel_here(thread, None));
    }

    #[test]
    fn messages_name_a_thread_and_a_turn() {
        let (thread, turn) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(
            parse(&format!("{thread} {turn}")),
            Some(Message::Cancel(thread, turn))
        );
        assert_eq!(
            parse(&format!("follow {thread} {turn}")),
            Some(Message::Follow(thread, turn))
        );
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse(&format!("{thread} x")), None);
        assert_eq!(parse(&format!("follow {thread}")), None);
        // What an instance of the version before follow messages makes of one: nothing.
        let before = |text: &str| {
            let (thread, turn) = text.split_once(' ')?;
            Some((Uuid::parse_str(thread).ok()?, Uuid::parse_str(turn).ok()?))
        };
        assert_eq!(before(&format!("follow {thread} {turn}")), None);
    }
}

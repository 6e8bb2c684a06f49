//! The boardroom memory's operations: a turn's recall (the facts most similar to its
//! message, for its advisors' contexts), the distillation of a completed turn into facts (in
//! the background), and what a user may see and remove (list, delete one, forget all).
//!
//! A memory's facts are one entry of a tiered cache (`conversation_memory`: L1 in the
//! instance, Redis between replicas, invalidated everywhere by every change), so a turn's
//! recall costs no database round trip, and no embedding call when the memory is empty.

use std::sync::Arc;
use std::time::{Duration, Instant};

use boardroom_cache::TieredCache;
use boardroom_runtime::config::BoardroomMemoryConfig;
use boardroom_runtime::status::Violations;
use tracing::Instrument;
use uuid::Uuid;

use crate::conversations::Conversations;
use crate::domain::Page;
use crate::error::ConversationError;
use crate::memory::{Change, FactCodec, FactSet, Memory, MemoryKey, plan, unit};
use crate::page;
use crate::ports::ChatCall;
use crate::store::{Source, Written};

/// How long a memory's facts stay cached (every change invalidates them before that).
const CACHE_TTL: Duration = Duration::from_secs(30 * 60);
/// Times a distillation decides again after a concurrent change of the memory.
const ATTEMPTS: usize = 3;
/// Vectors' floats beyond which a recall's search runs on the blocking pool (about a
/// millisecond of scanning: 2,000 facts of 1536 dimensions, 12,000 of 256).
const BLOCKING_FLOATS: usize = 3_000_000;

/// The memory's settings and its cache.
#[derive(Clone)]
pub struct Memories {
    pub(crate) cache: TieredCache<FactCodec>,
    pub(crate) config: Arc<BoardroomMemoryConfig>,
    /// Distillations running at once (each a model call, an embedding call and a write).
    distilling: Arc<tokio::sync::Semaphore>,
}

impl Memories {
    /// Memories over `cache`, as `config` says.
    pub fn new(cache: TieredCache<FactCodec>, config: BoardroomMemoryConfig) -> Self {
        Self {
            cache,
            distilling: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_distillations as usize,
            )),
            config: Arc::new(config),
        }
    }
}

/// What a turn recalled: the facts (most similar first) and their ids.
#[derive(Debug, Clone, Default)]
pub struct Recall {
    pub facts: Vec<String>,
    pub ids: Vec<Uuid>,
}

/// A completed turn, as the distiller reads it.
#[derive(Debug, Clone)]
pub(crate) struct Distillable {
    pub key: MemoryKey,
    pub source: Source,
    pub user_message: String,
    pub synthesis: String,
    /// The facts its advisors were given.
    pub used: Vec<Uuid>,
}

fn outcome(name: &'static str) {
    metrics::counter!("conversation_memory_distillations_total", "outcome" => name).increment(1);
}

impl Conversations {
    /// A memory's facts: cached, else from the database.
    async fn fact_set(&self, key: &MemoryKey) -> Result<Arc<FactSet>, ConversationError> {
        let store = self.store.clone();
        let owned = key.clone();
        let loaded = self
            .memories
            .cache
            .get_or_load(&key.cache_key(), CACHE_TTL, move || {
                let (store, key) = (store.clone(), owned.clone());
                async move { store.fact_set(&key).await.map(|s| Some(Arc::new(s))) }
            })
            .await
            .map_err(|shared| (*shared).clone())?;
        Ok(loaded.unwrap_or_default())
    }

    /// The facts of `key`'s memory most similar to `message`. Never fails a turn: a memory
    /// that cannot be read or an embedding that does not come in time is a turn without
    /// memories (counted, and logged).
    pub(crate) async fn recall(&self, key: &MemoryKey, message: &str) -> Recall {
        let config = &self.memories.config;
        if !config.enabled {
            return Recall::default();
        }
        let started = Instant::now();
        let failed = |reason: &'static str, error: &dyn std::fmt::Display| {
            metrics::counter!("conversation_memory_recall_failures_total", "reason" => reason)
                .increment(1);
            tracing::warn!(%error, reason, "the turn runs without the boardroom's memory");
            Recall::default()
        };
        let set = match self.fact_set(key).await {
            Ok(set) => set,
            Err(err) => return failed("storage", &err),
        };
        if set.is_empty() {
            return Recall::default();
        }
        let timeout = Duration::from_millis(config.recall_timeout_ms);
        let embedded = tokio::time::timeout(
            timeout,
            self.models.embed(
                config.embedding_model.clone(),
                vec![message.to_owned()],
                timeout,
            ),
        )
        .await;
        let vector = match embedded {
            Ok(Ok(mut vectors)) if vectors.len() == 1 => unit(vectors.remove(0)),
            Ok(Ok(_)) => return failed("embedding", &"no vector came back"),
            Ok(Err(err)) => return failed("embedding", &err.message),
            Err(_) => return failed("timeout", &"conversation.memory.recall_timeout_ms passed"),
        };
        let searched = Instant::now();
        let (count, floor) = (config.recall_count as usize, config.min_similarity);
        let hits = if set.vectors.len() > BLOCKING_FLOATS {
            // A large memory's scan takes milliseconds: off the runtime's workers (awaited).
            let set = set.clone();
            tokio::task::spawn_blocking(move || set.search(&vector, count, floor))
                .await
                .unwrap_or_default()
        } else {
            set.search(&vector, count, floor)
        };
        metrics::histogram!("conversation_memory_search_seconds")
            .record(searched.elapsed().as_secs_f64());
        metrics::histogram!("conversation_memory_recall_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("conversation_memory_recalled_total").increment(hits.len() as u64);
        Recall {
            facts: hits.iter().map(|&(i, _)| set.facts[i].clone()).collect(),
            ids: hits.iter().map(|&(i, _)| set.ids[i]).collect(),
        }
    }

    /// Distils a completed turn into its boardroom's memory, in the background (owned: ends
    /// with the service's shutdown), at most `max_concurrent_distillations` at once. A failure
    /// costs this turn's facts only.
    pub(crate) fn distil_later(&self, turn: Distillable) {
        if !self.memories.config.enabled {
            return;
        }
        // Bounded: past the bound a turn's facts are not distilled (counted), rather than
        // distillations piling up against the live turns for the gateway and the database.
        let Ok(permit) = self.memories.distilling.clone().try_acquire_owned() else {
            outcome("shed");
            return;
        };
        let this = self.clone();
        let span = tracing::info_span!("distil", turn_id = %turn.source.turn_id);
        self.tasks.spawn(
            async move {
                let _permit = permit;
                tokio::select! {
                    _ = this.shutdown.cancelled() => {}
                    result = this.distil(&turn) => if let Err(err) = result {
                        outcome("failed");
                        tracing::warn!(error = %err, "distilling a turn into the boardroom's memory failed");
                    }
                }
            }
            .instrument(span),
        );
    }

    async fn distil(&self, turn: &Distillable) -> Result<(), ConversationError> {
        let config = self.memories.config.clone();
        if let Err(err) = self.store.record_uses(&turn.key, &turn.used).await {
            tracing::warn!(error = %err, "counting the uses of recalled facts failed");
        }
        let (reply, _usage) = self
            .models
            .complete(ChatCall {
                model: self.limits.summary_model.clone(),
                messages: crate::memory::distil_context(
                    &turn.user_message,
                    &turn.synthesis,
                    config.max_facts_per_turn,
                ),
                tools: Vec::new(),
                temperature: 0.0,
                max_tokens: self.limits.summary_max_tokens,
                request_id: format!("memory:{}", turn.source.turn_id),
                timeout: self.limits.turn_timeout,
            })
            .await
            .map_err(|e| ConversationError::Unavailable(e.message))?;
        let facts = match crate::memory::parse_facts(
            &reply,
            config.max_facts_per_turn as usize,
            config.max_fact_bytes,
        ) {
            Ok(facts) => facts,
            Err(why) => {
                outcome("malformed");
                tracing::warn!(%why, "the distiller's reply is not a list of facts");
                return Ok(());
            }
        };
        if facts.is_empty() {
            outcome("empty");
            return Ok(());
        }
        let vectors = self
            .models
            .embed(
                config.embedding_model.clone(),
                facts.clone(),
                self.limits.turn_timeout,
            )
            .await
            .map_err(|e| ConversationError::Unavailable(e.message))?;
        let new: Vec<(String, Vec<f32>)> = facts.into_iter().zip(vectors).collect();
        let cache_key = turn.key.cache_key();
        for attempt in 0..ATTEMPTS {
            // The cached set first; after a conflict, the database's.
            let set = if attempt == 0 {
                self.fact_set(&turn.key).await?
            } else {
                Arc::new(self.store.fact_set(&turn.key).await?)
            };
            let changes = plan(&set, new.clone(), config.merge_similarity);
            let restated = changes
                .iter()
                .filter(|c| matches!(c, Change::Replace { restated: true, .. }))
                .count() as u64;
            let applied = match self
                .store
                .apply_memory(
                    &turn.key,
                    &set,
                    changes,
                    turn.source,
                    u64::from(config.max_facts),
                )
                .await?
            {
                Written::Stored(applied) => applied,
                // Changed meanwhile (another turn, a delete): decide again on what is there.
                Written::Moved => {
                    self.memories.cache.delete(&cache_key).await;
                    continue;
                }
                Written::Forgotten => {
                    outcome("forgotten");
                    return Ok(());
                }
            };
            self.memories.cache.delete(&cache_key).await;
            for (kind, n) in [
                ("added", applied.added),
                ("restated", restated),
                ("updated", applied.replaced.saturating_sub(restated)),
                ("evicted", applied.evicted),
            ] {
                metrics::counter!("conversation_memory_facts_total", "change" => kind).increment(n);
            }
            outcome("stored");
            return Ok(());
        }
        outcome("conflict");
        Ok(())
    }

    /// A page of a user's facts in a boardroom, newest first.
    pub async fn list_memories(
        &self,
        key: MemoryKey,
        page_size: i32,
        token: &str,
    ) -> Result<Page<Memory>, ConversationError> {
        check_owner(&key)?;
        let size = self.page_size(page_size)?;
        let list = page::fingerprint(&[
            key.owner_id.as_bytes(),
            key.boardroom_id.as_bytes(),
            b"memories",
        ]);
        let before = page::decode_id(token, list)?;
        let mut items = self.store.list_memories(&key, before, size + 1).await?;
        let next_page_token = (items.len() as u64 > size).then(|| {
            items.truncate(size as usize);
            page::encode_id(list, items.last().map_or(Uuid::nil(), |m| m.id))
        });
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Forgets one fact; whether it was remembered.
    pub async fn delete_memory(&self, key: MemoryKey, id: Uuid) -> Result<bool, ConversationError> {
        check_owner(&key)?;
        let deleted = self.store.delete_memory(&key, id).await?;
        self.memories.cache.delete(&key.cache_key()).await;
        Ok(deleted)
    }

    /// Forgets a user's whole memory of a boardroom; how many facts it held.
    pub async fn forget_boardroom(&self, key: MemoryKey) -> Result<u64, ConversationError> {
        check_owner(&key)?;
        let deleted = self.store.forget_memory(&key).await?;
        self.memories.cache.delete(&key.cache_key()).await;
        Ok(deleted)
    }
}

fn check_owner(key: &MemoryKey) -> Result<(), ConversationError> {
    let mut v = Violations::default();
    v.required("owner_id", &key.owner_id, 128);
    Ok(v.finish(())?)
}

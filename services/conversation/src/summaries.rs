//! The rolling summary: the oldest messages after it are folded in, in the background, by
//! the summary model (through the model port).

use tracing::Instrument;
use uuid::Uuid;

use crate::conversations::Conversations;
use crate::domain::{Direction, estimate_tokens};
use crate::error::ConversationError;
use crate::ports::ChatCall;
use crate::store;
use crate::workflow::context;

/// Most messages folded into the summary by one summarisation call.
const FOLD_LIMIT: u64 = 200;

impl Conversations {
    /// Folds the oldest unsummarised messages into the rolling summary, in the background
    /// (one at a time per thread in this instance; across instances the store's check keeps
    /// only the first).
    pub(crate) fn summarise_later(&self, thread_id: Uuid) {
        let fresh = self
            .summarising
            .lock()
            .map(|mut s| s.insert(thread_id))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let this = self.clone();
        // After the turn that asked for it, in its trace.
        let span = tracing::info_span!("summarise", %thread_id);
        // Owned: ends with the service's shutdown token.
        self.tasks.spawn(async move {
            tokio::select! {
                _ = this.shutdown.cancelled() => {}
                result = this.summarise(thread_id) => {
                    if let Err(err) = result {
                        metrics::counter!("conversation_summaries_total", "outcome" => "failed").increment(1);
                        tracing::warn!(%thread_id, error = %err, "summarising a thread failed; the next turn retries");
                    }
                }
            }
            if let Ok(mut s) = this.summarising.lock() {
                s.remove(&thread_id);
            }
        }.instrument(span));
    }

    async fn summarise(&self, thread_id: Uuid) -> Result<(), ConversationError> {
        let Some(head) = self.store.head(thread_id).await? else {
            return Ok(());
        };
        let state = self.state(thread_id, head.state_version).await?;
        let messages = self
            .store
            .list_messages(
                thread_id,
                Direction::Forward,
                Some(state.summarized_through_seq),
                FOLD_LIMIT,
                store::Read::Primary,
            )
            .await?;
        // Keep the newest messages that fit half the context budget; fold the rest.
        let mut kept_tokens = 0u32;
        let mut keep = 0;
        for m in messages.iter().rev() {
            kept_tokens += estimate_tokens(&m.content);
            if kept_tokens > self.limits.context_budget_tokens / 2 {
                break;
            }
            keep += 1;
        }
        let fold = &messages[..messages.len() - keep];
        let Some(through) = fold.last().map(|m| m.seq) else {
            return Ok(());
        };
        let (text, _usage) = self
            .models
            .complete(ChatCall {
                model: self.limits.summary_model.clone(),
                messages: context::summary_context(&state.summary, fold),
                tools: Vec::new(),
                temperature: 0.0,
                max_tokens: self.limits.summary_max_tokens,
                request_id: format!("summary:{thread_id}:{through}"),
                timeout: self.limits.turn_timeout,
            })
            .await
            .map_err(|e| ConversationError::Unavailable(e.message))?;
        let max_bytes = self.limits.summary_max_tokens as usize * 4;
        let summary = crate::domain::truncated(&text, max_bytes).to_owned();
        if let Some(next) = self
            .store
            .apply_summary(thread_id, state.summarized_through_seq, through, summary)
            .await?
        {
            self.remember(thread_id, &next).await;
            metrics::counter!("conversation_summaries_total", "outcome" => "applied").increment(1);
        }
        Ok(())
    }
}

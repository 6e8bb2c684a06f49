//! Turns: the lease on a thread's head, storing a completed turn, finding one by request id.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveValue::Set, ColumnTrait, DbErr, EntityTrait, QueryFilter, TransactionTrait};
use uuid::Uuid;

use crate::domain::{ConversationState, Message, Mode, TurnRecord};
use crate::entity::{head, message, turn};
use crate::error::ConversationError;

use super::checkpoints::{insert_checkpoint, prune};
use super::*;

/// Shortens an answer for an advisor's memory (at a char boundary).
fn shorten(text: &str, max: usize) -> String {
    let kept = crate::domain::truncated(text, max);
    if kept.len() == text.len() {
        kept.to_owned()
    } else {
        format!("{kept}…")
    }
}

/// Bytes of an answer an advisor's memory keeps.
const MEMORY_BYTES: usize = 280;

impl ConversationState {
    /// The state after a turn stored messages up to `last_seq`.
    pub fn after_turn(&self, version: i64, last_seq: i64, memory: &[(String, String)]) -> Self {
        let mut next = self.clone();
        next.version = version;
        next.covers_seq = last_seq;
        next.turns += 1;
        for (advisor, answer) in memory {
            let m = next.advisors.entry(advisor.clone()).or_default();
            m.last_answer = shorten(answer, MEMORY_BYTES);
            m.turns += 1;
        }
        next
    }
}

impl ConversationStore {
    /// Takes the thread's turn lease until `until`, unless another turn holds an unexpired
    /// one or waits ahead in the thread's queue (a turn at `place` in the queue yields to the
    /// entries before it; one that is not queued, to every live entry). Returns the head as it
    /// is now, or `None` when the thread is taken.
    pub async fn acquire_lease(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
        until: DateTime<Utc>,
        place: Option<i64>,
    ) -> Result<Option<Head>, ConversationError> {
        // The head usually exists: one statement. A thread's first turn creates it and retries.
        for _ in 0..2 {
            let at = now();
            let rows = self
                .db
                .timed(
                    "conversation_acquire_lease",
                    head::Entity::update_many()
                        .col_expr(head::Column::RunningTurn, Expr::value(Some(turn_id)))
                        .col_expr(head::Column::LeaseUntil, Expr::value(Some(until)))
                        .col_expr(head::Column::UpdatedAt, Expr::value(at))
                        .filter(head::Column::ThreadId.eq(thread_id))
                        .filter(
                            head::Column::RunningTurn
                                .is_null()
                                .or(head::Column::LeaseUntil.lt(at)),
                        )
                        .filter(
                            Expr::exists(super::queue::ahead(thread_id, turn_id, place, at)).not(),
                        )
                        .exec_with_returning(self.leases.conn()),
                )
                .await?;
            if let Some(head) = rows.into_iter().next() {
                return Ok(Some(Head::from(head)));
            }
            // A queued turn's head exists (its queue entry made sure).
            if place.is_some() || !self.ensure_head(self.db.conn(), thread_id).await? {
                // It exists, so another turn holds an unexpired lease.
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Extends the lease of a running turn to `until`, only while the turn holds it (an expired
    /// lease nobody took is still its own: taking one rewrites `running_turn`). Whether it was.
    pub async fn renew_lease(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
        until: DateTime<Utc>,
    ) -> Result<bool, ConversationError> {
        let result = self
            .leases
            .timed(
                "conversation_renew_lease",
                head::Entity::update_many()
                    .col_expr(head::Column::LeaseUntil, Expr::value(Some(until)))
                    .filter(head::Column::ThreadId.eq(thread_id))
                    .filter(head::Column::RunningTurn.eq(turn_id))
                    .exec(self.leases.conn()),
            )
            .await?;
        Ok(result.rows_affected > 0)
    }

    /// Gives the lease back (a turn that failed or was cancelled); a no-op when it was lost.
    pub async fn release_lease(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
    ) -> Result<(), ConversationError> {
        self.leases
            .timed(
                "conversation_release_lease",
                head::Entity::update_many()
                    .col_expr(head::Column::RunningTurn, Expr::value(Option::<Uuid>::None))
                    .col_expr(
                        head::Column::LeaseUntil,
                        Expr::value(Option::<DateTime<Utc>>::None),
                    )
                    .filter(head::Column::ThreadId.eq(thread_id))
                    .filter(head::Column::RunningTurn.eq(turn_id))
                    .exec(self.leases.conn()),
            )
            .await?;
        Ok(())
    }

    /// Stores a turn: its messages (one batch, consecutive seqs), its checkpoint (merged into
    /// whatever state is latest now) and its record, in one transaction that also releases
    /// the lease and prunes old checkpoints. Fails with `Aborted` if the turn lost its lease.
    pub async fn persist_turn(&self, write: TurnWrite) -> Result<StoredTurn, ConversationError> {
        let retention = *self.retention;
        let result = self
            .db
            .timed("conversation_persist_turn", async {
                let txn = self.db.conn().begin().await?;
                let n = i64::try_from(write.messages.len()).unwrap_or(i64::MAX);
                let (first, head) =
                    match allocate(&txn, write.thread_id, n, Some(write.turn_id)).await {
                        Ok(allocated) => allocated,
                        Err(DbErr::RecordNotUpdated) => return Ok(None),
                        Err(err) => return Err(err),
                    };
                let version = head.state_version;
                let next = if write.base.version == version - 1 {
                    write.base.after_turn(version, head.last_seq, &write.memory)
                } else {
                    state_in(&txn, write.thread_id, version - 1)
                        .await
                        .map_err(|e| DbErr::Custom(e.to_string()))?
                        .after_turn(version, head.last_seq, &write.memory)
                };
                let at = now();
                let stored: Vec<Message> = write
                    .messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| Message {
                        thread_id: write.thread_id,
                        seq: first + i64::try_from(i).unwrap_or(0),
                        role: m.role,
                        author: m.author.clone(),
                        content: m.content.clone(),
                        turn_id: Some(write.turn_id),
                        created_at: at,
                    })
                    .collect();
                let rows = stored.iter().map(|m| message::ActiveModel {
                    thread_id: Set(m.thread_id),
                    seq: Set(m.seq),
                    role: Set(m.role.as_str().to_owned()),
                    author: Set(m.author.clone()),
                    content: Set(m.content.clone()),
                    turn_id: Set(m.turn_id),
                    request_id: Set(None),
                    created_at: Set(at),
                });
                message::Entity::insert_many(rows)
                    .exec_without_returning(&txn)
                    .await?;
                insert_checkpoint(&txn, write.thread_id, &next, Some(version - 1), false).await?;
                // A turn that can be retried by its request id needs its outcome kept; so does
                // one that deliberated (its rounds and reviews are stored with it).
                if write.request_id.is_some() || write.outcome.deliberation.mode != Mode::Panel {
                    turn::Entity::insert(turn::ActiveModel {
                        id: Set(write.turn_id),
                        thread_id: Set(write.thread_id),
                        request_id: Set(write.request_id.clone()),
                        first_seq: Set(first),
                        last_seq: Set(head.last_seq),
                        state_version: Set(version),
                        outcome: Set(serde_json::to_value(&write.outcome)
                            .map_err(|e| DbErr::Custom(e.to_string()))?),
                        created_at: Set(at),
                    })
                    .exec_without_returning(&txn)
                    .await?;
                }
                prune(&txn, write.thread_id, version, retention).await?;
                txn.commit().await?;
                Ok(Some(StoredTurn {
                    record: TurnRecord {
                        id: write.turn_id,
                        thread_id: write.thread_id,
                        first_seq: first,
                        last_seq: head.last_seq,
                        state_version: version,
                        outcome: write.outcome.clone(),
                    },
                    state: next,
                    messages: stored,
                }))
            })
            .await;
        match result {
            Ok(Some(done)) => Ok(done),
            Ok(None) => Err(ConversationError::Aborted(
                "the turn lost its lease on the thread (it could not renew it, and another turn took the thread)"
                    .into(),
            )),
            Err(err) if is_unique_violation(&err) => Err(ConversationError::Aborted(
                "a turn with this request_id was stored meanwhile".into(),
            )),
            Err(err) => Err(err.into()),
        }
    }

    /// The completed turn of `thread_id` with `request_id`.
    pub async fn turn_by_request(
        &self,
        thread_id: Uuid,
        request_id: &str,
    ) -> Result<Option<TurnRecord>, ConversationError> {
        let row = self
            .db
            .timed(
                "conversation_turn_by_request",
                turn::Entity::find()
                    .filter(turn::Column::ThreadId.eq(thread_id))
                    .filter(turn::Column::RequestId.eq(request_id))
                    .one(self.db.conn()),
            )
            .await?;
        row.map(turn_from).transpose()
    }
}

/// How long a turn's lease lasts from now.
pub(crate) fn lease_until(lease: Duration) -> DateTime<Utc> {
    now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::minutes(2))
}

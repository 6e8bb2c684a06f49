//! Turns: the lease on a thread's head, storing a completed turn, finding one by request id.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseBackend, DbErr, EntityTrait,
    QueryFilter, Statement, TransactionTrait, Value,
};
use uuid::Uuid;

use crate::domain::{ConversationState, Message, Mode, TurnRecord};
use crate::entity::{head, message, turn};
use crate::error::ConversationError;

use super::checkpoints::{count_pruned, insert_checkpoint, prune};
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
                .leases
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
    /// whatever state is latest now) and its record, atomically, releasing the lease and
    /// pruning old checkpoints. Fails with `Aborted` if the turn lost its lease.
    ///
    /// On PostgreSQL the usual case is one statement (one round trip, one commit); when the
    /// head moved since the lease (or on SQLite) it is a transaction of several.
    pub async fn persist_turn(&self, write: TurnWrite) -> Result<StoredTurn, ConversationError> {
        let result = self
            .db
            .timed("conversation_persist_turn", async {
                if self.db.backend() == DatabaseBackend::Postgres {
                    let mut stored = self.persist_in_one_statement(&write).await?;
                    // The head moved since the lease (a message appended, a summary stored):
                    // once more on the thread as it is now, unless the lease is lost.
                    if stored.is_none()
                        && let Some(rebased) = self.rebase(&write).await?
                    {
                        stored = self.persist_in_one_statement(&rebased).await?;
                    }
                    if stored.is_some() {
                        metrics::counter!("conversation_turn_writes_total", "path" => "one_statement")
                            .increment(1);
                        return Ok(stored);
                    }
                }
                let stored = self.persist_in_transaction(&write).await?;
                if stored.is_some() {
                    metrics::counter!("conversation_turn_writes_total", "path" => "transaction")
                        .increment(1);
                }
                Ok(stored)
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

    /// PostgreSQL: the whole turn in one statement of data-modifying CTEs, provided the head
    /// is as the turn found it when it took its lease: still its lease, no seq or state
    /// version taken since (the usual case), so seqs, version and state are known before it
    /// runs. The head's UPDATE fences the rest: each INSERT and the prune select from its
    /// RETURNING, so when it matches no row nothing is written and `None` sends the turn to
    /// [`Self::rebase`] (and, when that fails too, to [`Self::persist_in_transaction`], which
    /// finds out why).
    pub(super) async fn persist_in_one_statement(
        &self,
        write: &TurnWrite,
    ) -> Result<Option<StoredTurn>, DbErr> {
        if write.messages.is_empty() || write.messages.len() > ONE_STATEMENT_MAX_MESSAGES {
            return Ok(None);
        }
        let n = i64::try_from(write.messages.len()).unwrap_or(i64::MAX);
        let version = write.base.version + 1;
        let (first, last) = (write.base_seq + 1, write.base_seq + n);
        let next = write.base.after_turn(version, last, &write.memory);
        let at = now();
        let stored = stored_messages(write, first, at);
        // $1..$11; the messages' and the record's values follow.
        let mut values: Vec<Value> = vec![
            write.thread_id.into(),
            write.turn_id.into(),
            n.into(),
            at.into(),
            write.base_seq.into(),
            write.base.version.into(),
            version.into(),
            Some(version - 1).filter(|p| *p > 0).into(),
            last.into(),
            state::encode(&next).into(),
            (version - *self.retention).into(),
        ];
        let mut sql = String::from(
            "WITH h AS (UPDATE conversation_threads SET last_seq = last_seq + $3, \
             state_version = state_version + 1, running_turn = NULL, lease_until = NULL, \
             updated_at = $4 WHERE thread_id = $1 AND running_turn = $2 AND last_seq = $5 \
             AND state_version = $6 RETURNING 1), \
             m AS (INSERT INTO messages (thread_id, seq, role, author, content, turn_id, \
             created_at) SELECT $1, v.seq, v.role, v.author, v.content, $2, $4 FROM h, (VALUES ",
        );
        for (i, m) in stored.iter().enumerate() {
            let p = values.len();
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("(${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4));
            values.extend([
                m.seq.into(),
                m.role.as_str().into(),
                m.author.as_str().into(),
                m.content.as_str().into(),
            ]);
        }
        sql.push_str(
            ") AS v(seq, role, author, content)), \
             c AS (INSERT INTO checkpoints (thread_id, version, parent_version, covers_seq, \
             state, pinned, created_at) SELECT $1, $7, $8, $9, $10, false, $4 FROM h), ",
        );
        if keeps_record(write) {
            let p = values.len();
            sql.push_str(&format!(
                "r AS (INSERT INTO turns (id, thread_id, request_id, first_seq, last_seq, \
                 state_version, outcome, created_at) SELECT $2, $1, ${}, ${}, $9, $7, ${}, $4 \
                 FROM h), ",
                p + 1,
                p + 2,
                p + 3
            ));
            values.extend([
                write.request_id.clone().into(),
                first.into(),
                outcome_json(write)?.into(),
            ]);
        }
        sql.push_str(
            "d AS (DELETE FROM checkpoints WHERE thread_id = $1 AND version <= $11 \
             AND NOT pinned AND EXISTS (SELECT 1 FROM h) RETURNING 1) \
             SELECT (SELECT count(*) FROM h) AS stored, (SELECT count(*) FROM d) AS pruned",
        );
        let row = self
            .db
            .conn()
            .query_one_raw(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                sql,
                values,
            ))
            .await?
            .ok_or_else(|| DbErr::Custom("a turn's write returned no row".into()))?;
        if row.try_get::<i64>("", "stored")? == 0 {
            return Ok(None);
        }
        count_pruned(u64::try_from(row.try_get::<i64>("", "pruned")?).unwrap_or(0));
        Ok(Some(StoredTurn {
            record: record_of(write, first, last, version),
            state: next,
            messages: stored,
        }))
    }

    /// PostgreSQL: the turn's write on the thread's head and latest state as they are now
    /// (one read), for [`Self::persist_in_one_statement`] after the head moved; `None` when
    /// the turn no longer holds the lease (or the state does not decode: the transaction
    /// path then says so).
    pub(super) async fn rebase(&self, write: &TurnWrite) -> Result<Option<TurnWrite>, DbErr> {
        let row = self
            .db
            .conn()
            .query_one_raw(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "SELECT h.last_seq, h.state_version, h.running_turn, c.state \
                 FROM conversation_threads h LEFT JOIN checkpoints c \
                 ON c.thread_id = h.thread_id AND c.version = h.state_version \
                 WHERE h.thread_id = $1",
                [write.thread_id.into()],
            ))
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        if row.try_get::<Option<Uuid>>("", "running_turn")? != Some(write.turn_id) {
            return Ok(None);
        }
        let base = if row.try_get::<i64>("", "state_version")? == 0 {
            ConversationState::default()
        } else {
            let bytes: Option<Vec<u8>> = row.try_get("", "state")?;
            let Some(state) = bytes.as_deref().and_then(state::decode) else {
                return Ok(None);
            };
            state
        };
        Ok(Some(TurnWrite {
            base: Arc::new(base),
            base_seq: row.try_get("", "last_seq")?,
            ..write.clone()
        }))
    }

    /// Statement by statement in one transaction: the head first (seqs, version, lease
    /// fence), then a state merged into whatever is latest now.
    pub(super) async fn persist_in_transaction(
        &self,
        write: &TurnWrite,
    ) -> Result<Option<StoredTurn>, DbErr> {
        let txn = self.db.conn().begin().await?;
        let n = i64::try_from(write.messages.len()).unwrap_or(i64::MAX);
        let (first, head) = match allocate(&txn, write.thread_id, n, Some(write.turn_id)).await {
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
        let stored = stored_messages(write, first, at);
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
        if keeps_record(write) {
            turn::Entity::insert(turn::ActiveModel {
                id: Set(write.turn_id),
                thread_id: Set(write.thread_id),
                request_id: Set(write.request_id.clone()),
                first_seq: Set(first),
                last_seq: Set(head.last_seq),
                state_version: Set(version),
                outcome: Set(outcome_json(write)?),
                created_at: Set(at),
            })
            .exec_without_returning(&txn)
            .await?;
        }
        prune(&txn, write.thread_id, version, *self.retention).await?;
        txn.commit().await?;
        Ok(Some(StoredTurn {
            record: record_of(write, first, head.last_seq, version),
            state: next,
            messages: stored,
        }))
    }

    /// The completed turn of `thread_id` with `request_id`, and the thread's state version
    /// (0: no head yet), read together. A turn started after this lookup need not look again
    /// once it holds the lease if the version is unchanged: the first run of the request
    /// stores its record in the transaction that bumps the version, so it was not stored in
    /// between.
    pub async fn request_lookup(
        &self,
        thread_id: Uuid,
        request_id: &str,
    ) -> Result<(Option<TurnRecord>, i64), ConversationError> {
        let backend = self.db.backend();
        let (request, thread) = match backend {
            DatabaseBackend::Postgres => ("$1", "$2"),
            _ => ("?", "?"),
        };
        let sql = format!(
            "SELECT h.state_version AS head_version, t.id, t.first_seq, t.last_seq, \
             t.state_version, t.outcome, t.created_at FROM conversation_threads h \
             LEFT JOIN turns t ON t.thread_id = h.thread_id AND t.request_id = {request} \
             WHERE h.thread_id = {thread}"
        );
        let values: [Value; 2] = [request_id.into(), thread_id.into()];
        let row = self
            .db
            .timed(
                "conversation_request_lookup",
                self.db
                    .conn()
                    .query_one_raw(Statement::from_sql_and_values(backend, sql, values)),
            )
            .await?;
        let Some(row) = row else {
            return Ok((None, 0));
        };
        let version: i64 = row.try_get("", "head_version")?;
        let Some(id) = row.try_get::<Option<Uuid>>("", "id")? else {
            return Ok((None, version));
        };
        let record = turn_from(turn::Model {
            id,
            thread_id,
            request_id: Some(request_id.to_owned()),
            first_seq: row.try_get("", "first_seq")?,
            last_seq: row.try_get("", "last_seq")?,
            state_version: row.try_get("", "state_version")?,
            outcome: row.try_get("", "outcome")?,
            created_at: row.try_get("", "created_at")?,
        })?;
        Ok((Some(record), version))
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

/// Messages beyond which a turn is stored by the transaction path (PostgreSQL takes at most
/// 65,535 parameters in a statement; a turn writes 4 per message).
const ONE_STATEMENT_MAX_MESSAGES: usize = 4096;

/// A turn that can be retried by its request id needs its outcome kept; so does one that
/// deliberated (its rounds and reviews are stored with it).
fn keeps_record(write: &TurnWrite) -> bool {
    write.request_id.is_some() || write.outcome.deliberation.mode != Mode::Panel
}

fn outcome_json(write: &TurnWrite) -> Result<serde_json::Value, DbErr> {
    serde_json::to_value(&write.outcome).map_err(|e| DbErr::Custom(e.to_string()))
}

/// The turn's messages as stored from seq `first` on.
fn stored_messages(write: &TurnWrite, first: i64, at: DateTime<Utc>) -> Vec<Message> {
    (first..)
        .zip(&write.messages)
        .map(|(seq, m)| Message {
            thread_id: write.thread_id,
            seq,
            role: m.role,
            author: m.author.clone(),
            content: m.content.clone(),
            turn_id: Some(write.turn_id),
            created_at: at,
        })
        .collect()
}

fn record_of(write: &TurnWrite, first: i64, last: i64, version: i64) -> TurnRecord {
    TurnRecord {
        id: write.turn_id,
        thread_id: write.thread_id,
        first_seq: first,
        last_seq: last,
        state_version: version,
        outcome: write.outcome.clone(),
    }
}

/// How long a turn's lease lasts from now.
pub(crate) fn lease_until(lease: Duration) -> DateTime<Utc> {
    now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::minutes(2))
}

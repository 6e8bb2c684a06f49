//! Messages, checkpoints and turns on the database (PostgreSQL or SQLite, one code path).
//!
//! Every write transaction starts by updating the thread's head row in `conversation_threads`:
//! PostgreSQL row-locks it and SQLite takes its write lock, so writers of one thread queue up
//! there and the `UPDATE ... SET last_seq = last_seq + n RETURNING last_seq` hands each a
//! distinct range of seqs. The `(thread_id, seq)` primary key backs that up: a duplicate seq
//! cannot be stored. Turns hold a lease on the head row while they run, so one thread runs
//! one turn at a time, and a turn persists only while it still holds its lease (fencing).

use std::sync::Arc;
use std::time::Duration;

use boardroom_migrations::Messages;
use boardroom_runtime::db::Database;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Func, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, SqlErr, TransactionTrait,
};
use uuid::Uuid;

use crate::domain::{
    Checkpoint, ConversationState, Direction, Message, NewMessage, Role, TurnOutcome, TurnRecord,
};
use crate::entity::{checkpoint, head, message, turn};
use crate::error::ConversationError;
use crate::state;

/// Now, truncated to the microsecond precision PostgreSQL stores, so values round-trip.
pub(crate) fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// A turn ready to be stored: its messages, the state change, and what it recorded.
#[derive(Debug, Clone)]
pub struct TurnWrite {
    pub thread_id: Uuid,
    pub turn_id: Uuid,
    pub request_id: Option<String>,
    /// The state the turn started from; the new state builds on it unless a summary was
    /// stored meanwhile (then on that).
    pub base: Arc<ConversationState>,
    pub messages: Vec<NewMessage>,
    /// Per advisor that answered: its answer, shortened.
    pub memory: Vec<(String, String)>,
    pub outcome: TurnOutcome,
}

/// What storing a turn produced.
#[derive(Debug, Clone)]
pub struct StoredTurn {
    pub record: TurnRecord,
    pub state: ConversationState,
    /// The turn's messages as stored (with their seqs).
    pub messages: Vec<Message>,
}

/// The thread's head: seq counter, state version, lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub last_seq: i64,
    pub state_version: i64,
    pub running_turn: Option<Uuid>,
}

impl From<head::Model> for Head {
    fn from(m: head::Model) -> Self {
        Head {
            last_seq: m.last_seq,
            state_version: m.state_version,
            running_turn: m.running_turn,
        }
    }
}

/// The conversation service's storage.
#[derive(Clone, Debug)]
pub struct ConversationStore {
    db: Database,
    /// Lease writes: on PostgreSQL without waiting for the WAL flush. A lease lost in a crash
    /// costs nothing durable: the turn's own write is fenced on its lease and fails.
    leases: Database,
    retention: Arc<i64>,
}

fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

fn message_from(m: message::Model) -> Result<Message, ConversationError> {
    Ok(Message {
        role: Role::parse(&m.role)
            .ok_or_else(|| ConversationError::Internal(format!("stored role {:?}", m.role)))?,
        thread_id: m.thread_id,
        seq: m.seq,
        author: m.author,
        content: m.content,
        turn_id: m.turn_id,
        created_at: m.created_at,
    })
}

fn checkpoint_from(m: checkpoint::Model) -> Checkpoint {
    Checkpoint {
        thread_id: m.thread_id,
        version: m.version,
        parent_version: m.parent_version,
        covers_seq: m.covers_seq,
        pinned: m.pinned,
        stored_bytes: i64::try_from(m.state.len()).unwrap_or(i64::MAX),
        created_at: m.created_at,
    }
}

fn turn_from(m: turn::Model) -> Result<TurnRecord, ConversationError> {
    Ok(TurnRecord {
        outcome: serde_json::from_value(m.outcome)
            .map_err(|e| ConversationError::Internal(format!("stored turn outcome: {e}")))?,
        id: m.id,
        thread_id: m.thread_id,
        first_seq: m.first_seq,
        last_seq: m.last_seq,
        state_version: m.state_version,
    })
}

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
    /// A store over `db` (and `leases`, see [`Database::connect_relaxed`]), keeping
    /// `retention` checkpoints per thread (plus fork points).
    pub fn new(db: Database, leases: Database, retention: u32) -> Self {
        Self {
            db,
            leases,
            retention: Arc::new(i64::from(Ord::max(retention, 1))),
        }
    }

    /// The database, for pool metrics.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Creates the thread's head row unless it exists; whether it did.
    async fn ensure_head(
        &self,
        conn: &impl ConnectionTrait,
        thread_id: Uuid,
    ) -> Result<bool, DbErr> {
        let at = now();
        head::Entity::insert(head::ActiveModel {
            thread_id: Set(thread_id),
            last_seq: Set(0),
            state_version: Set(0),
            running_turn: Set(None),
            lease_until: Set(None),
            created_at: Set(at),
            updated_at: Set(at),
        })
        .on_conflict_do_nothing()
        .exec_without_returning(conn)
        .await
        .map(|inserted| matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0))
    }

    /// The thread's head, if the thread was ever written to.
    pub async fn head(&self, thread_id: Uuid) -> Result<Option<Head>, ConversationError> {
        let row = self
            .db
            .timed(
                "conversation_head",
                head::Entity::find_by_id(thread_id).one(self.db.conn()),
            )
            .await?;
        Ok(row.map(Head::from))
    }

    /// Appends one message with the next seq. A retry with the same `request_id` returns the
    /// message the first call wrote.
    pub async fn append(
        &self,
        thread_id: Uuid,
        new: NewMessage,
        request_id: Option<String>,
    ) -> Result<Message, ConversationError> {
        if let Some(id) = &request_id
            && let Some(found) = self.message_by_request(thread_id, id).await?
        {
            return Ok(found);
        }
        self.ensure_head(self.db.conn(), thread_id).await?;
        let written = self
            .db
            .timed("conversation_append", async {
                let txn = self.db.conn().begin().await?;
                let (first, _) = allocate(&txn, thread_id, 1, None).await?;
                let row = message::ActiveModel {
                    thread_id: Set(thread_id),
                    seq: Set(first),
                    role: Set(new.role.as_str().to_owned()),
                    author: Set(new.author),
                    content: Set(new.content),
                    turn_id: Set(None),
                    request_id: Set(request_id.clone()),
                    created_at: Set(now()),
                };
                let model = message::Entity::insert(row)
                    .exec_with_returning(&txn)
                    .await?;
                txn.commit().await?;
                Ok(model)
            })
            .await;
        match written {
            Ok(model) => message_from(model),
            // A concurrent call with the same request id won.
            Err(err) if is_unique_violation(&err) => match &request_id {
                Some(id) => self
                    .message_by_request(thread_id, id)
                    .await?
                    .ok_or_else(|| {
                        ConversationError::Internal("an idempotent append lost its row".into())
                    }),
                None => Err(err.into()),
            },
            Err(err) => Err(err.into()),
        }
    }

    async fn message_by_request(
        &self,
        thread_id: Uuid,
        request_id: &str,
    ) -> Result<Option<Message>, ConversationError> {
        let row = self
            .db
            .timed(
                "conversation_message_by_request",
                message::Entity::find()
                    .filter(message::Column::ThreadId.eq(thread_id))
                    .filter(message::Column::RequestId.eq(request_id))
                    .one(self.db.conn()),
            )
            .await?;
        row.map(message_from).transpose()
    }

    /// A page of messages after (forward) or before (backward) `from`.
    pub async fn list_messages(
        &self,
        thread_id: Uuid,
        direction: Direction,
        from: Option<i64>,
        limit: u64,
    ) -> Result<Vec<Message>, ConversationError> {
        let mut query = message::Entity::find().filter(message::Column::ThreadId.eq(thread_id));
        query = match (direction, from) {
            (Direction::Forward, Some(seq)) => query.filter(message::Column::Seq.gt(seq)),
            (Direction::Backward, Some(seq)) => query.filter(message::Column::Seq.lt(seq)),
            (_, None) => query,
        };
        query = match direction {
            Direction::Forward => query.order_by_asc(message::Column::Seq),
            Direction::Backward => query.order_by_desc(message::Column::Seq),
        };
        let rows = self
            .db
            .timed(
                "conversation_list_messages",
                query.limit(limit).all(self.db.conn()),
            )
            .await?;
        rows.into_iter().map(message_from).collect()
    }

    /// The newest `limit` messages after `after_seq`, oldest first.
    pub async fn recent_messages(
        &self,
        thread_id: Uuid,
        after_seq: i64,
        limit: u64,
    ) -> Result<Vec<Message>, ConversationError> {
        let rows = self
            .db
            .timed(
                "conversation_recent_messages",
                message::Entity::find()
                    .filter(message::Column::ThreadId.eq(thread_id))
                    .filter(message::Column::Seq.gt(after_seq))
                    .order_by_desc(message::Column::Seq)
                    .limit(limit)
                    .all(self.db.conn()),
            )
            .await?;
        let mut messages = rows
            .into_iter()
            .map(message_from)
            .collect::<Result<Vec<_>, _>>()?;
        messages.reverse();
        Ok(messages)
    }

    /// Messages `from..=to`, oldest first.
    pub async fn messages_between(
        &self,
        thread_id: Uuid,
        from: i64,
        to: i64,
    ) -> Result<Vec<Message>, ConversationError> {
        let rows = self
            .db
            .timed(
                "conversation_messages_between",
                message::Entity::find()
                    .filter(message::Column::ThreadId.eq(thread_id))
                    .filter(message::Column::Seq.between(from, to))
                    .order_by_asc(message::Column::Seq)
                    .all(self.db.conn()),
            )
            .await?;
        rows.into_iter().map(message_from).collect()
    }

    /// Messages of the thread up to `through` whose text contains `needle` (case-insensitive),
    /// newest first, at most `limit`.
    pub async fn search(
        &self,
        thread_id: Uuid,
        needle: &str,
        through: i64,
        limit: u64,
    ) -> Result<Vec<Message>, ConversationError> {
        let escaped = needle
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let pattern = format!("%{escaped}%");
        let rows = self
            .db
            .timed(
                "conversation_search",
                message::Entity::find()
                    .filter(message::Column::ThreadId.eq(thread_id))
                    .filter(message::Column::Seq.lte(through))
                    .filter(
                        Expr::expr(Func::lower(Expr::col(message::Column::Content)))
                            .like(sea_orm::sea_query::LikeExpr::new(pattern).escape('\\')),
                    )
                    .order_by_desc(message::Column::Seq)
                    .limit(limit)
                    .all(self.db.conn()),
            )
            .await?;
        rows.into_iter().map(message_from).collect()
    }

    /// Takes the thread's turn lease until `until`, unless another turn holds an unexpired
    /// one. Returns the head as it is now, or `None` when the lease is held.
    pub async fn acquire_lease(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
        until: DateTime<Utc>,
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
                        .exec_with_returning(self.leases.conn()),
                )
                .await?;
            if let Some(head) = rows.into_iter().next() {
                return Ok(Some(Head::from(head)));
            }
            if !self.ensure_head(self.db.conn(), thread_id).await? {
                // It exists, so another turn holds an unexpired lease.
                return Ok(None);
            }
        }
        Ok(None)
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

    /// The state at `version` (0: the empty state before the first turn).
    pub async fn state_at(
        &self,
        thread_id: Uuid,
        version: i64,
    ) -> Result<ConversationState, ConversationError> {
        state_in(self.db.conn(), thread_id, version).await
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
                // Only a turn that can be retried by its request id needs its outcome kept.
                if write.request_id.is_some() {
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
                "the turn lost its lease on the thread (it ran past conversation.turn_timeout_ms)"
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

    /// Replaces the rolling summary: messages up to `through` are now in `summary`. Applies
    /// only if the summary still ends at `expected_through` (another summariser did not get
    /// there first); returns the new state, or `None` when it did not apply.
    pub async fn apply_summary(
        &self,
        thread_id: Uuid,
        expected_through: i64,
        through: i64,
        summary: String,
    ) -> Result<Option<ConversationState>, ConversationError> {
        let retention = *self.retention;
        let applied = self
            .db
            .timed("conversation_apply_summary", async {
                let txn = self.db.conn().begin().await?;
                let (_, head) = match allocate(&txn, thread_id, 0, None).await {
                    Ok(allocated) => allocated,
                    Err(DbErr::RecordNotUpdated) => return Ok(None),
                    Err(err) => return Err(err),
                };
                let version = head.state_version;
                let previous = state_in(&txn, thread_id, version - 1)
                    .await
                    .map_err(|e| DbErr::Custom(e.to_string()))?;
                if previous.summarized_through_seq != expected_through {
                    txn.rollback().await?;
                    return Ok(None);
                }
                let mut next = previous;
                next.version = version;
                next.summary = summary;
                next.summarized_through_seq = through;
                insert_checkpoint(&txn, thread_id, &next, Some(version - 1), false).await?;
                prune(&txn, thread_id, version, retention).await?;
                txn.commit().await?;
                Ok(Some(next))
            })
            .await?;
        Ok(applied)
    }

    /// Retained checkpoints, newest first, older than `before` when given.
    pub async fn list_checkpoints(
        &self,
        thread_id: Uuid,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<Checkpoint>, ConversationError> {
        let mut query =
            checkpoint::Entity::find().filter(checkpoint::Column::ThreadId.eq(thread_id));
        if let Some(version) = before {
            query = query.filter(checkpoint::Column::Version.lt(version));
        }
        let rows = self
            .db
            .timed(
                "conversation_list_checkpoints",
                query
                    .order_by_desc(checkpoint::Column::Version)
                    .limit(limit)
                    .all(self.db.conn()),
            )
            .await?;
        Ok(rows.into_iter().map(checkpoint_from).collect())
    }

    /// Starts `target` from checkpoint `version` of `source` (0: the latest): its messages up
    /// to the checkpoint's seq are copied, its state becomes version 1, and the source
    /// checkpoint is pinned (kept beyond retention). Repeating a fork into the same target
    /// returns the target's current state.
    pub async fn fork(
        &self,
        source: Uuid,
        version: i64,
        target: Uuid,
    ) -> Result<ConversationState, ConversationError> {
        if let Some(existing) = self.head(target).await? {
            return self.state_at(target, existing.state_version).await;
        }
        let version = if version == 0 {
            self.head(source)
                .await?
                .map(|h| h.state_version)
                .filter(|v| *v > 0)
                .ok_or_else(|| ConversationError::not_found("checkpoint of thread", source))?
        } else {
            version
        };
        let forked = self
            .db
            .timed("conversation_fork", async {
                let txn = self.db.conn().begin().await?;
                let Some(row) = checkpoint::Entity::find_by_id((source, version))
                    .one(&txn)
                    .await?
                else {
                    return Ok(None);
                };
                let mut state = state::decode(&row.state)
                    .ok_or_else(|| DbErr::Custom("a stored checkpoint does not decode".into()))?;
                checkpoint::Entity::update_many()
                    .col_expr(checkpoint::Column::Pinned, Expr::value(true))
                    .filter(checkpoint::Column::ThreadId.eq(source))
                    .filter(checkpoint::Column::Version.eq(version))
                    .exec(&txn)
                    .await?;
                let at = now();
                head::Entity::insert(head::ActiveModel {
                    thread_id: Set(target),
                    last_seq: Set(row.covers_seq),
                    state_version: Set(1),
                    running_turn: Set(None),
                    lease_until: Set(None),
                    created_at: Set(at),
                    updated_at: Set(at),
                })
                .exec_without_returning(&txn)
                .await?;
                let columns = [
                    Messages::ThreadId,
                    Messages::Seq,
                    Messages::Role,
                    Messages::Author,
                    Messages::Content,
                    Messages::TurnId,
                    Messages::CreatedAt,
                ];
                let copy = Query::insert()
                    .into_table(Messages::Table)
                    .columns(columns)
                    .select_from(
                        Query::select()
                            .expr(Expr::value(target))
                            .columns(columns[1..].iter().copied())
                            .from(Messages::Table)
                            .and_where(Expr::col(Messages::ThreadId).eq(source))
                            .and_where(Expr::col(Messages::Seq).lte(row.covers_seq))
                            .to_owned(),
                    )
                    .map_err(|e| DbErr::Custom(e.to_string()))?
                    .to_owned();
                txn.execute(&copy).await?;
                state.version = 1;
                insert_checkpoint(&txn, target, &state, None, false).await?;
                txn.commit().await?;
                Ok(Some(state))
            })
            .await;
        match forked {
            Ok(Some(state)) => Ok(state),
            Ok(None) => Err(ConversationError::not_found(
                "checkpoint",
                format!("{source}@{version}"),
            )),
            // A concurrent fork into the same target won.
            Err(err) if is_unique_violation(&err) => {
                let head = self.head(target).await?.ok_or_else(|| {
                    ConversationError::Internal("a forked thread lost its head".into())
                })?;
                self.state_at(target, head.state_version).await
            }
            Err(err) => Err(err.into()),
        }
    }
}

/// Advances the head: `n` new seqs and (for a turn or a summary, i.e. unless this is an
/// append) a new state version; a turn also releases its lease, and only if it still holds
/// it. Returns the first new seq and the updated head; `Err` when `turn` lost its lease.
async fn allocate(
    txn: &DatabaseTransaction,
    thread_id: Uuid,
    n: i64,
    turn: Option<Uuid>,
) -> Result<(i64, head::Model), DbErr> {
    let mut update = head::Entity::update_many()
        .col_expr(
            head::Column::LastSeq,
            Expr::col(head::Column::LastSeq).add(n),
        )
        .col_expr(head::Column::UpdatedAt, Expr::value(now()))
        .filter(head::Column::ThreadId.eq(thread_id));
    let appending = turn.is_none() && n > 0;
    if !appending {
        update = update.col_expr(
            head::Column::StateVersion,
            Expr::col(head::Column::StateVersion).add(1),
        );
    }
    if let Some(turn) = turn {
        update = update
            .col_expr(head::Column::RunningTurn, Expr::value(Option::<Uuid>::None))
            .col_expr(
                head::Column::LeaseUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(head::Column::RunningTurn.eq(turn));
    }
    let head = update
        .exec_with_returning(txn)
        .await?
        .into_iter()
        .next()
        .ok_or(DbErr::RecordNotUpdated)?;
    Ok((head.last_seq - n + 1, head))
}

async fn state_in(
    conn: &impl ConnectionTrait,
    thread_id: Uuid,
    version: i64,
) -> Result<ConversationState, ConversationError> {
    if version <= 0 {
        return Ok(ConversationState::default());
    }
    let row = checkpoint::Entity::find_by_id((thread_id, version))
        .one(conn)
        .await?
        .ok_or_else(|| {
            ConversationError::not_found("checkpoint", format!("{thread_id}@{version}"))
        })?;
    state::decode(&row.state).ok_or_else(|| {
        ConversationError::Internal(format!("checkpoint {thread_id}@{version} does not decode"))
    })
}

async fn insert_checkpoint(
    txn: &DatabaseTransaction,
    thread_id: Uuid,
    state: &ConversationState,
    parent: Option<i64>,
    pinned: bool,
) -> Result<(), DbErr> {
    checkpoint::Entity::insert(checkpoint::ActiveModel {
        thread_id: Set(thread_id),
        version: Set(state.version),
        parent_version: Set(parent.filter(|p| *p > 0)),
        covers_seq: Set(state.covers_seq),
        state: Set(state::encode(state)),
        pinned: Set(pinned),
        created_at: Set(now()),
    })
    .exec_without_returning(txn)
    .await
    .map(|_| ())
}

/// Drops checkpoints older than the newest `retention`, except pinned ones (fork points).
async fn prune(
    txn: &DatabaseTransaction,
    thread_id: Uuid,
    version: i64,
    retention: i64,
) -> Result<(), DbErr> {
    let result = checkpoint::Entity::delete_many()
        .filter(checkpoint::Column::ThreadId.eq(thread_id))
        .filter(checkpoint::Column::Version.lte(version - retention))
        .filter(checkpoint::Column::Pinned.eq(false))
        .exec(txn)
        .await?;
    if result.rows_affected > 0 {
        metrics::counter!("conversation_checkpoints_pruned_total").increment(result.rows_affected);
    }
    Ok(())
}

/// How long a turn's lease lasts from now.
pub(crate) fn lease_until(lease: Duration) -> DateTime<Utc> {
    now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::minutes(2))
}

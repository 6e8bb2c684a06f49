//! Messages, checkpoints and turns on the database (PostgreSQL or SQLite, one code path).
//!
//! Every write transaction starts by updating the thread's head row in `conversation_threads`:
//! PostgreSQL row-locks it and SQLite takes its write lock, so writers of one thread queue up
//! there and the `UPDATE ... SET last_seq = last_seq + n RETURNING last_seq` hands each a
//! distinct range of seqs. The `(thread_id, seq)` primary key backs that up: a duplicate seq
//! cannot be stored. Turns hold a lease on the head row while they run, so one thread runs
//! one turn at a time, and a turn persists only while it still holds its lease (fencing).

use std::sync::Arc;

use boardroom_runtime::db::Database;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter,
};
use uuid::Uuid;

use crate::domain::{
    Checkpoint, ConversationState, Message, NewMessage, Role, TurnOutcome, TurnRecord,
};
use crate::entity::{checkpoint, head, message, turn};
use crate::error::ConversationError;
use crate::state;

mod checkpoints;
mod memories;
mod messages;
mod queue;
#[cfg(test)]
pub(crate) mod tests;
mod turns;

pub use memories::{Applied, Source, Written};
pub(crate) use turns::lease_until;

pub(crate) use boardroom_runtime::clock::now;
pub(super) use boardroom_runtime::db::is_unique_violation;

/// A turn ready to be stored: its messages, the state change, and what it recorded.
#[derive(Debug, Clone)]
pub struct TurnWrite {
    pub thread_id: Uuid,
    pub turn_id: Uuid,
    pub request_id: Option<String>,
    /// The state the turn started from; the new state builds on it unless a summary was
    /// stored meanwhile (then on that).
    pub base: Arc<ConversationState>,
    /// The head's `last_seq` when the turn took its lease (`base` covers up to it).
    pub base_seq: i64,
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
    pub lease_until: Option<DateTime<Utc>>,
}

impl Head {
    /// The head of a thread never written to.
    pub const EMPTY: Head = Head {
        last_seq: 0,
        state_version: 0,
        running_turn: None,
        lease_until: None,
    };

    /// The turn that holds an unexpired lease now, if any.
    pub fn running_turn_now(&self) -> Option<Uuid> {
        self.running_turn
            .filter(|_| self.lease_until.is_some_and(|until| until >= now()))
    }
}

impl From<head::Model> for Head {
    fn from(m: head::Model) -> Self {
        Head {
            last_seq: m.last_seq,
            state_version: m.state_version,
            running_turn: m.running_turn,
            lease_until: m.lease_until,
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

pub(super) fn message_from(m: message::Model) -> Result<Message, ConversationError> {
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

pub(super) fn checkpoint_from(m: checkpoint::Model) -> Checkpoint {
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

pub(super) fn turn_from(m: turn::Model) -> Result<TurnRecord, ConversationError> {
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
    pub(super) async fn ensure_head(
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

    /// The primary's WAL position now, with replicas configured (a turn's consistency token).
    pub async fn commit_position(&self) -> Option<String> {
        self.db.commit_position().await.map(|lsn| lsn.to_string())
    }

    /// The thread's head, if the thread was ever written to (from the primary).
    pub async fn head(&self, thread_id: Uuid) -> Result<Option<Head>, ConversationError> {
        self.head_from(thread_id, Read::Primary).await
    }

    /// The thread's head as `read` sees it.
    pub async fn head_from(
        &self,
        thread_id: Uuid,
        read: Read,
    ) -> Result<Option<Head>, ConversationError> {
        let row = self
            .fetch("conversation_head", read, |c| {
                Box::pin(head::Entity::find_by_id(thread_id).one(c))
            })
            .await?;
        Ok(row.map(Head::from))
    }

    /// The state at `version` (0: the empty state before the first turn). A checkpoint is
    /// never changed once written, so a replica may serve it; one that has not replayed it
    /// yet (or fails) sends the read to the primary.
    pub async fn state_at(
        &self,
        thread_id: Uuid,
        version: i64,
    ) -> Result<ConversationState, ConversationError> {
        match state_in(self.db.reader().await, thread_id, version).await {
            Ok(state) => Ok(state),
            // Not replayed there yet, or the replica failed to answer: the primary has it.
            Err(_) => state_in(self.db.conn(), thread_id, version).await,
        }
    }

    /// Runs the read `query` where `read` says (on a replica, falling back to the primary
    /// when the replica fails to answer).
    async fn fetch<T, F>(
        &self,
        name: &'static str,
        read: Read,
        query: F,
    ) -> Result<T, sea_orm::DbErr>
    where
        F: for<'c> Fn(&'c sea_orm::DatabaseConnection) -> boardroom_runtime::db::ReadFuture<'c, T>,
    {
        match read {
            Read::Primary => self.db.timed(name, query(self.db.conn())).await,
            Read::Replica => self.db.read(name, query).await,
        }
    }
}

/// Advances the head: `n` new seqs and (for a turn or a summary, i.e. unless this is an
/// append) a new state version; a turn also releases its lease, and only if it still holds
/// it. Returns the first new seq and the updated head; `Err` when `turn` lost its lease.
pub(super) async fn allocate(
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

/// Where a read may be served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// The primary: the read must see every committed write (the turn engine, summaries).
    Primary,
    /// A replica when one is configured and fresh enough for the call's consistency token
    /// (`boardroom_runtime::db::Database::reader`).
    Replica,
}

pub(super) async fn state_in(
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

//! The boardroom memory on the database: a user's facts in a boardroom, their generation
//! (an optimistic lock: every change moves it, a writer stores only over the generation it
//! decided on), keyset pages, deletes and use counts. Every writer updates the memory's head
//! row before any fact row, so writers of one memory queue on the head and never deadlock.

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};
use uuid::Uuid;

use crate::entity::{memory, memory_head};
use crate::error::ConversationError;
use crate::memory::{Change, FactSet, Memory, MemoryKey, vector_bytes, vector_from};

use super::*;

fn memory_from(m: memory::Model) -> Memory {
    Memory {
        id: m.id,
        owner_id: m.owner_id,
        boardroom_id: m.boardroom_id,
        fact: m.fact,
        thread_id: m.thread_id,
        turn_id: m.turn_id,
        uses: u64::try_from(m.uses).unwrap_or(0),
        used_at: m.used_at,
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

fn of(key: &MemoryKey) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(memory::Column::OwnerId.eq(key.owner_id.as_str()))
        .add(memory::Column::BoardroomId.eq(key.boardroom_id))
}

fn head_of(key: &MemoryKey) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(memory_head::Column::OwnerId.eq(key.owner_id.as_str()))
        .add(memory_head::Column::BoardroomId.eq(key.boardroom_id))
}

/// Where a distilled fact came from.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub thread_id: Uuid,
    pub turn_id: Uuid,
}

/// What a distillation's write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Stored.
    Stored(Applied),
    /// The memory changed since the set was read: nothing stored; decide again.
    Moved,
    /// The memory was forgotten after the turn started: nothing of the turn is stored.
    Forgotten,
}

/// What storing a memory's changes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub added: u64,
    pub replaced: u64,
    /// Facts that left to keep the memory within its bound.
    pub evicted: u64,
}

impl ConversationStore {
    /// A memory's facts and generation, for recall (from the primary: the generation must be
    /// current for a writer to decide on it).
    pub async fn fact_set(&self, key: &MemoryKey) -> Result<FactSet, ConversationError> {
        let conn = self.db.conn();
        let (generation, rows) = self
            .db
            .timed("memory_fact_set", async {
                let generation = memory_head::Entity::find()
                    .filter(head_of(key))
                    .one(conn)
                    .await?
                    .map_or(0, |h| h.generation);
                let rows = memory::Entity::find()
                    .select_only()
                    .columns([
                        memory::Column::Id,
                        memory::Column::Fact,
                        memory::Column::Embedding,
                    ])
                    .filter(of(key))
                    .order_by_asc(memory::Column::Id)
                    .into_tuple::<(Uuid, String, Vec<u8>)>()
                    .all(conn)
                    .await?;
                Ok((generation, rows))
            })
            .await?;
        let mut set = FactSet::empty(generation);
        let mut unfit = 0u64;
        for (id, fact, bytes) in rows {
            let vector = vector_from(&bytes).ok_or_else(|| {
                ConversationError::Internal(format!("memory {id}: its embedding does not decode"))
            })?;
            unfit += u64::from(!set.push(id, fact, vector));
        }
        if unfit > 0 {
            // Embedded by another model (other dimensions) than the oldest fact: left out of
            // recall and merging until the memory is re-embedded or those facts deleted.
            metrics::counter!("conversation_memory_unfit_facts_total").increment(unfit);
            tracing::warn!(
                unfit,
                kept = set.len(),
                "facts of another embedding size than the memory's are left out"
            );
        }
        Ok(set)
    }

    /// A page of a memory's facts, newest first, after `before` (a page's last id).
    pub async fn list_memories(
        &self,
        key: &MemoryKey,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<Memory>, ConversationError> {
        let mut query = memory::Entity::find().filter(of(key));
        if let Some(id) = before {
            query = query.filter(memory::Column::Id.lt(id));
        }
        let query = query.order_by_desc(memory::Column::Id).limit(limit);
        let rows = self
            .fetch("memory_list", Read::Replica, |c| {
                Box::pin(query.clone().all(c))
            })
            .await?;
        Ok(rows.into_iter().map(memory_from).collect())
    }

    /// Stores `changes` decided on `set` (its generation, its indexes), then evicts the least
    /// used (then longest unused) facts beyond `max_facts`, never those this write adds, in one
    /// transaction. Nothing is stored when the memory changed since `set` was read
    /// ([`Written::Moved`]: decide again) or was forgotten after the source turn started.
    pub async fn apply_memory(
        &self,
        key: &MemoryKey,
        set: &FactSet,
        changes: Vec<Change>,
        source: Source,
        max_facts: u64,
    ) -> Result<Written, ConversationError> {
        let conn = self.db.conn();
        let written = self
            .db
            .timed("memory_apply", async {
                let txn = conn.begin().await?;
                // The head first (every writer locks it before any fact row).
                if !advance(&txn, key, set.generation).await? {
                    txn.rollback().await?;
                    return Ok(Written::Moved);
                }
                let forgotten = memory_head::Entity::find()
                    .filter(head_of(key))
                    .one(&txn)
                    .await?
                    .and_then(|h| h.forgotten_at);
                // A turn that started before the memory was forgotten (ended before it, or was
                // running when the user asked) leaves nothing in it.
                if forgotten.is_some_and(|at| started(source.turn_id) <= at) {
                    txn.rollback().await?;
                    return Ok(Written::Forgotten);
                }
                let at = now();
                let mut applied = Applied::default();
                let mut added = Vec::new();
                for change in changes {
                    match change {
                        Change::Add { fact, vector } => {
                            let id = Uuid::now_v7();
                            memory::Entity::insert(memory::ActiveModel {
                                owner_id: Set(key.owner_id.clone()),
                                boardroom_id: Set(key.boardroom_id),
                                id: Set(id),
                                fact: Set(fact),
                                embedding: Set(vector_bytes(&vector)),
                                thread_id: Set(source.thread_id),
                                turn_id: Set(source.turn_id),
                                uses: Set(0),
                                used_at: Set(None),
                                created_at: Set(at),
                                updated_at: Set(at),
                            })
                            .exec_without_returning(&txn)
                            .await?;
                            added.push(id);
                            applied.added += 1;
                        }
                        Change::Replace {
                            index,
                            fact,
                            vector,
                            ..
                        } => {
                            let Some(id) = set.ids.get(index) else {
                                continue;
                            };
                            memory::Entity::update_many()
                                .col_expr(memory::Column::Fact, Expr::value(fact))
                                .col_expr(
                                    memory::Column::Embedding,
                                    Expr::value(vector_bytes(&vector)),
                                )
                                .col_expr(memory::Column::ThreadId, Expr::value(source.thread_id))
                                .col_expr(memory::Column::TurnId, Expr::value(source.turn_id))
                                .col_expr(memory::Column::UpdatedAt, Expr::value(at))
                                .filter(of(key))
                                .filter(memory::Column::Id.eq(*id))
                                .exec(&txn)
                                .await?;
                            applied.replaced += 1;
                        }
                    }
                }
                let kept = memory::Entity::find().filter(of(key)).count(&txn).await?;
                if kept > max_facts {
                    // The least used leave first, then the longest unused; never what this
                    // write adds (else a full memory of facts used once would learn nothing).
                    let leaving: Vec<Uuid> = memory::Entity::find()
                        .select_only()
                        .column(memory::Column::Id)
                        .filter(of(key))
                        .filter(memory::Column::Id.is_not_in(added.iter().copied()))
                        .order_by_asc(memory::Column::Uses)
                        .order_by(
                            Expr::cust("COALESCE(used_at, updated_at)"),
                            sea_orm::Order::Asc,
                        )
                        .order_by_asc(memory::Column::Id)
                        .limit(kept - max_facts)
                        .into_tuple()
                        .all(&txn)
                        .await?;
                    applied.evicted = memory::Entity::delete_many()
                        .filter(of(key))
                        .filter(memory::Column::Id.is_in(leaving))
                        .exec(&txn)
                        .await?
                        .rows_affected;
                }
                txn.commit().await?;
                Ok(Written::Stored(applied))
            })
            .await?;
        Ok(written)
    }

    /// Forgets one fact; whether it was there.
    pub async fn delete_memory(
        &self,
        key: &MemoryKey,
        id: Uuid,
    ) -> Result<bool, ConversationError> {
        let deleted = self.forget(key, Some(id)).await?;
        Ok(deleted > 0)
    }

    /// Forgets a whole memory; how many facts it held. Turns that ended before this are not
    /// distilled into the memory after it.
    pub async fn forget_memory(&self, key: &MemoryKey) -> Result<u64, ConversationError> {
        self.forget(key, None).await
    }

    async fn forget(&self, key: &MemoryKey, id: Option<Uuid>) -> Result<u64, ConversationError> {
        let conn = self.db.conn();
        let deleted = self
            .db
            .timed("memory_delete", async {
                let txn = conn.begin().await?;
                // The head first, as every writer: a writer that decided before this delete
                // must decide again (and, for a whole memory, one whose turn ended before it
                // stores nothing).
                let forgotten = id.is_none().then(now);
                if !move_head(&txn, key, None, forgotten).await?
                    && forgotten.is_some()
                    && !create_head(&txn, key, forgotten).await?
                {
                    // A head created meanwhile by a writer: mark it (its row is locked now).
                    move_head(&txn, key, None, forgotten).await?;
                }
                let mut delete = memory::Entity::delete_many().filter(of(key));
                if let Some(id) = id {
                    delete = delete.filter(memory::Column::Id.eq(id));
                }
                let deleted = delete.exec(&txn).await?.rows_affected;
                txn.commit().await?;
                Ok(deleted)
            })
            .await?;
        Ok(deleted)
    }

    /// Counts a use of each of `ids` (a turn's advisors were given them). Not a change of
    /// the facts: the generation stays.
    pub async fn record_uses(
        &self,
        key: &MemoryKey,
        ids: &[Uuid],
    ) -> Result<(), ConversationError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.db
            .timed(
                "memory_uses",
                memory::Entity::update_many()
                    .col_expr(memory::Column::Uses, Expr::col(memory::Column::Uses).add(1))
                    .col_expr(memory::Column::UsedAt, Expr::value(now()))
                    .filter(of(key))
                    .filter(memory::Column::Id.is_in(ids.iter().copied()))
                    .exec(self.db.conn()),
            )
            .await?;
        Ok(())
    }
}

/// When a turn started: its id is a UUIDv7.
fn started(turn_id: Uuid) -> DateTime<Utc> {
    turn_id
        .get_timestamp()
        .and_then(|t| {
            let (secs, nanos) = t.to_unix();
            DateTime::<Utc>::from_timestamp(i64::try_from(secs).ok()?, nanos)
        })
        .unwrap_or_default()
}

/// Creates the memory's head at generation 1 (forgotten at `forgotten`) unless it exists;
/// whether it did.
async fn create_head(
    txn: &DatabaseTransaction,
    key: &MemoryKey,
    forgotten: Option<DateTime<Utc>>,
) -> Result<bool, DbErr> {
    let inserted = memory_head::Entity::insert(memory_head::ActiveModel {
        owner_id: Set(key.owner_id.clone()),
        boardroom_id: Set(key.boardroom_id),
        generation: Set(1),
        forgotten_at: Set(forgotten),
    })
    .on_conflict_do_nothing()
    .exec_without_returning(txn)
    .await?;
    Ok(matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0))
}

/// Moves an existing head's generation on (only from `expected`, when given) and marks it
/// forgotten at `forgotten` (when given); whether it moved.
async fn move_head(
    txn: &DatabaseTransaction,
    key: &MemoryKey,
    expected: Option<i64>,
    forgotten: Option<DateTime<Utc>>,
) -> Result<bool, DbErr> {
    let mut update = memory_head::Entity::update_many()
        .col_expr(
            memory_head::Column::Generation,
            Expr::col(memory_head::Column::Generation).add(1),
        )
        .filter(head_of(key));
    if let Some(generation) = expected {
        update = update.filter(memory_head::Column::Generation.eq(generation));
    }
    if let Some(at) = forgotten {
        update = update.col_expr(memory_head::Column::ForgottenAt, Expr::value(Some(at)));
    }
    Ok(update.exec(txn).await?.rows_affected == 1)
}

/// Moves the memory's generation on from `expected` (the first change of a memory creates
/// its head); whether it was `expected`.
async fn advance(txn: &DatabaseTransaction, key: &MemoryKey, expected: i64) -> Result<bool, DbErr> {
    if expected == 0 {
        create_head(txn, key, None).await
    } else {
        move_head(txn, key, Some(expected), None).await
    }
}

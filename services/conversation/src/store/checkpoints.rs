//! Checkpoints: the rolling summary's, their pages, forks, retention.

use boardroom_migrations::Messages;
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use uuid::Uuid;

use crate::domain::{Checkpoint, ConversationState};
use crate::entity::{checkpoint, head};
use crate::error::ConversationError;

use super::*;

impl ConversationStore {
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

pub(super) async fn insert_checkpoint(
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
pub(super) async fn prune(
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
    count_pruned(result.rows_affected);
    Ok(())
}

/// Counts `n` checkpoints pruned.
pub(super) fn count_pruned(n: u64) {
    if n > 0 {
        metrics::counter!("conversation_checkpoints_pruned_total").increment(n);
    }
}

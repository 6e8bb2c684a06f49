//! The queue of turns waiting for a thread: an entry per waiting turn, ordered by `position`
//! (then turn id), alive while its waiter renews it. A turn takes the thread's lease only when
//! no live entry is ahead of it (see `acquire_lease`).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Query, SelectStatement};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, TransactionTrait,
};
use uuid::Uuid;

use crate::entity::{head, queued};
use crate::error::ConversationError;

use super::{ConversationStore, now};

/// The live entries of `thread_id` other than `turn_id` that come before `place` (all of
/// them when `place` is `None`), for `NOT EXISTS`.
pub(super) fn ahead(
    thread_id: Uuid,
    turn_id: Uuid,
    place: Option<i64>,
    at: DateTime<Utc>,
) -> SelectStatement {
    let mut select = Query::select();
    select
        .expr(Expr::val(1))
        .from(queued::Entity)
        .and_where(queued::Column::ThreadId.eq(thread_id))
        .and_where(queued::Column::ExpiresAt.gt(at))
        .and_where(queued::Column::TurnId.ne(turn_id));
    if let Some(place) = place {
        select.and_where(
            queued::Column::Position
                .lt(place)
                .or(queued::Column::Position
                    .eq(place)
                    .and(queued::Column::TurnId.lt(turn_id))),
        );
    }
    select.to_owned()
}

impl ConversationStore {
    /// Queues `turn_id` for its thread at `place`, alive until `until`, unless `max` live
    /// entries wait already (then `false`). Writers of one thread serialise on its head row,
    /// so the bound holds under concurrent arrivals.
    pub async fn enqueue(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
        place: i64,
        until: DateTime<Utc>,
        max: u64,
    ) -> Result<bool, ConversationError> {
        self.leases
            .timed("conversation_enqueue_turn", async {
                let txn = self.leases.conn().begin().await?;
                let at = now();
                let locked = head::Entity::update_many()
                    .col_expr(head::Column::UpdatedAt, Expr::value(at))
                    .filter(head::Column::ThreadId.eq(thread_id))
                    .exec(&txn)
                    .await?;
                if locked.rows_affected == 0 {
                    self.ensure_head(&txn, thread_id).await?;
                }
                let waiting = queued::Entity::find()
                    .filter(queued::Column::ThreadId.eq(thread_id))
                    .filter(queued::Column::ExpiresAt.gt(at))
                    .count(&txn)
                    .await?;
                if waiting >= max {
                    txn.rollback().await?;
                    return Ok(false);
                }
                queued::Entity::insert(queued::ActiveModel {
                    thread_id: Set(thread_id),
                    turn_id: Set(turn_id),
                    position: Set(place),
                    expires_at: Set(until),
                })
                .exec_without_returning(&txn)
                .await?;
                txn.commit().await?;
                Ok(true)
            })
            .await
            .map_err(ConversationError::from)
    }

    /// Keeps a waiting turn's entry alive until `until`; whether it was still there.
    pub async fn renew_queued(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
        until: DateTime<Utc>,
    ) -> Result<bool, ConversationError> {
        let renewed = self
            .leases
            .timed(
                "conversation_renew_queued_turn",
                queued::Entity::update_many()
                    .col_expr(queued::Column::ExpiresAt, Expr::value(until))
                    .filter(queued::Column::ThreadId.eq(thread_id))
                    .filter(queued::Column::TurnId.eq(turn_id))
                    .exec(self.leases.conn()),
            )
            .await?;
        Ok(renewed.rows_affected > 0)
    }

    /// Removes a turn's entry (it took the thread, or stopped waiting); drops entries of the
    /// thread that expired on the way.
    pub async fn leave_queue(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
    ) -> Result<(), ConversationError> {
        let at = now();
        self.leases
            .timed(
                "conversation_leave_turn_queue",
                queued::Entity::delete_many()
                    .filter(queued::Column::ThreadId.eq(thread_id))
                    .filter(
                        queued::Column::TurnId
                            .eq(turn_id)
                            .or(queued::Column::ExpiresAt.lte(at)),
                    )
                    .exec(self.leases.conn()),
            )
            .await?;
        Ok(())
    }
}

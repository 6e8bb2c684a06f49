//! A thread's messages: appends (idempotent by request id), pages, the recent window, search.

use sea_orm::sea_query::{Expr, ExprTrait, Func};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use uuid::Uuid;

use crate::domain::{Direction, Message, NewMessage};
use crate::entity::message;
use crate::error::ConversationError;

use super::*;

impl ConversationStore {
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
        read: Read,
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
        let query = query.limit(limit);
        let rows = self
            .fetch("conversation_list_messages", read, |c| {
                Box::pin(query.clone().all(c))
            })
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

    /// Whether `turn_id` stored its messages in `thread_id`.
    pub async fn turn_stored(
        &self,
        thread_id: Uuid,
        turn_id: Uuid,
    ) -> Result<bool, ConversationError> {
        let found = self
            .db
            .timed(
                "conversation_turn_stored",
                message::Entity::find()
                    .filter(message::Column::ThreadId.eq(thread_id))
                    .filter(message::Column::TurnId.eq(turn_id))
                    .one(self.db.conn()),
            )
            .await?;
        Ok(found.is_some())
    }
}

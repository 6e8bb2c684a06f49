//! The queue of turns waiting for their thread. Keyed `(thread_id, turn_id)`: a waiter's
//! check ("is anyone ahead of me?") and its removal are range reads of one thread's entries.
//! An entry whose waiter died stops counting when `expires_at` passes.

use sea_orm_migration::prelude::*;

use crate::idents::{ConversationTurnQueue, timestamp};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ConversationTurnQueue::Table)
                    .col(
                        ColumnDef::new(ConversationTurnQueue::ThreadId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ConversationTurnQueue::TurnId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ConversationTurnQueue::Position)
                            .big_integer()
                            .not_null(),
                    )
                    .col(timestamp(ConversationTurnQueue::ExpiresAt))
                    .primary_key(
                        Index::create()
                            .name("pk_conversation_turn_queue")
                            .col(ConversationTurnQueue::ThreadId)
                            .col(ConversationTurnQueue::TurnId),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ConversationTurnQueue::Table).to_owned())
            .await
    }
}

//! The conversation service's tables: per-thread head rows, messages, checkpoints and turns.
//!
//! - `conversation_threads` serialises writers of one thread: every write transaction starts
//!   by updating its head row (a row lock on PostgreSQL, the write lock on SQLite), which
//!   allocates seqs (`last_seq = last_seq + n ... RETURNING`) and state versions without races.
//! - `messages` and `checkpoints` are keyed by `(thread_id, seq)` and `(thread_id, version)`:
//!   every read is a range scan of the primary key.
//! - Checkpoints hold the compressed workflow state, never the messages.

use sea_orm_migration::prelude::*;

use crate::idents::{Checkpoints, ConversationThreads, Messages, Turns, timestamp};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

fn counter(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().not_null().take()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ConversationThreads::Table)
                    .col(
                        ColumnDef::new(ConversationThreads::ThreadId)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(counter(ConversationThreads::LastSeq).default(0))
                    .col(counter(ConversationThreads::StateVersion).default(0))
                    .col(
                        ColumnDef::new(ConversationThreads::RunningTurn)
                            .uuid()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(ConversationThreads::LeaseUntil)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(timestamp(ConversationThreads::CreatedAt))
                    .col(timestamp(ConversationThreads::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Messages::Table)
                    .col(ColumnDef::new(Messages::ThreadId).uuid().not_null())
                    .col(counter(Messages::Seq))
                    .col(ColumnDef::new(Messages::Role).string_len(16).not_null())
                    .col(ColumnDef::new(Messages::Author).string_len(128).not_null())
                    .col(ColumnDef::new(Messages::Content).text().not_null())
                    .col(ColumnDef::new(Messages::TurnId).uuid().null())
                    .col(ColumnDef::new(Messages::RequestId).string_len(128).null())
                    .col(timestamp(Messages::CreatedAt))
                    .primary_key(
                        Index::create()
                            .name("pk_messages")
                            .col(Messages::ThreadId)
                            .col(Messages::Seq),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Checkpoints::Table)
                    .col(ColumnDef::new(Checkpoints::ThreadId).uuid().not_null())
                    .col(counter(Checkpoints::Version))
                    .col(
                        ColumnDef::new(Checkpoints::ParentVersion)
                            .big_integer()
                            .null(),
                    )
                    .col(counter(Checkpoints::CoversSeq))
                    .col(ColumnDef::new(Checkpoints::State).blob().not_null())
                    .col(
                        ColumnDef::new(Checkpoints::Pinned)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(timestamp(Checkpoints::CreatedAt))
                    .primary_key(
                        Index::create()
                            .name("pk_checkpoints")
                            .col(Checkpoints::ThreadId)
                            .col(Checkpoints::Version),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Turns::Table)
                    .col(ColumnDef::new(Turns::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Turns::ThreadId).uuid().not_null())
                    .col(ColumnDef::new(Turns::RequestId).string_len(128).null())
                    .col(counter(Turns::FirstSeq))
                    .col(counter(Turns::LastSeq))
                    .col(counter(Turns::StateVersion))
                    .col(ColumnDef::new(Turns::Outcome).json_binary().not_null())
                    .col(timestamp(Turns::CreatedAt))
                    .to_owned(),
            )
            .await?;
        // Idempotency keys, per thread. NULL request ids never collide.
        for (name, table, thread, request) in [
            (
                "uq_messages_thread_request",
                Messages::Table.into_iden(),
                Messages::ThreadId.into_iden(),
                Messages::RequestId.into_iden(),
            ),
            (
                "uq_turns_thread_request",
                Turns::Table.into_iden(),
                Turns::ThreadId.into_iden(),
                Turns::RequestId.into_iden(),
            ),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(table)
                        .col(thread)
                        .col(request)
                        .unique()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Turns::Table.into_iden(),
            Checkpoints::Table.into_iden(),
            Messages::Table.into_iden(),
            ConversationThreads::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

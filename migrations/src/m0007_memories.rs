//! The boardroom memory: facts distilled from completed turns, per (owner, boardroom).
//!
//! - `memories` is keyed `(owner_id, boardroom_id, id)`: ListMemories pages by the key, a
//!   turn's recall loads one memory by a range of it, and an id is UUIDv7 (the key's order is
//!   the facts' age). The embedding is a plain column of little-endian f32s, searched in the
//!   process (a memory is bounded by `memory.max_facts`).
//! - `memory_heads` holds a generation per memory, moved by every change: a writer that
//!   decided on one generation stores only if it is still current (an optimistic lock on
//!   both databases), so two turns distilling at once never store the same fact twice; and
//!   when the memory was last forgotten, so that a turn that ended before a ForgetBoardroom
//!   is not distilled into the memory after it.

use sea_orm_migration::prelude::*;

use crate::idents::{Memories, MemoryHeads, timestamp};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Memories::Table)
                    .col(ColumnDef::new(Memories::OwnerId).string_len(128).not_null())
                    .col(ColumnDef::new(Memories::BoardroomId).uuid().not_null())
                    .col(ColumnDef::new(Memories::Id).uuid().not_null())
                    .col(ColumnDef::new(Memories::Fact).text().not_null())
                    .col(ColumnDef::new(Memories::Embedding).blob().not_null())
                    .col(ColumnDef::new(Memories::ThreadId).uuid().not_null())
                    .col(ColumnDef::new(Memories::TurnId).uuid().not_null())
                    .col(
                        ColumnDef::new(Memories::Uses)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(Memories::UsedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(timestamp(Memories::CreatedAt))
                    .col(timestamp(Memories::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .name("pk_memories")
                            .col(Memories::OwnerId)
                            .col(Memories::BoardroomId)
                            .col(Memories::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(MemoryHeads::Table)
                    .col(
                        ColumnDef::new(MemoryHeads::OwnerId)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(ColumnDef::new(MemoryHeads::BoardroomId).uuid().not_null())
                    .col(
                        ColumnDef::new(MemoryHeads::Generation)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(
                        ColumnDef::new(MemoryHeads::ForgottenAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .primary_key(
                        Index::create()
                            .name("pk_memory_heads")
                            .col(MemoryHeads::OwnerId)
                            .col(MemoryHeads::BoardroomId),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(MemoryHeads::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Memories::Table).to_owned())
            .await
    }
}

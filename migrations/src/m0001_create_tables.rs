//! boardrooms, sessions and threads, with their keys and idempotency constraints.

use sea_orm_migration::prelude::*;

use crate::idents::{Boardrooms, Sessions, Threads, timestamp};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Boardrooms::Table)
                    .col(
                        ColumnDef::new(Boardrooms::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(Boardrooms::OwnerId)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Boardrooms::Name).string_len(200).not_null())
                    .col(
                        ColumnDef::new(Boardrooms::Advisors)
                            .json_binary()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Boardrooms::Version)
                            .big_integer()
                            .not_null()
                            .default(1),
                    )
                    .col(ColumnDef::new(Boardrooms::RequestId).string_len(128).null())
                    .col(timestamp(Boardrooms::CreatedAt))
                    .col(timestamp(Boardrooms::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Sessions::Table)
                    .col(ColumnDef::new(Sessions::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Sessions::BoardroomId).uuid().not_null())
                    .col(ColumnDef::new(Sessions::UserId).string_len(128).not_null())
                    .col(ColumnDef::new(Sessions::Title).string_len(200).not_null())
                    .col(ColumnDef::new(Sessions::IsActive).boolean().not_null())
                    .col(ColumnDef::new(Sessions::RequestId).string_len(128).null())
                    .col(timestamp(Sessions::CreatedAt))
                    .col(
                        ColumnDef::new(Sessions::EndedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_sessions_boardroom")
                            .from(Sessions::Table, Sessions::BoardroomId)
                            .to(Boardrooms::Table, Boardrooms::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Threads::Table)
                    .col(ColumnDef::new(Threads::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Threads::SessionId).uuid().not_null())
                    .col(
                        ColumnDef::new(Threads::ThreadType)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Threads::Status).string_len(16).not_null())
                    .col(ColumnDef::new(Threads::Title).string_len(200).not_null())
                    .col(ColumnDef::new(Threads::RequestId).string_len(128).null())
                    .col(timestamp(Threads::CreatedAt))
                    .col(timestamp(Threads::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_threads_session")
                            .from(Threads::Table, Threads::SessionId)
                            .to(Sessions::Table, Sessions::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Idempotency keys, scoped to their owner. NULL request ids never collide.
        for (name, table, owner, request) in [
            (
                "uq_boardrooms_owner_request",
                Boardrooms::Table.into_iden(),
                Boardrooms::OwnerId.into_iden(),
                Boardrooms::RequestId.into_iden(),
            ),
            (
                "uq_sessions_user_request",
                Sessions::Table.into_iden(),
                Sessions::UserId.into_iden(),
                Sessions::RequestId.into_iden(),
            ),
            (
                "uq_threads_session_request",
                Threads::Table.into_iden(),
                Threads::SessionId.into_iden(),
                Threads::RequestId.into_iden(),
            ),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(table)
                        .col(owner)
                        .col(request)
                        .unique()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Threads::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Sessions::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Boardrooms::Table).to_owned())
            .await
    }
}

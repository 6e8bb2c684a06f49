//! The indexes behind every List RPC. Each list is a keyset scan ordered by
//! `(created_at, id)`; the INCLUDE columns let PostgreSQL answer it with an index-only scan.
//!
//! | index | serves |
//! |---|---|
//! | `ix_boardrooms_owner_created` | ListBoardrooms |
//! | `ix_sessions_user_created` (covering) | ListSessions |
//! | `ix_sessions_user_active` (partial, covering) | ListSessions active_only |
//! | `ix_sessions_boardroom_active_created` (covering) | ListActiveSessions |
//! | `ix_threads_session_created` (covering) | ListThreads, GetSessionTree |
//! | `ix_threads_session_type_status` | ListThreads by type and status |
//! | `ix_threads_session_open` (partial, covering) | ListThreads of open threads |

use sea_orm_migration::prelude::*;

use crate::idents::{Boardrooms, Sessions, Threads};
use crate::index;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const INDEXES: [&str; 7] = [
    "ix_boardrooms_owner_created",
    "ix_sessions_user_created",
    "ix_sessions_user_active",
    "ix_sessions_boardroom_active_created",
    "ix_threads_session_created",
    "ix_threads_session_type_status",
    "ix_threads_session_open",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    // CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let session_cols = [
            Sessions::BoardroomId,
            Sessions::Title,
            Sessions::IsActive,
            Sessions::EndedAt,
        ];
        let thread_cols = [
            Threads::ThreadType,
            Threads::Status,
            Threads::Title,
            Threads::UpdatedAt,
        ];

        let mut ix = Index::create();
        ix.table(Boardrooms::Table)
            .col(Boardrooms::OwnerId)
            .col(Boardrooms::CreatedAt)
            .col(Boardrooms::Id);
        index::create(m, ix, INDEXES[0]).await?;

        let mut ix = Index::create();
        ix.table(Sessions::Table)
            .col(Sessions::UserId)
            .col(Sessions::CreatedAt)
            .col(Sessions::Id);
        session_cols.iter().for_each(|c| {
            ix.include(*c);
        });
        index::create(m, ix, INDEXES[1]).await?;

        let mut ix = Index::create();
        ix.table(Sessions::Table)
            .col(Sessions::UserId)
            .col(Sessions::CreatedAt)
            .col(Sessions::Id);
        session_cols.iter().for_each(|c| {
            ix.include(*c);
        });
        ix.and_where(Expr::col(Sessions::IsActive).eq(true));
        index::create(m, ix, INDEXES[2]).await?;

        let mut ix = Index::create();
        ix.table(Sessions::Table)
            .col(Sessions::BoardroomId)
            .col(Sessions::IsActive)
            .col(Sessions::CreatedAt)
            .col(Sessions::Id)
            .include(Sessions::UserId)
            .include(Sessions::Title)
            .include(Sessions::EndedAt);
        index::create(m, ix, INDEXES[3]).await?;

        let mut ix = Index::create();
        ix.table(Threads::Table)
            .col(Threads::SessionId)
            .col(Threads::CreatedAt)
            .col(Threads::Id);
        thread_cols.iter().for_each(|c| {
            ix.include(*c);
        });
        index::create(m, ix, INDEXES[4]).await?;

        let mut ix = Index::create();
        ix.table(Threads::Table)
            .col(Threads::SessionId)
            .col(Threads::ThreadType)
            .col(Threads::Status)
            .col(Threads::CreatedAt)
            .col(Threads::Id)
            .include(Threads::Title)
            .include(Threads::UpdatedAt);
        index::create(m, ix, INDEXES[5]).await?;

        let mut ix = Index::create();
        ix.table(Threads::Table)
            .col(Threads::SessionId)
            .col(Threads::CreatedAt)
            .col(Threads::Id);
        thread_cols.iter().for_each(|c| {
            ix.include(*c);
        });
        ix.and_where(Expr::col(Threads::Status).eq("open"));
        index::create(m, ix, INDEXES[6]).await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for name in INDEXES.iter().rev() {
            index::drop(m, Threads::Table, name).await?;
        }
        Ok(())
    }
}

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
//! | `ix_threads_session_type_status` (covering) | ListThreads by type and status |
//! | `ix_threads_session_open` (partial, covering) | ListThreads of open threads |

use sea_orm_migration::prelude::*;

use crate::idents::{Boardrooms, Sessions, Threads};
use crate::index;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// One list index: its name, key columns, INCLUDE columns and partial predicate.
struct ListIndex {
    name: &'static str,
    table: DynIden,
    keys: Vec<DynIden>,
    include: Vec<DynIden>,
    only: Option<SimpleExpr>,
}

fn idens<I: IntoIden + Copy>(cols: &[I]) -> Vec<DynIden> {
    cols.iter().map(|c| c.into_iden()).collect()
}

fn list_indexes() -> Vec<ListIndex> {
    let session_row = [
        Sessions::BoardroomId,
        Sessions::Title,
        Sessions::IsActive,
        Sessions::EndedAt,
    ];
    let thread_row = [
        Threads::ThreadType,
        Threads::Status,
        Threads::Title,
        Threads::UpdatedAt,
    ];
    let by_user = [Sessions::UserId, Sessions::CreatedAt, Sessions::Id];
    let by_session = [Threads::SessionId, Threads::CreatedAt, Threads::Id];
    vec![
        ListIndex {
            name: "ix_boardrooms_owner_created",
            table: Boardrooms::Table.into_iden(),
            keys: idens(&[Boardrooms::OwnerId, Boardrooms::CreatedAt, Boardrooms::Id]),
            include: vec![],
            only: None,
        },
        ListIndex {
            name: "ix_sessions_user_created",
            table: Sessions::Table.into_iden(),
            keys: idens(&by_user),
            include: idens(&session_row),
            only: None,
        },
        ListIndex {
            name: "ix_sessions_user_active",
            table: Sessions::Table.into_iden(),
            keys: idens(&by_user),
            include: idens(&session_row),
            only: Some(Expr::col(Sessions::IsActive).eq(true)),
        },
        ListIndex {
            name: "ix_sessions_boardroom_active_created",
            table: Sessions::Table.into_iden(),
            keys: idens(&[
                Sessions::BoardroomId,
                Sessions::IsActive,
                Sessions::CreatedAt,
                Sessions::Id,
            ]),
            include: idens(&[Sessions::UserId, Sessions::Title, Sessions::EndedAt]),
            only: None,
        },
        ListIndex {
            name: "ix_threads_session_created",
            table: Threads::Table.into_iden(),
            keys: idens(&by_session),
            include: idens(&thread_row),
            only: None,
        },
        ListIndex {
            name: "ix_threads_session_type_status",
            table: Threads::Table.into_iden(),
            keys: idens(&[
                Threads::SessionId,
                Threads::ThreadType,
                Threads::Status,
                Threads::CreatedAt,
                Threads::Id,
            ]),
            include: idens(&[Threads::Title, Threads::UpdatedAt]),
            only: None,
        },
        ListIndex {
            name: "ix_threads_session_open",
            table: Threads::Table.into_iden(),
            keys: idens(&by_session),
            include: idens(&thread_row),
            only: Some(Expr::col(Threads::Status).eq("open")),
        },
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    // CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for spec in list_indexes() {
            let mut ix = Index::create();
            ix.table(spec.table);
            for key in spec.keys {
                ix.col(key);
            }
            for column in spec.include {
                ix.include(column);
            }
            if let Some(predicate) = spec.only {
                ix.and_where(predicate);
            }
            index::create(m, ix, spec.name).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for spec in list_indexes().into_iter().rev() {
            index::drop(m, spec.name).await?;
        }
        Ok(())
    }
}

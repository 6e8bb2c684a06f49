//! The list queries, built in one place so that the service runs them and the benchmarks
//! `EXPLAIN` exactly the same statements. Each is a keyset scan on `(created_at, id)` that
//! selects only the columns its covering index holds.

use sea_orm::sea_query::{Expr, ExprTrait, SimpleExpr};
use sea_orm::{ColumnTrait, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect, Select};
use uuid::Uuid;

use crate::domain::ThreadFilter;
use crate::entity::{boardroom, session, thread};
use crate::page::Cursor;

/// `(created_at, id) < cursor`: the next page of a newest-first list, as one row comparison
/// so that PostgreSQL turns it into an index range, at any depth.
fn before(created: impl ColumnTrait, id: impl ColumnTrait, c: Cursor) -> SimpleExpr {
    Expr::tuple([Expr::col(created), Expr::col(id)])
        .lt(Expr::tuple([Expr::val(c.created_at), Expr::val(c.id)]))
}

/// `(created_at, id) > cursor`: the next page of an oldest-first list.
fn after(created: impl ColumnTrait, id: impl ColumnTrait, c: Cursor) -> SimpleExpr {
    Expr::tuple([Expr::col(created), Expr::col(id)])
        .gt(Expr::tuple([Expr::val(c.created_at), Expr::val(c.id)]))
}

/// ListBoardrooms: an owner's boardrooms, newest first (`ix_boardrooms_owner_created`).
pub fn boardrooms_by_owner(
    owner_id: &str,
    cursor: Option<Cursor>,
    limit: u64,
) -> Select<boardroom::Entity> {
    let mut query = boardroom::Entity::find().filter(boardroom::Column::OwnerId.eq(owner_id));
    if let Some(c) = cursor {
        query = query.filter(before(
            boardroom::Column::CreatedAt,
            boardroom::Column::Id,
            c,
        ));
    }
    query
        .order_by(boardroom::Column::CreatedAt, Order::Desc)
        .order_by(boardroom::Column::Id, Order::Desc)
        .limit(limit)
}

fn newest_sessions_first(
    mut query: Select<session::Entity>,
    cursor: Option<Cursor>,
    limit: u64,
) -> Select<session::Entity> {
    if let Some(c) = cursor {
        query = query.filter(before(session::Column::CreatedAt, session::Column::Id, c));
    }
    query
        .select_only()
        .columns(session::ROW_COLUMNS)
        .order_by(session::Column::CreatedAt, Order::Desc)
        .order_by(session::Column::Id, Order::Desc)
        .limit(limit)
}

/// ListSessions: a user's sessions, newest first (`ix_sessions_user_created`, or the partial
/// `ix_sessions_user_active` when `active_only`; both index-only).
pub fn sessions_by_user(
    user_id: &str,
    active_only: bool,
    cursor: Option<Cursor>,
    limit: u64,
) -> Select<session::Entity> {
    let mut query = session::Entity::find().filter(session::Column::UserId.eq(user_id));
    if active_only {
        query = query.filter(session::Column::IsActive.eq(true));
    }
    newest_sessions_first(query, cursor, limit)
}

/// ListActiveSessions: a boardroom's active sessions, newest first
/// (`ix_sessions_boardroom_active_created`, index-only).
pub fn active_sessions_by_boardroom(
    boardroom_id: Uuid,
    cursor: Option<Cursor>,
    limit: u64,
) -> Select<session::Entity> {
    let query = session::Entity::find()
        .filter(session::Column::BoardroomId.eq(boardroom_id))
        .filter(session::Column::IsActive.eq(true));
    newest_sessions_first(query, cursor, limit)
}

/// ListThreads and GetSessionTree: a session's threads, oldest first
/// (`ix_threads_session_created`, `ix_threads_session_open` or
/// `ix_threads_session_type_status` by filter). No limit: the whole session (the tree).
pub fn threads_by_session(
    filter: &ThreadFilter,
    cursor: Option<Cursor>,
    limit: Option<u64>,
) -> Select<thread::Entity> {
    let mut query = thread::Entity::find().filter(thread::Column::SessionId.eq(filter.session_id));
    if let Some(t) = filter.thread_type {
        query = query.filter(thread::Column::ThreadType.eq(t.as_str()));
    }
    if let Some(s) = filter.status {
        query = query.filter(thread::Column::Status.eq(s.as_str()));
    }
    if let Some(c) = cursor {
        query = query.filter(after(thread::Column::CreatedAt, thread::Column::Id, c));
    }
    query
        .select_only()
        .columns(thread::ROW_COLUMNS)
        .order_by(thread::Column::CreatedAt, Order::Asc)
        .order_by(thread::Column::Id, Order::Asc)
        .limit(limit)
}

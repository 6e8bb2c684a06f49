//! Table and column names.

use sea_orm_migration::prelude::*;

/// `boardrooms`: advisor panels.
#[derive(DeriveIden, Debug, Clone, Copy)]
pub enum Boardrooms {
    Table,
    Id,
    OwnerId,
    Name,
    Advisors,
    Version,
    RequestId,
    CreatedAt,
    UpdatedAt,
}

/// `sessions`: a user's conversation in a boardroom.
#[derive(DeriveIden, Debug, Clone, Copy)]
pub enum Sessions {
    Table,
    Id,
    BoardroomId,
    UserId,
    Title,
    IsActive,
    RequestId,
    CreatedAt,
    EndedAt,
}

/// `threads`: lines of conversation within a session.
#[derive(DeriveIden, Debug, Clone, Copy)]
pub enum Threads {
    Table,
    Id,
    SessionId,
    ThreadType,
    Status,
    Title,
    RequestId,
    CreatedAt,
    UpdatedAt,
}

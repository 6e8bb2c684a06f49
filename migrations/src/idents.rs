//! Table and column names.

use sea_orm_migration::prelude::*;

/// A required `timestamp with time zone` column.
pub(crate) fn timestamp(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .take()
}

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
    DoubleText,
    Deliberation,
    DebateRounds,
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

/// `conversation_threads`: the conversation service's head row of a thread (seq counter,
/// state version, turn lease).
#[derive(DeriveIden, Debug, Clone, Copy)]
pub enum ConversationThreads {
    Table,
    ThreadId,
    LastSeq,
    StateVersion,
    RunningTurn,
    LeaseUntil,
    CreatedAt,
    UpdatedAt,
}

/// `messages`: a thread's messages, append-only, keyed `(thread_id, seq)`.
#[derive(DeriveIden, Debug, Clone, Copy)]
pub enum Messages {
    Table,
    ThreadId,
    Seq,
    Role,
    Author,
    Content,
    TurnId,
    RequestId,
    CreatedAt,
}

/// `checkpoints`: versions of a thread's workflow state, keyed `(thread_id, version)`.
#[derive(DeriveIden, Debug, Clone, Copy)]
pub enum Checkpoints {
    Table,
    ThreadId,
    Version,
    ParentVersion,
    CoversSeq,
    State,
    Pinned,
    CreatedAt,
}

/// `turns`: completed turns, their idempotency key and recorded outcome.
#[derive(DeriveIden, Debug, Clone, Copy)]
pub enum Turns {
    Table,
    Id,
    ThreadId,
    RequestId,
    FirstSeq,
    LastSeq,
    StateVersion,
    Outcome,
    CreatedAt,
}

/// `conversation_turn_queue`: turns waiting for their thread (ENQUEUE, INTERRUPT), in
/// `position` order, each entry alive while its waiter renews `expires_at`.
#[derive(DeriveIden, Debug, Clone, Copy)]
pub enum ConversationTurnQueue {
    Table,
    ThreadId,
    TurnId,
    Position,
    ExpiresAt,
}

/// `memories`: facts remembered for a user in a boardroom, keyed `(owner_id, boardroom_id,
/// id)` (ids are UUIDv7: the key's order is their age).
#[derive(DeriveIden, Debug, Clone, Copy)]
pub enum Memories {
    Table,
    OwnerId,
    BoardroomId,
    Id,
    Fact,
    Embedding,
    ThreadId,
    TurnId,
    Uses,
    UsedAt,
    CreatedAt,
    UpdatedAt,
}

/// `memory_heads`: one row per (owner, boardroom) with a memory; its generation moves with
/// every change of that memory (writers check it, as an optimistic lock); `forgotten_at` is the
/// last ForgetBoardroom (turns that ended before it are not distilled into the memory after it).
#[derive(DeriveIden, Debug, Clone, Copy)]
pub enum MemoryHeads {
    Table,
    OwnerId,
    BoardroomId,
    Generation,
    ForgottenAt,
}

//! The Boardroom schema, as sea-orm migrations that run on PostgreSQL and SQLite.
//!
//! Tables are created in a transaction (PostgreSQL DDL is transactional). Indexes are created
//! by separate migrations with `CREATE INDEX CONCURRENTLY` outside a transaction on
//! PostgreSQL, so that the same path is safe on a table that already holds production rows.

use sea_orm_migration::MigrationStatus;
pub use sea_orm_migration::MigratorTrait;
use sea_orm_migration::prelude::*;

mod idents;
mod index;
mod m0001_create_tables;
mod m0002_list_indexes;
mod m0003_conversations;
mod m0004_turn_queue;
mod m0005_boardroom_double_text;
mod m0006_boardroom_deliberation;
mod m0007_memories;

pub use idents::{
    Boardrooms, Checkpoints, ConversationThreads, ConversationTurnQueue, Memories, MemoryHeads,
    Messages, Sessions, Threads, Turns,
};

/// A boxed `Send` future (the same as `boardroom_runtime::BoxFuture`, which this crate does not
/// depend on).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Applies every pending migration to `db`.
///
/// Boxed behind a plain function for the build's sake (as `boardroom_runtime::BoxFuture`
/// explains): `Migrator::up` is generic over its connection, so every crate that called it
/// compiled the migrator again.
#[inline(never)]
pub fn up(db: &sea_orm_migration::sea_orm::DatabaseConnection) -> BoxFuture<'_, Result<(), DbErr>> {
    Migrator::up(db, None)
}

/// Rolls back every applied migration of `db`.
#[inline(never)]
pub fn down(
    db: &sea_orm_migration::sea_orm::DatabaseConnection,
) -> BoxFuture<'_, Result<(), DbErr>> {
    Migrator::down(db, None)
}

/// Every migration of `db`, in order: its name, and whether it is applied.
#[inline(never)]
pub fn status(
    db: &sea_orm_migration::sea_orm::DatabaseConnection,
) -> BoxFuture<'_, Result<Vec<(String, bool)>, DbErr>> {
    Box::pin(async move {
        Ok(Migrator::get_migration_with_status(db)
            .await?
            .iter()
            .map(|m| (m.name().to_owned(), m.status() == MigrationStatus::Applied))
            .collect())
    })
}

/// Every migration, in order.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_create_tables::Migration),
            Box::new(m0002_list_indexes::Migration),
            Box::new(m0003_conversations::Migration),
            Box::new(m0004_turn_queue::Migration),
            Box::new(m0005_boardroom_double_text::Migration),
            Box::new(m0006_boardroom_deliberation::Migration),
            Box::new(m0007_memories::Migration),
        ]
    }
}

//! The Boardroom schema, as sea-orm migrations that run on PostgreSQL and SQLite.
//!
//! Tables are created in a transaction (PostgreSQL DDL is transactional). Indexes are created
//! by separate migrations with `CREATE INDEX CONCURRENTLY` outside a transaction on
//! PostgreSQL, so that the same path is safe on a table that already holds production rows.

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

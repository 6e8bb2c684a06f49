//! Creating and dropping indexes the production way: CONCURRENTLY on PostgreSQL, after
//! removing an INVALID leftover of an interrupted earlier attempt.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

pub(crate) async fn create(
    manager: &SchemaManager<'_>,
    mut index: IndexCreateStatement,
    name: &str,
) -> Result<(), DbErr> {
    if manager.get_database_backend() == DbBackend::Postgres {
        drop_if_invalid(manager, name).await?;
        index.concurrently();
    }
    index.name(name).if_not_exists();
    manager.create_index(index).await
}

pub(crate) async fn drop(manager: &SchemaManager<'_>, name: &str) -> Result<(), DbErr> {
    let conn = manager.get_connection();
    let sql = match manager.get_database_backend() {
        DbBackend::Postgres => format!("DROP INDEX CONCURRENTLY IF EXISTS \"{name}\""),
        _ => format!("DROP INDEX IF EXISTS \"{name}\""),
    };
    conn.execute_unprepared(&sql).await.map(|_| ())
}

async fn drop_if_invalid(manager: &SchemaManager<'_>, name: &str) -> Result<(), DbErr> {
    let conn = manager.get_connection();
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT NOT i.indisvalid AS invalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname = $1 AND pg_table_is_visible(c.oid)",
            [name.into()],
        ))
        .await?;
    if let Some(row) = row
        && row.try_get::<bool>("", "invalid")?
    {
        conn.execute_unprepared(&format!("DROP INDEX CONCURRENTLY IF EXISTS \"{name}\""))
            .await?;
    }
    Ok(())
}

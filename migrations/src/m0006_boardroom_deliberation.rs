//! A boardroom's deliberation mode and DEBATE's rounds. Nullable (not chosen), so adding them
//! rewrites no row. One column per statement: SQLite alters one at a time.

use sea_orm_migration::prelude::*;

use crate::idents::Boardrooms;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            ColumnDef::new(Boardrooms::Deliberation)
                .string_len(16)
                .null()
                .take(),
            ColumnDef::new(Boardrooms::DebateRounds)
                .small_integer()
                .null()
                .take(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Boardrooms::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Boardrooms::DebateRounds, Boardrooms::Deliberation] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Boardrooms::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

//! A boardroom's double-text policy: what a second message does while a turn runs on one of
//! its threads. Nullable (not chosen), so adding it rewrites no row.

use sea_orm_migration::prelude::*;

use crate::idents::Boardrooms;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Boardrooms::Table)
                    .add_column(ColumnDef::new(Boardrooms::DoubleText).string_len(16).null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Boardrooms::Table)
                    .drop_column(Boardrooms::DoubleText)
                    .to_owned(),
            )
            .await
    }
}

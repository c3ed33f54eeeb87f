//! Access auditing: whether a tenant's reads are recorded in its log.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AccessAuditSettings {
    Table,
    TenantId,
    Enabled,
    UpdatedAt,
    UpdatedBy,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AccessAuditSettings::Table)
                    .if_not_exists()
                    // No row: never set, so off.
                    .col(string(AccessAuditSettings::TenantId).primary_key())
                    .col(boolean(AccessAuditSettings::Enabled).default(false))
                    .col(big_integer(AccessAuditSettings::UpdatedAt))
                    .col(string(AccessAuditSettings::UpdatedBy))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AccessAuditSettings::Table).to_owned())
            .await
    }
}

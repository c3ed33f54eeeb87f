//! Platform administrators (issue 23):
//! - `tenants`, the registry of tenants: one row per tenant, added by the
//!   transaction that creates the tenant's sequence head (its first
//!   append), with the partner (reseller, grouping) an operator assigns;
//!   backfilled here from `tenant_heads`, dated by each tenant's first
//!   event;
//! - `api_keys.platform` and `api_keys.partner_id`: keys minted with
//!   `keys create --platform [--partner P]`.

use std::time::{SystemTime, UNIX_EPOCH};

use sea_orm_migration::sea_orm::{ConnectionTrait, Statement};
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tenants {
    Table,
    TenantId,
    PartnerId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Platform,
    PartnerId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// One transaction on SQLite too: the table and its backfill land
    /// together.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tenants::Table)
                    .if_not_exists()
                    .col(string(Tenants::TenantId).primary_key())
                    .col(string_null(Tenants::PartnerId))
                    .col(big_integer(Tenants::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_tenants_partner")
                    .table(Tenants::Table)
                    .col(Tenants::PartnerId)
                    .col(Tenants::TenantId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // Each tenant dated by its first event (the primary key finds it),
        // or now when it has none.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| <i64 as TryFrom<u128>>::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or_default();
        let db = manager.get_connection();
        db.execute_raw(Statement::from_sql_and_values(
            manager.get_database_backend(),
            "INSERT INTO tenants (tenant_id, partner_id, created_at) \
             SELECT h.tenant_id, NULL, COALESCE((SELECT e.recorded_at FROM audit_events e \
             WHERE e.tenant_id = h.tenant_id ORDER BY e.seq LIMIT 1), $1) FROM tenant_heads h",
            [now.into()],
        ))
        .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .add_column(boolean(ApiKeys::Platform).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .add_column(string_null(ApiKeys::PartnerId))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [ApiKeys::PartnerId, ApiKeys::Platform] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiKeys::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(Tenants::Table).to_owned())
            .await
    }
}

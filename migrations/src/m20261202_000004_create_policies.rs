//! A tenant's retention policy (with the retention task's progress) and its
//! legal holds.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RetentionPolicies {
    Table,
    TenantId,
    PeriodSecs,
    Locked,
    UpdatedAt,
    UpdatedBy,
    ScannedThrough,
    RunFirstSeq,
    RunLastSeq,
    RunErased,
}

#[derive(DeriveIden)]
enum LegalHolds {
    Table,
    TenantId,
    Id,
    Filter,
    Reason,
    CreatedAt,
    CreatedBy,
    ReleasedAt,
    ReleasedBy,
    ReleaseReason,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RetentionPolicies::Table)
                    .if_not_exists()
                    .col(string(RetentionPolicies::TenantId).primary_key())
                    // NULL: keep forever.
                    .col(big_integer_null(RetentionPolicies::PeriodSecs))
                    .col(boolean(RetentionPolicies::Locked).default(false))
                    .col(big_integer(RetentionPolicies::UpdatedAt))
                    .col(string(RetentionPolicies::UpdatedBy))
                    // Every event with a seq up to this one was erased, or
                    // held when the retention task passed it.
                    .col(big_integer(RetentionPolicies::ScannedThrough).default(0))
                    // The run in progress: what it erased so far, recorded
                    // by `audit.retention.applied` when it ends.
                    .col(big_integer_null(RetentionPolicies::RunFirstSeq))
                    .col(big_integer_null(RetentionPolicies::RunLastSeq))
                    .col(big_integer(RetentionPolicies::RunErased).default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LegalHolds::Table)
                    .if_not_exists()
                    .col(string(LegalHolds::TenantId))
                    .col(uuid(LegalHolds::Id))
                    // The hold's `audit.v1.EventFilter`, protobuf-encoded.
                    .col(blob(LegalHolds::Filter))
                    .col(text(LegalHolds::Reason))
                    .col(big_integer(LegalHolds::CreatedAt))
                    .col(string(LegalHolds::CreatedBy))
                    .col(big_integer_null(LegalHolds::ReleasedAt))
                    .col(string_null(LegalHolds::ReleasedBy))
                    .col(text_null(LegalHolds::ReleaseReason))
                    .primary_key(Index::create().col(LegalHolds::TenantId).col(LegalHolds::Id))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(LegalHolds::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(RetentionPolicies::Table).to_owned())
            .await
    }
}

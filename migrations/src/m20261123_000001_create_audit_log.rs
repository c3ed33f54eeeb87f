//! The audit log itself: events, per-tenant sequence heads, service secrets.

use sea_orm_migration::sea_orm::DbBackend;
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum AuditEvents {
    Table,
    TenantId,
    Seq,
    Id,
    OccurredAt,
    RecordedAt,
    ActorId,
    ActorType,
    ActorName,
    ActorEmail,
    Action,
    ResourceType,
    ResourceId,
    ResourceName,
    Outcome,
    RequestMethod,
    RequestPath,
    RequestStatusCode,
    RequestClientIp,
    RequestUserAgent,
    RequestId,
    Source,
    Reasoning,
    Metadata,
    IdempotencyKey,
    DeletedAt,
}

#[derive(DeriveIden)]
enum TenantHeads {
    Table,
    TenantId,
    HeadSeq,
}

#[derive(DeriveIden)]
enum ServiceSecrets {
    Table,
    Name,
    Value,
    CreatedAt,
}

/// Secondary indexes: one per filter path, each ending in `seq` so a filtered
/// query pages through the index in `seq` order.
const EVENT_INDEXES: &[(&str, &[AuditEvents])] = &[
    (
        "ix_audit_events_occurred",
        &[AuditEvents::TenantId, AuditEvents::OccurredAt, AuditEvents::Seq],
    ),
    (
        "ix_audit_events_action",
        &[AuditEvents::TenantId, AuditEvents::Action, AuditEvents::Seq],
    ),
    (
        "ix_audit_events_actor",
        &[AuditEvents::TenantId, AuditEvents::ActorId, AuditEvents::Seq],
    ),
    (
        "ix_audit_events_actor_type",
        &[AuditEvents::TenantId, AuditEvents::ActorType, AuditEvents::Seq],
    ),
    (
        "ix_audit_events_resource",
        &[
            AuditEvents::TenantId,
            AuditEvents::ResourceType,
            AuditEvents::ResourceId,
            AuditEvents::Seq,
        ],
    ),
    (
        "ix_audit_events_resource_id",
        &[AuditEvents::TenantId, AuditEvents::ResourceId, AuditEvents::Seq],
    ),
    (
        "ix_audit_events_outcome",
        &[AuditEvents::TenantId, AuditEvents::Outcome, AuditEvents::Seq],
    ),
    (
        "ix_audit_events_source",
        &[AuditEvents::TenantId, AuditEvents::Source, AuditEvents::Seq],
    ),
    (
        "ix_audit_events_request_id",
        &[AuditEvents::TenantId, AuditEvents::RequestId, AuditEvents::Seq],
    ),
    (
        "ix_audit_events_client_ip",
        &[
            AuditEvents::TenantId,
            AuditEvents::RequestClientIp,
            AuditEvents::Seq,
        ],
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Filter values compare byte-wise on both backends: PostgreSQL's
        // locale collations would reorder punctuation and break prefix ranges.
        let postgres = manager.get_database_backend() == DbBackend::Postgres;
        let string_null = |column: AuditEvents| {
            let mut def = string_null(column);
            if postgres {
                def.extra("COLLATE \"C\"");
            }
            def
        };
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .if_not_exists()
                    .col(string(AuditEvents::TenantId))
                    .col(big_integer(AuditEvents::Seq))
                    .col(uuid(AuditEvents::Id))
                    // Times are unix microseconds: one ordering and one
                    // comparison semantics on every backend.
                    .col(big_integer_null(AuditEvents::OccurredAt))
                    .col(big_integer(AuditEvents::RecordedAt))
                    .col(string_null(AuditEvents::ActorId))
                    .col(integer_null(AuditEvents::ActorType))
                    .col(string_null(AuditEvents::ActorName))
                    .col(string_null(AuditEvents::ActorEmail))
                    .col(string_null(AuditEvents::Action))
                    .col(string_null(AuditEvents::ResourceType))
                    .col(string_null(AuditEvents::ResourceId))
                    .col(string_null(AuditEvents::ResourceName))
                    .col(integer_null(AuditEvents::Outcome))
                    .col(string_null(AuditEvents::RequestMethod))
                    .col(text_null(AuditEvents::RequestPath))
                    .col(integer_null(AuditEvents::RequestStatusCode))
                    .col(string_null(AuditEvents::RequestClientIp))
                    .col(text_null(AuditEvents::RequestUserAgent))
                    .col(string_null(AuditEvents::RequestId))
                    .col(string_null(AuditEvents::Source))
                    .col(text_null(AuditEvents::Reasoning))
                    .col(json_binary_null(AuditEvents::Metadata))
                    .col(string_null(AuditEvents::IdempotencyKey))
                    .col(big_integer_null(AuditEvents::DeletedAt))
                    .primary_key(Index::create().col(AuditEvents::TenantId).col(AuditEvents::Seq))
                    .to_owned(),
            )
            .await?;

        manager
            .create_index(
                Index::create()
                    .name("ux_audit_events_id")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::Id)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_audit_events_idempotency")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::TenantId)
                    .col(AuditEvents::IdempotencyKey)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        for (name, columns) in EVENT_INDEXES {
            let mut index = Index::create();
            index.name(*name).table(AuditEvents::Table).if_not_exists();
            for column in *columns {
                index.col(*column);
            }
            manager.create_index(index.to_owned()).await?;
        }
        // The email filter is case-insensitive; an expression index serves it
        // on both SQLite and PostgreSQL.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS ix_audit_events_actor_email \
                 ON audit_events (tenant_id, lower(actor_email), seq)",
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(TenantHeads::Table)
                    .if_not_exists()
                    .col(string(TenantHeads::TenantId).primary_key())
                    .col(big_integer(TenantHeads::HeadSeq))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ServiceSecrets::Table)
                    .if_not_exists()
                    .col(string(ServiceSecrets::Name).primary_key())
                    .col(blob(ServiceSecrets::Value))
                    .col(big_integer(ServiceSecrets::CreatedAt))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ServiceSecrets::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(TenantHeads::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(AuditEvents::Table).to_owned())
            .await
    }
}

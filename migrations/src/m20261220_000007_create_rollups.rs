//! Rollups: per tenant, the live events counted per hour of `occurred_at`
//! and per combination of the dimensions `Stats` groups on, kept by
//! `Append`, `Delete` and retention in their own transactions; filled here
//! from the events already stored.

use sea_orm_migration::sea_orm::DbBackend;
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EventRollups {
    Table,
    TenantId,
    HourStart,
    Action,
    Outcome,
    ActorType,
    ResourceType,
    Source,
    EventCount,
}

/// The index `GetFilterMetadata` walks for one field's distinct values.
const VALUE_INDEXES: [(&str, EventRollups); 3] = [
    ("idx_event_rollups_action", EventRollups::Action),
    ("idx_event_rollups_resource_type", EventRollups::ResourceType),
    ("idx_event_rollups_source", EventRollups::Source),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Byte-wise, as the events' columns (see the first migration): the
        // rollups' prefix ranges, ties and value lists order as the scan's.
        let postgres = manager.get_database_backend() == DbBackend::Postgres;
        let string = |column: EventRollups| {
            let mut def = string(column);
            if postgres {
                def.extra("COLLATE \"C\"");
            }
            def
        };
        manager
            .create_table(
                Table::create()
                    .table(EventRollups::Table)
                    .if_not_exists()
                    .col(string(EventRollups::TenantId))
                    // Unix microseconds of the hour's start (a multiple of 3_600_000_000).
                    .col(big_integer(EventRollups::HourStart))
                    .col(string(EventRollups::Action))
                    .col(integer(EventRollups::Outcome))
                    .col(integer(EventRollups::ActorType))
                    .col(string(EventRollups::ResourceType))
                    .col(string(EventRollups::Source))
                    // Live events of the key in the hour; a row reaching 0 is deleted.
                    .col(big_integer(EventRollups::EventCount))
                    .primary_key(
                        Index::create()
                            .col(EventRollups::TenantId)
                            .col(EventRollups::HourStart)
                            .col(EventRollups::Action)
                            .col(EventRollups::Outcome)
                            .col(EventRollups::ActorType)
                            .col(EventRollups::ResourceType)
                            .col(EventRollups::Source),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, column) in VALUE_INDEXES {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(EventRollups::Table)
                        .col(EventRollups::TenantId)
                        .col(column)
                        .to_owned(),
                )
                .await?;
        }
        // The events stored before this migration, counted as `rollups
        // rebuild` counts them.
        manager
            .get_connection()
            .execute_unprepared(
                "INSERT INTO event_rollups (tenant_id, hour_start, action, outcome, actor_type, \
                 resource_type, source, event_count) \
                 SELECT tenant_id, hour_start, action, outcome, actor_type, resource_type, source, COUNT(*) \
                 FROM (SELECT tenant_id, \
                 COALESCE(occurred_at, recorded_at) - (((COALESCE(occurred_at, recorded_at) % 3600000000) \
                 + 3600000000) % 3600000000) AS hour_start, \
                 COALESCE(action, '') AS action, COALESCE(outcome, 0) AS outcome, \
                 COALESCE(actor_type, 0) AS actor_type, COALESCE(resource_type, '') AS resource_type, \
                 COALESCE(source, '') AS source \
                 FROM audit_events WHERE deleted_at IS NULL) AS live \
                 GROUP BY tenant_id, hour_start, action, outcome, actor_type, resource_type, source",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(EventRollups::Table).to_owned())
            .await
    }
}

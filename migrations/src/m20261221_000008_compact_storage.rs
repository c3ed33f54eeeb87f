//! Storage per event (issue 22, part 3; figures and plans in
//! docs/storage.md):
//! - the idempotency index holds only the events that have a key: the
//!   lookup (`idempotency_key IN (...)`) implies `IS NOT NULL`, so both
//!   databases still use it, NULL keys never conflicted anyway, and the
//!   events without a key (most) no longer take an entry each;
//! - on SQLite, `merkle_nodes` becomes a `WITHOUT ROWID` table: its rows
//!   are stored once, in primary-key order, instead of in a rowid table
//!   beside an automatic index holding the key a second time.
//!   PostgreSQL keeps its heap and primary key (no equivalent).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The new shape of `merkle_nodes` on SQLite (the columns and key of the
/// third migration).
const COMPACT_NODES: &str = "CREATE TABLE merkle_nodes_compact (\
     tenant_id varchar NOT NULL, level integer NOT NULL, idx integer NOT NULL, hash blob NOT NULL, \
     PRIMARY KEY (tenant_id, level, idx)) WITHOUT ROWID";

/// Its shape before, as the third migration creates it.
const ROWID_NODES: &str = "CREATE TABLE merkle_nodes_compact (\
     tenant_id varchar NOT NULL, level integer NOT NULL, idx integer NOT NULL, hash blob NOT NULL, \
     PRIMARY KEY (tenant_id, level, idx))";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// One transaction on SQLite too (sea-orm runs SQLite migrations on
    /// the pool otherwise): the index is replaced and the table copied,
    /// dropped and renamed all or nothing, on one connection.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX IF EXISTS ux_audit_events_idempotency")
            .await?;
        db.execute_unprepared(
            "CREATE UNIQUE INDEX ux_audit_events_idempotency ON audit_events (tenant_id, idempotency_key) \
             WHERE idempotency_key IS NOT NULL",
        )
        .await?;
        if manager.get_database_backend() == DbBackend::Sqlite {
            rebuild_nodes(manager, COMPACT_NODES).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if manager.get_database_backend() == DbBackend::Sqlite {
            rebuild_nodes(manager, ROWID_NODES).await?;
        }
        db.execute_unprepared("DROP INDEX IF EXISTS ux_audit_events_idempotency")
            .await?;
        db.execute_unprepared(
            "CREATE UNIQUE INDEX ux_audit_events_idempotency ON audit_events (tenant_id, idempotency_key)",
        )
        .await
        .map(|_| ())
    }
}

/// Copies `merkle_nodes` into a table created by `create` (named
/// `merkle_nodes_compact`) and puts it in its place.
async fn rebuild_nodes(manager: &SchemaManager<'_>, create: &str) -> Result<(), DbErr> {
    let db = manager.get_connection();
    db.execute_unprepared(create).await?;
    db.execute_unprepared(
        "INSERT INTO merkle_nodes_compact (tenant_id, level, idx, hash) \
         SELECT tenant_id, level, idx, hash FROM merkle_nodes ORDER BY tenant_id, level, idx",
    )
    .await?;
    db.execute_unprepared("DROP TABLE merkle_nodes").await?;
    db.execute_unprepared("ALTER TABLE merkle_nodes_compact RENAME TO merkle_nodes")
        .await
        .map(|_| ())
}

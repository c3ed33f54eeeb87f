//! Rollups ([`event_rollup`]): a tenant's live events counted per hour of
//! `occurred_at` and per (`action`, `outcome`, `actor.type`,
//! `resource.type`, `source`), so `Stats` and `GetFilterMetadata` need not
//! scan the events.
//!
//! Every writer of events keeps them in its own transaction: `Append` adds
//! its group's counts (one upsert statement per group, whatever its size),
//! service events add theirs, `Delete` and retention take away the counts
//! of the events they erase (and delete the rows that reach 0, so every row
//! counts at least one live event). Writers touch the rows of a tally in
//! one order (the key's), so two of them never wait on each other in a
//! cycle on PostgreSQL. [`Store::rebuild_rollups`] recomputes a tenant's
//! rollups from its events.

use std::collections::BTreeMap;

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, QueryFilter, QuerySelect, Statement,
};

use super::pg_array::ArrayLiteral;
use super::policy::lock_policy_row;
use super::sequencer::lock_head;
use super::{Store, StoreResult, events_of};
use crate::entity::event_rollup::hour_of;
use crate::entity::{audit_event, tenant_statement};
use crate::tenant::TenantId;

/// Rows per upsert statement on SQLite (8 parameters a row, well under its
/// limit of bound parameters).
const SQLITE_UPSERT_CHUNK: usize = 500;

/// One rollup row's key: the hour and the dimensions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RollupKey {
    hour_start: i64,
    action: String,
    outcome: i32,
    actor_type: i32,
    resource_type: String,
    source: String,
}

/// The dimensions of a live event as stored: `occurred_at` (or, never on
/// a live event, `recorded_at`), action, outcome, actor type, resource
/// type, source.
type Dimensions = (
    Option<i64>,
    i64,
    Option<String>,
    Option<i32>,
    Option<i32>,
    Option<String>,
    Option<String>,
);

impl RollupKey {
    fn of(
        (occurred_at, recorded_at, action, outcome, actor_type, resource_type, source): Dimensions,
    ) -> Self {
        Self {
            hour_start: hour_of(occurred_at.unwrap_or(recorded_at)),
            action: action.unwrap_or_default(),
            outcome: outcome.unwrap_or_default(),
            actor_type: actor_type.unwrap_or_default(),
            resource_type: resource_type.unwrap_or_default(),
            source: source.unwrap_or_default(),
        }
    }
}

/// Changes to a tenant's rollup counts, by key, in key order.
#[derive(Debug, Default)]
pub(super) struct Tally(BTreeMap<RollupKey, i64>);

impl Tally {
    /// The counts `rows` (new live events) add.
    pub fn added(rows: &[audit_event::Model]) -> Self {
        let mut tally = Self::default();
        for row in rows {
            tally.count(
                RollupKey::of((
                    row.occurred_at,
                    row.recorded_at,
                    row.action.clone(),
                    row.outcome,
                    row.actor_type,
                    row.resource_type.clone(),
                    row.source.clone(),
                )),
                1,
            );
        }
        tally
    }

    /// The counts erasing the tenant's live events `seqs` takes away (an
    /// event erased already takes nothing), read in `txn`, which must keep
    /// every other eraser of the tenant out until it commits.
    pub async fn erased(txn: &DatabaseTransaction, tenant: &TenantId, seqs: &[i64]) -> Result<Self, DbErr> {
        let rows: Vec<Dimensions> = events_of(tenant)
            .select_only()
            .columns(DIMENSION_COLUMNS)
            .filter(audit_event::Column::Seq.is_in(seqs.iter().copied()))
            .into_tuple()
            .all(txn)
            .await?;
        let mut tally = Self::default();
        for row in rows {
            tally.count(RollupKey::of(row), -1);
        }
        Ok(tally)
    }

    /// The counts erasing `event` takes away.
    pub fn erased_event(event: &audit_event::Model) -> Self {
        let mut tally = Self::added(std::slice::from_ref(event));
        for count in tally.0.values_mut() {
            *count = -*count;
        }
        tally
    }

    fn count(&mut self, key: RollupKey, by: i64) {
        *self.0.entry(key).or_default() += by;
    }

    /// Applies the tally to the tenant's rollups in `txn`: one upsert (per
    /// chunk on SQLite) adding each count in key order, then, when it took
    /// counts away, the deletion of the rows it brought to 0.
    pub async fn apply(&self, txn: &DatabaseTransaction, tenant: &TenantId) -> Result<(), DbErr> {
        if self.0.is_empty() {
            return Ok(());
        }
        for statement in self.upserts(txn.get_database_backend(), tenant, "") {
            txn.execute_raw(statement).await?;
        }
        if !self.adds_only() {
            self.delete_emptied(txn, tenant).await?;
        }
        Ok(())
    }

    /// Whether every count is an addition (applying the tally then needs
    /// its [`Tally::upserts`] alone).
    pub fn adds_only(&self) -> bool {
        self.0.values().all(|count| *count >= 0)
    }

    /// The upserts adding each count in key order: on PostgreSQL one
    /// statement, whose rows are selected `gate` (SQL after the unnested
    /// rows; `""`: all); elsewhere one per [`SQLITE_UPSERT_CHUNK`] keys.
    pub fn upserts(&self, backend: DbBackend, tenant: &TenantId, gate: &str) -> Vec<Statement> {
        if self.0.is_empty() {
            return Vec::new();
        }
        if backend == DbBackend::Postgres {
            return vec![upsert_postgres(tenant, &self.0, gate)];
        }
        let entries: Vec<(&RollupKey, &i64)> = self.0.iter().collect();
        entries
            .chunks(SQLITE_UPSERT_CHUNK)
            .map(|chunk| upsert_sqlite(tenant, chunk))
            .collect()
    }

    async fn delete_emptied(&self, txn: &DatabaseTransaction, tenant: &TenantId) -> Result<(), DbErr> {
        let mut hours: Vec<i64> = self
            .0
            .iter()
            .filter(|(_, count)| **count < 0)
            .map(|(key, _)| key.hour_start)
            .collect();
        hours.dedup();
        for chunk in hours.chunks(SQLITE_UPSERT_CHUNK) {
            let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "DELETE FROM event_rollups WHERE tenant_id = $1 AND event_count <= 0 AND hour_start IN ({})",
                placeholders.join(", ")
            );
            txn.execute_raw(tenant_statement(
                txn.get_database_backend(),
                tenant,
                &sql,
                chunk.iter().map(|h| (*h).into()),
            ))
            .await?;
        }
        Ok(())
    }
}

/// The columns [`Dimensions`] reads, in its order.
const DIMENSION_COLUMNS: [audit_event::Column; 7] = [
    audit_event::Column::OccurredAt,
    audit_event::Column::RecordedAt,
    audit_event::Column::Action,
    audit_event::Column::Outcome,
    audit_event::Column::ActorType,
    audit_event::Column::ResourceType,
    audit_event::Column::Source,
];

const UPSERT_COLUMNS: &str =
    "tenant_id, hour_start, action, outcome, actor_type, resource_type, source, event_count";
const ON_KEY_ADD: &str = "ON CONFLICT (tenant_id, hour_start, action, outcome, actor_type, resource_type, source) \
     DO UPDATE SET event_count = event_rollups.event_count + excluded.event_count";

/// One statement, prepared once whatever the tally's size: each column
/// travels as one array literal, `unnest`ed in order (the key's order, in
/// which the rows are then locked).
fn upsert_postgres(tenant: &TenantId, tally: &BTreeMap<RollupKey, i64>, gate: &str) -> Statement {
    let n = tally.len();
    let mut numbers: [ArrayLiteral; 4] = std::array::from_fn(|_| ArrayLiteral::with_capacity(n * 12));
    let mut texts: [ArrayLiteral; 3] = std::array::from_fn(|_| ArrayLiteral::with_capacity(n * 16));
    for (key, count) in tally {
        let [hour, outcome, actor_type, event_count] = &mut numbers;
        hour.push_plain(Some(key.hour_start));
        outcome.push_plain(Some(key.outcome));
        actor_type.push_plain(Some(key.actor_type));
        event_count.push_plain(Some(*count));
        let [action, resource_type, source] = &mut texts;
        action.push_text(Some(&key.action));
        resource_type.push_text(Some(&key.resource_type));
        source.push_text(Some(&key.source));
    }
    let [hour, outcome, actor_type, event_count] = numbers;
    let [action, resource_type, source] = texts;
    let values = [
        hour,
        action,
        outcome,
        actor_type,
        resource_type,
        source,
        event_count,
    ]
    .into_iter()
    .map(|l| l.finish().into());
    tenant_statement(
        DbBackend::Postgres,
        tenant,
        &format!(
            "INSERT INTO event_rollups ({UPSERT_COLUMNS}) \
             SELECT $1, t.* FROM unnest($2::text::bigint[], $3::text::text[], $4::text::int[], \
             $5::text::int[], $6::text::text[], $7::text::text[], $8::text::bigint[]) AS t{gate} \
             {ON_KEY_ADD}"
        ),
        values,
    )
}

/// A multi-row upsert (SQLite has one writer at a time: the order does not
/// matter there).
fn upsert_sqlite(tenant: &TenantId, entries: &[(&RollupKey, &i64)]) -> Statement {
    let mut rows = Vec::with_capacity(entries.len());
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(entries.len() * 7);
    for (key, count) in entries {
        let at = values.len() + 2;
        rows.push(format!(
            "($1, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
            at,
            at + 1,
            at + 2,
            at + 3,
            at + 4,
            at + 5,
            at + 6
        ));
        values.extend([
            key.hour_start.into(),
            key.action.clone().into(),
            key.outcome.into(),
            key.actor_type.into(),
            key.resource_type.clone().into(),
            key.source.clone().into(),
            (**count).into(),
        ]);
    }
    let sql = format!(
        "INSERT INTO event_rollups ({UPSERT_COLUMNS}) VALUES {} {ON_KEY_ADD}",
        rows.join(", ")
    );
    tenant_statement(DbBackend::Sqlite, tenant, &sql, values)
}

/// What [`Store::rebuild_rollups`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollupRebuild {
    /// Rollup rows the tenant had before.
    pub rows_before: u64,
    /// Rollup rows it has now.
    pub rows_after: u64,
    /// Live events they count.
    pub events: u64,
}

impl Store {
    /// Recomputes the tenant's rollups from its live events, in one
    /// transaction holding the tenant's head row and then its policy row,
    /// as `Delete` takes them: no append (which moves the head), no
    /// `Delete`, no service event and no retention batch (which holds the
    /// policy row) of the tenant commits in between, so the counts are
    /// exact when it commits. Other tenants are not held up (on SQLite,
    /// every writer waits: it has one at a time).
    pub async fn rebuild_rollups(&self, tenant: &TenantId) -> StoreResult<RollupRebuild> {
        let (_writer, txn) = self.begin_write().await?;
        lock_head(&txn, tenant).await?;
        lock_policy_row(&txn, tenant).await?;
        let backend = txn.get_database_backend();
        let rows_before = txn
            .execute_raw(tenant_statement(
                backend,
                tenant,
                "DELETE FROM event_rollups WHERE tenant_id = $1",
                [],
            ))
            .await?
            .rows_affected();
        let rows_after = txn
            .execute_raw(tenant_statement(
                backend,
                tenant,
                &format!(
                    "INSERT INTO event_rollups ({UPSERT_COLUMNS}) \
                     SELECT tenant_id, hour_start, action, outcome, actor_type, resource_type, source, COUNT(*) \
                     FROM (SELECT tenant_id, {HOUR_OF_EVENT} AS hour_start, \
                     COALESCE(action, '') AS action, COALESCE(outcome, 0) AS outcome, \
                     COALESCE(actor_type, 0) AS actor_type, COALESCE(resource_type, '') AS resource_type, \
                     COALESCE(source, '') AS source \
                     FROM audit_events WHERE tenant_id = $1 AND deleted_at IS NULL) AS live \
                     GROUP BY tenant_id, hour_start, action, outcome, actor_type, resource_type, source"
                ),
                [],
            ))
            .await?
            .rows_affected();
        let events: Option<i64> = txn
            .query_one_raw(tenant_statement(
                backend,
                tenant,
                "SELECT CAST(COALESCE(SUM(event_count), 0) AS BIGINT) FROM event_rollups WHERE tenant_id = $1",
                [],
            ))
            .await?
            .map(|row| row.try_get_by_index::<i64>(0))
            .transpose()?;
        txn.commit().await?;
        Ok(RollupRebuild {
            rows_before,
            rows_after,
            events: u64::try_from(events.unwrap_or_default()).unwrap_or_default(),
        })
    }
}

/// The start of an event's hour in SQL, as [`hour_of`] computes it (floor
/// division on both backends, whose `%` truncates toward zero).
const HOUR_OF_EVENT: &str = "COALESCE(occurred_at, recorded_at) - (((COALESCE(occurred_at, recorded_at) \
     % 3600000000) + 3600000000) % 3600000000)";

#[cfg(test)]
mod tests {
    use sea_orm::{EntityTrait, QueryOrder};

    use super::*;
    use crate::entity::event_rollup;
    use crate::store::{ChangeRequest, NewEvent};

    fn event(seq: i64, occurred_at: i64, action: &str) -> audit_event::Model {
        audit_event::Model {
            tenant_id: TenantId::parse("acme", "tenant").unwrap(),
            seq,
            id: uuid::Uuid::now_v7(),
            occurred_at: Some(occurred_at),
            recorded_at: 0,
            actor_id: Some("a".into()),
            actor_type: Some(1),
            actor_name: None,
            actor_email: None,
            action: Some(action.into()),
            resource_type: Some("doc".into()),
            resource_id: None,
            resource_name: None,
            outcome: Some(2),
            request_method: None,
            request_path: None,
            request_status_code: None,
            request_client_ip: None,
            request_user_agent: None,
            request_id: None,
            request_client_identity: None,
            source: Some("svc".into()),
            reasoning: None,
            metadata: None,
            idempotency_key: None,
            deleted_at: None,
        }
    }

    /// Every rollup row of the store, in key order.
    async fn all_rows(store: &Store) -> Vec<event_rollup::Model> {
        event_rollup::Entity::find()
            .order_by_asc(event_rollup::Column::TenantId)
            .order_by_asc(event_rollup::Column::HourStart)
            .order_by_asc(event_rollup::Column::Action)
            .order_by_asc(event_rollup::Column::Outcome)
            .order_by_asc(event_rollup::Column::ActorType)
            .order_by_asc(event_rollup::Column::ResourceType)
            .order_by_asc(event_rollup::Column::Source)
            .all(store.connection())
            .await
            .unwrap()
    }

    /// The rollups kept by appends and a deletion, those the migration
    /// computes from the stored events, and those a rebuild computes are
    /// the same rows.
    #[tokio::test]
    async fn kept_migrated_and_rebuilt_rollups_are_the_same() {
        use audit_migrations::{Migrator, MigratorTrait};

        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
        let store = Store::connect(&crate::config::DatabaseConfig::new(url))
            .await
            .unwrap();
        let tenant = TenantId::parse("acme", "tenant").unwrap();
        let hour = 3_600_000_000;
        let events: Vec<NewEvent> = (0..40i64)
            .map(|i| NewEvent {
                occurred_at: Some((i % 7 - 3) * hour + i * 1_000),
                actor_id: format!("actor-{}", i % 3),
                actor_type: i32::try_from(i % 3).unwrap(),
                action: ["user.login", "user.logout", "document.read"][usize::try_from(i % 3).unwrap()]
                    .into(),
                resource_type: ["", "document"][usize::try_from(i % 2).unwrap()].into(),
                outcome: i32::try_from(i % 4).unwrap(),
                source: ["sso", ""][usize::try_from(i % 5 / 4).unwrap()].into(),
                ..NewEvent::default()
            })
            .collect();
        let appended = store.append(&tenant, events).await.unwrap();
        let request = ChangeRequest {
            actor_id: "admin".into(),
            actor_type: 1,
            reason: "test".into(),
            client_identity: None,
        };
        store.delete(&tenant, appended[5].id, request).await.unwrap();
        let kept = all_rows(&store).await;
        assert_eq!(
            kept.iter().map(|r| r.event_count).sum::<i64>(),
            40,
            "39 events and the deletion's"
        );

        // Down to before the rollups' migration (the last but one).
        Migrator::down(store.connection(), Some(2)).await.unwrap();
        Migrator::up(store.connection(), None).await.unwrap();
        assert_eq!(all_rows(&store).await, kept, "filled by the migration");

        let rebuilt = store.rebuild_rollups(&tenant).await.unwrap();
        assert_eq!(all_rows(&store).await, kept, "rebuilt");
        assert_eq!(
            rebuilt,
            RollupRebuild {
                rows_before: kept.len() as u64,
                rows_after: kept.len() as u64,
                events: 40
            }
        );
    }

    #[test]
    fn a_batch_is_tallied_per_hour_and_key_in_key_order() {
        let hour = 3_600_000_000;
        let rows = [
            event(1, 5 * hour + 1, "b"),
            event(2, 5 * hour + 2, "a"),
            event(3, 5 * hour + 3, "b"),
            event(4, 4 * hour, "b"),
            event(5, -1, "a"),
        ];
        let tally = Tally::added(&rows);
        let counts: Vec<(i64, &str, i64)> = tally
            .0
            .iter()
            .map(|(k, c)| (k.hour_start, k.action.as_str(), *c))
            .collect();
        assert_eq!(
            counts,
            [
                (-hour, "a", 1),
                (4 * hour, "b", 1),
                (5 * hour, "a", 1),
                (5 * hour, "b", 2)
            ]
        );
        let erased = Tally::erased_event(&rows[0]);
        assert_eq!(erased.0.values().copied().collect::<Vec<_>>(), [-1]);
    }
}

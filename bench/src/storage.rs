//! Issue 22 part 3's figures: bytes per event of every table and index the
//! service keeps for the bench's events (`sample_event`), and the plan the
//! database chooses for each statement shape the service runs on
//! `audit_events`, `merkle_nodes` and `event_rollups`.
//!
//! One tenant is filled through `Append` (so the rows, the Merkle tree and
//! the rollups are what the service writes), the service stopped, and then:
//! - SQLite: the `dbstat` virtual table (the bundled library is built with
//!   `SQLITE_ENABLE_DBSTAT_VTAB`): the pages of each b-tree, in bytes;
//! - PostgreSQL, after `VACUUM ANALYZE` (what autovacuum does soon after a
//!   bulk load, so the planner chooses as it would in service):
//!   `pg_table_size` of each table (heap, TOAST, free space and visibility
//!   maps) and `pg_relation_size` of each index.
//!
//! The plans are `EXPLAIN QUERY PLAN` (SQLite) and `EXPLAIN` (PostgreSQL)
//! of the statements the service builds (the Query path's own SELECT,
//! `store::page_query`) or their exact shape (the others), with values of
//! the filled tenant.

use anyhow::Context;
use audit_service::config::DatabaseConfig;
use audit_service::filter::EventMatcher;
use audit_service::proto::EventFilter;
use audit_service::store::{EventOrder, PageCursor, Store, page_query};
use audit_service::tenant::TenantId;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, QueryTrait, Statement, Value};

use crate::client::{ACTORS, DAY_MICROS, DAY_START_MICROS, actor_id, connect};
use crate::report::{Row, Table, grouped, rate};
use crate::server::{Backend, BenchDatabase, ServiceProcess};
use crate::{Settings, timestamp, workloads};

/// The tenant filled and measured.
pub const STORAGE_TENANT: &str = "bench-storage";

/// The tables that grow with the events, shown index by index.
const EVENT_TABLES: [&str; 3] = ["audit_events", "merkle_nodes", "event_rollups"];

/// The size of one relation (table or index).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Relation {
    /// The table it belongs to.
    table: String,
    /// Its own name (the table's for the table itself).
    name: String,
    /// Bytes on disk.
    bytes: i64,
}

/// The storage rows on one backend; the plans are printed as they are run.
pub async fn bench(settings: &Settings, database: &BenchDatabase) -> anyhow::Result<Table> {
    let mut table = Table::new(database.backend.title());
    let events = settings.events;

    let seeding = ServiceProcess::start(&settings.server_bin, &database.url, &[]).await?;
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(connect(&seeding.url()).await?);
    }
    let prefill = workloads::prefill(&channels, STORAGE_TENANT, events).await?;
    drop(channels);
    seeding.stop()?;
    table.push(Row {
        workload: format!("Prefill {} events (Append 1000 × 4)", grouped(events)),
        rate: rate(prefill.phase.rate(), "ev/s"),
        latency: Some(prefill.phase.percentiles()),
        ..Row::default()
    });

    let store = Store::connect(&DatabaseConfig::new(database.url.clone()))
        .await
        .context("connecting to the bench database")?;
    let db = store.connection().clone();
    if database.backend == Backend::Postgres {
        db.execute_unprepared("VACUUM ANALYZE").await?;
    } else {
        db.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)").await?;
    }
    let relations = match database.backend {
        Backend::Sqlite => sqlite_sizes(&db).await?,
        Backend::Postgres => postgres_sizes(&db).await?,
    };
    let per_event = |bytes: i64| bytes as f64 / events.max(1) as f64;
    let mut total = 0;
    let mut others = 0;
    let mut tables: Vec<String> = relations.iter().map(|r| r.table.clone()).collect();
    tables.dedup();
    for name in &tables {
        if !EVENT_TABLES.contains(&name.as_str()) {
            others += relations
                .iter()
                .filter(|r| &r.table == name)
                .map(|r| r.bytes)
                .sum::<i64>();
            continue;
        }
        let parts: Vec<&Relation> = relations.iter().filter(|r| &r.table == name).collect();
        let sum: i64 = parts.iter().map(|r| r.bytes).sum();
        total += sum;
        for part in &parts {
            let what = if part.name == *name {
                "table".to_owned()
            } else {
                format!("index {}", part.name)
            };
            table.push(Row {
                workload: format!("{name}: {what}"),
                rate: format!("{:.1} B/event", per_event(part.bytes)),
                baseline: bytes_text(part.bytes),
                ..Row::default()
            });
        }
        if parts.len() > 1 {
            table.push(Row {
                workload: format!("**{name}: table and indexes**"),
                rate: format!("**{:.1} B/event**", per_event(sum)),
                baseline: bytes_text(sum),
                ..Row::default()
            });
        }
    }
    table.push(Row {
        workload: "the other tables and their indexes (keys, policies, heads, checkpoints, migrations)"
            .into(),
        rate: format!("{:.1} B/event", per_event(others)),
        baseline: bytes_text(others),
        ..Row::default()
    });
    total += others;
    table.push(Row {
        workload: "**every table and index**".into(),
        rate: format!("**{:.1} B/event**", per_event(total)),
        baseline: bytes_text(total),
        ..Row::default()
    });
    table.notes.push(match database.backend {
        Backend::Sqlite => "SQLite: bytes of each b-tree's pages (`SELECT name, SUM(pgsize) FROM dbstat \
                            GROUP BY name`), after a WAL checkpoint; per event = bytes ÷ events of the tenant."
            .to_owned(),
        Backend::Postgres => "PostgreSQL, after `VACUUM ANALYZE`: `pg_table_size` of each table (heap, TOAST, \
                              free space and visibility maps) and `pg_relation_size` of each index; per event \
                              = bytes ÷ events of the tenant."
            .to_owned(),
    });

    println!("#### Plans — {}\n", database.backend.title());
    for (shape, statement) in shapes(&db, events).await? {
        let plan = explain(&db, statement).await?;
        println!("- {shape}\n\n```\n{plan}\n```\n");
    }
    store.close().await?;
    Ok(table)
}

/// Bytes of every table and index of the database, and the events it
/// holds (all tenants), after a WAL checkpoint on SQLite: the full run's
/// one storage figure.
pub async fn database_bytes(db: &DatabaseConnection, backend: Backend) -> anyhow::Result<(i64, i64)> {
    let relations = match backend {
        Backend::Sqlite => {
            db.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)").await?;
            sqlite_sizes(db).await?
        }
        Backend::Postgres => postgres_sizes(db).await?,
    };
    let statement = Statement::from_string(db.get_database_backend(), "SELECT COUNT(*) FROM audit_events");
    let events: i64 = match db.query_one_raw(statement).await? {
        Some(row) => row.try_get_by_index(0)?,
        None => 0,
    };
    Ok((relations.iter().map(|r| r.bytes).sum(), events))
}

/// `12.3 MiB`.
fn bytes_text(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Every b-tree of the SQLite database with its table, in bytes.
async fn sqlite_sizes(db: &DatabaseConnection) -> anyhow::Result<Vec<Relation>> {
    let sql = "SELECT COALESCE(m.tbl_name, s.name), s.name, SUM(s.pgsize) FROM dbstat AS s \
               LEFT JOIN sqlite_schema AS m ON m.name = s.name \
               WHERE s.name NOT LIKE 'sqlite_%' OR s.name LIKE 'sqlite_autoindex_%' \
               GROUP BY s.name ORDER BY 1, m.type DESC, 2";
    rows_of(db, sql).await
}

/// Every table and index of the public schema, in bytes.
async fn postgres_sizes(db: &DatabaseConnection) -> anyhow::Result<Vec<Relation>> {
    let sql = "SELECT t.relname::text, c.relname::text, \
               CASE WHEN c.relkind = 'i' THEN pg_relation_size(c.oid) ELSE pg_table_size(c.oid) END \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               LEFT JOIN pg_index i ON i.indexrelid = c.oid \
               JOIN pg_class t ON t.oid = COALESCE(i.indrelid, c.oid) \
               WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i') \
               ORDER BY 1, c.relkind DESC, 2";
    rows_of(db, sql).await
}

async fn rows_of(db: &DatabaseConnection, sql: &str) -> anyhow::Result<Vec<Relation>> {
    let statement = Statement::from_string(db.get_database_backend(), sql);
    let mut relations = Vec::new();
    for row in db.query_all_raw(statement).await? {
        relations.push(Relation {
            table: row.try_get_by_index(0)?,
            name: row.try_get_by_index(1)?,
            bytes: row.try_get_by_index(2)?,
        });
    }
    Ok(relations)
}

/// The plan of `statement`, one line per plan line.
async fn explain(db: &DatabaseConnection, statement: Statement) -> anyhow::Result<String> {
    let backend = db.get_database_backend();
    let prefix = match backend {
        DbBackend::Sqlite => "EXPLAIN QUERY PLAN ",
        _ => "EXPLAIN ",
    };
    let explained = Statement {
        sql: format!("{prefix}{}", statement.sql),
        ..statement
    };
    let rows = db.query_all_raw(explained).await?;
    let mut lines = Vec::new();
    for row in rows {
        lines.push(match backend {
            DbBackend::Sqlite => row.try_get_by_index::<String>(3)?,
            _ => row.try_get_by_index::<String>(0)?,
        });
    }
    Ok(lines.join("\n"))
}

/// A statement with `$n` placeholders on `backend`.
fn raw(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(backend, sql, values)
}

/// Each statement shape the service runs on the event tables, named.
#[expect(clippy::too_many_lines, reason = "one list of shapes, read top to bottom")]
async fn shapes(db: &DatabaseConnection, events: u64) -> anyhow::Result<Vec<(String, Statement)>> {
    let backend = db.get_database_backend();
    let tenant = TenantId::parse(STORAGE_TENANT, "tenant").map_err(|e| anyhow::anyhow!("{e}"))?;
    let events = i64::try_from(events).unwrap_or(i64::MAX);
    let middle = events / 2;
    let hour_before_end = DAY_START_MICROS + DAY_MICROS - 3_600_000_000;
    let filters: Vec<(&str, EventFilter)> = vec![
        ("no filter", EventFilter::default()),
        (
            "actions = [document.read]",
            EventFilter {
                actions: vec!["document.read".into()],
                ..EventFilter::default()
            },
        ),
        (
            "actor_ids = [1 actor]",
            EventFilter {
                actor_ids: vec![actor_id(ACTORS / 2)],
                ..EventFilter::default()
            },
        ),
        (
            "actor_types = [SERVICE] (none in the tenant)",
            EventFilter {
                actor_types: vec![audit_service::proto::ActorType::Service as i32],
                ..EventFilter::default()
            },
        ),
        (
            "actor_email",
            EventFilter {
                actor_email: "User-0042@example.com".into(),
                ..EventFilter::default()
            },
        ),
        (
            "resource_types = [document]",
            EventFilter {
                resource_types: vec!["document".into()],
                ..EventFilter::default()
            },
        ),
        (
            "resource_ids = [1 document]",
            EventFilter {
                resource_ids: vec!["doc-42".into()],
                ..EventFilter::default()
            },
        ),
        (
            "resource_types + resource_ids",
            EventFilter {
                resource_types: vec!["document".into()],
                resource_ids: vec!["doc-42".into()],
                ..EventFilter::default()
            },
        ),
        (
            "outcomes = [FAILURE] (1 in 10)",
            EventFilter {
                outcomes: vec![audit_service::proto::Outcome::Failure as i32],
                ..EventFilter::default()
            },
        ),
        (
            "sources = [audit-bench]",
            EventFilter {
                sources: vec!["audit-bench".into()],
                ..EventFilter::default()
            },
        ),
        (
            "request_id",
            EventFilter {
                request_id: format!("req-{middle}"),
                ..EventFilter::default()
            },
        ),
        (
            "client_ip",
            EventFilter {
                client_ip: "203.0.113.7".into(),
                ..EventFilter::default()
            },
        ),
        (
            "time range: the last hour",
            EventFilter {
                start_time: Some(timestamp(hour_before_end)),
                end_time: Some(timestamp(DAY_START_MICROS + DAY_MICROS)),
                ..EventFilter::default()
            },
        ),
        (
            "time range: the whole day",
            EventFilter {
                start_time: Some(timestamp(DAY_START_MICROS)),
                end_time: Some(timestamp(DAY_START_MICROS + DAY_MICROS)),
                ..EventFilter::default()
            },
        ),
    ];
    let mut shapes = Vec::new();
    for (name, filter) in &filters {
        let matcher = EventMatcher::new(filter, "filter").map_err(|e| anyhow::anyhow!("{e}"))?;
        let select = page_query(db, &tenant, &matcher, EventOrder::SeqDesc, None, 51).await?;
        shapes.push((format!("Query seq desc, {name}"), select.build(backend)));
    }
    let everything =
        EventMatcher::new(&EventFilter::default(), "filter").map_err(|e| anyhow::anyhow!("{e}"))?;
    let cursor = PageCursor {
        seq: middle,
        occurred_at: DAY_START_MICROS + DAY_MICROS / 2,
    };
    for (name, order, after) in [
        ("Query seq asc", EventOrder::SeqAsc, None),
        ("Query occurred_at desc", EventOrder::OccurredAtDesc, None),
        ("Query occurred_at asc", EventOrder::OccurredAtAsc, None),
        (
            "Query occurred_at desc, after a cursor",
            EventOrder::OccurredAtDesc,
            Some(cursor),
        ),
        (
            "Watch catch-up (seq asc after a seq)",
            EventOrder::SeqAsc,
            Some(cursor),
        ),
    ] {
        let select = page_query(db, &tenant, &everything, order, after, 51).await?;
        shapes.push((name.to_owned(), select.build(backend)));
    }
    let t = || Value::from(STORAGE_TENANT);
    let some_id: Option<uuid::Uuid> = db
        .query_one_raw(raw(
            backend,
            "SELECT id FROM audit_events WHERE tenant_id = $1 AND seq = $2",
            vec![t(), middle.into()],
        ))
        .await?
        .map(|row| row.try_get_by_index(0))
        .transpose()?;
    let id = Value::from(some_id.context("no event in the middle of the tenant")?);
    let scan = "FROM audit_events WHERE tenant_id = $1 AND deleted_at IS NULL AND seq > $2 AND seq <= $3";
    let chunk = || vec![t(), 0i64.into(), events.into()];
    shapes.extend([
        (
            "Get (and Delete's lookup) by id".to_owned(),
            raw(
                backend,
                "SELECT * FROM audit_events WHERE tenant_id = $1 AND deleted_at IS NULL AND id = $2",
                vec![t(), id],
            ),
        ),
        (
            "Append: idempotency lookup".to_owned(),
            raw(
                backend,
                "SELECT idempotency_key, id, seq FROM audit_events WHERE tenant_id = $1 \
                 AND idempotency_key IN ($2, $3)",
                vec![t(), "key-1".into(), "key-2".into()],
            ),
        ),
        (
            "Stats scan: total of a chunk".to_owned(),
            raw(backend, &format!("SELECT COUNT(*) {scan}"), chunk()),
        ),
        (
            "Stats scan: grouped by actor_id".to_owned(),
            raw(
                backend,
                &format!("SELECT actor_id, COUNT(*) {scan} GROUP BY actor_id"),
                chunk(),
            ),
        ),
        (
            "Stats scan: 1 actor, grouped by action".to_owned(),
            raw(
                backend,
                &format!("SELECT action, COUNT(*) {scan} AND actor_id = $4 GROUP BY action"),
                vec![t(), 0i64.into(), events.into(), actor_id(42).into()],
            ),
        ),
        (
            "Stats from rollups: grouped by action over a time range".to_owned(),
            raw(
                backend,
                "SELECT action, SUM(event_count) FROM event_rollups WHERE tenant_id = $1 \
                 AND hour_start >= $2 AND hour_start < $3 GROUP BY action",
                vec![
                    t(),
                    DAY_START_MICROS.into(),
                    (DAY_START_MICROS + DAY_MICROS).into(),
                ],
            ),
        ),
        (
            "GetFilterMetadata: the next distinct action".to_owned(),
            raw(
                backend,
                "SELECT r.action FROM event_rollups r WHERE r.tenant_id = $1 AND r.action > $2 \
                 ORDER BY r.action LIMIT 1",
                vec![t(), "".into()],
            ),
        ),
        (
            "Retention: examine a batch".to_owned(),
            raw(
                backend,
                "SELECT seq, recorded_at, action FROM audit_events WHERE tenant_id = $1 AND seq > $2 \
                 AND seq <= $3 ORDER BY seq ASC LIMIT 1000",
                chunk(),
            ),
        ),
        (
            "Retention and Delete: erase by seq".to_owned(),
            raw(
                backend,
                "UPDATE audit_events SET deleted_at = $4 WHERE tenant_id = $1 AND seq IN ($2, $3) \
                 AND deleted_at IS NULL",
                vec![t(), middle.into(), (middle + 1).into(), 1i64.into()],
            ),
        ),
        (
            "Export: a chunk".to_owned(),
            raw(
                backend,
                "SELECT * FROM audit_events \
                 WHERE tenant_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq ASC LIMIT 1000",
                chunk(),
            ),
        ),
        (
            "Export: a chunk's leaf hashes as one row".to_owned(),
            raw(
                backend,
                match backend {
                    DbBackend::Postgres => {
                        "SELECT COUNT(*), string_agg(hash, ''::bytea ORDER BY idx) FROM merkle_nodes \
                         WHERE tenant_id = $1 AND level = 0 AND idx BETWEEN $2 AND $3"
                    }
                    _ => {
                        "SELECT COUNT(*), unhex(group_concat(hex(hash), '' ORDER BY idx)) FROM merkle_nodes \
                         WHERE tenant_id = $1 AND level = 0 AND idx BETWEEN $2 AND $3"
                    }
                },
                chunk(),
            ),
        ),
        (
            "Merkle tree: nodes by (level, idx)".to_owned(),
            raw(
                backend,
                "SELECT * FROM merkle_nodes WHERE tenant_id = $1 AND ((level = $2 AND idx = $3) \
                 OR (level = $4 AND idx = $5))",
                vec![t(), 0i32.into(), middle.into(), 3i32.into(), (middle / 8).into()],
            ),
        ),
        (
            "Merkle tree: stored leaves from an index".to_owned(),
            raw(
                backend,
                "SELECT * FROM merkle_nodes WHERE tenant_id = $1 AND level = 0 AND idx >= $2 \
                 ORDER BY idx ASC LIMIT 1000",
                vec![t(), middle.into()],
            ),
        ),
    ]);
    Ok(shapes)
}

//! The schema stays distributable by tenant (docs/scaling.md): every
//! table's primary key starts with `tenant_id`, except the reserved global
//! tables named here, so each table can become a Citus distributed table
//! co-located by `tenant_id` without changing its key.

use std::collections::BTreeMap;

use audit_service::config::DatabaseConfig;
use audit_service::store::Store;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::on_both_backends;
use crate::support::Backend;

on_both_backends!(every_table_but_the_reserved_ones_is_keyed_by_a_leading_tenant_id);

/// Tables that belong to no tenant, and why (docs/scaling.md says how each
/// is placed beyond one primary).
const RESERVED_GLOBAL_TABLES: &[(&str, &str)] = &[
    (
        "api_keys",
        "found by key id when a call authenticates: the key names its tenant",
    ),
    (
        "service_secrets",
        "the service's own secrets (page token key, signing key)",
    ),
    ("seaql_migrations", "the migrations applied"),
];

async fn every_table_but_the_reserved_ones_is_keyed_by_a_leading_tenant_id(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::connect(&DatabaseConfig::new(backend.database_url_in(dir.path())))
        .await
        .expect("store");
    let leading = leading_key_columns(&store).await;
    assert!(leading.contains_key("audit_events"), "tables found: {leading:?}");
    let mut offenders = Vec::new();
    for (table, first) in &leading {
        let reserved = RESERVED_GLOBAL_TABLES.iter().any(|(name, _)| name == table);
        if !reserved && first.as_deref() != Some("tenant_id") {
            offenders.push(format!("{table} (primary key starts with {first:?})"));
        }
    }
    assert!(
        offenders.is_empty(),
        "tables whose primary key does not start with tenant_id: {offenders:?}; key them by \
         (tenant_id, ...) or list them in RESERVED_GLOBAL_TABLES and docs/scaling.md"
    );
    store.close().await.expect("close");
}

/// Each table of the service's schema and the first column of its primary
/// key (`None`: it has none).
async fn leading_key_columns(store: &Store) -> BTreeMap<String, Option<String>> {
    let db = store.connection();
    let backend = db.get_database_backend();
    let rows = |sql: &str| {
        let statement = Statement::from_string(backend, sql.to_owned());
        async move { db.query_all_raw(statement).await.expect("schema query") }
    };
    let mut tables = BTreeMap::new();
    match backend {
        DbBackend::Sqlite => {
            for row in rows("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").await {
                let table: String = row.try_get_by_index(0).expect("name");
                let first = rows(&format!(
                    "SELECT name FROM pragma_table_info('{table}') WHERE pk = 1"
                ))
                .await
                .first()
                .map(|row| row.try_get_by_index::<String>(0).expect("column"));
                tables.insert(table, first);
            }
        }
        _ => {
            for row in rows(
                "SELECT t.tablename::text, a.attname::text \
                 FROM pg_tables t \
                 LEFT JOIN pg_index i ON i.indrelid = (quote_ident(t.schemaname) || '.' || quote_ident(t.tablename))::regclass \
                     AND i.indisprimary \
                 LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                 WHERE t.schemaname = current_schema()",
            )
            .await
            {
                let table: String = row.try_get_by_index(0).expect("table");
                let first: Option<String> = row.try_get_by_index(1).expect("column");
                tables.insert(table, first);
            }
        }
    }
    tables
}

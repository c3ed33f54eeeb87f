//! Opening a [`Store`]: the write and read pools (and a standby's, with
//! `AUDIT_READ_DATABASE_URL`) with their connection settings, and the
//! migrations (on PostgreSQL one replica at a time, under an advisory lock).

use std::sync::Arc;
use std::time::Duration;

use audit_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::postgres::PgConnectOptions;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DbBackend, DbErr, Statement};
use tokio::sync::{Mutex, broadcast};

use super::page_token::PageTokenKey;
use super::reads::READ_DEADLINE;
use super::replica::ReadReplica;
use super::secrets::load_or_create_secret;
use super::stats::ScanLimits;
use super::{Store, StoreResult, sessions, tuning};
use crate::config::DatabaseConfig;

/// Commits the in-process feed keeps for a slow reader before it lags
/// (a lagging reader falls back to reading storage).
const COMMIT_FEED_CAPACITY: usize = 1024;

/// How long a SQLite statement waits for another process's lock on the
/// database before it fails with `SQLITE_BUSY`.
pub(super) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Advisory-lock key that serializes migrations of replicas starting at once.
const MIGRATION_LOCK_KEY: i64 = 0x6175_6469_745f_6d69;

impl Store {
    /// Connects, applies pending migrations and loads the shared secrets.
    pub async fn connect(config: &DatabaseConfig) -> StoreResult<Self> {
        let backend = backend_of(&config.url)?;
        if backend == DbBackend::Postgres {
            migrate_postgres(&config.url).await?;
        }
        let loss = Arc::new(sessions::ConnectionLoss::default());
        let db = Database::connect(connect_options(config, backend, &loss)).await?;
        if backend == DbBackend::Sqlite {
            Migrator::up(&db, None).await?;
        }
        let reads = match backend {
            DbBackend::Postgres => {
                let mut options = connect_options(config, backend, &loss);
                // Replaces `connect_options`' function (sea-orm keeps one),
                // so it starts from the same session settings.
                options.map_sqlx_postgres_opts(|opts| {
                    service_session(opts).options([
                        ("statement_timeout", READ_DEADLINE.as_millis().to_string()),
                        ("default_transaction_read_only", "on".to_owned()),
                    ])
                });
                Database::connect(options).await?
            }
            _ => db.clone(),
        };
        let lone_writes = match backend {
            DbBackend::Postgres => lone_writes_pool(config, &loss).await?,
            _ => db.clone(),
        };
        let replica = match &config.read_url {
            Some(read_url) => Some(Arc::new(connect_replica(config, backend, read_url).await?)),
            None => None,
        };
        let page_tokens = PageTokenKey::new(load_or_create_secret(&db, "page_token_key").await?);
        let sqlite_writer = (backend == DbBackend::Sqlite).then(|| Arc::new(Mutex::new(())));
        let (commits, _) = broadcast::channel(COMMIT_FEED_CAPACITY);
        Ok(Self {
            db,
            reader: sessions::RetryingReads::new(reads.clone(), loss.clone()),
            reads,
            lone_writes,
            loss,
            sqlite_writer,
            page_tokens,
            commits,
            maintain_tree: true,
            stats_scan: ScanLimits::default(),
            group_commit: Arc::default(),
            metrics: Arc::default(),
            replica,
        })
    }
}

/// The standby's pool: read-only sessions with the read deadline, opened
/// lazily, so that a standby down at start only sends reads to the
/// primary until it answers.
async fn connect_replica(
    config: &DatabaseConfig,
    backend: DbBackend,
    read_url: &str,
) -> Result<ReadReplica, DbErr> {
    if backend != DbBackend::Postgres {
        return Err(DbErr::Custom(
            "AUDIT_READ_DATABASE_URL (--read-database-url) names a PostgreSQL hot standby of \
             DATABASE_URL, and SQLite has none: unset it, or use PostgreSQL"
                .to_owned(),
        ));
    }
    if backend_of(read_url).ok() != Some(DbBackend::Postgres) {
        return Err(DbErr::Custom(
            "AUDIT_READ_DATABASE_URL (--read-database-url) must be a postgres://... URL of a \
             PostgreSQL hot standby"
                .to_owned(),
        ));
    }
    let loss = Arc::new(sessions::ConnectionLoss::default());
    let replica_config = DatabaseConfig {
        url: read_url.to_owned(),
        ..config.clone()
    };
    let mut options = connect_options(&replica_config, backend, &loss);
    options.min_connections(0).connect_lazy(true);
    options.map_sqlx_postgres_opts(|opts| {
        sessions::postgres_session(opts).options([
            ("statement_timeout", READ_DEADLINE.as_millis().to_string()),
            ("default_transaction_read_only", "on".to_owned()),
        ])
    });
    Ok(ReadReplica::new(Database::connect(options).await?, loss))
}

/// The pool of a lone caller's one-statement append
/// (`append::known_head`): sessions like the write pool's, but planning as
/// PostgreSQL does by default, so that the statement, the same text at
/// every call, keeps a generic plan after five runs instead of being
/// planned again at every call (0.38 ms of a 1.5 ms `Append`, measured from
/// the server's log). It only updates one head row by its key and inserts,
/// so one plan fits every tenant. Connections open when first needed and
/// close when idle; at most as many as the write pool's.
async fn lone_writes_pool(
    config: &DatabaseConfig,
    loss: &Arc<sessions::ConnectionLoss>,
) -> Result<sea_orm::DatabaseConnection, DbErr> {
    let mut options = connect_options(config, DbBackend::Postgres, loss);
    options.min_connections(0).connect_lazy(true);
    options.map_sqlx_postgres_opts(|opts| {
        sessions::postgres_session(opts).options([("plan_cache_mode", "auto")])
    });
    Database::connect(options).await
}

fn backend_of(url: &str) -> Result<DbBackend, DbErr> {
    if url.starts_with("sqlite:") {
        Ok(DbBackend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(DbBackend::Postgres)
    } else {
        Err(DbErr::Custom(format!(
            "unsupported DATABASE_URL {url:?}: expected sqlite://PATH?mode=rwc or postgres://..."
        )))
    }
}

/// The session settings of the service's own PostgreSQL pools (the writes'
/// and the reads'): `sessions::postgres_session`, and every statement
/// planned for its own values (see `connect_options`).
fn service_session(options: PgConnectOptions) -> PgConnectOptions {
    sessions::postgres_session(options).options([("plan_cache_mode", "force_custom_plan")])
}

fn connect_options(
    config: &DatabaseConfig,
    backend: DbBackend,
    loss: &Arc<sessions::ConnectionLoss>,
) -> ConnectOptions {
    let mut options = ConnectOptions::new(config.url.clone());
    options
        .max_connections(config.max_connections.max(2))
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
        .test_before_acquire(false)
        .sqlx_logging(false);
    if backend == DbBackend::Postgres {
        // A prepared statement switches to a generic plan, one for every
        // value of its parameters, after five runs. Tenants differ in size
        // by orders of magnitude, and a generic plan only knows the average:
        // the Merkle frontier lookup (`tenant_id = $1 AND ((level, idx) = ...
        // OR ...)`) went from an index probe per node to a walk over all of
        // the tenant's nodes, one append in twenty took 8 ms longer, and
        // `Append` 100 × 1 fell to 0.45× of raw INSERT. Every statement is
        // planned for its own values instead (tens of microseconds each).
        options.map_sqlx_postgres_opts(service_session);
        let loss = loss.clone();
        options.map_sqlx_postgres_pool_opts(move |pool| {
            loss.guard_postgres(pool).after_connect(|connection, _| {
                Box::pin(async move {
                    tuning::nodelay_if_tuned()?;
                    sessions::after_postgres_connect(connection).await
                })
            })
        });
    }
    if backend == DbBackend::Sqlite {
        options.map_sqlx_sqlite_opts(|opts| {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            // WAL lets readers run beside the writer; FULL makes a commit
            // durable (fsync) before Append returns; `secure_delete`
            // overwrites what an erasure (Delete, retention) removes with
            // zeros in the database file, instead of leaving it in free
            // space until reused.
            opts.create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .pragma("secure_delete", "ON")
        });
        options.map_sqlx_sqlite_pool_opts(|pool| {
            pool.after_connect(|connection, _| {
                Box::pin(async move {
                    let mut handle = connection.lock_handle().await?;
                    tuning::stable_query_plans(handle.as_raw_handle())
                })
            })
        });
    }
    options
}

/// Runs migrations on one dedicated connection holding a PostgreSQL advisory
/// lock, so replicas that start together migrate once, in turn.
async fn migrate_postgres(url: &str) -> Result<(), DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options.max_connections(1).min_connections(1).sqlx_logging(false);
    let db = Database::connect(options).await?;
    let lock =
        |sql: &str| Statement::from_sql_and_values(DbBackend::Postgres, sql, [MIGRATION_LOCK_KEY.into()]);
    db.execute_raw(lock("SELECT pg_advisory_lock($1)")).await?;
    let migrated = Migrator::up(&db, None).await;
    let unlocked = db.execute_raw(lock("SELECT pg_advisory_unlock($1)")).await;
    db.close().await?;
    migrated?;
    unlocked.map(|_| ())
}

/// The PostgreSQL database of the unit tests that need one
/// (`AUDIT_TEST_DATABASE_URL`), required under CI; `None` elsewhere
/// without it, and those tests pass without running.
#[cfg(test)]
pub(crate) fn postgres_test_url() -> Option<String> {
    match std::env::var("AUDIT_TEST_DATABASE_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("CI needs AUDIT_TEST_DATABASE_URL for the PostgreSQL half of the tests")
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The read pool used to set its own function over the connection
    /// options, which replaced the one setting `application_name`,
    /// `lock_timeout`, the idle-in-transaction limit and the custom plans:
    /// every pool of the service now starts its sessions alike (the lone
    /// caller's append pool planning as PostgreSQL does by default).
    #[tokio::test]
    async fn the_read_pool_starts_its_sessions_like_the_write_pool() {
        let Some(url) = postgres_test_url() else {
            return;
        };
        let store = Store::connect(&DatabaseConfig::new(url)).await.unwrap();
        let sql = "SELECT current_setting('application_name') || ' ' || current_setting('plan_cache_mode') \
                   || ' ' || current_setting('lock_timeout') || ' ' || \
                   current_setting('idle_in_transaction_session_timeout')";
        let settings =
            |row: Option<sea_orm::QueryResult>| row.unwrap().try_get_by_index::<String>(0).unwrap();
        let statement = || Statement::from_string(DbBackend::Postgres, sql);
        let writes = settings(store.connection().query_one_raw(statement()).await.unwrap());
        let reads = settings(store.reader().query_one_raw(statement()).await.unwrap());
        assert!(writes.contains("force_custom_plan"), "{writes}");
        assert_eq!(reads, writes);
        let lone = settings(store.lone_writes().query_one_raw(statement()).await.unwrap());
        assert_eq!(lone, writes.replace("force_custom_plan", "auto"));
        let read_only = Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_setting('transaction_read_only')",
        );
        assert_eq!(
            settings(store.reader().query_one_raw(read_only).await.unwrap()),
            "on"
        );
        store.close().await.unwrap();
    }
}

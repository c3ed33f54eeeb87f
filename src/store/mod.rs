//! Storage of the audit log on SQLite or PostgreSQL through SeaORM.
//!
//! Every read goes through [`events_of`], which scopes the query to one
//! tenant and hides erased events, so no query can forget the tenant.

pub mod api_keys;
mod group_commit;
mod nodelay;
pub mod page_token;
mod pg_array;
mod query;
mod scan;
mod sequencer;
mod sessions;
pub mod stats;
mod tree;

use std::sync::Arc;
use std::time::Duration;

use audit_migrations::{Migrator, MigratorTrait};
use rand::RngCore;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    AccessMode, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, IsolationLevel, QueryFilter, QuerySelect, QueryTrait,
    Select, Set, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use tokio::sync::{Mutex, MutexGuard, broadcast};

pub use api_keys::ApiKeyInfo;
pub use page_token::{PageCursor, PageTokenKey};
#[cfg(feature = "bench")]
pub use query::page_query;
pub use query::{EventOrder, EventPage, PageLimits, PageSink};
pub use sequencer::{
    AppendOutcome, Committed, DELETION_ACTION, DELETION_RESOURCE_TYPE, DeleteOutcome, Deletion,
    DeletionRequest, NOTIFY_CHANNEL, NewEvent, SERVICE_ACTION_PREFIX,
};
pub use sessions::{
    APPLICATION_NAME, CLIENT_CHECK_INTERVAL, IDLE_IN_TRANSACTION_LIMIT, LOCK_WAIT_LIMIT, connection_died,
};
pub use tree::{ConsistencyProof, InclusionProof, LogRow};

use crate::config::DatabaseConfig;
use crate::entity::audit_event;
use crate::error::Error;
use crate::tenant::TenantId;

/// Commits the in-process feed keeps for a slow reader before it lags
/// (a lagging reader falls back to reading storage).
const COMMIT_FEED_CAPACITY: usize = 1024;
/// How long one read (a query page, stats, filter metadata) may run before
/// it fails with DEADLINE_EXCEEDED; on PostgreSQL also its
/// `statement_timeout`, so the database stops working on it too.
pub const READ_DEADLINE: Duration = Duration::from_secs(10);

/// Advisory-lock key that serializes migrations of replicas starting at once.
const MIGRATION_LOCK_KEY: i64 = 0x6175_6469_745f_6d69;

/// Handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// Where reads run: on PostgreSQL a pool of its own whose sessions are
    /// read-only with `statement_timeout` = [`READ_DEADLINE`], so a read is
    /// one round trip and the database itself stops a runaway one; on
    /// SQLite the same pool as `db`.
    reads: DatabaseConnection,
    /// Single-statement reads on `reads`, each run once more on a fresh
    /// connection when the one it got had died.
    reader: sessions::RetryingReads,
    /// When a pooled connection was last found dead (both pools).
    loss: Arc<sessions::ConnectionLoss>,
    /// SQLite has one writer at a time; queueing writers here, instead of in
    /// SQLite's busy handler, keeps commit order fair and never times out.
    sqlite_writer: Option<Arc<Mutex<()>>>,
    page_tokens: PageTokenKey,
    /// Every commit of this process, for the Watch hub.
    commits: broadcast::Sender<Arc<Committed>>,
    /// Whether `Append` extends the Merkle tree in its transaction.
    maintain_tree: bool,
    /// Appends of one tenant waiting to share a transaction.
    group_commit: Arc<group_commit::GroupCommit>,
}

impl Store {
    /// Connects, applies pending migrations and loads the shared secrets.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, DbErr> {
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
                options.map_sqlx_postgres_opts(|opts| {
                    opts.options([
                        ("statement_timeout", READ_DEADLINE.as_millis().to_string()),
                        ("default_transaction_read_only", "on".to_owned()),
                    ])
                });
                Database::connect(options).await?
            }
            _ => db.clone(),
        };
        let page_tokens = PageTokenKey::new(load_or_create_secret(&db, "page_token_key").await?);
        let sqlite_writer = (backend == DbBackend::Sqlite).then(|| Arc::new(Mutex::new(())));
        let (commits, _) = broadcast::channel(COMMIT_FEED_CAPACITY);
        Ok(Self {
            db,
            reader: sessions::RetryingReads::new(reads.clone(), loss.clone()),
            reads,
            loss,
            sqlite_writer,
            page_tokens,
            commits,
            maintain_tree: true,
            group_commit: Arc::default(),
        })
    }

    /// With `false`, `Append` leaves the Merkle tree behind (for measuring
    /// its cost); the next checkpoint, proof or `Delete` catches it up.
    pub fn with_tree_maintenance(mut self, maintain: bool) -> Self {
        self.maintain_tree = maintain;
        self
    }

    fn maintains_tree(&self) -> bool {
        self.maintain_tree
    }

    /// The named 32-byte secret all replicas of this database share,
    /// created on first use.
    pub async fn shared_secret(&self, name: &str) -> Result<Vec<u8>, DbErr> {
        load_or_create_secret(&self.db, name).await
    }

    /// The underlying connection pool.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Which database this is.
    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Every later commit of this process, in commit order per tenant.
    pub fn subscribe_commits(&self) -> broadcast::Receiver<Arc<Committed>> {
        self.commits.subscribe()
    }

    /// The key that signs page tokens.
    pub fn page_tokens(&self) -> &PageTokenKey {
        &self.page_tokens
    }

    /// Whether the database answers (on a fresh connection if the pooled
    /// one it got had died).
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.loss.once_more_if_connection_died(|| self.db.ping()).await
    }

    /// Closes the pools.
    pub async fn close(self) -> Result<(), DbErr> {
        if self.backend() == DbBackend::Postgres {
            self.reads.close().await?;
        }
        self.db.close().await
    }

    /// Starts a write transaction: on SQLite behind the single-writer lock
    /// and `BEGIN IMMEDIATE`, so it holds the write lock from its first
    /// statement and never fails to upgrade a stale read snapshot.
    async fn begin_write(&self) -> Result<(Option<MutexGuard<'_, ()>>, DatabaseTransaction), DbErr> {
        let guard = self.write_guard().await;
        let options = TransactionOptions {
            sqlite_transaction_mode: guard.as_ref().map(|_| SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        let txn = self
            .loss
            .once_more_if_connection_died(|| self.db.begin_with_options(options))
            .await?;
        Ok((guard, txn))
    }

    /// Starts a transaction on the write pool without the SQLite writer
    /// lock (PostgreSQL groups written ahead).
    async fn begin_unguarded(&self) -> Result<DatabaseTransaction, DbErr> {
        self.loss.once_more_if_connection_died(|| self.db.begin()).await
    }

    /// Starts a read-only snapshot for the statements of one read: on
    /// PostgreSQL `REPEATABLE READ READ ONLY` on the read pool (whose
    /// sessions carry the [`READ_DEADLINE`] `statement_timeout`); on SQLite
    /// a deferred transaction (one WAL snapshot).
    async fn begin_read(&self) -> Result<DatabaseTransaction, DbErr> {
        if self.backend() != DbBackend::Postgres {
            return self
                .loss
                .once_more_if_connection_died(|| self.reads.begin())
                .await;
        }
        self.loss
            .once_more_if_connection_died(|| {
                self.reads
                    .begin_with_config(Some(IsolationLevel::RepeatableRead), Some(AccessMode::ReadOnly))
            })
            .await
    }

    /// Where single-statement reads run (a statement is its own snapshot):
    /// the read pool, each statement run once more on a fresh connection
    /// when the one it got had died.
    fn reader(&self) -> &sessions::RetryingReads {
        &self.reader
    }

    async fn write_guard(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.sqlite_writer {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }
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
        options.map_sqlx_postgres_opts(|opts| {
            sessions::postgres_session(opts).options([("plan_cache_mode", "force_custom_plan")])
        });
        let loss = loss.clone();
        options.map_sqlx_postgres_pool_opts(move |pool| {
            loss.guard_postgres(pool).after_connect(|connection, _| {
                Box::pin(async move {
                    nodelay::disable_nagle_everywhere()?;
                    sessions::after_postgres_connect(connection).await
                })
            })
        });
    }
    if backend == DbBackend::Sqlite {
        sqlite_process_settings();
        options.map_sqlx_sqlite_opts(|opts| {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            // WAL lets readers run beside the writer; FULL makes a commit
            // durable (fsync) before Append returns.
            opts.create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30))
        });
        options.map_sqlx_sqlite_pool_opts(|pool| {
            pool.after_connect(|connection, _| {
                Box::pin(async move {
                    let mut handle = connection.lock_handle().await?;
                    stable_query_plans(handle.as_raw_handle())
                })
            })
        });
    }
    options
}

/// SQLite's process-wide settings, once, before the first connection
/// initializes the library: memory statistics off, and allocations from
/// mimalloc ([`sqlite_on_mimalloc`]).
///
/// With memory statistics on (SQLite's default), every allocation and free inside SQLite
/// takes one process-wide mutex to keep the counters; sqlx copies every value
/// of every row it reads (`sqlite3_value_dup`) and frees it when the row is
/// dropped, so a page of events meant ~2 500 trips through that mutex, from
/// the connection's worker thread and the runtime's threads at once. Nothing
/// here reads the counters (`sqlite3_memory_used` and friends).
fn sqlite_process_settings() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int. sqlite3_config is
        // not thread-safe against other SQLite calls, but this runs before
        // this process opens any SQLite connection; once the library is
        // initialized (by someone else first) it returns SQLITE_MISUSE and
        // changes nothing.
        let rc = unsafe {
            libsqlite3_sys::sqlite3_config(libsqlite3_sys::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int)
        };
        if rc != libsqlite3_sys::SQLITE_OK {
            tracing::debug!(rc, "SQLite was initialized already; memory statistics stay on");
        }
        let rc = sqlite_on_mimalloc();
        if rc != libsqlite3_sys::SQLITE_OK {
            tracing::debug!(rc, "SQLite was initialized already; it keeps the C allocator");
        }
    });
}

/// Points SQLite's allocations at mimalloc, before the library initializes.
///
/// SQLite calls the C library's `malloc` otherwise: sqlx copies every value
/// of every row on the connection's worker thread and frees it on the
/// runtime's, and glibc's `malloc`/`free` took ≈ 10% of the service's CPU
/// while it served Query pages from SQLite (`perf`, `sqlite3MemMalloc` →
/// `_int_malloc`). mimalloc, the binaries' allocator, frees across threads
/// without a lock.
fn sqlite_on_mimalloc() -> std::ffi::c_int {
    use std::ffi::{c_int, c_void};

    use libmimalloc_sys as mi;

    // SAFETY (all four): SQLite passes sizes > 0 and only pointers these
    // functions returned, as its allocator contract says.
    unsafe extern "C" fn malloc(size: c_int) -> *mut c_void {
        unsafe { mi::mi_malloc(size as usize) }
    }
    unsafe extern "C" fn free(p: *mut c_void) {
        unsafe { mi::mi_free(p) }
    }
    unsafe extern "C" fn realloc(p: *mut c_void, size: c_int) -> *mut c_void {
        unsafe { mi::mi_realloc(p, size as usize) }
    }
    unsafe extern "C" fn size(p: *mut c_void) -> c_int {
        unsafe { mi::mi_usable_size(p) as c_int }
    }
    unsafe extern "C" fn roundup(size: c_int) -> c_int {
        (size + 7) & !7
    }
    unsafe extern "C" fn init(_: *mut c_void) -> c_int {
        libsqlite3_sys::SQLITE_OK
    }
    unsafe extern "C" fn shutdown(_: *mut c_void) {}

    let methods = libsqlite3_sys::sqlite3_mem_methods {
        xMalloc: Some(malloc),
        xFree: Some(free),
        xRealloc: Some(realloc),
        xSize: Some(size),
        xRoundup: Some(roundup),
        xInit: Some(init),
        xShutdown: Some(shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to a sqlite3_mem_methods,
    // which SQLite copies before returning. Called as the MEMSTATUS call
    // above, before this process opens any connection; SQLITE_MISUSE and no
    // change when the library is initialized already.
    unsafe {
        libsqlite3_sys::sqlite3_config(
            libsqlite3_sys::SQLITE_CONFIG_MALLOC,
            &methods as *const libsqlite3_sys::sqlite3_mem_methods,
        )
    }
}

/// Turns on SQLite's query planner stability guarantee for a connection.
///
/// Without it, a statement whose plan looked at a bound value (SQLite does
/// this for `LIMIT ?`, which every page query has) is marked expired when
/// that parameter is bound again, so each execution of a cached statement
/// is parsed and planned from scratch; with it, a prepared statement keeps
/// its plan and the statement cache does its job.
fn stable_query_plans(
    mut db: std::ptr::NonNull<libsqlite3_sys::sqlite3>,
) -> Result<(), sea_orm::sqlx::Error> {
    // SAFETY: `db` is the open handle of a connection whose worker is
    // locked out for the duration of the call (`lock_handle`); the option
    // takes an int and an optional int* for the previous setting (NULL).
    let rc = unsafe {
        libsqlite3_sys::sqlite3_db_config(
            db.as_mut(),
            libsqlite3_sys::SQLITE_DBCONFIG_ENABLE_QPSG,
            1 as std::ffi::c_int,
            std::ptr::null_mut::<std::ffi::c_int>(),
        )
    };
    if rc == libsqlite3_sys::SQLITE_OK {
        Ok(())
    } else {
        Err(sea_orm::sqlx::Error::Configuration(
            format!("sqlite3_db_config(SQLITE_DBCONFIG_ENABLE_QPSG) failed with code {rc}").into(),
        ))
    }
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

/// Returns the named secret, creating 32 random bytes on first use; every
/// replica of one database reads the same value.
async fn load_or_create_secret(db: &DatabaseConnection, name: &str) -> Result<Vec<u8>, DbErr> {
    use crate::entity::service_secret;
    let mut value = vec![0u8; 32];
    rand::rng().fill_bytes(&mut value);
    service_secret::Entity::insert(service_secret::ActiveModel {
        name: Set(name.to_owned()),
        value: Set(value),
        created_at: Set(now_micros()),
    })
    .on_conflict(
        OnConflict::column(service_secret::Column::Name)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    service_secret::Entity::find_by_id(name.to_owned())
        .one(db)
        .await?
        .map(|secret| secret.value)
        .ok_or_else(|| DbErr::RecordNotFound(format!("service secret {name}")))
}

/// The tenant's live (not erased) events: the start of every read.
pub fn events_of(tenant: &TenantId) -> Select<audit_event::Entity> {
    audit_event::Entity::find()
        .filter(audit_event::Column::TenantId.eq(tenant.as_str()))
        .filter(audit_event::Column::DeletedAt.is_null())
}

/// The events `select` (an `audit_event::Entity::find()`, every column)
/// reads, decoded by position ([`audit_event::Model::from_row`]).
async fn fetch_events<C: ConnectionTrait>(
    conn: &C,
    select: Select<audit_event::Entity>,
) -> Result<Vec<audit_event::Model>, DbErr> {
    let statement = select.build(conn.get_database_backend());
    let rows = conn.query_all_raw(statement).await?;
    rows.iter().map(audit_event::Model::from_row).collect()
}

/// The first event `select` reads, as [`fetch_events`].
async fn fetch_event<C: ConnectionTrait>(
    conn: &C,
    select: Select<audit_event::Entity>,
) -> Result<Option<audit_event::Model>, DbErr> {
    let statement = select.limit(1).build(conn.get_database_backend());
    match conn.query_one_raw(statement).await? {
        Some(row) => audit_event::Model::from_row(&row).map(Some),
        None => Ok(None),
    }
}

/// Runs a read, failing with [`Error::DeadlineExceeded`] once it has taken
/// [`READ_DEADLINE`].
async fn within_deadline<T>(read: impl Future<Output = Result<T, DbErr>>) -> Result<T, Error> {
    match tokio::time::timeout(READ_DEADLINE, read).await {
        Ok(result) => result.map_err(Error::from),
        Err(_) => Err(Error::DeadlineExceeded(format!(
            "the read took longer than {} s; narrow the filter",
            READ_DEADLINE.as_secs()
        ))),
    }
}

/// Now, in unix microseconds.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Store {
    /// `sqlite` or `postgres`, for logs.
    pub fn backend_name(&self) -> &'static str {
        match self.backend() {
            DbBackend::Postgres => "postgres",
            DbBackend::Sqlite => "sqlite",
            _ => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::QueryOrder;

    use super::*;

    /// Reads a connection's `SQLITE_DBCONFIG_ENABLE_QPSG` setting.
    fn query_plan_stability(mut db: std::ptr::NonNull<libsqlite3_sys::sqlite3>) -> std::ffi::c_int {
        let mut enabled: std::ffi::c_int = -1;
        // SAFETY: as in `stable_query_plans`; a negative value leaves the
        // setting alone and writes the current one to `enabled`.
        let rc = unsafe {
            libsqlite3_sys::sqlite3_db_config(
                db.as_mut(),
                libsqlite3_sys::SQLITE_DBCONFIG_ENABLE_QPSG,
                -1 as std::ffi::c_int,
                &mut enabled as *mut std::ffi::c_int,
            )
        };
        assert_eq!(rc, libsqlite3_sys::SQLITE_OK);
        enabled
    }

    #[tokio::test]
    async fn decoding_by_position_reads_what_decoding_by_name_reads() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
        let store = Store::connect(&DatabaseConfig::new(url)).await.unwrap();
        let tenant = TenantId::parse("acme", "tenant").unwrap();
        // Every column holds a value no other column of its type holds, so
        // a decoder reading the wrong position cannot pass.
        let event = |action: &str| NewEvent {
            occurred_at: Some(1_700_000_000_123_456),
            actor_id: "user-1".into(),
            actor_type: 1,
            actor_name: "Ada".into(),
            actor_email: "ada@example.com".into(),
            action: action.into(),
            resource_type: "document".into(),
            resource_id: "doc-7".into(),
            resource_name: "Plan".into(),
            outcome: 2,
            request_method: "POST".into(),
            request_path: "/docs/7".into(),
            request_status_code: 403,
            request_client_ip: "203.0.113.9".into(),
            request_user_agent: "curl/8".into(),
            request_id: "req-1".into(),
            source: "billing".into(),
            reasoning: "because".into(),
            metadata: Some(serde_json::json!({"attempt": 2, "tags": ["a", null, 1.5]})),
            idempotency_key: Some(format!("key-{action}")),
        };
        let outcomes = store
            .append(&tenant, vec![event("user.login"), event("user.logout")])
            .await
            .unwrap();
        let request = DeletionRequest {
            actor_id: "admin".into(),
            actor_type: 1,
            reason: "test".into(),
        };
        let erased = store.delete(&tenant, outcomes[0].id, request).await.unwrap();
        assert!(matches!(erased, DeleteOutcome::Erased(_)));

        let all = || audit_event::Entity::find().order_by_asc(audit_event::Column::Seq);
        let by_name = all().all(store.connection()).await.unwrap();
        let by_position = fetch_events(store.connection(), all()).await.unwrap();
        assert_eq!(by_name.len(), 3, "two events and the deletion event");
        assert!(by_name[0].deleted_at.is_some() && by_name[0].action.is_none());
        assert_eq!(by_position, by_name);
        let first = fetch_event(store.connection(), all()).await.unwrap();
        assert_eq!(first.as_ref(), by_name.first());
    }

    #[tokio::test]
    async fn sqlite_allocates_from_mimalloc() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
        let _store = Store::connect(&DatabaseConfig::new(url)).await.unwrap();
        // SAFETY: the library is initialized (a connection is open); the
        // block is freed by SQLite's own free.
        unsafe {
            let block = libsqlite3_sys::sqlite3_malloc(100);
            assert!(!block.is_null());
            assert!(libmimalloc_sys::mi_is_in_heap_region(block));
            assert!(libsqlite3_sys::sqlite3_msize(block) >= 100);
            libsqlite3_sys::sqlite3_free(block);
        }
    }

    #[tokio::test]
    async fn every_sqlite_connection_keeps_its_query_plans() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
        let store = Store::connect(&DatabaseConfig::new(url)).await.unwrap();
        let pool = store.connection().get_sqlite_connection_pool();
        // Two connections at once, so more than the first one is checked.
        let mut first = pool.acquire().await.unwrap();
        let mut second = pool.acquire().await.unwrap();
        for connection in [&mut first, &mut second] {
            let mut handle = connection.lock_handle().await.unwrap();
            assert_eq!(query_plan_stability(handle.as_raw_handle()), 1);
        }
    }
}

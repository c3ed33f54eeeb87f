//! Storage of the audit log on SQLite or PostgreSQL through SeaORM.
//!
//! Every read goes through [`events_of`], which scopes the query to one
//! tenant and hides erased events, so no query can forget the tenant.

mod access;
pub mod api_keys;
mod append;
mod clock;
mod commits;
mod connect;
mod delete;
mod error;
mod export;
mod holds;
mod insert;
pub mod page_token;
mod pg_array;
mod policy;
mod query;
mod reads;
mod replica;
mod retention;
mod rollups;
mod scan;
mod scope;
mod secrets;
mod sequencer;
mod service_event;
mod sessions;
mod span;
// Calls C: statements prepared, bound and stepped on SQLite's own handle.
#[allow(unsafe_code)]
mod sqlite_handle;
mod sqlite_rows;
// Calls C: the busy handler of a write transaction on SQLite's own handle.
#[allow(unsafe_code)]
mod sqlite_write;
pub mod stats;
mod tenants;
mod tree;
// Calls C: SQLite's configuration, setsockopt.
#[allow(unsafe_code)]
mod tuning;

use std::sync::Arc;

use sea_orm::{
    AccessMode, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, IsolationLevel,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use tokio::sync::{Mutex, MutexGuard, broadcast};

pub use access::{ACCESS_AUDIT_SET_ACTION, AccessAudit, AccessAuditChange, LogRead, READ_ACTION};
pub use api_keys::{ApiKeyInfo, KeyHolder};
pub use append::{AppendOutcome, NewEvent};
pub use clock::now_micros;
pub use commits::{Committed, NOTIFY_CHANNEL};
pub use delete::{DELETION_ACTION, DELETION_RESOURCE_TYPE, Deletion};
pub use error::{StoreError, StoreResult};
pub use export::{ChunkLimits, ExportChunk, ExportStart};
pub use holds::{
    HOLD_CREATED_ACTION, HOLD_RELEASED_ACTION, HOLD_RESOURCE_TYPE, HoldChange, LegalHold, MAX_ACTIVE_HOLDS,
    MAX_RELEASED_LISTED,
};
pub use page_token::{PageCursor, PageTokenKey, SpanCursor};
pub use policy::{
    LOG_RESOURCE_TYPE, RETENTION_LOCKED_ACTION, RETENTION_SET_ACTION, Retention, RetentionChange,
    RetentionPolicy,
};
#[cfg(feature = "bench")]
pub use query::page_query;
pub use query::{EventOrder, EventPage, PageLimits, PageSink};
pub use reads::{READ_DEADLINE, events_by_time_in, events_in, events_of};
use reads::{fetch_event, fetch_events, within_deadline};
use replica::ReadFloor;
pub use replica::{MAX_REPLICA_LAG, REPLAY_WAIT, REPLICA_SAMPLE_INTERVAL, ReplicaSample};

use crate::observe::Metrics;
pub use retention::{RETENTION_ACTION, RETENTION_ACTOR, RETENTION_BATCH, RetentionRun};
pub use rollups::RollupRebuild;
pub use scope::TenantScope;
pub use service_event::{ChangeRequest, SERVICE_ACTION_PREFIX};
pub use sessions::{
    APPLICATION_NAME, CLIENT_CHECK_INTERVAL, IDLE_IN_TRANSACTION_LIMIT, LOCK_WAIT_LIMIT, connection_died,
};
pub use span::SpanPage;
pub use tenants::TenantInfo;
pub use tree::{ConsistencyProof, InclusionProof, LogRow};
pub use tuning::tune_process;

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
    /// Where a lone caller's append runs its one statement: on PostgreSQL
    /// a pool whose sessions keep a generic plan for it (see
    /// `connect::lone_writes_pool`), on SQLite the same pool as `db`.
    lone_writes: DatabaseConnection,
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
    /// How far a `Stats` scan may go before it answers with what it has.
    stats_scan: stats::ScanLimits,
    /// Appends of one tenant waiting to share a transaction.
    group_commit: Arc<append::GroupCommit>,
    /// Where appends, group commits and retention are counted.
    metrics: Arc<Metrics>,
    /// The hot standby that serves reads (`AUDIT_READ_DATABASE_URL`), if any.
    replica: Option<Arc<replica::ReadReplica>>,
}

impl Store {
    /// With `false`, `Append` leaves the Merkle tree behind (for measuring
    /// its cost); the next checkpoint, proof or `Delete` catches it up.
    pub fn with_tree_maintenance(mut self, maintain: bool) -> Self {
        self.maintain_tree = maintain;
        self
    }

    /// Scans for `Stats` within `limits` (by default
    /// [`ScanLimits::default`](stats::ScanLimits::default)).
    pub fn with_stats_scan(mut self, limits: stats::ScanLimits) -> Self {
        self.stats_scan = limits;
        self
    }

    /// Counts into `metrics` (by default into a set of its own that
    /// nothing exposes).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The metrics this store counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sets `audit_db_connections` from the pools as they are now.
    pub fn read_pool_usage(&self) {
        let mut pools = vec![("write", &self.db)];
        if self.backend() == DbBackend::Postgres {
            pools.push(("read", &self.reads));
            pools.push(("append", &self.lone_writes));
        }
        if let Some(replica) = &self.replica {
            pools.push(("replica", replica.pool()));
        }
        for (name, connection) in pools {
            let (size, idle) = match self.backend() {
                DbBackend::Postgres => {
                    let pool = connection.get_postgres_connection_pool();
                    (pool.size(), pool.num_idle())
                }
                _ => {
                    let pool = connection.get_sqlite_connection_pool();
                    (pool.size(), pool.num_idle())
                }
            };
            let idle = i64::try_from(idle).unwrap_or(i64::MAX);
            let gauge = &self.metrics.db_connections;
            gauge.with_label_values(&[name, "idle"]).set(idle);
            gauge
                .with_label_values(&[name, "in_use"])
                .set((i64::from(size) - idle).max(0));
        }
    }

    fn maintains_tree(&self) -> bool {
        self.maintain_tree
    }

    /// The underlying connection pool.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Where a lone caller's append runs its one statement (see `lone_writes`).
    #[cfg(test)]
    pub(crate) fn lone_writes(&self) -> &DatabaseConnection {
        &self.lone_writes
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
    pub async fn ping(&self) -> StoreResult<()> {
        Ok(self.loss.once_more_if_connection_died(|| self.db.ping()).await?)
    }

    /// Closes the pools.
    pub async fn close(self) -> StoreResult<()> {
        if self.backend() == DbBackend::Postgres {
            self.reads.close().await?;
            self.lone_writes.close_by_ref().await?;
        }
        if let Some(replica) = &self.replica {
            replica.pool().close_by_ref().await?;
        }
        Ok(self.db.close().await?)
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

    pub(super) async fn write_guard(&self) -> Option<MutexGuard<'_, ()>> {
        match &self.sqlite_writer {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }

    /// `sqlite` or `postgres`, for logs.
    pub fn backend_name(&self) -> &'static str {
        match self.backend() {
            DbBackend::Postgres => "postgres",
            DbBackend::Sqlite => "sqlite",
            _ => "other",
        }
    }
}

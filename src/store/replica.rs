//! Reads from a PostgreSQL hot standby (`AUDIT_READ_DATABASE_URL`).
//!
//! `Query`, `Get`, `Stats`, `GetFilterMetadata`, `Export`'s chunks and
//! `Watch`'s reads of stored events run on the standby; everything that
//! writes, locks or must see the head exactly (appends, deletes, policies
//! and holds, credentials, checkpoints and proofs, the head a Watch or an
//! export starts from, access records) stays on the primary.
//!
//! A read that must see the log up to a position the client already holds
//! (a page token's seq, the head a Watch catches up to, an export's
//! checkpoint) first checks the tenant's head as the standby has replayed
//! it, polling for up to [`REPLAY_WAIT`]; if replay has not got there, the
//! read runs on the primary, so a page never skips an event the client
//! knows exists. A read the standby fails (it is down, or cancelled the
//! statement for a conflict with recovery) runs again on the primary; a
//! standby found unreachable gets no reads until the sampler
//! ([`Store::sample_read_replica`]) finds it answering again, and none
//! while it lags more than [`MAX_REPLICA_LAG`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};

use super::error::{is_statement_timeout, is_unavailable};
use super::sessions::{ConnectionLoss, RetryingReads, connection_died};
use super::{Store, StoreError, StoreResult};
use crate::entity::tenant_head;
use crate::tenant::TenantId;

/// Longest a read waits for the standby to replay the position it needs
/// before it goes to the primary.
pub const REPLAY_WAIT: Duration = Duration::from_secs(1);

/// Interval between looks at the standby's replayed head while waiting.
const REPLAY_POLL: Duration = Duration::from_millis(20);

/// Interval at which the standby's reachability and lag are sampled.
pub const REPLICA_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Longest a sample may take before the standby counts as unreachable.
const SAMPLE_LIMIT: Duration = Duration::from_secs(2);

/// Replay lag past which reads leave the standby (and health reports it):
/// a read without a position is never staler than this.
pub const MAX_REPLICA_LAG: Duration = Duration::from_secs(30);

/// What a read must see of the tenant's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadFloor {
    /// Whatever the standby has replayed (a first page, `Stats`,
    /// `GetFilterMetadata`, `Get`).
    Any,
    /// Every event up to this seq.
    Seq(i64),
    /// Every event and Merkle node up to this tree size.
    Tree(i64),
}

/// The standby's pool and whether reads may go to it.
pub(super) struct ReadReplica {
    pool: DatabaseConnection,
    /// Dead connections of the standby's pool, apart from the primary's.
    loss: Arc<ConnectionLoss>,
    /// It answered its last sample or read, within [`MAX_REPLICA_LAG`].
    usable: AtomicBool,
}

/// The standby as one sample found it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaSample {
    /// It answered.
    pub reachable: bool,
    /// `pg_is_in_recovery()`: it is a standby (false for a primary).
    pub in_recovery: bool,
    /// It receives WAL from the primary (a WAL receiver runs), or it is not
    /// a standby. A standby cut off from its primary has replayed all it
    /// received, so its replay lag alone would read zero.
    pub receiving: bool,
    /// How far its replay is behind: the age of the last transaction it
    /// replayed while it has received WAL it has not replayed, or while it
    /// receives none; zero when it streams and has replayed everything it
    /// received.
    pub lag: Duration,
    /// Reads go to it.
    pub usable: bool,
}

/// Where a read runs.
pub(super) enum ReadRoute {
    /// On the standby: a view of the store whose every pool is the
    /// standby's.
    Replica(Box<Store>),
    /// On the primary.
    Primary,
}

impl ReadReplica {
    pub fn new(pool: DatabaseConnection, loss: Arc<ConnectionLoss>) -> Self {
        Self {
            pool,
            loss,
            usable: AtomicBool::new(false),
        }
    }

    pub fn pool(&self) -> &DatabaseConnection {
        &self.pool
    }

    /// Marks the standby usable or not, logging the change.
    fn set_usable(&self, usable: bool, why: &str) {
        if self.usable.swap(usable, Ordering::Relaxed) != usable {
            if usable {
                tracing::info!(why, "read replica: reads go to the standby");
            } else {
                tracing::warn!(why, "read replica: reads go to the primary");
            }
        }
    }

    /// The tenant's head seq and tree size as the standby has replayed them.
    async fn replayed_head(&self, tenant: &TenantId) -> Result<(i64, i64), DbErr> {
        let reads = RetryingReads::new(self.pool.clone(), self.loss.clone());
        let head = tenant_head::Entity::of_tenant(tenant).one(&reads).await?;
        Ok(head.map_or((0, 0), |h| (h.head_seq, h.tree_size)))
    }
}

impl Store {
    /// Whether reads may go to a standby (`AUDIT_READ_DATABASE_URL`).
    pub fn has_read_replica(&self) -> bool {
        self.replica.is_some()
    }

    /// Where a read that must see `floor` of the tenant's log runs, counted
    /// in `audit_read_replica_routed_total`.
    pub(super) async fn read_route(&self, tenant: &TenantId, floor: ReadFloor) -> ReadRoute {
        let Some(replica) = &self.replica else {
            return ReadRoute::Primary;
        };
        if !replica.usable.load(Ordering::Relaxed) {
            self.count_route("primary", "unavailable");
            return ReadRoute::Primary;
        }
        let wanted = match floor {
            ReadFloor::Any => None,
            ReadFloor::Seq(seq) => Some((seq, false)),
            ReadFloor::Tree(size) => Some((size, true)),
        };
        let mut reason = "current";
        if let Some((position, by_tree)) = wanted.filter(|(position, _)| *position > 0) {
            let deadline = tokio::time::Instant::now() + REPLAY_WAIT;
            loop {
                match replica.replayed_head(tenant).await {
                    Ok((head, tree)) if (if by_tree { tree } else { head }) >= position => break,
                    Ok(_) if tokio::time::Instant::now() < deadline => {
                        reason = "waited";
                        tokio::time::sleep(REPLAY_POLL).await;
                    }
                    Ok(_) => {
                        self.count_route("primary", "behind");
                        return ReadRoute::Primary;
                    }
                    Err(error) => {
                        self.replica_failed(&StoreError::Database(error));
                        return ReadRoute::Primary;
                    }
                }
            }
        }
        self.count_route("replica", reason);
        ReadRoute::Replica(Box::new(self.on_replica(replica)))
    }

    /// Runs `read` on the standby when [`read_route`](Self::read_route)
    /// sends it there, and on the primary otherwise or when the standby
    /// failed it ([`replica_failed`](Self::replica_failed)). `read` must
    /// hand nothing out before it returns: it may run twice.
    pub(super) async fn routed<T, F, Fut>(
        &self,
        tenant: &TenantId,
        floor: ReadFloor,
        read: F,
    ) -> StoreResult<T>
    where
        F: Fn(Store) -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        if let ReadRoute::Replica(replica) = self.read_route(tenant, floor).await {
            match read(*replica).await {
                Err(error) if self.replica_failed(&error) => {}
                result => return result,
            }
        }
        read(self.clone()).await
    }

    /// Whether a read the standby failed with `error` runs again on the
    /// primary: unless it ran out of time (the primary would too) or was
    /// refused for what it asked. A standby that cannot be reached gets no
    /// more reads until a sample finds it again.
    pub(super) fn replica_failed(&self, error: &StoreError) -> bool {
        let Some(replica) = &self.replica else {
            return false;
        };
        let again = match error {
            StoreError::Database(error) => {
                if is_unavailable(error) || connection_died(error) {
                    tracing::warn!(%error, "read replica failed a read");
                    replica.set_usable(false, "the standby cannot be reached");
                }
                !is_statement_timeout(error)
            }
            // Not replayed yet there (an id the client got from Append).
            StoreError::NotFound { .. } | StoreError::Corrupt { .. } => true,
            _ => false,
        };
        if again {
            self.count_route("primary", "failed");
        }
        again
    }

    /// This store with every pool the standby's: reads only.
    fn on_replica(&self, replica: &ReadReplica) -> Store {
        Store {
            db: replica.pool.clone(),
            reads: replica.pool.clone(),
            reader: RetryingReads::new(replica.pool.clone(), replica.loss.clone()),
            loss: replica.loss.clone(),
            replica: None,
            ..self.clone()
        }
    }

    fn count_route(&self, served_by: &str, reason: &str) {
        self.metrics
            .read_replica_routed
            .with_label_values(&[served_by, reason])
            .inc();
    }

    /// Looks at the standby once: whether it answers, whether it is in
    /// recovery and how far its replay lags; sets the `audit_read_replica_*`
    /// gauges and whether reads go to it. `None` without a standby.
    pub async fn sample_read_replica(&self) -> Option<ReplicaSample> {
        let replica = self.replica.as_ref()?;
        let sample = match tokio::time::timeout(SAMPLE_LIMIT, sample(replica)).await {
            Ok(Ok((in_recovery, receiving, lag))) => {
                let lag = Duration::try_from_secs_f64(lag.max(0.0)).unwrap_or(Duration::MAX);
                ReplicaSample {
                    reachable: true,
                    in_recovery,
                    receiving,
                    lag,
                    usable: receiving && lag <= MAX_REPLICA_LAG,
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "read replica sample failed");
                unreachable_sample()
            }
            Err(_) => unreachable_sample(),
        };
        let why = match (sample.reachable, sample.receiving, sample.usable) {
            (false, _, _) => "the standby does not answer",
            (true, false, _) => "the standby receives no WAL from the primary",
            (true, true, false) => "the standby's replay lags too far behind",
            (true, true, true) => "the standby answers",
        };
        replica.set_usable(sample.usable, why);
        let metrics = &self.metrics;
        metrics.read_replica_up.set(i64::from(sample.reachable));
        metrics
            .read_replica_in_recovery
            .set(i64::from(sample.in_recovery));
        if sample.reachable {
            metrics.read_replica_lag_seconds.set(sample.lag.as_secs_f64());
        }
        Some(sample)
    }
}

fn unreachable_sample() -> ReplicaSample {
    ReplicaSample {
        reachable: false,
        in_recovery: false,
        receiving: false,
        lag: Duration::ZERO,
        usable: false,
    }
}

/// `pg_is_in_recovery()`, whether it receives WAL, and the replay lag in
/// seconds, from the standby.
async fn sample(replica: &ReadReplica) -> Result<(bool, bool, f64), DbErr> {
    // A standby that streams and has replayed all it received is current,
    // however long ago its last transaction was (an idle primary writes
    // none). One that receives nothing (no WAL receiver: its primary is
    // unreachable or it was cut off) has replayed all it received too, but
    // is current only as of its last transaction. `pg_stat_wal_receiver`
    // shows its row (at least the pid) to any role.
    const SQL: &str = "WITH s AS (SELECT pg_is_in_recovery() AS standby, \
            EXISTS (SELECT 1 FROM pg_stat_wal_receiver) AS receiving) \
        SELECT standby, NOT standby OR receiving, \
        CASE WHEN NOT standby \
               OR (receiving AND pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn()) THEN 0 \
             ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) \
        END::float8 FROM s";
    let reads = RetryingReads::new(replica.pool.clone(), replica.loss.clone());
    let row = reads
        .query_one_raw(Statement::from_string(DbBackend::Postgres, SQL))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("read replica sample".into()))?;
    Ok((
        row.try_get_by_index(0)?,
        row.try_get_by_index(1)?,
        row.try_get_by_index(2)?,
    ))
}

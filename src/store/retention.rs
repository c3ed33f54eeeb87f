//! The retention task's work on one tenant: erase, in bounded batches,
//! every live event older than the retention period (by `recorded_at`)
//! that no legal hold keeps, exactly as `Delete` erases (content gone, seq
//! and Merkle leaf kept), and record each run that erased anything with one
//! `audit.retention.applied` event. The service's own records (`audit.*`:
//! deletions, retention runs, policy changes) are kept: they explain every
//! gap in the log and who set its rules, and `Delete` cannot erase them
//! either. Records of reads (`audit.log.read`) are the exception: they go
//! when they are due, like what they recorded.
//!
//! Each batch is one transaction holding the tenant's policy row
//! ([`lock_policy_row`]), never its head: on PostgreSQL `Append` does not
//! wait for retention at all (on SQLite, with one writer at a time, it
//! waits at most one batch), and a run rests between batches as long as
//! each took. Replicas enforcing together on one database take turns on
//! that row: the progress lives in it (how far the log was scanned, and
//! what the run in progress erased so far), read and moved under its lock.
//! `Delete` and hold changes take it too, so no batch erases beside them.
//! No event is erased twice, and a run cut short (a crash, a stopped
//! replica) is finished, and recorded, by whichever replica runs next; the
//! record is one short transaction of its own, the only one holding the
//! head.

use std::time::Instant;

use sea_orm::sea_query::{Expr, ExprTrait as _};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::access::READ_ACTION;
use super::holds::ActiveHolds;
use super::policy::{LOG_RESOURCE_TYPE, lock_policy_row, policy_row};
use super::rollups::Tally;
use super::sequencer::{Head, lock_head};
use super::service_event::{ChangeRequest, SERVICE_ACTION_PREFIX, ServiceEvent, append_service_event};
use super::{Store, StoreError, StoreResult, events_of};
use crate::entity::{audit_event, retention_policy};
use crate::tenant::TenantId;

/// Events one retention batch examines (and at most erases): one
/// transaction, during which `Delete` and hold changes on the tenant wait
/// (and, on SQLite, every writer: it has one at a time).
pub const RETENTION_BATCH: u64 = 200;
/// How long a run rests after each batch, in multiples of the time the
/// batch took: 1 leaves the database to the service's writers at least
/// half the time.
pub const RETENTION_REST: f64 = 1.0;
/// Action of the event that records a retention run.
pub const RETENTION_ACTION: &str = "audit.retention.applied";
/// The actor id of the events retention records.
pub const RETENTION_ACTOR: &str = "audit-service/retention";

/// What one run over one tenant did.
#[derive(Debug, Clone, Default)]
pub struct RetentionRun {
    /// Events erased by this process's batches.
    pub erased: u64,
    /// Batches (transactions) this process ran.
    pub batches: u64,
    /// The `audit.retention.applied` event, when this process ended a run
    /// that erased anything.
    pub event: Option<audit_event::Model>,
}

/// What a batch did.
enum Batch {
    /// Erased this many events (maybe none: all held); more may be due.
    More(u64),
    /// Nothing more is due; erased this many events first, and the run's
    /// event when the run erased anything.
    Done(u64, Option<Box<audit_event::Model>>),
}

/// Makes the retention task look at the tenant's whole log again on its
/// next run (a released hold's events may now be due). Runs in a
/// transaction holding the tenant's head lock.
pub(super) async fn rescan_from_start(txn: &DatabaseTransaction, tenant: &TenantId) -> StoreResult<()> {
    retention_policy::Entity::update_of_tenant(tenant)
        .col_expr(retention_policy::Column::ScannedThrough, Expr::val(0i64))
        .exec(txn)
        .await?;
    Ok(())
}

impl Store {
    /// Tenants the retention task has work for: those with a period, and
    /// those whose last run was cut short before it was recorded. (Not a
    /// tenant's data: the one read across tenants the task needs.)
    pub async fn tenants_with_retention(&self) -> StoreResult<Vec<TenantId>> {
        Ok(retention_policy::Entity::find()
            .select_only()
            .column(retention_policy::Column::TenantId)
            .filter(
                retention_policy::Column::PeriodSecs
                    .is_not_null()
                    .or(retention_policy::Column::RunErased.gt(0)),
            )
            .order_by_asc(retention_policy::Column::TenantId)
            .into_tuple()
            .all(self.reader())
            .await?)
    }

    /// Runs retention over `tenant` as of `now` (unix microseconds), batch
    /// after batch until nothing is due or `go_on` says to stop (the run is
    /// then finished by a later one). After each batch the run rests as
    /// long as the batch took ([`RETENTION_REST`] times), so it never takes
    /// more than its share of the database from the service's writers.
    pub async fn apply_retention(
        &self,
        tenant: &TenantId,
        now: i64,
        go_on: impl Fn() -> bool,
    ) -> StoreResult<RetentionRun> {
        let mut run = RetentionRun::default();
        while go_on() {
            if !self.retention_step(tenant, now, &mut run).await? {
                break;
            }
        }
        Ok(run)
    }

    /// One batch of `tenant`'s run as of `now`, added to `run`; true when
    /// more may be due (then it has rested as long as the batch took,
    /// [`RETENTION_REST`] times). The retention task takes the batches of
    /// the tenants with work in turn, so no tenant's long run holds up
    /// another's.
    pub async fn retention_step(
        &self,
        tenant: &TenantId,
        now: i64,
        run: &mut RetentionRun,
    ) -> StoreResult<bool> {
        run.batches += 1;
        let started = Instant::now();
        match self.retention_batch(tenant, now).await? {
            Batch::More(erased) => run.erased += erased,
            Batch::Done(erased, event) => {
                run.erased += erased;
                run.event = event.map(|e| *e);
                return Ok(false);
            }
        }
        tokio::time::sleep(started.elapsed().mul_f64(RETENTION_REST)).await;
        Ok(true)
    }

    async fn retention_batch(&self, tenant: &TenantId, now: i64) -> StoreResult<Batch> {
        // The batch is chosen before anything is locked, so the walk to it
        // (over erased rows, after a released hold sends the scan back to
        // the start) holds nothing up; under the lock the batch goes ahead
        // only if no one moved the scan meanwhile.
        let Some(observed) = policy_row(self.reader(), tenant).await? else {
            return Ok(Batch::Done(0, None));
        };
        let (head_seq, tree_size) = self.log_heads(tenant).await?;
        let Examined { due, last, full } = match observed.period_secs {
            Some(period) => {
                let cutoff = now.saturating_sub(period.saturating_mul(1_000_000));
                examine(self.reader(), tenant, observed.scanned_through, head_seq, cutoff).await?
            }
            None => Examined {
                due: Vec::new(),
                last: None,
                full: false,
            },
        };
        if last.is_none() && observed.run_erased == 0 {
            // Nothing is due and no run is open: nothing to write (a
            // tenant with nothing due costs the task these reads only).
            return Ok(Batch::Done(0, None));
        }
        // As in `Delete`, an erased event's leaf is in the tree before its
        // content goes. The tree lags the head only where it was turned off
        // (`AUDIT_INTEGRITY=off`) or did not exist yet; it is caught up in
        // a transaction of its own, so the batch never needs the head.
        if let Some(&newest) = due.last().filter(|&&seq| seq > tree_size)
            && self.sync_tree(tenant).await? < newest
        {
            return Err(StoreError::Corrupt {
                tenant: tenant.clone(),
                what: format!("the tree does not reach seq {newest}, below the head"),
            });
        }

        let (writer, txn) = self.begin_write().await?;
        let Some(policy) = lock_policy_row(&txn, tenant).await? else {
            txn.rollback().await?;
            return Ok(Batch::Done(0, None));
        };
        if policy.scanned_through != observed.scanned_through || policy.period_secs != observed.period_secs {
            // Another replica's batch (or a policy change) got there first.
            txn.rollback().await?;
            return Ok(Batch::More(0));
        }
        let holds = ActiveHolds::load(&txn, tenant).await?;
        let held = holds.holding(&txn, tenant, &due).await?;
        let erase: Vec<i64> = due
            .iter()
            .copied()
            .filter(|seq| !held.contains_key(seq))
            .collect();
        let erased = if erase.is_empty() {
            0
        } else {
            erase_events(&txn, tenant, &erase, now).await?
        };
        // A released hold sends the scan back to the start in the middle of
        // a run, so a batch may erase seqs below what the run erased so far:
        // the recorded range spans both (`verify` accepts the erasures in it).
        let run = retention_policy::Model {
            scanned_through: last.unwrap_or(policy.scanned_through),
            run_first_seq: policy
                .run_first_seq
                .into_iter()
                .chain(erase.first().copied())
                .min(),
            run_last_seq: policy.run_last_seq.into_iter().chain(erase.last().copied()).max(),
            run_erased: policy.run_erased + i64::try_from(erased).unwrap_or(i64::MAX),
            ..policy
        };
        save_progress(&txn, &run).await?;
        txn.commit().await?;
        drop(writer);
        if full {
            return Ok(Batch::More(erased));
        }
        // Nothing more is due: the run ends, recorded if it erased anything.
        let event = if run.run_erased > 0 {
            self.record_run(tenant, run.scanned_through).await?
        } else {
            None
        };
        Ok(Batch::Done(erased, event.map(Box::new)))
    }

    /// Appends the `audit.retention.applied` event of the tenant's run that
    /// ended with the scan at `scanned_through`, and starts the tally of the
    /// next, in one short transaction holding the head (an append). Nothing
    /// when another replica recorded the run first, or went on scanning
    /// (it records the run when it ends).
    async fn record_run(
        &self,
        tenant: &TenantId,
        scanned_through: i64,
    ) -> StoreResult<Option<audit_event::Model>> {
        let (_writer, txn) = self.begin_write().await?;
        let head = lock_head(&txn, tenant).await?;
        let policy = lock_policy_row(&txn, tenant).await?;
        let Some((policy, first, last)) = policy.and_then(|p| match (p.run_first_seq, p.run_last_seq) {
            (Some(first), Some(last)) if p.run_erased > 0 && p.scanned_through == scanned_through => {
                Some((p, first, last))
            }
            _ => None,
        }) else {
            txn.rollback().await?;
            return Ok(None);
        };
        let event = append_run_event(&txn, tenant, head, &policy, first, last).await?;
        save_progress(
            &txn,
            &retention_policy::Model {
                run_first_seq: None,
                run_last_seq: None,
                run_erased: 0,
                ..policy
            },
        )
        .await?;
        txn.commit().await?;
        self.publish_one(&event);
        Ok(Some(event))
    }

    /// Makes erased content's space reusable at once where the database
    /// needs telling: on SQLite, the write-ahead log (which still holds the
    /// pages as they were before the erasure) is checkpointed into the
    /// database file and truncated; erased cells there are zeroed as they
    /// go (`secure_delete`). PostgreSQL's autovacuum reclaims the old row
    /// versions by itself.
    pub async fn reclaim_erased_space(&self) -> StoreResult<()> {
        if self.backend() == sea_orm::DbBackend::Sqlite {
            let _writer = self.write_guard().await;
            self.db
                .execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
                .await?;
        }
        Ok(())
    }
}

/// The live events after `scanned` (up to `head`) that are older than
/// `cutoff`, in seq order, at most [`RETENTION_BATCH`] of them.
struct Examined {
    /// The seqs of those retention erases (not the service's own records).
    due: Vec<i64>,
    /// The last seq examined, if any: the scan resumes after it.
    last: Option<i64>,
    /// Whether the batch was full: more may be due.
    full: bool,
}

async fn examine<C: ConnectionTrait>(
    conn: &C,
    tenant: &TenantId,
    scanned: i64,
    head: i64,
    cutoff: i64,
) -> StoreResult<Examined> {
    let rows: Vec<(i64, i64, Option<String>)> = events_of(tenant)
        .select_only()
        .column(audit_event::Column::Seq)
        .column(audit_event::Column::RecordedAt)
        .column(audit_event::Column::Action)
        .filter(audit_event::Column::Seq.gt(scanned))
        .filter(audit_event::Column::Seq.lte(head))
        .order_by_asc(audit_event::Column::Seq)
        .limit(RETENTION_BATCH)
        .into_tuple()
        .all(conn)
        .await?;
    // Seqs follow commit order, and so (but for clocks of replicas that
    // disagree) do the times they were recorded at: the first event not due
    // ends the run, and what follows it waits for the next one.
    let older: Vec<&(i64, i64, Option<String>)> = rows
        .iter()
        .take_while(|(_, recorded_at, _)| *recorded_at < cutoff)
        .collect();
    Ok(Examined {
        // The service's own records (deletions, retention runs, policy
        // changes) stay: they explain the log's gaps and who set its rules.
        // Records of reads are kept as long as what they recorded, and no
        // longer: the log would otherwise grow with every read for good.
        due: older
            .iter()
            .filter(|(_, _, action)| {
                action
                    .as_deref()
                    .is_none_or(|a| a == READ_ACTION || !a.starts_with(SERVICE_ACTION_PREFIX))
            })
            .map(|(seq, _, _)| *seq)
            .collect(),
        last: older.last().map(|(seq, _, _)| *seq),
        full: u64::try_from(older.len()).is_ok_and(|n| n == RETENTION_BATCH),
    })
}

/// Erases the events `seqs` as `Delete` does: every content column NULL,
/// `deleted_at` set; seq, id, `recorded_at` and idempotency key kept.
/// Returns how many were erased (an event a `Delete` erased since the batch
/// was chosen is not erased again).
async fn erase_events(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    seqs: &[i64],
    now: i64,
) -> StoreResult<u64> {
    // Read before the erasure, which empties the columns counted; no
    // `Delete` erases meanwhile (it takes the policy row this batch holds).
    let tally = Tally::erased(txn, tenant, seqs).await?;
    let mut update = audit_event::Entity::update_of_tenant(tenant)
        .col_expr(audit_event::Column::DeletedAt, Expr::val(now));
    for column in audit_event::CONTENT_COLUMNS {
        update = update.col_expr(column, Expr::cust("NULL"));
    }
    let result = update
        .filter(audit_event::Column::Seq.is_in(seqs.iter().copied()))
        .filter(audit_event::Column::DeletedAt.is_null())
        .exec(txn)
        .await?;
    tally.apply(txn, tenant).await?;
    Ok(result.rows_affected)
}

async fn save_progress(txn: &DatabaseTransaction, run: &retention_policy::Model) -> StoreResult<()> {
    retention_policy::Entity::update_of_tenant(&run.tenant_id)
        .col_expr(
            retention_policy::Column::ScannedThrough,
            Expr::val(run.scanned_through),
        )
        .col_expr(
            retention_policy::Column::RunFirstSeq,
            Expr::val(run.run_first_seq),
        )
        .col_expr(retention_policy::Column::RunLastSeq, Expr::val(run.run_last_seq))
        .col_expr(retention_policy::Column::RunErased, Expr::val(run.run_erased))
        .exec(txn)
        .await?;
    Ok(())
}

/// Appends the `audit.retention.applied` event of a run.
async fn append_run_event(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    head: Head,
    run: &retention_policy::Model,
    first: i64,
    last: i64,
) -> StoreResult<audit_event::Model> {
    let by = ChangeRequest {
        actor_id: RETENTION_ACTOR.to_owned(),
        actor_type: crate::proto::ActorType::System as i32,
        reason: format!(
            "retention: events recorded more than {} s ago are erased",
            run.period_secs.unwrap_or_default()
        ),
        client_identity: None,
    };
    append_service_event(
        txn,
        tenant,
        head,
        ServiceEvent {
            by: &by,
            action: RETENTION_ACTION,
            resource_type: LOG_RESOURCE_TYPE,
            resource_id: tenant.to_string(),
            metadata: serde_json::json!({
                "first_seq": first,
                "last_seq": last,
                "count": run.run_erased,
                "period_seconds": run.period_secs,
            }),
        },
    )
    .await
}

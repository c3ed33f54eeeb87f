//! The retention task every replica runs: on an interval, a retention run
//! over each tenant that has a retention period (the store makes replicas
//! running together take turns, batch by batch).

use std::collections::VecDeque;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{RetentionRun, Store, StoreError, StoreResult, now_micros};
use crate::tenant::TenantId;

/// Runs [`run_once`] now and then every `interval` until `shutdown`.
pub async fn enforce(store: Store, interval: Duration, shutdown: CancellationToken) {
    loop {
        if let Err(error) = run_once(&store, &shutdown).await {
            tracing::warn!(%error, "retention: could not list the tenants with a retention period");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// What one retention run over every tenant did: each tenant's run, and
/// the tenants whose run failed (left for the next run), with the error.
#[derive(Debug, Default)]
pub struct RetentionPass {
    /// The tenants whose run went through, and what it did.
    pub runs: Vec<(TenantId, RetentionRun)>,
    /// The tenants whose run failed, and why.
    pub failed: Vec<(TenantId, StoreError)>,
}

/// One retention run over every tenant with a retention period, as of now:
/// the tenants with work take turns, a batch each (so one tenant's long run
/// holds up no other's), until none has more due; stops between batches
/// once `stop` is cancelled. A tenant whose run fails is logged, reported
/// in [`RetentionPass::failed`], and left for the next run.
pub async fn run_once(store: &Store, stop: &CancellationToken) -> StoreResult<RetentionPass> {
    let mut pass = RetentionPass::default();
    let now = now_micros();
    let mut turns: VecDeque<(TenantId, RetentionRun)> = store
        .tenants_with_retention()
        .await?
        .into_iter()
        .map(|tenant| (tenant, RetentionRun::default()))
        .collect();
    while let Some((tenant, mut run)) = turns.pop_front() {
        if stop.is_cancelled() {
            break;
        }
        match store.retention_step(&tenant, now, &mut run).await {
            Ok(true) => turns.push_back((tenant, run)),
            Ok(false) => finished(store, &mut pass, tenant, run),
            Err(error) => {
                tracing::warn!(%tenant, %error, "retention run failed; the next run continues it");
                pass.failed.push((tenant, error));
            }
        }
    }
    // Runs cut short by `stop`: a later run finishes them.
    for (tenant, run) in turns.into_iter().filter(|(_, run)| run.batches > 0) {
        finished(store, &mut pass, tenant, run);
    }
    if pass.runs.iter().any(|(_, run)| run.erased > 0)
        && let Err(error) = store.reclaim_erased_space().await
    {
        tracing::warn!(%error, "retention: could not checkpoint the write-ahead log");
    }
    Ok(pass)
}

/// Counts and logs `tenant`'s run, and adds it to `pass`.
fn finished(store: &Store, pass: &mut RetentionPass, tenant: TenantId, run: RetentionRun) {
    store.metrics().retention_erased.inc_by(run.erased);
    if run.erased > 0 || run.event.is_some() {
        tracing::info!(
            %tenant,
            erased = run.erased,
            batches = run.batches,
            recorded_seq = run.event.as_ref().map(|e| e.seq),
            "retention applied"
        );
    }
    pass.runs.push((tenant, run));
}

//! Group commit: concurrent `Append` calls of one tenant wait in memory, not
//! on a pooled connection or the tenant's row lock, and whoever goes next
//! records every batch waiting at that moment in one transaction. Under load
//! this turns many small transactions (each a round trip per statement and
//! a durable flush) into few large ones; alone, a call commits at once.
//!
//! On PostgreSQL two groups of a tenant overlap: once a group's seqs and
//! tree are known, the next group is written on top of it while it is
//! still writing and committing (so the database works on both at once),
//! and commits after it, or rolls back and is recorded again (see
//! [`Store::append_batches`]). At most two groups of a tenant are in
//! flight in this process.
//!
//! No wait in here can close a cycle with a database lock (a cycle
//! PostgreSQL's deadlock detector cannot see):
//! - A caller waiting for the turn, or for its answer, holds no connection
//!   and no lock; a group takes its connection before it is planned and
//!   never a second one, so no group that others wait on needs the pool.
//! - The one wait that holds locks is a group written ahead waiting here
//!   for the group before it (holding its uncommitted rows). A cycle through
//!   it must come back through a lock wait of that earlier group. Written
//!   ahead too, that group's lock waits end after `AHEAD_LOCK_WAIT` (and it
//!   takes the head lock with `NOWAIT`). Otherwise it holds the tenant's
//!   head lock, so what it can wait on are rows of groups written ahead
//!   (here or at another replica) whose own predecessors cannot hold that
//!   lock, so were written ahead as well: every wait on the way ends within
//!   `AHEAD_LOCK_WAIT`, the groups written ahead fail and are recorded again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedMutexGuard, oneshot, watch};

use super::known_head::{self, KnownHeads};
use super::transaction::{Predecessor, Tail};
use super::{AppendOutcome, NewEvent};
use crate::store::{Store, StoreError, StoreResult};
use crate::tenant::TenantId;

/// Most events one group transaction records (a batch is never split).
const MAX_GROUP_EVENTS: usize = 5_000;
/// Tenants whose idle queues are kept before they are pruned.
const PRUNE_ABOVE: usize = 1_024;

type Reply = oneshot::Sender<StoreResult<Vec<AppendOutcome>>>;

/// A batch waiting to be recorded, and where its outcome goes.
pub(super) struct Waiting {
    pub events: Vec<NewEvent>,
    pub reply: Reply,
}

/// A group whose transaction is still open.
struct InFlight {
    tail: Tail,
    /// Set once the group has committed (`true`) or failed (`false`).
    outcome: watch::Receiver<Option<bool>>,
    /// The outcome of the group it was written on top of, if any.
    after: Option<watch::Receiver<Option<bool>>>,
}

impl InFlight {
    /// Neither committed nor failed yet (and its task still running).
    fn pending(&self) -> bool {
        self.outcome.borrow().is_none() && self.outcome.has_changed().is_ok()
    }
}

/// Waits until the group behind `outcome` has finished, either way.
async fn finished(mut outcome: watch::Receiver<Option<bool>>) {
    let _ = outcome.wait_for(Option::is_some).await;
}

/// One tenant's waiting batches, the turn to record them, and the latest
/// group in flight.
#[derive(Default)]
pub(super) struct TenantQueue {
    pub waiting: Mutex<Vec<Waiting>>,
    pub turn: Arc<tokio::sync::Mutex<()>>,
    latest: Mutex<Option<Arc<InFlight>>>,
}

impl TenantQueue {
    /// The latest group, while it is in flight.
    fn in_flight(&self) -> Option<Arc<InFlight>> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest.as_ref().filter(|group| group.pending()).cloned()
    }

    /// Whether no batch is waiting for a turn (a lone caller's group).
    fn nothing_waiting(&self) -> bool {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Waits for every group in flight to finish (the caller holds the
    /// turn, so no new one starts).
    async fn drain(&self) {
        if let Some(group) = self.in_flight() {
            finished(group.outcome.clone()).await;
        }
    }
}

/// The queues of every tenant with appends in flight, and the heads this
/// process last committed.
#[derive(Default)]
pub(in crate::store) struct GroupCommit {
    queues: Mutex<HashMap<String, Arc<TenantQueue>>>,
    /// The head each tenant's latest group committed here.
    pub(super) known: KnownHeads,
}

impl GroupCommit {
    pub(super) fn queue(&self, tenant: &TenantId) -> Arc<TenantQueue> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if queues.len() > PRUNE_ABOVE {
            // Only this map holds an idle queue.
            queues.retain(|_, queue| Arc::strong_count(queue) > 1);
        }
        queues.entry(tenant.as_str().to_owned()).or_default().clone()
    }
}

impl Store {
    pub(super) async fn record_group(
        &self,
        tenant: &TenantId,
        queue: &TenantQueue,
        group: Vec<Waiting>,
        turn: OwnedMutexGuard<()>,
    ) {
        let (batches, replies): (Vec<_>, Vec<_>) = group.into_iter().map(|w| (w.events, w.reply)).unzip();
        let predecessor = self.predecessor(queue).await;
        // A failed group is recorded again batch by batch, unless it was one
        // batch locked in its own turn (then its error is the answer).
        let retry = (replies.len() > 1 || predecessor.is_some()).then(|| batches.clone());
        let events = batches.iter().map(Vec::len).sum::<usize>();
        let started = Instant::now();
        let result = self
            .record_in_turn(tenant, queue, batches, predecessor, turn)
            .await;
        if let Ok(outcomes) = &result {
            self.count_group(events, started.elapsed(), outcomes);
        }
        match (result, retry) {
            (Ok(outcomes), _) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            (Err(error), None) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            (Err(_), Some(batches)) => {
                // Each batch on its own, so each caller gets its own answer.
                for (events, reply) in batches.into_iter().zip(replies) {
                    let turn = queue.turn.clone().lock_owned().await;
                    queue.drain().await;
                    let size = events.len();
                    let started = Instant::now();
                    let result = self.append_batches(tenant, vec![events], None, |_| {}).await;
                    drop(turn);
                    if let Ok(outcomes) = &result {
                        self.count_group(size, started.elapsed(), outcomes);
                    }
                    let _ = reply.send(result.map(|mut all| all.pop().unwrap_or_default()));
                }
            }
        }
    }

    /// Counts a committed group of `events` events that took `took`.
    fn count_group(&self, events: usize, took: Duration, outcomes: &[Vec<AppendOutcome>]) {
        let metrics = self.metrics();
        #[expect(
            clippy::cast_precision_loss,
            reason = "a group holds at most MAX_GROUP_EVENTS"
        )]
        metrics.append_group_events.observe(events as f64);
        metrics.append_commit_seconds.observe(took.as_secs_f64());
        let recorded = outcomes.iter().flatten().filter(|o| !o.duplicate).count();
        metrics
            .events_appended
            .inc_by(u64::try_from(recorded).unwrap_or(u64::MAX));
    }

    /// The group in flight the next group (in the caller's turn) is written
    /// on top of, if one can be; otherwise waits for it to finish. At most
    /// two groups are in flight: first waits for the one before it.
    async fn predecessor(&self, queue: &TenantQueue) -> Option<Predecessor> {
        let latest = queue.in_flight()?;
        if let Some(before) = &latest.after {
            finished(before.clone()).await;
        }
        let extends = latest.tail.tree.is_some() || !self.maintains_tree();
        if extends && latest.pending() {
            return Some(Predecessor {
                tail: latest.tail.clone(),
                outcome: latest.outcome.clone(),
            });
        }
        finished(latest.outcome.clone()).await;
        None
    }

    /// Records `batches` as one group on top of `predecessor` (or after
    /// every group in flight), holding `turn` until the group is planned.
    async fn record_in_turn(
        &self,
        tenant: &TenantId,
        queue: &TenantQueue,
        batches: Vec<Vec<NewEvent>>,
        predecessor: Option<Predecessor>,
        turn: OwnedMutexGuard<()>,
    ) -> StoreResult<Vec<Vec<AppendOutcome>>> {
        if predecessor.is_none()
            && self.maintains_tree()
            && known_head::fits(&batches)
            && queue.nothing_waiting()
            && let Some(known) = self.group_commit.known.get(tenant)
        {
            // Holding the turn throughout: no group is written on top of
            // this one, which holds the head lock only once its write runs
            // (see `known_head`); so it waits on locks as a group reading
            // the head under its lock first does.
            if let Some(outcomes) = self.append_at_known_head(tenant, &batches, known).await? {
                return Ok(outcomes);
            }
        }
        let after = predecessor.as_ref().map(|p| p.outcome.clone());
        let (done, outcome) = watch::channel(None);
        let planned = |tail: Tail| {
            let group = InFlight { tail, outcome, after };
            *queue.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(group));
            drop(turn);
        };
        let result = self.append_batches(tenant, batches, predecessor, planned).await;
        let _ = done.send(Some(result.is_ok()));
        // A finished group's tail (its tree and keys) is not kept around.
        let mut latest = queue.latest.lock().unwrap_or_else(|e| e.into_inner());
        if latest.as_ref().is_some_and(|group| !group.pending()) {
            *latest = None;
        }
        drop(latest);
        result
    }
}

pub(super) fn not_recorded(tenant: &TenantId) -> StoreError {
    StoreError::Conflict {
        tenant: tenant.clone(),
        what: "the append was not recorded: its group commit stopped".into(),
    }
}

/// The waiting batches for one transaction, oldest first, skipping calls
/// that were abandoned (their client gave up before the batch was written).
pub(super) fn take_group(queue: &TenantQueue) -> Vec<Waiting> {
    let mut waiting = queue.waiting.lock().unwrap_or_else(|e| e.into_inner());
    waiting.retain(|w| !w.reply.is_closed());
    let mut events = 0;
    let mut take = 0;
    for w in waiting.iter() {
        if take > 0 && events + w.events.len() > MAX_GROUP_EVENTS {
            break;
        }
        events += w.events.len();
        take += 1;
    }
    waiting.drain(..take).collect()
}

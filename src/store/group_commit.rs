//! Group commit: concurrent `Append` calls of one tenant wait in memory, not
//! on a pooled connection or the tenant's row lock, and whoever goes next
//! records every batch waiting at that moment in one transaction. Under load
//! this turns many small transactions (each a round trip per statement and
//! a durable flush) into few large ones; alone, a call commits at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sea_orm::DbErr;
use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;

use super::Store;
use super::sequencer::{AppendOutcome, NewEvent};
use crate::tenant::TenantId;

/// Most events one group transaction records (a batch is never split).
const MAX_GROUP_EVENTS: usize = 5_000;
/// Tenants whose idle queues are kept before they are pruned.
const PRUNE_ABOVE: usize = 1_024;

type Reply = oneshot::Sender<Result<Vec<AppendOutcome>, DbErr>>;

/// A batch waiting to be recorded, and where its outcome goes.
struct Waiting {
    events: Vec<NewEvent>,
    reply: Reply,
}

/// One tenant's waiting batches and the turn to record them.
#[derive(Default)]
struct TenantQueue {
    waiting: Mutex<Vec<Waiting>>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// The queues of every tenant with appends in flight.
#[derive(Default)]
pub(super) struct GroupCommit {
    queues: Mutex<HashMap<String, Arc<TenantQueue>>>,
}

impl GroupCommit {
    fn queue(&self, tenant: &TenantId) -> Arc<TenantQueue> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if queues.len() > PRUNE_ABOVE {
            // Only this map holds an idle queue.
            queues.retain(|_, queue| Arc::strong_count(queue) > 1);
        }
        queues.entry(tenant.as_str().to_owned()).or_default().clone()
    }
}

impl Store {
    /// Records a batch all or nothing and returns one outcome per input, in
    /// order. Returns after the commit is durable. Batches of other calls of
    /// the same tenant may share its transaction; a failed group is retried
    /// batch by batch, so one call's failure is never another's.
    pub async fn append(
        &self,
        tenant: &TenantId,
        events: Vec<NewEvent>,
    ) -> Result<Vec<AppendOutcome>, DbErr> {
        let queue = self.group_commit.queue(tenant);
        let (reply, mut outcome) = oneshot::channel();
        queue
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Waiting { events, reply });
        loop {
            let turn = queue.turn.clone().lock_owned().await;
            // An earlier turn may already have recorded this batch.
            match outcome.try_recv() {
                Ok(result) => return result,
                Err(TryRecvError::Closed) => return Err(not_recorded()),
                Err(TryRecvError::Empty) => {}
            }
            let group = take_group(&queue);
            if group.is_empty() {
                continue;
            }
            // The group is recorded in a task of its own, holding the turn, so
            // a caller that gives up (and drops this future) never abandons
            // the other callers' batches halfway.
            let store = self.clone();
            let tenant = tenant.clone();
            let recorded = tokio::spawn(async move {
                store.record_group(&tenant, group).await;
                drop(turn);
            });
            // If this batch was not in that group (it was full), the next
            // turn takes it.
            let _ = recorded.await;
        }
    }

    async fn record_group(&self, tenant: &TenantId, group: Vec<Waiting>) {
        if group.len() == 1 {
            for waiting in group {
                self.record_alone(tenant, waiting).await;
            }
            return;
        }
        let (batches, replies): (Vec<_>, Vec<_>) = group.into_iter().map(|w| (w.events, w.reply)).unzip();
        match self.append_batches(tenant, batches.clone()).await {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(_) => {
                // Each batch on its own, so each caller gets its own answer.
                for (events, reply) in batches.into_iter().zip(replies) {
                    self.record_alone(tenant, Waiting { events, reply }).await;
                }
            }
        }
    }

    async fn record_alone(&self, tenant: &TenantId, waiting: Waiting) {
        let result = self.append_batches(tenant, vec![waiting.events]).await;
        let _ = waiting
            .reply
            .send(result.map(|mut all| all.pop().unwrap_or_default()));
    }
}

fn not_recorded() -> DbErr {
    DbErr::Custom("the append was not recorded: its group commit stopped".into())
}

/// The waiting batches for one transaction, oldest first, skipping calls
/// that were abandoned (their client gave up before the batch was written).
fn take_group(queue: &TenantQueue) -> Vec<Waiting> {
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

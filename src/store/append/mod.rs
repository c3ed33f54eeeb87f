//! `Append`: [`Store::append`] records a batch of one tenant's events. Its
//! batch waits in the tenant's group commit queue ([`group_commit`]), and
//! the group it joins is recorded in one transaction ([`transaction`]).

mod group_commit;
mod known_head;
mod transaction;

use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;
use uuid::Uuid;

pub(super) use group_commit::GroupCommit;
use group_commit::{Waiting, not_recorded, take_group};

use super::{Store, StoreResult};
use crate::entity::audit_event;
use crate::tenant::TenantId;

/// A validated event to record, as the producer described it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewEvent {
    /// When it happened, unix microseconds; `None` takes the time it is recorded.
    pub occurred_at: Option<i64>,
    /// Who did it: the actor's id.
    pub actor_id: String,
    /// The actor's kind (`audit.v1.ActorType`).
    pub actor_type: i32,
    /// The actor's display name.
    pub actor_name: String,
    /// The actor's email.
    pub actor_email: String,
    /// What was done, for example `user.login`.
    pub action: String,
    /// The kind of thing it was done to.
    pub resource_type: String,
    /// The id of the thing it was done to.
    pub resource_id: String,
    /// The display name of the thing it was done to.
    pub resource_name: String,
    /// How it ended (`audit.v1.Outcome`).
    pub outcome: i32,
    /// The request's method, for example `POST`.
    pub request_method: String,
    /// The request's path.
    pub request_path: String,
    /// The request's status code (0 when none).
    pub request_status_code: i32,
    /// The address the request came from.
    pub request_client_ip: String,
    /// The request's user agent.
    pub request_user_agent: String,
    /// The producer's id of the request.
    pub request_id: String,
    /// The calling workload's TLS client certificate identity (empty: none).
    pub request_client_identity: String,
    /// The service that reported the event.
    pub source: String,
    /// Why it was done, in the actor's words.
    pub reasoning: String,
    /// Further details, a JSON object.
    pub metadata: Option<serde_json::Value>,
    /// A retry with the same key answers with the event already recorded under it.
    pub idempotency_key: Option<String>,
}

impl NewEvent {
    /// The row that records this event at `seq`.
    pub(in crate::store) fn into_model(
        self,
        tenant: &TenantId,
        seq: i64,
        id: Uuid,
        recorded_at: i64,
    ) -> audit_event::Model {
        audit_event::Model {
            tenant_id: tenant.clone(),
            seq,
            id,
            occurred_at: Some(self.occurred_at.unwrap_or(recorded_at)),
            recorded_at,
            actor_id: Some(self.actor_id),
            actor_type: Some(self.actor_type),
            actor_name: Some(self.actor_name),
            actor_email: Some(self.actor_email),
            action: Some(self.action),
            resource_type: Some(self.resource_type),
            resource_id: Some(self.resource_id),
            resource_name: Some(self.resource_name),
            outcome: Some(self.outcome),
            request_method: Some(self.request_method),
            request_path: Some(self.request_path),
            request_status_code: Some(self.request_status_code),
            request_client_ip: Some(self.request_client_ip),
            request_user_agent: Some(self.request_user_agent),
            request_id: Some(self.request_id),
            request_client_identity: (!self.request_client_identity.is_empty())
                .then_some(self.request_client_identity),
            source: Some(self.source),
            reasoning: Some(self.reasoning),
            metadata: self.metadata,
            idempotency_key: self.idempotency_key,
            deleted_at: None,
        }
    }
}

/// What `append` did with one input event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Id of the recorded (or originally recorded) event.
    pub id: Uuid,
    /// Its seq.
    pub seq: i64,
    /// True when the idempotency key was already recorded.
    pub duplicate: bool,
}

impl Store {
    /// Records a batch all or nothing and returns one outcome per input, in
    /// order. Returns after the commit is durable. Batches of other calls of
    /// the same tenant may share its transaction; a failed group is retried
    /// batch by batch, so one call's failure is never another's.
    pub async fn append(&self, tenant: &TenantId, events: Vec<NewEvent>) -> StoreResult<Vec<AppendOutcome>> {
        let queue = self.group_commit.queue(tenant);
        let (reply, mut outcome) = oneshot::channel();
        queue
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Waiting { events, reply });
        loop {
            let turn = tokio::select! {
                biased;
                result = &mut outcome => return result.unwrap_or_else(|_| Err(not_recorded(tenant))),
                turn = queue.turn.clone().lock_owned() => turn,
            };
            // An earlier turn may already have recorded this batch.
            match outcome.try_recv() {
                Ok(result) => return result,
                Err(TryRecvError::Closed) => return Err(not_recorded(tenant)),
                Err(TryRecvError::Empty) => {}
            }
            let group = take_group(&queue);
            if group.is_empty() {
                // A group in flight took this batch.
                drop(turn);
                return outcome.await.unwrap_or_else(|_| Err(not_recorded(tenant)));
            }
            // The group is recorded in a task of its own, which holds the
            // turn until the group is planned, so a caller that gives up
            // (and drops this future) never abandons the other callers'
            // batches halfway. If this batch was not in that group (it was
            // full), a later turn takes it.
            let store = self.clone();
            let tenant = tenant.clone();
            let queue = queue.clone();
            tokio::spawn(async move { store.record_group(&tenant, &queue, group, turn).await });
        }
    }
}

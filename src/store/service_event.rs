//! The events the service writes into a tenant's log itself (deletions,
//! retention runs, policy changes): each takes the next seq in a
//! transaction that holds the tenant's head lock, and its leaf joins the
//! Merkle tree at once.

use uuid::Uuid;

use super::commits::{Committed, announce};
use super::insert::insert_events;
use super::rollups::Tally;
use super::sequencer::{Head, set_head};
use super::tree::extend_tree;
use super::{NewEvent, Store, StoreResult, now_micros};
use crate::entity::audit_event;
use crate::proto::Outcome;
use crate::tenant::TenantId;

/// Namespace of the actions of the events the service writes itself:
/// producers cannot append them and `Delete` cannot erase them.
pub const SERVICE_ACTION_PREFIX: &str = "audit.";

/// Who asked for a change the service records, and why: the recorded
/// event's actor and reasoning.
#[derive(Debug, Clone)]
pub struct ChangeRequest {
    /// The caller's id (the credential's subject).
    pub actor_id: String,
    /// The caller's kind (`audit.v1.ActorType`).
    pub actor_type: i32,
    /// Why: the recorded event's reasoning.
    pub reason: String,
    /// The calling workload's TLS client certificate identity
    /// ([`crate::tls::client_identity`]), when the call came over mTLS: the
    /// recorded event's `request.client_identity`.
    pub client_identity: Option<String>,
}

/// An event the service records about its own work.
pub(super) struct ServiceEvent<'a> {
    /// Who asked for it and why.
    pub by: &'a ChangeRequest,
    /// Its action, under [`SERVICE_ACTION_PREFIX`].
    pub action: &'static str,
    /// Kind of what it is about.
    pub resource_type: &'static str,
    /// Id of what it is about.
    pub resource_id: String,
    /// Details, a JSON object.
    pub metadata: serde_json::Value,
}

impl ServiceEvent<'_> {
    fn into_new_event(self) -> NewEvent {
        debug_assert!(self.action.starts_with(SERVICE_ACTION_PREFIX));
        NewEvent {
            actor_id: self.by.actor_id.clone(),
            actor_type: self.by.actor_type,
            action: self.action.to_owned(),
            resource_type: self.resource_type.to_owned(),
            resource_id: self.resource_id,
            outcome: Outcome::Success as i32,
            source: crate::SERVICE_NAME.to_owned(),
            reasoning: self.by.reason.clone(),
            request_client_identity: self.by.client_identity.clone().unwrap_or_default(),
            metadata: Some(self.metadata),
            ..NewEvent::default()
        }
    }
}

/// Appends `event` as the tenant's next seq in `txn`, which holds the
/// tenant's head lock (`head`, as locked or as moved since), extending the
/// tree over every event up to it. Returns the stored event; the caller
/// commits, then [`Store::publish_one`]s it.
pub(super) async fn append_service_event(
    txn: &sea_orm::DatabaseTransaction,
    tenant: &TenantId,
    head: Head,
    event: ServiceEvent<'_>,
) -> StoreResult<audit_event::Model> {
    let seq = head.head_seq + 1;
    let event = event
        .into_new_event()
        .into_model(tenant, seq, Uuid::now_v7(), now_micros());
    let tree_size = extend_tree(txn, tenant, head.tree_size, seq, std::slice::from_ref(&event)).await?;
    insert_events(txn, vec![event.clone()]).await?;
    Tally::added(std::slice::from_ref(&event))
        .apply(txn, tenant)
        .await?;
    set_head(txn, tenant, seq, tree_size).await?;
    announce(txn, tenant, seq, seq).await?;
    Ok(event)
}

impl Store {
    /// Hands one committed service event to this process's followers.
    pub(super) fn publish_one(&self, event: &audit_event::Model) {
        self.publish(Committed {
            tenant: event.tenant_id.clone(),
            first_seq: event.seq,
            last_seq: event.seq,
            events: vec![event.clone()],
        });
    }
}

//! `Delete`: erasing one event's content while its seq and its leaf in the
//! Merkle tree stay, recorded by an event of its own.

use sea_orm::{ActiveModelTrait, ColumnTrait, IntoActiveModel, QueryFilter};
use uuid::Uuid;

use super::commits::{Committed, announce};
use super::insert::insert_events;
use super::sequencer::{Head, lock_head, set_head};
use super::tree::extend_tree;
use super::{NewEvent, Store, StoreError, StoreResult, events_of, fetch_event, now_micros};
use crate::entity::audit_event;
use crate::tenant::TenantId;

/// Namespace of the actions of the events the service writes itself
/// (deletions, and later retention and policy changes): producers cannot
/// append them and `Delete` cannot erase them.
pub const SERVICE_ACTION_PREFIX: &str = "audit.";
/// Action of the event that records a deletion.
pub const DELETION_ACTION: &str = "audit.event.deleted";
/// Resource type the deletion event names the erased event with.
pub const DELETION_RESOURCE_TYPE: &str = "audit.event";

/// The result of erasing an event.
#[derive(Debug, Clone)]
pub struct Deletion {
    /// Id of the erased event.
    pub erased_id: Uuid,
    /// Seq of the erased event, which it keeps.
    pub erased_seq: i64,
    /// The `audit.event.deleted` event appended in the same transaction.
    pub event: audit_event::Model,
}

/// Who asked for a deletion, as the deletion event's actor.
#[derive(Debug, Clone)]
pub struct DeletionRequest {
    /// The caller's id (the credential's subject).
    pub actor_id: String,
    /// The caller's kind (`audit.v1.ActorType`).
    pub actor_type: i32,
    /// Why the event is deleted: the deletion event's reasoning.
    pub reason: String,
}

impl Store {
    /// Erases one live event's content, keeping its id and seq, and appends
    /// the `audit.event.deleted` event, in one transaction. Events the
    /// service wrote itself are never erased ([`StoreError::Protected`]);
    /// [`StoreError::NotFound`] when the tenant has no live event `id`.
    pub async fn delete(
        &self,
        tenant: &TenantId,
        id: Uuid,
        request: DeletionRequest,
    ) -> StoreResult<Deletion> {
        let (_writer, txn) = self.begin_write().await?;
        let Head {
            head_seq: head,
            tree_size,
        } = lock_head(&txn, tenant).await?;
        let Some(target) =
            fetch_event(&txn, events_of(tenant).filter(audit_event::Column::Id.eq(id))).await?
        else {
            txn.rollback().await?;
            return Err(StoreError::event_not_found(id));
        };
        if let Some(action) = target
            .action
            .as_ref()
            .filter(|a| a.starts_with(SERVICE_ACTION_PREFIX))
        {
            let action = action.clone();
            txn.rollback().await?;
            return Err(StoreError::Protected {
                id: id.to_string(),
                action,
            });
        }
        // The erased event's leaf must be in the tree before its content
        // goes: the tree is brought up to the head first, whatever the
        // AUDIT_INTEGRITY setting.
        let tree_size = extend_tree(&txn, tenant, tree_size, head, &[]).await?;
        let recorded_at = now_micros();
        let erased = target.clone().erased(recorded_at);
        erased.into_active_model().reset_all().update(&txn).await?;

        let deletion = NewEvent {
            actor_id: request.actor_id,
            actor_type: request.actor_type,
            action: DELETION_ACTION.to_owned(),
            resource_type: DELETION_RESOURCE_TYPE.to_owned(),
            resource_id: id.to_string(),
            outcome: crate::proto::Outcome::Success as i32,
            source: crate::SERVICE_NAME.to_owned(),
            reasoning: request.reason,
            metadata: Some(serde_json::json!({ "deleted_seq": target.seq })),
            ..NewEvent::default()
        };
        let event = deletion.into_model(tenant, head + 1, Uuid::now_v7(), recorded_at);
        let tree_size = extend_tree(&txn, tenant, tree_size, head + 1, std::slice::from_ref(&event)).await?;
        insert_events(&txn, vec![event.clone()]).await?;
        set_head(&txn, tenant, head + 1, tree_size).await?;
        announce(&txn, tenant, head + 1, head + 1).await?;
        txn.commit().await?;
        self.publish(Committed {
            tenant: tenant.clone(),
            first_seq: head + 1,
            last_seq: head + 1,
            events: vec![event.clone()],
        });
        Ok(Deletion {
            erased_id: id,
            erased_seq: target.seq,
            event,
        })
    }
}

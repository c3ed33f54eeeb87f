//! `Delete`: erasing one event's content while its seq and its leaf in the
//! Merkle tree stay, recorded by an event of its own.

use sea_orm::{ActiveModelTrait, ColumnTrait, IntoActiveModel, QueryFilter};
use uuid::Uuid;

use super::holds::ActiveHolds;
use super::policy::lock_policy_row;
use super::rollups::Tally;
use super::sequencer::{Head, lock_head};
use super::service_event::{ChangeRequest, SERVICE_ACTION_PREFIX, ServiceEvent, append_service_event};
use super::tree::extend_tree;
use super::{Store, StoreError, StoreResult, events_of, fetch_event, now_micros};
use crate::entity::{audit_event, retention_policy};
use crate::tenant::TenantId;

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

impl Store {
    /// Erases one live event's content, keeping its id and seq, and appends
    /// the `audit.event.deleted` event, in one transaction.
    /// [`StoreError::NotFound`] when the tenant has no live event `id`;
    /// refused, with nothing changed, for an event the service wrote itself
    /// ([`StoreError::Protected`]), one an active legal hold keeps
    /// ([`StoreError::LegalHold`]), and one younger than a locked retention
    /// period ([`StoreError::RetentionLocked`]).
    pub async fn delete(&self, tenant: &TenantId, id: Uuid, request: ChangeRequest) -> StoreResult<Deletion> {
        let (_writer, txn) = self.begin_write().await?;
        let Head {
            head_seq: head,
            tree_size,
        } = lock_head(&txn, tenant).await?;
        // After the head, as every holder of both takes them: a retention
        // batch erasing meanwhile has committed before the event is read.
        let policy = lock_policy_row(&txn, tenant).await?;
        let Some(target) =
            fetch_event(&txn, events_of(tenant).filter(audit_event::Column::Id.eq(id))).await?
        else {
            txn.rollback().await?;
            return Err(StoreError::event_not_found(id));
        };
        let now = now_micros();
        if let Some(refusal) = refusal(&txn, tenant, &target, policy.as_ref(), now).await? {
            txn.rollback().await?;
            return Err(refusal);
        }
        // The erased event's leaf must be in the tree before its content
        // goes: the tree is brought up to the head first, whatever the
        // AUDIT_INTEGRITY setting.
        let tree_size = extend_tree(&txn, tenant, tree_size, head, &[]).await?;
        let erased = target.clone().erased(now);
        erased.into_active_model().reset_all().update(&txn).await?;
        Tally::erased_event(&target).apply(&txn, tenant).await?;

        let event = append_service_event(
            &txn,
            tenant,
            Head {
                head_seq: head,
                tree_size,
            },
            ServiceEvent {
                by: &request,
                action: DELETION_ACTION,
                resource_type: DELETION_RESOURCE_TYPE,
                resource_id: id.to_string(),
                metadata: serde_json::json!({ "deleted_seq": target.seq }),
            },
        )
        .await?;
        txn.commit().await?;
        self.publish_one(&event);
        Ok(Deletion {
            erased_id: id,
            erased_seq: target.seq,
            event,
        })
    }
}

/// Why `target` may not be deleted, if it may not: the log's own record, a
/// legal hold, or a locked retention period it is still within.
async fn refusal(
    txn: &sea_orm::DatabaseTransaction,
    tenant: &TenantId,
    target: &audit_event::Model,
    policy: Option<&retention_policy::Model>,
    now: i64,
) -> StoreResult<Option<StoreError>> {
    let id = target.id.to_string();
    if let Some(action) = target
        .action
        .as_ref()
        .filter(|a| a.starts_with(SERVICE_ACTION_PREFIX))
    {
        return Ok(Some(StoreError::Protected {
            id,
            action: action.clone(),
        }));
    }
    let holds = ActiveHolds::load(txn, tenant).await?;
    if let Some(hold) = holds
        .holding(txn, tenant, &[target.seq])
        .await?
        .remove(&target.seq)
    {
        return Ok(Some(StoreError::LegalHold {
            id,
            hold_id: hold.to_string(),
        }));
    }
    if let Some(policy) = policy
        && policy.locked
        && let Some(period) = policy.period_secs
    {
        let age_secs = now.saturating_sub(target.recorded_at) / 1_000_000;
        if age_secs < period {
            return Ok(Some(StoreError::RetentionLocked {
                message: format!(
                    "event {id} was recorded {age_secs} s ago; the locked retention keeps every event for {period} s"
                ),
            }));
        }
    }
    Ok(None)
}

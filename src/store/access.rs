//! Access auditing: whether a tenant's reads are recorded, and the
//! `audit.log.read` events that record them.

use sea_orm::sea_query::OnConflict;
use sea_orm::{EntityTrait, IntoActiveModel};

use super::policy::LOG_RESOURCE_TYPE;
use super::sequencer::lock_head;
use super::service_event::{ChangeRequest, ServiceEvent, append_service_event};
use super::{NewEvent, Store, StoreResult, now_micros};
use crate::entity::{access_audit_setting, audit_event};
use crate::tenant::TenantId;

/// Action of the event that records a change of the access audit setting.
pub const ACCESS_AUDIT_SET_ACTION: &str = "audit.policy.access_audit.set";
/// Action of the events that record reads of a tenant's log.
pub const READ_ACTION: &str = "audit.log.read";

/// A tenant's access audit setting as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessAudit {
    /// Whether reads are recorded.
    pub enabled: bool,
    /// When it was last set, unix microseconds, and by whom; `None` when it
    /// never was (then it is off).
    pub updated: Option<(i64, String)>,
}

impl AccessAudit {
    fn of(row: Option<access_audit_setting::Model>) -> Self {
        row.map(|row| Self {
            enabled: row.enabled,
            updated: Some((row.updated_at, row.updated_by)),
        })
        .unwrap_or_default()
    }
}

/// A change of the setting and the policy event recording it.
#[derive(Debug, Clone)]
pub struct AccessAuditChange {
    /// The setting now in force.
    pub setting: AccessAudit,
    /// The `audit.policy.access_audit.set` event appended in the same
    /// transaction.
    pub event: audit_event::Model,
}

/// One read of a tenant's log, as its `audit.log.read` event records it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRead {
    /// The reader's id (the credential's subject).
    pub actor_id: String,
    /// The reader's kind (`audit.v1.ActorType`).
    pub actor_type: i32,
    /// What was read: the log (`audit.log`), or one event (`audit.event`).
    pub resource_type: &'static str,
    /// The tenant, or the event's id.
    pub resource_id: String,
    /// Whether it found what it asked for (`audit.v1.Outcome`).
    pub outcome: i32,
    /// The RPC's path, for example `/audit.v1.AuditService/Query`.
    pub request_path: String,
    /// The address the call came from, when known.
    pub client_ip: String,
    /// The caller's `user-agent`.
    pub user_agent: String,
    /// The RPC, its filter and how many events it returned (a JSON object).
    pub metadata: serde_json::Value,
}

impl LogRead {
    fn into_new_event(self) -> NewEvent {
        NewEvent {
            actor_id: self.actor_id,
            actor_type: self.actor_type,
            action: READ_ACTION.to_owned(),
            resource_type: self.resource_type.to_owned(),
            resource_id: self.resource_id,
            outcome: self.outcome,
            request_path: self.request_path,
            request_client_ip: self.client_ip,
            request_user_agent: self.user_agent,
            source: crate::SERVICE_NAME.to_owned(),
            metadata: Some(self.metadata),
            ..NewEvent::default()
        }
    }
}

impl Store {
    /// The tenant's access audit setting (off when never set).
    pub async fn access_audit(&self, tenant: &TenantId) -> StoreResult<AccessAudit> {
        let row = access_audit_setting::Entity::of_tenant(tenant)
            .one(self.reader())
            .await?;
        Ok(AccessAudit::of(row))
    }

    /// Turns the tenant's access auditing on or off and appends
    /// `audit.policy.access_audit.set`, in one transaction.
    pub async fn set_access_audit(
        &self,
        tenant: &TenantId,
        enabled: bool,
        request: &ChangeRequest,
    ) -> StoreResult<AccessAuditChange> {
        let (_writer, txn) = self.begin_write().await?;
        let head = lock_head(&txn, tenant).await?;
        let previous = AccessAudit::of(access_audit_setting::Entity::of_tenant(tenant).one(&txn).await?);
        let row = access_audit_setting::Model {
            tenant_id: tenant.clone(),
            enabled,
            updated_at: now_micros(),
            updated_by: request.actor_id.clone(),
        };
        access_audit_setting::Entity::insert(row.clone().into_active_model())
            .on_conflict(
                OnConflict::column(access_audit_setting::Column::TenantId)
                    .update_columns([
                        access_audit_setting::Column::Enabled,
                        access_audit_setting::Column::UpdatedAt,
                        access_audit_setting::Column::UpdatedBy,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        let event = append_service_event(
            &txn,
            tenant,
            head,
            ServiceEvent {
                by: request,
                action: ACCESS_AUDIT_SET_ACTION,
                resource_type: LOG_RESOURCE_TYPE,
                resource_id: tenant.to_string(),
                metadata: serde_json::json!({
                    "enabled": enabled,
                    "previous_enabled": previous.enabled,
                }),
            },
        )
        .await?;
        txn.commit().await?;
        self.publish_one(&event);
        Ok(AccessAuditChange {
            setting: AccessAudit::of(Some(row)),
            event,
        })
    }

    /// Appends the `audit.log.read` event recording `read` to the tenant's
    /// log, durably, before it returns. It goes the way of `Append`: it may
    /// share a group commit with the tenant's other appends and reads.
    pub async fn record_read(&self, tenant: &TenantId, read: LogRead) -> StoreResult<()> {
        self.append(tenant, vec![read.into_new_event()]).await?;
        Ok(())
    }
}

//! Legal holds: filters whose matching events neither retention nor
//! `Delete` may erase while the hold is active. A hold matches what `Query`
//! with its filter returns: the same compiled condition, evaluated by the
//! database.

use std::collections::HashMap;

use prost::Message as _;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::policy::lock_policy_row;
use super::sequencer::lock_head;
use super::service_event::{ChangeRequest, ServiceEvent, append_service_event};
use super::{Store, StoreError, StoreResult, events_of, now_micros};
use crate::convert::filter_to_json;
use crate::entity::{audit_event, legal_hold};
use crate::filter::EventMatcher;
use crate::proto::EventFilter;
use crate::tenant::TenantId;

/// Most holds one tenant may have active at once: each is evaluated by
/// every retention batch and every `Delete`.
pub const MAX_ACTIVE_HOLDS: u64 = 100;
/// Most released holds `ListLegalHolds` returns.
pub const MAX_RELEASED_LISTED: u64 = 1000;
/// Action of the event that records a new hold.
pub const HOLD_CREATED_ACTION: &str = "audit.policy.legal_hold.created";
/// Action of the event that records a released hold.
pub const HOLD_RELEASED_ACTION: &str = "audit.policy.legal_hold.released";
/// Resource type the hold events name a hold with.
pub const HOLD_RESOURCE_TYPE: &str = "audit.legal_hold";

/// A hold as stored, with its filter decoded.
#[derive(Debug, Clone)]
pub struct LegalHold {
    /// The stored row.
    pub row: legal_hold::Model,
    /// Its filter.
    pub filter: EventFilter,
}

/// A created or released hold and the policy event recording it.
#[derive(Debug, Clone)]
pub struct HoldChange {
    /// The hold after the change.
    pub hold: LegalHold,
    /// The `audit.policy.legal_hold.*` event appended in the same transaction.
    pub event: audit_event::Model,
}

/// The active holds of a tenant, compiled.
pub(super) struct ActiveHolds {
    holds: Vec<(Uuid, EventMatcher)>,
}

impl ActiveHolds {
    /// The tenant's active holds. A stored filter that no longer compiles
    /// is corrupt storage: nothing is erased past it.
    pub(super) async fn load<C: ConnectionTrait>(conn: &C, tenant: &TenantId) -> StoreResult<Self> {
        let rows = legal_hold::Entity::of_tenant(tenant)
            .filter(legal_hold::Column::ReleasedAt.is_null())
            .order_by_asc(legal_hold::Column::Id)
            .all(conn)
            .await?;
        let holds = rows
            .into_iter()
            .map(|row| {
                let matcher = decode_filter(tenant, &row).and_then(|filter| {
                    EventMatcher::new(&filter, "filter").map_err(|e| corrupt(tenant, &row, e))
                })?;
                Ok((row.id, matcher))
            })
            .collect::<StoreResult<_>>()?;
        Ok(Self { holds })
    }

    /// Which of the live events `seqs` a hold keeps, and the first hold (by
    /// id) keeping each: the holds' conditions evaluated by the database as
    /// `Query` evaluates them, one statement per hold (a statement with
    /// all of them could pass the databases' limits on bound parameters:
    /// one filter alone binds up to a few thousand values).
    pub(super) async fn holding<C: ConnectionTrait>(
        &self,
        conn: &C,
        tenant: &TenantId,
        seqs: &[i64],
    ) -> StoreResult<HashMap<i64, Uuid>> {
        let mut held = HashMap::new();
        let mut unheld: Vec<i64> = seqs.to_vec();
        let backend = conn.get_database_backend();
        for (id, matcher) in &self.holds {
            if unheld.is_empty() {
                break;
            }
            let kept: Vec<i64> = events_of(tenant)
                .select_only()
                .column(audit_event::Column::Seq)
                .filter(audit_event::Column::Seq.is_in(unheld.iter().copied()))
                .filter(matcher.condition(backend))
                .into_tuple()
                .all(conn)
                .await?;
            for seq in kept {
                held.insert(seq, *id);
            }
            unheld.retain(|seq| !held.contains_key(seq));
        }
        Ok(held)
    }
}

fn decode_filter(tenant: &TenantId, row: &legal_hold::Model) -> StoreResult<EventFilter> {
    EventFilter::decode(row.filter.as_slice()).map_err(|e| corrupt(tenant, row, e))
}

fn corrupt(tenant: &TenantId, row: &legal_hold::Model, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        tenant: tenant.clone(),
        what: format!(
            "legal hold {} has a filter that does not compile: {error}",
            row.id
        ),
    }
}

fn hold_not_found(id: Uuid) -> StoreError {
    StoreError::NotFound {
        kind: "legal hold",
        id: id.to_string(),
    }
}

impl Store {
    /// Creates a hold on the events `filter` matches (a filter the caller
    /// validated) and appends `audit.policy.legal_hold.created`, in one
    /// transaction. [`StoreError::TooManyHolds`] past [`MAX_ACTIVE_HOLDS`].
    pub async fn create_hold(
        &self,
        tenant: &TenantId,
        filter: &EventFilter,
        request: &ChangeRequest,
    ) -> StoreResult<HoldChange> {
        let (_writer, txn) = self.begin_write().await?;
        let head = lock_head(&txn, tenant).await?;
        // No retention batch runs while the holds change.
        lock_policy_row(&txn, tenant).await?;
        let active = legal_hold::Entity::of_tenant(tenant)
            .filter(legal_hold::Column::ReleasedAt.is_null())
            .count(&txn)
            .await?;
        if active >= MAX_ACTIVE_HOLDS {
            txn.rollback().await?;
            return Err(StoreError::TooManyHolds {
                max: MAX_ACTIVE_HOLDS,
            });
        }
        let row = legal_hold::Model {
            tenant_id: tenant.clone(),
            id: Uuid::now_v7(),
            filter: filter.encode_to_vec(),
            reason: request.reason.clone(),
            created_at: now_micros(),
            created_by: request.actor_id.clone(),
            released_at: None,
            released_by: None,
            release_reason: None,
        };
        legal_hold::Entity::insert(row.clone().into_active_model())
            .exec_without_returning(&txn)
            .await?;
        let event = append_service_event(
            &txn,
            tenant,
            head,
            ServiceEvent {
                by: request,
                action: HOLD_CREATED_ACTION,
                resource_type: HOLD_RESOURCE_TYPE,
                resource_id: row.id.to_string(),
                metadata: serde_json::json!({ "filter": filter_to_json(filter) }),
            },
        )
        .await?;
        txn.commit().await?;
        self.publish_one(&event);
        Ok(HoldChange {
            hold: LegalHold {
                row,
                filter: filter.clone(),
            },
            event,
        })
    }

    /// The tenant's active holds, oldest first, then, when
    /// `include_released`, the [`MAX_RELEASED_LISTED`] most recently
    /// released.
    pub async fn list_holds(&self, tenant: &TenantId, include_released: bool) -> StoreResult<Vec<LegalHold>> {
        let reads = self.reader();
        let mut rows = legal_hold::Entity::of_tenant(tenant)
            .filter(legal_hold::Column::ReleasedAt.is_null())
            .order_by_asc(legal_hold::Column::Id)
            .all(reads)
            .await?;
        if include_released {
            rows.extend(
                legal_hold::Entity::of_tenant(tenant)
                    .filter(legal_hold::Column::ReleasedAt.is_not_null())
                    .order_by_desc(legal_hold::Column::ReleasedAt)
                    .order_by_desc(legal_hold::Column::Id)
                    .limit(MAX_RELEASED_LISTED)
                    .all(reads)
                    .await?,
            );
        }
        rows.into_iter()
            .map(|row| {
                let filter = decode_filter(tenant, &row)?;
                Ok(LegalHold { row, filter })
            })
            .collect()
    }

    /// Releases the active hold `id` and appends
    /// `audit.policy.legal_hold.released`, in one transaction; the retention
    /// task looks at the whole log again on its next run, so what the hold
    /// kept and is due goes then.
    pub async fn release_hold(
        &self,
        tenant: &TenantId,
        id: Uuid,
        request: &ChangeRequest,
    ) -> StoreResult<HoldChange> {
        let (_writer, txn) = self.begin_write().await?;
        let head = lock_head(&txn, tenant).await?;
        // No retention batch runs while the holds change.
        lock_policy_row(&txn, tenant).await?;
        let Some(row) = legal_hold::Entity::of_tenant(tenant)
            .filter(legal_hold::Column::Id.eq(id))
            .one(&txn)
            .await?
        else {
            txn.rollback().await?;
            return Err(hold_not_found(id));
        };
        if row.released_at.is_some() {
            txn.rollback().await?;
            return Err(StoreError::HoldReleased { id: id.to_string() });
        }
        let filter = decode_filter(tenant, &row)?;
        let released = legal_hold::Model {
            released_at: Some(now_micros()),
            released_by: Some(request.actor_id.clone()),
            release_reason: Some(request.reason.clone()),
            ..row
        };
        released
            .clone()
            .into_active_model()
            .reset_all()
            .update(&txn)
            .await?;
        super::retention::rescan_from_start(&txn, tenant).await?;
        let event = append_service_event(
            &txn,
            tenant,
            head,
            ServiceEvent {
                by: request,
                action: HOLD_RELEASED_ACTION,
                resource_type: HOLD_RESOURCE_TYPE,
                resource_id: id.to_string(),
                metadata: serde_json::json!({
                    "filter": filter_to_json(&filter),
                    "created_by": released.created_by,
                    "hold_reason": released.reason,
                }),
            },
        )
        .await?;
        txn.commit().await?;
        self.publish_one(&event);
        Ok(HoldChange {
            hold: LegalHold {
                row: released,
                filter,
            },
            event,
        })
    }
}

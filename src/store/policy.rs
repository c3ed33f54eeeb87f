//! A tenant's retention policy: how long its events are kept, and whether
//! that period is locked (it then only grows).

use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, DatabaseTransaction, EntityTrait, IntoActiveModel, QuerySelect};

use super::sequencer::lock_head;
use super::service_event::{ChangeRequest, ServiceEvent, append_service_event};
use super::{Store, StoreError, StoreResult, now_micros};
use crate::entity::{audit_event, retention_policy};
use crate::tenant::TenantId;

/// Action of the event that records a change of the retention policy.
pub const RETENTION_SET_ACTION: &str = "audit.policy.retention.set";
/// Action of the event that records the call that locked the retention.
pub const RETENTION_LOCKED_ACTION: &str = "audit.policy.retention.locked";
/// Resource type the policy events name the tenant's log with.
pub const LOG_RESOURCE_TYPE: &str = "audit.log";

/// A tenant's retention as its administrators set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Events older than this many seconds are erased; `None` keeps them.
    pub period_secs: Option<i64>,
    /// Whether the period is locked.
    pub locked: bool,
}

/// The tenant's policy as stored: what it is, and when and by whom it was
/// last set (`None` when it never was).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// The period and lock.
    pub retention: Retention,
    /// When it was last set, unix microseconds, and by whom.
    pub updated: Option<(i64, String)>,
}

impl RetentionPolicy {
    fn of(row: Option<retention_policy::Model>) -> Self {
        row.map(|row| Self {
            retention: Retention {
                period_secs: row.period_secs,
                locked: row.locked,
            },
            updated: Some((row.updated_at, row.updated_by)),
        })
        .unwrap_or_default()
    }
}

/// A retention change and the policy event recording it.
#[derive(Debug, Clone)]
pub struct RetentionChange {
    /// The policy now in force.
    pub policy: RetentionPolicy,
    /// The `audit.policy.retention.*` event appended in the same transaction.
    pub event: audit_event::Model,
}

impl Retention {
    /// Why `next` may not replace `self`, if it may not: a locked period
    /// only grows, stays set and stays locked.
    pub fn refuses(&self, next: &Retention) -> Option<String> {
        if !self.locked {
            return None;
        }
        let current = self.period_secs.unwrap_or(i64::MAX);
        if !next.locked {
            return Some("the retention is locked and cannot be unlocked".into());
        }
        match next.period_secs {
            None => Some("the retention is locked and cannot be unset".into()),
            Some(period) if period < current => Some(format!(
                "the retention is locked at {current} s and cannot be shortened to {period} s"
            )),
            Some(_) => None,
        }
    }
}

/// The tenant's policy row, read in `conn` (a transaction holding the
/// tenant's head lock, or the read pool).
pub(super) async fn policy_row<C: ConnectionTrait>(
    conn: &C,
    tenant: &TenantId,
) -> StoreResult<Option<retention_policy::Model>> {
    Ok(retention_policy::Entity::of_tenant(tenant).one(conn).await?)
}

/// The tenant's policy row, locked until `txn` ends (`FOR UPDATE` on
/// PostgreSQL; SQLite's single writer serializes by itself). Retention
/// batches erase holding this lock and not the head's, so `Append` never
/// waits for them; `Delete` and hold changes take it after the head's (the
/// one order every holder of both keeps), so neither runs beside a batch
/// that could erase what it looks at.
pub(super) async fn lock_policy_row(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
) -> StoreResult<Option<retention_policy::Model>> {
    Ok(retention_policy::Entity::of_tenant(tenant)
        .lock_exclusive()
        .one(txn)
        .await?)
}

impl Store {
    /// The tenant's retention policy.
    pub async fn retention(&self, tenant: &TenantId) -> StoreResult<RetentionPolicy> {
        Ok(RetentionPolicy::of(policy_row(self.reader(), tenant).await?))
    }

    /// Sets the tenant's retention and appends `audit.policy.retention.set`
    /// (`…locked` when this call locks it), in one transaction;
    /// [`StoreError::RetentionLocked`] when a locked period would shrink,
    /// be unset or be unlocked.
    pub async fn set_retention(
        &self,
        tenant: &TenantId,
        next: Retention,
        request: &ChangeRequest,
    ) -> StoreResult<RetentionChange> {
        let (_writer, txn) = self.begin_write().await?;
        let head = lock_head(&txn, tenant).await?;
        let row = policy_row(&txn, tenant).await?;
        let current = RetentionPolicy::of(row.clone()).retention;
        if let Some(why) = current.refuses(&next) {
            txn.rollback().await?;
            return Err(StoreError::RetentionLocked { message: why });
        }
        let updated_at = now_micros();
        let row = retention_policy::Model {
            tenant_id: tenant.clone(),
            period_secs: next.period_secs,
            locked: next.locked,
            updated_at,
            updated_by: request.actor_id.clone(),
            ..row.unwrap_or(retention_policy::Model {
                tenant_id: tenant.clone(),
                period_secs: None,
                locked: false,
                updated_at,
                updated_by: String::new(),
                scanned_through: 0,
                run_first_seq: None,
                run_last_seq: None,
                run_erased: 0,
            })
        };
        retention_policy::Entity::insert(row.clone().into_active_model())
            .on_conflict(
                OnConflict::column(retention_policy::Column::TenantId)
                    .update_columns([
                        retention_policy::Column::PeriodSecs,
                        retention_policy::Column::Locked,
                        retention_policy::Column::UpdatedAt,
                        retention_policy::Column::UpdatedBy,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        let action = if next.locked && !current.locked {
            RETENTION_LOCKED_ACTION
        } else {
            RETENTION_SET_ACTION
        };
        let event = append_service_event(
            &txn,
            tenant,
            head,
            ServiceEvent {
                by: request,
                action,
                resource_type: LOG_RESOURCE_TYPE,
                resource_id: tenant.to_string(),
                metadata: serde_json::json!({
                    "period_seconds": next.period_secs,
                    "locked": next.locked,
                    "previous_period_seconds": current.period_secs,
                    "previous_locked": current.locked,
                }),
            },
        )
        .await?;
        txn.commit().await?;
        self.publish_one(&event);
        Ok(RetentionChange {
            policy: RetentionPolicy::of(Some(row)),
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locked(period: i64) -> Retention {
        Retention {
            period_secs: Some(period),
            locked: true,
        }
    }

    #[test]
    fn an_unlocked_retention_takes_anything() {
        let current = Retention {
            period_secs: Some(100),
            locked: false,
        };
        for next in [Retention::default(), locked(1), locked(1000)] {
            assert_eq!(current.refuses(&next), None);
        }
    }

    #[test]
    fn a_locked_retention_only_grows_and_stays_locked() {
        let current = locked(100);
        assert_eq!(current.refuses(&locked(100)), None);
        assert_eq!(current.refuses(&locked(101)), None);
        assert!(current.refuses(&locked(99)).unwrap().contains("shortened"));
        let unset = Retention {
            period_secs: None,
            locked: true,
        };
        assert!(current.refuses(&unset).unwrap().contains("unset"));
        let unlocked = Retention {
            period_secs: Some(1000),
            locked: false,
        };
        assert!(current.refuses(&unlocked).unwrap().contains("unlocked"));
    }
}

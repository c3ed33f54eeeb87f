//! What every read is built from: the tenant's live events as the start of
//! each query, rows decoded by position, and the deadline a read runs under.

use std::time::Duration;

use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, DbErr, QueryFilter, QuerySelect, QueryTrait, Select};

use super::{StoreError, StoreResult, TenantScope};
use crate::entity::audit_event;
use crate::tenant::TenantId;

/// How long one read (a query page, stats, filter metadata) may run before
/// it fails with DEADLINE_EXCEEDED; on PostgreSQL also its
/// `statement_timeout`, so the database stops working on it too.
pub const READ_DEADLINE: Duration = Duration::from_secs(10);

/// The tenant's live (not erased) events: the start of every read.
pub fn events_of(tenant: &TenantId) -> Select<audit_event::Entity> {
    audit_event::Entity::of_tenant(tenant).filter(audit_event::Column::DeletedAt.is_null())
}

/// The live events of the tenants `scope` names: [`events_of`] one tenant,
/// or every registered tenant's (a partner's) for a platform read.
pub fn events_in(scope: &TenantScope) -> Select<audit_event::Entity> {
    match scope {
        TenantScope::One(tenant) => events_of(tenant),
        TenantScope::Platform { partner } => audit_event::Entity::of_registered_tenants(partner.as_ref())
            .filter(audit_event::Column::DeletedAt.is_null()),
    }
}

/// [`events_in`], for a read in `recorded_at` order across every
/// registered tenant: written so that the database may walk the time index
/// ([`audit_event::Entity::of_registered_tenants_by_time`]). A partner's
/// tenants (a few) are read as [`events_in`] does.
pub fn events_by_time_in(scope: &TenantScope, backend: DbBackend) -> Select<audit_event::Entity> {
    match scope {
        TenantScope::Platform { partner: None } => {
            audit_event::Entity::of_registered_tenants_by_time(None, backend)
                .filter(audit_event::Column::DeletedAt.is_null())
        }
        _ => events_in(scope),
    }
}

/// The events `select` (an `audit_event::Entity::find()`, every column)
/// reads, decoded by position ([`audit_event::Model::from_row`]).
pub(super) async fn fetch_events<C: ConnectionTrait>(
    conn: &C,
    select: Select<audit_event::Entity>,
) -> Result<Vec<audit_event::Model>, DbErr> {
    let statement = select.build(conn.get_database_backend());
    let rows = conn.query_all_raw(statement).await?;
    rows.iter().map(audit_event::Model::from_row).collect()
}

/// The first event `select` reads, as [`fetch_events`].
pub(super) async fn fetch_event<C: ConnectionTrait>(
    conn: &C,
    select: Select<audit_event::Entity>,
) -> Result<Option<audit_event::Model>, DbErr> {
    let statement = select.limit(1).build(conn.get_database_backend());
    match conn.query_one_raw(statement).await? {
        Some(row) => audit_event::Model::from_row(&row).map(Some),
        None => Ok(None),
    }
}

/// Runs a read, failing with [`StoreError::ReadTimedOut`] once it has
/// taken [`READ_DEADLINE`].
pub(super) async fn within_deadline<T, E: Into<StoreError>>(
    read: impl Future<Output = Result<T, E>>,
) -> StoreResult<T> {
    match tokio::time::timeout(READ_DEADLINE, read).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(StoreError::ReadTimedOut {
            seconds: READ_DEADLINE.as_secs(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::QueryOrder;

    use super::*;
    use crate::config::DatabaseConfig;
    use crate::store::{ChangeRequest, NewEvent, Store};

    #[tokio::test]
    async fn decoding_by_position_reads_what_decoding_by_name_reads() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
        let store = Store::connect(&DatabaseConfig::new(url)).await.unwrap();
        let tenant = TenantId::parse("acme", "tenant").unwrap();
        // Every column holds a value no other column of its type holds, so
        // a decoder reading the wrong position cannot pass.
        let event = |action: &str| NewEvent {
            occurred_at: Some(1_700_000_000_123_456),
            actor_id: "user-1".into(),
            actor_type: 1,
            actor_name: "Ada".into(),
            actor_email: "ada@example.com".into(),
            action: action.into(),
            resource_type: "document".into(),
            resource_id: "doc-7".into(),
            resource_name: "Plan".into(),
            outcome: 2,
            request_method: "POST".into(),
            request_path: "/docs/7".into(),
            request_status_code: 403,
            request_client_ip: "203.0.113.9".into(),
            request_user_agent: "curl/8".into(),
            request_id: "req-1".into(),
            request_client_identity: "spiffe://example.org/billing".into(),
            source: "billing".into(),
            reasoning: "because".into(),
            metadata: Some(serde_json::json!({"attempt": 2, "tags": ["a", null, 1.5]})),
            idempotency_key: Some(format!("key-{action}")),
        };
        let outcomes = store
            .append(&tenant, vec![event("user.login"), event("user.logout")])
            .await
            .unwrap();
        let request = ChangeRequest {
            actor_id: "admin".into(),
            actor_type: 1,
            reason: "test".into(),
            client_identity: None,
        };
        let erased = store.delete(&tenant, outcomes[0].id, request).await.unwrap();
        assert_eq!(erased.erased_id, outcomes[0].id);

        let all =
            || <audit_event::Entity as sea_orm::EntityTrait>::find().order_by_asc(audit_event::Column::Seq);
        let by_name = all().all(store.connection()).await.unwrap();
        let by_position = fetch_events(store.connection(), all()).await.unwrap();
        assert_eq!(by_name.len(), 3, "two events and the deletion event");
        assert!(by_name[0].deleted_at.is_some() && by_name[0].action.is_none());
        assert_eq!(by_position, by_name);
        let first = fetch_event(store.connection(), all()).await.unwrap();
        assert_eq!(first.as_ref(), by_name.first());
    }
}

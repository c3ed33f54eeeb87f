//! The `audit.v1.PolicyService` handlers: the tenant's retention policy,
//! legal holds and access auditing. Every change is recorded in the tenant's log by the store,
//! in the transaction that makes it.

use prost::Message as _;
use prost_types::Duration;
use tonic::{Request, Response, Status};

use super::validate::{MAX_REASONING, Violations};
use crate::auth::{CallerIdentity, Scope, caller};
use crate::convert::{event_to_proto, micros_to_timestamp};
use crate::error::Error;
use crate::filter::EventMatcher;
use crate::proto::{
    AccessAuditPolicy, CreateLegalHoldRequest, CreateLegalHoldResponse, GetAccessAuditRequest,
    GetRetentionRequest, LegalHold, ListLegalHoldsRequest, ListLegalHoldsResponse, ReleaseLegalHoldRequest,
    ReleaseLegalHoldResponse, RetentionPolicy, SetAccessAuditRequest, SetAccessAuditResponse,
    SetRetentionRequest, SetRetentionResponse,
};
use crate::store::{self, ChangeRequest, Retention, Store};
use crate::tls::peer_identity;
use crate::wire::server::policy_service_server::PolicyService;

/// Largest legal hold filter, protobuf-encoded: the hold's record in the
/// log carries it, and events are at most 64 KiB of metadata.
pub const MAX_HOLD_FILTER_BYTES: usize = 16 * 1024;
/// Longest retention period: 100 years.
pub const MAX_RETENTION_SECS: i64 = 100 * 366 * 24 * 3600;

/// The PolicyService implementation.
#[derive(Clone)]
pub struct PolicyApi {
    store: Store,
}

impl PolicyApi {
    /// Handlers over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// The change request of `caller`, calling from the workload
/// `client_identity` (mTLS), with a `reason` that may be `required`.
fn change_request(
    caller: &CallerIdentity,
    client_identity: Option<String>,
    reason: String,
    required: bool,
) -> Result<ChangeRequest, Error> {
    let mut violations = Violations::default();
    if required && reason.trim().is_empty() {
        violations.add("reason", "is required");
    }
    violations.text(|| "reason".to_owned(), &reason, MAX_REASONING);
    violations.finish()?;
    Ok(ChangeRequest {
        actor_id: caller.subject.clone(),
        actor_type: caller.actor_type() as i32,
        reason,
        client_identity,
    })
}

/// The requested retention: whole seconds from 1 s to 100 years; a locked
/// retention needs a period.
fn retention(request: &SetRetentionRequest) -> Result<Retention, Error> {
    let period_secs = match &request.period {
        None => None,
        Some(Duration { seconds, nanos }) => {
            if *nanos != 0 || *seconds < 1 || *seconds > MAX_RETENTION_SECS {
                return Err(Error::invalid(
                    "period",
                    format!("must be whole seconds from 1 s to {MAX_RETENTION_SECS} s (100 years)"),
                ));
            }
            Some(*seconds)
        }
    };
    if request.locked && period_secs.is_none() {
        return Err(Error::invalid(
            "period",
            "is required to lock the retention (a locked retention only grows)",
        ));
    }
    Ok(Retention {
        period_secs,
        locked: request.locked,
    })
}

fn policy_to_proto(policy: store::RetentionPolicy) -> RetentionPolicy {
    let (update_time, updated_by) = match policy.updated {
        Some((at, by)) => (Some(micros_to_timestamp(at)), by),
        None => (None, String::new()),
    };
    RetentionPolicy {
        period: policy
            .retention
            .period_secs
            .map(|seconds| Duration { seconds, nanos: 0 }),
        locked: policy.retention.locked,
        update_time,
        updated_by,
    }
}

fn access_audit_to_proto(setting: store::AccessAudit) -> AccessAuditPolicy {
    let (update_time, updated_by) = match setting.updated {
        Some((at, by)) => (Some(micros_to_timestamp(at)), by),
        None => (None, String::new()),
    };
    AccessAuditPolicy {
        enabled: setting.enabled,
        update_time,
        updated_by,
    }
}

fn hold_to_proto(hold: store::LegalHold) -> LegalHold {
    let row = hold.row;
    LegalHold {
        id: row.id.to_string(),
        filter: Some(hold.filter),
        reason: row.reason,
        create_time: Some(micros_to_timestamp(row.created_at)),
        created_by: row.created_by,
        release_time: row.released_at.map(micros_to_timestamp),
        released_by: row.released_by.unwrap_or_default(),
        release_reason: row.release_reason.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    async fn get_retention(
        &self,
        request: Request<GetRetentionRequest>,
    ) -> Result<Response<RetentionPolicy>, Status> {
        let caller = caller(&request, Scope::Admin)?;
        let policy = self.store.retention(&caller.tenant).await?;
        Ok(Response::new(policy_to_proto(policy)))
    }

    async fn set_retention(
        &self,
        request: Request<SetRetentionRequest>,
    ) -> Result<Response<SetRetentionResponse>, Status> {
        let caller = caller(&request, Scope::Admin)?;
        let client_identity = peer_identity(&request);
        let request = request.into_inner();
        let next = retention(&request)?;
        let change = change_request(&caller, client_identity, request.reason, false)?;
        let changed = self.store.set_retention(&caller.tenant, next, &change).await?;
        Ok(Response::new(SetRetentionResponse {
            retention: Some(policy_to_proto(changed.policy)),
            policy_event: Some(event_to_proto(changed.event)),
        }))
    }

    async fn create_legal_hold(
        &self,
        request: Request<CreateLegalHoldRequest>,
    ) -> Result<Response<CreateLegalHoldResponse>, Status> {
        let caller = caller(&request, Scope::Admin)?;
        let client_identity = peer_identity(&request);
        let request = request.into_inner();
        let filter = request.filter.unwrap_or_default();
        let matched = if filter.encoded_len() > MAX_HOLD_FILTER_BYTES {
            Err(Error::invalid(
                "filter",
                format!("must be at most {MAX_HOLD_FILTER_BYTES} bytes encoded (it is recorded in the log)"),
            ))
        } else {
            EventMatcher::new(&filter, "filter").and_then(|m| m.decidable_in_memory("filter"))
        };
        let change = change_request(&caller, client_identity, request.reason, true);
        let (_, change) = super::validate::both(matched, change)?;
        let created = self.store.create_hold(&caller.tenant, &filter, &change).await?;
        Ok(Response::new(CreateLegalHoldResponse {
            hold: Some(hold_to_proto(created.hold)),
            policy_event: Some(event_to_proto(created.event)),
        }))
    }

    async fn list_legal_holds(
        &self,
        request: Request<ListLegalHoldsRequest>,
    ) -> Result<Response<ListLegalHoldsResponse>, Status> {
        let caller = caller(&request, Scope::Admin)?;
        let holds = self
            .store
            .list_holds(&caller.tenant, request.get_ref().include_released)
            .await?;
        Ok(Response::new(ListLegalHoldsResponse {
            holds: holds.into_iter().map(hold_to_proto).collect(),
        }))
    }

    async fn release_legal_hold(
        &self,
        request: Request<ReleaseLegalHoldRequest>,
    ) -> Result<Response<ReleaseLegalHoldResponse>, Status> {
        let caller = caller(&request, Scope::Admin)?;
        let client_identity = peer_identity(&request);
        let request = request.into_inner();
        let id = match request.id.as_str() {
            "" => Err(Error::invalid("id", "is required")),
            id => uuid::Uuid::parse_str(id)
                .map_err(|_| Error::invalid("id", "must be a legal hold id (a UUID)")),
        };
        let change = change_request(&caller, client_identity, request.reason, true);
        let (id, change) = super::validate::both(id, change)?;
        let released = self.store.release_hold(&caller.tenant, id, &change).await?;
        Ok(Response::new(ReleaseLegalHoldResponse {
            hold: Some(hold_to_proto(released.hold)),
            policy_event: Some(event_to_proto(released.event)),
        }))
    }

    async fn get_access_audit(
        &self,
        request: Request<GetAccessAuditRequest>,
    ) -> Result<Response<AccessAuditPolicy>, Status> {
        let caller = caller(&request, Scope::Admin)?;
        let setting = self.store.access_audit(&caller.tenant).await?;
        Ok(Response::new(access_audit_to_proto(setting)))
    }

    async fn set_access_audit(
        &self,
        request: Request<SetAccessAuditRequest>,
    ) -> Result<Response<SetAccessAuditResponse>, Status> {
        let caller = caller(&request, Scope::Admin)?;
        let client_identity = peer_identity(&request);
        let request = request.into_inner();
        let change = change_request(&caller, client_identity, request.reason, false)?;
        let changed = self
            .store
            .set_access_audit(&caller.tenant, request.enabled, &change)
            .await?;
        Ok(Response::new(SetAccessAuditResponse {
            access_audit: Some(access_audit_to_proto(changed.setting)),
            policy_event: Some(event_to_proto(changed.event)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(seconds: Option<i64>, nanos: i32, locked: bool) -> SetRetentionRequest {
        SetRetentionRequest {
            period: seconds.map(|seconds| Duration { seconds, nanos }),
            locked,
            reason: String::new(),
        }
    }

    #[test]
    fn retention_periods_are_whole_seconds_within_bounds() {
        assert_eq!(
            retention(&request(Some(86_400), 0, true)).unwrap().period_secs,
            Some(86_400)
        );
        assert_eq!(retention(&request(None, 0, false)).unwrap().period_secs, None);
        for bad in [
            request(Some(0), 0, false),
            request(Some(-5), 0, false),
            request(Some(10), 5, false),
        ] {
            assert!(retention(&bad).is_err(), "{bad:?}");
        }
        assert!(retention(&request(Some(MAX_RETENTION_SECS + 1), 0, false)).is_err());
    }

    #[test]
    fn locking_needs_a_period() {
        assert!(retention(&request(None, 0, true)).is_err());
    }
}

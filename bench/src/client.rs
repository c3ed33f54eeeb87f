//! Callers of the service (HS256 bearer tokens: the data scopes for
//! AuditService, `audit:admin` for PolicyService) and the events the bench
//! writes, as Append inputs and as the rows the service stores for them
//! (for the raw-INSERT baseline).

use std::time::Duration;

use anyhow::Context;
use audit_service::convert::{struct_to_json, timestamp_to_micros};
use audit_service::entity::audit_event;
use audit_service::proto::audit_service_client::AuditServiceClient;
use audit_service::proto::policy_service_client::PolicyServiceClient;
use audit_service::proto::{self, EventInput};
use prost_types::{Struct, Value, value::Kind};
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::server::JWT_SECRET;

/// Distinct actor ids among the bench's events (a selective filter picks one).
pub const ACTORS: u64 = 1000;
/// Start of the day the bench's events occur on (2026-11-22T00:00:00Z), unix µs.
pub const DAY_START_MICROS: i64 = 1_795_305_600_000_000;
/// One day in microseconds.
pub const DAY_MICROS: i64 = 86_400_000_000;

const ACTIONS: [&str; 6] = [
    "user.login",
    "user.logout",
    "document.read",
    "document.update",
    "api_key.create",
    "role.grant",
];

/// Opens a connection to the service.
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// The metadata that makes a call one of `tenant`'s, with a bearer token
/// granting some scopes.
#[derive(Clone)]
struct Credentials {
    tenant: MetadataValue<tonic::metadata::Ascii>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
}

impl Credentials {
    /// A token of `tenant` granting `scopes` (space-separated), valid for a day.
    fn new(tenant: &str, scopes: &str) -> anyhow::Result<Self> {
        Ok(Self {
            tenant: tenant.parse().context("tenant id as metadata")?,
            authorization: bearer(serde_json::json!({
                "sub": "audit-bench",
                "tenant_id": tenant,
                "scope": scopes,
            }))?,
        })
    }

    /// A platform token (`platform: true`, no tenant) granting `scopes`,
    /// sent with `x-tenant-id: *`, valid for a day.
    fn platform(scopes: &str) -> anyhow::Result<Self> {
        Ok(Self {
            tenant: MetadataValue::from_static("*"),
            authorization: bearer(serde_json::json!({
                "sub": "audit-bench-platform",
                "platform": true,
                "scope": scopes,
            }))?,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert("x-tenant-id", self.tenant.clone());
        metadata.insert("authorization", self.authorization.clone());
        request
    }
}

/// `Bearer <token>` of `claims` (an object) with an `exp` a day from now,
/// signed HS256 with the bench's secret.
fn bearer(mut claims: serde_json::Value) -> anyhow::Result<MetadataValue<tonic::metadata::Ascii>> {
    claims["exp"] = serde_json::json!(chrono::Utc::now().timestamp() + 24 * 3600);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )?;
    format!("Bearer {token}").parse().context("token as metadata")
}

/// A client acting for one tenant with every data scope (read, append,
/// write).
#[derive(Clone)]
pub struct Caller {
    pub client: AuditServiceClient<Channel>,
    credentials: Credentials,
}

impl Caller {
    /// A caller of `tenant` on `channel`.
    pub fn new(channel: Channel, tenant: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: AuditServiceClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024),
            credentials: Credentials::new(tenant, "audit:read audit:append audit:write")?,
        })
    }

    /// A platform administrator reading every tenant (`x-tenant-id: *`).
    pub fn platform(channel: Channel) -> anyhow::Result<Self> {
        Ok(Self {
            client: AuditServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
            credentials: Credentials::platform("audit:admin audit:read")?,
        })
    }

    /// `message` with the tenant and credential metadata.
    pub fn request<T>(&self, message: T) -> Request<T> {
        self.credentials.request(message)
    }

    /// Appends `events`; returns the (id, seq) of each.
    pub async fn append(&mut self, events: Vec<EventInput>) -> anyhow::Result<Vec<(String, u64)>> {
        let request = self.request(proto::AppendRequest { events });
        let response = self.client.append(request).await.context("Append")?;
        Ok(response
            .into_inner()
            .results
            .into_iter()
            .map(|r| (r.id, r.seq))
            .collect())
    }
}

/// A tenant's administrator: PolicyService calls with the scope
/// `audit:admin` (and no other).
pub struct Administrator {
    client: PolicyServiceClient<Channel>,
    credentials: Credentials,
}

impl Administrator {
    /// An administrator of `tenant` on `channel`.
    pub fn new(channel: Channel, tenant: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: PolicyServiceClient::new(channel),
            credentials: Credentials::new(tenant, "audit:admin")?,
        })
    }

    /// Sets the tenant's retention period, unlocked (`None`: keep events
    /// forever).
    pub async fn set_retention(&mut self, period: Option<Duration>, reason: &str) -> anyhow::Result<()> {
        let period = period
            .map(|p| prost_types::Duration::try_from(p).context("retention period"))
            .transpose()?;
        let request = self.credentials.request(proto::SetRetentionRequest {
            period,
            locked: false,
            reason: reason.to_owned(),
        });
        self.client.set_retention(request).await.context("SetRetention")?;
        Ok(())
    }
}

/// Event number `i` of `total`: actions, actors and resources cycle, and
/// `occurred_at` spreads the events evenly over one day (2026-11-22 UTC).
pub fn sample_event(i: u64, total: u64) -> EventInput {
    let actor = i % ACTORS;
    let total = i64::try_from(total.max(1)).unwrap_or(i64::MAX);
    let step = DAY_MICROS / total;
    let occurred = DAY_START_MICROS + (i64::try_from(i).unwrap_or(i64::MAX) % total) * step;
    let metadata = Struct {
        fields: [
            ("attempt".to_owned(), number((i % 5) as f64)),
            (
                "region".to_owned(),
                text(["eu-west-1", "us-east-1", "ap-south-1"][(i % 3) as usize]),
            ),
        ]
        .into_iter()
        .collect(),
    };
    EventInput {
        occurred_at: Some(audit_service::convert::micros_to_timestamp(occurred)),
        actor: Some(proto::Actor {
            id: actor_id(actor),
            r#type: proto::ActorType::User as i32,
            name: format!("User {actor}"),
            email: format!("user-{actor}@example.com"),
        }),
        action: ACTIONS[usize::try_from(i).unwrap_or_default() % ACTIONS.len()].to_owned(),
        resource: Some(proto::Resource {
            r#type: "document".to_owned(),
            id: format!("doc-{}", i % 5000),
            name: format!("Quarterly report {}", i % 5000),
        }),
        outcome: if i.is_multiple_of(10) {
            proto::Outcome::Failure as i32
        } else {
            proto::Outcome::Success as i32
        },
        request: Some(proto::RequestContext {
            method: "POST".to_owned(),
            path: format!("/api/v1/documents/doc-{}", i % 5000),
            status_code: if i.is_multiple_of(10) { 403 } else { 200 },
            client_ip: format!("203.0.113.{}", i % 250),
            user_agent: "audit-bench/1.0 (+https://example.com)".to_owned(),
            request_id: format!("req-{i}"),
            client_identity: String::new(),
        }),
        source: "audit-bench".to_owned(),
        reasoning: String::new(),
        metadata: Some(metadata),
        idempotency_key: String::new(),
    }
}

/// The id of actor number `n`.
pub fn actor_id(n: u64) -> String {
    format!("user-{n:04}")
}

/// `count` events starting at number `first`.
pub fn sample_batch(first: u64, count: usize, total: u64) -> Vec<EventInput> {
    (first..first + count as u64)
        .map(|i| sample_event(i, total))
        .collect()
}

fn number(value: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(value)),
    }
}

fn text(value: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(value.to_owned())),
    }
}

/// The row the service stores for `input` as `tenant`'s event `seq`
/// (the same columns and values, as the service's sequencer builds them).
pub fn stored_row(
    input: &EventInput,
    tenant: &str,
    seq: i64,
    recorded_at: i64,
) -> anyhow::Result<audit_event::Model> {
    let actor = input.actor.clone().unwrap_or_default();
    let resource = input.resource.clone().unwrap_or_default();
    let request = input.request.clone().unwrap_or_default();
    let occurred_at = match &input.occurred_at {
        Some(t) => timestamp_to_micros(t, "occurred_at").map_err(|e| anyhow::anyhow!("{e}"))?,
        None => recorded_at,
    };
    let metadata = match &input.metadata {
        Some(s) => Some(struct_to_json(s.clone()).map_err(|e| anyhow::anyhow!("metadata: {e}"))?),
        None => None,
    };
    Ok(audit_event::Model {
        tenant_id: audit_service::tenant::TenantId::parse(tenant, "tenant")
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        seq,
        id: Uuid::now_v7(),
        occurred_at: Some(occurred_at),
        recorded_at,
        actor_id: Some(actor.id),
        actor_type: Some(actor.r#type),
        actor_name: Some(actor.name),
        actor_email: Some(actor.email),
        action: Some(input.action.clone()),
        resource_type: Some(resource.r#type),
        resource_id: Some(resource.id),
        resource_name: Some(resource.name),
        outcome: Some(input.outcome),
        request_method: Some(request.method),
        request_path: Some(request.path),
        request_status_code: Some(request.status_code),
        request_client_ip: Some(request.client_ip),
        request_user_agent: Some(request.user_agent),
        request_id: Some(request.request_id),
        request_client_identity: (!request.client_identity.is_empty()).then_some(request.client_identity),
        source: Some(input.source.clone()),
        reasoning: Some(input.reasoning.clone()),
        metadata,
        idempotency_key: (!input.idempotency_key.is_empty()).then(|| input.idempotency_key.clone()),
        deleted_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_events_spread_over_one_day() {
        let first = sample_event(0, 1000);
        let last = sample_event(999, 1000);
        let micros = |e: &EventInput| timestamp_to_micros(e.occurred_at.as_ref().unwrap(), "t").unwrap();
        assert_eq!(micros(&first), DAY_START_MICROS);
        assert!(micros(&last) < DAY_START_MICROS + DAY_MICROS);
        assert_eq!(first.actor.unwrap().id, "user-0000");
    }

    #[test]
    fn stored_row_has_the_inputs_content() {
        let input = sample_event(7, 100);
        let row = stored_row(&input, "t", 3, 42).unwrap();
        assert_eq!(row.seq, 3);
        assert_eq!(row.action.as_deref(), Some("user.logout"));
        assert_eq!(row.metadata.unwrap()["region"], "us-east-1");
        assert_eq!(row.idempotency_key, None);
    }
}

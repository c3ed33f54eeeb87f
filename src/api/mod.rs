//! The `audit.v1.AuditService` handlers: check the caller's scope, validate,
//! call the store, convert. No SQL and no credential parsing here.

pub mod access;
mod export;
mod integrity;
mod policy;
mod validate;

use std::pin::Pin;

use futures::Stream;
use prost::Message as _;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub use access::AccessLog;
pub use export::{EXPORT_CHUNK_BYTES, EXPORT_CHUNK_EVENTS, ExportStream, export as export_stream};
pub use integrity::IntegrityApi;
pub use policy::{MAX_RETENTION_SECS, PolicyApi};
pub use validate::{
    DEFAULT_STATS_LIMIT, MAX_BATCH, MAX_BUCKETS, MAX_METADATA_BYTES, MAX_STATS_LIMIT, is_valid_action,
};

use crate::auth::{Scope, caller, stream_credential};
use crate::convert::{event_to_proto, micros_to_timestamp, seq_to_proto};
use crate::error::Error;
use crate::filter::EventMatcher;
use crate::filter::expr::{Field, FieldKind, METADATA_FIELD};
use crate::integrity::Notary;
use crate::observe::CallRecord;
use crate::proto;
use crate::proto::{
    ActorType, AppendRequest, AppendResponse, AppendResult, AuditEvent, DeleteRequest, DeleteResponse,
    ExportRequest, FilterField, GetFilterMetadataRequest, GetFilterMetadataResponse, GetRequest, Outcome,
    QueryRequest, StatsBucket, StatsGroup, StatsRequest, StatsResponse, WatchRequest, WatchResponse,
    watch_response,
};
use crate::store::page_token::QueryFingerprint;
use crate::store::stats::{GroupField, GroupValue, StatsSource};
use crate::store::{ChangeRequest, EventOrder, PageLimits, Store, TenantScope};
use crate::tenant::{ALL_TENANTS, PartnerId};
use crate::watch::{AcrossRequest, WatchHub};
use crate::wire::server::audit_service_server::AuditService;
use crate::wire::{EncodedExportResponse, EncodedQueryResponse, PageEvents};
use access::{ReadRpc, ReadTarget, Reader};

/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page; larger requests are served this many.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Most bytes of one encoded `QueryResponse`: 4 MiB, the largest message
/// gRPC clients accept unless told otherwise (tonic, grpc-go, grpc-java,
/// the C core, grpcurl), so every page reaches every client. A page ends
/// before `page_size` events when the next one would not fit, and its
/// token continues there; the largest valid event is far smaller.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Bytes of [`MAX_PAGE_BYTES`] kept for the `next_page_token` field (a
/// token is 66 characters; one of a read across tenants, naming a tenant,
/// at most 238).
const NEXT_PAGE_TOKEN_BYTES: usize = 256;
/// Most distinct values `GetFilterMetadata` lists per field.
pub const MAX_FILTER_VALUES: u64 = 1000;

/// The AuditService implementation.
#[derive(Clone)]
pub struct AuditApi {
    store: Store,
    watch: WatchHub,
    notary: Notary,
    access: AccessLog,
}

impl AuditApi {
    /// Handlers over `store`, with Watch streams served by `watch` and
    /// exports ending in checkpoints signed by `notary`, and reads
    /// recorded by `access`.
    pub fn new(store: Store, watch: WatchHub, notary: Notary, access: AccessLog) -> Self {
        Self {
            store,
            watch,
            notary,
            access,
        }
    }
}

/// A `Query` page across tenants (`x-tenant-id: *`), validated.
struct AcrossQuery<'a> {
    /// The partner the platform credential is limited to.
    partner: Option<&'a PartnerId>,
    filter: &'a proto::EventFilter,
    matcher: &'a EventMatcher,
    order: EventOrder,
    page_token: &'a str,
    limits: PageLimits,
}

impl AuditApi {
    /// A page of a platform read across tenants, recorded by `read` in the
    /// `_platform` log before it is answered. Its page tokens are bound to
    /// the tenant set: the credential's partner and the filter (whose
    /// `tenant_ids` and `partner_ids` narrow it).
    async fn query_across(
        &self,
        query: AcrossQuery<'_>,
        read: access::OpenRead,
        record: CallRecord,
    ) -> Result<EncodedQueryResponse, Error> {
        let tenant_set = match query.partner {
            Some(partner) => format!("{ALL_TENANTS}:{partner}"),
            None => ALL_TENANTS.to_owned(),
        };
        let fingerprint =
            QueryFingerprint::of(&tenant_set, query.order.as_str(), &query.filter.encode_to_vec());
        let after = match query.page_token {
            "" => None,
            token => Some(
                self.store
                    .page_tokens()
                    .open_span(token, fingerprint)
                    .map_err(|e| {
                        record.page_token_rejected();
                        Error::invalid("page_token", e.to_string())
                    })?,
            ),
        };
        let page = self
            .store
            .query_page_across::<PageEvents>(
                query.partner,
                query.matcher,
                query.order,
                after.as_ref(),
                query.limits,
            )
            .await?;
        let returned = u64::try_from(page.page.events.count()).unwrap_or(u64::MAX);
        read.finish_across(returned, &page.tenants).await?;
        record.returned(returned);
        let next_page_token = page
            .next
            .map(|cursor| self.store.page_tokens().issue_span(fingerprint, &cursor))
            .unwrap_or_default();
        Ok(EncodedQueryResponse {
            events: page.page.events.into_bytes(),
            next_page_token,
        })
    }
}

impl AuditApi {
    /// The tenants a stream across tenants spans as it opens: the
    /// registry's (or `partner`'s) narrowed by the filter's `tenant_ids`
    /// and `partner_ids`, by id byte-wise.
    async fn tenant_set(
        &self,
        partner: Option<&PartnerId>,
        filter: &proto::EventFilter,
    ) -> Result<Vec<crate::tenant::TenantId>, Error> {
        let matcher = EventMatcher::new(filter, "filter")?;
        let set = self
            .store
            .tenant_set(partner, matcher.tenant_ids(), matcher.partner_ids())
            .await?;
        Ok(set.into_iter().map(|t| t.tenant).collect())
    }
}

/// Parses an event id named `field`.
fn event_id(value: &str, field: &str) -> Result<Uuid, Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Uuid::parse_str(value).map_err(|_| Error::invalid(field, "must be an event id (a UUID)"))
}

fn page_size(requested: i32) -> Result<usize, Error> {
    match usize::try_from(requested) {
        Err(_) => Err(Error::invalid("page_size", "must not be negative")),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn append(&self, request: Request<AppendRequest>) -> Result<Response<AppendResponse>, Status> {
        let caller = caller(&request, Scope::Append)?;
        let record = CallRecord::of(&request);
        let client_identity = crate::tls::verified_identity(&request);
        let events = validate::append_events(request.into_inner().events, client_identity.as_deref())?;
        let outcomes = self.store.append(&caller.tenant, events).await?;
        record.appended(u64::try_from(outcomes.iter().filter(|o| !o.duplicate).count()).unwrap_or(u64::MAX));
        let results = outcomes
            .into_iter()
            .map(|o| AppendResult {
                id: o.id.to_string(),
                seq: seq_to_proto(o.seq),
                duplicate: o.duplicate,
            })
            .collect();
        Ok(Response::new(AppendResponse { results }))
    }

    async fn query(&self, request: Request<QueryRequest>) -> Result<Response<EncodedQueryResponse>, Status> {
        let caller = caller(&request, Scope::Read)?;
        let reader = Reader::of(&request, &caller);
        let record = CallRecord::of(&request);
        let request = request.into_inner();
        let page_size = page_size(request.page_size)?;
        let order = EventOrder::parse(&request.order_by).ok_or_else(|| {
            Error::invalid(
                "order_by",
                "must be one of: seq desc, seq asc, occurred_at desc, occurred_at asc",
            )
        })?;
        let filter = request.filter.unwrap_or_default();
        let matcher = EventMatcher::new(&filter, "filter")?;
        let limits = PageLimits {
            events: page_size,
            bytes: MAX_PAGE_BYTES - NEXT_PAGE_TOKEN_BYTES,
        };
        if let TenantScope::Platform { partner } = &caller.tenants {
            let read = self.access.open_across(
                reader,
                ReadRpc::Query,
                ReadTarget::Filter {
                    filter: &filter,
                    after_seq: None,
                },
                partner.as_ref(),
            );
            let query = AcrossQuery {
                partner: partner.as_ref(),
                filter: &filter,
                matcher: &matcher,
                order,
                page_token: &request.page_token,
                limits,
            };
            return Ok(Response::new(self.query_across(query, read, record).await?));
        }
        let fingerprint =
            QueryFingerprint::of(caller.tenant.as_str(), order.as_str(), &filter.encode_to_vec());
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(self.store.page_tokens().open(token, fingerprint).map_err(|e| {
                record.page_token_rejected();
                Error::invalid("page_token", e.to_string())
            })?),
        };

        let target = ReadTarget::Filter {
            filter: &filter,
            after_seq: None,
        };
        // The setting is read beside the page, not before it.
        let (read, page) = tokio::join!(
            self.access.open(reader, ReadRpc::Query, target),
            self.store
                .query_page::<PageEvents>(&caller.tenant, &matcher, order, after, limits),
        );
        let (read, page) = (read?, page?);
        let returned = u64::try_from(page.events.count()).unwrap_or(u64::MAX);
        read.finish(returned).await?;
        record.returned(returned);
        let next_page_token = page
            .next
            .map(|cursor| self.store.page_tokens().issue(fingerprint, cursor))
            .unwrap_or_default();
        Ok(Response::new(EncodedQueryResponse {
            events: page.events.into_bytes(),
            next_page_token,
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<AuditEvent>, Status> {
        let caller = caller(&request, Scope::Read)?;
        let id = event_id(&request.get_ref().id, "id")?;
        let reader = Reader::of(&request, &caller);
        let record = CallRecord::of(&request);
        let (read, found) = tokio::join!(
            self.access.open(reader, ReadRpc::Get, ReadTarget::Event(id)),
            self.store.get(&caller.tenant, id),
        );
        read?.finish_get(&found).await?;
        let event = found?;
        record.returned(1);
        Ok(Response::new(event_to_proto(event)))
    }

    async fn stats(&self, request: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let caller = caller(&request, Scope::Read)?;
        let reader = Reader::of(&request, &caller);
        let request = request.into_inner();
        let filter = request.filter.clone().unwrap_or_default();
        let (matcher, query) = validate::both(
            EventMatcher::new(&filter, "filter"),
            validate::stats_query(&request),
        )?;
        let stats = match &caller.tenants {
            TenantScope::One(tenant) => self.store.stats(tenant, &matcher, &query).await?,
            TenantScope::Platform { partner } => {
                let target = ReadTarget::Filter {
                    filter: &filter,
                    after_seq: None,
                };
                let tenants = self.tenant_set(partner.as_ref(), &filter).await?;
                let read = self
                    .access
                    .open_across(reader, ReadRpc::Stats, target, partner.as_ref())
                    .spanning(&tenants.iter().map(|t| t.as_str().to_owned()).collect());
                let stats = self
                    .store
                    .stats_across(partner.as_ref(), &matcher, &query)
                    .await?;
                read.finish(stats.total).await?;
                stats
            }
        };
        let groups = stats
            .groups
            .into_iter()
            .map(|group| StatsGroup {
                keys: query
                    .group_by
                    .iter()
                    .zip(group.keys)
                    .map(|(field, value)| group_key(*field, value))
                    .collect(),
                count: group.count,
            })
            .collect();
        let buckets = stats
            .buckets
            .into_iter()
            .map(|bucket| StatsBucket {
                start: Some(micros_to_timestamp(bucket.start)),
                count: bucket.count,
            })
            .collect();
        let (answered_from, partial, scanned_through) = match stats.answered_by {
            StatsSource::Rollup => (proto::StatsSource::Rollup, false, 0),
            StatsSource::Scan {
                partial,
                scanned_through,
            } => (proto::StatsSource::Scan, partial, scanned_through),
        };
        Ok(Response::new(StatsResponse {
            total: stats.total,
            groups,
            buckets,
            answered_from: answered_from as i32,
            partial,
            scanned_through_seq: seq_to_proto(scanned_through),
        }))
    }

    async fn get_filter_metadata(
        &self,
        request: Request<GetFilterMetadataRequest>,
    ) -> Result<Response<GetFilterMetadataResponse>, Status> {
        let caller = caller(&request, Scope::Read)?;
        let values = match &caller.tenants {
            TenantScope::One(tenant) => self.store.filter_values(tenant, MAX_FILTER_VALUES).await?,
            TenantScope::Platform { partner } => {
                let reader = Reader::of(&request, &caller);
                let unfiltered = proto::EventFilter::default();
                let target = ReadTarget::Filter {
                    filter: &unfiltered,
                    after_seq: None,
                };
                let tenants = self.tenant_set(partner.as_ref(), &unfiltered).await?;
                let read = self
                    .access
                    .open_across(reader, ReadRpc::GetFilterMetadata, target, partner.as_ref())
                    .spanning(&tenants.iter().map(|t| t.as_str().to_owned()).collect());
                let values = self
                    .store
                    .filter_values_across(partner.as_ref(), MAX_FILTER_VALUES)
                    .await?;
                let listed = values.actions.len() + values.resource_types.len() + values.sources.len();
                read.finish(u64::try_from(listed).unwrap_or(u64::MAX)).await?;
                values
            }
        };
        Ok(Response::new(GetFilterMetadataResponse {
            fields: filter_fields(),
            order_by: EventOrder::ALL.iter().map(|o| o.as_str().to_owned()).collect(),
            actions: values.actions,
            resource_types: values.resource_types,
            sources: values.sources,
        }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let caller = caller(&request, Scope::Write)?;
        let client_identity = crate::tls::peer_identity(&request);
        let request = request.into_inner();
        let id = event_id(&request.id, "id")?;
        let mut violations = validate::Violations::default();
        violations.text(|| "reason".to_owned(), &request.reason, validate::MAX_REASONING);
        violations.finish()?;

        let deletion = ChangeRequest {
            actor_id: caller.subject.clone(),
            actor_type: caller.actor_type() as i32,
            reason: request.reason,
            client_identity,
        };
        let deletion = self.store.delete(&caller.tenant, id, deletion).await?;
        Ok(Response::new(DeleteResponse {
            id: deletion.erased_id.to_string(),
            seq: seq_to_proto(deletion.erased_seq),
            deletion_event: Some(event_to_proto(deletion.event)),
        }))
    }

    type ExportStream = Pin<Box<dyn Stream<Item = Result<EncodedExportResponse, Status>> + Send>>;

    async fn export(&self, request: Request<ExportRequest>) -> Result<Response<Self::ExportStream>, Status> {
        let caller = caller(&request, Scope::Read)?;
        let reader = Reader::of(&request, &caller);
        let record = CallRecord::of(&request);
        let request = request.into_inner();
        let filter = request.filter.clone().unwrap_or_default();
        let target = ReadTarget::Filter {
            filter: &filter,
            after_seq: Some(request.after_seq),
        };
        if let TenantScope::Platform { partner } = &caller.tenants {
            let tenants = self.tenant_set(partner.as_ref(), &filter).await?;
            let read = self
                .access
                .open_across(reader, ReadRpc::Export, target, partner.as_ref())
                .spanning(&tenants.iter().map(|t| t.as_str().to_owned()).collect());
            let stream = export::export_across(self.store.clone(), &self.notary, tenants, request).await?;
            let stream = counted(stream, record, export::events_in);
            return Ok(Response::new(Box::pin(read.follow(stream, export::events_in))));
        }
        let read = self.access.open(reader, ReadRpc::Export, target).await?;
        let stream = export::export(self.store.clone(), &self.notary, caller.tenant, request).await?;
        let stream = counted(stream, record, export::events_in);
        Ok(Response::new(Box::pin(read.follow(stream, export::events_in))))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let caller = caller(&request, Scope::Read)?;
        let credential = stream_credential(&request)?;
        let reader = Reader::of(&request, &caller);
        let record = CallRecord::of(&request);
        let request = request.into_inner();
        let filter = request.filter.unwrap_or_default();
        let target = ReadTarget::Filter {
            filter: &filter,
            after_seq: request.after_seq,
        };
        if let TenantScope::Platform { partner } = &caller.tenants {
            let across = AcrossRequest {
                partner: partner.clone(),
                filter: &filter,
                after_seq: request.after_seq,
                positions: &request.positions,
            };
            let (stream, tenants) = self.watch.open_across(across, credential).await?;
            let read = self
                .access
                .open_across(reader, ReadRpc::Watch, target, partner.as_ref())
                .spanning(&tenants.iter().map(|t| t.as_str().to_owned()).collect());
            let stream = counted(stream, record, events_in_watch_message);
            return Ok(Response::new(Box::pin(
                read.follow(stream, events_in_watch_message),
            )));
        }
        if !request.positions.is_empty() {
            return Err(Error::invalid(
                "positions",
                "is for a Watch across tenants (x-tenant-id *) only; resume a tenant's own Watch with after_seq",
            )
            .into());
        }
        let read = self.access.open(reader, ReadRpc::Watch, target).await?;
        let stream = self
            .watch
            .open(caller.tenant, &filter, request.after_seq, credential)
            .await?;
        let stream = counted(stream, record, events_in_watch_message);
        Ok(Response::new(Box::pin(
            read.follow(stream, events_in_watch_message),
        )))
    }
}

/// `stream`, adding the events of each message it passes on (as
/// `events_in` counts them) to the call's access-log line; a stream that
/// passes none on is logged with 0.
fn counted<S, T>(
    stream: S,
    record: CallRecord,
    events_in: fn(&T) -> u64,
) -> impl Stream<Item = Result<T, Status>> + Unpin
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    use futures::StreamExt as _;
    record.returned(0);
    stream.inspect(move |item| {
        if let Ok(message) = item {
            record.returned_more(events_in(message));
        }
    })
}

/// Events a Watch message carries: one, or none in a heartbeat.
fn events_in_watch_message(message: &WatchResponse) -> u64 {
    u64::from(matches!(message.kind, Some(watch_response::Kind::Event(_))))
}

/// A group key as clients read it: text as stored, enums by value name.
fn group_key(field: GroupField, value: GroupValue) -> String {
    let name = match (field, &value) {
        (GroupField::ActorType, GroupValue::Enum(v)) => ActorType::try_from(*v).ok().map(|t| t.as_str_name()),
        (GroupField::Outcome, GroupValue::Enum(v)) => Outcome::try_from(*v).ok().map(|o| o.as_str_name()),
        _ => None,
    };
    match (name, value) {
        (Some(name), _) => name.to_owned(),
        (None, GroupValue::Text(text)) => text,
        (None, GroupValue::Enum(number)) => number.to_string(),
    }
}

/// Every field expressions can name, then `metadata` (filtered as
/// `metadata.KEY`).
fn filter_fields() -> Vec<FilterField> {
    let describe = |name: &str, kind: FieldKind, values: Vec<&str>| FilterField {
        name: name.to_owned(),
        r#type: kind.as_str().to_owned(),
        operators: kind.operators().iter().map(|o| (*o).to_owned()).collect(),
        values: values.into_iter().map(str::to_owned).collect(),
    };
    Field::ALL
        .iter()
        .map(|f| describe(f.name(), f.kind(), f.enum_values()))
        .chain([describe(METADATA_FIELD, FieldKind::Struct, Vec::new())])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_rules() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(5000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn the_page_budget_leaves_room_for_any_page_token() {
        use crate::store::{PageCursor, PageTokenKey};

        let key = PageTokenKey::new(vec![7; 32]);
        let fingerprint = QueryFingerprint::of("a-tenant", "seq desc", &[1, 2, 3]);
        let cursor = PageCursor {
            seq: i64::MAX,
            occurred_at: i64::MIN,
        };
        let token_only = EncodedQueryResponse {
            events: Vec::new(),
            next_page_token: key.issue(fingerprint, cursor),
        };
        assert!(token_only.encoded_len() <= NEXT_PAGE_TOKEN_BYTES);
        let longest = crate::store::SpanCursor {
            at: i64::MIN,
            tenant: crate::tenant::TenantId::parse(&"a".repeat(crate::tenant::MAX_TENANT_ID_LEN), "t")
                .unwrap(),
            seq: i64::MAX,
        };
        let token_only = EncodedQueryResponse {
            events: Vec::new(),
            next_page_token: key.issue_span(fingerprint, &longest),
        };
        assert!(token_only.encoded_len() <= NEXT_PAGE_TOKEN_BYTES);
    }

    #[test]
    fn event_ids_must_be_uuids() {
        assert!(event_id("0190d1a4-8b5c-7cde-9f00-112233445566", "id").is_ok());
        assert!(event_id("", "id").is_err());
        assert!(event_id("not-a-uuid", "id").is_err());
    }
}

//! Access auditing of reads: while a tenant has it on, each `Query`, `Get`,
//! `Export` and `Watch` call appends one `audit.log.read` event naming the
//! caller, the RPC, what it asked for and how many events it returned.
//!
//! A read handler asks [`AccessLog::open`] first (which reads the tenant's
//! setting, so a read fails rather than go unrecorded when the setting
//! cannot be read), then either
//! - answers a unary call only once [`OpenRead::finish`] (or
//!   [`OpenRead::finish_get`]) has written the record: a read whose record
//!   cannot be written is refused with UNAVAILABLE and returns nothing; or
//! - wraps its response stream with [`OpenRead::follow`], which counts the
//!   events handed to the transport and records the read when the stream
//!   ends: before its last status goes out when it ends by itself (a
//!   stream that ends OK then ends UNAVAILABLE if its record cannot be
//!   written), and in the background when the client cancels. Streams
//!   still open when the server stops are recorded by [`AccessLog::close`].
//!
//! `Export` is wired the same way as `Watch`:
//!
//! ```ignore
//! let caller = caller(&request, Scope::Read)?;
//! let reader = Reader::of(&request, &caller);
//! let request = request.into_inner();
//! let filter = request.filter.unwrap_or_default();
//! let target = ReadTarget::Filter { filter: &filter, after_seq: request.after_seq };
//! let read = self.access.open(reader, ReadRpc::Export, target).await?;
//! let chunks = /* the export stream of Result<ExportResponse, Status>, Unpin */;
//! Ok(Response::new(Box::pin(read.follow(chunks, events_in_chunk))))
//! ```
//!
//! where `events_in_chunk(&ExportResponse) -> u64` counts the events a
//! message carries (0 for the checkpoint).
//!
//! Reads of the access records themselves do not add records, so reading
//! them never starts a chain: a call whose filter's `actions` lists only
//! `audit.log.read` (which no expression can widen: the parts of a filter
//! are AND-ed), and a `Get` that returns an `audit.log.read` event, are not
//! recorded. The rule looks at what a call may return, never only at what
//! it did return: a filter that could match other events is recorded even
//! when it returned access records alone, since its answer still tells
//! that no other event matched.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::Stream;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tonic::{Request, Status};
use uuid::Uuid;

use crate::auth::CallerIdentity;
use crate::convert::filter_to_json;
use crate::entity::audit_event;
use crate::error::Error;
use crate::proto::{EventFilter, Outcome};
use crate::store::{
    DELETION_RESOURCE_TYPE, LOG_RESOURCE_TYPE, LogRead, READ_ACTION, Store, StoreError, StoreResult,
    now_micros,
};
use crate::tenant::{ALL_TENANTS, PartnerId, TenantId};

/// Pauses before each new attempt to record a stream that ended (the
/// first attempt is at once): a record of a long stream is worth a few
/// seconds of a database that is briefly away.
const STREAM_RECORD_RETRIES: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_secs(1),
    Duration::from_secs(4),
];
/// Longest `user-agent` a record keeps, in bytes.
const MAX_USER_AGENT: usize = 512;

/// The reads that are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRpc {
    /// `AuditService.Query`.
    Query,
    /// `AuditService.Get`.
    Get,
    /// `AuditService.Watch`.
    Watch,
    /// `AuditService.Export`.
    Export,
    /// `AuditService.Stats` (recorded across tenants only).
    Stats,
    /// `AuditService.GetFilterMetadata` (recorded across tenants only).
    GetFilterMetadata,
}

impl ReadRpc {
    /// The RPC's name, as the record's metadata `rpc` names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Query => "Query",
            Self::Get => "Get",
            Self::Watch => "Watch",
            Self::Export => "Export",
            Self::Stats => "Stats",
            Self::GetFilterMetadata => "GetFilterMetadata",
        }
    }
}

/// What a read asks for.
#[derive(Debug, Clone, Copy)]
pub enum ReadTarget<'a> {
    /// The events a filter matches (`Query`, `Watch`, `Export`), with
    /// `seq > after_seq` when the call has one.
    Filter {
        /// The call's filter.
        filter: &'a EventFilter,
        /// The call's `after_seq`, if it has that field and it is set.
        after_seq: Option<u64>,
    },
    /// One event by id (`Get`).
    Event(Uuid),
}

/// Who reads, and from where: taken from the call before its message is
/// consumed.
#[derive(Debug, Clone)]
pub struct Reader {
    tenant: TenantId,
    actor_id: String,
    actor_type: i32,
    client_ip: String,
    user_agent: String,
}

impl Reader {
    /// The caller of `request`, with its address and `user-agent`.
    pub fn of<T>(request: &Request<T>, caller: &CallerIdentity) -> Self {
        let user_agent = request
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        Self {
            tenant: caller.tenant.clone(),
            actor_id: caller.subject.clone(),
            actor_type: caller.actor_type() as i32,
            client_ip: request
                .remote_addr()
                .map(|addr| addr.ip().to_string())
                .unwrap_or_default(),
            user_agent: truncated(user_agent, MAX_USER_AGENT).to_owned(),
        }
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether a filter can only match access records: its `actions` lists
/// `audit.log.read` and nothing else. The other parts of a filter, the
/// expression included, are AND-ed with it, so they can only narrow it.
pub fn only_access_records(filter: &EventFilter) -> bool {
    !filter.actions.is_empty() && filter.actions.iter().all(|action| action == READ_ACTION)
}

/// A record not written yet: the read, and the tenant whose log takes it.
#[derive(Debug)]
struct PendingRecord {
    tenant: TenantId,
    read: LogRead,
}

impl PendingRecord {
    /// The record of `reader`'s read of `target` through `rpc`, opened at
    /// `opened` (unix microseconds), before its count and end are known.
    fn of(reader: Reader, rpc: ReadRpc, target: ReadTarget<'_>, opened: i64) -> Self {
        let mut metadata = json!({ "rpc": rpc.name() });
        let (resource_type, resource_id) = match target {
            ReadTarget::Filter { filter, after_seq } => {
                metadata["filter"] = filter_to_json(filter);
                if matches!(rpc, ReadRpc::Watch | ReadRpc::Export) {
                    metadata["after_seq"] = after_seq.into();
                }
                (LOG_RESOURCE_TYPE, reader.tenant.to_string())
            }
            // Resources named as `Delete` names an event.
            ReadTarget::Event(id) => {
                metadata["id"] = id.to_string().into();
                (DELETION_RESOURCE_TYPE, id.to_string())
            }
        };
        if matches!(rpc, ReadRpc::Watch | ReadRpc::Export) {
            let opened = crate::convert::micros_to_timestamp(opened);
            metadata["opened_at"] = rfc3339(&opened).into();
        }
        let read = LogRead {
            actor_id: reader.actor_id,
            actor_type: reader.actor_type,
            resource_type,
            resource_id,
            outcome: Outcome::Success as i32,
            request_path: format!("/audit.v1.AuditService/{}", rpc.name()),
            client_ip: reader.client_ip,
            user_agent: reader.user_agent,
            metadata,
        };
        Self {
            tenant: reader.tenant,
            read,
        }
    }

    /// The record of a read that returned `returned` events.
    fn returned(mut self, returned: u64) -> Self {
        if let Value::Object(fields) = &mut self.read.metadata {
            fields.insert("returned".to_owned(), returned.into());
        }
        self
    }

    /// The record of a stream that ended as `end` says.
    fn ended(mut self, end: &str) -> Self {
        if let Value::Object(fields) = &mut self.read.metadata {
            fields.insert("end".to_owned(), end.into());
        }
        self
    }
}

/// A stream being recorded: its record until the stream ends, and the
/// events handed to the transport so far.
#[derive(Debug)]
struct StreamRead {
    id: u64,
    record: Mutex<Option<PendingRecord>>,
    delivered: AtomicU64,
}

/// Streams whose records are not written yet, and the tasks writing the
/// records of streams that ended.
#[derive(Default)]
struct Streams {
    open: Mutex<HashMap<u64, Arc<StreamRead>>>,
    next_id: AtomicU64,
    writing: TaskTracker,
}

/// Records reads of tenants' logs while their access auditing is on;
/// cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    store: Store,
    streams: Arc<Streams>,
}

impl AccessLog {
    /// Records into `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            streams: Arc::new(Streams::default()),
        }
    }

    /// Starts a read by `reader` of `target` through `rpc`: it is to be
    /// recorded when the reader's tenant has access auditing on and the
    /// read can return other events than access records. Fails (and the
    /// read with it) when the setting cannot be read.
    pub async fn open(
        &self,
        reader: Reader,
        rpc: ReadRpc,
        target: ReadTarget<'_>,
    ) -> Result<OpenRead, Error> {
        let unrecorded = OpenRead {
            log: self.clone(),
            record: None,
        };
        if let ReadTarget::Filter { filter, .. } = target
            && only_access_records(filter)
        {
            return Ok(unrecorded);
        }
        if !self.store.access_audit(&reader.tenant).await?.enabled {
            return Ok(unrecorded);
        }
        Ok(OpenRead {
            log: self.clone(),
            record: Some(PendingRecord::of(reader, rpc, target, now_micros())),
        })
    }

    /// Starts a platform read across tenants by `reader` (whose tenant is
    /// the reserved `_platform`) of `target` through `rpc`: always
    /// recorded, in the `_platform` log, naming the partner the credential
    /// is limited to; [`OpenRead::finish_across`] adds the tenants touched.
    pub fn open_across(
        &self,
        reader: Reader,
        rpc: ReadRpc,
        target: ReadTarget<'_>,
        partner: Option<&PartnerId>,
    ) -> OpenRead {
        let mut record = PendingRecord::of(reader, rpc, target, now_micros());
        record.read.resource_id = ALL_TENANTS.to_owned();
        if let Value::Object(fields) = &mut record.read.metadata {
            fields.insert(
                "partner".to_owned(),
                partner.map_or(Value::Null, |p| p.as_str().into()),
            );
        }
        OpenRead {
            log: self.clone(),
            record: Some(record),
        }
    }

    /// Writes a unary read's record; a failure becomes the call's answer.
    async fn write(&self, record: PendingRecord) -> Result<(), Error> {
        let tenant = record.tenant.clone();
        self.store
            .record_read(&record.tenant, record.read)
            .await
            .map_err(|error| {
                tracing::warn!(%error, %tenant, "a read could not be recorded; it is refused");
                Error::Unavailable(
                    "access auditing is on and this read could not be recorded, so it is not answered; retry"
                        .into(),
                )
            })
    }

    /// Writes a stream's record, trying again a few times.
    async fn write_stream_record(self, record: PendingRecord) -> Result<(), Error> {
        let mut pauses = STREAM_RECORD_RETRIES.iter();
        loop {
            match self.store.record_read(&record.tenant, record.read.clone()).await {
                Ok(()) => return Ok(()),
                Err(error) => match pauses.next() {
                    Some(pause) => {
                        tracing::warn!(
                            %error,
                            tenant = %record.tenant,
                            "a stream's read could not be recorded yet; retrying"
                        );
                        tokio::time::sleep(*pause).await;
                    }
                    None => {
                        tracing::error!(
                            %error,
                            tenant = %record.tenant,
                            read = %record.read.metadata,
                            "a stream's read could not be recorded"
                        );
                        return Err(Error::Unavailable(
                            "access auditing is on and this stream could not be recorded".into(),
                        ));
                    }
                },
            }
        }
    }

    fn register(&self, record: PendingRecord) -> Arc<StreamRead> {
        let read = Arc::new(StreamRead {
            id: self.streams.next_id.fetch_add(1, Ordering::Relaxed),
            record: Mutex::new(Some(record)),
            delivered: AtomicU64::new(0),
        });
        self.open_streams().insert(read.id, read.clone());
        read
    }

    fn open_streams(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<StreamRead>>> {
        self.streams.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts writing the record of `read`, which ended as `end` says,
    /// unless it was written already; the writing goes on if the stream is
    /// dropped meanwhile.
    fn end_stream(&self, read: &StreamRead, end: &str) -> Option<JoinHandle<Result<(), Error>>> {
        let record = read.record.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        self.open_streams().remove(&read.id);
        let record = record.returned(read.delivered.load(Ordering::Relaxed)).ended(end);
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::error!(
                tenant = %record.tenant,
                read = %record.read.metadata,
                "a stream's read could not be recorded: the runtime has stopped"
            );
            return None;
        }
        Some(
            self.streams
                .writing
                .spawn(self.clone().write_stream_record(record)),
        )
    }

    /// Once the server has stopped serving: records every stream still
    /// open (its end is `SERVER_STOPPED`) and waits for the records of
    /// every ended stream to be written.
    pub async fn close(&self) {
        let open: Vec<Arc<StreamRead>> = self.open_streams().values().cloned().collect();
        for read in open {
            self.end_stream(&read, "SERVER_STOPPED");
        }
        self.streams.writing.close();
        self.streams.writing.wait().await;
    }
}

/// A timestamp in RFC 3339, as the protobuf JSON mapping writes it.
fn rfc3339(timestamp: &prost_types::Timestamp) -> String {
    let nanos = u32::try_from(timestamp.nanos).unwrap_or_default();
    chrono::DateTime::from_timestamp(timestamp.seconds, nanos)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// A read in progress: [`OpenRead::finish`], [`OpenRead::finish_get`] or
/// [`OpenRead::follow`] records it, if it is to be recorded.
#[must_use = "a read is recorded by finish, finish_get or follow"]
pub struct OpenRead {
    log: AccessLog,
    record: Option<PendingRecord>,
}

impl OpenRead {
    /// Records a read that returned `returned` events; answer the call only
    /// once this is Ok (an Err is UNAVAILABLE: answer it instead).
    pub async fn finish(self, returned: u64) -> Result<(), Error> {
        match self.record {
            Some(record) => self.log.write(record.returned(returned)).await,
            None => Ok(()),
        }
    }

    /// Records a read across tenants that returned `returned` events of
    /// `tenants`; answer the call only once this is Ok.
    pub async fn finish_across(self, returned: u64, tenants: &BTreeSet<String>) -> Result<(), Error> {
        match self.record {
            Some(mut record) => {
                if let Value::Object(fields) = &mut record.read.metadata {
                    fields.insert("tenants".to_owned(), json!(tenants));
                }
                self.log.write(record.returned(returned)).await
            }
            None => Ok(()),
        }
    }

    /// The read of a stream across tenants, naming in its record the
    /// tenants it spans (`tenants`, as the stream opened).
    pub fn spanning(mut self, tenants: &BTreeSet<String>) -> Self {
        if let Some(record) = &mut self.record
            && let Value::Object(fields) = &mut record.read.metadata
        {
            fields.insert("tenants".to_owned(), json!(tenants));
        }
        self
    }

    /// Records a `Get` that `found` answers: the event (unless it is itself
    /// an access record), or NOT_FOUND (recorded as a failed read of 0
    /// events). Any other failure returned nothing and is not recorded.
    pub async fn finish_get(self, found: &StoreResult<audit_event::Model>) -> Result<(), Error> {
        let Some(mut record) = self.record else {
            return Ok(());
        };
        let returned = match found {
            Ok(event) if event.action.as_deref() == Some(READ_ACTION) => return Ok(()),
            Ok(_) => 1,
            Err(StoreError::NotFound { .. }) => {
                record.read.outcome = Outcome::Failure as i32;
                0
            }
            Err(_) => return Ok(()),
        };
        self.log.write(record.returned(returned)).await
    }

    /// `stream`, recorded when it ends with the number of events it handed
    /// to the transport (`events_in` counts those in each message).
    pub fn follow<S, T>(self, stream: S, events_in: fn(&T) -> u64) -> RecordedStream<S, T>
    where
        S: Stream<Item = Result<T, Status>> + Unpin,
    {
        let read = self.record.map(|record| self.log.register(record));
        RecordedStream {
            inner: stream,
            log: self.log,
            read,
            events_in,
            state: StreamState::Streaming,
        }
    }
}

/// A response stream whose read is recorded when it ends (see
/// [`OpenRead::follow`]).
pub struct RecordedStream<S, T> {
    inner: S,
    log: AccessLog,
    /// `None` when the read is not recorded.
    read: Option<Arc<StreamRead>>,
    events_in: fn(&T) -> u64,
    state: StreamState,
}

enum StreamState {
    /// Passing the inner stream's messages on.
    Streaming,
    /// The inner stream ended (with this status, or OK): its record is
    /// being written before the end goes out.
    Recording(JoinHandle<Result<(), Error>>, Option<Status>),
    /// The end went out.
    Done,
}

impl<S, T> RecordedStream<S, T> {
    /// The inner stream ended with `status` (or OK): starts writing the
    /// record, or, when there is none to write, ends at once.
    fn end(&mut self, status: Option<Status>) -> Option<Poll<Option<Result<T, Status>>>> {
        let end = status.as_ref().map_or("OK", |s| code_name(s.code()));
        match self.read.take().and_then(|read| self.log.end_stream(&read, end)) {
            Some(writing) => {
                self.state = StreamState::Recording(writing, status);
                None
            }
            None => {
                self.state = StreamState::Done;
                Some(Poll::Ready(status.map(Err)))
            }
        }
    }
}

impl<S, T> Stream for RecordedStream<S, T>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Every field is Unpin.
        let this = self.get_mut();
        loop {
            match &mut this.state {
                StreamState::Streaming => match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                    Some(Ok(message)) => {
                        if let Some(read) = &this.read {
                            read.delivered
                                .fetch_add((this.events_in)(&message), Ordering::Relaxed);
                        }
                        return Poll::Ready(Some(Ok(message)));
                    }
                    Some(Err(status)) => {
                        if let Some(done) = this.end(Some(status)) {
                            return done;
                        }
                    }
                    None => {
                        if let Some(done) = this.end(None) {
                            return done;
                        }
                    }
                },
                StreamState::Recording(writing, _) => {
                    let written = ready!(Pin::new(writing).poll(cx));
                    let StreamState::Recording(_, status) =
                        std::mem::replace(&mut this.state, StreamState::Done)
                    else {
                        unreachable!("the state was Recording just above");
                    };
                    // A stream that ended with an error ends so; one that
                    // ended well ends UNAVAILABLE when it went unrecorded.
                    let last = match (status, written) {
                        (Some(status), _) => Some(status),
                        (None, Ok(Ok(()))) => None,
                        (None, Ok(Err(error))) => Some(Status::from(error)),
                        (None, Err(_)) => Some(Status::from(Error::Unavailable(
                            "access auditing is on and this stream could not be recorded".into(),
                        ))),
                    };
                    return Poll::Ready(last.map(Err));
                }
                StreamState::Done => return Poll::Ready(None),
            }
        }
    }
}

impl<S, T> Drop for RecordedStream<S, T> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or the server
        // stopped serving the connection).
        if let Some(read) = self.read.take() {
            self.log.end_stream(&read, "CANCELLED");
        }
    }
}

/// The name of a status code, as the record's `end` names it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::proto::ActorType;

    fn reader() -> Reader {
        Reader {
            tenant: TenantId::parse("acme", "tenant").expect("a tenant id"),
            actor_id: "auditor-7".into(),
            actor_type: ActorType::User as i32,
            client_ip: "203.0.113.7".into(),
            user_agent: "grpcurl/1.9.1".into(),
        }
    }

    fn actions(list: &[&str]) -> EventFilter {
        EventFilter {
            actions: list.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        }
    }

    /// 2023-11-14T22:13:20.123456Z.
    const OPENED: i64 = 1_700_000_000_123_456;

    #[test]
    fn a_filter_whose_actions_list_only_the_read_action_is_confined_to_access_records() {
        assert!(only_access_records(&actions(&[READ_ACTION])));
        assert!(only_access_records(&actions(&[READ_ACTION, READ_ACTION])));
        // Whatever else it holds only narrows it.
        let narrowed = EventFilter {
            actor_ids: vec!["mallory".into()],
            expression: "action = \"user.login\" OR actor.id = \"mallory\"".into(),
            ..actions(&[READ_ACTION])
        };
        assert!(only_access_records(&narrowed));
    }

    #[test]
    fn a_filter_that_may_match_other_events_is_not_confined_to_access_records() {
        assert!(
            !only_access_records(&EventFilter::default()),
            "no actions: every event"
        );
        assert!(!only_access_records(&actions(&[READ_ACTION, "user.login"])));
        assert!(!only_access_records(&actions(&["audit.log.*"])), "a pattern");
        assert!(!only_access_records(&actions(&["audit.log.read "])));
        assert!(!only_access_records(&actions(&["AUDIT.LOG.READ"])));
        // The expression alone does not confine it: only `actions` is read.
        let by_expression = EventFilter {
            expression: "action = \"audit.log.read\"".into(),
            ..Default::default()
        };
        assert!(!only_access_records(&by_expression));
    }

    #[test]
    fn a_query_record_names_the_caller_the_rpc_the_filter_and_the_count() {
        let filter = EventFilter {
            actor_ids: vec!["alice".into()],
            ..actions(&["document.read"])
        };
        let target = ReadTarget::Filter {
            filter: &filter,
            after_seq: None,
        };
        let record = PendingRecord::of(reader(), ReadRpc::Query, target, OPENED).returned(2);
        assert_eq!(record.tenant.as_str(), "acme");
        let read = record.read;
        assert_eq!(
            (read.actor_id.as_str(), read.actor_type),
            ("auditor-7", ActorType::User as i32)
        );
        assert_eq!(
            (read.resource_type, read.resource_id.as_str()),
            ("audit.log", "acme")
        );
        assert_eq!(read.outcome, Outcome::Success as i32);
        assert_eq!(read.request_path, "/audit.v1.AuditService/Query");
        assert_eq!(
            (read.client_ip.as_str(), read.user_agent.as_str()),
            ("203.0.113.7", "grpcurl/1.9.1")
        );
        // A unary read has no position, opening time or end.
        assert_eq!(
            read.metadata,
            json!({
                "rpc": "Query",
                "filter": {"actions": ["document.read"], "actorIds": ["alice"]},
                "returned": 2,
            })
        );
    }

    #[test]
    fn a_stream_record_holds_its_position_opening_time_count_and_end() {
        let filter = EventFilter::default();
        let target = ReadTarget::Filter {
            filter: &filter,
            after_seq: Some(7),
        };
        let export = PendingRecord::of(reader(), ReadRpc::Export, target, OPENED)
            .returned(1500)
            .ended("CANCELLED");
        assert_eq!(export.read.request_path, "/audit.v1.AuditService/Export");
        assert_eq!(
            (export.read.resource_type, export.read.resource_id.as_str()),
            ("audit.log", "acme")
        );
        assert_eq!(
            export.read.metadata,
            json!({
                "rpc": "Export",
                "filter": {},
                "after_seq": 7,
                "opened_at": "2023-11-14T22:13:20.123456Z",
                "returned": 1500,
                "end": "CANCELLED",
            })
        );

        // A Watch from the head has no after_seq: recorded as null.
        let target = ReadTarget::Filter {
            filter: &filter,
            after_seq: None,
        };
        let watch = PendingRecord::of(reader(), ReadRpc::Watch, target, OPENED)
            .returned(0)
            .ended("OK");
        assert_eq!(watch.read.metadata["rpc"], json!("Watch"));
        assert_eq!(watch.read.metadata["after_seq"], Value::Null);
        assert_eq!(watch.read.metadata["end"], json!("OK"));
    }

    #[test]
    fn a_get_record_names_the_event_it_asked_for() {
        let id = Uuid::now_v7();
        let record = PendingRecord::of(reader(), ReadRpc::Get, ReadTarget::Event(id), OPENED).returned(1);
        assert_eq!(record.read.request_path, "/audit.v1.AuditService/Get");
        assert_eq!(
            (record.read.resource_type, record.read.resource_id),
            ("audit.event", id.to_string())
        );
        assert_eq!(
            record.read.metadata,
            json!({"rpc": "Get", "id": id.to_string(), "returned": 1})
        );
    }

    #[test]
    fn each_recorded_rpc_is_named_as_the_proto_names_it() {
        let set =
            prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).expect("descriptors");
        let methods: Vec<String> = set
            .file
            .iter()
            .flat_map(|file| &file.service)
            .filter(|service| service.name() == "AuditService")
            .flat_map(|service| &service.method)
            .map(|method| method.name().to_owned())
            .collect();
        for rpc in [ReadRpc::Query, ReadRpc::Get, ReadRpc::Watch, ReadRpc::Export] {
            assert!(methods.iter().any(|m| m == rpc.name()), "{rpc:?} in {methods:?}");
        }
    }

    #[test]
    fn a_long_user_agent_is_cut_on_a_character_boundary() {
        assert_eq!(truncated("grpcurl/1.9.1", MAX_USER_AGENT), "grpcurl/1.9.1");
        // "é" is two bytes: a cut inside one steps back before it.
        let agent = "é".repeat(MAX_USER_AGENT);
        let cut = truncated(&agent, MAX_USER_AGENT - 1);
        assert_eq!(cut.len(), MAX_USER_AGENT - 2);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_stream_end_is_named_as_grpc_names_the_status_code() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::Cancelled), "CANCELLED");
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(tonic::Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
    }
}

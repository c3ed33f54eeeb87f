//! Access auditing: with it on, every Query, Get, Export and Watch of a
//! tenant is itself recorded in the tenant's log as an `audit.log.read`
//! event.

use std::time::Duration;

use audit_service::config::DatabaseConfig;
use audit_service::entity::audit_event;
use audit_service::proto::export_response::Part;
use audit_service::proto::{
    AccessAuditPolicy, ActorType, AuditEvent, DeleteRequest, EventFilter, ExportRequest,
    GetAccessAuditRequest, QueryRequest, SetAccessAuditRequest, SetAccessAuditResponse, WatchRequest,
    WatchResponse, watch_response::Kind,
};
use audit_service::store::{Store, events_of};
use audit_service::tenant::TenantId;
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, QueryFilter, QueryOrder, Statement};
use serde_json::json;
use tokio_stream::StreamExt as _;
use tonic::{Code, Status, Streaming};

use crate::fixtures::{get, get_status, status_of};
use crate::on_both_backends;
use crate::support::{
    ALL_SCOPES, Backend, Caller, Credential, TestServer, assert_status, claims, event, hs256_token,
    new_tenant,
};

on_both_backends!(
    access_auditing_is_off_by_default,
    setting_access_audit_is_recorded_naming_the_caller,
    access_audit_needs_the_admin_scope,
    each_query_is_recorded_with_its_caller_filter_and_count,
    each_get_is_recorded_with_its_id,
    an_api_key_reader_is_recorded_as_an_api_key,
    a_watch_is_recorded_when_the_client_drops_it,
    a_watch_is_recorded_when_the_server_shuts_down,
    a_watch_still_open_when_the_server_stops_is_recorded,
    an_export_is_recorded_once_with_its_caller_filter_position_and_count,
    an_export_the_client_drops_is_recorded_with_what_was_handed_over,
    an_export_confined_to_access_records_is_not_recorded,
    an_export_whose_record_cannot_be_written_ends_unavailable,
    reads_confined_to_access_records_are_not_recorded,
    reads_that_reach_other_events_are_recorded_whatever_they_return,
    a_read_whose_record_cannot_be_written_is_not_answered,
    turning_access_audit_off_stops_recording,
);

/// Bound on waiting for a stream's record or a stream message.
const PATIENCE: Duration = Duration::from_secs(60);
/// The action of the records of reads.
const READ: &str = "audit.log.read";

// ---- helpers ----------------------------------------------------------------

async fn set_access_audit(admin: &mut Caller, enabled: bool) -> Result<SetAccessAuditResponse, Status> {
    let request = admin.request(SetAccessAuditRequest {
        enabled,
        reason: "SOC 2 CC6.1 review".into(),
    });
    admin
        .policy()
        .set_access_audit(request)
        .await
        .map(|r| r.into_inner())
}

async fn get_access_audit(caller: &mut Caller) -> Result<AccessAuditPolicy, Status> {
    let request = caller.request(GetAccessAuditRequest {});
    caller
        .policy()
        .get_access_audit(request)
        .await
        .map(|r| r.into_inner())
}

/// A caller of `tenant` with every scope but `audit:admin`, as `subject`.
async fn reader(server: &TestServer, tenant: &str, subject: &str) -> Caller {
    let token = hs256_token(&claims(subject, tenant, ALL_SCOPES));
    server.caller_with(tenant, Credential::Bearer(token)).await
}

/// The `audit.log.read` events of `tenant`, in seq order, read from the
/// database itself (a read through the service could be recorded too).
async fn records_in(database_url: &str, tenant: &str) -> Vec<audit_event::Model> {
    let store = Store::connect(&DatabaseConfig::new(database_url.to_owned()))
        .await
        .expect("store");
    let tenant = TenantId::parse(tenant, "tenant").expect("tenant");
    let records = events_of(&tenant)
        .filter(audit_event::Column::Action.eq(READ))
        .order_by_asc(audit_event::Column::Seq)
        .all(store.connection())
        .await
        .expect("records");
    store.close().await.expect("close");
    records
}

async fn records(server: &TestServer, tenant: &str) -> Vec<audit_event::Model> {
    records_in(&server.database_url, tenant).await
}

/// Waits until `tenant` has `count` records and returns them.
async fn await_records(server: &TestServer, tenant: &str, count: usize) -> Vec<audit_event::Model> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let found = records(server, tenant).await;
        if found.len() >= count || tokio::time::Instant::now() > deadline {
            assert_eq!(found.len(), count, "records: {found:#?}");
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metadata(record: &audit_event::Model) -> &serde_json::Value {
    record.metadata.as_ref().expect("a record has metadata")
}

/// Asserts `record` names `actor` (a JWT's subject) and `rpc`, and counts
/// `returned` events.
#[track_caller]
fn assert_record(record: &audit_event::Model, actor: &str, rpc: &str, returned: u64) {
    assert_eq!(record.action.as_deref(), Some(READ));
    assert_eq!(record.actor_id.as_deref(), Some(actor), "{record:?}");
    assert_eq!(record.actor_type, Some(ActorType::User as i32), "{record:?}");
    assert_eq!(record.source.as_deref(), Some("audit-service"));
    assert_eq!(metadata(record)["rpc"], json!(rpc), "{record:?}");
    assert_eq!(metadata(record)["returned"], json!(returned), "{record:?}");
}

fn actions(list: &[&str]) -> EventFilter {
    EventFilter {
        actions: list.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    }
}

async fn query(
    caller: &mut Caller,
    filter: EventFilter,
) -> Result<Vec<audit_service::proto::AuditEvent>, Status> {
    let request = caller.request(QueryRequest {
        filter: Some(filter),
        page_size: 100,
        ..Default::default()
    });
    caller.client.query(request).await.map(|r| r.into_inner().events)
}

async fn watch(caller: &mut Caller, filter: EventFilter) -> Streaming<WatchResponse> {
    let request = caller.request(WatchRequest {
        filter: Some(filter),
        after_seq: Some(0),
        ..Default::default()
    });
    caller.client.watch(request).await.expect("watch").into_inner()
}

/// An export read to its end: the tree size its header names and the
/// events of its chunks (erased ones included, without their content).
async fn export_all(caller: &mut Caller, filter: EventFilter, after_seq: u64) -> (u64, Vec<AuditEvent>) {
    let request = caller.request(ExportRequest {
        filter: Some(filter),
        after_seq,
        ..Default::default()
    });
    let mut stream = caller.client.export(request).await.expect("export").into_inner();
    let (mut tree_size, mut events) = (None, Vec::new());
    while let Some(message) = stream.message().await.expect("the export ends OK") {
        match message.part.expect("a part") {
            Part::Header(header) => tree_size = Some(header.tree_size),
            Part::Chunk(chunk) => events.extend(chunk.events),
            Part::Checkpoint(_) => {}
        }
    }
    (tree_size.expect("a header"), events)
}

/// The events of `events` handed over whole (not erased).
fn whole(events: &[AuditEvent]) -> Vec<&AuditEvent> {
    events.iter().filter(|e| !e.action.is_empty()).collect()
}

/// The next `count` events of `stream`, skipping heartbeats.
async fn take_events(stream: &mut Streaming<WatchResponse>, count: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < count {
        let message = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("a message in time")
            .expect("the stream goes on")
            .expect("not a status");
        if let Some(Kind::Event(event)) = message.kind {
            seqs.push(event.seq);
        }
    }
    seqs
}

/// Appends `batches` batches of 50 `document.read` events of 8 KiB each.
async fn append_8_kib_events(admin: &mut Caller, batches: usize) {
    for _ in 0..batches {
        let batch = (0..50)
            .map(|_| audit_service::proto::EventInput {
                reasoning: "x".repeat(8 * 1024),
                ..event("document.read", "frank")
            })
            .collect();
        admin.append(batch).await;
    }
}

/// A reader (as [`reader`]) on a connection with 64 KiB HTTP/2 windows: a
/// stream it stops reading stalls once the windows are full.
async fn small_window_reader(server: &TestServer, tenant: &str, subject: &str) -> Caller {
    let channel = crate::support::small_window_channel(&server.url()).await;
    let mut caller = reader(server, tenant, subject).await;
    caller.client = audit_service::proto::audit_service_client::AuditServiceClient::new(channel);
    caller
}

/// A tenant with access auditing on, its admin, and three `document.read`
/// events of which two are alice's.
async fn audited_tenant(server: &TestServer) -> (String, Caller) {
    let tenant = new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    set_access_audit(&mut admin, true).await.expect("turn on");
    admin
        .append(vec![
            event("document.read", "alice"),
            event("document.read", "alice"),
            event("document.shared", "bob"),
        ])
        .await;
    (tenant, admin)
}

// ---- tests ------------------------------------------------------------------

async fn access_auditing_is_off_by_default(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    let setting = get_access_audit(&mut admin).await.expect("get");
    assert_eq!(setting, AccessAuditPolicy::default(), "off, never set");

    let appended = admin.append(vec![event("document.read", "alice")]).await;
    let mut auditor = reader(&server, &tenant, "auditor").await;
    assert_eq!(
        query(&mut auditor, EventFilter::default())
            .await
            .expect("query")
            .len(),
        1
    );
    get(&mut auditor, &appended[0].id).await;
    let mut stream = watch(&mut auditor, EventFilter::default()).await;
    take_events(&mut stream, 1).await;
    drop(stream);
    // Time for a record that should not be written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(records(&server, &tenant).await.is_empty());
}

async fn setting_access_audit_is_recorded_naming_the_caller(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    let set = set_access_audit(&mut admin, true).await.expect("set");
    let setting = set.access_audit.expect("setting");
    assert!(setting.enabled);
    assert_eq!(setting.updated_by, "compliance-officer");
    assert!(setting.update_time.is_some());
    assert_eq!(get_access_audit(&mut admin).await.expect("get"), setting);

    let event = set.policy_event.expect("policy event");
    assert_eq!(event.action, "audit.policy.access_audit.set");
    assert_eq!(event.seq, 1);
    assert_eq!(event.source, "audit-service");
    assert_eq!(event.reasoning, "SOC 2 CC6.1 review");
    let actor = event.actor.as_ref().expect("actor");
    assert_eq!(
        (actor.id.as_str(), actor.r#type),
        ("compliance-officer", ActorType::User as i32)
    );
    let fields = &event.metadata.as_ref().expect("metadata").fields;
    assert_eq!(
        fields.get("enabled").and_then(|v| v.kind.clone()),
        Some(prost_types::value::Kind::BoolValue(true))
    );
    assert_eq!(
        fields.get("previous_enabled").and_then(|v| v.kind.clone()),
        Some(prost_types::value::Kind::BoolValue(false))
    );
    // The event the response carries is the one in the log.
    assert_eq!(get(&mut admin, &event.id).await, event);
}

async fn access_audit_needs_the_admin_scope(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    // Every other scope, audit:write included, is not enough.
    let mut writer = reader(&server, &tenant, "writer").await;
    let refused = set_access_audit(&mut writer, true)
        .await
        .expect_err("no admin scope");
    assert_status(&refused, Code::PermissionDenied, "MISSING_SCOPE", None);
    let refused = get_access_audit(&mut writer).await.expect_err("no admin scope");
    assert_status(&refused, Code::PermissionDenied, "MISSING_SCOPE", None);
    assert!(
        !get_access_audit(&mut server.admin_for(&tenant).await)
            .await
            .expect("get")
            .enabled
    );

    // audit:admin alone is enough.
    let token = hs256_token(&claims("officer", &tenant, "audit:admin"));
    let mut officer = server.caller_with(&tenant, Credential::Bearer(token)).await;
    set_access_audit(&mut officer, true).await.expect("admin sets it");
    assert!(get_access_audit(&mut officer).await.expect("get").enabled);
}

async fn each_query_is_recorded_with_its_caller_filter_and_count(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, _admin) = audited_tenant(&server).await;
    let mut auditor = reader(&server, &tenant, "auditor-7").await;
    let filter = EventFilter {
        actor_ids: vec!["alice".into()],
        expression: "action = \"document.*\"".into(),
        ..Default::default()
    };
    let returned = query(&mut auditor, filter).await.expect("query");
    assert_eq!(returned.len(), 2);
    // Recorded before the answer: the record is in the log already.
    let found = records(&server, &tenant).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    let record = &found[0];
    assert_record(record, "auditor-7", "Query", 2);
    assert_eq!(
        metadata(record)["filter"],
        json!({"actorIds": ["alice"], "expression": "action = \"document.*\""})
    );
    assert_eq!(record.resource_type.as_deref(), Some("audit.log"));
    assert_eq!(record.resource_id.as_deref(), Some(tenant.as_str()));
    // Where the read came from.
    assert_eq!(
        record.request_path.as_deref(),
        Some("/audit.v1.AuditService/Query")
    );
    assert_eq!(record.request_client_ip.as_deref(), Some("127.0.0.1"));
    assert!(
        record
            .request_user_agent
            .as_deref()
            .is_some_and(|agent| agent.contains("tonic")),
        "{record:?}"
    );

    // Every call is recorded, an empty answer too.
    let none = query(&mut auditor, actions(&["user.login"]))
        .await
        .expect("query");
    assert!(none.is_empty());
    let found = records(&server, &tenant).await;
    assert_eq!(found.len(), 2);
    assert_record(&found[1], "auditor-7", "Query", 0);
    assert_eq!(metadata(&found[1])["filter"], json!({"actions": ["user.login"]}));
}

async fn each_get_is_recorded_with_its_id(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, mut admin) = audited_tenant(&server).await;
    let id = admin.append(vec![event("document.read", "carol")]).await[0]
        .id
        .clone();
    let mut auditor = reader(&server, &tenant, "auditor").await;
    get(&mut auditor, &id).await;
    let found = records(&server, &tenant).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_record(&found[0], "auditor", "Get", 1);
    assert_eq!(metadata(&found[0])["id"], json!(id));
    assert_eq!(found[0].resource_type.as_deref(), Some("audit.event"));
    assert_eq!(found[0].resource_id.as_deref(), Some(id.as_str()));

    // A Get that finds nothing is a read too: recorded, as a failure.
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(get_status(&mut auditor, &unknown).await.code(), Code::NotFound);
    let found = records(&server, &tenant).await;
    assert_eq!(found.len(), 2);
    assert_record(&found[1], "auditor", "Get", 0);
    assert_eq!(metadata(&found[1])["id"], json!(unknown));
    assert_eq!(
        found[1].outcome,
        Some(audit_service::proto::Outcome::Failure as i32)
    );
}

async fn an_api_key_reader_is_recorded_as_an_api_key(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, _admin) = audited_tenant(&server).await;
    let (key_id, key) = server.mint_api_key(&tenant, &["audit:read"]).await;
    let mut keyed = server.caller_with(&tenant, Credential::ApiKey(key)).await;
    query(&mut keyed, EventFilter::default()).await.expect("query");
    let found = records(&server, &tenant).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].actor_id.as_deref(), Some(key_id.to_string().as_str()));
    assert_eq!(found[0].actor_type, Some(ActorType::ApiKey as i32));
}

async fn a_watch_is_recorded_when_the_client_drops_it(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, mut admin) = audited_tenant(&server).await;
    let mut auditor = reader(&server, &tenant, "siem-forwarder").await;
    let mut stream = watch(&mut auditor, actions(&["document.read"])).await;
    assert_eq!(take_events(&mut stream, 2).await.len(), 2);
    // One more, delivered live.
    admin.append(vec![event("document.read", "dave")]).await;
    take_events(&mut stream, 1).await;
    // Not recorded while it runs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(records(&server, &tenant).await.is_empty());

    drop(stream);
    let found = await_records(&server, &tenant, 1).await;
    assert_record(&found[0], "siem-forwarder", "Watch", 3);
    assert_eq!(
        metadata(&found[0])["filter"],
        json!({"actions": ["document.read"]})
    );
    assert_eq!(metadata(&found[0])["after_seq"], json!(0));
    assert_eq!(metadata(&found[0])["end"], json!("CANCELLED"));
    let opened_at = metadata(&found[0])["opened_at"].as_str().expect("opened_at");
    let opened_at = chrono::DateTime::parse_from_rfc3339(opened_at).expect("RFC 3339");
    assert!(
        opened_at.timestamp_micros() < found[0].recorded_at,
        "opened before it ended"
    );
}

async fn a_watch_is_recorded_when_the_server_shuts_down(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = backend.database_url_in(dir.path());
    let server = TestServer::start_on(backend, database_url.clone(), |_| {}).await;
    let (tenant, _admin) = audited_tenant(&server).await;
    let mut auditor = reader(&server, &tenant, "dashboard").await;
    let mut stream = watch(&mut auditor, EventFilter::default()).await;
    // The policy event and the three events.
    assert_eq!(take_events(&mut stream, 4).await, [1, 2, 3, 4]);
    server.stop().await;
    let status = crate::support::end_status(&mut stream, PATIENCE).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Recorded before the server stopped.
    let found = records_in(&database_url, &tenant).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_record(&found[0], "dashboard", "Watch", 4);
    assert_eq!(metadata(&found[0])["end"], json!("UNAVAILABLE"));
}

async fn a_watch_still_open_when_the_server_stops_is_recorded(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = backend.database_url_in(dir.path());
    let server = TestServer::start_on(backend, database_url.clone(), |config| {
        config.shutdown_grace_secs = 1;
    })
    .await;
    let (tenant, mut admin) = audited_tenant(&server).await;
    // Far more than the HTTP/2 windows hold: a client that reads nothing
    // holds the stream short of its end, past the drain grace.
    append_8_kib_events(&mut admin, 8).await;
    let mut stalled = small_window_reader(&server, &tenant, "stalled-reader").await;
    let stream = watch(&mut stalled, EventFilter::default()).await;
    // Time to fill the windows.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop().await;

    let found = records_in(&database_url, &tenant).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(metadata(&found[0])["end"], json!("SERVER_STOPPED"));
    assert_eq!(metadata(&found[0])["rpc"], json!("Watch"));
    let returned = metadata(&found[0])["returned"].as_u64().expect("a count");
    assert!(
        (1..404).contains(&returned),
        "handed to the transport: {returned}"
    );
    drop(stream);
}

async fn an_export_is_recorded_once_with_its_caller_filter_position_and_count(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, mut admin) = audited_tenant(&server).await;
    // Seq 5, erased by seq 6: exported as erased, so not handed over.
    let erased = admin.append(vec![event("document.read", "carol")]).await[0]
        .id
        .clone();
    let request = admin.request(DeleteRequest {
        id: erased,
        reason: "GDPR erasure".into(),
    });
    admin.client.delete(request).await.expect("delete");

    let mut auditor = reader(&server, &tenant, "auditor-7").await;
    let (tree_size, events) = export_all(&mut auditor, actions(&["document.read"]), 2).await;
    assert_eq!(tree_size, 6);
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 5]);
    assert_eq!(whole(&events).len(), 1);

    // Written before the stream's last status went out: there already.
    let found = records(&server, &tenant).await;
    assert_eq!(found.len(), 1, "{found:#?}");
    let record = &found[0];
    assert_record(record, "auditor-7", "Export", 1);
    assert_eq!(metadata(record)["filter"], json!({"actions": ["document.read"]}));
    assert_eq!(metadata(record)["after_seq"], json!(2));
    assert_eq!(metadata(record)["end"], json!("OK"));
    let opened_at = metadata(record)["opened_at"].as_str().expect("opened_at");
    let opened_at = chrono::DateTime::parse_from_rfc3339(opened_at).expect("RFC 3339");
    assert!(opened_at.timestamp_micros() < record.recorded_at);
    assert_eq!(record.resource_type.as_deref(), Some("audit.log"));
    assert_eq!(record.resource_id.as_deref(), Some(tenant.as_str()));
    assert_eq!(
        record.request_path.as_deref(),
        Some("/audit.v1.AuditService/Export")
    );
    assert_eq!(record.request_client_ip.as_deref(), Some("127.0.0.1"));
    // Appended after the head the export covers: no export holds its own
    // record.
    assert_eq!(record.seq, 7);
}

async fn an_export_the_client_drops_is_recorded_with_what_was_handed_over(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, mut admin) = audited_tenant(&server).await;
    // 6.4 MB: chunks are cut at 1 MiB (about 120 of these events), and
    // HTTP/2 windows of 64 KiB hold far less than the rest of the export
    // once the client stops reading.
    append_8_kib_events(&mut admin, 16).await;
    let total = 1 + 3 + 800;
    let mut backfill = small_window_reader(&server, &tenant, "siem-backfill").await;
    let request = backfill.request(ExportRequest {
        filter: None,
        after_seq: 0,
        ..Default::default()
    });
    let mut stream = backfill
        .client
        .export(request)
        .await
        .expect("export")
        .into_inner();
    let mut received = 0;
    while received == 0 {
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("a message in time")
            .expect("not a status")
            .expect("the export goes on");
        if let Some(Part::Chunk(chunk)) = message.part {
            received = whole(&chunk.events).len() as u64;
        }
    }
    assert!(received < total, "the first chunk is not the whole export");
    assert!(records(&server, &tenant).await.is_empty(), "recorded at its end");

    drop(stream);
    let found = await_records(&server, &tenant, 1).await;
    let record = &found[0];
    assert_eq!(metadata(record)["rpc"], json!("Export"));
    assert_eq!(record.actor_id.as_deref(), Some("siem-backfill"));
    assert_eq!(metadata(record)["end"], json!("CANCELLED"));
    assert_eq!(metadata(record)["filter"], json!({}));
    assert_eq!(metadata(record)["after_seq"], json!(0));
    // The events handed to the transport: what the client read, and what
    // the windows held when it went away, not the whole export.
    let returned = metadata(record)["returned"].as_u64().expect("a count");
    assert!(
        (received..total).contains(&returned),
        "received {received}, recorded {returned} of {total}"
    );
}

async fn an_export_confined_to_access_records_is_not_recorded(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, _admin) = audited_tenant(&server).await;
    let mut auditor = reader(&server, &tenant, "auditor").await;
    query(&mut auditor, EventFilter::default()).await.expect("query");
    assert_eq!(records(&server, &tenant).await.len(), 1);

    // Exporting the access records adds none. A recorded export's record
    // is written before its end goes out, so none is on its way either.
    let narrowed = EventFilter {
        expression: "actor.id = \"auditor\"".into(),
        ..actions(&[READ])
    };
    for filter in [actions(&[READ]), narrowed] {
        let (_, events) = export_all(&mut auditor, filter, 0).await;
        let handed = whole(&events);
        assert_eq!(handed.len(), 1);
        assert_eq!(handed[0].action, READ);
        assert_eq!(records(&server, &tenant).await.len(), 1, "no chain of records");
    }

    // An export that may reach other events is recorded, though it hands
    // over access records alone.
    let (_, events) = export_all(&mut auditor, actions(&[READ, "user.login"]), 0).await;
    assert!(whole(&events).iter().all(|e| e.action == READ), "{events:?}");
    let found = records(&server, &tenant).await;
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_record(&found[1], "auditor", "Export", 1);
    assert_eq!(
        metadata(&found[1])["filter"],
        json!({"actions": [READ, "user.login"]})
    );
}

async fn an_export_whose_record_cannot_be_written_ends_unavailable(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, _admin) = audited_tenant(&server).await;
    let refusal = RefusedRecords::install(&server, &tenant).await;
    let mut auditor = reader(&server, &tenant, "auditor").await;
    let request = auditor.request(ExportRequest {
        filter: None,
        after_seq: 0,
        ..Default::default()
    });
    let mut stream = auditor.client.export(request).await.expect("export").into_inner();
    let mut parts = Vec::new();
    // The record is tried a few times (about 5 s) before the end goes out.
    let status = loop {
        match tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("a message in time")
        {
            Ok(Some(message)) => parts.push(message.part.expect("a part")),
            Ok(None) => panic!(
                "ended OK after {} messages though its record was refused",
                parts.len()
            ),
            Err(status) => break status,
        }
    };
    // The events went out as they were read; the end says the export went
    // unrecorded.
    assert!(
        matches!(parts.last(), Some(Part::Checkpoint(_))),
        "the whole export went out"
    );
    assert_status(&status, Code::Unavailable, "UNAVAILABLE", None);
    assert!(status.message().contains("could not be recorded"), "{status:?}");
    refusal.remove().await;
    assert!(records(&server, &tenant).await.is_empty());
}

async fn reads_confined_to_access_records_are_not_recorded(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, _admin) = audited_tenant(&server).await;
    let mut auditor = reader(&server, &tenant, "auditor").await;
    query(&mut auditor, EventFilter::default()).await.expect("query");
    assert_eq!(records(&server, &tenant).await.len(), 1);

    // Reading the access records, over and over, adds none.
    let reads_only = actions(&[READ]);
    for _ in 0..3 {
        let found = query(&mut auditor, reads_only.clone()).await.expect("query");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].action, READ);
    }
    let narrowed = EventFilter {
        expression: "actor.id = \"auditor\"".into(),
        ..reads_only.clone()
    };
    assert_eq!(query(&mut auditor, narrowed).await.expect("query").len(), 1);
    let record = records(&server, &tenant).await.remove(0);
    let fetched = get(&mut auditor, &record.id.to_string()).await;
    assert_eq!(fetched.action, READ);
    let mut stream = watch(&mut auditor, reads_only).await;
    assert_eq!(take_events(&mut stream, 1).await, [fetched.seq]);
    drop(stream);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(records(&server, &tenant).await.len(), 1, "no chain of records");
}

async fn reads_that_reach_other_events_are_recorded_whatever_they_return(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, _admin) = audited_tenant(&server).await;
    let mut auditor = reader(&server, &tenant, "auditor").await;
    query(&mut auditor, EventFilter::default()).await.expect("query");
    assert_eq!(records(&server, &tenant).await.len(), 1);

    // Each of these answers only access records, yet tells something of the
    // other events (that none matches): each is recorded.
    let probes = [
        actions(&[READ, "user.login"]),
        actions(&["audit.log.*"]),
        EventFilter {
            expression: "action = \"audit.log.read\" OR actor.id = \"mallory\"".into(),
            ..Default::default()
        },
        EventFilter {
            actions: vec![READ.into()],
            actor_ids: vec!["auditor".into()],
            ..Default::default()
        },
    ];
    let confined = probes.len() - 1;
    for (index, probe) in probes.into_iter().enumerate() {
        let found = query(&mut auditor, probe.clone()).await.expect("query");
        assert!(found.iter().all(|e| e.action == READ), "{found:?}");
        assert!(!found.is_empty());
        let expected = if index == confined { 1 + index } else { 2 + index };
        assert_eq!(records(&server, &tenant).await.len(), expected, "{probe:?}");
    }
    // So is a Watch whose filter reaches other events, though it delivered
    // only access records.
    let mut stream = watch(&mut auditor, actions(&[READ, "user.login"])).await;
    take_events(&mut stream, 1).await;
    drop(stream);
    let found = await_records(&server, &tenant, 5).await;
    assert_eq!(metadata(&found[4])["rpc"], json!("Watch"));
}

async fn a_read_whose_record_cannot_be_written_is_not_answered(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, mut admin) = audited_tenant(&server).await;
    let id = admin.append(vec![event("document.read", "erin")]).await[0]
        .id
        .clone();
    let refusal = RefusedRecords::install(&server, &tenant).await;

    let mut auditor = reader(&server, &tenant, "auditor").await;
    let status = query(&mut auditor, EventFilter::default())
        .await
        .expect_err("an unrecorded read is refused");
    assert_status(&status, Code::Unavailable, "UNAVAILABLE", None);
    assert!(status.message().contains("access"), "{status:?}");
    let status = get_status(&mut auditor, &id).await;
    assert_status(&status, Code::Unavailable, "UNAVAILABLE", None);
    // A Watch is checked when it opens; its record is written at its end.

    refusal.remove().await;
    assert_eq!(
        query(&mut auditor, EventFilter::default())
            .await
            .expect("query")
            .len(),
        5
    );
    let found = records(&server, &tenant).await;
    assert_eq!(found.len(), 1, "only the answered read is recorded");
    assert_record(&found[0], "auditor", "Query", 5);
}

async fn turning_access_audit_off_stops_recording(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant, mut admin) = audited_tenant(&server).await;
    let mut auditor = reader(&server, &tenant, "auditor").await;
    query(&mut auditor, EventFilter::default()).await.expect("query");
    let off = set_access_audit(&mut admin, false).await.expect("turn off");
    assert!(!off.access_audit.expect("setting").enabled);
    let event = off.policy_event.expect("event");
    assert_eq!(event.action, "audit.policy.access_audit.set");
    query(&mut auditor, EventFilter::default()).await.expect("query");
    let id = event.id.clone();
    get(&mut auditor, &id).await;
    assert_eq!(records(&server, &tenant).await.len(), 1);
    let status = status_of(
        auditor
            .policy()
            .set_access_audit(auditor.request(SetAccessAuditRequest {
                enabled: true,
                reason: String::new(),
            }))
            .await,
    );
    assert_status(&status, Code::PermissionDenied, "MISSING_SCOPE", None);
}

/// A trigger that makes the database refuse a tenant's `audit.log.read`
/// events (and nothing else), as a failing disk or a lost connection
/// would refuse them.
struct RefusedRecords {
    database_url: String,
    backend: DbBackend,
    name: String,
}

impl RefusedRecords {
    async fn install(server: &TestServer, tenant: &str) -> Self {
        let backend = match server.backend {
            Backend::Sqlite => DbBackend::Sqlite,
            Backend::Postgres(_) => DbBackend::Postgres,
        };
        let name = format!("refuse_{}", tenant.replace('-', "_"));
        let statements = match backend {
            DbBackend::Postgres => vec![
                format!(
                    "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS \
                     $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
                ),
                format!(
                    "CREATE TRIGGER {name} BEFORE INSERT ON audit_events FOR EACH ROW \
                     WHEN (NEW.tenant_id = '{tenant}' AND NEW.action = '{READ}') EXECUTE FUNCTION {name}()"
                ),
            ],
            _ => vec![format!(
                "CREATE TRIGGER {name} BEFORE INSERT ON audit_events \
                 WHEN NEW.tenant_id = '{tenant}' AND NEW.action = '{READ}' \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )],
        };
        let refusal = Self {
            database_url: server.database_url.clone(),
            backend,
            name,
        };
        refusal.run(statements).await;
        refusal
    }

    async fn remove(self) {
        let name = &self.name;
        let statements = match self.backend {
            DbBackend::Postgres => vec![
                format!("DROP TRIGGER {name} ON audit_events"),
                format!("DROP FUNCTION {name}()"),
            ],
            _ => vec![format!("DROP TRIGGER {name}")],
        };
        self.run(statements).await;
    }

    async fn run(&self, statements: Vec<String>) {
        let db = sea_orm::Database::connect(&self.database_url)
            .await
            .expect("connect");
        for sql in statements {
            db.execute_raw(Statement::from_string(self.backend, sql))
                .await
                .expect("trigger statement");
        }
        db.close().await.expect("close");
    }
}

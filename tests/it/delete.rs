//! Delete: erases one event's content, keeps its seq, and audits itself.

use audit_service::config::DatabaseConfig;
use audit_service::entity::audit_event;
use audit_service::proto::{
    Actor, ActorType, DeleteRequest, DeleteResponse, EventFilter, EventInput, Outcome, RequestContext,
    Resource,
};
use audit_service::store::Store;
use prost_types::value::Kind;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tonic::Code;

use crate::fixtures::{get, get_status, seqs, status_of};
use crate::on_both_backends;
use crate::support::{Backend, Caller, TestServer, assert_status, event};

on_both_backends!(
    delete_response_names_the_erased_event_and_the_deletion_event,
    deleted_event_is_not_found_by_get,
    deleted_event_is_no_longer_returned_by_query,
    deleted_event_content_is_erased_from_storage,
    events_after_a_deleted_event_keep_their_seqs,
    deletion_event_takes_the_next_seq_and_the_next_append_follows_it,
    deletion_event_is_in_the_log_naming_the_erased_event,
    deleting_twice_is_not_found,
    delete_with_malformed_id_is_invalid_argument,
    delete_of_unknown_id_is_not_found,
    deletion_event_cannot_be_deleted,
);

const REASON: &str = "GDPR erasure request #4711";

/// A caller whose tenant holds three events (seqs 1, 2, 3), and their ids.
async fn three_events(server: &TestServer) -> (Caller, Vec<String>) {
    let mut caller = server.caller().await;
    let rich = EventInput {
        actor: Some(Actor {
            id: "alice".into(),
            r#type: ActorType::User as i32,
            name: "Alice Liddell".into(),
            email: "alice@example.com".into(),
        }),
        action: "document.share".into(),
        resource: Some(Resource {
            r#type: "document".into(),
            id: "doc-42".into(),
            name: "Secret plans".into(),
        }),
        outcome: Outcome::Success as i32,
        request: Some(RequestContext {
            method: "POST".into(),
            path: "/share".into(),
            status_code: 200,
            client_ip: "192.0.2.7".into(),
            user_agent: "curl/8".into(),
            request_id: "req-erase-me".into(),
            client_identity: "spiffe://example.org/ns/docs/sa/sharer".into(),
        }),
        source: "docs".into(),
        reasoning: "shared with a partner".into(),
        metadata: Some(prost_types::Struct {
            fields: [(
                "ssn".to_owned(),
                prost_types::Value {
                    kind: Some(Kind::StringValue("123-45-6789".into())),
                },
            )]
            .into(),
        }),
        idempotency_key: "erase-key".into(),
        ..Default::default()
    };
    let appended = caller
        .append(vec![
            event("user.login", "alice"),
            rich,
            event("user.logout", "alice"),
        ])
        .await;
    assert_eq!(appended.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    let ids = appended.into_iter().map(|r| r.id).collect();
    (caller, ids)
}

async fn delete(caller: &mut Caller, id: &str, reason: &str) -> DeleteResponse {
    let request = caller.request(DeleteRequest {
        id: id.to_owned(),
        reason: reason.to_owned(),
    });
    caller.client.delete(request).await.expect("delete").into_inner()
}

async fn delete_status(caller: &mut Caller, id: &str) -> tonic::Status {
    let request = caller.request(DeleteRequest {
        id: id.to_owned(),
        reason: REASON.to_owned(),
    });
    status_of(caller.client.delete(request).await)
}

async fn delete_response_names_the_erased_event_and_the_deletion_event(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, ids) = three_events(&server).await;
    let response = delete(&mut caller, &ids[1], REASON).await;
    assert_eq!(response.id, ids[1]);
    assert_eq!(response.seq, 2);
    let deletion = response.deletion_event.expect("deletion_event");
    assert_eq!(deletion.seq, 4);
    assert_eq!(deletion.tenant_id, caller.tenant);
    assert_eq!(deletion.action, "audit.event.deleted");
    let resource = deletion.resource.clone().expect("resource");
    assert_eq!(
        (resource.r#type.as_str(), resource.id.as_str()),
        ("audit.event", ids[1].as_str())
    );
    assert_eq!(deletion.reasoning, REASON);
    let actor = deletion.actor.clone().expect("actor");
    assert_eq!(actor.id, "tester");
    assert_eq!(deletion.outcome, Outcome::Success as i32);
    assert_ne!(deletion.id, ids[1]);
    assert!(deletion.recorded_at.is_some());
    // The response describes exactly what is stored.
    assert_eq!(get(&mut caller, &deletion.id).await, deletion);
}

async fn deleted_event_is_not_found_by_get(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, ids) = three_events(&server).await;
    get(&mut caller, &ids[1]).await;
    delete(&mut caller, &ids[1], REASON).await;
    let status = get_status(&mut caller, &ids[1]).await;
    assert_status(&status, Code::NotFound, "NOT_FOUND", None);
    // Its neighbours are still there.
    assert_eq!(get(&mut caller, &ids[0]).await.seq, 1);
    assert_eq!(get(&mut caller, &ids[2]).await.seq, 3);
}

async fn deleted_event_is_no_longer_returned_by_query(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, ids) = three_events(&server).await;
    delete(&mut caller, &ids[1], REASON).await;
    for order_by in ["seq desc", "seq asc", "occurred_at desc", "occurred_at asc"] {
        let events = caller.query_all(EventFilter::default(), order_by, 2).await;
        assert!(events.iter().all(|e| e.id != ids[1]), "{order_by}: {events:?}");
        assert_eq!(events.len(), 3, "{order_by}");
    }
    // Not even when the filter names its erased content.
    for filter in [
        EventFilter {
            actions: vec!["document.share".into()],
            ..Default::default()
        },
        EventFilter {
            actor_email: "alice@example.com".into(),
            ..Default::default()
        },
        EventFilter {
            request_id: "req-erase-me".into(),
            ..Default::default()
        },
        EventFilter {
            resource_ids: vec!["doc-42".into()],
            ..Default::default()
        },
    ] {
        let events = caller.query_all(filter.clone(), "", 10).await;
        assert!(events.is_empty(), "{filter:?}: {events:?}");
    }
}

async fn deleted_event_content_is_erased_from_storage(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, ids) = three_events(&server).await;
    delete(&mut caller, &ids[1], REASON).await;

    let store = Store::connect(&DatabaseConfig::new(server.database_url.clone()))
        .await
        .expect("store");
    let row = audit_event::Entity::find()
        .filter(audit_event::Column::TenantId.eq(caller.tenant.as_str()))
        .filter(audit_event::Column::Seq.eq(2))
        .one(store.connection())
        .await
        .expect("read row")
        .expect("the erased event keeps its row and seq");
    store.close().await.expect("close");

    assert_eq!(row.id.to_string(), ids[1]);
    assert!(row.deleted_at.is_some());
    let content = [
        format!("{:?}", row.occurred_at),
        format!("{:?}", row.actor_id),
        format!("{:?}", row.actor_type),
        format!("{:?}", row.actor_name),
        format!("{:?}", row.actor_email),
        format!("{:?}", row.action),
        format!("{:?}", row.resource_type),
        format!("{:?}", row.resource_id),
        format!("{:?}", row.resource_name),
        format!("{:?}", row.outcome),
        format!("{:?}", row.request_method),
        format!("{:?}", row.request_path),
        format!("{:?}", row.request_status_code),
        format!("{:?}", row.request_client_ip),
        format!("{:?}", row.request_user_agent),
        format!("{:?}", row.request_id),
        format!("{:?}", row.source),
        format!("{:?}", row.reasoning),
        format!("{:?}", row.metadata),
    ];
    assert!(
        content.iter().all(|c| c == "None"),
        "content left behind: {row:?}"
    );
}

async fn events_after_a_deleted_event_keep_their_seqs(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, ids) = three_events(&server).await;
    delete(&mut caller, &ids[0], REASON).await;
    let events = caller.query_all(EventFilter::default(), "seq asc", 100).await;
    assert_eq!(seqs(&events), [2, 3, 4]);
    assert_eq!(events[0].id, ids[1]);
    assert_eq!(events[1].id, ids[2]);
    assert_eq!(get(&mut caller, &ids[2]).await.seq, 3);
}

async fn deletion_event_takes_the_next_seq_and_the_next_append_follows_it(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, ids) = three_events(&server).await;
    let response = delete(&mut caller, &ids[1], REASON).await;
    assert_eq!(response.deletion_event.expect("deletion_event").seq, 4);
    let next = caller.append(vec![event("user.login", "bob")]).await;
    assert_eq!((next[0].seq, next[0].duplicate), (5, false));
    let events = caller.query_all(EventFilter::default(), "seq asc", 100).await;
    assert_eq!(seqs(&events), [1, 3, 4, 5]);
}

async fn deletion_event_is_in_the_log_naming_the_erased_event(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, ids) = three_events(&server).await;
    delete(&mut caller, &ids[1], REASON).await;
    let filter = EventFilter {
        actions: vec!["audit.event.deleted".into()],
        ..Default::default()
    };
    let logged = caller.query_all(filter, "", 10).await;
    assert_eq!(logged.len(), 1, "{logged:?}");
    let deletion = &logged[0];
    assert_eq!(deletion.seq, 4);
    assert_eq!(deletion.tenant_id, caller.tenant);
    let resource = deletion.resource.clone().expect("resource");
    assert_eq!(resource.r#type, "audit.event");
    assert_eq!(resource.id, ids[1]);
    assert_eq!(deletion.reasoning, REASON);
    let actor = deletion.actor.clone().expect("actor");
    assert_eq!(actor.id, "tester");
    assert_eq!(actor.r#type, ActorType::User as i32);
    let metadata = deletion.metadata.clone().expect("metadata");
    let deleted_seq = metadata.fields.get("deleted_seq").and_then(|v| v.kind.clone());
    assert_eq!(deleted_seq, Some(Kind::NumberValue(2.0)), "{metadata:?}");
    // And it is the newest event of the log.
    let newest = caller
        .query(crate::fixtures::query(EventFilter::default(), "", 1, ""))
        .await;
    assert_eq!(newest.events[0].id, deletion.id);
}

async fn deleting_twice_is_not_found(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, ids) = three_events(&server).await;
    delete(&mut caller, &ids[1], REASON).await;
    let status = delete_status(&mut caller, &ids[1]).await;
    assert_status(&status, Code::NotFound, "NOT_FOUND", None);
    // The refused second delete recorded nothing.
    let events = caller.query_all(EventFilter::default(), "seq asc", 100).await;
    assert_eq!(seqs(&events), [1, 3, 4]);
}

async fn delete_with_malformed_id_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, ids) = three_events(&server).await;
    for id in ["", "not-a-uuid", "12345", &format!("{}x", ids[0])] {
        let status = delete_status(&mut caller, id).await;
        assert_status(&status, Code::InvalidArgument, "INVALID_ARGUMENT", Some("id"));
    }
    let events = caller.query_all(EventFilter::default(), "seq asc", 100).await;
    assert_eq!(seqs(&events), [1, 2, 3]);
}

async fn delete_of_unknown_id_is_not_found(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, _) = three_events(&server).await;
    for id in [uuid::Uuid::now_v7(), uuid::Uuid::nil(), uuid::Uuid::max()] {
        let status = delete_status(&mut caller, &id.to_string()).await;
        assert_status(&status, Code::NotFound, "NOT_FOUND", None);
    }
    let events = caller.query_all(EventFilter::default(), "seq asc", 100).await;
    assert_eq!(seqs(&events), [1, 2, 3]);
}

async fn deletion_event_cannot_be_deleted(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, ids) = three_events(&server).await;
    let deletion = delete(&mut caller, &ids[1], REASON).await;
    let record = deletion.deletion_event.expect("deletion event");
    let status = delete_status(&mut caller, &record.id).await;
    assert_status(&status, Code::FailedPrecondition, "PROTECTED_EVENT", None);
    assert!(status.message().contains(&record.id), "{status:?}");
    // The record of the deletion is still there, whole, and nothing else
    // was recorded.
    let kept = get(&mut caller, &record.id).await;
    assert_eq!(kept, record);
    let events = caller.query_all(EventFilter::default(), "seq asc", 100).await;
    assert_eq!(seqs(&events), [1, 3, 4]);
}

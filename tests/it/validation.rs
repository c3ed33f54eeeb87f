//! Validation: every bad field is INVALID_ARGUMENT naming the field, and a
//! batch with one bad event records nothing.

use audit_service::proto::{Actor, EventFilter, EventInput, QueryRequest, RequestContext, Resource};
use prost_types::value::Kind;
use prost_types::{Struct, Value};
use tonic::{Code, Status};

use crate::fixtures::{append_status, get_status, query, query_status, seqs, ts};
use crate::on_both_backends;
use crate::support::{Backend, Caller, TestServer, assert_status, event};

on_both_backends!(
    empty_batch_is_invalid_argument,
    batch_of_1001_events_is_invalid_argument,
    batch_of_1000_events_is_accepted,
    missing_action_is_invalid_argument,
    missing_actor_id_names_the_event_in_the_batch,
    malformed_action_is_invalid_argument,
    reserved_audit_action_is_invalid_argument,
    metadata_over_64_kib_is_invalid_argument,
    metadata_of_exactly_64_kib_is_accepted,
    metadata_with_a_nul_character_is_invalid_argument,
    metadata_text_spelling_an_escaped_nul_is_accepted,
    malformed_client_ip_is_invalid_argument,
    unknown_outcome_is_invalid_argument,
    unknown_actor_type_is_invalid_argument,
    out_of_range_occurred_at_is_invalid_argument,
    out_of_range_status_code_is_invalid_argument,
    oversized_text_field_is_invalid_argument,
    every_bad_field_of_a_batch_is_named,
    malformed_get_id_is_invalid_argument,
    unknown_enum_in_query_filter_is_invalid_argument,
    query_end_time_before_start_time_is_invalid_argument,
    query_filter_value_with_a_nul_character_is_invalid_argument,
    batch_with_one_bad_event_stores_nothing,
);

/// Asserts `status` is INVALID_ARGUMENT naming `field`.
#[track_caller]
fn assert_invalid(status: &Status, field: &str) {
    assert_status(status, Code::InvalidArgument, "INVALID_ARGUMENT", Some(field));
}

/// The fields a BadRequest names.
fn violated_fields(status: &Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// Asserts the caller's tenant has recorded nothing.
async fn assert_log_empty(caller: &mut Caller) {
    let stored = caller.query_all(EventFilter::default(), "seq asc", 1000).await;
    assert!(stored.is_empty(), "recorded: {stored:?}");
}

/// An Append of the single event `input` must fail naming `field` and
/// record nothing.
async fn assert_refused(caller: &mut Caller, input: EventInput, field: &str) {
    let status = append_status(caller, vec![input.clone()]).await;
    assert_invalid(&status, field);
    assert_eq!(violated_fields(&status), [field], "{input:?}");
    assert_log_empty(caller).await;
}

fn metadata_with_string(len: usize) -> Struct {
    Struct {
        fields: [(
            "k".to_owned(),
            Value {
                kind: Some(Kind::StringValue("x".repeat(len))),
            },
        )]
        .into(),
    }
}

async fn empty_batch_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let status = append_status(&mut caller, Vec::new()).await;
    assert_invalid(&status, "events");
}

async fn batch_of_1001_events_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let status = append_status(&mut caller, (0..1001).map(|_| event("a.b", "x")).collect()).await;
    assert_invalid(&status, "events");
    assert_log_empty(&mut caller).await;
}

async fn batch_of_1000_events_is_accepted(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let appended = caller
        .append((0..1000).map(|_| event("a.b", "x")).collect())
        .await;
    assert_eq!(appended.len(), 1000);
    assert_eq!(appended.last().unwrap().seq, 1000);
}

async fn missing_action_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    assert_refused(&mut caller, event("", "alice"), "events[0].action").await;
}

async fn missing_actor_id_names_the_event_in_the_batch(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let mut no_actor = event("user.login", "");
    let status = append_status(&mut caller, vec![event("user.login", "alice"), no_actor.clone()]).await;
    assert_invalid(&status, "events[1].actor.id");
    assert_eq!(violated_fields(&status), ["events[1].actor.id"]);

    // No actor at all is the same violation.
    no_actor.actor = None;
    let status = append_status(&mut caller, vec![event("user.login", "alice"), no_actor]).await;
    assert_eq!(violated_fields(&status), ["events[1].actor.id"]);
    assert_log_empty(&mut caller).await;
}

async fn malformed_action_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let too_long = format!("a.{}", "b".repeat(127));
    for action in [
        "User Login",
        "login",
        "User.login",
        "user.Login",
        "user..login",
        ".user",
        "user.",
        "2fa.enable",
        "user-x.login",
        "user.login ",
        too_long.as_str(),
    ] {
        assert_refused(&mut caller, event(action, "alice"), "events[0].action").await;
    }
}

async fn reserved_audit_action_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    for action in ["audit.event.deleted", "audit.anything"] {
        assert_refused(&mut caller, event(action, "alice"), "events[0].action").await;
    }
    // Only the `audit.` namespace is reserved.
    let appended = caller.append(vec![event("auditor.review", "alice")]).await;
    assert_eq!(appended[0].seq, 1);
}

async fn metadata_over_64_kib_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    // {"k":"xxx..."} is 8 bytes of JSON around the string.
    let input = EventInput {
        metadata: Some(metadata_with_string(64 * 1024 - 8 + 1)),
        ..event("user.login", "alice")
    };
    assert_refused(&mut caller, input, "events[0].metadata").await;
    let input = EventInput {
        metadata: Some(metadata_with_string(1024 * 1024)),
        ..event("user.login", "alice")
    };
    assert_refused(&mut caller, input, "events[0].metadata").await;
}

async fn metadata_of_exactly_64_kib_is_accepted(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let metadata = metadata_with_string(64 * 1024 - 8);
    let input = EventInput {
        metadata: Some(metadata.clone()),
        ..event("user.login", "alice")
    };
    let id = caller.append(vec![input]).await[0].id.clone();
    let stored = crate::fixtures::get(&mut caller, &id).await;
    assert_eq!(stored.metadata, Some(metadata));
}

fn metadata_with(key: &str, text: &str) -> Struct {
    Struct {
        fields: [(
            key.to_owned(),
            Value {
                kind: Some(Kind::StringValue(text.to_owned())),
            },
        )]
        .into(),
    }
}

async fn metadata_with_a_nul_character_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    for metadata in [metadata_with("k", "a\0b"), metadata_with("k\0", "v")] {
        let input = EventInput {
            metadata: Some(metadata),
            ..event("user.login", "alice")
        };
        assert_refused(&mut caller, input, "events[0].metadata").await;
    }
}

async fn metadata_text_spelling_an_escaped_nul_is_accepted(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    // Six ordinary characters, backslash u 0 0 0 0, as in a logged JSON
    // payload or a C string literal: no NUL character at all.
    let metadata = metadata_with("payload", r#"{"name":"a\u0000b"}"#);
    let input = EventInput {
        metadata: Some(metadata.clone()),
        ..event("user.login", "alice")
    };
    let request = caller.request(audit_service::proto::AppendRequest { events: vec![input] });
    let appended = caller
        .client
        .append(request)
        .await
        .unwrap_or_else(|status| panic!("metadata without any NUL character refused: {status:?}"));
    let id = appended.into_inner().results[0].id.clone();
    assert_eq!(
        crate::fixtures::get(&mut caller, &id).await.metadata,
        Some(metadata)
    );
}

async fn malformed_client_ip_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    for ip in [
        "not-an-ip",
        "10.0.0.256",
        "10.0.0",
        "::g",
        "10.0.0.1:443",
        " 10.0.0.1",
    ] {
        let input = EventInput {
            request: Some(RequestContext {
                client_ip: ip.into(),
                ..Default::default()
            }),
            ..event("user.login", "alice")
        };
        assert_refused(&mut caller, input, "events[0].request.client_ip").await;
    }
}

async fn unknown_outcome_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    for outcome in [4, 42, -1] {
        let input = EventInput {
            outcome,
            ..event("user.login", "alice")
        };
        assert_refused(&mut caller, input, "events[0].outcome").await;
    }
}

async fn unknown_actor_type_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let input = EventInput {
        actor: Some(Actor {
            id: "alice".into(),
            r#type: 99,
            ..Default::default()
        }),
        ..event("user.login", "alice")
    };
    assert_refused(&mut caller, input, "events[0].actor.type").await;
}

async fn out_of_range_occurred_at_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    for occurred_at in [ts(0, -1), ts(0, 1_000_000_000), ts(253_402_300_800, 0)] {
        let input = EventInput {
            occurred_at: Some(occurred_at),
            ..event("user.login", "alice")
        };
        assert_refused(&mut caller, input, "events[0].occurred_at").await;
    }
}

async fn out_of_range_status_code_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    for status_code in [-1, 1000] {
        let input = EventInput {
            request: Some(RequestContext {
                status_code,
                ..Default::default()
            }),
            ..event("user.login", "alice")
        };
        assert_refused(&mut caller, input, "events[0].request.status_code").await;
    }
}

async fn oversized_text_field_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let input = EventInput {
        resource: Some(Resource {
            id: "r".repeat(513),
            ..Default::default()
        }),
        ..event("user.login", "alice")
    };
    assert_refused(&mut caller, input, "events[0].resource.id").await;
    let input = EventInput {
        source: "bad\0source".into(),
        ..event("user.login", "alice")
    };
    assert_refused(&mut caller, input, "events[0].source").await;
}

async fn every_bad_field_of_a_batch_is_named(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let bad_ip = EventInput {
        request: Some(RequestContext {
            client_ip: "nope".into(),
            ..Default::default()
        }),
        ..event("user.login", "alice")
    };
    let events = vec![
        event("user.login", "alice"),
        event("Bad Action", ""),
        bad_ip,
        event("user.login", "alice"),
    ];
    let status = append_status(&mut caller, events).await;
    let mut fields = violated_fields(&status);
    fields.sort();
    assert_eq!(
        fields,
        [
            "events[1].action",
            "events[1].actor.id",
            "events[2].request.client_ip"
        ]
    );
    assert_log_empty(&mut caller).await;
}

async fn malformed_get_id_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    for id in ["", "not-a-uuid", "12345", "0190d1a4-8b5c-7cde-9f00-11223344556"] {
        let status = get_status(&mut caller, id).await;
        assert_invalid(&status, "id");
    }
}

async fn unknown_enum_in_query_filter_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let filter = EventFilter {
        outcomes: vec![2, 42],
        ..Default::default()
    };
    let status = query_status(&mut caller, query(filter, "", 10, "")).await;
    assert_invalid(&status, "filter.outcomes[1]");
    let filter = EventFilter {
        actor_types: vec![77],
        ..Default::default()
    };
    let status = query_status(&mut caller, query(filter, "", 10, "")).await;
    assert_invalid(&status, "filter.actor_types[0]");
}

async fn query_end_time_before_start_time_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let request = QueryRequest {
        filter: Some(EventFilter {
            start_time: Some(ts(2_000, 0)),
            end_time: Some(ts(1_000, 0)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let status = query_status(&mut caller, request).await;
    assert_invalid(&status, "filter.end_time");
}

async fn batch_with_one_bad_event_stores_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let mut events: Vec<EventInput> = (0..10).map(|i| event("user.login", &format!("u{i}"))).collect();
    events[7].action = "User Login".into();
    let status = append_status(&mut caller, events).await;
    assert_invalid(&status, "events[7].action");
    assert_log_empty(&mut caller).await;

    let appended = caller.append(vec![event("user.login", "alice")]).await;
    assert_eq!((appended[0].seq, appended[0].duplicate), (1, false));
    let stored = caller.query_all(EventFilter::default(), "seq asc", 100).await;
    assert_eq!(seqs(&stored), [1]);
}

async fn query_filter_value_with_a_nul_character_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    caller.append(vec![event("user.login", "alice")]).await;
    let nul = || "a\0b".to_owned();
    for (filter, field) in [
        (
            EventFilter {
                actor_ids: vec![nul()],
                ..Default::default()
            },
            "filter.actor_ids[0]",
        ),
        (
            EventFilter {
                actions: vec!["user.login".into(), format!("{}*", nul())],
                ..Default::default()
            },
            "filter.actions[1]",
        ),
        (
            EventFilter {
                request_id: nul(),
                ..Default::default()
            },
            "filter.request_id",
        ),
        (
            EventFilter {
                actor_email: nul(),
                ..Default::default()
            },
            "filter.actor_email",
        ),
    ] {
        let status = query_status(&mut caller, query(filter, "", 10, "")).await;
        assert_invalid(&status, field);
    }
}

//! What the server offers around the core RPCs: health, reflection v1 and
//! v1alpha, graceful stop, Get's full event, and Query's pages carrying
//! each event exactly as Get returns it.

use audit_service::proto::{
    Actor, ActorType, AuditEvent, EventFilter, EventInput, Outcome, RequestContext, Resource,
};
use prost::Message as _;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::fixtures::{BASE_SECS, get, ts};
use crate::on_both_backends;
use crate::support::{Backend, TestServer, event};

on_both_backends!(
    health_reports_the_audit_service_serving,
    reflection_v1_lists_the_audit_service,
    reflection_v1alpha_lists_the_audit_service,
    reflection_v1_describes_the_file_containing_the_audit_service,
    reflection_v1alpha_describes_the_file_containing_the_audit_service,
    graceful_stop_returns_ok_and_stops_listening,
    get_returns_every_field_that_was_sent,
    occurred_at_defaults_to_recorded_at,
    occurred_at_round_trips_across_the_whole_timestamp_range,
    query_pages_carry_each_event_exactly_as_get_returns_it,
);

const AUDIT_SERVICE: &str = "audit.v1.AuditService";

async fn health_reports_the_audit_service_serving(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in [AUDIT_SERVICE, ""] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(response.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);
}

/// One client per reflection version, with the same two questions.
macro_rules! reflection_version {
    ($version:ident) => {
        mod $version {
            use tonic::transport::Channel;
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

            async fn ask(channel: Channel, request: MessageRequest) -> MessageResponse {
                let mut client = ServerReflectionClient::new(channel);
                let request = ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(request),
                };
                let mut responses = client
                    .server_reflection_info(tokio_stream::iter([request]))
                    .await
                    .expect("reflection")
                    .into_inner();
                let response = responses
                    .message()
                    .await
                    .expect("reflection answer")
                    .expect("one message");
                response.message_response.expect("message_response")
            }

            /// The services reflection lists.
            pub async fn list_services(channel: Channel) -> Vec<String> {
                match ask(channel, MessageRequest::ListServices(String::new())).await {
                    MessageResponse::ListServicesResponse(list) => {
                        list.service.into_iter().map(|s| s.name).collect()
                    }
                    other => panic!("unexpected answer {other:?}"),
                }
            }

            /// The encoded file descriptors reflection returns for `symbol`.
            pub async fn file_containing_symbol(channel: Channel, symbol: &str) -> Vec<Vec<u8>> {
                match ask(
                    channel,
                    MessageRequest::FileContainingSymbol(symbol.to_owned()),
                )
                .await
                {
                    MessageResponse::FileDescriptorResponse(files) => files.file_descriptor_proto,
                    other => panic!("unexpected answer {other:?}"),
                }
            }
        }
    };
}
reflection_version!(v1);
reflection_version!(v1alpha);

fn assert_lists_audit_service(services: &[String]) {
    assert!(services.iter().any(|s| s == AUDIT_SERVICE), "{services:?}");
    assert!(
        services.iter().any(|s| s == "grpc.health.v1.Health"),
        "{services:?}"
    );
}

async fn reflection_v1_lists_the_audit_service(backend: Backend) {
    let server = TestServer::start(backend).await;
    assert_lists_audit_service(&v1::list_services(server.channel().await).await);
}

async fn reflection_v1alpha_lists_the_audit_service(backend: Backend) {
    let server = TestServer::start(backend).await;
    assert_lists_audit_service(&v1alpha::list_services(server.channel().await).await);
}

/// The descriptors hold `audit/v1/audit.proto` with the AuditService and
/// its seven RPCs.
fn assert_describes_audit_service(files: &[Vec<u8>]) {
    let files: Vec<prost_types::FileDescriptorProto> = files
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("descriptor"))
        .collect();
    let file = files
        .iter()
        .find(|f| f.name() == "audit/v1/audit.proto")
        .unwrap_or_else(|| {
            panic!(
                "no audit/v1/audit.proto in {:?}",
                files.iter().map(|f| f.name()).collect::<Vec<_>>()
            )
        });
    assert_eq!(file.package(), "audit.v1");
    let service = file
        .service
        .iter()
        .find(|s| s.name() == "AuditService")
        .expect("AuditService in the descriptor");
    let mut methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    methods.sort_unstable();
    assert_eq!(
        methods,
        [
            "Append",
            "Delete",
            "Export",
            "Get",
            "GetFilterMetadata",
            "Query",
            "Stats",
            "Watch"
        ]
    );
    assert!(file.message_type.iter().any(|m| m.name() == "AuditEvent"));
}

async fn reflection_v1_describes_the_file_containing_the_audit_service(backend: Backend) {
    let server = TestServer::start(backend).await;
    let channel: Channel = server.channel().await;
    assert_describes_audit_service(&v1::file_containing_symbol(channel, AUDIT_SERVICE).await);
}

async fn reflection_v1alpha_describes_the_file_containing_the_audit_service(backend: Backend) {
    let server = TestServer::start(backend).await;
    let channel: Channel = server.channel().await;
    assert_describes_audit_service(&v1alpha::file_containing_symbol(channel, AUDIT_SERVICE).await);
}

async fn graceful_stop_returns_ok_and_stops_listening(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    caller.append(vec![event("user.login", "alice")]).await;
    let url = server.url();
    // Panics unless the server task ends with Ok.
    server.stop().await;
    let reconnect = Channel::from_shared(url).expect("url").connect().await;
    assert!(reconnect.is_err(), "still accepting connections after stop");
}

fn metadata() -> Struct {
    let value = |kind| Value { kind: Some(kind) };
    let nested = Struct {
        fields: [
            ("depth".to_owned(), value(Kind::NumberValue(2.0))),
            ("ok".to_owned(), value(Kind::BoolValue(true))),
        ]
        .into(),
    };
    Struct {
        fields: [
            ("ticket".to_owned(), value(Kind::StringValue("SEC-1234".into()))),
            ("attempts".to_owned(), value(Kind::NumberValue(3.0))),
            ("ratio".to_owned(), value(Kind::NumberValue(0.125))),
            ("mfa".to_owned(), value(Kind::BoolValue(false))),
            ("nothing".to_owned(), value(Kind::NullValue(0))),
            ("nested".to_owned(), value(Kind::StructValue(nested))),
            (
                "tags".to_owned(),
                value(Kind::ListValue(ListValue {
                    values: vec![
                        value(Kind::StringValue("a".into())),
                        value(Kind::NumberValue(-1.5)),
                        value(Kind::ListValue(ListValue { values: vec![] })),
                    ],
                })),
            ),
            (
                "unicode".to_owned(),
                value(Kind::StringValue("Grüße, 世界 ✓".into())),
            ),
        ]
        .into(),
    }
}

async fn get_returns_every_field_that_was_sent(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let input = EventInput {
        occurred_at: Some(ts(BASE_SECS + 12_345, 123_456_789)),
        actor: Some(Actor {
            id: "agent-7".into(),
            r#type: ActorType::Agent as i32,
            name: "Release Bot".into(),
            email: "bot@example.com".into(),
        }),
        action: "deployment.approve".into(),
        resource: Some(Resource {
            r#type: "deployment".into(),
            id: "dep-99".into(),
            name: "prod rollout".into(),
        }),
        outcome: Outcome::Failure as i32,
        request: Some(RequestContext {
            method: "POST".into(),
            path: "/v1/deployments/dep-99:approve".into(),
            status_code: 403,
            client_ip: "2001:db8::42".into(),
            user_agent: "release-bot/1.2 (+https://example.com)".into(),
            request_id: "req-abc-123".into(),
            client_identity: "spiffe://example.org/ns/deploy/sa/release-bot".into(),
        }),
        source: "deployer".into(),
        reasoning: "All checks green; approving as policy allows.\nSecond line.".into(),
        metadata: Some(metadata()),
        idempotency_key: "deploy-99-approve".into(),
    };
    let appended = caller.append(vec![input.clone()]).await;
    let id = appended[0].id.clone();

    let stored = get(&mut caller, &id).await;
    let expected = AuditEvent {
        id: id.clone(),
        tenant_id: caller.tenant.clone(),
        seq: 1,
        // Stored at microsecond precision.
        occurred_at: Some(ts(BASE_SECS + 12_345, 123_456_000)),
        recorded_at: stored.recorded_at,
        actor: input.actor.clone(),
        action: input.action.clone(),
        resource: input.resource.clone(),
        outcome: input.outcome,
        request: input.request.clone(),
        source: input.source.clone(),
        reasoning: input.reasoning.clone(),
        metadata: input.metadata.clone(),
    };
    assert_eq!(stored, expected);

    let recorded_at = stored.recorded_at.expect("recorded_at");
    assert!(recorded_at.seconds > BASE_SECS - 365 * 86_400, "{recorded_at:?}");
    let uuid = uuid::Uuid::parse_str(&stored.id).expect("id is a UUID");
    assert_eq!(uuid.get_version_num(), 7, "{uuid} is not a UUIDv7");

    // Query returns the very same event.
    let listed = caller.query_all(EventFilter::default(), "", 10).await;
    assert_eq!(listed, [stored]);
}

/// Query writes its pages straight from the rows (`audit_service::wire`);
/// Get converts a decoded row. Both must say the same thing, field by field
/// and byte by byte, for full events, bare ones and odd metadata.
async fn query_pages_carry_each_event_exactly_as_get_returns_it(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let value = |kind| Value { kind: Some(kind) };
    let odd = Struct {
        fields: [
            ("".to_owned(), value(Kind::StringValue(String::new()))),
            ("zero".to_owned(), value(Kind::NumberValue(0.0))),
            ("huge".to_owned(), value(Kind::NumberValue(1e300))),
            ("negative".to_owned(), value(Kind::NumberValue(-123_456_789.25))),
            ("empty".to_owned(), value(Kind::StructValue(Struct::default()))),
            (
                "deep".to_owned(),
                value(Kind::ListValue(ListValue {
                    values: vec![value(Kind::StructValue(metadata()))],
                })),
            ),
        ]
        .into(),
    };
    let full = EventInput {
        occurred_at: Some(ts(BASE_SECS + 1, 999_999_000)),
        actor: Some(Actor {
            id: "agent-7".into(),
            r#type: ActorType::Agent as i32,
            name: "Release Bot ✓".into(),
            email: "bot@example.com".into(),
        }),
        action: "deployment.approve".into(),
        resource: Some(Resource {
            r#type: "deployment".into(),
            id: "dep-99".into(),
            name: "prod".into(),
        }),
        outcome: Outcome::Success as i32,
        request: Some(RequestContext {
            method: "POST".into(),
            path: "/v1/x".into(),
            status_code: 403,
            client_ip: "203.0.113.9".into(),
            user_agent: "bot/1".into(),
            request_id: "req-1".into(),
            client_identity: "release-bot".into(),
        }),
        source: "deployer".into(),
        reasoning: "why".into(),
        metadata: Some(metadata()),
        idempotency_key: String::new(),
    };
    let mut inputs = vec![
        full.clone(),
        event("user.login", "alice"),
        EventInput {
            metadata: Some(odd),
            ..full.clone()
        },
        EventInput {
            metadata: Some(Struct::default()),
            occurred_at: Some(ts(-62_135_596_800, 0)),
            ..event("user.logout", "bob")
        },
    ];
    inputs.push(EventInput {
        occurred_at: Some(ts(253_402_300_799, 999_999_000)),
        ..full
    });
    let appended = caller.append(inputs.clone()).await;

    for order_by in ["", "seq asc", "occurred_at desc"] {
        let listed = caller.query_all(EventFilter::default(), order_by, 2).await;
        assert_eq!(listed.len(), inputs.len(), "{order_by:?}");
        for event in listed {
            let got = get(&mut caller, &event.id).await;
            assert_eq!(event.encode_to_vec(), got.encode_to_vec(), "{order_by:?}");
            assert_eq!(event, got, "{order_by:?}");
        }
    }
    // The appended metadata comes back as sent.
    let first = get(&mut caller, &appended[2].id).await;
    assert_eq!(first.metadata, inputs[2].metadata);
}

async fn occurred_at_defaults_to_recorded_at(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let id = caller.append(vec![event("user.login", "alice")]).await[0]
        .id
        .clone();
    let stored = get(&mut caller, &id).await;
    assert!(stored.recorded_at.is_some());
    assert_eq!(stored.occurred_at, stored.recorded_at);
}

async fn occurred_at_round_trips_across_the_whole_timestamp_range(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let times = [
        // 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z.
        ts(-62_135_596_800, 0),
        ts(253_402_300_799, 999_999_000),
        // Before 1970, with a fraction of a second.
        ts(-1, 500_000_000),
        ts(0, 0),
        ts(BASE_SECS, 1_000),
    ];
    let inputs = times
        .iter()
        .map(|t| EventInput {
            occurred_at: Some(*t),
            ..event("user.login", "alice")
        })
        .collect();
    let appended = caller.append(inputs).await;
    for (result, sent) in appended.iter().zip(&times) {
        let stored = get(&mut caller, &result.id).await;
        assert_eq!(stored.occurred_at.as_ref(), Some(sent), "seq {}", result.seq);
    }
    let ordered = caller
        .query_all(EventFilter::default(), "occurred_at asc", 2)
        .await;
    assert_eq!(crate::fixtures::seqs(&ordered), [1, 3, 4, 5, 2]);
}

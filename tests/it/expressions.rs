//! Filter expressions through Query: every operator, field family and
//! combinator against a fixed log whose expected matches are written out,
//! and bad expressions refused with the position named.

use audit_service::proto::{self, ActorType, EventFilter, EventInput, Outcome, QueryRequest};
use prost_types::value::Kind;
use tonic::Code;
use tonic_types::StatusExt;

use crate::on_both_backends;
use crate::support::{Backend, Caller, TestServer, assert_status};

on_both_backends!(
    each_expression_returns_exactly_its_events,
    expressions_and_with_the_structured_filter,
    bad_expressions_are_invalid_argument_naming_the_position,
);

fn time(rfc3339: &str) -> prost_types::Timestamp {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339).expect("time");
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

fn metadata(fields: serde_json::Value) -> prost_types::Struct {
    fn value(v: serde_json::Value) -> prost_types::Value {
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().expect("number")),
            serde_json::Value::String(s) => Kind::StringValue(s),
            serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
                values: items.into_iter().map(value).collect(),
            }),
            serde_json::Value::Object(map) => Kind::StructValue(prost_types::Struct {
                fields: map.into_iter().map(|(k, v)| (k, value(v))).collect(),
            }),
        };
        prost_types::Value { kind: Some(kind) }
    }
    match value(fields).kind {
        Some(Kind::StructValue(s)) => s,
        other => panic!("not an object: {other:?}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn fixture_event(
    action: &str,
    actor: (&str, ActorType, &str, &str),
    resource: (&str, &str, &str),
    outcome: Outcome,
    source: &str,
    request: (&str, &str, i32, &str, &str),
    occurred_at: &str,
    meta: Option<serde_json::Value>,
) -> EventInput {
    EventInput {
        occurred_at: Some(time(occurred_at)),
        actor: Some(proto::Actor {
            id: actor.0.into(),
            r#type: actor.1 as i32,
            name: actor.2.into(),
            email: actor.3.into(),
        }),
        action: action.into(),
        resource: Some(proto::Resource {
            r#type: resource.0.into(),
            id: resource.1.into(),
            name: resource.2.into(),
        }),
        outcome: outcome as i32,
        request: Some(proto::RequestContext {
            method: request.0.into(),
            path: request.1.into(),
            status_code: request.2,
            client_ip: request.3.into(),
            user_agent: String::new(),
            request_id: request.4.into(),
            client_identity: String::new(),
        }),
        source: source.into(),
        reasoning: String::new(),
        metadata: meta.map(metadata),
        idempotency_key: String::new(),
    }
}

/// Seven events, seqs 1 to 7, chosen so each expression below separates them.
pub(crate) fn fixture() -> Vec<EventInput> {
    use serde_json::json;
    let mut events = vec![
        fixture_event(
            "user.login",
            ("alice", ActorType::User, "Alice Liddell", "Alice@Example.com"),
            ("session", "s1", ""),
            Outcome::Success,
            "sso",
            ("POST", "/login", 200, "203.0.113.7", "r-1"),
            "2025-12-31T23:00:00Z",
            Some(json!({"region": "eu-west", "mfa": true, "attempts": 1})),
        ),
        fixture_event(
            "user.login",
            ("bob", ActorType::User, "Bob", "bob@example.org"),
            ("session", "s2", ""),
            Outcome::Failure,
            "sso",
            ("POST", "/login", 401, "198.51.100.2", "r-2"),
            "2026-01-01T00:00:00Z",
            Some(json!({"region": "us-east", "mfa": false, "attempts": 3})),
        ),
        fixture_event(
            "user.logout",
            ("alice", ActorType::User, "", "Alice@Example.com"),
            ("session", "s1", ""),
            Outcome::Success,
            "sso",
            ("POST", "/logout", 204, "203.0.113.7", "r-3"),
            "2026-01-02T00:00:00Z",
            Some(json!({"region": "EU-central", "attempts": "3"})),
        ),
        fixture_event(
            "api_key.create",
            ("key-1", ActorType::ApiKey, "", ""),
            ("api_key", "k1", "Key \"prod\"\\main"),
            Outcome::Success,
            "console",
            ("POST", "/keys", 201, "2001:db8::1", "r-4"),
            "2026-01-03T12:00:00Z",
            Some(json!({"count": 2.5, "note": "50% off_sale"})),
        ),
        fixture_event(
            "document.read",
            ("agent-7", ActorType::Agent, "Helper Bot", ""),
            ("document", "d-42", ""),
            Outcome::Failure,
            "docs",
            ("GET", "/docs/42", 403, "10.0.0.1", "r-5"),
            "2026-01-05T00:00:00Z",
            Some(json!({"region": "eu-west", "nested": {"a": 1}})),
        ),
        fixture_event(
            "document.delete",
            ("carol", ActorType::User, "", "carol@Example.COM"),
            ("document", "d-42", ""),
            Outcome::Intent,
            "docs",
            ("DELETE", "/docs/42", 0, "", "r-6"),
            "1969-12-31T23:59:59Z",
            None,
        ),
        fixture_event(
            "user.login_failed",
            ("sys", ActorType::System, "", ""),
            ("", "", ""),
            Outcome::Unspecified,
            "",
            ("", "", 0, "", ""),
            "2026-01-01T00:00:00Z",
            Some(json!({"region": null})),
        ),
    ];
    events[3].reasoning = "Ünïcode Reason: rotate the PROD key".into();
    events
}

/// Expressions and the seqs each must return.
pub(crate) const CASES: &[(&str, &[u64])] = &[
    // text: exact, prefix, ordering, substring, presence
    (r#"action = "user.login""#, &[1, 2]),
    (r#"action = "user.*""#, &[1, 2, 3, 7]),
    ("action = user.login*", &[1, 2, 7]),
    (r#"action != "user.login""#, &[3, 4, 5, 6, 7]),
    (r#"action < "document.z""#, &[4, 5, 6]),
    (r#"action >= "user.logout""#, &[3]),
    (r#"action > "user.login""#, &[3, 7]),
    (r#"action <= "api_key.create""#, &[4]),
    ("actor.id = alice", &[1, 3]),
    (r#"actor.email : "EXAMPLE.com""#, &[1, 3, 6]),
    (r#"actor.email = "alice@example.com""#, &[]),
    (r#"actor.name : "LIDDELL""#, &[1]),
    ("actor.name:*", &[1, 2, 5]),
    (r#"resource.id : "D-4""#, &[5, 6]),
    (r#"resource.name = "Key \"prod\"\\main""#, &[4]),
    (r#"resource.name = 'Key "prod"\\main'"#, &[4]),
    (r#"resource.name : "\u0022PROD""#, &[4]),
    (r#"source = """#, &[7]),
    // `:` folds ASCII only, and text compares byte-wise, on every column.
    (r#"reasoning : "reason: ROTATE""#, &[4]),
    (r#"reasoning : "ÜNï""#, &[4]),
    (r#"reasoning : "ÜNÏ""#, &[]),
    (r#"reasoning : "ünï""#, &[]),
    (r#"reasoning > "Z""#, &[4]),
    (r#"reasoning = "Ü*""#, &[4]),
    ("source:*", &[1, 2, 3, 4, 5, 6]),
    ("request.method = GET", &[5]),
    (r#"request.path = "/docs/*""#, &[5, 6]),
    (r#"request.client_ip = "2001:db8::1""#, &[4]),
    ("request.request_id = r-5", &[5]),
    // enums
    ("actor.type = ACTOR_TYPE_USER", &[1, 2, 3, 6]),
    ("actor.type != ACTOR_TYPE_USER", &[4, 5, 7]),
    (r#"actor.type = "ACTOR_TYPE_API_KEY""#, &[4]),
    ("outcome = OUTCOME_FAILURE", &[2, 5]),
    ("outcome = OUTCOME_UNSPECIFIED", &[7]),
    // integers
    ("request.status_code >= 400", &[2, 5]),
    ("request.status_code < 200", &[6, 7]),
    ("request.status_code = 204", &[3]),
    ("seq > 5", &[6, 7]),
    ("seq != 3 AND seq <= 4", &[1, 2, 4]),
    ("seq > -1 AND seq < 2", &[1]),
    // times
    (r#"occurred_at >= "2026-01-01T00:00:00Z""#, &[2, 3, 4, 5, 7]),
    (r#"occurred_at < "1970-01-01T00:00:00Z""#, &[6]),
    (r#"occurred_at > "2026-01-01T00:00:00+01:00""#, &[2, 3, 4, 5, 7]),
    (r#"occurred_at = "2026-01-01T00:00:00Z""#, &[2, 7]),
    (r#"occurred_at <= "2025-12-31T23:00:00.000001Z""#, &[1, 6]),
    (r#"recorded_at > "2020-01-01T00:00:00Z""#, &[1, 2, 3, 4, 5, 6, 7]),
    // metadata: strings, numbers, booleans, presence, typing
    (r#"metadata.region = "eu-west""#, &[1, 5]),
    (r#"metadata.region = "eu-*""#, &[1, 5]),
    (r#"metadata.region : "EU""#, &[1, 3, 5]),
    ("metadata.region:*", &[1, 2, 3, 5]),
    (r#"metadata.region != "eu-west""#, &[2, 3, 4, 6, 7]),
    (r#"metadata.region > "f""#, &[2]),
    ("metadata.mfa = true", &[1]),
    ("metadata.mfa = false", &[2]),
    ("metadata.mfa != true", &[2, 3, 4, 5, 6, 7]),
    (r#"metadata.mfa = "true""#, &[]),
    ("metadata.attempts = 3", &[2]),
    (r#"metadata.attempts = "3""#, &[3]),
    ("metadata.attempts >= 1", &[1, 2]),
    ("metadata.count > 2", &[4]),
    ("metadata.count = 2.5", &[4]),
    (r#"metadata.note : "50%""#, &[4]),
    (r#"metadata.note : "F_S""#, &[4]),
    (r#"metadata.note : "5_""#, &[]),
    ("metadata.nested:*", &[5]),
    (r#"metadata.nested = "x""#, &[]),
    (r#"metadata.missing != "x""#, &[1, 2, 3, 4, 5, 6, 7]),
    // precedence: NOT binds tightest, then OR, then AND (AIP-160)
    (
        r#"action = "user.login" AND outcome = OUTCOME_FAILURE OR outcome = OUTCOME_INTENT"#,
        &[2],
    ),
    (
        r#"(action = "user.login" AND outcome = OUTCOME_FAILURE) OR outcome = OUTCOME_INTENT"#,
        &[2, 6],
    ),
    ("actor.id = alice OR actor.id = bob AND source = sso", &[1, 2, 3]),
    (
        "NOT outcome = OUTCOME_SUCCESS AND NOT outcome = OUTCOME_FAILURE",
        &[6, 7],
    ),
    (
        "NOT (outcome = OUTCOME_SUCCESS OR outcome = OUTCOME_FAILURE)",
        &[6, 7],
    ),
    (r#"-action = "user.*""#, &[4, 5, 6]),
    (r#"NOT NOT action = "user.*""#, &[1, 2, 3, 7]),
    (
        r#"((action = "document.*") AND (NOT (outcome = OUTCOME_INTENT)))"#,
        &[5],
    ),
    ("", &[1, 2, 3, 4, 5, 6, 7]),
];

async fn seqs(caller: &mut Caller, filter: EventFilter) -> Vec<u64> {
    let events = caller.query_all(filter, "seq asc", 3).await;
    events.iter().map(|e| e.seq).collect()
}

async fn each_expression_returns_exactly_its_events(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    caller.append(fixture()).await;
    // Another tenant's events never show up, whatever the expression.
    server.caller().await.append(fixture()).await;

    let mut failures = Vec::new();
    for (expression, expected) in CASES {
        let filter = EventFilter {
            expression: (*expression).to_owned(),
            ..Default::default()
        };
        let got = seqs(&mut caller, filter).await;
        if got != *expected {
            failures.push(format!("{expression}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

async fn expressions_and_with_the_structured_filter(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    caller.append(fixture()).await;

    let cases = [
        (
            EventFilter {
                outcomes: vec![Outcome::Success as i32],
                expression: "actor.id = alice".into(),
                ..Default::default()
            },
            vec![1, 3],
        ),
        (
            EventFilter {
                actions: vec!["user.*".into()],
                expression: "metadata.region:*".into(),
                ..Default::default()
            },
            vec![1, 2, 3],
        ),
        (
            EventFilter {
                start_time: Some(time("2026-01-02T00:00:00Z")),
                expression: "source = sso OR source = docs".into(),
                ..Default::default()
            },
            vec![3, 5],
        ),
        (
            EventFilter {
                actor_email: "ALICE@example.COM".into(),
                expression: r#"action = "user.logout""#.into(),
                ..Default::default()
            },
            vec![3],
        ),
    ];
    for (filter, expected) in cases {
        let expression = filter.expression.clone();
        assert_eq!(seqs(&mut caller, filter).await, expected, "{expression}");
    }
}

async fn bad_expressions_are_invalid_argument_naming_the_position(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    caller.append(fixture()).await;

    let too_long = format!(r#"action = "{}""#, "x".repeat(5000));
    let too_deep = format!("{}seq = 1{}", "(".repeat(40), ")".repeat(40));
    let cases: Vec<(String, &str)> = vec![
        ("actor.idd = alice".into(), "at 0: unknown field 'actor.idd'"),
        ("action =".into(), "at 8: expected a value after '='"),
        (
            "(action = a OR seq = 1".into(),
            "at 22: expected AND, OR or ')' to close the '(' at 0",
        ),
        ("action = a)".into(), "at 10: expected AND, OR or the end"),
        (
            r#"occurred_at >= "2026-13-01T00:00:00Z""#.into(),
            "at 15: expected an RFC 3339 time",
        ),
        ("outcome = OUTCOME_FAILED".into(), "at 10: unknown outcome value"),
        ("seq = abc".into(), "at 6: expected an integer for seq"),
        (r#"action = "open"#.into(), "at 9: unterminated string"),
        (
            "metadata.a.b = 1".into(),
            "at 0: metadata key 'a.b' is not filterable",
        ),
        (too_long, "at 4096: the expression is 5011 bytes long"),
        (too_deep, "at 32: the expression nests"),
    ];
    for (expression, message) in cases {
        let request = caller.request(QueryRequest {
            filter: Some(EventFilter {
                expression: expression.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let status = caller.client.query(request).await.expect_err(&expression);
        assert_status(
            &status,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("filter.expression"),
        );
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("bad request").field_violations;
        assert!(
            violations.iter().any(|v| v.description.starts_with(message)),
            "{expression}: expected a violation starting with {message:?}, got {violations:?}"
        );
    }

    // Stats parses the same language.
    let request = caller.request(proto::StatsRequest {
        filter: Some(EventFilter {
            expression: "seq ==".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let status = caller.client.stats(request).await.expect_err("stats");
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("filter.expression"),
    );
}

//! Property: for random events and random filters (structured fields and
//! expressions drawn from the grammar), the events the database returns are
//! exactly those `EventMatcher::matches` accepts in memory. One server per
//! backend, a fresh tenant per case.

use audit_service::convert::{
    micros_to_timestamp, seq_from_proto, seq_to_proto, struct_to_json, timestamp_to_micros,
};
use audit_service::entity::audit_event;
use audit_service::filter::EventMatcher;
use audit_service::proto::{self, ActorType, AuditEvent, EventFilter, EventInput, Outcome};
use prop::sample::select;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost_types::value::Kind;

use crate::support::{Backend, TestServer};

/// Cases per backend; each appends a log and runs several queries.
const CASES: u32 = 64;
/// Filters tried against each case's log.
const FILTERS_PER_CASE: usize = 8;

#[test]
fn sqlite_database_filter_agrees_with_in_memory_matcher() {
    database_filter_agrees_with_in_memory_matcher(Backend::Sqlite);
}

#[test]
fn postgres_database_filter_agrees_with_in_memory_matcher() {
    if let Some(backend) = Backend::postgres() {
        database_filter_agrees_with_in_memory_matcher(backend);
    }
}

fn database_filter_agrees_with_in_memory_matcher(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime.block_on(TestServer::start(backend));
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(event(), 1..40),
        prop::collection::vec(filter(), FILTERS_PER_CASE),
    );
    let result = runner.run(&strategy, |(events, filters)| {
        runtime.block_on(async {
            let mut caller = server.caller().await;
            caller.append(events).await;
            let stored = caller.query_all(EventFilter::default(), "seq asc", 1000).await;
            let models: Vec<audit_event::Model> = stored.iter().map(model_of).collect();
            for filter in filters {
                let matcher = EventMatcher::new(&filter, "filter")
                    .map_err(|e| TestCaseError::fail(format!("{filter:?} refused: {e}")))?;
                let expected: Vec<u64> = models
                    .iter()
                    .filter(|m| matcher.matches(m))
                    .map(|m| seq_to_proto(m.seq))
                    .collect();
                let got: Vec<u64> = caller
                    .query_all(filter.clone(), "seq asc", 1000)
                    .await
                    .iter()
                    .map(|e| e.seq)
                    .collect();
                prop_assert_eq!(got, expected, "filter {:?}", filter);
            }
            Ok(())
        })
    });
    runtime.block_on(server.stop());
    if let Err(error) = result {
        panic!("{error}");
    }
}

/// The stored form of an event as Query returned it.
fn model_of(event: &AuditEvent) -> audit_event::Model {
    let micros = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map(|t| timestamp_to_micros(t, "t").expect("valid time"))
    };
    let actor = event.actor.clone().unwrap_or_default();
    let resource = event.resource.clone().unwrap_or_default();
    let request = event.request.clone().unwrap_or_default();
    audit_event::Model {
        tenant_id: audit_service::tenant::TenantId::parse(&event.tenant_id, "tenant_id").expect("tenant"),
        seq: seq_from_proto(event.seq, "seq").expect("a stored seq"),
        id: uuid::Uuid::parse_str(&event.id).expect("uuid"),
        occurred_at: micros(&event.occurred_at),
        recorded_at: micros(&event.recorded_at).expect("recorded_at"),
        actor_id: Some(actor.id),
        actor_type: Some(actor.r#type),
        actor_name: Some(actor.name),
        actor_email: Some(actor.email),
        action: Some(event.action.clone()),
        resource_type: Some(resource.r#type),
        resource_id: Some(resource.id),
        resource_name: Some(resource.name),
        outcome: Some(event.outcome),
        request_method: Some(request.method),
        request_path: Some(request.path),
        request_status_code: Some(request.status_code),
        request_client_ip: Some(request.client_ip),
        request_user_agent: Some(request.user_agent),
        request_id: Some(request.request_id),
        request_client_identity: Some(request.client_identity),
        source: Some(event.source.clone()),
        reasoning: Some(event.reasoning.clone()),
        metadata: event.metadata.clone().map(|m| struct_to_json(m).expect("json")),
        idempotency_key: None,
        deleted_at: None,
    }
}

// ------------------------------------------------------------ vocabularies

const ACTIONS: &[&str] = &[
    "user.login",
    "user.logout",
    "user.login_failed",
    "document.read",
    "document.delete",
    "api_key.create",
];
const ACTOR_IDS: &[&str] = &["alice", "bob", "Carol", "dave-1", "Alice"];
const NAMES: &[&str] = &["", "Alice Liddell", "BOB", "Ünïcode Ñame", "a_b%c"];
const EMAILS: &[&str] = &["", "Alice@Example.com", "bob@example.org", "ÉLAN@exämple.com"];
const RESOURCE_TYPES: &[&str] = &["", "session", "document", "api_key"];
const RESOURCE_IDS: &[&str] = &["", "s1", "d-42", "D-42", "k1"];
const SOURCES: &[&str] = &["", "sso", "docs", "console"];
const METHODS: &[&str] = &["", "GET", "POST", "DELETE"];
const PATHS: &[&str] = &["", "/login", "/docs/42", "/Docs/%41", "/Ünï/x", "/z"];
const STATUS_CODES: &[i32] = &[0, 200, 201, 401, 403, 500];
const IPS: &[&str] = &["", "203.0.113.7", "10.0.0.1", "2001:db8::1"];
const REQUEST_IDS: &[&str] = &["", "r-1", "R-1", "r_1"];
const REASONINGS: &[&str] = &["", "Because the USER asked", "100%_sure", "ünïcode"];
/// Occurrence times (unix micros), before and after the epoch, some a
/// microsecond apart, so time literals hit, miss and straddle them.
const TIMES: &[i64] = &[
    -86_400_000_000,
    -1,
    0,
    1_767_225_600_000_000,
    1_767_225_600_000_001,
    1_767_229_200_000_000,
    1_767_312_000_500_000,
];
const METADATA_KEYS: &[&str] = &["region", "tier", "count", "flag"];
const METADATA_STRINGS: &[&str] = &[
    "eu-west",
    "EU-central",
    "us-east",
    "",
    "50% off_sale",
    "3",
    "true",
];
const METADATA_NUMBERS: &[f64] = &[0.0, 1.0, 2.5, 3.0, -3.0];
/// Extra needles for `:` and comparisons: fragments, wildcards, case variants.
const FRAGMENTS: &[&str] = &["user", "LOG", "e", "%", "_", "-4", "ü", "É", "EU", "x", "/d"];

/// A value for a field holding `vocabulary`: one of its values or a
/// fragment, maybe cut to a substring, maybe with its case changed.
fn text(vocabulary: &'static [&'static str]) -> impl Strategy<Value = String> {
    (
        select([vocabulary, FRAGMENTS].concat()),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        0..6u8,
    )
        .prop_map(|(value, a, b, style)| {
            let chars: Vec<char> = value.chars().collect();
            let (a, b) = (a.index(chars.len() + 1), b.index(chars.len() + 1));
            let cut: String = chars[a.min(b)..a.max(b)].iter().collect();
            match style {
                0 => cut,
                1 => cut.to_uppercase(),
                2 => value.to_uppercase(),
                3 => value.to_lowercase(),
                _ => value.to_owned(),
            }
        })
}

fn metadata_value() -> impl Strategy<Value = Option<prost_types::Value>> {
    let kind = prop_oneof![
        select(METADATA_STRINGS).prop_map(|s| Kind::StringValue(s.to_owned())),
        select(METADATA_NUMBERS).prop_map(Kind::NumberValue),
        any::<bool>().prop_map(Kind::BoolValue),
        Just(Kind::NullValue(0)),
        Just(Kind::StructValue(prost_types::Struct {
            fields: [(
                "a".to_owned(),
                prost_types::Value {
                    kind: Some(Kind::NumberValue(1.0)),
                },
            )]
            .into(),
        })),
    ];
    prop::option::of(kind.prop_map(|kind| prost_types::Value { kind: Some(kind) }))
}

fn event() -> impl Strategy<Value = EventInput> {
    let who = (
        select(ACTIONS),
        select(ACTOR_IDS),
        0..6i32,
        select(NAMES),
        select(EMAILS),
        select(RESOURCE_TYPES),
        select(RESOURCE_IDS),
        0..4i32,
        select(SOURCES),
    );
    let request = (
        select(METHODS),
        select(PATHS),
        select(STATUS_CODES),
        select(IPS),
        select(REQUEST_IDS),
        select(REASONINGS),
        select(TIMES),
    );
    let metadata = prop::option::of(prop::collection::vec(metadata_value(), METADATA_KEYS.len()));
    (who, request, metadata).prop_map(|(who, request, metadata)| {
        let (action, actor_id, actor_type, name, email, resource_type, resource_id, outcome, source) = who;
        let (method, path, status_code, ip, request_id, reasoning, time) = request;
        EventInput {
            occurred_at: Some(micros_to_timestamp(time)),
            actor: Some(proto::Actor {
                id: actor_id.into(),
                r#type: actor_type,
                name: name.into(),
                email: email.into(),
            }),
            action: action.into(),
            resource: Some(proto::Resource {
                r#type: resource_type.into(),
                id: resource_id.into(),
                name: String::new(),
            }),
            outcome,
            request: Some(proto::RequestContext {
                method: method.into(),
                path: path.into(),
                status_code,
                client_ip: ip.into(),
                user_agent: String::new(),
                request_id: request_id.into(),
                client_identity: String::new(),
            }),
            source: source.into(),
            reasoning: reasoning.into(),
            metadata: metadata.map(|values| prost_types::Struct {
                fields: METADATA_KEYS
                    .iter()
                    .zip(values)
                    .filter_map(|(key, value)| value.map(|v| ((*key).to_owned(), v)))
                    .collect(),
            }),
            idempotency_key: String::new(),
        }
    })
}

// ------------------------------------------------------------ expressions

/// Text fields with the values events hold for them.
const TEXT_FIELDS: &[(&str, &[&str])] = &[
    ("action", ACTIONS),
    ("actor.id", ACTOR_IDS),
    ("actor.name", NAMES),
    ("actor.email", EMAILS),
    ("resource.type", RESOURCE_TYPES),
    ("resource.id", RESOURCE_IDS),
    ("source", SOURCES),
    ("request.method", METHODS),
    ("request.path", PATHS),
    ("request.client_ip", IPS),
    ("request.request_id", REQUEST_IDS),
    ("reasoning", REASONINGS),
];
const ORDERINGS: &[&str] = &["=", "!=", "<", "<=", ">", ">="];

/// A string literal: double- or single-quoted with escapes, or bare when
/// it is a plain word.
fn quoted(text: &str, single: bool) -> String {
    let quote = if single { '\'' } else { '"' };
    let mut out = String::from(quote);
    for c in text.chars() {
        match c {
            '\\' | '*' => {
                out.push('\\');
                out.push(c);
            }
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn text_value(vocabulary: &'static [&'static str]) -> impl Strategy<Value = String> {
    (text(vocabulary), 0..4u8).prop_map(|(text, style)| {
        let bare = !text.is_empty()
            && text.starts_with(|c: char| c.is_ascii_alphabetic())
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            && !matches!(text.as_str(), "AND" | "OR" | "NOT" | "true" | "false");
        match style {
            0 if bare => text,
            1 => quoted(&text, true),
            _ => quoted(&text, false),
        }
    })
}

fn time_literal() -> impl Strategy<Value = String> {
    (select(TIMES), -1i64..=1).prop_map(|(micros, nudge)| {
        let t = chrono::DateTime::from_timestamp_micros(micros + nudge).expect("time");
        format!("\"{}\"", t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    })
}

fn restriction() -> impl Strategy<Value = String> {
    prop_oneof![
        // Text: orderings, prefix, substring, presence.
        select(TEXT_FIELDS).prop_flat_map(|(f, vocabulary)| {
            (select(ORDERINGS), text_value(vocabulary)).prop_map(move |(op, v)| format!("{f} {op} {v}"))
        }),
        select(TEXT_FIELDS).prop_flat_map(|(f, vocabulary)| {
            (prop_oneof![Just("="), Just("!=")], text(vocabulary)).prop_map(move |(op, v)| {
                // A prefix: the quoted value with an unescaped `*` before the closing quote.
                let quoted = quoted(&v, false);
                format!("{f} {op} {}*\"", &quoted[..quoted.len() - 1])
            })
        }),
        select(TEXT_FIELDS).prop_flat_map(|(f, vocabulary)| {
            text_value(vocabulary).prop_map(move |v| format!("{f}:{v}"))
        }),
        select(TEXT_FIELDS).prop_map(|(f, _)| format!("{f}:*")),
        // Enums.
        (0..6i32, prop_oneof![Just("="), Just("!=")]).prop_map(|(v, op)| {
            let name = ActorType::try_from(v)
                .map(|t| t.as_str_name())
                .unwrap_or_default();
            format!("actor.type {op} {name}")
        }),
        (0..4i32, prop_oneof![Just("="), Just("!=")]).prop_map(|(v, op)| {
            let name = Outcome::try_from(v).map(|o| o.as_str_name()).unwrap_or_default();
            format!("outcome {op} \"{name}\"")
        }),
        // Integers and times.
        (select(ORDERINGS), -1i64..42).prop_map(|(op, v)| format!("seq {op} {v}")),
        (select(ORDERINGS), select(STATUS_CODES)).prop_map(|(op, v)| format!("request.status_code {op} {v}")),
        (select(ORDERINGS), time_literal()).prop_map(|(op, v)| format!("occurred_at {op} {v}")),
        (select(ORDERINGS), time_literal()).prop_map(|(op, v)| format!("recorded_at {op} {v}")),
        // Metadata: typed values, presence, missing keys.
        (
            select([METADATA_KEYS, &["missing"]].concat()),
            select(ORDERINGS),
            prop_oneof![
                text_value(METADATA_STRINGS),
                select(METADATA_NUMBERS).prop_map(|n| n.to_string()),
            ]
        )
            .prop_map(|(k, op, v)| format!("metadata.{k} {op} {v}")),
        (
            select(METADATA_KEYS),
            prop_oneof![Just("="), Just("!=")],
            any::<bool>()
        )
            .prop_map(|(k, op, b)| format!("metadata.{k} {op} {b}")),
        (select(METADATA_KEYS), text_value(METADATA_STRINGS))
            .prop_map(|(k, v)| format!("metadata.{k} : {v}")),
        select(METADATA_KEYS).prop_map(|k| format!("metadata.{k}:*")),
    ]
}

fn expression() -> impl Strategy<Value = String> {
    restriction().prop_recursive(4, 16, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} AND {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} OR {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) OR ({b})")),
            inner.clone().prop_map(|a| format!("NOT {a}")),
            inner.clone().prop_map(|a| format!("-({a})")),
            inner.prop_map(|a| format!("({a})")),
        ]
    })
}

fn filter() -> impl Strategy<Value = EventFilter> {
    let structured = (
        prop::option::of(select(["user.*", "document.read", "*"].as_slice())),
        prop::collection::vec(0..4i32, 0..2),
        prop::option::of(select(["alice@example.com", "BOB@example.org"].as_slice())),
        prop::option::of(select(TIMES)),
        prop::option::of(select(TIMES)),
    );
    (prop::option::of(structured), expression()).prop_map(|(structured, expression)| {
        let mut filter = EventFilter {
            expression,
            ..Default::default()
        };
        if let Some((action, outcomes, email, start, end)) = structured {
            filter.actions = action.map(|a| vec![a.to_owned()]).unwrap_or_default();
            filter.outcomes = outcomes;
            filter.actor_email = email.unwrap_or_default().to_owned();
            if let (Some(start), Some(end)) = (start, end)
                && end >= start
            {
                filter.start_time = Some(micros_to_timestamp(start));
                filter.end_time = Some(micros_to_timestamp(end));
            } else {
                filter.start_time = start.map(micros_to_timestamp);
            }
        }
        filter
    })
}

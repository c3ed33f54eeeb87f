//! Checks what producers send and turns it into what the store records.
//! Every problem is reported, each under the path of its field.

use std::net::IpAddr;

use crate::convert::{struct_to_json, timestamp_to_micros};
use crate::error::{Error, FieldViolation};
use crate::proto::{ActorType, EventInput, Outcome, StatsRequest};
use crate::store::stats::{BucketSpec, GroupField, StatsQuery};
use crate::store::{NewEvent, SERVICE_ACTION_PREFIX};

/// Most events one Append may carry.
pub const MAX_BATCH: usize = 1000;
/// Largest metadata, as compact JSON.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Longest action.
pub const MAX_ACTION_LEN: usize = 128;
/// Longest identifier-like field (ids, names, emails, sources, keys).
pub const MAX_SHORT_TEXT: usize = 512;
/// Longest path or user agent.
pub const MAX_LONG_TEXT: usize = 4096;
/// Longest reasoning.
pub const MAX_REASONING: usize = 32 * 1024;

/// Collects the violations of one request.
#[derive(Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Checks a text field's length and that it holds no NUL character.
    pub fn text(&mut self, field: impl Fn() -> String, value: &str, max: usize) {
        if value.len() > max {
            self.add(
                field(),
                format!("must be at most {max} bytes, got {}", value.len()),
            );
        } else if value.contains('\0') {
            self.add(field(), "must not contain NUL characters");
        }
    }

    /// Ok when nothing was recorded.
    pub fn finish(self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }

    fn take_from(&mut self, error: Error) {
        match error {
            Error::InvalidArgument(violations) => self.0.extend(violations),
            other => self.add("request", other.to_string()),
        }
    }
}

/// Groups `Stats` returns when the request leaves `limit` at 0.
pub const DEFAULT_STATS_LIMIT: u64 = 100;
/// Most groups `Stats` returns; larger limits are served this many.
pub const MAX_STATS_LIMIT: u64 = 1000;
/// Smallest `Stats` bucket.
pub const MIN_BUCKET_MICROS: i64 = 1_000_000;
/// Largest `Stats` bucket: 10 000 years, more than any time span there is.
pub const MAX_BUCKET_MICROS: i64 = 10_000 * 31_557_600 * 1_000_000;
/// Most buckets one `Stats` series may hold.
pub const MAX_BUCKETS: u64 = 10_000;

/// Both results, or every violation either reports.
pub fn both<A, B>(a: Result<A, Error>, b: Result<B, Error>) -> Result<(A, B), Error> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(Error::InvalidArgument(mut first)), Err(Error::InvalidArgument(second))) => {
            first.extend(second);
            Err(Error::InvalidArgument(first))
        }
        (Err(error), _) | (_, Err(error)) => Err(error),
    }
}

/// What a `Stats` request counts, apart from its filter (whose bad parts
/// `EventMatcher` reports; its valid time bounds delimit the bucket series).
pub fn stats_query(request: &StatsRequest) -> Result<StatsQuery, Error> {
    let mut violations = Violations::default();
    let mut group_by = Vec::with_capacity(request.group_by.len());
    for (i, name) in request.group_by.iter().enumerate() {
        match GroupField::parse(name) {
            Some(field) if group_by.contains(&field) => {
                violations.add(format!("group_by[{i}]"), format!("{name} is listed twice"))
            }
            Some(field) => group_by.push(field),
            None => {
                let names: Vec<&str> = GroupField::ALL.iter().map(|f| f.name()).collect();
                violations.add(
                    format!("group_by[{i}]"),
                    format!("unknown field {name:?}; expected one of {}", names.join(", ")),
                );
            }
        }
    }
    let limit = match u64::try_from(request.limit) {
        Err(_) => {
            violations.add("limit", "must not be negative");
            0
        }
        Ok(0) => DEFAULT_STATS_LIMIT,
        Ok(n) => n.min(MAX_STATS_LIMIT),
    };

    let bucket = request.bucket.as_ref().and_then(|duration| {
        if !(-999_999_999..=999_999_999).contains(&duration.nanos) {
            violations.add("bucket", "nanos must be within -999999999..999999999");
            return None;
        }
        if duration.nanos % 1000 != 0 {
            violations.add("bucket", "must be a whole number of microseconds");
            return None;
        }
        let width = duration
            .seconds
            .checked_mul(1_000_000)
            .and_then(|micros| micros.checked_add(i64::from(duration.nanos / 1000)));
        let width = match width {
            Some(width) if (MIN_BUCKET_MICROS..=MAX_BUCKET_MICROS).contains(&width) => width,
            _ => {
                violations.add("bucket", "must be at least 1s and at most 10000 years");
                return None;
            }
        };
        let filter = request.filter.clone().unwrap_or_default();
        let bound = |ts: &Option<prost_types::Timestamp>| ts.as_ref().and_then(|ts| timestamp_to_micros(ts, "").ok());
        let spec = BucketSpec {
            width,
            from: bound(&filter.start_time),
            to: bound(&filter.end_time),
            max_buckets: MAX_BUCKETS,
        };
        if let (Some(from), Some(to)) = (spec.from, spec.to)
            && to > from
            && u64::try_from((spec.bucket_of(to - 1) - spec.bucket_of(from)) / width)
                .is_ok_and(|buckets| buckets >= MAX_BUCKETS)
        {
            violations.add(
                "bucket",
                format!(
                    "start_time to end_time spans more than {MAX_BUCKETS} buckets of this size; use a larger bucket"
                ),
            );
        }
        Some(spec)
    });
    violations.finish()?;
    Ok(StatsQuery {
        group_by,
        limit,
        bucket,
    })
}

/// Whether `action` is a dotted lowercase verb: segments of `a-z 0-9 _`,
/// each starting with a letter, at least two of them.
pub fn is_valid_action(action: &str) -> bool {
    let mut segments = 0;
    for segment in action.split('.') {
        let mut chars = segment.chars();
        let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        if !starts_with_letter || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return false;
        }
        segments += 1;
    }
    segments >= 2
}

/// Whether any key or string in `value` holds a NUL character (PostgreSQL
/// cannot store one in text or jsonb).
fn contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(contains_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// The events of an Append request, or every reason they cannot be recorded.
///
/// `verified_identity` is the identity of the caller's TLS client
/// certificate (mTLS; empty when the certificate names none): it becomes
/// every event's `request.client_identity`, and an event that names another
/// one is refused. Without it, a producer's `request.client_identity` is
/// stored as sent: an unverified claim (docs/tls.md).
pub fn append_events(
    events: Vec<EventInput>,
    verified_identity: Option<&str>,
) -> Result<Vec<NewEvent>, Error> {
    let mut violations = Violations::default();
    if events.is_empty() {
        violations.add("events", "at least one event is required");
    } else if events.len() > MAX_BATCH {
        violations.add(
            "events",
            format!("at most {MAX_BATCH} events per Append, got {}", events.len()),
        );
    }
    violations.finish()?;

    let mut violations = Violations::default();
    let mut parsed = Vec::with_capacity(events.len());
    for (i, input) in events.into_iter().enumerate() {
        parsed.push(event(i, input, verified_identity, &mut violations));
    }
    violations.finish()?;
    Ok(parsed)
}

fn event(
    i: usize,
    input: EventInput,
    verified_identity: Option<&str>,
    violations: &mut Violations,
) -> NewEvent {
    let field = |name: &str| format!("events[{i}].{name}");
    let actor = input.actor.unwrap_or_default();
    let resource = input.resource.unwrap_or_default();
    let request = input.request.unwrap_or_default();

    if input.action.is_empty() {
        violations.add(field("action"), "is required");
    } else if input.action.len() > MAX_ACTION_LEN || !is_valid_action(&input.action) {
        violations.add(
            field("action"),
            format!(
                "must be a dotted lowercase verb such as user.login (segments of a-z, 0-9 and _, each starting with a letter, at most {MAX_ACTION_LEN} bytes)"
            ),
        );
    } else if input.action.starts_with(SERVICE_ACTION_PREFIX) {
        violations.add(
            field("action"),
            "the audit. namespace is reserved for events the service records itself",
        );
    }
    if actor.id.is_empty() {
        violations.add(field("actor.id"), "is required");
    }
    if ActorType::try_from(actor.r#type).is_err() {
        violations.add(field("actor.type"), format!("unknown ActorType {}", actor.r#type));
    }
    if Outcome::try_from(input.outcome).is_err() {
        violations.add(field("outcome"), format!("unknown Outcome {}", input.outcome));
    }
    for (name, value, max) in [
        ("actor.id", &actor.id, MAX_SHORT_TEXT),
        ("actor.name", &actor.name, MAX_SHORT_TEXT),
        ("actor.email", &actor.email, MAX_SHORT_TEXT),
        ("resource.type", &resource.r#type, MAX_SHORT_TEXT),
        ("resource.id", &resource.id, MAX_SHORT_TEXT),
        ("resource.name", &resource.name, MAX_SHORT_TEXT),
        ("request.method", &request.method, MAX_SHORT_TEXT),
        ("request.path", &request.path, MAX_LONG_TEXT),
        ("request.client_ip", &request.client_ip, MAX_SHORT_TEXT),
        ("request.user_agent", &request.user_agent, MAX_LONG_TEXT),
        ("request.request_id", &request.request_id, MAX_SHORT_TEXT),
        (
            "request.client_identity",
            &request.client_identity,
            MAX_SHORT_TEXT,
        ),
        ("source", &input.source, MAX_SHORT_TEXT),
        ("reasoning", &input.reasoning, MAX_REASONING),
        ("idempotency_key", &input.idempotency_key, MAX_SHORT_TEXT),
    ] {
        violations.text(|| field(name), value, max);
    }
    let client_identity = match verified_identity {
        None => request.client_identity,
        Some(verified) => {
            if !request.client_identity.is_empty() && request.client_identity != verified {
                let description = if verified.is_empty() {
                    "must be empty: the client certificate this call came with (mTLS) names no identity"
                        .to_owned()
                } else {
                    format!(
                        "must be empty or {verified:?}, the identity of the client certificate this call came with (mTLS)"
                    )
                };
                violations.add(field("request.client_identity"), description);
            }
            verified.to_owned()
        }
    };
    if !request.client_ip.is_empty() && request.client_ip.parse::<IpAddr>().is_err() {
        violations.add(field("request.client_ip"), "must be an IPv4 or IPv6 address");
    }
    if !(0..=999).contains(&request.status_code) {
        violations.add(field("request.status_code"), "must be within 0..999");
    }

    let occurred_at = match input
        .occurred_at
        .as_ref()
        .map(|ts| timestamp_to_micros(ts, &field("occurred_at")))
    {
        Some(Ok(micros)) => Some(micros),
        Some(Err(error)) => {
            violations.take_from(error);
            None
        }
        None => None,
    };
    let metadata = match input.metadata.map(struct_to_json) {
        Some(Ok(json)) => {
            let size = json.to_string().len();
            if size > MAX_METADATA_BYTES {
                violations.add(
                    field("metadata"),
                    format!("must be at most {MAX_METADATA_BYTES} bytes as JSON, got {size}"),
                );
            } else if contains_nul(&json) {
                violations.add(field("metadata"), "must not contain NUL characters");
            }
            Some(json)
        }
        Some(Err(reason)) => {
            violations.add(field("metadata"), reason);
            None
        }
        None => None,
    };

    NewEvent {
        occurred_at,
        actor_id: actor.id,
        actor_type: actor.r#type,
        actor_name: actor.name,
        actor_email: actor.email,
        action: input.action,
        resource_type: resource.r#type,
        resource_id: resource.id,
        resource_name: resource.name,
        outcome: input.outcome,
        request_method: request.method,
        request_path: request.path,
        request_status_code: request.status_code,
        request_client_ip: request.client_ip,
        request_user_agent: request.user_agent,
        request_id: request.request_id,
        request_client_identity: client_identity,
        source: input.source,
        reasoning: input.reasoning,
        metadata,
        idempotency_key: (!input.idempotency_key.is_empty()).then_some(input.idempotency_key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(group_by: &[&str], limit: i32, bucket: Option<(i64, i32)>) -> Result<StatsQuery, Error> {
        stats_query(&StatsRequest {
            filter: None,
            group_by: group_by.iter().map(|s| (*s).to_owned()).collect(),
            bucket: bucket.map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
            limit,
        })
    }

    fn fields(error: Error) -> Vec<String> {
        match error {
            Error::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn stats_limits_default_cap_and_refuse_negatives() {
        assert_eq!(stats(&[], 0, None).unwrap().limit, DEFAULT_STATS_LIMIT);
        assert_eq!(stats(&[], 5, None).unwrap().limit, 5);
        assert_eq!(stats(&[], 50_000, None).unwrap().limit, MAX_STATS_LIMIT);
        assert_eq!(fields(stats(&[], -1, None).unwrap_err()), ["limit"]);
    }

    #[test]
    fn stats_group_by_names_each_bad_entry() {
        let query = stats(&["outcome", "actor.id"], 0, None).unwrap();
        assert_eq!(query.group_by, [GroupField::Outcome, GroupField::ActorId]);
        assert_eq!(
            fields(stats(&["action", "nope", "action"], 0, None).unwrap_err()),
            ["group_by[1]", "group_by[2]"]
        );
    }

    #[test]
    fn stats_buckets_are_at_least_a_second_in_whole_microseconds() {
        assert_eq!(
            stats(&[], 0, Some((60, 0))).unwrap().bucket.unwrap().width,
            60_000_000
        );
        assert_eq!(
            stats(&[], 0, Some((1, 500_000_000)))
                .unwrap()
                .bucket
                .unwrap()
                .width,
            1_500_000
        );
        for bad in [(0, 0), (0, 999_999_000), (-5, 0), (1, 1), (i64::MAX, 0)] {
            assert_eq!(
                fields(stats(&[], 0, Some(bad)).unwrap_err()),
                ["bucket"],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn nul_is_found_in_keys_and_nested_strings_only() {
        assert!(contains_nul(&serde_json::json!({"a": ["x", "y\0"]})));
        assert!(contains_nul(&serde_json::json!({"k\0": 1})));
        assert!(!contains_nul(&serde_json::json!({"a": "\\u0000", "b": 0})));
    }

    #[test]
    fn dotted_lowercase_actions_are_valid() {
        for action in ["user.login", "api_key.create", "a.b.c", "user2.log_in"] {
            assert!(is_valid_action(action), "{action}");
        }
        for action in [
            "login",
            "User.login",
            "user..login",
            ".user",
            "user.",
            "user.Login",
            "2fa.enable",
            "user login",
            "user-x.y",
        ] {
            assert!(!is_valid_action(action), "{action}");
        }
    }
}

/// Property tests: validation is fed arbitrary events.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::proto::{Actor, RequestContext, Resource};

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z]{1,8}(\\.[a-z_0-9]{1,8}){0,3}",
            any::<String>(),
            ".{0,600}",
        ]
    }

    fn input() -> impl Strategy<Value = EventInput> {
        (
            (text(), text(), any::<i32>(), text()),
            (text(), text(), any::<i32>(), text(), any::<i32>()),
            (text(), text(), proptest::option::of((any::<i64>(), any::<i32>()))),
        )
            .prop_map(
                |(
                    (action, actor_id, actor_type, email),
                    (rtype, ip, outcome, reason, status),
                    (source, key, ts),
                )| {
                    EventInput {
                        occurred_at: ts.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                        actor: Some(Actor {
                            id: actor_id,
                            r#type: actor_type,
                            name: String::new(),
                            email,
                        }),
                        action,
                        resource: Some(Resource {
                            r#type: rtype,
                            id: String::new(),
                            name: String::new(),
                        }),
                        outcome,
                        request: Some(RequestContext {
                            client_ip: ip,
                            status_code: status,
                            ..Default::default()
                        }),
                        source,
                        reasoning: reason,
                        metadata: None,
                        idempotency_key: key,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn validation_never_panics_and_what_passes_respects_every_rule(events in proptest::collection::vec(input(), 0..4)) {
            match append_events(events.clone(), None) {
                Ok(parsed) => {
                    prop_assert_eq!(parsed.len(), events.len());
                    for event in parsed {
                        prop_assert!(is_valid_action(&event.action));
                        prop_assert!(!event.action.starts_with(SERVICE_ACTION_PREFIX));
                        prop_assert!(!event.actor_id.is_empty() && event.actor_id.len() <= MAX_SHORT_TEXT);
                        prop_assert!(ActorType::try_from(event.actor_type).is_ok());
                        prop_assert!(Outcome::try_from(event.outcome).is_ok());
                        prop_assert!(event.request_client_ip.is_empty() || event.request_client_ip.parse::<IpAddr>().is_ok());
                        prop_assert!(!event.reasoning.contains('\0') && !event.source.contains('\0'));
                    }
                }
                Err(Error::InvalidArgument(violations)) => prop_assert!(!violations.is_empty()),
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
        }
    }
}

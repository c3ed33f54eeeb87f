//! Conversions between the stored rows and the protobuf messages.

use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};

use crate::entity::audit_event;
use crate::error::Error;
use crate::proto;

const MICROS_PER_SECOND: i64 = 1_000_000;
/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range of
/// `google.protobuf.Timestamp`.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// A timestamp from unix microseconds.
pub fn micros_to_timestamp(micros: i64) -> Timestamp {
    let nanos = micros.rem_euclid(MICROS_PER_SECOND) * 1000;
    Timestamp {
        seconds: micros.div_euclid(MICROS_PER_SECOND),
        nanos: i32::try_from(nanos).expect("rem_euclid keeps nanos below 10^9 < i32::MAX"),
    }
}

/// A stored seq (or count of a log's events: a head, a tree size) as the
/// protobuf `uint64` that carries it. The sequencer hands out seqs from 1,
/// so a negative one was written outside the service: it reads as 0, never
/// as a wrapped huge seq.
pub fn seq_to_proto(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or_default()
}

/// A client's `uint64` seq as stored; INVALID_ARGUMENT naming `field` when
/// it is above every seq the store can hold.
pub fn seq_from_proto(seq: u64, field: &str) -> Result<i64, Error> {
    i64::try_from(seq).map_err(|_| Error::invalid(field, "is larger than any seq"))
}

/// Unix microseconds of a valid timestamp (sub-microsecond digits are
/// dropped); `field` names it in the error.
pub fn timestamp_to_micros(timestamp: &Timestamp, field: &str) -> Result<i64, Error> {
    if !(0..1_000_000_000).contains(&timestamp.nanos) {
        return Err(Error::invalid(field, "nanos must be within 0..999999999"));
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&timestamp.seconds) {
        return Err(Error::invalid(
            field,
            "timestamp must be within years 0001 to 9999",
        ));
    }
    Ok(timestamp.seconds * MICROS_PER_SECOND + i64::from(timestamp.nanos / 1000))
}

/// JSON for a `google.protobuf.Struct`; refuses numbers JSON cannot carry.
pub fn struct_to_json(value: Struct) -> Result<serde_json::Value, String> {
    let mut object = serde_json::Map::with_capacity(value.fields.len());
    for (key, field) in value.fields {
        object.insert(key, value_to_json(field)?);
    }
    Ok(serde_json::Value::Object(object))
}

fn value_to_json(value: Value) -> Result<serde_json::Value, String> {
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        // -0 is stored as 0: PostgreSQL's jsonb has no negative zero, and an
        // event's leaf hash must survive the round trip through storage.
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(if n == 0.0 { 0.0 } else { n })
            .map(serde_json::Value::Number)
            .ok_or_else(|| format!("number {n} is not finite"))?,
        Some(Kind::StructValue(s)) => struct_to_json(s)?,
        Some(Kind::ListValue(list)) => serde_json::Value::Array(
            list.values
                .into_iter()
                .map(value_to_json)
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// A `google.protobuf.Struct` for stored JSON (an object; anything else is
/// wrapped under the key `value`).
pub fn json_to_struct(value: serde_json::Value) -> Struct {
    match json_to_value(value).kind {
        Some(Kind::StructValue(s)) => s,
        other => Struct {
            fields: [("value".to_owned(), Value { kind: other })].into(),
        },
    }
}

fn json_to_value(value: serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(Struct {
            fields: map.into_iter().map(|(k, v)| (k, json_to_value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// The protobuf form of a stored event.
pub fn event_to_proto(event: audit_event::Model) -> proto::AuditEvent {
    let text = Option::unwrap_or_default;
    proto::AuditEvent {
        id: event.id.to_string(),
        tenant_id: event.tenant_id.into_string(),
        seq: seq_to_proto(event.seq),
        occurred_at: event.occurred_at.map(micros_to_timestamp),
        recorded_at: Some(micros_to_timestamp(event.recorded_at)),
        actor: Some(proto::Actor {
            id: text(event.actor_id),
            r#type: event.actor_type.unwrap_or_default(),
            name: text(event.actor_name),
            email: text(event.actor_email),
        }),
        action: text(event.action),
        resource: Some(proto::Resource {
            r#type: text(event.resource_type),
            id: text(event.resource_id),
            name: text(event.resource_name),
        }),
        outcome: event.outcome.unwrap_or_default(),
        request: Some(proto::RequestContext {
            method: text(event.request_method),
            path: text(event.request_path),
            status_code: event.request_status_code.unwrap_or_default(),
            client_ip: text(event.request_client_ip),
            user_agent: text(event.request_user_agent),
            request_id: text(event.request_id),
            client_identity: text(event.request_client_identity),
        }),
        source: text(event.source),
        reasoning: text(event.reasoning),
        metadata: event.metadata.map(json_to_struct),
    }
}

/// A filter as the service's own events record it (legal holds, reads):
/// the parts that are set, in the protobuf JSON names, enums by name and
/// times in RFC 3339.
pub fn filter_to_json(filter: &proto::EventFilter) -> serde_json::Value {
    use serde_json::{Map, Value, json};

    use crate::proto::{ActorType, Outcome};

    let mut out = Map::new();
    let mut strings = |name: &str, values: &[String]| {
        if !values.is_empty() {
            out.insert(name.to_owned(), json!(values));
        }
    };
    strings("actions", &filter.actions);
    strings("actorIds", &filter.actor_ids);
    strings("resourceTypes", &filter.resource_types);
    strings("resourceIds", &filter.resource_ids);
    strings("sources", &filter.sources);
    strings("tenantIds", &filter.tenant_ids);
    strings("partnerIds", &filter.partner_ids);
    let mut text = |name: &str, value: &str| {
        if !value.is_empty() {
            out.insert(name.to_owned(), Value::from(value));
        }
    };
    text("actorEmail", &filter.actor_email);
    text("requestId", &filter.request_id);
    text("clientIp", &filter.client_ip);
    text("expression", &filter.expression);
    let names = |values: &[i32], name: fn(i32) -> Option<&'static str>| -> Value {
        values
            .iter()
            .map(|v| name(*v).map_or_else(|| Value::from(*v), Value::from))
            .collect()
    };
    if !filter.actor_types.is_empty() {
        let name = |v| ActorType::try_from(v).ok().map(|t| t.as_str_name());
        out.insert("actorTypes".to_owned(), names(&filter.actor_types, name));
    }
    if !filter.outcomes.is_empty() {
        let name = |v| Outcome::try_from(v).ok().map(|o| o.as_str_name());
        out.insert("outcomes".to_owned(), names(&filter.outcomes, name));
    }
    for (name, time) in [("startTime", &filter.start_time), ("endTime", &filter.end_time)] {
        if let Some(time) = time {
            let nanos = u32::try_from(time.nanos).unwrap_or_default();
            let rfc3339 = chrono::DateTime::from_timestamp(time.seconds, nanos)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
            out.insert(name.to_owned(), rfc3339.map_or(Value::Null, Value::from));
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_at_microsecond_precision() {
        for micros in [0, 1, -1, 1_700_000_000_123_456, -62_135_596_800_000_000] {
            let ts = micros_to_timestamp(micros);
            assert!((0..1_000_000_000).contains(&ts.nanos));
            assert_eq!(timestamp_to_micros(&ts, "t").unwrap(), micros);
        }
    }

    #[test]
    fn stored_seqs_convert_without_wrapping() {
        let largest = u64::try_from(i64::MAX).unwrap();
        assert_eq!(seq_to_proto(1), 1);
        assert_eq!(seq_to_proto(i64::MAX), largest);
        assert_eq!(seq_to_proto(-1), 0, "not u64::MAX");
        assert_eq!(seq_from_proto(0, "after_seq").unwrap(), 0);
        assert_eq!(seq_from_proto(largest, "after_seq").unwrap(), i64::MAX);
        assert!(seq_from_proto(largest + 1, "after_seq").is_err());
    }

    #[test]
    fn out_of_range_timestamps_are_refused() {
        for ts in [
            Timestamp {
                seconds: 0,
                nanos: -1,
            },
            Timestamp {
                seconds: 0,
                nanos: 1_000_000_000,
            },
            Timestamp {
                seconds: MAX_SECONDS + 1,
                nanos: 0,
            },
            Timestamp {
                seconds: MIN_SECONDS - 1,
                nanos: 0,
            },
        ] {
            assert!(timestamp_to_micros(&ts, "t").is_err(), "{ts:?}");
        }
    }

    #[test]
    fn metadata_round_trips_through_json() {
        let json = serde_json::json!({"a": 1.5, "b": [true, null, "x"], "c": {"d": "e"}});
        let back = struct_to_json(json_to_struct(json.clone())).unwrap();
        assert_eq!(back, json);
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        let s = Struct {
            fields: [(
                "n".to_owned(),
                Value {
                    kind: Some(Kind::NumberValue(f64::NAN)),
                },
            )]
            .into(),
        };
        assert!(struct_to_json(s).is_err());
    }
}

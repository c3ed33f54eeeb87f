//! Turns an `EventFilter` into a database condition, so the database does
//! the filtering. All set parts are AND-ed; a repeated field matches any of
//! its values.

mod matcher;

pub use matcher::EventMatcher;

use sea_orm::sea_query::{Expr, ExprTrait, Func};
use sea_orm::{ColumnTrait, Condition};

use crate::convert::timestamp_to_micros;
use crate::error::{Error, FieldViolation};
use crate::proto::{ActorType, EventFilter, Outcome};
use crate::store::audit_event::Column;
use crate::store::exact_or_prefix;

const NUL_REFUSED: &str = "must not contain NUL characters";

/// Most values one repeated filter field may list.
pub const MAX_VALUES_PER_FIELD: usize = 100;

/// The condition selecting the events `filter` describes. `prefix` names
/// the filter in errors (`filter`).
pub fn compile(filter: &EventFilter, prefix: &str) -> Result<Condition, Error> {
    let mut violations = Vec::new();
    let mut condition = Condition::all();
    let field = |name: &str| format!("{prefix}.{name}");

    let mut any_of = |name: &str, values: &[String], column: Column, prefixes: bool| {
        if values.is_empty() {
            return;
        }
        if values.len() > MAX_VALUES_PER_FIELD {
            violations.push(FieldViolation::new(
                field(name),
                format!("at most {MAX_VALUES_PER_FIELD} values"),
            ));
            return;
        }
        let mut alternatives = Condition::any();
        for (i, value) in values.iter().enumerate() {
            if value.is_empty() {
                violations.push(FieldViolation::new(
                    format!("{}[{i}]", field(name)),
                    "must not be empty",
                ));
            } else if value.contains('\0') {
                violations.push(FieldViolation::new(format!("{}[{i}]", field(name)), NUL_REFUSED));
            } else if prefixes {
                alternatives = alternatives.add(exact_or_prefix(column, value));
            } else {
                alternatives = alternatives.add(column.eq(value.as_str()));
            }
        }
        condition = std::mem::replace(&mut condition, Condition::all()).add(alternatives);
    };
    any_of("actions", &filter.actions, Column::Action, true);
    any_of("actor_ids", &filter.actor_ids, Column::ActorId, false);
    any_of(
        "resource_types",
        &filter.resource_types,
        Column::ResourceType,
        false,
    );
    any_of("resource_ids", &filter.resource_ids, Column::ResourceId, false);
    any_of("sources", &filter.sources, Column::Source, false);

    let actor_types = known_enums(&filter.actor_types, |v| ActorType::try_from(v).is_ok());
    match actor_types {
        Ok(values) if !values.is_empty() => condition = condition.add(Column::ActorType.is_in(values)),
        Ok(_) => {}
        Err(i) => violations.push(FieldViolation::new(
            format!("{}[{i}]", field("actor_types")),
            "unknown ActorType",
        )),
    }
    match known_enums(&filter.outcomes, |v| Outcome::try_from(v).is_ok()) {
        Ok(values) if !values.is_empty() => condition = condition.add(Column::Outcome.is_in(values)),
        Ok(_) => {}
        Err(i) => violations.push(FieldViolation::new(
            format!("{}[{i}]", field("outcomes")),
            "unknown Outcome",
        )),
    }

    for (name, value) in [
        ("actor_email", &filter.actor_email),
        ("request_id", &filter.request_id),
        ("client_ip", &filter.client_ip),
        ("expression", &filter.expression),
    ] {
        if value.contains('\0') {
            violations.push(FieldViolation::new(field(name), NUL_REFUSED));
        }
    }
    if !filter.actor_email.is_empty() {
        condition = condition.add(ExprTrait::eq(
            Expr::expr(Func::lower(Expr::col(Column::ActorEmail))),
            filter.actor_email.to_ascii_lowercase(),
        ));
    }
    if !filter.request_id.is_empty() {
        condition = condition.add(Column::RequestId.eq(filter.request_id.as_str()));
    }
    if !filter.client_ip.is_empty() {
        condition = condition.add(Column::RequestClientIp.eq(filter.client_ip.as_str()));
    }

    let mut bound = |name: &str, value: &Option<prost_types::Timestamp>| match value {
        Some(ts) => match timestamp_to_micros(ts, &field(name)) {
            Ok(micros) => Some(micros),
            Err(Error::InvalidArgument(v)) => {
                violations.extend(v);
                None
            }
            Err(_) => None,
        },
        None => None,
    };
    let start = bound("start_time", &filter.start_time);
    let end = bound("end_time", &filter.end_time);
    if let (Some(start), Some(end)) = (start, end)
        && end < start
    {
        violations.push(FieldViolation::new(
            field("end_time"),
            "must not be before start_time",
        ));
    }
    if let Some(start) = start {
        condition = condition.add(Column::OccurredAt.gte(start));
    }
    if let Some(end) = end {
        condition = condition.add(Column::OccurredAt.lt(end));
    }

    if !filter.expression.is_empty() {
        return Err(Error::Unimplemented(
            "filter expressions (EventFilter.expression) are not served by this version yet; use the structured EventFilter fields",
        ));
    }
    if violations.is_empty() {
        Ok(condition)
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

/// The values, or the index of the first one that is not a known enum value.
fn known_enums(values: &[i32], known: impl Fn(i32) -> bool) -> Result<Vec<i32>, usize> {
    match values.iter().position(|v| !known(*v)) {
        Some(i) => Err(i),
        None => Ok(values.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, EntityTrait, QueryFilter, QueryTrait};

    use super::*;
    use crate::store::audit_event::Entity;

    fn sql(filter: &EventFilter) -> String {
        Entity::find()
            .filter(compile(filter, "filter").unwrap())
            .build(DbBackend::Sqlite)
            .to_string()
    }

    #[test]
    fn empty_filter_selects_everything() {
        let text = sql(&EventFilter::default());
        assert!(!text.contains("WHERE") || text.ends_with("WHERE TRUE"), "{text}");
    }

    #[test]
    fn action_prefix_becomes_a_range() {
        let text = sql(&EventFilter {
            actions: vec!["user.*".into(), "api_key.create".into()],
            ..Default::default()
        });
        assert!(text.contains(r#""action" >= 'user.'"#), "{text}");
        assert!(text.contains(r#""action" < 'user/'"#), "{text}");
        assert!(text.contains(r#""action" = 'api_key.create'"#), "{text}");
    }

    #[test]
    fn bad_parts_are_each_named() {
        let filter = EventFilter {
            actor_ids: vec!["".into()],
            outcomes: vec![42],
            start_time: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp { seconds: 5, nanos: 0 }),
            ..Default::default()
        };
        let Err(Error::InvalidArgument(violations)) = compile(&filter, "filter") else {
            panic!("accepted")
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["filter.actor_ids[0]", "filter.outcomes[0]", "filter.end_time"]
        );
    }
}

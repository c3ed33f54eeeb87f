//! Turns an `EventFilter` into a database condition, so the database does
//! the filtering, and into an [`EventMatcher`] that applies the same filter
//! to an event in memory (for `Watch`, and to test the two agree). All set
//! parts are AND-ed; a repeated field matches any of its values; the
//! `expression` is parsed by [`expr`] and compiled by [`sql`].

pub mod expr;
pub mod prefix;
pub mod sql;

use sea_orm::sea_query::{Expr, ExprTrait, Func};
use sea_orm::{ColumnTrait, Condition, DbBackend};

use crate::convert::timestamp_to_micros;
use crate::entity::audit_event::{self, Column};
use crate::error::{Error, FieldViolation};
use crate::proto::{ActorType, EventFilter, Outcome};
use crate::tenant::{PartnerId, TenantId};
use prefix::exact_or_prefix;

const NUL_REFUSED: &str = "must not contain NUL characters";

/// Most values one repeated filter field may list.
pub const MAX_VALUES_PER_FIELD: usize = 100;

/// How a condition's `start_time`/`end_time` bounds reach the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBounds {
    /// Plain comparisons on `occurred_at`: the planner may serve them from
    /// the `(tenant_id, occurred_at, seq)` index.
    Indexed,
    /// Comparisons on `+occurred_at`, which SQLite will not serve from an
    /// index: the rows are reached some other way (in `seq` order, or
    /// through another filter's index) and the bounds only filter them.
    Filtered,
}

/// A validated `EventFilter`: compiles to a database condition, and decides
/// for one event in memory, with the same semantics both ways.
#[derive(Debug, Clone, Default)]
pub struct EventMatcher {
    /// Exact values, or prefixes when ending in `*`.
    actions: Vec<String>,
    actor_ids: Vec<String>,
    actor_types: Vec<i32>,
    /// Lower-cased (ASCII).
    actor_email: Option<String>,
    resource_types: Vec<String>,
    resource_ids: Vec<String>,
    outcomes: Vec<i32>,
    sources: Vec<String>,
    request_id: Option<String>,
    client_ip: Option<String>,
    start: Option<i64>,
    end: Option<i64>,
    expression: Option<expr::Node>,
    /// Validated tenant ids.
    tenant_ids: Vec<String>,
    /// Validated partner ids: tenants the registry assigns them.
    partner_ids: Vec<String>,
}

impl EventMatcher {
    /// Validates `filter`; every bad part is reported under `prefix.FIELD`
    /// (the expression under `prefix.expression`, naming the position).
    pub fn new(filter: &EventFilter, prefix: &str) -> Result<Self, Error> {
        let mut violations = Vec::new();
        let field = |name: &str| format!("{prefix}.{name}");
        let mut strings = |name: &str, values: &[String]| -> Vec<String> {
            if values.len() > MAX_VALUES_PER_FIELD {
                violations.push(FieldViolation::new(
                    field(name),
                    format!("at most {MAX_VALUES_PER_FIELD} values"),
                ));
                return Vec::new();
            }
            for (i, value) in values.iter().enumerate() {
                if value.is_empty() {
                    violations.push(FieldViolation::new(
                        format!("{}[{i}]", field(name)),
                        "must not be empty",
                    ));
                } else if value.contains('\0') {
                    violations.push(FieldViolation::new(format!("{}[{i}]", field(name)), NUL_REFUSED));
                }
            }
            values.to_vec()
        };
        let actions = strings("actions", &filter.actions);
        let actor_ids = strings("actor_ids", &filter.actor_ids);
        let resource_types = strings("resource_types", &filter.resource_types);
        let resource_ids = strings("resource_ids", &filter.resource_ids);
        let sources = strings("sources", &filter.sources);
        let mut ids = |name: &str, values: &[String], parse: fn(&str, &str) -> Result<String, Error>| {
            if values.len() > MAX_VALUES_PER_FIELD {
                violations.push(FieldViolation::new(
                    field(name),
                    format!("at most {MAX_VALUES_PER_FIELD} values"),
                ));
                return Vec::new();
            }
            let mut parsed = Vec::new();
            for (i, value) in values.iter().enumerate() {
                match parse(value, &format!("{}[{i}]", field(name))) {
                    Ok(id) => parsed.push(id),
                    Err(Error::InvalidArgument(v)) => violations.extend(v),
                    Err(_) => {}
                }
            }
            parsed
        };
        let tenant_ids = ids("tenant_ids", &filter.tenant_ids, |value, at| {
            TenantId::parse(value, at).map(TenantId::into_string)
        });
        let partner_ids = ids("partner_ids", &filter.partner_ids, |value, at| {
            PartnerId::parse(value, at).map(|p| p.as_str().to_owned())
        });

        let mut enums =
            |name: &str, values: &[i32], known: fn(i32) -> bool, what: &str| match known_enums(values, known)
            {
                Ok(values) => values,
                Err(i) => {
                    violations.push(FieldViolation::new(
                        format!("{}[{i}]", field(name)),
                        format!("unknown {what}"),
                    ));
                    Vec::new()
                }
            };
        let actor_types = enums(
            "actor_types",
            &filter.actor_types,
            |v| ActorType::try_from(v).is_ok(),
            "ActorType",
        );
        let outcomes = enums(
            "outcomes",
            &filter.outcomes,
            |v| Outcome::try_from(v).is_ok(),
            "Outcome",
        );

        // PostgreSQL cannot take a NUL in a text parameter.
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
        let text = |value: &str| (!value.is_empty()).then(|| value.to_owned());
        let actor_email = text(&filter.actor_email).map(|e| e.to_ascii_lowercase());
        let request_id = text(&filter.request_id);
        let client_ip = text(&filter.client_ip);

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

        let expression = match expr::parse(&filter.expression) {
            Ok(node) => node,
            Err(error) => {
                violations.push(FieldViolation::new(field("expression"), error.to_string()));
                None
            }
        };

        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        Ok(Self {
            actions,
            actor_ids,
            actor_types,
            actor_email,
            resource_types,
            resource_ids,
            outcomes,
            sources,
            request_id,
            client_ip,
            start,
            end,
            expression,
            tenant_ids,
            partner_ids,
        })
    }

    /// Refuses the parts of the filter only the database can decide
    /// (`partner_ids`, which the tenants registry resolves), for uses that
    /// match events in memory (`Watch`, legal holds).
    pub fn decidable_in_memory(self, prefix: &str) -> Result<Self, Error> {
        if !self.partner_ids.is_empty() {
            return Err(Error::invalid(
                format!("{prefix}.partner_ids"),
                "is accepted by Query, Stats, GetFilterMetadata and Export only (and by Watch with x-tenant-id *)",
            ));
        }
        if self.expression.as_ref().is_some_and(expr::Node::names_partner) {
            return Err(Error::invalid(
                format!("{prefix}.expression"),
                "partner_id is decided by the tenants registry when a read runs; legal holds cannot name it",
            ));
        }
        Ok(self)
    }

    /// Whether the expression names `partner_id`.
    pub fn names_partner(&self) -> bool {
        self.expression.as_ref().is_some_and(expr::Node::names_partner)
    }

    /// The matcher for the events of one tenant whose partner is `partner`:
    /// the expression's `partner_id` comparisons decided for it, so that
    /// it decides in memory (`Watch`).
    pub fn bind_partner(mut self, partner: Option<&str>) -> Self {
        self.expression = self.expression.map(|node| node.bind_partner(partner));
        self
    }

    /// The matcher without `partner_ids`, for a tenant already known to
    /// belong to one of them (a Watch across tenants resolves them into
    /// its tenant set).
    pub fn partner_ids_resolved(mut self) -> Self {
        self.partner_ids.clear();
        self
    }

    /// The filter's validated `tenant_ids`.
    pub fn tenant_ids(&self) -> &[String] {
        &self.tenant_ids
    }

    /// The filter's validated `partner_ids`.
    pub fn partner_ids(&self) -> &[String] {
        &self.partner_ids
    }

    /// The condition selecting the matching events on `backend`.
    pub fn condition(&self, backend: DbBackend) -> Condition {
        self.condition_with(backend, TimeBounds::Indexed)
    }

    /// `start_time` and `end_time` in unix microseconds (inclusive start,
    /// exclusive end), as the filter set them.
    pub fn time_range(&self) -> (Option<i64>, Option<i64>) {
        (self.start, self.end)
    }

    /// The condition selecting the matching events on `backend`, with the
    /// time bounds compiled as `bounds` says; the same events either way.
    pub fn condition_with(&self, backend: DbBackend, bounds: TimeBounds) -> Condition {
        let occurred_at = || match bounds {
            TimeBounds::Indexed => Expr::col((audit_event::Entity, Column::OccurredAt)),
            TimeBounds::Filtered => Expr::cust(r#"+"audit_events"."occurred_at""#),
        };
        let mut condition = self.dimensions_condition([
            Column::Action,
            Column::ResourceType,
            Column::Source,
            Column::ActorType,
            Column::Outcome,
        ]);
        for (values, column) in [
            (&self.actor_ids, Column::ActorId),
            (&self.resource_ids, Column::ResourceId),
        ] {
            if !values.is_empty() {
                condition = condition.add(any_of(values, column, false));
            }
        }
        if let Some(email) = &self.actor_email {
            condition = condition.add(ExprTrait::eq(
                Expr::expr(Func::lower(Expr::col(Column::ActorEmail))),
                email.as_str(),
            ));
        }
        if let Some(request_id) = &self.request_id {
            condition = condition.add(Column::RequestId.eq(request_id.as_str()));
        }
        if let Some(client_ip) = &self.client_ip {
            condition = condition.add(Column::RequestClientIp.eq(client_ip.as_str()));
        }
        if let Some(start) = self.start {
            condition = condition.add(occurred_at().gte(start));
        }
        if let Some(end) = self.end {
            condition = condition.add(occurred_at().lt(end));
        }
        if let Some(node) = &self.expression {
            condition = condition.add(sql::condition(node, backend));
        }
        if !self.tenant_ids.is_empty() {
            condition = condition.add(Column::TenantId.is_in(self.tenant_ids.iter().map(String::as_str)));
        }
        if !self.partner_ids.is_empty() {
            use crate::entity::tenant as registry;
            let of_partners = sea_orm::sea_query::Query::select()
                .column(registry::Column::TenantId)
                .from(registry::Entity)
                .and_where(registry::Column::PartnerId.is_in(self.partner_ids.iter().map(String::as_str)))
                .to_owned();
            condition = condition.add(Column::TenantId.in_subquery(of_partners));
        }
        condition
    }

    /// The condition selecting the rollup rows that count exactly the
    /// matching events, when the filter can be answered from rollups: only
    /// the structured fields on their dimensions (`actions`, `actor_types`,
    /// `resource_types`, `outcomes`, `sources`) and time bounds on whole
    /// hours. `None` for anything else (an expression, `actor_ids`,
    /// `actor_email`, `resource_ids`, `request_id`, `client_ip`, a bound
    /// inside an hour).
    pub fn rollup_condition(&self) -> Option<Condition> {
        use crate::entity::event_rollup::{Column as Rollup, hour_of};
        let unexpressible = !self.actor_ids.is_empty()
            || !self.resource_ids.is_empty()
            || self.actor_email.is_some()
            || self.request_id.is_some()
            || self.client_ip.is_some()
            || self.expression.is_some()
            || !self.tenant_ids.is_empty()
            || !self.partner_ids.is_empty();
        let on_hour = |bound: Option<i64>| bound.is_none_or(|t| hour_of(t) == t);
        if unexpressible || !on_hour(self.start) || !on_hour(self.end) {
            return None;
        }
        let mut condition = self.dimensions_condition([
            Rollup::Action,
            Rollup::ResourceType,
            Rollup::Source,
            Rollup::ActorType,
            Rollup::Outcome,
        ]);
        // On whole hours, an hour is inside the bounds exactly when each of
        // its events is.
        if let Some(start) = self.start {
            condition = condition.add(Rollup::HourStart.gte(start));
        }
        if let Some(end) = self.end {
            condition = condition.add(Rollup::HourStart.lt(end));
        }
        Some(condition)
    }

    /// The parts of the filter on the dimensions rollups keep (`actions`,
    /// `resource_types`, `sources`, `actor_types`, `outcomes`), on the
    /// `[action, resource_type, source, actor_type, outcome]` columns.
    fn dimensions_condition<C: ColumnTrait>(
        &self,
        [action, resource_type, source, actor_type, outcome]: [C; 5],
    ) -> Condition {
        let mut condition = Condition::all();
        for (values, column, prefixes) in [
            (&self.actions, action, true),
            (&self.resource_types, resource_type, false),
            (&self.sources, source, false),
        ] {
            if !values.is_empty() {
                condition = condition.add(any_of(values, column, prefixes));
            }
        }
        if !self.actor_types.is_empty() {
            condition = condition.add(actor_type.is_in(self.actor_types.clone()));
        }
        if !self.outcomes.is_empty() {
            condition = condition.add(outcome.is_in(self.outcomes.clone()));
        }
        condition
    }

    /// Whether `event` matches: the same answer the database gives for the
    /// condition (for a filter without `partner_ids`: see
    /// [`EventMatcher::decidable_in_memory`]). An erased event never matches.
    pub fn matches(&self, event: &audit_event::Model) -> bool {
        fn any_of(values: &[String], value: Option<&str>, prefixes: bool) -> bool {
            values.is_empty()
                || value.is_some_and(|value| {
                    values.iter().any(|wanted| match wanted.strip_suffix('*') {
                        Some(prefix) if prefixes => value.starts_with(prefix),
                        _ => value == wanted,
                    })
                })
        }
        fn one_of(values: &[i32], value: Option<i32>) -> bool {
            values.is_empty() || value.is_some_and(|v| values.contains(&v))
        }
        fn equal(wanted: &Option<String>, value: Option<&str>) -> bool {
            wanted.as_deref().is_none_or(|wanted| value == Some(wanted))
        }
        let occurred_at = event.occurred_at;
        event.deleted_at.is_none()
            && any_of(&self.actions, event.action.as_deref(), true)
            && any_of(&self.actor_ids, event.actor_id.as_deref(), false)
            && any_of(&self.resource_types, event.resource_type.as_deref(), false)
            && any_of(&self.resource_ids, event.resource_id.as_deref(), false)
            && any_of(&self.sources, event.source.as_deref(), false)
            && one_of(&self.actor_types, event.actor_type)
            && one_of(&self.outcomes, event.outcome)
            && equal(
                &self.actor_email,
                event
                    .actor_email
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
            )
            && equal(&self.request_id, event.request_id.as_deref())
            && equal(&self.client_ip, event.request_client_ip.as_deref())
            && self
                .start
                .is_none_or(|start| occurred_at.is_some_and(|t| t >= start))
            && self.end.is_none_or(|end| occurred_at.is_some_and(|t| t < end))
            && self.expression.as_ref().is_none_or(|node| node.matches(event))
            && (self.tenant_ids.is_empty() || self.tenant_ids.iter().any(|t| t == event.tenant_id.as_str()))
    }
}

/// `column` equals one of `values` (or, with `prefixes`, starts with one
/// ending in `*`).
fn any_of(values: &[String], column: impl ColumnTrait, prefixes: bool) -> Condition {
    values.iter().fold(Condition::any(), |any, value| {
        if prefixes {
            any.add(exact_or_prefix(column, value))
        } else {
            any.add(column.eq(value.as_str()))
        }
    })
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
    use crate::entity::audit_event::Entity;

    fn sql(filter: &EventFilter) -> String {
        Entity::find()
            .filter(
                EventMatcher::new(filter, "filter")
                    .unwrap()
                    .condition(DbBackend::Sqlite),
            )
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
        let Err(Error::InvalidArgument(violations)) = EventMatcher::new(&filter, "filter") else {
            panic!("accepted")
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            ["filter.actor_ids[0]", "filter.outcomes[0]", "filter.end_time"]
        );
    }
}

//! In-memory evaluation of an `EventFilter`, with the same meaning as the
//! database condition `compile` builds; Watch uses it on live events.

use crate::convert::timestamp_to_micros;
use crate::error::Error;
use crate::proto::EventFilter;
use crate::store::audit_event::Model;

/// A validated filter that tells whether a stored event matches.
#[derive(Debug, Clone)]
pub struct EventMatcher {
    filter: EventFilter,
    start: Option<i64>,
    end: Option<i64>,
    actor_email: String,
}

impl EventMatcher {
    /// A matcher for `filter`, refusing what `compile` refuses.
    pub fn new(filter: &EventFilter, prefix: &str) -> Result<Self, Error> {
        super::compile(filter, prefix)?;
        let bound = |ts: &Option<prost_types::Timestamp>, name: &str| {
            ts.as_ref()
                .map(|ts| timestamp_to_micros(ts, &format!("{prefix}.{name}")))
                .transpose()
        };
        Ok(Self {
            start: bound(&filter.start_time, "start_time")?,
            end: bound(&filter.end_time, "end_time")?,
            actor_email: filter.actor_email.to_ascii_lowercase(),
            filter: filter.clone(),
        })
    }

    /// Whether `event` (a live, not erased event) matches.
    pub fn matches(&self, event: &Model) -> bool {
        if event.deleted_at.is_some() {
            return false;
        }
        let f = &self.filter;
        let text = |value: &Option<String>| value.as_deref().unwrap_or_default().to_owned();
        let any =
            |values: &[String], value: &Option<String>| values.is_empty() || values.contains(&text(value));
        let action = text(&event.action);
        let action_ok = f.actions.is_empty()
            || f.actions.iter().any(|wanted| match wanted.strip_suffix('*') {
                Some(prefix) => action.starts_with(prefix),
                None => *wanted == action,
            });
        let occurred = event.occurred_at.unwrap_or_default();
        action_ok
            && any(&f.actor_ids, &event.actor_id)
            && (f.actor_types.is_empty() || f.actor_types.contains(&event.actor_type.unwrap_or_default()))
            && (self.actor_email.is_empty()
                || text(&event.actor_email).to_ascii_lowercase() == self.actor_email)
            && any(&f.resource_types, &event.resource_type)
            && any(&f.resource_ids, &event.resource_id)
            && (f.outcomes.is_empty() || f.outcomes.contains(&event.outcome.unwrap_or_default()))
            && any(&f.sources, &event.source)
            && (f.request_id.is_empty() || text(&event.request_id) == f.request_id)
            && (f.client_ip.is_empty() || text(&event.request_client_ip) == f.client_ip)
            && self.start.is_none_or(|start| occurred >= start)
            && self.end.is_none_or(|end| occurred < end)
    }
}

//! The field catalog: which event fields an expression can name, their
//! value types and columns, and how a dotted name resolves to a field or a
//! metadata key. `GetFilterMetadata` describes the same catalog.

use super::ExprError;
use crate::entity::audit_event::{self, Column};
use crate::proto::{ActorType, Outcome};

/// The value type of a filterable field, as `GetFilterMetadata` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Text: every operator; `*` suffix for prefixes.
    Text,
    /// A protobuf enum: `=` and `!=` with value names.
    Enum,
    /// A time: comparisons with RFC 3339 values.
    Timestamp,
    /// An integer: comparisons with integer values.
    Integer,
    /// `metadata.KEY`: typed comparisons with a top-level key's value.
    Struct,
}

impl FieldKind {
    /// The name `GetFilterMetadata` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "string",
            Self::Enum => "enum",
            Self::Timestamp => "timestamp",
            Self::Integer => "integer",
            Self::Struct => "struct",
        }
    }

    /// The operators a field of this kind takes.
    pub fn operators(self) -> &'static [&'static str] {
        match self {
            Self::Text | Self::Struct => &["=", "!=", "<", "<=", ">", ">=", ":"],
            Self::Enum => &["=", "!="],
            Self::Timestamp | Self::Integer => &["=", "!=", "<", "<=", ">", ">="],
        }
    }
}

/// A column of the event an expression can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `action`
    Action,
    /// `actor.id`
    ActorId,
    /// `actor.type`
    ActorType,
    /// `actor.name`
    ActorName,
    /// `actor.email`
    ActorEmail,
    /// `resource.type`
    ResourceType,
    /// `resource.id`
    ResourceId,
    /// `resource.name`
    ResourceName,
    /// `outcome`
    Outcome,
    /// `source`
    Source,
    /// `reasoning`
    Reasoning,
    /// `request.method`
    RequestMethod,
    /// `request.path`
    RequestPath,
    /// `request.status_code`
    RequestStatusCode,
    /// `request.client_ip`
    RequestClientIp,
    /// `request.user_agent`
    RequestUserAgent,
    /// `request.request_id`
    RequestId,
    /// `occurred_at`
    OccurredAt,
    /// `recorded_at`
    RecordedAt,
    /// `seq`
    Seq,
    /// `tenant_id`: one tenant's events in its own calls; narrows the
    /// tenants a platform read spans.
    TenantId,
    /// `partner_id`: the partner the tenants registry assigns the event's
    /// tenant (none: the field is missing), decided by the registry, not
    /// stored with the event. In a tenant's own call, its own partner.
    PartnerId,
}

/// Name under which `metadata.KEY` is described.
pub const METADATA_FIELD: &str = "metadata";

impl Field {
    /// Every field, in the order `GetFilterMetadata` lists them.
    pub const ALL: [Field; 22] = [
        Self::TenantId,
        Self::PartnerId,
        Self::Seq,
        Self::OccurredAt,
        Self::RecordedAt,
        Self::Action,
        Self::ActorId,
        Self::ActorType,
        Self::ActorName,
        Self::ActorEmail,
        Self::ResourceType,
        Self::ResourceId,
        Self::ResourceName,
        Self::Outcome,
        Self::Source,
        Self::Reasoning,
        Self::RequestMethod,
        Self::RequestPath,
        Self::RequestStatusCode,
        Self::RequestClientIp,
        Self::RequestUserAgent,
        Self::RequestId,
    ];

    /// The dotted name used in expressions.
    pub fn name(self) -> &'static str {
        match self {
            Self::Action => "action",
            Self::ActorId => "actor.id",
            Self::ActorType => "actor.type",
            Self::ActorName => "actor.name",
            Self::ActorEmail => "actor.email",
            Self::ResourceType => "resource.type",
            Self::ResourceId => "resource.id",
            Self::ResourceName => "resource.name",
            Self::Outcome => "outcome",
            Self::Source => "source",
            Self::Reasoning => "reasoning",
            Self::RequestMethod => "request.method",
            Self::RequestPath => "request.path",
            Self::RequestStatusCode => "request.status_code",
            Self::RequestClientIp => "request.client_ip",
            Self::RequestUserAgent => "request.user_agent",
            Self::RequestId => "request.request_id",
            Self::OccurredAt => "occurred_at",
            Self::RecordedAt => "recorded_at",
            Self::Seq => "seq",
            Self::TenantId => "tenant_id",
            Self::PartnerId => "partner_id",
        }
    }

    /// The field with this dotted name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Its value type.
    pub fn kind(self) -> FieldKind {
        match self {
            Self::ActorType | Self::Outcome => FieldKind::Enum,
            Self::OccurredAt | Self::RecordedAt => FieldKind::Timestamp,
            Self::Seq | Self::RequestStatusCode => FieldKind::Integer,
            _ => FieldKind::Text,
        }
    }

    /// For enum fields, the accepted value names in number order.
    pub fn enum_values(self) -> Vec<&'static str> {
        match self {
            Self::ActorType => (0..)
                .map_while(|v| ActorType::try_from(v).ok())
                .map(|v| v.as_str_name())
                .collect(),
            Self::Outcome => (0..)
                .map_while(|v| Outcome::try_from(v).ok())
                .map(|v| v.as_str_name())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// For enum fields, the number of the value named `name`.
    pub(super) fn enum_value(self, name: &str) -> Option<i32> {
        match self {
            Self::ActorType => ActorType::from_str_name(name).map(|v| v as i32),
            Self::Outcome => Outcome::from_str_name(name).map(|v| v as i32),
            _ => None,
        }
    }

    /// The column holding the field; for `partner_id`, which no column
    /// holds, the tenant's (the registry maps it to a partner).
    pub fn column(self) -> Column {
        match self {
            Self::Action => Column::Action,
            Self::ActorId => Column::ActorId,
            Self::ActorType => Column::ActorType,
            Self::ActorName => Column::ActorName,
            Self::ActorEmail => Column::ActorEmail,
            Self::ResourceType => Column::ResourceType,
            Self::ResourceId => Column::ResourceId,
            Self::ResourceName => Column::ResourceName,
            Self::Outcome => Column::Outcome,
            Self::Source => Column::Source,
            Self::Reasoning => Column::Reasoning,
            Self::RequestMethod => Column::RequestMethod,
            Self::RequestPath => Column::RequestPath,
            Self::RequestStatusCode => Column::RequestStatusCode,
            Self::RequestClientIp => Column::RequestClientIp,
            Self::RequestUserAgent => Column::RequestUserAgent,
            Self::RequestId => Column::RequestId,
            Self::OccurredAt => Column::OccurredAt,
            Self::RecordedAt => Column::RecordedAt,
            Self::Seq => Column::Seq,
            Self::TenantId | Self::PartnerId => Column::TenantId,
        }
    }

    /// The stored text of a text field of `event`; `None` for
    /// `partner_id`, which the event does not hold (a matcher decides it
    /// in memory only once bound to the tenant's partner:
    /// `EventMatcher::for_partner`).
    pub fn text(self, event: &audit_event::Model) -> Option<&str> {
        let value = match self {
            Self::TenantId => return Some(event.tenant_id.as_str()),
            Self::Action => &event.action,
            Self::ActorId => &event.actor_id,
            Self::ActorName => &event.actor_name,
            Self::ActorEmail => &event.actor_email,
            Self::ResourceType => &event.resource_type,
            Self::ResourceId => &event.resource_id,
            Self::ResourceName => &event.resource_name,
            Self::Source => &event.source,
            Self::Reasoning => &event.reasoning,
            Self::RequestMethod => &event.request_method,
            Self::RequestPath => &event.request_path,
            Self::RequestClientIp => &event.request_client_ip,
            Self::RequestUserAgent => &event.request_user_agent,
            Self::RequestId => &event.request_id,
            _ => return None,
        };
        value.as_deref()
    }

    /// The stored number of an enum, integer or time field of `event`.
    pub fn number(self, event: &audit_event::Model) -> Option<i64> {
        match self {
            Self::ActorType => event.actor_type.map(i64::from),
            Self::Outcome => event.outcome.map(i64::from),
            Self::RequestStatusCode => event.request_status_code.map(i64::from),
            Self::OccurredAt => event.occurred_at,
            Self::RecordedAt => Some(event.recorded_at),
            Self::Seq => Some(event.seq),
            _ => None,
        }
    }
}

/// What a field name refers to.
pub(super) enum Target {
    Column(Field),
    Metadata(String),
}

/// The column or metadata key `name` refers to; `position` is where the
/// name starts, for the error.
pub(super) fn resolve_field(name: &str, position: usize) -> Result<Target, ExprError> {
    if let Some(field) = Field::parse(name) {
        return Ok(Target::Column(field));
    }
    if let Some(key) = name.strip_prefix("metadata.") {
        let valid = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(ExprError {
                position,
                message: format!(
                    "metadata key '{key}' is not filterable: keys may hold only letters, digits, '_' and '-'"
                ),
            });
        }
        return Ok(Target::Metadata(key.to_owned()));
    }
    let names: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
    Err(ExprError {
        position,
        message: format!(
            "unknown field '{name}'; expected one of {}, metadata.KEY",
            names.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(name: &str) -> ExprError {
        match resolve_field(name, 0) {
            Err(error) => error,
            Ok(_) => panic!("{name} resolved"),
        }
    }

    #[test]
    fn every_field_resolves_by_its_name() {
        for field in Field::ALL {
            assert_eq!(Field::parse(field.name()), Some(field));
            assert!(matches!(resolve_field(field.name(), 0), Ok(Target::Column(f)) if f == field));
        }
    }

    #[test]
    fn metadata_keys_resolve_when_they_are_plain() {
        assert!(matches!(resolve_field("metadata.x-y_1", 0), Ok(Target::Metadata(key)) if key == "x-y_1"));
    }

    #[test]
    fn unknown_names_and_odd_metadata_keys_are_refused() {
        assert!(error("acton").message.contains("unknown field 'acton'"));
        assert!(error("metadata.a.b").message.contains("keys may hold only"));
        assert!(error("metadata.").message.contains("keys may hold only"));
        assert_eq!(resolve_field("acton", 7).err().map(|e| e.position), Some(7));
    }
}

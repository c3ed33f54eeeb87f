//! The parsed form of an expression and its evaluation in memory: the
//! semantics `sql` compiles for the database, applied to one event.

use super::catalog::Field;
use crate::entity::audit_event;

/// An ordering comparison (`!=` is parsed as `NOT =`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `=`
    Eq,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Comparison {
    /// Whether `left` compares to `right` this way.
    pub fn holds<T: PartialOrd + ?Sized>(self, left: &T, right: &T) -> bool {
        match self {
            Self::Eq => left == right,
            Self::Lt => left < right,
            Self::Le => left <= right,
            Self::Gt => left > right,
            Self::Ge => left >= right,
        }
    }
}

/// A test of a text value.
#[derive(Debug, Clone, PartialEq)]
pub enum TextTest {
    /// Equal to the string.
    Equals(String),
    /// Starts with the string (`= "user.*"`).
    Prefix(String),
    /// Compares byte-wise (`<`, `<=`, `>`, `>=`).
    Compare(Comparison, String),
    /// Contains the string, ASCII case-insensitively; held lower-cased.
    Contains(String),
    /// Present: non-empty text, or a metadata string (`:*`).
    Present,
}

impl TextTest {
    /// Whether `value` passes.
    pub fn holds(&self, value: &str) -> bool {
        match self {
            Self::Equals(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Compare(c, s) => c.holds(value, s.as_str()),
            Self::Contains(s) => value.to_ascii_lowercase().contains(s.as_str()),
            Self::Present => !value.is_empty(),
        }
    }
}

/// A test of a top-level metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataTest {
    /// A string value passing the text test.
    Text(TextTest),
    /// A number value comparing to this number.
    Number(Comparison, f64),
    /// A boolean value equal to this one.
    Bool(bool),
    /// Any non-null value (`metadata.KEY:*`).
    Present,
}

/// One comparison of an expression, typed against its field.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// A text field.
    Text(Field, TextTest),
    /// An enum field equal to this value number.
    Enum(Field, i32),
    /// An integer or time (unix microseconds) field.
    Number(Field, Comparison, i64),
    /// A top-level metadata key.
    Metadata(String, MetadataTest),
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Every part holds.
    And(Vec<Node>),
    /// Some part holds.
    Or(Vec<Node>),
    /// The part does not hold.
    Not(Box<Node>),
    /// A comparison.
    Test(Test),
    /// A part decided already: a `partner_id` comparison bound to the
    /// partner of the one tenant whose events are matched
    /// ([`Node::bind_partner`]).
    Decided(bool),
}

impl Node {
    /// Whether `event` satisfies the expression, evaluated in memory with
    /// exactly the semantics the database applies to the compiled form.
    pub fn matches(&self, event: &audit_event::Model) -> bool {
        match self {
            Self::And(parts) => parts.iter().all(|p| p.matches(event)),
            Self::Or(parts) => parts.iter().any(|p| p.matches(event)),
            Self::Not(part) => !part.matches(event),
            Self::Test(test) => test.matches(event),
            Self::Decided(holds) => *holds,
        }
    }

    /// Whether the expression compares `partner_id`, which only the
    /// tenants registry decides.
    pub fn names_partner(&self) -> bool {
        match self {
            Self::And(parts) | Self::Or(parts) => parts.iter().any(Self::names_partner),
            Self::Not(part) => part.names_partner(),
            Self::Test(Test::Text(Field::PartnerId, _)) => true,
            Self::Test(_) | Self::Decided(_) => false,
        }
    }

    /// The expression for the events of one tenant whose partner is
    /// `partner` (`None`: it has none, and the field is missing): every
    /// `partner_id` comparison decided, as the database decides it.
    pub fn bind_partner(&self, partner: Option<&str>) -> Self {
        match self {
            Self::And(parts) => Self::And(parts.iter().map(|p| p.bind_partner(partner)).collect()),
            Self::Or(parts) => Self::Or(parts.iter().map(|p| p.bind_partner(partner)).collect()),
            Self::Not(part) => Self::Not(Box::new(part.bind_partner(partner))),
            Self::Test(Test::Text(Field::PartnerId, test)) => {
                Self::Decided(partner.is_some_and(|p| test.holds(p)))
            }
            other => other.clone(),
        }
    }
}

impl Test {
    /// Whether `event` passes this comparison.
    pub fn matches(&self, event: &audit_event::Model) -> bool {
        match self {
            Self::Text(field, test) => field.text(event).is_some_and(|v| test.holds(v)),
            Self::Enum(field, value) => field.number(event) == Some(i64::from(*value)),
            Self::Number(field, comparison, value) => {
                field.number(event).is_some_and(|v| comparison.holds(&v, value))
            }
            Self::Metadata(key, test) => {
                let value = event.metadata.as_ref().and_then(|m| m.get(key.as_str()));
                let Some(value) = value else {
                    return false;
                };
                match test {
                    MetadataTest::Text(test) => value.as_str().is_some_and(|v| test.holds(v)),
                    MetadataTest::Number(comparison, number) => value
                        .as_f64()
                        .filter(|_| value.is_number())
                        .is_some_and(|v| comparison.holds(&v, number)),
                    MetadataTest::Bool(b) => value.as_bool() == Some(*b),
                    MetadataTest::Present => !value.is_null(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    fn event() -> audit_event::Model {
        audit_event::Model {
            tenant_id: crate::tenant::TenantId::parse("acme", "tenant").unwrap(),
            seq: 1,
            id: uuid::Uuid::nil(),
            occurred_at: None,
            recorded_at: 0,
            actor_id: None,
            actor_type: None,
            actor_name: None,
            actor_email: None,
            action: Some("user.login".into()),
            resource_type: None,
            resource_id: None,
            resource_name: None,
            outcome: None,
            request_method: None,
            request_path: None,
            request_status_code: None,
            request_client_ip: None,
            request_user_agent: None,
            request_id: None,
            request_client_identity: None,
            source: None,
            reasoning: None,
            metadata: None,
            idempotency_key: None,
            deleted_at: None,
        }
    }

    /// Bound to a tenant's partner, `partner_id` decides as the database
    /// does: a missing partner fails every comparison, so `NOT` passes it.
    #[test]
    fn a_bound_partner_id_decides_like_the_registry() {
        let cases = [
            (r#"partner_id = "p-1""#, Some("p-1"), true),
            (r#"partner_id = "p-1""#, Some("p-2"), false),
            (r#"partner_id = "p-1""#, None, false),
            (r#"partner_id != "p-1""#, None, true),
            (r#"partner_id = "p-*""#, Some("p-9"), true),
            (r#"partner_id:*"#, None, false),
            (r#"partner_id:*"#, Some("x"), true),
            (
                r#"partner_id = "p-1" AND action = "user.login""#,
                Some("p-1"),
                true,
            ),
        ];
        for (source, partner, expected) in cases {
            let node = parse(source).unwrap().unwrap();
            assert!(node.names_partner(), "{source}");
            let bound = node.bind_partner(partner);
            assert!(!bound.names_partner(), "{source}");
            assert_eq!(bound.matches(&event()), expected, "{source} with {partner:?}");
        }
    }
}

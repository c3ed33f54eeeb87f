//! The tenant a call acts for.

use std::fmt;

use crate::error::Error;

/// Longest accepted tenant id.
pub const MAX_TENANT_ID_LEN: usize = 128;

/// A validated tenant id: 1 to 128 characters of `A-Z a-z 0-9 . _ - :`,
/// starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Parses a tenant id; `field` names where it came from in errors.
    pub fn parse(value: &str, field: &str) -> Result<Self, Error> {
        if value.is_empty() {
            return Err(Error::invalid(field, "tenant id must not be empty"));
        }
        if value.len() > MAX_TENANT_ID_LEN {
            return Err(Error::invalid(
                field,
                format!("tenant id is longer than {MAX_TENANT_ID_LEN} characters"),
            ));
        }
        let mut chars = value.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
        if !(first_ok && rest_ok) {
            return Err(Error::invalid(
                field,
                "tenant id may contain only letters, digits, '.', '_', '-' and ':', starting with a letter or digit",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_tenant_ids() {
        for id in ["acme", "tenant-1", "org:eu.prod_2", "7"] {
            assert_eq!(TenantId::parse(id, "x-tenant-id").unwrap().as_str(), id);
        }
    }

    #[test]
    fn refuses_malformed_tenant_ids() {
        for id in ["", "-lead", "has space", "semi;colon", "é", &"a".repeat(129)] {
            assert!(TenantId::parse(id, "x-tenant-id").is_err(), "{id:?} accepted");
        }
    }
}

//! The tenant a call acts for.

use std::fmt;

use sea_orm::{DbErr, DeriveValueType, TryFromU64};

use crate::error::Error;

/// Longest accepted tenant id.
pub const MAX_TENANT_ID_LEN: usize = 128;

/// The reserved tenant whose log holds the platform's own events (every
/// read across tenants is recorded there). No ordinary tenant can have this
/// id: [`TenantId::parse`] refuses ids that start with `_`.
pub const PLATFORM_TENANT: &str = "_platform";

/// The `x-tenant-id` a platform credential sends to read across tenants.
/// No ordinary tenant can have this id: [`TenantId::parse`] refuses it.
pub const ALL_TENANTS: &str = "*";

/// A validated tenant id: 1 to 128 characters of `A-Z a-z 0-9 . _ - :`,
/// starting with a letter or digit.
///
/// It is also the Rust type of every `tenant_id` column (see the
/// `entity` module): a row is written for, and a statement bound to, a
/// tenant only through a value of this type. A value read back from a row
/// is taken as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, DeriveValueType)]
pub struct TenantId(String);

/// A tenant id is text; no key of a tenant table is generated from a number.
impl TryFromU64 for TenantId {
    fn try_from_u64(_: u64) -> Result<Self, DbErr> {
        Err(DbErr::ConvertFromU64("TenantId"))
    }
}

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

    /// The reserved tenant [`PLATFORM_TENANT`], whose log the service
    /// writes the platform's own events into.
    pub fn platform() -> Self {
        Self(PLATFORM_TENANT.to_owned())
    }

    /// Whether this is the reserved tenant [`PLATFORM_TENANT`].
    pub fn is_platform(&self) -> bool {
        self.0 == PLATFORM_TENANT
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned `String`.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The id a row holds, taken as stored (it was a `TenantId` when it was
    /// written).
    pub fn stored(value: String) -> Self {
        Self(value)
    }
}

/// A validated partner id (a reseller or other grouping of tenants): the
/// same characters as a [`TenantId`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartnerId(String);

impl PartnerId {
    /// Parses a partner id; `field` names where it came from in errors.
    pub fn parse(value: &str, field: &str) -> Result<Self, Error> {
        TenantId::parse(value, field).map(|id| Self(id.into_string()))
    }

    /// The partner a row names, taken as stored.
    pub fn stored(value: String) -> Self {
        Self(value)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PartnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
    fn the_reserved_ids_are_never_ordinary_tenants() {
        for id in [ALL_TENANTS, PLATFORM_TENANT] {
            assert!(TenantId::parse(id, "x-tenant-id").is_err(), "{id:?} accepted");
            assert!(PartnerId::parse(id, "partner").is_err(), "{id:?} accepted");
        }
        assert_eq!(TenantId::platform().as_str(), PLATFORM_TENANT);
        assert!(TenantId::platform().is_platform());
        assert!(!TenantId::parse("platform", "x").unwrap().is_platform());
    }

    #[test]
    fn refuses_malformed_tenant_ids() {
        for id in ["", "-lead", "has space", "semi;colon", "é", &"a".repeat(129)] {
            assert!(TenantId::parse(id, "x-tenant-id").is_err(), "{id:?} accepted");
        }
    }
}

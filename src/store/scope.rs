//! Which tenants' logs a read spans: one tenant's, or (for a platform
//! administrator) every tenant's in the registry, or those of one partner.

use crate::tenant::{PartnerId, TenantId};

/// The tenants a read is bound to. A call of an ordinary credential is
/// always [`TenantScope::One`]; only a platform credential sending
/// `x-tenant-id: *` gets [`TenantScope::Platform`], and the store resolves
/// that to tenants from the registry (never the reserved `_platform`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    /// One tenant's log.
    One(TenantId),
    /// Every registered tenant's log, or only those of `partner`.
    Platform {
        /// The partner the credential is limited to.
        partner: Option<PartnerId>,
    },
}

impl TenantScope {
    /// The one tenant, when the scope is one tenant's.
    pub fn one(&self) -> Option<&TenantId> {
        match self {
            Self::One(tenant) => Some(tenant),
            Self::Platform { .. } => None,
        }
    }
}

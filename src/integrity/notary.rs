//! The checkpoint signer: one key signing every tenant's checkpoints, each
//! tenant's log named `<origin>/<tenant>`. Where the key comes from is
//! `startup::signing_key`.

use super::checkpoint::{SigningKey, VerifierKey};
use crate::tenant::TenantId;

/// Signs each tenant's checkpoints as log `<origin>/<tenant>`.
#[derive(Debug, Clone)]
pub struct Notary {
    origin: String,
    key: SigningKey,
}

impl Notary {
    /// A notary signing with `key` for logs named `<origin>/<tenant>`.
    pub fn new(origin: &str, key: SigningKey) -> anyhow::Result<Self> {
        if origin.is_empty() || origin.chars().any(char::is_whitespace) {
            anyhow::bail!("AUDIT_LOG_ORIGIN {origin:?} must be non-empty and without spaces");
        }
        Ok(Self {
            origin: origin.to_owned(),
            key,
        })
    }

    /// The name of the tenant's log in its checkpoints.
    pub fn origin_of(&self, tenant: &TenantId) -> String {
        format!("{}/{tenant}", self.origin)
    }

    /// The signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The key that checks this notary's checkpoints.
    pub fn verifier(&self) -> VerifierKey {
        self.key.verifier()
    }
}

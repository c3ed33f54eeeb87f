//! API keys: minted once, stored as a hash, looked up by id and checked in
//! constant time, revocable at once.
//!
//! A key reads `ak_<key id, 32 hex digits>_<secret, 43 base64url chars>`.
//! The id locates the row; the 256-bit secret is compared by SHA-256 hash
//! with `subtle`, so timing says nothing about the secret.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, Set};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{Store, StoreError, StoreResult, now_micros};
use crate::entity::api_key;
use crate::tenant::{PartnerId, TenantId};

const KEY_PREFIX: &str = "ak_";
const SECRET_BYTES: usize = 32;

/// What the service knows of a key (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    /// Key id, shown by `keys list` and used by `keys revoke`.
    pub id: Uuid,
    /// The tenant the key acts for.
    pub tenant: String,
    /// Scope names the key grants.
    pub scopes: Vec<String>,
    /// When it was minted (unix microseconds).
    pub created_at: i64,
    /// When it last authenticated a call (unix microseconds).
    pub last_used_at: Option<i64>,
    /// When it was revoked (unix microseconds).
    pub revoked_at: Option<i64>,
    /// A platform key: it may read across tenants (`x-tenant-id: *`) and
    /// the platform's own log; its `tenant` is the reserved `_platform`.
    pub platform: bool,
    /// The partner whose tenants a platform key is limited to.
    pub partner: Option<PartnerId>,
}

/// Whom a new key acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyHolder {
    /// One tenant.
    Tenant(TenantId),
    /// The platform: reads across every tenant, or only the tenants of
    /// `partner`.
    Platform {
        /// The partner the key is limited to.
        partner: Option<PartnerId>,
    },
}

impl From<api_key::Model> for ApiKeyInfo {
    fn from(model: api_key::Model) -> Self {
        Self {
            id: model.id,
            tenant: model.tenant_id.into_string(),
            scopes: model.scopes.split_whitespace().map(str::to_owned).collect(),
            created_at: model.created_at,
            last_used_at: model.last_used_at,
            revoked_at: model.revoked_at,
            platform: model.platform,
            partner: model.partner_id.map(PartnerId::stored),
        }
    }
}

fn secret_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Splits a presented key into its id and secret.
fn parse_key(presented: &str) -> Option<(Uuid, &str)> {
    let (id, secret) = presented.strip_prefix(KEY_PREFIX)?.split_once('_')?;
    if id.len() != 32 || secret.is_empty() {
        return None;
    }
    Some((Uuid::try_parse(id).ok()?, secret))
}

impl Store {
    /// Mints a key for `tenant` with `scopes`; returns it with the only copy
    /// of the full key text.
    pub async fn create_api_key(
        &self,
        tenant: &TenantId,
        scopes: &[String],
    ) -> StoreResult<(ApiKeyInfo, String)> {
        self.create_key(KeyHolder::Tenant(tenant.clone()), scopes).await
    }

    /// Mints a key for `holder` with `scopes`; returns it with the only copy
    /// of the full key text. A platform key is stored under the reserved
    /// tenant `_platform` (`keys list --platform`).
    pub async fn create_key(
        &self,
        holder: KeyHolder,
        scopes: &[String],
    ) -> StoreResult<(ApiKeyInfo, String)> {
        let (tenant, platform, partner) = match holder {
            KeyHolder::Tenant(tenant) => (tenant, false, None),
            KeyHolder::Platform { partner } => (TenantId::platform(), true, partner),
        };
        let id = Uuid::now_v7();
        let mut secret = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut secret);
        let secret = URL_SAFE_NO_PAD.encode(secret);
        let model = api_key::Model {
            id,
            tenant_id: tenant,
            scopes: scopes.join(" "),
            secret_hash: secret_hash(&secret),
            created_at: now_micros(),
            last_used_at: None,
            revoked_at: None,
            platform,
            partner_id: partner.map(|p| p.as_str().to_owned()),
        };
        let _writer = self.write_guard().await;
        api_key::Entity::insert(model.clone().into_active_model().reset_all())
            .exec_without_returning(&self.db)
            .await?;
        Ok((model.into(), format!("{KEY_PREFIX}{}_{secret}", id.simple())))
    }

    /// The tenant's keys, oldest first, revoked ones included.
    pub async fn list_api_keys(&self, tenant: &TenantId) -> StoreResult<Vec<ApiKeyInfo>> {
        let keys = api_key::Entity::of_tenant(tenant)
            .order_by_asc(api_key::Column::CreatedAt)
            .all(&self.db)
            .await?;
        Ok(keys.into_iter().map(ApiKeyInfo::from).collect())
    }

    /// Revokes a key and returns it as it now is (revoking twice keeps the
    /// first time); [`StoreError::NotFound`] when there is no such key.
    /// Keys are found by id, whoever's they are: this is the operator's
    /// `keys revoke` command.
    pub async fn revoke_api_key(&self, id: Uuid) -> StoreResult<ApiKeyInfo> {
        let _writer = self.write_guard().await;
        let Some(key) = api_key::Entity::find_by_id(id).one(&self.db).await? else {
            return Err(StoreError::NotFound {
                kind: "API key",
                id: id.to_string(),
            });
        };
        if key.revoked_at.is_some() {
            return Ok(key.into());
        }
        let mut active = key.into_active_model();
        active.revoked_at = Set(Some(now_micros()));
        Ok(active.update(&self.db).await?.into())
    }

    /// The live key `presented` is, or `None` when it is malformed, unknown,
    /// wrong or revoked. Reads the database every time, so a revocation
    /// takes effect on the next call in every replica. Found by id, whoever's
    /// it is: authentication learns the tenant from the key.
    pub async fn verify_api_key(&self, presented: &str) -> StoreResult<Option<ApiKeyInfo>> {
        let Some((id, secret)) = parse_key(presented) else {
            return Ok(None);
        };
        let Some(key) = api_key::Entity::find_by_id(id).one(self.reader()).await? else {
            return Ok(None);
        };
        let matches: bool = secret_hash(secret).ct_eq(&key.secret_hash).into();
        if !matches || key.revoked_at.is_some() {
            return Ok(None);
        }
        Ok(Some(key.into()))
    }

    /// Whether key `id` exists and is not revoked. Reads the database every
    /// time, so streams see a revocation made by any process.
    pub async fn api_key_is_live(&self, id: Uuid) -> StoreResult<bool> {
        let key = api_key::Entity::find_by_id(id).one(&self.db).await?;
        Ok(key.is_some_and(|key| key.revoked_at.is_none()))
    }

    /// Records that the key authenticated a call now.
    pub async fn touch_api_key(&self, id: Uuid) -> StoreResult<()> {
        let _writer = self.write_guard().await;
        api_key::Entity::update_many()
            .col_expr(
                api_key::Column::LastUsedAt,
                sea_orm::sea_query::Expr::value(now_micros()),
            )
            .filter(api_key::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_into_id_and_secret() {
        let id = Uuid::now_v7();
        let key = format!("ak_{}_ab_c-d", id.simple());
        assert_eq!(parse_key(&key), Some((id, "ab_c-d")));
        for bad in [
            "",
            "ak_",
            "ak_123_x",
            "xx_0123456789abcdef0123456789abcdef_x",
            &format!("ak_{}_", id.simple()),
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }
}

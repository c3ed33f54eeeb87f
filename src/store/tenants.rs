//! The tenants registry (`audit-service tenants`): every tenant with a log,
//! from the transaction of its first append on, and the partner an operator
//! assigned it.

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::{Store, StoreError, StoreResult};
use crate::entity::tenant;
use crate::tenant::{PartnerId, TenantId};

/// One tenant as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantInfo {
    /// The tenant.
    pub tenant: TenantId,
    /// Its partner, if an operator assigned one.
    pub partner: Option<PartnerId>,
    /// When the registry first saw it (unix microseconds).
    pub created_at: i64,
}

impl From<tenant::Model> for TenantInfo {
    fn from(model: tenant::Model) -> Self {
        Self {
            tenant: model.tenant_id,
            partner: model.partner_id.map(PartnerId::stored),
            created_at: model.created_at,
        }
    }
}

impl Store {
    /// Every tenant of the registry, by id (the reserved `_platform`
    /// included once it has a log). The operator's `tenants list`.
    pub async fn list_tenants(&self) -> StoreResult<Vec<TenantInfo>> {
        let rows = tenant::Entity::find()
            .order_by_asc(tenant::Column::TenantId)
            .all(self.reader())
            .await?;
        Ok(rows.into_iter().map(TenantInfo::from).collect())
    }

    /// The tenants a platform read across tenants spans, ordered by id
    /// byte-wise: the registry's but `_platform`, only those of `partner`
    /// when the credential is limited to one, narrowed to `tenant_ids` and
    /// to the tenants of `partner_ids` when they are given (a filter's).
    pub async fn tenant_set(
        &self,
        partner: Option<&PartnerId>,
        tenant_ids: &[String],
        partner_ids: &[String],
    ) -> StoreResult<Vec<TenantInfo>> {
        let mut select = tenant::Entity::find().filter(tenant::Column::TenantId.ne(TenantId::platform()));
        if let Some(partner) = partner {
            select = select.filter(tenant::Column::PartnerId.eq(partner.as_str()));
        }
        if !tenant_ids.is_empty() {
            select = select.filter(tenant::Column::TenantId.is_in(tenant_ids.iter().map(String::as_str)));
        }
        if !partner_ids.is_empty() {
            select = select.filter(tenant::Column::PartnerId.is_in(partner_ids.iter().map(String::as_str)));
        }
        let mut tenants: Vec<TenantInfo> = select
            .all(self.reader())
            .await?
            .into_iter()
            .map(TenantInfo::from)
            .collect();
        tenants.sort_by(|a, b| a.tenant.as_str().as_bytes().cmp(b.tenant.as_str().as_bytes()));
        Ok(tenants)
    }

    /// The partner the registry assigns `tenant`, if any.
    pub async fn partner_of(&self, tenant: &TenantId) -> StoreResult<Option<PartnerId>> {
        let row = tenant::Entity::of_tenant(tenant).one(self.reader()).await?;
        Ok(row.and_then(|row| row.partner_id).map(PartnerId::stored))
    }

    /// Assigns `tenant` to `partner` (`None`: to no partner) and returns it
    /// as it now is; [`StoreError::NotFound`] when the registry has no such
    /// tenant (it has never appended).
    pub async fn set_partner(
        &self,
        tenant: &TenantId,
        partner: Option<&PartnerId>,
    ) -> StoreResult<TenantInfo> {
        let _writer = self.write_guard().await;
        let updated = tenant::Entity::update_of_tenant(tenant)
            .col_expr(
                tenant::Column::PartnerId,
                Expr::value(partner.map(|p| p.as_str().to_owned())),
            )
            .exec(&self.db)
            .await?;
        if updated.rows_affected == 0 {
            return Err(StoreError::NotFound {
                kind: "tenant",
                id: tenant.to_string(),
            });
        }
        let row = tenant::Entity::of_tenant(tenant)
            .one(&self.db)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "tenant",
                id: tenant.to_string(),
            })?;
        Ok(row.into())
    }
}

#[cfg(test)]
mod tests {
    use audit_migrations::{Migrator, MigratorTrait};

    use super::*;
    use crate::config::DatabaseConfig;
    use crate::store::NewEvent;

    fn event() -> NewEvent {
        NewEvent {
            action: "document.read".into(),
            actor_id: "alice".into(),
            ..NewEvent::default()
        }
    }

    /// The migration that creates the registry fills it from the tenants
    /// that already have logs, each dated by its first event.
    #[tokio::test]
    async fn the_registry_migration_backfills_existing_tenants() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
        let store = Store::connect(&DatabaseConfig::new(url)).await.unwrap();
        let acme = TenantId::parse("acme", "tenant").unwrap();
        let globex = TenantId::parse("globex", "tenant").unwrap();
        store.append(&acme, vec![event()]).await.unwrap();
        store.append(&globex, vec![event(), event()]).await.unwrap();
        let first = crate::entity::audit_event::Entity::of_tenant(&acme)
            .one(store.connection())
            .await
            .unwrap()
            .unwrap()
            .recorded_at;

        // Down to just before the registry's migration, whatever came after.
        let registry = "m20261222_000009_platform";
        let since = Migrator::migrations()
            .iter()
            .rev()
            .position(|m| m.name() == registry)
            .expect("the registry's migration")
            + 1;
        Migrator::down(store.connection(), Some(u32::try_from(since).unwrap()))
            .await
            .unwrap();
        Migrator::up(store.connection(), None).await.unwrap();

        let listed = store.list_tenants().await.unwrap();
        let ids: Vec<&str> = listed.iter().map(|t| t.tenant.as_str()).collect();
        assert_eq!(ids, ["acme", "globex"]);
        assert_eq!(listed[0].created_at, first);
        assert!(listed.iter().all(|t| t.partner.is_none()));
        // And a tenant's first append after it adds it.
        let initech = TenantId::parse("initech", "tenant").unwrap();
        store.append(&initech, vec![event()]).await.unwrap();
        assert_eq!(store.list_tenants().await.unwrap().len(), 3);
    }
}

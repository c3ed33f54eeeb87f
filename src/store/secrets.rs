//! Secrets every replica of one database shares (the page-token key, the
//! notary's key), created on first use.

use rand::RngCore;
use sea_orm::sea_query::OnConflict;
use sea_orm::{DatabaseConnection, DbErr, EntityTrait, Set};

use super::{Store, StoreResult, now_micros};

impl Store {
    /// The named 32-byte secret all replicas of this database share,
    /// created on first use.
    pub async fn shared_secret(&self, name: &str) -> StoreResult<Vec<u8>> {
        Ok(load_or_create_secret(&self.db, name).await?)
    }
}

/// Returns the named secret, creating 32 random bytes on first use; every
/// replica of one database reads the same value.
pub(super) async fn load_or_create_secret(db: &DatabaseConnection, name: &str) -> Result<Vec<u8>, DbErr> {
    use crate::entity::service_secret;
    let mut value = vec![0u8; 32];
    rand::rng().fill_bytes(&mut value);
    service_secret::Entity::insert(service_secret::ActiveModel {
        name: Set(name.to_owned()),
        value: Set(value),
        created_at: Set(now_micros()),
    })
    .on_conflict(
        OnConflict::column(service_secret::Column::Name)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    service_secret::Entity::find_by_id(name.to_owned())
        .one(db)
        .await?
        .map(|secret| secret.value)
        .ok_or_else(|| DbErr::RecordNotFound(format!("service secret {name}")))
}

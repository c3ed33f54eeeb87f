//! Schema migrations of the audit service.
//!
//! Never modify a published migration: add a new `mYYYYMMDD_HHMMSS_name.rs`
//! and list it last in [`Migrator::migrations`].

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_create_audit_log;
mod m20261123_000002_create_api_keys;
mod m20261123_000003_create_merkle_tree;
mod m20261202_000004_create_policies;
mod m20261210_000005_create_access_audit;
mod m20261215_000006_add_request_client_identity;
mod m20261220_000007_create_rollups;
mod m20261221_000008_compact_storage;
mod m20261222_000009_platform;
mod m20261223_000010_events_by_time;

/// Every migration of the service, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_audit_log::Migration),
            Box::new(m20261123_000002_create_api_keys::Migration),
            Box::new(m20261123_000003_create_merkle_tree::Migration),
            Box::new(m20261202_000004_create_policies::Migration),
            Box::new(m20261210_000005_create_access_audit::Migration),
            Box::new(m20261215_000006_add_request_client_identity::Migration),
            Box::new(m20261220_000007_create_rollups::Migration),
            Box::new(m20261221_000008_compact_storage::Migration),
            Box::new(m20261222_000009_platform::Migration),
            Box::new(m20261223_000010_events_by_time::Migration),
        ]
    }
}

//! The sequencer: each tenant's next `seq` is handed out under a row lock on
//! `tenant_heads`, so seqs are contiguous and in commit order on every
//! backend and across replicas sharing one PostgreSQL database. On
//! PostgreSQL a group may be written ahead, on top of the group still
//! committing, and is checked under that lock before it commits
//! ([`Store::append_batches`](super::Store::append_batches)).

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, QueryResult};

use super::sessions::{LOCK_WAIT_LIMIT, millis_setting};
use super::{StoreError, StoreResult, now_micros};
use crate::entity::tenant_statement;
use crate::tenant::TenantId;

/// A tenant's sequence head and tree size, read under its row lock.
#[derive(Debug, Clone, Copy)]
pub(super) struct Head {
    /// Highest seq handed out so far (0 for a new tenant).
    pub head_seq: i64,
    /// Leaves in the tenant's Merkle tree.
    pub tree_size: i64,
}

impl Head {
    /// The head in a `SELECT head_seq, tree_size` row.
    fn from_row(row: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            head_seq: row.try_get("", "head_seq")?,
            tree_size: row.try_get("", "tree_size")?,
        })
    }
}

/// Locks the tenant's head row until the transaction ends and returns it.
pub(super) async fn lock_head(txn: &DatabaseTransaction, tenant: &TenantId) -> StoreResult<Head> {
    let backend = txn.get_database_backend();
    // SQLite has no row locks; the store's single-writer lock serializes.
    let select = match backend {
        DbBackend::Postgres => "SELECT head_seq, tree_size FROM tenant_heads WHERE tenant_id = $1 FOR UPDATE",
        _ => "SELECT head_seq, tree_size FROM tenant_heads WHERE tenant_id = $1",
    };
    let statement = |sql: &str| tenant_statement(backend, tenant, sql, []);
    let row = match txn.query_one_raw(statement(select)).await? {
        Some(row) => row,
        None => {
            txn.execute_raw(statement(
                "INSERT INTO tenant_heads (tenant_id, head_seq, tree_size) VALUES ($1, 0, 0) \
                 ON CONFLICT (tenant_id) DO NOTHING",
            ))
            .await?;
            // The tenants registry learns of the tenant in the transaction
            // that creates its head, once: later writes find the head.
            txn.execute_raw(tenant_statement(
                backend,
                tenant,
                "INSERT INTO tenants (tenant_id, partner_id, created_at) VALUES ($1, NULL, $2) \
                 ON CONFLICT (tenant_id) DO NOTHING",
                [now_micros().into()],
            ))
            .await?;
            txn.query_one_raw(statement(select))
                .await?
                .ok_or_else(|| missing_head(tenant))?
        }
    };
    Ok(Head::from_row(&row)?)
}

/// Locks the tenant's head row without waiting (PostgreSQL): fails at once
/// if another transaction holds it, so a group written ahead never waits
/// on a writer that may be waiting on its rows. Holding the lock, the
/// group is an ordinary writer from then on: its lock waits get the
/// session's limit back (its COMMIT waits its turn to queue its NOTIFY).
pub(super) async fn lock_head_now(txn: &DatabaseTransaction, tenant: &TenantId) -> StoreResult<Head> {
    let row = txn
        .query_one_raw(tenant_statement(
            DbBackend::Postgres,
            tenant,
            "SELECT head_seq, tree_size, set_config('lock_timeout', $2, true) \
             FROM tenant_heads WHERE tenant_id = $1 FOR UPDATE NOWAIT",
            [millis_setting(LOCK_WAIT_LIMIT).into()],
        ))
        .await?
        .ok_or_else(|| missing_head(tenant))?;
    Ok(Head::from_row(&row)?)
}

/// Moves the tenant's head and tree size (its row is locked).
pub(super) async fn set_head(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    head: i64,
    tree_size: i64,
) -> Result<(), DbErr> {
    let backend = txn.get_database_backend();
    txn.execute_raw(tenant_statement(
        backend,
        tenant,
        "UPDATE tenant_heads SET head_seq = $2, tree_size = $3 WHERE tenant_id = $1",
        [head.into(), tree_size.into()],
    ))
    .await?;
    Ok(())
}

/// The tenant's `tenant_heads` row is gone right after it was locked or
/// inserted: nothing the service does removes one.
fn missing_head(tenant: &TenantId) -> StoreError {
    StoreError::Corrupt {
        tenant: tenant.clone(),
        what: "its sequence head row (tenant_heads) is missing".into(),
    }
}

//! How a commit is made known: to this process's Watch hub through the
//! commit feed, and on PostgreSQL to every replica through NOTIFY.

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, Statement};

use super::Store;
use crate::entity::audit_event;
use crate::tenant::TenantId;

/// PostgreSQL channel on which every commit is announced (payload
/// `tenant\tfirst_seq\tlast_seq`), so replicas can feed their Watch streams.
pub const NOTIFY_CHANNEL: &str = "audit_events";

/// Events one transaction committed to one tenant's log: every live event
/// with a seq in `first_seq..=last_seq`.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The tenant.
    pub tenant: TenantId,
    /// Lowest seq the transaction handed out.
    pub first_seq: i64,
    /// Highest seq the transaction handed out.
    pub last_seq: i64,
    /// The events, in seq order.
    pub events: Vec<audit_event::Model>,
}

impl Store {
    /// Whether anyone in this process follows commits (a Watch hub), so the
    /// committed rows are worth keeping for [`Store::publish`].
    pub(super) fn wants_commits(&self) -> bool {
        self.commits.receiver_count() > 0
    }

    /// Hands a commit to this process's followers.
    pub(super) fn publish(&self, committed: Committed) {
        // No receiver just means no Watch hub is running.
        let _ = self.commits.send(std::sync::Arc::new(committed));
    }
}

/// On PostgreSQL, queues a NOTIFY that is delivered if and when the
/// transaction commits, in commit order, to every replica.
pub(super) async fn announce(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    first: i64,
    last: i64,
) -> Result<(), DbErr> {
    if txn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [NOTIFY_CHANNEL.into(), format!("{tenant}\t{first}\t{last}").into()],
    ))
    .await?;
    Ok(())
}

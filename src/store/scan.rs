//! Reads of a seq range that stop at the reader's budget: rows are decoded
//! one at a time as the driver yields them, so a reader that stops early
//! never holds more of a page than it chose to keep.

use std::ops::ControlFlow;

use futures::StreamExt as _;
use sea_orm::{ColumnTrait, Condition, QueryFilter, QueryOrder, QuerySelect, QueryTrait, StreamTrait};

use super::replica::ReadRoute;
use super::{ReadFloor, Store, StoreResult, events_of};
use crate::entity::audit_event;
use crate::tenant::TenantId;

impl Store {
    /// Hands `visit`, in seq order, each of the tenant's live events
    /// matching `condition` with `after < seq <= up_to`, at most `max_rows`
    /// of them, until `visit` breaks; returns how many rows it handed over.
    ///
    /// On a read replica once it has replayed `up_to` (Watch reads up to a
    /// head it learnt from the primary, and takes a short read as the end),
    /// else on the primary; a replica read that fails before handing over
    /// a row runs again on the primary.
    pub async fn scan_events(
        &self,
        tenant: &TenantId,
        condition: Condition,
        after: i64,
        up_to: i64,
        max_rows: u64,
        mut visit: impl FnMut(audit_event::Model) -> ControlFlow<()> + Send,
    ) -> StoreResult<u64> {
        if let ReadRoute::Replica(replica) = self.read_route(tenant, ReadFloor::Seq(up_to)).await {
            let mut handed_any = false;
            let read = replica
                .scan_events_here(tenant, condition.clone(), after, up_to, max_rows, |model| {
                    handed_any = true;
                    visit(model)
                })
                .await;
            match read {
                Err(error) if !handed_any && self.replica_failed(&error) => {}
                read => return read,
            }
        }
        self.scan_events_here(tenant, condition, after, up_to, max_rows, visit)
            .await
    }

    /// [`scan_events`](Self::scan_events) on this store's main pool.
    async fn scan_events_here(
        &self,
        tenant: &TenantId,
        condition: Condition,
        after: i64,
        up_to: i64,
        max_rows: u64,
        mut visit: impl FnMut(audit_event::Model) -> ControlFlow<()> + Send,
    ) -> StoreResult<u64> {
        // The main pool, as Watch reads always were (the hub's semaphore
        // keeps them to half of it); the read pool's idle connections are
        // not tested before use, so after an outage they fail first.
        let db = &self.db;
        let statement = events_of(tenant)
            .filter(condition)
            .filter(audit_event::Column::Seq.gt(after))
            .filter(audit_event::Column::Seq.lte(up_to))
            .order_by_asc(audit_event::Column::Seq)
            .limit(max_rows)
            .build(db.get_database_backend());
        let mut rows = db.stream_raw(statement).await?;
        let mut handed = 0;
        while let Some(row) = rows.next().await {
            handed += 1;
            if visit(audit_event::Model::from_row(&row?)?).is_break() {
                break;
            }
        }
        Ok(handed)
    }
}

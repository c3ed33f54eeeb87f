//! Pages of a platform read across tenants (`x-tenant-id: *`): the live
//! events of the registered tenants (or a partner's), in `(time, tenant,
//! seq)` order, keyset-paged with a [`SpanCursor`].
//!
//! Seqs of different tenants do not compare, so a read across tenants
//! orders by a time first: `recorded_at` for the `seq` orders (within one
//! tenant, commit order), `occurred_at` for the `occurred_at` orders; then
//! by tenant id (byte-wise on both databases), then by seq.

use std::collections::BTreeSet;

use futures::TryStreamExt;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    Condition, ConnectionTrait, DbBackend, DbErr, Order, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    Select,
};

use super::query::{EventOrder, EventPage, PageLimits, PageSink};
use super::{SpanCursor, Store, StoreResult, TenantScope, events_by_time_in, events_in, within_deadline};
use crate::entity::audit_event::{self, Column};
use crate::filter::EventMatcher;
use crate::tenant::{PartnerId, TenantId};

/// One page of a read across tenants.
#[derive(Debug)]
pub struct SpanPage<S> {
    /// The events in order, and where the next page starts.
    pub page: EventPage<S>,
    /// Where the next page starts: the last event's `(time, tenant, seq)`,
    /// when more events match.
    pub next: Option<SpanCursor>,
    /// The tenants whose events the page holds.
    pub tenants: BTreeSet<String>,
}

impl Store {
    /// A page of the live events of the tenants a platform credential
    /// limited to `partner` (or not) reaches that `matcher` matches, in
    /// `order` (see the module), strictly after `after`, within `limits`;
    /// within [`READ_DEADLINE`](super::READ_DEADLINE).
    pub async fn query_page_across<S: PageSink>(
        &self,
        partner: Option<&PartnerId>,
        matcher: &EventMatcher,
        order: EventOrder,
        after: Option<&SpanCursor>,
        limits: PageLimits,
    ) -> StoreResult<SpanPage<S>> {
        let db = self.reader();
        let backend = ConnectionTrait::get_database_backend(db);
        let select = span_select(backend, partner, matcher, order, after, limits.events as u64 + 1);
        within_deadline(async {
            let mut events = S::with_budget(limits.bytes, limits.events.saturating_mul(384));
            let mut tenants = BTreeSet::new();
            let mut last = None;
            let mut stream = db.stream_rows(select.build(backend)).await?;
            while let Some(row) = stream.try_next().await? {
                let included = events.count() < limits.events && {
                    let fields = audit_event::fields_of_row(&row)?;
                    let written = events.push(&fields);
                    if written {
                        tenants.insert(fields.tenant_id.to_owned());
                        last = Some(SpanCursor {
                            at: if order_by_recording(order) {
                                fields.recorded_at
                            } else {
                                fields.occurred_at.unwrap_or_default()
                            },
                            tenant: TenantId::stored(fields.tenant_id.to_owned()),
                            seq: fields.seq,
                        });
                    }
                    written
                };
                if !included {
                    return Ok::<_, DbErr>(SpanPage {
                        page: EventPage { events, next: None },
                        next: last,
                        tenants,
                    });
                }
            }
            Ok(SpanPage {
                page: EventPage { events, next: None },
                next: None,
                tenants,
            })
        })
        .await
    }
}

/// Whether `order` reads across tenants by `recorded_at` (the `seq`
/// orders) rather than by `occurred_at`.
fn order_by_recording(order: EventOrder) -> bool {
    matches!(order, EventOrder::SeqDesc | EventOrder::SeqAsc)
}

/// The tenant column, compared byte-wise: PostgreSQL's column has the
/// database's collation.
fn tenant_column(backend: DbBackend) -> Expr {
    match backend {
        DbBackend::Postgres => Expr::cust(r#""audit_events"."tenant_id" COLLATE "C""#),
        _ => Expr::col((audit_event::Entity, Column::TenantId)),
    }
}

/// The SELECT of one page across tenants: up to `limit` matching events of
/// the tenants `partner` reaches, in `order`, strictly after `after`.
fn span_select(
    backend: DbBackend,
    partner: Option<&PartnerId>,
    matcher: &EventMatcher,
    order: EventOrder,
    after: Option<&SpanCursor>,
    limit: u64,
) -> Select<audit_event::Entity> {
    let time = if order_by_recording(order) {
        Column::RecordedAt
    } else {
        Column::OccurredAt
    };
    let descending = matches!(order, EventOrder::SeqDesc | EventOrder::OccurredAtDesc);
    let scope = TenantScope::Platform {
        partner: partner.cloned(),
    };
    let events = if order_by_recording(order) {
        events_by_time_in(&scope, backend)
    } else {
        events_in(&scope)
    };
    let mut select = events.filter(matcher.condition(backend));
    if let Some(cursor) = after {
        let tenant = cursor.tenant.as_str();
        let beyond = |left: Expr, right: Expr| {
            if descending {
                left.lt(right)
            } else {
                left.gt(right)
            }
        };
        let col = |column: Column| Expr::col((audit_event::Entity, column));
        // The same rows as the condition below, but one an index on the
        // time can seek to (the OR below it cannot): a later page starts
        // where its cursor is instead of reading the pages before it.
        let within = if descending {
            col(time).lte(cursor.at)
        } else {
            col(time).gte(cursor.at)
        };
        select = select.filter(within).filter(
            Condition::any().add(beyond(col(time), Expr::val(cursor.at))).add(
                Condition::all().add(col(time).eq(cursor.at)).add(
                    Condition::any()
                        .add(beyond(tenant_column(backend), Expr::val(tenant)))
                        .add(
                            Condition::all()
                                .add(tenant_column(backend).eq(tenant))
                                .add(beyond(col(Column::Seq), Expr::val(cursor.seq))),
                        ),
                ),
            ),
        );
    }
    let direction = if descending { Order::Desc } else { Order::Asc };
    select
        .order_by(time, direction.clone())
        .order_by(tenant_column(backend), direction.clone())
        .order_by(Column::Seq, direction)
        .limit(limit)
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, QueryTrait, Statement};

    use super::*;
    use crate::config::DatabaseConfig;
    use crate::proto::EventFilter;
    use crate::store::NewEvent;

    /// SQLite's plan for a page across tenants in `order` after `after`.
    async fn plan(store: &Store, order: EventOrder, after: Option<&SpanCursor>) -> String {
        let matcher = EventMatcher::new(&EventFilter::default(), "filter").unwrap();
        let statement =
            span_select(DbBackend::Sqlite, None, &matcher, order, after, 51).build(DbBackend::Sqlite);
        let explain = Statement::from_sql_and_values(
            DbBackend::Sqlite,
            format!("EXPLAIN QUERY PLAN {}", statement.sql),
            statement.values.unwrap().0,
        );
        let rows = store.connection().query_all_raw(explain).await.unwrap();
        let details: Vec<String> = rows
            .iter()
            .map(|row| row.try_get_by_index::<String>(3).unwrap())
            .collect();
        details.join("; ")
    }

    /// A page across tenants in the default order reads the newest rows of
    /// the time index (first page and a later one, which seeks to its
    /// cursor), instead of scanning every tenant's events and sorting them.
    #[tokio::test]
    async fn a_page_across_tenants_in_recording_order_walks_the_time_index() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
        let store = Store::connect(&DatabaseConfig::new(url)).await.unwrap();
        for n in 0..20 {
            let tenant = TenantId::parse(&format!("tenant-{n:02}"), "tenant").unwrap();
            let batch = (0..50)
                .map(|i| NewEvent {
                    actor_id: format!("actor-{i}"),
                    action: "doc.read".into(),
                    ..NewEvent::default()
                })
                .collect();
            store.append(&tenant, batch).await.unwrap();
        }
        store.connection().execute_unprepared("ANALYZE").await.unwrap();
        let cursor = SpanCursor {
            at: crate::store::now_micros() - 1_000_000,
            tenant: TenantId::parse("tenant-07", "tenant").unwrap(),
            seq: 25,
        };
        for (order, after) in [
            (EventOrder::SeqDesc, None),
            (EventOrder::SeqDesc, Some(&cursor)),
            (EventOrder::SeqAsc, Some(&cursor)),
        ] {
            let plan = plan(&store, order, after).await;
            assert!(
                plan.contains("ix_audit_events_recorded"),
                "{order:?} after {after:?}: {plan}"
            );
        }
        let plan = plan(&store, EventOrder::SeqDesc, Some(&cursor)).await;
        assert!(
            plan.contains("recorded_at<"),
            "the cursor's page does not seek: {plan}"
        );
    }
}

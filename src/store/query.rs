//! The read path: one event by id, and keyset-paged queries in the four
//! supported orders.

use futures::TryStreamExt;
use sea_orm::sea_query::ExprTrait;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, Order, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, Select, Value,
};
use uuid::Uuid;

use super::sessions::RetryingReads;
use super::{PageCursor, ReadFloor, Store, StoreError, StoreResult, events_of, fetch_event, within_deadline};
use crate::entity::audit_event::EventFields;
use crate::entity::{audit_event, tenant_statement};
use crate::filter::{EventMatcher, TimeBounds};
use crate::tenant::TenantId;

/// Most index entries a time-range probe counts (see [`time_bounds`]).
pub const RANGE_PROBE_CAP: i64 = 1000;

/// Bytes reserved per event of a page before writing it (an event with a
/// few metadata keys takes 300-500).
const EVENT_BYTES_GUESS: usize = 384;

/// How much one page of `Query` may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    /// Most events.
    pub events: usize,
    /// Most bytes of [`EventPage::events`]; the first event goes in
    /// whatever its size, so paging always progresses.
    pub bytes: usize,
}

/// Where a page's events go as they are read, in whatever form the caller
/// serves them (the service writes protobuf, `wire::PageEvents`): the store
/// hands out rows and keeps to the budget, the sink measures them.
pub trait PageSink {
    /// An empty page that may hold `budget` bytes, `capacity` reserved.
    fn with_budget(budget: usize, capacity: usize) -> Self;
    /// Takes `event` unless that would take the page past its budget
    /// (never refusing the first); whether it took it.
    fn push(&mut self, event: &EventFields<'_>) -> bool;
    /// Events taken so far.
    fn count(&self) -> usize;
    /// Bytes taken so far.
    fn byte_len(&self) -> usize;
}

/// One page of `Query`.
#[derive(Debug, Default)]
pub struct EventPage<S> {
    /// The events in order.
    pub events: S,
    /// Where the next page starts: the last event's position, when more
    /// events match.
    pub next: Option<PageCursor>,
}

/// Order of a query's results; ties on `occurred_at` are broken by `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOrder {
    /// Newest first (the default).
    SeqDesc,
    /// Oldest first.
    SeqAsc,
    /// Latest `occurred_at` first.
    OccurredAtDesc,
    /// Earliest `occurred_at` first.
    OccurredAtAsc,
}

impl EventOrder {
    /// Every order, by its `order_by` spelling.
    pub const ALL: [EventOrder; 4] = [
        Self::SeqDesc,
        Self::SeqAsc,
        Self::OccurredAtDesc,
        Self::OccurredAtAsc,
    ];

    /// Parses an `order_by` value; empty means `seq desc`, a field without
    /// direction means ascending (AIP-132), and spacing and case are free.
    pub fn parse(order_by: &str) -> Option<Self> {
        let words: Vec<String> = order_by.split_whitespace().map(str::to_ascii_lowercase).collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        match words.as_slice() {
            [] | ["seq", "desc"] => Some(Self::SeqDesc),
            ["seq"] | ["seq", "asc"] => Some(Self::SeqAsc),
            ["occurred_at", "desc"] => Some(Self::OccurredAtDesc),
            ["occurred_at"] | ["occurred_at", "asc"] => Some(Self::OccurredAtAsc),
            _ => None,
        }
    }

    /// The canonical `order_by` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SeqDesc => "seq desc",
            Self::SeqAsc => "seq asc",
            Self::OccurredAtDesc => "occurred_at desc",
            Self::OccurredAtAsc => "occurred_at asc",
        }
    }

    fn direction(self) -> Order {
        match self {
            Self::SeqDesc | Self::OccurredAtDesc => Order::Desc,
            Self::SeqAsc | Self::OccurredAtAsc => Order::Asc,
        }
    }

    /// Whether this order is by `seq` alone.
    fn by_seq(self) -> bool {
        matches!(self, Self::SeqDesc | Self::SeqAsc)
    }

    /// Rows strictly after `cursor` in this order.
    fn after(self, cursor: PageCursor) -> Condition {
        use audit_event::Column::{OccurredAt, Seq};
        match self {
            Self::SeqDesc => Condition::all().add(Seq.lt(cursor.seq)),
            Self::SeqAsc => Condition::all().add(Seq.gt(cursor.seq)),
            Self::OccurredAtDesc => Condition::any()
                .add(OccurredAt.lt(cursor.occurred_at))
                .add(OccurredAt.eq(cursor.occurred_at).and(Seq.lt(cursor.seq))),
            Self::OccurredAtAsc => Condition::any()
                .add(OccurredAt.gt(cursor.occurred_at))
                .add(OccurredAt.eq(cursor.occurred_at).and(Seq.gt(cursor.seq))),
        }
    }
}

impl Store {
    /// The tenant's live event with this id; [`StoreError::NotFound`] when
    /// it has none (or it was erased).
    /// On a read replica, an id it does not know yet is looked up on the
    /// primary: a client may hold it from `Append`.
    pub async fn get(&self, tenant: &TenantId, id: Uuid) -> StoreResult<audit_event::Model> {
        self.routed(tenant, ReadFloor::Any, |store| async move {
            fetch_event(
                store.reader(),
                events_of(tenant).filter(audit_event::Column::Id.eq(id)),
            )
            .await?
            .ok_or_else(|| StoreError::event_not_found(id))
        })
        .await
    }

    /// A page of the tenant's live events `matcher` matches, in `order`,
    /// strictly after `after`, within `limits`, written into a sink `S`;
    /// within [`READ_DEADLINE`](super::READ_DEADLINE).
    ///
    /// Rows are read one at a time and the read stops where the page ends,
    /// so a page of large events holds its byte budget in memory, not
    /// `limits.events` rows.
    ///
    /// On a read replica, a page after `after` waits for the replica to
    /// have replayed `after.seq` (the client has seen that event) or reads
    /// the primary, so it never skips an event the client knows exists.
    pub async fn query_page<S: PageSink>(
        &self,
        tenant: &TenantId,
        matcher: &EventMatcher,
        order: EventOrder,
        after: Option<PageCursor>,
        limits: PageLimits,
    ) -> StoreResult<EventPage<S>> {
        let floor = after.map_or(ReadFloor::Any, |cursor| ReadFloor::Seq(cursor.seq));
        self.routed(tenant, floor, |store| async move {
            store.query_page_here(tenant, matcher, order, after, limits).await
        })
        .await
    }

    /// [`query_page`](Self::query_page) on this store's read pool.
    async fn query_page_here<S: PageSink>(
        &self,
        tenant: &TenantId,
        matcher: &EventMatcher,
        order: EventOrder,
        after: Option<PageCursor>,
        limits: PageLimits,
    ) -> StoreResult<EventPage<S>> {
        let db = self.reader();
        // SQLite's driver steps the statement on its own thread at most 50
        // rows (its row channel) ahead of the reader and stops when the
        // reader lets go, so one statement asks for the whole page.
        // PostgreSQL sends every row a statement asks for, and a result let
        // go half-read is read to its end before the connection serves
        // again: a page of 60 KB events cut after 68 of 1001 rows had the
        // other 933 (56 MB) produced, sent and discarded, which doubled
        // the time to page through them. There the first statement asks
        // for as many rows as the budget holds at 64 KiB each (64 of 4 MiB)
        // and the next ones for what is left at the size just seen.
        let first_rows = match db.get_database_backend() {
            DbBackend::Postgres => (limits.bytes / LARGE_EVENT_BYTES).max(1) as u64,
            _ => u64::MAX,
        };
        within_deadline(read_page(db, tenant, matcher, order, after, limits, first_rows)).await
    }

    /// Highest seq handed out to the tenant (0 when it has no events).
    pub async fn head_seq(&self, tenant: &TenantId) -> StoreResult<i64> {
        Ok(self.log_heads(tenant).await?.0)
    }
}

/// An event at the metadata limit (64 KiB), by which PostgreSQL's first
/// statement of a page is sized ([`Store::query_page`]).
const LARGE_EVENT_BYTES: usize = 64 * 1024;

/// Reads one page on `db` with statements of at most `first_rows` rows at
/// first, then of as many as the rest of the budget holds at the size of
/// the events just read (and a quarter more), each continuing after the
/// last event of the one before.
async fn read_page<S: PageSink>(
    db: &RetryingReads,
    tenant: &TenantId,
    matcher: &EventMatcher,
    order: EventOrder,
    after: Option<PageCursor>,
    limits: PageLimits,
    first_rows: u64,
) -> Result<EventPage<S>, DbErr> {
    let backend = ConnectionTrait::get_database_backend(db);
    let bounds = time_bounds(db, tenant, matcher, order).await?;
    let mut events = S::with_budget(limits.bytes, limits.events.saturating_mul(EVENT_BYTES_GUESS));
    let mut last = None;
    // The page's events and one more, which tells whether another page
    // follows.
    let mut wanted = limits.events as u64 + 1;
    let mut rows = first_rows.clamp(1, wanted);
    loop {
        let select = page_select(backend, tenant, matcher, bounds, order, last.or(after), rows);
        let mut stream = db.stream_rows(select.build(backend)).await?;
        let (mut read, bytes_before) = (0, events.byte_len());
        while let Some(row) = stream.try_next().await? {
            read += 1;
            let included = events.count() < limits.events && {
                let fields = audit_event::fields_of_row(&row)?;
                let written = events.push(&fields);
                if written {
                    last = Some(PageCursor {
                        seq: fields.seq,
                        occurred_at: fields.occurred_at.unwrap_or_default(),
                    });
                }
                written
            };
            if !included {
                // A matching event is left for the next page.
                return Ok(EventPage { events, next: last });
            }
        }
        if read < rows {
            return Ok(EventPage { events, next: None });
        }
        wanted -= read;
        let size = ((events.byte_len() - bytes_before) / usize::try_from(read).unwrap_or(usize::MAX)).max(1);
        let fit = u64::try_from(limits.bytes.saturating_sub(events.byte_len()) / size).unwrap_or(u64::MAX);
        rows = Ord::min(fit + fit / 4 + 1, wanted);
    }
}

/// The SELECT of one page as the Query path runs it: up to `limit` of the
/// tenant's live events `matcher` matches, in `order`, strictly after
/// `after`, its time bounds compiled as the probe on `db` decides
/// ([`time_bounds`]; a statement of its own on SQLite, nothing elsewhere).
/// The Query path reads a page with this one statement on SQLite, and on
/// PostgreSQL when it holds fewer than 64 events ([`Store::query_page`]).
#[cfg(feature = "bench")]
pub async fn page_query<C: ConnectionTrait>(
    db: &C,
    tenant: &TenantId,
    matcher: &EventMatcher,
    order: EventOrder,
    after: Option<PageCursor>,
    limit: u64,
) -> Result<Select<audit_event::Entity>, DbErr> {
    let bounds = time_bounds(db, tenant, matcher, order).await?;
    Ok(page_select(
        db.get_database_backend(),
        tenant,
        matcher,
        bounds,
        order,
        after,
        limit,
    ))
}

/// The SELECT of one page on `backend`: the tenant's live events `matcher`
/// matches (its time bounds compiled as `bounds`), in `order`, strictly
/// after `after`.
fn page_select(
    backend: DbBackend,
    tenant: &TenantId,
    matcher: &EventMatcher,
    bounds: TimeBounds,
    order: EventOrder,
    after: Option<PageCursor>,
    limit: u64,
) -> Select<audit_event::Entity> {
    let condition = matcher.condition_with(backend, bounds);
    let mut select = events_of(tenant).filter(condition);
    if let Some(cursor) = after {
        select = select.filter(order.after(cursor));
    }
    let direction = order.direction();
    if !order.by_seq() {
        select = select.order_by(audit_event::Column::OccurredAt, direction.clone());
    }
    select.order_by(audit_event::Column::Seq, direction).limit(limit)
}

/// How a page with a time range should reach its rows.
///
/// Without statistics (and with stable plans, which ignore bound values)
/// SQLite serves any `occurred_at` range from the `(tenant_id, occurred_at,
/// seq)` index, reading every event in the range and sorting them by
/// `seq`: for "the last day, newest first" on a busy tenant that is the
/// whole tenant (840 ms at 1M events) for a page the `seq` order finds in
/// its first fifty rows. So, for a page in `seq` order with a time bound on
/// SQLite, one statement weighs the two ways, through that index and the
/// primary key:
/// - the events in the range, counted up to [`RANGE_PROBE_CAP`]: what the
///   range index reads;
/// - the events beyond the range's far end in walking order (newer than
///   `end_time` for newest first, older than `start_time` for oldest
///   first), counted up to the same cap: what a walk in `seq` order passes
///   before it reaches the range when events are appended in about the
///   order they occur;
/// - whether at least half of the first [`HEAD_SAMPLE`] events in walking
///   order lie on the walk's side of the range's near end (not older than
///   `start_time` for newest first): if not, either the events were not
///   appended in the order they occurred (a bulk import of old events sits
///   at the head of a newest-first walk) and the count beyond says nothing
///   of what the walk would pass, or the walk leaves the range within the
///   sample and the index reads as few rows.
///
/// The walk wins when fewer events lie beyond the range than in it and the
/// head agrees. PostgreSQL weighs the same with its own statistics and gets
/// plain bounds.
async fn time_bounds<C: ConnectionTrait>(
    db: &C,
    tenant: &TenantId,
    matcher: &EventMatcher,
    order: EventOrder,
) -> Result<TimeBounds, DbErr> {
    let (start, end) = matcher.time_range();
    if db.get_database_backend() != DbBackend::Sqlite || !order.by_seq() || (start, end) == (None, None) {
        return Ok(TimeBounds::Indexed);
    }
    // The far end of the range in walking order, and its near end.
    let (far, near) = match order {
        EventOrder::SeqAsc => (
            start.map(|start| (None, Some(start))),
            end.map(|end| (false, end)),
        ),
        _ => (end.map(|end| (Some(end), None)), start.map(|start| (true, start))),
    };
    // Three columns always: no far end leaves nothing beyond (0), no near
    // end nothing the head could disagree with (1).
    let mut values = Vec::new();
    let within = capped_count(&mut values, (start, end));
    let beyond = match far {
        Some(range) => capped_count(&mut values, range),
        None => "0".to_owned(),
    };
    let head = match near {
        Some((newest_first, bound)) => head_agrees(&mut values, newest_first, bound),
        None => "1".to_owned(),
    };
    let sql = format!("SELECT {within}, {beyond}, {head}");
    let row = db
        .query_one_raw(tenant_statement(DbBackend::Sqlite, tenant, &sql, values))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("time-range probe".into()))?;
    let within: i64 = row.try_get_by_index(0)?;
    let beyond: i64 = row.try_get_by_index(1)?;
    let head_agrees = row.try_get_by_index::<Option<bool>>(2)?.unwrap_or(false);
    Ok(if beyond < within && head_agrees {
        TimeBounds::Filtered
    } else {
        TimeBounds::Indexed
    })
}

/// Events at the head of a walk that the time-range probe looks at.
pub const HEAD_SAMPLE: i64 = 64;

/// The placeholder of `value`, bound after the tenant (`$1`) and the
/// `values` before it. Numbered, as sqlx's SQLite driver binds an unnumbered
/// `?` by its count of unnumbered ones, whatever `$1` took.
fn parameter(values: &mut Vec<Value>, value: impl Into<Value>) -> String {
    values.push(value.into());
    format!("${}", values.len() + 1)
}

/// ` AND occurred_at >= $n AND occurred_at < $m`, for the bounds set.
fn time_terms(values: &mut Vec<Value>, (from, to): (Option<i64>, Option<i64>)) -> String {
    let mut sql = String::new();
    if let Some(from) = from {
        sql.push_str(&format!(" AND occurred_at >= {}", parameter(values, from)));
    }
    if let Some(to) = to {
        sql.push_str(&format!(" AND occurred_at < {}", parameter(values, to)));
    }
    sql
}

/// A subquery counting the tenant's (`$1`) events (erased ones too) with `from <=
/// occurred_at < to`, stopped at [`RANGE_PROBE_CAP`]: a walk over at most
/// that many entries of the `occurred_at` index.
fn capped_count(values: &mut Vec<Value>, range: (Option<i64>, Option<i64>)) -> String {
    let terms = time_terms(values, range);
    let cap = parameter(values, RANGE_PROBE_CAP);
    format!("(SELECT COUNT(*) FROM (SELECT 1 FROM audit_events WHERE tenant_id = $1{terms} LIMIT {cap}))")
}

/// A subquery: whether at least half of the tenant's (`$1`) first [`HEAD_SAMPLE`]
/// events in `seq` order (newest or oldest first) occurred on the walk's
/// side of `bound` (at or after it newest first, before it oldest first);
/// NULL when the tenant has no events.
fn head_agrees(values: &mut Vec<Value>, newest_first: bool, bound: i64) -> String {
    let (side, direction) = if newest_first {
        (">=", "DESC")
    } else {
        ("<", "ASC")
    };
    let bound = parameter(values, bound);
    let sample = parameter(values, HEAD_SAMPLE);
    format!(
        "(SELECT SUM(occurred_at {side} {bound}) * 2 >= COUNT(*) FROM (SELECT occurred_at FROM audit_events \
         WHERE tenant_id = $1 ORDER BY seq {direction} LIMIT {sample}))"
    )
}

#[cfg(test)]
mod tests {
    use sea_orm::QueryTrait;

    use super::*;
    use crate::config::DatabaseConfig;
    use crate::convert::micros_to_timestamp;
    use crate::proto::EventFilter;
    use crate::store::NewEvent;
    use crate::store::fetch_events;
    use crate::wire::PageEvents;

    const BASE: i64 = 1_700_000_000_000_000;

    /// A SQLite store whose tenant `acme` holds `events` events, event `i`
    /// (seq `i + 1`) occurring at `BASE + i` and done by actor `i % 10`.
    async fn store_with(events: i64) -> (tempfile::TempDir, Store, TenantId) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
        let store = Store::connect(&DatabaseConfig::new(url)).await.unwrap();
        let tenant = TenantId::parse("acme", "tenant").unwrap();
        append_at(&store, &tenant, 0..events).await;
        (dir, store, tenant)
    }

    /// Appends one event occurring at `BASE + i` for each `i`, in order.
    async fn append_at(store: &Store, tenant: &TenantId, offsets: std::ops::Range<i64>) {
        let all: Vec<i64> = offsets.collect();
        for chunk in all.chunks(1000) {
            let batch = chunk
                .iter()
                .map(|i| NewEvent {
                    occurred_at: Some(BASE + i),
                    actor_id: format!("actor-{}", i.rem_euclid(10)),
                    action: "doc.read".into(),
                    ..NewEvent::default()
                })
                .collect();
            store.append(tenant, batch).await.unwrap();
        }
    }

    fn matcher(start: Option<i64>, end: Option<i64>, actor: Option<&str>) -> EventMatcher {
        let filter = EventFilter {
            start_time: start.map(micros_to_timestamp),
            end_time: end.map(micros_to_timestamp),
            actor_ids: actor.into_iter().map(str::to_owned).collect(),
            ..EventFilter::default()
        };
        EventMatcher::new(&filter, "filter").unwrap()
    }

    /// The indexes SQLite's plan for the page uses, and the page's seqs.
    async fn page(
        store: &Store,
        tenant: &TenantId,
        matcher: &EventMatcher,
        bounds: TimeBounds,
        order: EventOrder,
    ) -> (String, Vec<i64>) {
        let db = store.connection();
        let select = page_select(DbBackend::Sqlite, tenant, matcher, bounds, order, None, 5);
        let statement = select.build(DbBackend::Sqlite);
        let explain = sea_orm::Statement::from_sql_and_values(
            DbBackend::Sqlite,
            format!("EXPLAIN QUERY PLAN {}", statement.sql),
            statement.values.unwrap().0,
        );
        let plan: Vec<String> = db
            .query_all_raw(explain)
            .await
            .unwrap()
            .iter()
            .map(|row| row.try_get_by_index::<String>(3).unwrap())
            .collect();
        let seqs = fetch_events(db, select)
            .await
            .unwrap()
            .iter()
            .map(|event| event.seq)
            .collect();
        (plan.join("; "), seqs)
    }

    #[tokio::test]
    async fn a_time_range_is_walked_in_seq_order_when_fewer_events_lie_beyond_it() {
        let (_dir, store, tenant) = store_with(300).await;
        let db = store.connection();
        let cases = [
            // (start, end, order, expected): the last 200 events, newest
            // first: nothing lies beyond the range, the walk finds them first.
            (Some(BASE + 100), None, EventOrder::SeqDesc, TimeBounds::Filtered),
            (
                Some(BASE + 100),
                Some(BASE + 290),
                EventOrder::SeqDesc,
                TimeBounds::Filtered,
            ),
            // More events beyond than the head sample holds, still fewer
            // than in the range: the walk passes them, then the range.
            (
                Some(BASE),
                Some(BASE + 200),
                EventOrder::SeqDesc,
                TimeBounds::Filtered,
            ),
            // Five old events, newest first: a walk would pass 295 others.
            (
                Some(BASE),
                Some(BASE + 5),
                EventOrder::SeqDesc,
                TimeBounds::Indexed,
            ),
            (None, Some(BASE + 5), EventOrder::SeqDesc, TimeBounds::Indexed),
            // The first hundred oldest first: nothing lies before them.
            (
                Some(BASE),
                Some(BASE + 100),
                EventOrder::SeqAsc,
                TimeBounds::Filtered,
            ),
            // The first five: the head sample is mostly past them, so the
            // probe keeps the index, which reads just those five.
            (
                Some(BASE),
                Some(BASE + 5),
                EventOrder::SeqAsc,
                TimeBounds::Indexed,
            ),
            (Some(BASE + 250), None, EventOrder::SeqAsc, TimeBounds::Indexed),
            // An empty range: the index finds nothing at once.
            (Some(BASE + 1000), None, EventOrder::SeqDesc, TimeBounds::Indexed),
            // Ordered by occurred_at, the range index is the order itself.
            (
                Some(BASE + 100),
                None,
                EventOrder::OccurredAtDesc,
                TimeBounds::Indexed,
            ),
            (None, None, EventOrder::SeqDesc, TimeBounds::Indexed),
        ];
        for (start, end, order, expected) in cases {
            let matcher = matcher(start, end, None);
            let bounds = time_bounds(db, &tenant, &matcher, order).await.unwrap();
            assert_eq!(bounds, expected, "{start:?}..{end:?} {order:?}");
        }
    }

    #[tokio::test]
    async fn filtered_bounds_keep_the_range_index_out_of_the_plan_and_return_the_same_page() {
        let (_dir, store, tenant) = store_with(300).await;
        for (start, end, actor) in [
            (Some(BASE + 100), None, None),
            (Some(BASE), Some(BASE + 290), None),
            (Some(BASE), Some(BASE + 290), Some("actor-3")),
            (Some(BASE + 7), Some(BASE + 9), None),
        ] {
            let matcher = matcher(start, end, actor);
            for order in EventOrder::ALL.into_iter().filter(|o| o.by_seq()) {
                let (indexed_plan, indexed) =
                    page(&store, &tenant, &matcher, TimeBounds::Indexed, order).await;
                let (filtered_plan, filtered) =
                    page(&store, &tenant, &matcher, TimeBounds::Filtered, order).await;
                assert!(
                    indexed_plan.contains("ix_audit_events_occurred"),
                    "{indexed_plan}"
                );
                assert!(
                    !filtered_plan.contains("ix_audit_events_occurred"),
                    "{filtered_plan}"
                );
                assert!(!filtered_plan.contains("TEMP B-TREE"), "no sort: {filtered_plan}");
                assert_eq!(filtered, indexed, "{start:?}..{end:?} {actor:?} {order:?}");
                assert!(!indexed.is_empty());
            }
        }
    }

    #[tokio::test]
    async fn a_bulk_import_of_old_events_at_the_head_keeps_the_range_index() {
        // 300 events as they happen, then 300 that occurred long before,
        // imported afterwards: the newest seqs hold the oldest times.
        let (_dir, store, tenant) = store_with(300).await;
        append_at(&store, &tenant, -100_000..-99_700).await;
        let db = store.connection();
        // The last 200 events as they happened, newest first: nothing lies
        // beyond them, but a walk from the head passes the whole import.
        let recent = matcher(Some(BASE + 100), None, None);
        let bounds = time_bounds(db, &tenant, &recent, EventOrder::SeqDesc)
            .await
            .unwrap();
        assert_eq!(bounds, TimeBounds::Indexed);
        // Oldest first the walk starts among the events as they happened.
        let bounds = time_bounds(db, &tenant, &recent, EventOrder::SeqAsc)
            .await
            .unwrap();
        assert_eq!(
            bounds,
            TimeBounds::Indexed,
            "nothing of the range among the oldest seqs either"
        );
        // The early events oldest first sit at the head of that walk, but
        // the import counts as lying before them (by time): the range
        // index, the safe side of the misjudgement.
        let early = matcher(Some(BASE), Some(BASE + 250), None);
        let bounds = time_bounds(db, &tenant, &early, EventOrder::SeqAsc)
            .await
            .unwrap();
        assert_eq!(bounds, TimeBounds::Indexed, "300 before against 250 within");
    }

    #[tokio::test]
    async fn the_probe_stops_counting_at_its_cap() {
        let cap = RANGE_PROBE_CAP;
        let (_dir, store, tenant) = store_with(2 * cap + 500).await;
        let db = store.connection();
        // Both sides hold more than the cap: they tie and the range index,
        // bounded by the range the caller asked for, is used.
        let matcher = matcher(Some(BASE), Some(BASE + cap + 200), None);
        let bounds = time_bounds(db, &tenant, &matcher, EventOrder::SeqDesc)
            .await
            .unwrap();
        assert_eq!(bounds, TimeBounds::Indexed);
        // A range holding more than the cap with 100 newer events beyond
        // it, fewer than the head sample: the walk.
        let matcher = self::matcher(Some(BASE), Some(BASE + 2 * cap + 400), None);
        let bounds = time_bounds(db, &tenant, &matcher, EventOrder::SeqDesc)
            .await
            .unwrap();
        assert_eq!(bounds, TimeBounds::Filtered);
    }

    /// The events of a written page.
    fn events_of_page(page: &EventPage<PageEvents>) -> Vec<crate::proto::AuditEvent> {
        use prost::Message as _;
        let response = crate::wire::EncodedQueryResponse {
            events: page.events.as_bytes().to_vec(),
            next_page_token: String::new(),
        };
        crate::proto::QueryResponse::decode(&response.encode_to_vec()[..])
            .unwrap()
            .events
    }

    /// A store whose tenant `acme` holds 20 events of about 1 KB, event `i`
    /// (seq `i + 1`) occurring at `BASE + i`; and the bytes one of them
    /// takes on a page.
    async fn store_with_kilobyte_events() -> (tempfile::TempDir, Store, TenantId, usize) {
        let (dir, store, tenant) = store_with(0).await;
        let batch = (0..20)
            .map(|i| NewEvent {
                occurred_at: Some(BASE + i),
                actor_id: "writer".into(),
                action: "doc.write".into(),
                metadata: Some(serde_json::json!({"i": i, "pad": "x".repeat(1000)})),
                ..NewEvent::default()
            })
            .collect();
        store.append(&tenant, batch).await.unwrap();
        let one_event = PageLimits {
            events: 1,
            bytes: usize::MAX,
        };
        let first = store
            .query_page::<PageEvents>(
                &tenant,
                &matcher(None, None, None),
                EventOrder::SeqAsc,
                None,
                one_event,
            )
            .await
            .unwrap();
        let size = first.events.byte_len();
        (dir, store, tenant, size)
    }

    #[tokio::test]
    async fn a_page_cut_by_its_byte_budget_continues_right_after_its_last_event() {
        let (_dir, store, tenant, size) = store_with_kilobyte_events().await;
        let all = matcher(None, None, None);
        let ascending: Vec<u64> = (1..=20).collect();
        let descending: Vec<u64> = (1..=20).rev().collect();
        // Events differ in size by the digits of their seq and index: the
        // first budget ends in the middle of a page's fourth event, the
        // second in the middle of its first.
        for (budget, per_page) in [(3 * size + size / 2, 3), (size / 2, 1)] {
            let limits = PageLimits {
                events: 10,
                bytes: budget,
            };
            // One statement for the page (SQLite), or statements of one,
            // two or seven rows at first (as PostgreSQL reads a page).
            for first_rows in [u64::MAX, 1, 2, 7] {
                for order in EventOrder::ALL {
                    let context = format!("{order:?}, budget {budget}, statements of {first_rows}");
                    let mut after = None;
                    let mut seen = Vec::new();
                    for _ in 0..=20 {
                        let page = read_page::<PageEvents>(
                            store.reader(),
                            &tenant,
                            &all,
                            order,
                            after,
                            limits,
                            first_rows,
                        )
                        .await
                        .unwrap();
                        let events = events_of_page(&page);
                        let left = 20 - seen.len();
                        assert_eq!(events.len(), left.min(per_page), "{context}");
                        assert!(page.events.byte_len() <= budget.max(size + 8), "{context}");
                        seen.extend(events.iter().map(|e| e.seq));
                        let Some(cursor) = page.next else { break };
                        // The token continues exactly after the page's last event.
                        let last = events.last().unwrap();
                        assert_eq!(cursor.seq, i64::try_from(last.seq).unwrap(), "{context}");
                        assert_eq!(
                            Some(micros_to_timestamp(cursor.occurred_at)),
                            last.occurred_at,
                            "{context}"
                        );
                        after = Some(cursor);
                    }
                    let expected = match order {
                        EventOrder::SeqAsc | EventOrder::OccurredAtAsc => &ascending,
                        EventOrder::SeqDesc | EventOrder::OccurredAtDesc => &descending,
                    };
                    assert_eq!(&seen, expected, "{context}");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_page_read_in_several_statements_is_the_page_read_in_one() {
        let (_dir, store, tenant, size) = store_with_kilobyte_events().await;
        let filters = [
            matcher(None, None, None),
            // A time range SQLite's probe walks in seq order, and one it
            // reads through the range index.
            matcher(Some(BASE + 2), None, None),
            matcher(Some(BASE + 3), Some(BASE + 6), None),
        ];
        for (budget, events) in [
            (usize::MAX, 10),
            (usize::MAX, 20),
            (5 * size, 10),
            (12 * size, 19),
        ] {
            let limits = PageLimits {
                events,
                bytes: budget,
            };
            for matcher in &filters {
                for order in EventOrder::ALL {
                    for after in [
                        None,
                        Some(PageCursor {
                            seq: 15,
                            occurred_at: BASE + 14,
                        }),
                    ] {
                        let whole = read_page::<PageEvents>(
                            store.reader(),
                            &tenant,
                            matcher,
                            order,
                            after,
                            limits,
                            u64::MAX,
                        )
                        .await
                        .unwrap();
                        for first_rows in [1, 3, 8] {
                            let split = read_page::<PageEvents>(
                                store.reader(),
                                &tenant,
                                matcher,
                                order,
                                after,
                                limits,
                                first_rows,
                            )
                            .await
                            .unwrap();
                            assert_eq!(
                                split.events.as_bytes(),
                                whole.events.as_bytes(),
                                "{order:?} {limits:?} {first_rows}"
                            );
                            assert_eq!(split.next, whole.next, "{order:?} {limits:?} {first_rows}");
                        }
                    }
                }
            }
        }
        // A budget that holds every event leaves the count to end the page.
        let roomy = PageLimits {
            events: 10,
            bytes: 100 * size,
        };
        let all = matcher(None, None, None);
        let page = store
            .query_page::<PageEvents>(&tenant, &all, EventOrder::SeqDesc, None, roomy)
            .await
            .unwrap();
        assert_eq!(events_of_page(&page).len(), 10);
        assert_eq!(page.next.map(|c| c.seq), Some(11));
        let page = store
            .query_page::<PageEvents>(&tenant, &all, EventOrder::SeqDesc, page.next, roomy)
            .await
            .unwrap();
        assert_eq!(events_of_page(&page).len(), 10);
        assert_eq!(page.next, None, "the last page ends the query");
    }

    #[test]
    fn order_by_accepts_the_four_orders_and_their_spellings() {
        for order in EventOrder::ALL {
            assert_eq!(EventOrder::parse(order.as_str()), Some(order));
        }
        assert_eq!(EventOrder::parse(""), Some(EventOrder::SeqDesc));
        assert_eq!(
            EventOrder::parse("  OCCURRED_AT   Desc "),
            Some(EventOrder::OccurredAtDesc)
        );
        assert_eq!(EventOrder::parse("occurred_at"), Some(EventOrder::OccurredAtAsc));
        for bad in ["seq sideways", "action", "seq desc, occurred_at", "desc"] {
            assert_eq!(EventOrder::parse(bad), None, "{bad}");
        }
    }
}

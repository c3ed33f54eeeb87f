//! Counting in the database: totals, groups and time buckets for `Stats`,
//! and the distinct values `GetFilterMetadata` reports. `Stats` sums the
//! rollups ([`event_rollup`]) when they can answer, and otherwise counts
//! the live events ([`events_of`]) in seq chunks within the read deadline;
//! either way one read snapshot per call, and never rows loaded into
//! memory (only counts per group and bucket).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use sea_orm::sea_query::{Alias, Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbErr, Order, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, Select,
};

use super::{
    READ_DEADLINE, ReadFloor, Store, StoreError, StoreResult, TenantScope, events_in, events_of,
    within_deadline,
};
use crate::entity::audit_event::{self, Column};
use crate::entity::event_rollup::{self, Column as RollupColumn};
use crate::entity::tenant_statement;
use crate::filter::EventMatcher;
use crate::tenant::{PartnerId, TenantId};

/// A field `Stats` can group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupField {
    /// `action`
    Action,
    /// `actor.id`
    ActorId,
    /// `actor.type` (an `ActorType` number)
    ActorType,
    /// `resource.type`
    ResourceType,
    /// `outcome` (an `Outcome` number)
    Outcome,
    /// `source`
    Source,
    /// `tenant_id`: one group in a tenant's own call, a group per tenant
    /// across tenants.
    TenantId,
}

impl GroupField {
    /// Every groupable field.
    pub const ALL: [GroupField; 7] = [
        Self::Action,
        Self::ActorId,
        Self::ActorType,
        Self::ResourceType,
        Self::Outcome,
        Self::Source,
        Self::TenantId,
    ];

    /// The dotted name used in `group_by`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Action => "action",
            Self::ActorId => "actor.id",
            Self::ActorType => "actor.type",
            Self::ResourceType => "resource.type",
            Self::Outcome => "outcome",
            Self::Source => "source",
            Self::TenantId => "tenant_id",
        }
    }

    /// The field with this name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    fn column(self) -> Column {
        match self {
            Self::Action => Column::Action,
            Self::ActorId => Column::ActorId,
            Self::ActorType => Column::ActorType,
            Self::ResourceType => Column::ResourceType,
            Self::Outcome => Column::Outcome,
            Self::Source => Column::Source,
            Self::TenantId => Column::TenantId,
        }
    }

    fn is_enum(self) -> bool {
        matches!(self, Self::ActorType | Self::Outcome)
    }
}

/// One value of a group's key, as stored.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupValue {
    /// A text column's value.
    Text(String),
    /// An enum column's number.
    Enum(i32),
}

/// The count of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCount {
    /// One value per `group_by` field, in that order.
    pub keys: Vec<GroupValue>,
    /// Matching events in the group.
    pub count: u64,
}

/// Time buckets over `occurred_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSpec {
    /// Bucket width in microseconds (> 0); buckets start at multiples of it
    /// since the unix epoch.
    pub width: i64,
    /// Inclusive start of the series (unix micros), when the filter has one.
    pub from: Option<i64>,
    /// Exclusive end of the series (unix micros), when the filter has one.
    pub to: Option<i64>,
    /// Most buckets the series may hold.
    pub max_buckets: u64,
}

impl BucketSpec {
    /// Start of the bucket holding `micros` (floor division, also before 1970).
    pub fn bucket_of(&self, micros: i64) -> i64 {
        micros - micros.rem_euclid(self.width)
    }
}

/// The count of one time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketCount {
    /// Start of the bucket, unix microseconds.
    pub start: i64,
    /// Matching events that occurred within it.
    pub count: u64,
}

/// What to count.
#[derive(Debug, Clone)]
pub struct StatsQuery {
    /// Fields to group by (none: no groups).
    pub group_by: Vec<GroupField>,
    /// Most groups returned, largest first.
    pub limit: u64,
    /// Time buckets, when asked for.
    pub bucket: Option<BucketSpec>,
}

/// Counts of the matching events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// All matching events.
    pub total: u64,
    /// Largest groups first; ties ordered by their keys.
    pub groups: Vec<GroupCount>,
    /// Oldest bucket first, empty buckets included.
    pub buckets: Vec<BucketCount>,
    /// What answered, and for a scan how far it got.
    pub answered_by: StatsSource,
}

/// This tenant's distinct values of the fields filters most often name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterValues {
    /// Distinct actions, sorted.
    pub actions: Vec<String>,
    /// Distinct resource types, sorted.
    pub resource_types: Vec<String>,
    /// Distinct sources, sorted.
    pub sources: Vec<String>,
}

const COUNT_ALIAS: &str = "event_count";
const BUCKET_ALIAS: &str = "bucket_start";
/// The sum of the rollup rows' counts, as a `BIGINT` on both backends
/// (PostgreSQL's `SUM(bigint)` is a `numeric`).
const ROLLUP_SUM: &str = "CAST(SUM(\"event_count\") AS BIGINT)";

/// How far a scan answering `Stats` goes before it answers with what it
/// has counted (`partial`) rather than fail at the read deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLimits {
    /// A chunk is started only while the time spent so far plus twice the
    /// slowest chunk stays within this; the first chunk always runs.
    pub budget: Duration,
    /// Seqs the first chunk covers; each chunk quicker than
    /// [`QUICK_CHUNK`] doubles the next.
    pub first_chunk: i64,
}

impl Default for ScanLimits {
    /// Three quarters of [`READ_DEADLINE`](super::READ_DEADLINE), leaving
    /// the rest to the chunk in flight and the answer; chunks from 50 000
    /// seqs.
    fn default() -> Self {
        Self {
            budget: READ_DEADLINE.mul_f64(0.75),
            first_chunk: 50_000,
        }
    }
}

/// A chunk quicker than this doubles the next one's seqs.
pub const QUICK_CHUNK: Duration = Duration::from_millis(250);

/// Most seqs one scan chunk covers.
const MAX_CHUNK: i64 = 4_000_000;

/// What answered a `Stats` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsSource {
    /// The rollups: exact, over every live event.
    Rollup,
    /// A scan of the events in one snapshot, in seq order.
    Scan {
        /// True when the scan stopped at the deadline before the end: the
        /// counts cover the matching live events with `seq <=
        /// scanned_through` only.
        partial: bool,
        /// The highest seq the counts cover: the snapshot's last seq when
        /// the scan is complete.
        scanned_through: i64,
    },
}

impl Default for StatsSource {
    fn default() -> Self {
        Self::Scan {
            partial: false,
            scanned_through: 0,
        }
    }
}

impl GroupField {
    fn rollup_column(self) -> Option<RollupColumn> {
        match self {
            Self::Action => Some(RollupColumn::Action),
            Self::ActorId => None,
            Self::ActorType => Some(RollupColumn::ActorType),
            Self::ResourceType => Some(RollupColumn::ResourceType),
            Self::Outcome => Some(RollupColumn::Outcome),
            Self::Source => Some(RollupColumn::Source),
            Self::TenantId => Some(RollupColumn::TenantId),
        }
    }
}

impl Store {
    /// Counts the tenant's live events `matcher` selects. Answered from the
    /// rollups when the filter is expressible on them
    /// ([`EventMatcher::rollup_condition`]), `group_by` has no `actor.id`
    /// and the bucket is whole hours; otherwise by
    /// [`stats_by_scan`](Self::stats_by_scan). The answer says which.
    /// [`StoreError::TooManyBuckets`] when the series would exceed its
    /// `max_buckets`.
    /// Runs on the read replica when there is one.
    pub async fn stats(
        &self,
        tenant: &TenantId,
        matcher: &EventMatcher,
        query: &StatsQuery,
    ) -> StoreResult<Stats> {
        self.routed(tenant, ReadFloor::Any, |store| async move {
            match rollup_plan(matcher, query) {
                Some(condition) => {
                    let rows = || event_rollup::Entity::of_tenant(tenant).filter(condition.clone());
                    store.stats_from_rollups(rows, query).await
                }
                None => {
                    store
                        .stats_by_scan(tenant, matcher.condition(store.backend()), query)
                        .await
                }
            }
        })
        .await
    }

    /// Counts the live events `matcher` selects of the tenants a platform
    /// credential limited to `partner` (or not) reaches: from the rollups
    /// when [`stats`](Self::stats) would be, otherwise by one scan of the
    /// matching events (not chunked: seqs of different tenants do not
    /// line up), within [`READ_DEADLINE`](super::READ_DEADLINE).
    pub async fn stats_across(
        &self,
        partner: Option<&PartnerId>,
        matcher: &EventMatcher,
        query: &StatsQuery,
    ) -> StoreResult<Stats> {
        if let Some(condition) = rollup_plan(matcher, query) {
            let rows = || event_rollup::Entity::of_registered_tenants(partner).filter(condition.clone());
            return self.stats_from_rollups(rows, query).await;
        }
        let scope = TenantScope::Platform {
            partner: partner.cloned(),
        };
        let condition = matcher.condition(self.backend());
        let counted = within_deadline(async {
            let txn = self.begin_read().await?;
            let counted = self
                .count_chunk(&txn, || events_in(&scope).filter(condition.clone()), query)
                .await?;
            txn.commit().await?;
            Ok::<_, DbErr>(counted)
        })
        .await?;
        counted.into_stats(
            query,
            StatsSource::Scan {
                partial: false,
                scanned_through: 0,
            },
        )
    }

    async fn stats_from_rollups(
        &self,
        rows: impl Fn() -> Select<event_rollup::Entity>,
        query: &StatsQuery,
    ) -> StoreResult<Stats> {
        let backend = self.backend();
        let (total, groups, non_empty) = within_deadline(async {
            let txn = self.begin_read().await?;
            let total = rows()
                .select_only()
                .column_as(Expr::cust(ROLLUP_SUM), COUNT_ALIAS)
                .into_tuple::<Option<i64>>()
                .one(&txn)
                .await?
                .flatten()
                .unwrap_or_default();
            let groups = if query.group_by.is_empty() {
                Vec::new()
            } else {
                let mut select = rows().select_only();
                for field in &query.group_by {
                    if let Some(column) = field.rollup_column() {
                        select = select.column(column).group_by(column);
                    }
                }
                let select = select
                    .column_as(Expr::cust(ROLLUP_SUM), COUNT_ALIAS)
                    .having(Expr::cust(ROLLUP_SUM).gt(0));
                group_rows(&txn, query, select.build(backend)).await?
            };
            let buckets = match &query.bucket {
                Some(spec) => {
                    let select = rows()
                        .select_only()
                        .column_as(
                            bucket_start(Expr::col(RollupColumn::HourStart), spec),
                            BUCKET_ALIAS,
                        )
                        .column_as(Expr::cust(ROLLUP_SUM), COUNT_ALIAS)
                        .group_by(Expr::col(Alias::new(BUCKET_ALIAS)))
                        .having(Expr::cust(ROLLUP_SUM).gt(0))
                        .order_by(Expr::col(Alias::new(BUCKET_ALIAS)), Order::Asc)
                        .limit(spec.max_buckets.saturating_add(1));
                    bucket_rows(&txn, select.build(backend)).await?
                }
                None => Vec::new(),
            };
            txn.commit().await?;
            Ok::<_, DbErr>((total, groups, buckets))
        })
        .await?;
        Ok(Stats {
            total: u64::try_from(total).unwrap_or_default(),
            groups: largest(groups, query.limit),
            buckets: match &query.bucket {
                Some(spec) => series(spec, &non_empty)?,
                None => Vec::new(),
            },
            answered_by: StatsSource::Rollup,
        })
    }

    /// Counts the tenant's live events matching `condition` by scanning
    /// them, in one snapshot, in chunks of seqs. Before each chunk after
    /// the first it checks the time left ([`ScanLimits`]); when the next
    /// chunk may not finish in it, or a chunk does not finish within
    /// [`READ_DEADLINE`](super::READ_DEADLINE), it answers with the chunks
    /// counted so far, `partial`, naming the seq they reach. Never a
    /// silent truncation: a complete answer covers the whole snapshot.
    pub async fn stats_by_scan(
        &self,
        tenant: &TenantId,
        condition: Condition,
        query: &StatsQuery,
    ) -> StoreResult<Stats> {
        let started = Instant::now();
        let hard_deadline = started + READ_DEADLINE;
        let soft_deadline = started + self.stats_scan.budget;
        let timed_out = || StoreError::ReadTimedOut {
            seconds: READ_DEADLINE.as_secs(),
        };
        let txn = in_time(hard_deadline, self.begin_read())
            .await
            .map_err(|_| timed_out())??;
        let last_seq = in_time(
            hard_deadline,
            audit_event::Entity::of_tenant(tenant)
                .select_only()
                .column_as(Column::Seq.max(), "last_seq")
                .into_tuple::<Option<i64>>()
                .one(&txn),
        )
        .await
        .map_err(|_| timed_out())??
        .flatten()
        .unwrap_or_default();

        let mut counted = ScanCounts::default();
        let mut through = 0i64;
        let mut width = Ord::max(self.stats_scan.first_chunk, 1);
        let mut slowest = Duration::ZERO;
        let mut partial = false;
        // A chunk stopped mid-statement at the deadline.
        let mut interrupted = false;
        while through < last_seq {
            let chunk_started = Instant::now();
            if through > 0 && chunk_started + slowest * 2 > soft_deadline {
                partial = true;
                break;
            }
            let upto = Ord::min(through.saturating_add(width), last_seq);
            let in_chunk = condition
                .clone()
                .add(Column::Seq.gt(through))
                .add(Column::Seq.lte(upto));
            let events = || events_of(tenant).filter(in_chunk.clone());
            match in_time(hard_deadline, self.count_chunk(&txn, events, query)).await {
                Ok(chunk) => counted.add(chunk?),
                Err(_) => {
                    partial = true;
                    interrupted = true;
                    break;
                }
            }
            through = upto;
            let took = chunk_started.elapsed();
            slowest = slowest.max(took);
            if took < QUICK_CHUNK {
                width = Ord::min(width.saturating_mul(2), MAX_CHUNK);
            }
        }
        // A statement stopped mid-way leaves the transaction unusable:
        // dropping it rolls it back.
        if !interrupted {
            txn.commit().await?;
        }
        counted.into_stats(
            query,
            StatsSource::Scan {
                partial,
                scanned_through: through,
            },
        )
    }

    /// The counts of one chunk: every group and every non-empty bucket (at
    /// most `max_buckets + 1`: one more tells the series is too long).
    async fn count_chunk(
        &self,
        txn: &DatabaseTransaction,
        events: impl Fn() -> Select<audit_event::Entity>,
        query: &StatsQuery,
    ) -> Result<ScanCounts, DbErr> {
        let backend = self.backend();
        let total = events().count(txn).await?;
        let mut counts = ScanCounts {
            total,
            ..ScanCounts::default()
        };
        if total == 0 {
            return Ok(counts);
        }
        if !query.group_by.is_empty() {
            let mut select = events().select_only();
            for field in &query.group_by {
                select = select.column(field.column()).group_by(field.column());
            }
            let select = select.column_as(Expr::cust("COUNT(*)"), COUNT_ALIAS);
            for group in group_rows(txn, query, select.build(backend)).await? {
                counts.groups.insert(group.keys, group.count);
            }
        }
        if let Some(spec) = &query.bucket {
            let select = events()
                .select_only()
                .column_as(bucket_start(Expr::col(Column::OccurredAt), spec), BUCKET_ALIAS)
                .column_as(Expr::cust("COUNT(*)"), COUNT_ALIAS)
                .group_by(Expr::col(Alias::new(BUCKET_ALIAS)))
                .order_by(Expr::col(Alias::new(BUCKET_ALIAS)), Order::Asc)
                .limit(spec.max_buckets.saturating_add(1));
            for bucket in bucket_rows(txn, select.build(backend)).await? {
                counts.buckets.insert(bucket.start, bucket.count);
            }
        }
        Ok(counts)
    }

    /// The tenant's distinct actions, resource types and sources (empty
    /// values omitted), sorted, at most `limit` of each: those of its live
    /// events, read from the rollups (whose rows each count at least one
    /// live event), one index step per value. Runs on the read replica
    /// when there is one.
    pub async fn filter_values(&self, tenant: &TenantId, limit: u64) -> StoreResult<FilterValues> {
        self.routed(tenant, ReadFloor::Any, |store| async move {
            store.filter_values_here(tenant, limit).await
        })
        .await
    }

    /// [`filter_values`](Self::filter_values) on this store's read pool.
    async fn filter_values_here(&self, tenant: &TenantId, limit: u64) -> StoreResult<FilterValues> {
        within_deadline(async {
            let txn = self.begin_read().await?;
            let values = FilterValues {
                actions: distinct(&txn, tenant, "action", limit).await?,
                resource_types: distinct(&txn, tenant, "resource_type", limit).await?,
                sources: distinct(&txn, tenant, "source", limit).await?,
            };
            txn.commit().await?;
            Ok::<_, DbErr>(values)
        })
        .await
    }
}

impl Store {
    /// The distinct actions, resource types and sources (empty values
    /// omitted) of the tenants a platform credential limited to `partner`
    /// (or not) reaches, sorted, at most `limit` of each, from the rollups.
    pub async fn filter_values_across(
        &self,
        partner: Option<&PartnerId>,
        limit: u64,
    ) -> StoreResult<FilterValues> {
        let distinct = |column: RollupColumn| {
            event_rollup::Entity::of_registered_tenants(partner)
                .select_only()
                .column(column)
                .distinct()
                .filter(column.gt(""))
                .order_by_asc(column)
                .limit(limit)
                .into_tuple::<String>()
        };
        within_deadline(async {
            let txn = self.begin_read().await?;
            let values = FilterValues {
                actions: distinct(RollupColumn::Action).all(&txn).await?,
                resource_types: distinct(RollupColumn::ResourceType).all(&txn).await?,
                sources: distinct(RollupColumn::Source).all(&txn).await?,
            };
            txn.commit().await?;
            Ok::<_, DbErr>(values)
        })
        .await
    }
}

/// `read`, unless `deadline` passes first.
fn in_time<F: Future>(deadline: Instant, read: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout_at(deadline.into(), read)
}

/// The rollup condition answering `query` over `matcher`'s events, if
/// rollups can answer it.
fn rollup_plan(matcher: &EventMatcher, query: &StatsQuery) -> Option<Condition> {
    let groups_fit = query.group_by.iter().all(|f| f.rollup_column().is_some());
    let buckets_fit = query
        .bucket
        .is_none_or(|spec| spec.width % event_rollup::HOUR_MICROS == 0);
    if groups_fit && buckets_fit {
        matcher.rollup_condition()
    } else {
        None
    }
}

/// The counts of a scan so far.
#[derive(Debug, Default)]
struct ScanCounts {
    total: u64,
    groups: HashMap<Vec<GroupValue>, u64>,
    buckets: BTreeMap<i64, u64>,
}

impl ScanCounts {
    fn add(&mut self, chunk: ScanCounts) {
        self.total += chunk.total;
        for (keys, count) in chunk.groups {
            *self.groups.entry(keys).or_default() += count;
        }
        for (start, count) in chunk.buckets {
            *self.buckets.entry(start).or_default() += count;
        }
    }
}

/// The start of `time`'s bucket: `time - ((time % w) + w) % w`, by floor
/// division on both backends (whose `%` truncates toward zero).
fn bucket_start(time: Expr, spec: &BucketSpec) -> Expr {
    let remainder = time.clone().modulo(spec.width).add(spec.width).modulo(spec.width);
    time.sub(remainder)
}

/// The groups a statement selecting the `group_by` columns, then a count,
/// reads.
async fn group_rows(
    txn: &DatabaseTransaction,
    query: &StatsQuery,
    statement: sea_orm::Statement,
) -> Result<Vec<GroupCount>, DbErr> {
    let mut groups = Vec::new();
    for row in txn.query_all_raw(statement).await? {
        let mut keys = Vec::with_capacity(query.group_by.len());
        for (i, field) in query.group_by.iter().enumerate() {
            keys.push(if field.is_enum() {
                GroupValue::Enum(row.try_get_by_index::<Option<i32>>(i)?.unwrap_or_default())
            } else {
                GroupValue::Text(row.try_get_by_index::<Option<String>>(i)?.unwrap_or_default())
            });
        }
        let count = row.try_get_by_index::<i64>(query.group_by.len())?;
        groups.push(GroupCount {
            keys,
            count: u64::try_from(count).unwrap_or_default(),
        });
    }
    Ok(groups)
}

/// The buckets a statement selecting a bucket start, then a count, reads.
async fn bucket_rows(
    txn: &DatabaseTransaction,
    statement: sea_orm::Statement,
) -> Result<Vec<BucketCount>, DbErr> {
    let mut buckets = Vec::new();
    for row in txn.query_all_raw(statement).await? {
        buckets.push(BucketCount {
            start: row.try_get_by_index::<i64>(0)?,
            count: u64::try_from(row.try_get_by_index::<i64>(1)?).unwrap_or_default(),
        });
    }
    Ok(buckets)
}

/// The `limit` largest groups, largest first, ties in the order of their
/// keys (text by bytes, enums by number), the same on both backends.
impl ScanCounts {
    /// The answer these counts make, `answered_by` as given.
    fn into_stats(self, query: &StatsQuery, answered_by: StatsSource) -> StoreResult<Stats> {
        let buckets = match &query.bucket {
            Some(spec) => {
                let non_empty: Vec<BucketCount> = self
                    .buckets
                    .into_iter()
                    .map(|(start, count)| BucketCount { start, count })
                    .collect();
                series(spec, &non_empty)?
            }
            None => Vec::new(),
        };
        Ok(Stats {
            total: self.total,
            groups: largest(
                self.groups
                    .into_iter()
                    .map(|(keys, count)| GroupCount { keys, count })
                    .collect(),
                query.limit,
            ),
            buckets,
            answered_by,
        })
    }
}

fn largest(mut groups: Vec<GroupCount>, limit: u64) -> Vec<GroupCount> {
    groups.retain(|g| g.count > 0);
    groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.keys.cmp(&b.keys)));
    groups.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    groups
}

/// The rollups' distinct non-empty values of `column` for the tenant, in
/// the database's order, at most `limit`: a walk of the `(tenant_id,
/// column)` index, one step from each value to the next (a loose index
/// scan), so its cost grows with the values listed, not the rows.
async fn distinct(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    column: &str,
    limit: u64,
) -> Result<Vec<String>, DbErr> {
    let next = |after: &str| {
        format!(
            "(SELECT r.{column} FROM event_rollups r WHERE r.tenant_id = $1 AND r.{column} > {after} \
             ORDER BY r.{column} LIMIT 1)"
        )
    };
    let sql = format!(
        "WITH RECURSIVE walk(value, n) AS (SELECT {}, 1 UNION ALL SELECT {}, n + 1 FROM walk \
         WHERE walk.value IS NOT NULL AND n < $2) SELECT value FROM walk WHERE value IS NOT NULL",
        next("''"),
        next("walk.value")
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let statement = tenant_statement(txn.get_database_backend(), tenant, &sql, [limit.into()]);
    txn.query_all_raw(statement)
        .await?
        .iter()
        .map(|row| row.try_get_by_index::<String>(0))
        .collect()
}

/// The bucket series: from the bucket of `spec.from` (or the first non-empty
/// bucket) to the bucket of the last instant before `spec.to` (or the last
/// non-empty bucket), empty buckets included.
fn series(spec: &BucketSpec, non_empty: &[BucketCount]) -> StoreResult<Vec<BucketCount>> {
    let too_many = || StoreError::TooManyBuckets {
        max: spec.max_buckets,
    };
    if non_empty.len() as u64 > spec.max_buckets {
        return Err(too_many());
    }
    let first = spec
        .from
        .map(|from| spec.bucket_of(from))
        .or_else(|| non_empty.first().map(|b| b.start));
    let last = spec
        .to
        .map(|to| spec.bucket_of(to - 1))
        .or_else(|| non_empty.last().map(|b| b.start));
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(Vec::new());
    };
    if last < first {
        return Ok(Vec::new());
    }
    let span = (last - first) / spec.width + 1;
    if u64::try_from(span).unwrap_or(u64::MAX) > spec.max_buckets {
        return Err(too_many());
    }
    let counts: BTreeMap<i64, u64> = non_empty.iter().map(|b| (b.start, b.count)).collect();
    Ok((0..span)
        .map(|i| {
            let start = first + i * spec.width;
            BucketCount {
                start,
                count: counts.get(&start).copied().unwrap_or(0),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(from: Option<i64>, to: Option<i64>) -> BucketSpec {
        BucketSpec {
            width: 10,
            from,
            to,
            max_buckets: 5,
        }
    }

    fn bucket(start: i64, count: u64) -> BucketCount {
        BucketCount { start, count }
    }

    #[test]
    fn buckets_floor_before_the_epoch() {
        let spec = spec(None, None);
        assert_eq!(spec.bucket_of(-1), -10);
        assert_eq!(spec.bucket_of(-10), -10);
        assert_eq!(spec.bucket_of(0), 0);
        assert_eq!(spec.bucket_of(19), 10);
    }

    #[test]
    fn series_includes_empty_buckets_within_the_bounds() {
        let counted = [bucket(-10, 2), bucket(20, 1)];
        assert_eq!(
            series(&spec(Some(-15), Some(30)), &counted).unwrap(),
            [
                bucket(-20, 0),
                bucket(-10, 2),
                bucket(0, 0),
                bucket(10, 0),
                bucket(20, 1)
            ]
            .to_vec()
        );
        assert_eq!(
            series(&spec(None, None), &counted).unwrap(),
            [bucket(-10, 2), bucket(0, 0), bucket(10, 0), bucket(20, 1)].to_vec()
        );
        assert_eq!(series(&spec(None, None), &[]).unwrap(), Vec::new());
        assert_eq!(
            series(&spec(Some(0), Some(20)), &[]).unwrap(),
            [bucket(0, 0), bucket(10, 0)].to_vec()
        );
    }

    #[test]
    fn series_longer_than_the_cap_is_refused() {
        assert!(series(&spec(Some(0), Some(51)), &[]).is_err());
        assert!(series(&spec(Some(0), Some(50)), &[]).is_ok());
        assert!(series(&spec(None, None), &[bucket(0, 1), bucket(50, 1)]).is_err());
    }
}

//! Counting in the database: totals, groups and time buckets for `Stats`,
//! and the distinct values `GetFilterMetadata` reports. Everything is a
//! `COUNT(*)` / `GROUP BY` / `DISTINCT` over [`events_of`], never rows
//! loaded into memory, and one read snapshot per call.

use std::collections::BTreeMap;

use sea_orm::sea_query::{Alias, Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbErr, Order, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait,
};

use super::{Store, StoreError, StoreResult, events_of, within_deadline};
use crate::entity::audit_event::Column;
use crate::tenant::TenantId;

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
}

impl GroupField {
    /// Every groupable field.
    pub const ALL: [GroupField; 6] = [
        Self::Action,
        Self::ActorId,
        Self::ActorType,
        Self::ResourceType,
        Self::Outcome,
        Self::Source,
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
        }
    }

    fn is_enum(self) -> bool {
        matches!(self, Self::ActorType | Self::Outcome)
    }
}

/// One value of a group's key, as stored.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
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

impl Store {
    /// Counts the tenant's live events matching `condition`, in one
    /// snapshot, within [`READ_DEADLINE`](super::READ_DEADLINE).
    /// [`StoreError::TooManyBuckets`] when the series would exceed its
    /// `max_buckets`.
    pub async fn stats(
        &self,
        tenant: &TenantId,
        condition: Condition,
        query: &StatsQuery,
    ) -> StoreResult<Stats> {
        let (total, groups, non_empty) = within_deadline(async {
            let txn = self.begin_read().await?;
            let total = events_of(tenant).filter(condition.clone()).count(&txn).await?;
            let groups = if query.group_by.is_empty() {
                Vec::new()
            } else {
                self.group_counts(&txn, tenant, condition.clone(), query).await?
            };
            let buckets = match &query.bucket {
                Some(spec) => self.bucket_counts(&txn, tenant, condition, spec).await?,
                None => Vec::new(),
            };
            txn.commit().await?;
            Ok::<_, DbErr>((total, groups, buckets))
        })
        .await?;
        let buckets = match &query.bucket {
            Some(spec) => series(spec, &non_empty)?,
            None => Vec::new(),
        };
        Ok(Stats {
            total,
            groups,
            buckets,
        })
    }

    async fn group_counts(
        &self,
        txn: &DatabaseTransaction,
        tenant: &TenantId,
        condition: Condition,
        query: &StatsQuery,
    ) -> Result<Vec<GroupCount>, DbErr> {
        let mut select = events_of(tenant).filter(condition).select_only();
        for field in &query.group_by {
            select = select.column(field.column());
        }
        select = select.column_as(Expr::cust("COUNT(*)"), COUNT_ALIAS);
        for field in &query.group_by {
            select = select.group_by(field.column());
        }
        select = select.order_by(Expr::col(Alias::new(COUNT_ALIAS)), Order::Desc);
        for field in &query.group_by {
            select = select.order_by(field.column(), Order::Asc);
        }
        let statement = select.limit(query.limit).build(self.backend());
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

    /// The non-empty buckets, oldest first, at most `max_buckets + 1` (one
    /// more tells the series is too long).
    async fn bucket_counts(
        &self,
        txn: &DatabaseTransaction,
        tenant: &TenantId,
        condition: Condition,
        spec: &BucketSpec,
    ) -> Result<Vec<BucketCount>, DbErr> {
        // occurred_at - ((occurred_at % w) + w) % w: the start of the bucket,
        // by floor division on both backends (whose % truncates toward zero).
        let remainder = Expr::col(Column::OccurredAt)
            .modulo(spec.width)
            .add(spec.width)
            .modulo(spec.width);
        let start = Expr::col(Column::OccurredAt).sub(remainder);
        let statement = events_of(tenant)
            .filter(condition)
            .select_only()
            .column_as(start, BUCKET_ALIAS)
            .column_as(Expr::cust("COUNT(*)"), COUNT_ALIAS)
            .group_by(Expr::col(Alias::new(BUCKET_ALIAS)))
            .order_by(Expr::col(Alias::new(BUCKET_ALIAS)), Order::Asc)
            .limit(spec.max_buckets.saturating_add(1))
            .build(self.backend());
        let mut buckets = Vec::new();
        for row in txn.query_all_raw(statement).await? {
            buckets.push(BucketCount {
                start: row.try_get_by_index::<i64>(0)?,
                count: u64::try_from(row.try_get_by_index::<i64>(1)?).unwrap_or_default(),
            });
        }
        Ok(buckets)
    }

    /// The tenant's distinct actions, resource types and sources (empty
    /// values omitted), sorted, at most `limit` of each.
    pub async fn filter_values(&self, tenant: &TenantId, limit: u64) -> StoreResult<FilterValues> {
        within_deadline(async {
            let txn = self.begin_read().await?;
            let values = FilterValues {
                actions: distinct(&txn, tenant, Column::Action, limit).await?,
                resource_types: distinct(&txn, tenant, Column::ResourceType, limit).await?,
                sources: distinct(&txn, tenant, Column::Source, limit).await?,
            };
            txn.commit().await?;
            Ok::<_, DbErr>(values)
        })
        .await
    }
}

async fn distinct(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    column: Column,
    limit: u64,
) -> Result<Vec<String>, DbErr> {
    let values = events_of(tenant)
        .select_only()
        .column(column)
        .distinct()
        .filter(column.ne(""))
        .order_by(column, Order::Asc)
        .limit(limit)
        .into_tuple::<Option<String>>()
        .all(txn)
        .await?;
    Ok(values.into_iter().flatten().collect())
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

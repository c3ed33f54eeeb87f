//! The read path: one event by id, and keyset-paged queries in the four
//! supported orders.

use sea_orm::sea_query::ExprTrait;
use sea_orm::{ColumnTrait, Condition, DbErr, Order, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::{PageCursor, Store, audit_event, events_of, fetch_event, fetch_events, within_deadline};
use crate::error::Error;
use crate::tenant::TenantId;

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
    /// The tenant's live event with this id.
    pub async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Option<audit_event::Model>, DbErr> {
        fetch_event(
            self.reader(),
            events_of(tenant).filter(audit_event::Column::Id.eq(id)),
        )
        .await
    }

    /// Up to `limit` of the tenant's live events matching `condition`, in
    /// `order`, strictly after `after`; within [`READ_DEADLINE`](super::READ_DEADLINE).
    pub async fn query_page(
        &self,
        tenant: &TenantId,
        condition: Condition,
        order: EventOrder,
        after: Option<PageCursor>,
        limit: u64,
    ) -> Result<Vec<audit_event::Model>, Error> {
        let mut select = events_of(tenant).filter(condition);
        if let Some(cursor) = after {
            select = select.filter(order.after(cursor));
        }
        let direction = order.direction();
        if matches!(order, EventOrder::OccurredAtDesc | EventOrder::OccurredAtAsc) {
            select = select.order_by(audit_event::Column::OccurredAt, direction.clone());
        }
        let select = select.order_by(audit_event::Column::Seq, direction).limit(limit);
        within_deadline(fetch_events(self.reader(), select)).await
    }

    /// Up to `limit` of the tenant's live events matching `condition` with
    /// `after < seq <= up_to`, in seq order.
    pub async fn events_between(
        &self,
        tenant: &TenantId,
        condition: Condition,
        after: i64,
        up_to: i64,
        limit: u64,
    ) -> Result<Vec<audit_event::Model>, DbErr> {
        let select = events_of(tenant)
            .filter(condition)
            .filter(audit_event::Column::Seq.gt(after))
            .filter(audit_event::Column::Seq.lte(up_to))
            .order_by_asc(audit_event::Column::Seq)
            .limit(limit);
        fetch_events(&self.db, select).await
    }

    /// Highest seq handed out to the tenant (0 when it has no events).
    pub async fn head_seq(&self, tenant: &TenantId) -> Result<i64, DbErr> {
        Ok(self.log_heads(tenant).await?.0)
    }
}

/// `column` matches `value` exactly, or starts with it when it ends in `*`.
/// A prefix becomes a range so both databases use the index.
pub fn exact_or_prefix(column: audit_event::Column, value: &str) -> Condition {
    match value.strip_suffix('*') {
        Some(prefix) => match prefix_upper_bound(prefix) {
            Some(upper) => Condition::all().add(column.gte(prefix)).add(column.lt(upper)),
            None => Condition::all().add(column.gte(prefix)),
        },
        None => Condition::all().add(column.eq(value)),
    }
}

/// The smallest string greater than every string starting with `prefix`
/// (in byte order, which is code point order), or `None` when there is none.
pub fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // The next code point, skipping the surrogate gap; past U+10FFFF
        // there is none and the previous character is bumped instead.
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            _ => char::from_u32(last as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn prefix_bound_is_the_next_string() {
        assert_eq!(prefix_upper_bound("user."), Some("user/".to_owned()));
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("a\u{D7FF}"), Some("a\u{E000}".to_owned()));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}"), Some("b".to_owned()));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
    }
}

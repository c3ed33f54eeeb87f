//! `Export`: a tenant's log from a position to the head as of the call, in
//! seq order, chunk by chunk, with what rebuilds the Merkle tree offline
//! (see `integrity::export`): the prefix's subtree hashes, each exported
//! event's stored leaf hash, and the subtrees covering every run of seqs
//! exported without content (filtered out, or erased).

use std::time::Instant;

use futures::TryStreamExt as _;
use sea_orm::sea_query::Condition;
use sea_orm::{ColumnTrait, DbBackend, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select};

use super::sqlite_rows::read_events;
use super::tree::{leaf_hashes, node_hashes};
use super::{PageSink, READ_DEADLINE, ReadFloor, Store, StoreResult, within_deadline};
use crate::entity::audit_event::{self, EventFields};
use crate::filter::EventMatcher;
use crate::integrity::merkle::{Hash, LeafRange, NodeId, frontier};
use crate::integrity::{SignedCheckpoint, SigningKey};
use crate::tenant::TenantId;

/// Where an export starts and ends.
#[derive(Debug, Clone)]
pub struct ExportStart {
    /// The checkpoint of the tree as of the call: the export ends at its size.
    pub checkpoint: SignedCheckpoint,
    /// Hashes of the perfect subtrees of the first `after_seq` leaves,
    /// largest first.
    pub prefix: Vec<Hash>,
}

/// One chunk of an export.
#[derive(Debug, Default)]
pub struct ExportChunk<S> {
    /// Events in seq order, as the sink took them: those the filter
    /// matches, whole, and erased ones (seq, id and `recorded_at` only), so
    /// every gap is explained.
    pub events: S,
    /// How many of `events` are whole (not erased).
    pub whole: u64,
    /// The stored leaf hash of each whole event of `events`, in order.
    pub leaves: Vec<Hash>,
    /// Perfect subtrees covering every seq of the chunk not in `events` as
    /// a whole event, in seq order, with their hashes.
    pub skipped: Vec<(NodeId, Hash)>,
    /// Every seq up to this one is covered: where the next chunk starts.
    pub through: i64,
}

/// How much one chunk may hold.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    /// Most events.
    pub events: u64,
    /// Most bytes of events, as the sink counts them; at least one event.
    pub bytes: usize,
}

/// Bytes reserved per event a chunk may hold, up to its byte budget.
const EVENT_BYTES_GUESS: usize = 512;

impl Store {
    /// Brings the tree up to the head, signs (or reuses) its checkpoint and
    /// reads the prefix of `after_seq` leaves (`after_seq` at most the
    /// tree's size, which the caller checks against the checkpoint).
    pub async fn export_start(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        origin: &str,
        key: &SigningKey,
    ) -> StoreResult<ExportStart> {
        let checkpoint = self.checkpoint(tenant, origin, key).await?;
        let size = checkpoint.checkpoint.size;
        let prefix = node_hashes(self.reader(), tenant, &frontier(after_seq.min(size))).await?;
        Ok(ExportStart { checkpoint, prefix })
    }

    /// The chunk after `after` (up to `head`): at most `limits` of the
    /// events `matcher` matches and the erased ones, written into the sink
    /// straight from the rows, with the hashes that cover the rest of its
    /// seqs. On a read replica, once it has replayed the tree up to `head`
    /// (the export's checkpoint), else on the primary.
    pub async fn export_chunk<S: PageSink + Send + 'static>(
        &self,
        tenant: &TenantId,
        matcher: &EventMatcher,
        after: i64,
        head: i64,
        limits: ChunkLimits,
    ) -> StoreResult<ExportChunk<S>> {
        self.routed(tenant, ReadFloor::Tree(head), |store| async move {
            store
                .export_chunk_here(tenant, matcher, after, head, limits)
                .await
        })
        .await
    }

    /// [`export_chunk`](Self::export_chunk) on this store's read pool.
    async fn export_chunk_here<S: PageSink + Send + 'static>(
        &self,
        tenant: &TenantId,
        matcher: &EventMatcher,
        after: i64,
        head: i64,
        limits: ChunkLimits,
    ) -> StoreResult<ExportChunk<S>> {
        let reads = self.reader();
        // Rows are written one at a time and reading stops at the byte
        // budget (on SQLite the statement stops there too; PostgreSQL has
        // produced at most `limits.events` rows, which the caller sizes from
        // the chunks before).
        let capacity = usize::try_from(limits.events)
            .unwrap_or(usize::MAX)
            .saturating_mul(EVENT_BYTES_GUESS);
        let rows = ChunkRows {
            events: S::with_budget(limits.bytes, capacity),
            last: None,
            whole: Vec::new(),
            cut: false,
        };
        let statement =
            chunk_select(tenant, matcher, self.backend(), after, head, limits.events).build(self.backend());
        let rows = if self.backend() == DbBackend::Sqlite {
            // Stepped in place on the blocking pool: no hand-off per row
            // from the driver's thread, no copy of every value.
            let pool = self.reads.get_sqlite_connection_pool();
            let deadline = Instant::now() + READ_DEADLINE;
            within_deadline(read_events(pool, statement, deadline, rows, ChunkRows::take)).await?
        } else {
            within_deadline(async {
                let mut rows = rows;
                let mut stream = reads.stream_rows(statement).await?;
                while let Some(row) = stream.try_next().await? {
                    let fields = audit_event::fields_of_row(&row)?;
                    if !rows.take(&fields, audit_event::is_erased_row(&row)?) {
                        break;
                    }
                }
                Ok::<_, sea_orm::DbErr>(rows)
            })
            .await?
        };
        let ChunkRows {
            events,
            last,
            whole,
            cut,
        } = rows;
        let more = cut || u64::try_from(events.count()).is_ok_and(|n| n >= limits.events);
        let through = match last {
            Some(last) if more => last,
            _ => head,
        };

        // Leaves of the whole events; subtrees over every other seq.
        let mut gaps = Vec::new();
        let mut at = leaf_index(after + 1);
        for next in whole.iter().copied().chain([leaf_index(through + 1)]) {
            if next > at {
                gaps.extend(LeafRange { start: at, end: next }.aligned_subtrees());
            }
            at = next + 1;
        }
        let leaves = leaf_hashes(reads, tenant, &whole).await?;
        let skipped_hashes = node_hashes(reads, tenant, &gaps).await?;
        let skipped = gaps.into_iter().zip(skipped_hashes).collect();
        Ok(ExportChunk {
            events,
            whole: u64::try_from(whole.len()).unwrap_or(u64::MAX),
            leaves,
            skipped,
            through,
        })
    }
}

/// The rows of a chunk: the tenant's events after `after` up to `head`
/// that `matcher` matches or that are erased, in seq order, at most
/// `events` of them.
pub(super) fn chunk_select(
    tenant: &TenantId,
    matcher: &EventMatcher,
    backend: DbBackend,
    after: i64,
    head: i64,
    events: u64,
) -> Select<audit_event::Entity> {
    audit_event::Entity::of_tenant(tenant)
        .filter(audit_event::Column::Seq.gt(after))
        .filter(audit_event::Column::Seq.lte(head))
        .filter(
            Condition::any()
                .add(audit_event::Column::DeletedAt.is_not_null())
                .add(matcher.condition(backend)),
        )
        .order_by_asc(audit_event::Column::Seq)
        .limit(events)
}

/// What reading a chunk's rows keeps: the events the sink took, the last
/// one's seq, the leaf index of each whole one, and whether the sink
/// refused one (its byte budget reached).
struct ChunkRows<S> {
    events: S,
    last: Option<i64>,
    whole: Vec<u64>,
    cut: bool,
}

impl<S: PageSink> ChunkRows<S> {
    /// Takes the next row's event (`erased` when its content is gone);
    /// whether to read on.
    fn take(&mut self, fields: &EventFields<'_>, erased: bool) -> bool {
        if !self.events.push(fields) {
            self.cut = true;
            return false;
        }
        self.last = Some(fields.seq);
        if !erased {
            self.whole.push(leaf_index(fields.seq));
        }
        true
    }
}

/// The leaf index of `seq` (seqs start at 1).
fn leaf_index(seq: i64) -> u64 {
    u64::try_from(seq - 1).unwrap_or_default()
}

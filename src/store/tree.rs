//! Each tenant's Merkle tree in storage: every perfect subtree's hash in
//! `merkle_nodes`, written in the transaction that appends its last leaf, so
//! the tree always matches the committed log. A proof reads `O(log n)` rows
//! by primary key; nothing is ever rescanned or rewritten.

use std::collections::HashMap;

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Set, Statement,
};

use super::pg_array::ArrayLiteral;
use super::{Store, StoreError, StoreResult, fetch_events, now_micros, within_deadline};
use crate::entity::audit_event;
use crate::entity::{merkle_checkpoint, merkle_node, tenant_head, tenant_statement};
use crate::integrity::merkle::{self, CompactTree, Hash, LeafRange, NodeId};
use crate::integrity::{Checkpoint, SignedCheckpoint, SigningKey, VerifierKey, event_leaf};
use crate::tenant::TenantId;

/// Node rows per INSERT statement.
const NODE_INSERT_CHUNK: usize = 500;
/// Node keys per SELECT statement.
const NODE_SELECT_CHUNK: usize = 200;
/// Events read per statement when the tree catches up with the log.
const CATCH_UP_PAGE: u64 = 1000;

/// Extends the tenant's tree from `tree_size` leaves to `head` leaves: the
/// events already stored and not yet in the tree are read back, `new_rows`
/// (the events this transaction inserted, ending at `head`) are hashed as
/// given. Returns the new tree size.
pub(super) async fn extend_tree(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    tree_size: i64,
    head: i64,
    new_rows: &[audit_event::Model],
) -> StoreResult<i64> {
    if tree_size >= head {
        return Ok(tree_size);
    }
    let (tree, nodes) = grow_tree(txn, tenant, tree_size, head, new_rows).await?;
    insert_nodes(txn, tenant, nodes).await?;
    Ok(tree_size_of(&tree))
}

/// The tenant's tree grown from its stored `tree_size` leaves to `head`
/// (`tree_size < head`), and the nodes that completes, not yet stored: the
/// events already stored and not yet in the tree are read back, `new_rows`
/// (ending at `head`) are hashed as given.
pub(super) async fn grow_tree(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    tree_size: i64,
    head: i64,
    new_rows: &[audit_event::Model],
) -> StoreResult<(CompactTree, Vec<(NodeId, Hash)>)> {
    let size = u64::try_from(tree_size).unwrap_or_default();
    let edge_ids = merkle::frontier(size);
    let stored = fetch_nodes(txn, tenant, &edge_ids).await?;
    let edge = edge_ids
        .iter()
        .map(|id| stored.get(id).copied().ok_or_else(|| missing_node(tenant, *id)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tree = CompactTree::from_frontier(size, edge);
    let mut nodes = Vec::new();

    // Events committed while the tree was not kept (before it existed, or
    // with AUDIT_INTEGRITY=off) join it first, in seq order.
    let first_new = new_rows.first().map_or(head + 1, |row| row.seq);
    let mut next = tree_size + 1;
    while next < first_new {
        let select = audit_event::Entity::of_tenant(tenant)
            .filter(audit_event::Column::Seq.gte(next))
            .filter(audit_event::Column::Seq.lt(first_new))
            .order_by_asc(audit_event::Column::Seq)
            .limit(CATCH_UP_PAGE);
        let page = fetch_events(txn, select).await?;
        if page.is_empty() {
            return Err(missing_event(tenant, next));
        }
        for row in &page {
            if row.seq != next {
                return Err(missing_event(tenant, next));
            }
            nodes.extend(tree.push(event_leaf(row)));
            next += 1;
        }
    }
    nodes.extend(push_rows(&mut tree, new_rows));
    Ok((tree, nodes))
}

/// Adds `rows` (the next events of the log, in seq order) to `tree`;
/// returns the nodes they complete.
pub(super) fn push_rows(tree: &mut CompactTree, rows: &[audit_event::Model]) -> Vec<(NodeId, Hash)> {
    rows.iter().flat_map(|row| tree.push(event_leaf(row))).collect()
}

/// The number of leaves in `tree`, as stored.
pub(super) fn tree_size_of(tree: &CompactTree) -> i64 {
    i64::try_from(tree.size()).unwrap_or(i64::MAX)
}

/// A node's level as stored (levels are below 64).
fn stored_level(id: NodeId) -> i32 {
    i32::try_from(id.level).unwrap_or(i32::MAX)
}

/// A leaf index, node index or tree size as stored: each is at most a tree
/// size, which the store keeps as an `i64`.
fn stored_index(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}

fn missing_event(tenant: &TenantId, seq: i64) -> StoreError {
    StoreError::Corrupt {
        tenant: tenant.clone(),
        what: format!("event seq {seq} is missing from the log; run `audit-service verify`"),
    }
}

fn missing_node(tenant: &TenantId, id: NodeId) -> StoreError {
    StoreError::Corrupt {
        tenant: tenant.clone(),
        what: format!(
            "Merkle node level {} index {} is missing; run `audit-service verify`",
            id.level, id.index
        ),
    }
}

/// Inserts `nodes` of the tenant's tree in the transaction.
pub(super) async fn insert_nodes(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    nodes: Vec<(NodeId, Hash)>,
) -> Result<(), DbErr> {
    for statement in nodes_insert(txn.get_database_backend(), tenant, &nodes, "") {
        txn.execute_raw(statement).await?;
    }
    Ok(())
}

/// The statements that insert `nodes` of the tenant's tree: on PostgreSQL
/// one for any number of nodes (the columns travel as three array
/// literals, unnested by the server, so the statement is prepared once and
/// its size does not grow with the batch), whose rows are selected `gate`
/// (SQL after the unnested rows; `""`: all); elsewhere a multi-row INSERT
/// per [`NODE_INSERT_CHUNK`] nodes (no gate).
pub(super) fn nodes_insert(
    backend: DbBackend,
    tenant: &TenantId,
    nodes: &[(NodeId, Hash)],
    gate: &str,
) -> Vec<Statement> {
    if nodes.is_empty() {
        return Vec::new();
    }
    if backend == DbBackend::Postgres {
        return vec![nodes_insert_postgres(tenant, nodes, gate)];
    }
    nodes
        .chunks(NODE_INSERT_CHUNK)
        .map(|chunk| {
            let rows = chunk.iter().map(|(id, hash)| {
                merkle_node::Model {
                    tenant_id: tenant.clone(),
                    level: stored_level(*id),
                    idx: stored_index(id.index),
                    hash: hash.to_vec(),
                }
                .into_active_model()
                .reset_all()
            });
            merkle_node::Entity::insert_many(rows).build(backend)
        })
        .collect()
}

fn nodes_insert_postgres(tenant: &TenantId, nodes: &[(NodeId, Hash)], gate: &str) -> Statement {
    let mut levels = ArrayLiteral::with_capacity(nodes.len() * 3);
    let mut indexes = ArrayLiteral::with_capacity(nodes.len() * 8);
    let mut hashes = ArrayLiteral::with_capacity(nodes.len() * 65);
    for (id, hash) in nodes {
        levels.push_plain(Some(id.level));
        indexes.push_plain(Some(id.index));
        hashes.push_plain(Some(Hex(hash)));
    }
    tenant_statement(
        DbBackend::Postgres,
        tenant,
        &format!(
            "INSERT INTO merkle_nodes (tenant_id, level, idx, hash) \
             SELECT $1, l, i, decode(h, 'hex') \
             FROM unnest($2::text::int[], $3::text::bigint[], $4::text::text[]) AS t(l, i, h){gate}"
        ),
        [
            levels.finish().into(),
            indexes.finish().into(),
            hashes.finish().into(),
        ],
    )
}

/// Lower-case hex of a hash, written without an intermediate string.
struct Hex<'a>(&'a Hash);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

/// The stored hashes of `ids` that exist.
async fn fetch_nodes<C: ConnectionTrait>(
    conn: &C,
    tenant: &TenantId,
    ids: &[NodeId],
) -> Result<HashMap<NodeId, Hash>, DbErr> {
    let mut found = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(NODE_SELECT_CHUNK) {
        let mut any = Condition::any();
        for id in chunk {
            any = any.add(
                Condition::all()
                    .add(merkle_node::Column::Level.eq(stored_level(*id)))
                    .add(merkle_node::Column::Idx.eq(stored_index(id.index))),
            );
        }
        let rows = merkle_node::Entity::of_tenant(tenant)
            .filter(any)
            .all(conn)
            .await?;
        for row in rows {
            if let (Ok(hash), Ok(level), Ok(index)) = (
                Hash::try_from(row.hash.as_slice()),
                u32::try_from(row.level),
                u64::try_from(row.idx),
            ) {
                found.insert(NodeId::new(level, index), hash);
            }
        }
    }
    Ok(found)
}

/// The stored hashes of `ids`, in their order; a missing one is corrupt
/// storage.
pub(super) async fn node_hashes<C: ConnectionTrait>(
    conn: &C,
    tenant: &TenantId,
    ids: &[NodeId],
) -> StoreResult<Vec<Hash>> {
    let stored = fetch_nodes(conn, tenant, ids).await?;
    ids.iter()
        .map(|id| stored.get(id).copied().ok_or_else(|| missing_node(tenant, *id)))
        .collect()
}

/// The stored leaf hashes of `indices` (ascending), read as one range of
/// leaves when they fill most of it, else by key.
pub(super) async fn leaf_hashes<C: ConnectionTrait>(
    conn: &C,
    tenant: &TenantId,
    indices: &[u64],
) -> StoreResult<Vec<Hash>> {
    let (Some(first), Some(last)) = (indices.first(), indices.last()) else {
        return Ok(Vec::new());
    };
    let span = last - first + 1;
    if u64::try_from(indices.len()).unwrap_or(u64::MAX).saturating_mul(2) < span {
        let ids: Vec<NodeId> = indices.iter().map(|i| NodeId::new(0, *i)).collect();
        return node_hashes(conn, tenant, &ids).await;
    }
    // The whole range as one row: the leaves' hashes concatenated in
    // order (each row a driver hands over costs more than its 32 bytes).
    let concatenated = match conn.get_database_backend() {
        DbBackend::Postgres => "string_agg(hash, ''::bytea ORDER BY idx)",
        _ => "unhex(group_concat(hex(hash), '' ORDER BY idx))",
    };
    let (count, hashes): (i64, Option<Vec<u8>>) = merkle_node::Entity::of_tenant(tenant)
        .filter(merkle_node::Column::Level.eq(0))
        .filter(merkle_node::Column::Idx.between(stored_index(*first), stored_index(*last)))
        .select_only()
        .column_as(Expr::cust("COUNT(*)"), "leaves")
        .column_as(Expr::cust(concatenated), "hashes")
        .into_tuple()
        .one(conn)
        .await?
        .unwrap_or_default();
    let hashes = hashes.unwrap_or_default();
    let complete = u64::try_from(count).is_ok_and(|n| n == span)
        && u64::try_from(hashes.len()).is_ok_and(|n| n == span * 32);
    if !complete {
        // A leaf is missing: read them by key, which names it.
        let ids: Vec<NodeId> = indices.iter().map(|i| NodeId::new(0, *i)).collect();
        return node_hashes(conn, tenant, &ids).await;
    }
    Ok(indices
        .iter()
        .map(|i| {
            let at = usize::try_from(i - first).unwrap_or(usize::MAX) * 32;
            Hash::try_from(&hashes[at..at + 32]).unwrap_or_default()
        })
        .collect())
}

/// The hashes of `ranges` (each `MTH(D[start:end])`), from stored subtrees.
async fn range_hashes<C: ConnectionTrait>(
    conn: &C,
    tenant: &TenantId,
    ranges: &[LeafRange],
) -> StoreResult<Vec<Hash>> {
    let pieces: Vec<Vec<NodeId>> = ranges.iter().map(|r| r.subtrees()).collect();
    let mut ids: Vec<NodeId> = pieces.iter().flatten().copied().collect();
    ids.sort_unstable();
    ids.dedup();
    let stored = fetch_nodes(conn, tenant, &ids).await?;
    pieces
        .iter()
        .map(|range| {
            let hashes = range
                .iter()
                .map(|id| stored.get(id).copied().ok_or_else(|| missing_node(tenant, *id)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(LeafRange::hash_of(&hashes))
        })
        .collect()
}

/// Leaves in the tenant's tree.
async fn stored_tree_size<C: ConnectionTrait>(conn: &C, tenant: &TenantId) -> Result<(i64, i64), DbErr> {
    let head = tenant_head::Entity::of_tenant(tenant).one(conn).await?;
    Ok(head.map_or((0, 0), |h| (h.head_seq, h.tree_size)))
}

/// An inclusion proof as the store computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The leaf's hash.
    pub leaf_hash: Hash,
    /// Sibling hashes from the leaf up (RFC 9162 `inclusion_path`).
    pub path: Vec<Hash>,
    /// Root of the tree the proof is for.
    pub root: Hash,
}

/// A consistency proof as the store computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// RFC 9162 `consistency_path`.
    pub path: Vec<Hash>,
    /// Root of the smaller tree.
    pub first_root: Hash,
    /// Root of the larger tree.
    pub second_root: Hash,
}

impl Store {
    /// Brings the tenant's tree up to its head (it lags only for events
    /// recorded before the tree existed or with `AUDIT_INTEGRITY=off`) and
    /// returns its size.
    pub async fn sync_tree(&self, tenant: &TenantId) -> StoreResult<i64> {
        let (head, tree_size) = stored_tree_size(&self.db, tenant).await?;
        if tree_size >= head {
            return Ok(tree_size);
        }
        let (_writer, txn) = self.begin_write().await?;
        let locked = super::sequencer::lock_head(&txn, tenant).await?;
        let size = extend_tree(&txn, tenant, locked.tree_size, locked.head_seq, &[]).await?;
        super::sequencer::set_head(&txn, tenant, locked.head_seq, size).await?;
        txn.commit().await?;
        Ok(size)
    }

    /// The tenant's sequence head and tree size as stored, without catching
    /// the tree up.
    pub async fn log_heads(&self, tenant: &TenantId) -> StoreResult<(i64, i64)> {
        Ok(stored_tree_size(&self.db, tenant).await?)
    }

    /// The tenant's tree size, after [`sync_tree`](Self::sync_tree).
    pub async fn tree_size(&self, tenant: &TenantId) -> StoreResult<u64> {
        Ok(u64::try_from(self.sync_tree(tenant).await?).unwrap_or_default())
    }

    /// Root hash of the tenant's first `size` leaves (`size` at most the
    /// tree size).
    pub async fn tree_root(&self, tenant: &TenantId, size: u64) -> StoreResult<Hash> {
        let range = LeafRange { start: 0, end: size };
        let mut hashes = within_deadline(range_hashes(&self.db, tenant, &[range])).await?;
        Ok(hashes.remove(0))
    }

    /// The proof that leaf `index` is in the tree of `size` leaves.
    pub async fn inclusion_proof(
        &self,
        tenant: &TenantId,
        index: u64,
        size: u64,
    ) -> StoreResult<InclusionProof> {
        let mut ranges = merkle::inclusion_ranges(index, size);
        ranges.push(LeafRange {
            start: index,
            end: index + 1,
        });
        ranges.push(LeafRange { start: 0, end: size });
        let mut hashes = within_deadline(range_hashes(&self.db, tenant, &ranges)).await?;
        let root = hashes.pop().unwrap_or_else(merkle::empty_root);
        let leaf_hash = hashes.pop().unwrap_or_else(merkle::empty_root);
        Ok(InclusionProof {
            leaf_hash,
            path: hashes,
            root,
        })
    }

    /// The proof that the tree of `first` leaves is a prefix of the tree of
    /// `second` leaves.
    pub async fn consistency_proof(
        &self,
        tenant: &TenantId,
        first: u64,
        second: u64,
    ) -> StoreResult<ConsistencyProof> {
        let mut ranges = merkle::consistency_ranges(first, second);
        ranges.push(LeafRange { start: 0, end: first });
        ranges.push(LeafRange {
            start: 0,
            end: second,
        });
        let mut hashes = within_deadline(range_hashes(&self.db, tenant, &ranges)).await?;
        let second_root = hashes.pop().unwrap_or_else(merkle::empty_root);
        let first_root = hashes.pop().unwrap_or_else(merkle::empty_root);
        Ok(ConsistencyProof {
            path: hashes,
            first_root,
            second_root,
        })
    }

    /// The signed checkpoint of the tenant's whole tree: the stored one
    /// when the tree has not grown since, otherwise a new one signed with
    /// `key` and stored. Replicas signing the same size at once keep the
    /// first.
    pub async fn checkpoint(
        &self,
        tenant: &TenantId,
        origin: &str,
        key: &SigningKey,
    ) -> StoreResult<SignedCheckpoint> {
        let size = self.tree_size(tenant).await?;
        let verifier = key.verifier();
        if let Some(stored) = self.stored_checkpoint(tenant, size).await? {
            return open_stored(tenant, &verifier, &stored);
        }
        let root = self.tree_root(tenant, size).await?;
        let signed = key.sign(&Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            time_micros: now_micros(),
        });
        merkle_checkpoint::Entity::insert(merkle_checkpoint::ActiveModel {
            tenant_id: Set(tenant.clone()),
            tree_size: Set(stored_index(size)),
            root_hash: Set(root.to_vec()),
            signed_at: Set(signed.checkpoint.time_micros),
            note: Set(signed.note.clone()),
        })
        .on_conflict(
            OnConflict::columns([
                merkle_checkpoint::Column::TenantId,
                merkle_checkpoint::Column::TreeSize,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        match self.stored_checkpoint(tenant, size).await? {
            Some(stored) => open_stored(tenant, &verifier, &stored),
            None => Ok(signed),
        }
    }

    async fn stored_checkpoint(
        &self,
        tenant: &TenantId,
        size: u64,
    ) -> Result<Option<merkle_checkpoint::Model>, DbErr> {
        merkle_checkpoint::Entity::of_tenant(tenant)
            .filter(merkle_checkpoint::Column::TreeSize.eq(stored_index(size)))
            .one(&self.db)
            .await
    }

    /// Every checkpoint signed for the tenant, smallest tree first.
    pub async fn checkpoints(&self, tenant: &TenantId) -> StoreResult<Vec<merkle_checkpoint::Model>> {
        Ok(merkle_checkpoint::Entity::of_tenant(tenant)
            .order_by_asc(merkle_checkpoint::Column::TreeSize)
            .all(&self.db)
            .await?)
    }

    /// Up to `limit` stored leaves of the tenant's tree from leaf `from`
    /// on, as (index, hash).
    pub async fn stored_leaves(
        &self,
        tenant: &TenantId,
        from: u64,
        limit: u64,
    ) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        let rows = merkle_node::Entity::of_tenant(tenant)
            .filter(merkle_node::Column::Level.eq(0))
            .filter(merkle_node::Column::Idx.gte(stored_index(from)))
            .order_by_asc(merkle_node::Column::Idx)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|n| (u64::try_from(n.idx).unwrap_or_default(), n.hash))
            .collect())
    }

    /// Up to `limit` of the tenant's stored rows, erased ones included,
    /// with `seq > after`, in seq order: what `verify` rehashes.
    pub async fn log_rows(&self, tenant: &TenantId, after: i64, limit: u64) -> StoreResult<Vec<LogRow>> {
        let select = audit_event::Entity::of_tenant(tenant)
            .filter(audit_event::Column::Seq.gt(after))
            .order_by_asc(audit_event::Column::Seq)
            .limit(limit);
        let rows = self.db.query_all_raw(select.build(self.backend())).await?;
        rows.iter()
            .map(|row| match audit_event::Model::from_row(row) {
                Ok(event) => Ok(LogRow::Event(Box::new(event))),
                // The seq alone still places the row in the log.
                Err(error) => Ok(LogRow::Unreadable {
                    seq: row.try_get("", "seq")?,
                    why: error.to_string(),
                }),
            })
            .collect()
    }
}

impl LogRow {
    /// The row's seq.
    pub fn seq(&self) -> i64 {
        match self {
            LogRow::Event(event) => event.seq,
            LogRow::Unreadable { seq, .. } => *seq,
        }
    }
}

/// One stored row of a tenant's log, as `verify` reads it.
#[derive(Debug)]
pub enum LogRow {
    /// The row read as an event.
    Event(Box<audit_event::Model>),
    /// A row at `seq` whose columns do not decode as an event's (a value of
    /// the wrong type: the service never writes one, so someone else did).
    Unreadable {
        /// Its seq.
        seq: i64,
        /// What did not decode.
        why: String,
    },
}

fn open_stored(
    tenant: &TenantId,
    verifier: &VerifierKey,
    stored: &merkle_checkpoint::Model,
) -> StoreResult<SignedCheckpoint> {
    verifier.open(&stored.note).map_err(|e| StoreError::Corrupt {
        tenant: tenant.clone(),
        what: format!(
            "the stored checkpoint of tree size {} does not verify with the configured signing key: {e}",
            stored.tree_size
        ),
    })
}

#[cfg(test)]
mod tests {
    use audit_migrations::{Migrator, MigratorTrait};
    use sea_orm::{ConnectionTrait, Statement};

    use super::*;
    use crate::store::NewEvent;

    /// `merkle_nodes`' CREATE statement and whether the idempotency index
    /// is partial, on SQLite.
    async fn schema(store: &Store) -> (String, bool) {
        let row = |sql: &str| Statement::from_string(DbBackend::Sqlite, sql);
        let nodes: String = store
            .connection()
            .query_one_raw(row("SELECT sql FROM sqlite_schema WHERE name = 'merkle_nodes'"))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index(0)
            .unwrap();
        let partial: bool = store
            .connection()
            .query_one_raw(row("SELECT partial FROM pragma_index_list('audit_events') \
                 WHERE name = 'ux_audit_events_idempotency'"))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index(0)
            .unwrap();
        (nodes, partial)
    }

    fn keyed(n: i64, key: Option<&str>) -> NewEvent {
        NewEvent {
            action: format!("document.read.{n}"),
            actor_id: "alice".into(),
            idempotency_key: key.map(str::to_owned),
            ..NewEvent::default()
        }
    }

    /// The compact storage migration (rowless Merkle nodes, a partial
    /// idempotency index) keeps a database with events working: the tree's
    /// roots, recorded idempotency keys and new appends, in both
    /// directions.
    #[tokio::test]
    async fn the_compact_storage_migration_keeps_tree_and_idempotency() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
        let store = Store::connect(&crate::config::DatabaseConfig::new(url))
            .await
            .unwrap();
        let (nodes, partial) = schema(&store).await;
        assert!(nodes.contains("WITHOUT ROWID"), "{nodes}");
        assert!(partial, "only events with a key are indexed");

        let tenant = TenantId::parse("acme", "tenant").unwrap();
        let keys: Vec<String> = (0..40).map(|n| format!("key-{n}")).collect();
        let first: Vec<NewEvent> = (0..40i64)
            .map(|n| {
                keyed(
                    n,
                    (n % 2 == 0).then(|| keys[usize::try_from(n).unwrap()].as_str()),
                )
            })
            .collect();
        let appended = store.append(&tenant, first).await.unwrap();
        let root_40 = store.tree_root(&tenant, 40).await.unwrap();

        // Back to the previous schema (undoing the migrations after it too)
        // and forth again, with the data.
        let through_compact = Migrator::migrations()
            .iter()
            .rev()
            .position(|m| m.name() == "m20261221_000008_compact_storage")
            .unwrap();
        Migrator::down(
            store.connection(),
            Some(u32::try_from(through_compact + 1).unwrap()),
        )
        .await
        .unwrap();
        let (nodes, partial) = schema(&store).await;
        assert!(!nodes.contains("WITHOUT ROWID"), "{nodes}");
        assert!(!partial);
        assert_eq!(store.tree_root(&tenant, 40).await.unwrap(), root_40);
        Migrator::up(store.connection(), None).await.unwrap();
        assert!(schema(&store).await.0.contains("WITHOUT ROWID"));
        assert_eq!(store.tree_root(&tenant, 40).await.unwrap(), root_40);

        // A recorded key answers with its event; new events extend the tree.
        let again = store
            .append(
                &tenant,
                vec![
                    keyed(100, Some("key-4")),
                    keyed(101, Some("key-new")),
                    keyed(102, None),
                ],
            )
            .await
            .unwrap();
        assert!(again[0].duplicate);
        assert_eq!((again[0].id, again[0].seq), (appended[4].id, appended[4].seq));
        assert!(!again[1].duplicate && !again[2].duplicate);
        assert_eq!(again[2].seq, 42);
        assert_eq!(store.tree_size(&tenant).await.unwrap(), 42);
        let proof = store.consistency_proof(&tenant, 40, 42).await.unwrap();
        assert_eq!(proof.first_root, root_40);
        assert_eq!(proof.second_root, store.tree_root(&tenant, 42).await.unwrap());
        let leaves = store.stored_leaves(&tenant, 0, 100).await.unwrap();
        assert_eq!(leaves.len(), 42);
        assert_eq!(
            leaves.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..42).collect::<Vec<u64>>()
        );
    }
}

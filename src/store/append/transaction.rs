//! The transaction that records one group of batches: seqs from the
//! tenant's head (or from the group before it, written ahead on
//! PostgreSQL), idempotency keys, the Merkle tree, the rows, the new head
//! and the announcement of the commit.

use std::collections::HashMap;

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, QueryFilter, QuerySelect,
};
use tokio::sync::{MutexGuard, watch};
use uuid::Uuid;

use super::known_head::KnownHead;
use super::{AppendOutcome, NewEvent};
use crate::entity::audit_event;
use crate::integrity::merkle::{CompactTree, Hash, NodeId};
use crate::store::commits::{Committed, announce};
use crate::store::insert::insert_events;
use crate::store::rollups::Tally;
use crate::store::sequencer::{Head, lock_head, lock_head_now, set_head};
use crate::store::tree::{grow_tree, insert_nodes, push_rows, tree_size_of};
use crate::store::{Store, StoreError, StoreResult, now_micros, sessions};
use crate::tenant::TenantId;

/// Longest a group written ahead waits for a row lock before it fails
/// (and its batches are recorded again, after the group before it).
///
/// Such a group holds its uncommitted rows while it waits, in the service,
/// for the group before it to commit. A wait in the database that it
/// entered itself can close a cycle through that wait, which PostgreSQL
/// cannot see: with two replicas, replica A's group G2 (written ahead)
/// waits on B's group H1, which wrote the same seqs under the head lock;
/// H1 waits on A's G3, written ahead on G2's rows; G3 waits in A for G2 to
/// commit. So a group written ahead never waits on a lock for long: the
/// limit ends the cycle, G2 and then G3 roll back, H1 commits. One
/// replica's groups write disjoint rows and never wait on each other, so
/// there the limit is reached only when a `Delete` takes the seq a group
/// written ahead took (that group could not have committed anyway).
const AHEAD_LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// What a group leaves behind once it commits, known before it does, so
/// the tenant's next group can be written on top of it while it commits
/// (PostgreSQL only; see `group_commit`).
#[derive(Debug, Clone)]
pub(super) struct Tail {
    /// The tenant's head after the group.
    pub head: i64,
    /// Leaves in the tenant's Merkle tree after the group.
    pub tree_size: i64,
    /// That tree, when the group extended it.
    pub tree: Option<CompactTree>,
    /// The idempotency keys the group recorded.
    pub keys: HashMap<String, (Uuid, i64)>,
}

/// The group still committing that a group is written on top of.
pub(super) struct Predecessor {
    pub tail: Tail,
    /// `Some(true)` once it has committed and published, `Some(false)` if
    /// it did not commit.
    pub outcome: watch::Receiver<Option<bool>>,
}

impl Store {
    /// Records several batches of one tenant in one transaction (group
    /// commit): each batch gets contiguous seqs, in the order given, and one
    /// outcome per input. All of them commit, or none. Returns after the
    /// commit is durable.
    ///
    /// Without a `predecessor` the tenant's head row is locked first. With
    /// one (PostgreSQL), the group takes its seqs and tree from the
    /// predecessor's tail and writes its rows while the predecessor
    /// commits; only then does it lock the head row, without waiting, and
    /// commits only if the predecessor committed and the head is exactly
    /// that tail; otherwise it rolls back and fails, and the caller records
    /// its batches again. Seqs therefore stay gapless and in commit order.
    ///
    /// On PostgreSQL `planned` receives the group's tail once its rows and
    /// tree are known, before they are written.
    pub(super) async fn append_batches(
        &self,
        tenant: &TenantId,
        batches: Vec<Vec<NewEvent>>,
        predecessor: Option<Predecessor>,
        planned: impl FnOnce(Tail),
    ) -> StoreResult<Vec<Vec<AppendOutcome>>> {
        let mut planned = Some(planned);
        let (_writer, txn, start) = self.open_group(tenant, predecessor.as_ref()).await?;
        let Head {
            head_seq: head,
            tree_size,
        } = start;
        // Only PostgreSQL overlaps groups; elsewhere `planned` is dropped
        // on return, after the commit.
        let overlaps = self.backend() == DbBackend::Postgres;
        let write = async {
            let recorded_at = now_micros();
            let recorded = known_keys(&txn, tenant, &batches, predecessor.as_ref()).await?;
            let Seqs {
                outcomes,
                rows,
                own_keys,
                last_seq,
            } = assign_seqs(tenant, batches, recorded, head, recorded_at);
            if rows.is_empty() {
                // Duplicates only; their answers may come from the predecessor.
                await_predecessor(tenant, predecessor).await?;
                return Ok((outcomes, None, None));
            }
            let (tree, nodes) = self
                .group_tree(&txn, tenant, predecessor.as_ref(), tree_size, last_seq, &rows)
                .await?;
            let new_tree_size = tree.as_ref().map_or(tree_size, tree_size_of);
            let known = tree.clone().map(|tree| KnownHead {
                head: last_seq,
                tree_size: new_tree_size,
                tree,
            });
            if let Some(planned) = planned.take_if(|_| overlaps) {
                planned(Tail {
                    head: last_seq,
                    tree_size: new_tree_size,
                    tree,
                    keys: own_keys,
                });
            }
            let committed = self.wants_commits().then(|| rows.clone());
            let tally = Tally::added(&rows);
            insert_nodes(&txn, tenant, nodes).await?;
            insert_events(&txn, rows).await?;
            if predecessor.is_some() {
                confirm_predecessor(&txn, tenant, predecessor, head, tree_size).await?;
            }
            // Only now, holding the head: the rollup rows are every group's
            // of the tenant, and a group written ahead must not wait on its
            // predecessor's (see `AHEAD_LOCK_WAIT`).
            tally.apply(&txn, tenant).await?;
            set_head(&txn, tenant, last_seq, new_tree_size).await?;
            announce(&txn, tenant, head + 1, last_seq).await?;
            Ok((outcomes, committed.map(|events| (last_seq, events)), known))
        };
        let (results, committed, known) = match write.await {
            Ok(written) => written,
            Err(error) => {
                // At once, not when the connection is next used: other
                // writers may be waiting on the rows it wrote.
                let _ = txn.rollback().await;
                return Err(error);
            }
        };
        txn.commit().await?;
        if let Some(known) = known {
            self.group_commit.known.remember(tenant, known);
        }
        if let Some((last_seq, events)) = committed {
            self.publish(Committed {
                tenant: tenant.clone(),
                first_seq: head + 1,
                last_seq,
                events,
            });
        }
        Ok(results)
    }

    /// Opens a group's transaction where its seqs start: without a
    /// predecessor behind the tenant's head row lock (and on SQLite the
    /// writer lock); with one, written ahead at the predecessor's tail.
    async fn open_group(
        &self,
        tenant: &TenantId,
        predecessor: Option<&Predecessor>,
    ) -> StoreResult<(Option<MutexGuard<'_, ()>>, DatabaseTransaction, Head)> {
        match predecessor {
            None => {
                let (writer, txn) = self.begin_write().await?;
                let head = lock_head(&txn, tenant).await?;
                Ok((writer, txn, head))
            }
            Some(p) => Ok((
                None,
                self.begin_ahead().await?,
                Head {
                    head_seq: p.tail.head,
                    tree_size: p.tail.tree_size,
                },
            )),
        }
    }

    /// The group's Merkle tree with its rows pushed, and the nodes they
    /// complete: extended from the predecessor's tree when written ahead,
    /// otherwise grown from storage; nothing when tree upkeep is off.
    async fn group_tree(
        &self,
        txn: &DatabaseTransaction,
        tenant: &TenantId,
        predecessor: Option<&Predecessor>,
        tree_size: i64,
        last_seq: i64,
        rows: &[audit_event::Model],
    ) -> StoreResult<(Option<CompactTree>, Vec<(NodeId, Hash)>)> {
        Ok(match predecessor.and_then(|p| p.tail.tree.clone()) {
            _ if !self.maintains_tree() => (None, Vec::new()),
            Some(mut tree) => {
                let nodes = push_rows(&mut tree, rows);
                (Some(tree), nodes)
            }
            None if predecessor.is_some() => {
                return Err(StoreError::Conflict {
                    tenant: tenant.clone(),
                    what: "the group before this one did not extend the tree".into(),
                });
            }
            None => match self.group_commit.known.tree_of_size(tenant, tree_size) {
                // The locked head row says the tree this process last
                // committed is still the tenant's (see `known_head`).
                Some(mut tree) if rows.first().is_some_and(|row| row.seq == tree_size + 1) => {
                    let nodes = push_rows(&mut tree, rows);
                    (Some(tree), nodes)
                }
                _ => {
                    let (tree, nodes) = grow_tree(txn, tenant, tree_size, last_seq, rows).await?;
                    (Some(tree), nodes)
                }
            },
        })
    }

    /// Starts the transaction of a group written ahead (PostgreSQL), whose
    /// lock waits end after [`AHEAD_LOCK_WAIT`].
    async fn begin_ahead(&self) -> Result<DatabaseTransaction, DbErr> {
        let txn = self.begin_unguarded().await?;
        let limit = sessions::millis_setting(AHEAD_LOCK_WAIT);
        txn.execute_unprepared(&format!("SET LOCAL lock_timeout = '{limit}'"))
            .await?;
        Ok(txn)
    }
}

/// The outcomes, rows and keys of a group once each event has its seq.
pub(super) struct Seqs {
    /// One outcome per input event, batch by batch.
    pub outcomes: Vec<Vec<AppendOutcome>>,
    /// The rows to insert (duplicates have none), in seq order.
    pub rows: Vec<audit_event::Model>,
    /// The idempotency keys this group records.
    pub own_keys: HashMap<String, (Uuid, i64)>,
    /// The last seq handed out (`head` when every event was a duplicate).
    pub last_seq: i64,
}

/// Hands out seqs after `head`, batch by batch in the order given: an event
/// whose idempotency key is in `recorded` (or earlier in the group) answers
/// with the event recorded under it and takes no seq.
pub(super) fn assign_seqs(
    tenant: &TenantId,
    batches: Vec<Vec<NewEvent>>,
    mut recorded: HashMap<String, (Uuid, i64)>,
    head: i64,
    recorded_at: i64,
) -> Seqs {
    let mut own_keys = HashMap::new();
    let mut results = Vec::with_capacity(batches.len());
    let mut rows = Vec::with_capacity(batches.iter().map(Vec::len).sum());
    let mut next = head;
    for events in batches {
        let mut outcomes = Vec::with_capacity(events.len());
        for event in events {
            if let Some(&(id, seq)) = event.idempotency_key.as_ref().and_then(|k| recorded.get(k)) {
                outcomes.push(AppendOutcome {
                    id,
                    seq,
                    duplicate: true,
                });
                continue;
            }
            next += 1;
            let id = Uuid::now_v7();
            if let Some(key) = &event.idempotency_key {
                recorded.insert(key.clone(), (id, next));
                own_keys.insert(key.clone(), (id, next));
            }
            outcomes.push(AppendOutcome {
                id,
                seq: next,
                duplicate: false,
            });
            rows.push(event.into_model(tenant, next, id, recorded_at));
        }
        results.push(outcomes);
    }
    Seqs {
        outcomes: results,
        rows,
        own_keys,
        last_seq: next,
    }
}

/// The idempotency keys of `batches` already recorded for the tenant,
/// including those of the predecessor (not visible to this transaction
/// until it commits).
async fn known_keys(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    batches: &[Vec<NewEvent>],
    predecessor: Option<&Predecessor>,
) -> Result<HashMap<String, (Uuid, i64)>, DbErr> {
    let keys: Vec<String> = batches
        .iter()
        .flatten()
        .filter_map(|e| e.idempotency_key.clone())
        .collect();
    let mut recorded = recorded_keys(txn, tenant, keys).await?;
    if let Some(p) = predecessor {
        recorded.extend(p.tail.keys.iter().map(|(k, v)| (k.clone(), *v)));
    }
    Ok(recorded)
}

/// For a group written ahead, once its rows are written: waits for the
/// predecessor to commit, then takes the head lock without waiting and
/// fails unless the head is exactly where the group was written for.
async fn confirm_predecessor(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    predecessor: Option<Predecessor>,
    head: i64,
    tree_size: i64,
) -> StoreResult<()> {
    await_predecessor(tenant, predecessor).await?;
    let locked = lock_head_now(txn, tenant).await?;
    if locked.head_seq != head || locked.tree_size != tree_size {
        return Err(StoreError::Conflict {
            tenant: tenant.clone(),
            what: format!(
                "the log moved to head {} while this group was written for head {head}",
                locked.head_seq
            ),
        });
    }
    Ok(())
}

/// Waits for the group this one is written on top of (if any) to commit;
/// fails if it did not.
async fn await_predecessor(tenant: &TenantId, predecessor: Option<Predecessor>) -> StoreResult<()> {
    let Some(mut predecessor) = predecessor else {
        return Ok(());
    };
    let committed = predecessor
        .outcome
        .wait_for(Option::is_some)
        .await
        .map(|outcome| *outcome == Some(true))
        .unwrap_or(false);
    if committed {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            tenant: tenant.clone(),
            what: "the group before this one did not commit".into(),
        })
    }
}

/// The (id, seq) already recorded under each of `keys` for the tenant.
async fn recorded_keys(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    keys: Vec<String>,
) -> Result<HashMap<String, (Uuid, i64)>, DbErr> {
    let mut recorded = HashMap::new();
    if keys.is_empty() {
        return Ok(recorded);
    }
    let rows: Vec<(Option<String>, Uuid, i64)> = audit_event::Entity::of_tenant(tenant)
        .select_only()
        .column(audit_event::Column::IdempotencyKey)
        .column(audit_event::Column::Id)
        .column(audit_event::Column::Seq)
        .filter(audit_event::Column::IdempotencyKey.is_in(keys))
        .into_tuple()
        .all(txn)
        .await?;
    for (key, id, seq) in rows {
        if let Some(key) = key {
            recorded.insert(key, (id, seq));
        }
    }
    Ok(recorded)
}

//! The write path: hands out each tenant's next `seq` under a row lock on
//! `tenant_heads`, so seqs are contiguous and in commit order on every
//! backend and across replicas sharing one PostgreSQL database. On
//! PostgreSQL a group may be written ahead, on top of the group still
//! committing, and is checked under that lock before it commits
//! ([`Store::append_batches`]).

use std::collections::HashMap;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    IntoActiveModel, QueryFilter, QueryResult, QuerySelect, Statement,
};
use tokio::sync::watch;
use uuid::Uuid;

use super::pg_array::ArrayLiteral;
use super::tree::{extend_tree, grow_tree, insert_nodes, push_rows, tree_size_of};
use super::{Store, events_of, fetch_event, now_micros};
use crate::entity::audit_event;
use crate::integrity::merkle::CompactTree;
use crate::tenant::TenantId;

/// Rows per INSERT statement: keeps the bound parameters under SQLite's and
/// PostgreSQL's limits for batches of any size.
const INSERT_CHUNK: usize = 400;
/// Rows per `unnest` INSERT on PostgreSQL (bounds one statement's size).
const UNNEST_CHUNK: usize = 5000;

/// Namespace of the actions of the events the service writes itself
/// (deletions, and later retention and policy changes): producers cannot
/// append them and `Delete` cannot erase them.
pub const SERVICE_ACTION_PREFIX: &str = "audit.";
/// Action of the event that records a deletion.
pub const DELETION_ACTION: &str = "audit.event.deleted";
/// Resource type the deletion event names the erased event with.
pub const DELETION_RESOURCE_TYPE: &str = "audit.event";

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

/// A validated event to record, as the producer described it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewEvent {
    pub occurred_at: Option<i64>,
    pub actor_id: String,
    pub actor_type: i32,
    pub actor_name: String,
    pub actor_email: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub resource_name: String,
    pub outcome: i32,
    pub request_method: String,
    pub request_path: String,
    pub request_status_code: i32,
    pub request_client_ip: String,
    pub request_user_agent: String,
    pub request_id: String,
    pub source: String,
    pub reasoning: String,
    pub metadata: Option<serde_json::Value>,
    pub idempotency_key: Option<String>,
}

impl NewEvent {
    fn into_model(self, tenant: &TenantId, seq: i64, id: Uuid, recorded_at: i64) -> audit_event::Model {
        audit_event::Model {
            tenant_id: tenant.clone(),
            seq,
            id,
            occurred_at: Some(self.occurred_at.unwrap_or(recorded_at)),
            recorded_at,
            actor_id: Some(self.actor_id),
            actor_type: Some(self.actor_type),
            actor_name: Some(self.actor_name),
            actor_email: Some(self.actor_email),
            action: Some(self.action),
            resource_type: Some(self.resource_type),
            resource_id: Some(self.resource_id),
            resource_name: Some(self.resource_name),
            outcome: Some(self.outcome),
            request_method: Some(self.request_method),
            request_path: Some(self.request_path),
            request_status_code: Some(self.request_status_code),
            request_client_ip: Some(self.request_client_ip),
            request_user_agent: Some(self.request_user_agent),
            request_id: Some(self.request_id),
            source: Some(self.source),
            reasoning: Some(self.reasoning),
            metadata: self.metadata,
            idempotency_key: self.idempotency_key,
            deleted_at: None,
        }
    }
}

/// What `append` did with one input event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Id of the recorded (or originally recorded) event.
    pub id: Uuid,
    /// Its seq.
    pub seq: i64,
    /// True when the idempotency key was already recorded.
    pub duplicate: bool,
}

/// What `delete` did.
#[derive(Debug, Clone)]
pub enum DeleteOutcome {
    /// The event was erased and the deletion recorded.
    Erased(Box<Deletion>),
    /// The tenant has no live event with that id.
    NotFound,
    /// The event is one the service wrote itself (its action is in
    /// [`SERVICE_ACTION_PREFIX`]); it is the log's own record and stays.
    Protected {
        /// The protected event's action, for example `audit.event.deleted`.
        action: String,
    },
}

/// The result of erasing an event.
#[derive(Debug, Clone)]
pub struct Deletion {
    /// Id of the erased event.
    pub erased_id: Uuid,
    /// Seq of the erased event, which it keeps.
    pub erased_seq: i64,
    /// The `audit.event.deleted` event appended in the same transaction.
    pub event: audit_event::Model,
}

/// Who asked for a deletion, as the deletion event's actor.
#[derive(Debug, Clone)]
pub struct DeletionRequest {
    pub actor_id: String,
    pub actor_type: i32,
    pub reason: String,
}

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
    ) -> Result<Vec<Vec<AppendOutcome>>, DbErr> {
        let (_writer, txn, head, tree_size) = match &predecessor {
            None => {
                let (writer, txn) = self.begin_write().await?;
                let Head { head_seq, tree_size } = lock_head(&txn, tenant).await?;
                (writer, txn, head_seq, tree_size)
            }
            Some(p) => (None, self.begin_ahead().await?, p.tail.head, p.tail.tree_size),
        };
        let base_tree = predecessor.as_ref().and_then(|p| p.tail.tree.clone());
        // Only PostgreSQL overlaps groups; elsewhere `planned` is dropped
        // on return, after the commit.
        let overlaps = self.backend() == DbBackend::Postgres;
        let mut planned = Some(planned);
        let write = async {
            let recorded_at = now_micros();
            let keys: Vec<String> = batches
                .iter()
                .flatten()
                .filter_map(|e| e.idempotency_key.clone())
                .collect();
            let mut recorded = recorded_keys(&txn, tenant, keys).await?;
            if let Some(p) = &predecessor {
                // Not visible to this transaction until the predecessor commits.
                recorded.extend(p.tail.keys.iter().map(|(k, v)| (k.clone(), *v)));
            }
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
            if rows.is_empty() {
                // Duplicates only; their answers may come from the predecessor.
                await_predecessor(predecessor).await?;
                return Ok((results, None));
            }
            let (tree, nodes) = match base_tree {
                _ if !self.maintains_tree() => (None, Vec::new()),
                Some(mut tree) => {
                    let nodes = push_rows(&mut tree, &rows);
                    (Some(tree), nodes)
                }
                None if predecessor.is_some() => {
                    return Err(DbErr::Custom(
                        "the group before this one did not extend the tree".into(),
                    ));
                }
                None => {
                    let (tree, nodes) = grow_tree(&txn, tenant, tree_size, next, &rows).await?;
                    (Some(tree), nodes)
                }
            };
            let new_tree_size = tree.as_ref().map_or(tree_size, tree_size_of);
            if let Some(planned) = planned.take_if(|_| overlaps) {
                planned(Tail {
                    head: next,
                    tree_size: new_tree_size,
                    tree,
                    keys: own_keys,
                });
            }
            let committed = self.wants_commits().then(|| rows.clone());
            insert_nodes(&txn, tenant, nodes).await?;
            insert_events(&txn, rows).await?;
            if predecessor.is_some() {
                await_predecessor(predecessor).await?;
                let locked = lock_head_now(&txn, tenant).await?;
                if locked.head_seq != head || locked.tree_size != tree_size {
                    return Err(DbErr::Custom(format!(
                        "tenant {tenant}: the log moved to head {} while this group was written for head {head}",
                        locked.head_seq
                    )));
                }
            }
            set_head(&txn, tenant, next, new_tree_size).await?;
            announce(&txn, tenant, head + 1, next).await?;
            Ok((results, committed.map(|events| (next, events))))
        };
        let (results, committed) = match write.await {
            Ok(written) => written,
            Err(error) => {
                // At once, not when the connection is next used: other
                // writers may be waiting on the rows it wrote.
                let _ = txn.rollback().await;
                return Err(error);
            }
        };
        txn.commit().await?;
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

    /// Erases one live event's content, keeping its id and seq, and appends
    /// the `audit.event.deleted` event, in one transaction. Events the
    /// service wrote itself are never erased.
    pub async fn delete(
        &self,
        tenant: &TenantId,
        id: Uuid,
        request: DeletionRequest,
    ) -> Result<DeleteOutcome, DbErr> {
        let (_writer, txn) = self.begin_write().await?;
        let Head {
            head_seq: head,
            tree_size,
        } = lock_head(&txn, tenant).await?;
        let Some(target) =
            fetch_event(&txn, events_of(tenant).filter(audit_event::Column::Id.eq(id))).await?
        else {
            txn.rollback().await?;
            return Ok(DeleteOutcome::NotFound);
        };
        if let Some(action) = target
            .action
            .as_ref()
            .filter(|a| a.starts_with(SERVICE_ACTION_PREFIX))
        {
            let action = action.clone();
            txn.rollback().await?;
            return Ok(DeleteOutcome::Protected { action });
        }
        // The erased event's leaf must be in the tree before its content
        // goes: the tree is brought up to the head first, whatever the
        // AUDIT_INTEGRITY setting.
        let tree_size = extend_tree(&txn, tenant, tree_size, head, &[]).await?;
        let recorded_at = now_micros();
        let erased = target.clone().erased(recorded_at);
        erased.into_active_model().reset_all().update(&txn).await?;

        let deletion = NewEvent {
            actor_id: request.actor_id,
            actor_type: request.actor_type,
            action: DELETION_ACTION.to_owned(),
            resource_type: DELETION_RESOURCE_TYPE.to_owned(),
            resource_id: id.to_string(),
            outcome: crate::proto::Outcome::Success as i32,
            source: crate::SERVICE_NAME.to_owned(),
            reasoning: request.reason,
            metadata: Some(serde_json::json!({ "deleted_seq": target.seq })),
            ..NewEvent::default()
        };
        let event = deletion.into_model(tenant, head + 1, Uuid::now_v7(), recorded_at);
        let tree_size = extend_tree(&txn, tenant, tree_size, head + 1, std::slice::from_ref(&event)).await?;
        insert_events(&txn, vec![event.clone()]).await?;
        set_head(&txn, tenant, head + 1, tree_size).await?;
        announce(&txn, tenant, head + 1, head + 1).await?;
        txn.commit().await?;
        self.publish(Committed {
            tenant: tenant.clone(),
            first_seq: head + 1,
            last_seq: head + 1,
            events: vec![event.clone()],
        });
        Ok(DeleteOutcome::Erased(Box::new(Deletion {
            erased_id: id,
            erased_seq: target.seq,
            event,
        })))
    }
}

impl Store {
    /// Starts the transaction of a group written ahead (PostgreSQL), whose
    /// lock waits end after [`AHEAD_LOCK_WAIT`].
    async fn begin_ahead(&self) -> Result<DatabaseTransaction, DbErr> {
        let txn = self.begin_unguarded().await?;
        let limit = super::sessions::millis_setting(AHEAD_LOCK_WAIT);
        txn.execute_unprepared(&format!("SET LOCAL lock_timeout = '{limit}'"))
            .await?;
        Ok(txn)
    }

    fn wants_commits(&self) -> bool {
        self.commits.receiver_count() > 0
    }

    fn publish(&self, committed: Committed) {
        // No receiver just means no Watch hub is running.
        let _ = self.commits.send(std::sync::Arc::new(committed));
    }
}

/// On PostgreSQL, queues a NOTIFY that is delivered if and when the
/// transaction commits, in commit order, to every replica.
async fn announce(txn: &DatabaseTransaction, tenant: &TenantId, first: i64, last: i64) -> Result<(), DbErr> {
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

/// A tenant's sequence head and tree size, read under its row lock.
#[derive(Debug, Clone, Copy)]
pub(super) struct Head {
    /// Highest seq handed out so far (0 for a new tenant).
    pub head_seq: i64,
    /// Leaves in the tenant's Merkle tree.
    pub tree_size: i64,
}

impl Head {
    /// The head in a `SELECT head_seq, tree_size` row.
    fn from_row(row: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            head_seq: row.try_get("", "head_seq")?,
            tree_size: row.try_get("", "tree_size")?,
        })
    }
}

/// Locks the tenant's head row until the transaction ends and returns it.
pub(super) async fn lock_head(txn: &DatabaseTransaction, tenant: &TenantId) -> Result<Head, DbErr> {
    let backend = txn.get_database_backend();
    // SQLite has no row locks; the store's single-writer lock serializes.
    let select = match backend {
        DbBackend::Postgres => "SELECT head_seq, tree_size FROM tenant_heads WHERE tenant_id = $1 FOR UPDATE",
        _ => "SELECT head_seq, tree_size FROM tenant_heads WHERE tenant_id = $1",
    };
    let statement = |sql: &str| Statement::from_sql_and_values(backend, sql, [tenant.as_str().into()]);
    let row = match txn.query_one_raw(statement(select)).await? {
        Some(row) => row,
        None => {
            txn.execute_raw(statement(
                "INSERT INTO tenant_heads (tenant_id, head_seq, tree_size) VALUES ($1, 0, 0) \
                 ON CONFLICT (tenant_id) DO NOTHING",
            ))
            .await?;
            txn.query_one_raw(statement(select))
                .await?
                .ok_or_else(|| DbErr::RecordNotFound(format!("sequence head of tenant {tenant}")))?
        }
    };
    Head::from_row(&row)
}

/// Waits for the group this one is written on top of (if any) to commit;
/// fails if it did not.
async fn await_predecessor(predecessor: Option<Predecessor>) -> Result<(), DbErr> {
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
        Err(DbErr::Custom("the group before this one did not commit".into()))
    }
}

/// Locks the tenant's head row without waiting (PostgreSQL): fails at once
/// if another transaction holds it, so a group written ahead never waits
/// on a writer that may be waiting on its rows. Holding the lock, the
/// group is an ordinary writer from then on: its lock waits get the
/// session's limit back (its COMMIT waits its turn to queue its NOTIFY).
async fn lock_head_now(txn: &DatabaseTransaction, tenant: &TenantId) -> Result<Head, DbErr> {
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT head_seq, tree_size, set_config('lock_timeout', $2, true) \
             FROM tenant_heads WHERE tenant_id = $1 FOR UPDATE NOWAIT",
            [
                tenant.as_str().into(),
                super::sessions::millis_setting(super::LOCK_WAIT_LIMIT).into(),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("sequence head of tenant {tenant}")))?;
    Head::from_row(&row)
}

pub(super) async fn set_head(
    txn: &DatabaseTransaction,
    tenant: &TenantId,
    head: i64,
    tree_size: i64,
) -> Result<(), DbErr> {
    let backend = txn.get_database_backend();
    txn.execute_raw(Statement::from_sql_and_values(
        backend,
        "UPDATE tenant_heads SET head_seq = $1, tree_size = $2 WHERE tenant_id = $3",
        [head.into(), tree_size.into(), tenant.as_str().into()],
    ))
    .await?;
    Ok(())
}

async fn insert_events(txn: &DatabaseTransaction, rows: Vec<audit_event::Model>) -> Result<(), DbErr> {
    if txn.get_database_backend() == DbBackend::Postgres {
        for chunk in rows.chunks(UNNEST_CHUNK) {
            insert_events_postgres(txn, chunk).await?;
        }
        return Ok(());
    }
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<audit_event::ActiveModel> = rows
            .by_ref()
            .take(INSERT_CHUNK)
            .map(|m| m.into_active_model().reset_all())
            .collect();
        audit_event::Entity::insert_many(chunk)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// One INSERT for a batch of events of one tenant on PostgreSQL: each
/// column travels as one array literal and the server `unnest`s them, so
/// the statement is prepared once and planned once, where a multi-row
/// VALUES list of a new length (25 parameters a row) is parsed and planned
/// anew on every group commit.
async fn insert_events_postgres(txn: &DatabaseTransaction, rows: &[audit_event::Model]) -> Result<(), DbErr> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let n = rows.len();
    let mut numbers: [ArrayLiteral; 8] = std::array::from_fn(|_| ArrayLiteral::with_capacity(n * 17));
    let mut texts: [ArrayLiteral; 16] = std::array::from_fn(|_| ArrayLiteral::with_capacity(n * 24));
    for row in rows {
        if row.tenant_id != first.tenant_id {
            return Err(DbErr::Custom("one INSERT takes the events of one tenant".into()));
        }
        let [
            seq,
            id,
            occurred_at,
            recorded_at,
            actor_type,
            outcome,
            status_code,
            deleted_at,
        ] = &mut numbers;
        seq.push_plain(Some(row.seq));
        id.push_plain(Some(row.id));
        occurred_at.push_plain(row.occurred_at);
        recorded_at.push_plain(Some(row.recorded_at));
        actor_type.push_plain(row.actor_type);
        outcome.push_plain(row.outcome);
        status_code.push_plain(row.request_status_code);
        deleted_at.push_plain(row.deleted_at);
        let metadata = row.metadata.as_ref().map(serde_json::Value::to_string);
        for (literal, value) in texts.iter_mut().zip([
            row.actor_id.as_deref(),
            row.actor_name.as_deref(),
            row.actor_email.as_deref(),
            row.action.as_deref(),
            row.resource_type.as_deref(),
            row.resource_id.as_deref(),
            row.resource_name.as_deref(),
            row.request_method.as_deref(),
            row.request_path.as_deref(),
            row.request_client_ip.as_deref(),
            row.request_user_agent.as_deref(),
            row.request_id.as_deref(),
            row.source.as_deref(),
            row.reasoning.as_deref(),
            metadata.as_deref(),
            row.idempotency_key.as_deref(),
        ]) {
            literal.push_text(value);
        }
    }
    let mut values: Vec<sea_orm::Value> = vec![first.tenant_id.clone().into()];
    values.extend(numbers.into_iter().chain(texts).map(|l| l.finish().into()));
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO audit_events (tenant_id, seq, id, occurred_at, recorded_at, actor_type, outcome, \
         request_status_code, deleted_at, actor_id, actor_name, actor_email, action, resource_type, \
         resource_id, resource_name, request_method, request_path, request_client_ip, \
         request_user_agent, request_id, source, reasoning, metadata, idempotency_key) \
         SELECT $1, t.* FROM unnest($2::text::bigint[], $3::text::uuid[], $4::text::bigint[], \
         $5::text::bigint[], $6::text::int[], $7::text::int[], $8::text::int[], $9::text::bigint[], \
         $10::text::text[], $11::text::text[], $12::text::text[], $13::text::text[], $14::text::text[], \
         $15::text::text[], $16::text::text[], $17::text::text[], $18::text::text[], $19::text::text[], \
         $20::text::text[], $21::text::text[], $22::text::text[], $23::text::text[], \
         $24::text::jsonb[], $25::text::text[]) AS t",
        values,
    ))
    .await?;
    Ok(())
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
    let rows: Vec<(Option<String>, Uuid, i64)> = audit_event::Entity::find()
        .select_only()
        .column(audit_event::Column::IdempotencyKey)
        .column(audit_event::Column::Id)
        .column(audit_event::Column::Seq)
        .filter(audit_event::Column::TenantId.eq(tenant.as_str()))
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

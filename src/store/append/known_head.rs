//! A group written at the head this process last committed for the tenant,
//! checked by the write itself rather than read under a lock first.
//!
//! After each commit the process keeps the tenant's head, tree size and
//! tree (its right edge, at most 64 hashes). The next group of the tenant,
//! when it is a lone caller's (no group in flight before it, no other batch
//! waiting) and has no idempotency key to look up, takes its seqs and tree
//! from there and writes everything at once, on condition that the head
//! row still holds exactly that head and tree size:
//!
//! - on PostgreSQL in one statement, outside any explicit transaction (one
//!   round trip, its own commit): the head's conditional `UPDATE` as a
//!   data-modifying CTE, the nodes, rows and rollup counts as CTEs that
//!   insert only if that `UPDATE` matched, and the NOTIFY as its result;
//! - on SQLite in one transaction holding the writer lock, run on the
//!   connection's own handle in one hop to the blocking pool
//!   (`store::sqlite_write`): the head's conditional `UPDATE`, then the
//!   nodes, rows and rollups, then `COMMIT`.
//!
//! If the head moved (another replica, `Delete`, retention's record of a
//! run, a replica with `AUDIT_INTEGRITY=off`), nothing is written and the
//! group is recorded the ordinary way (head locked and read first). A tree
//! of a given size never changes (its leaves are the log's first events,
//! and nothing rewrites them), so a kept tree is right whenever the head
//! row still has its size; seqs stay gapless because the head moved by
//! exactly this group or not at all.

use std::collections::HashMap;
use std::sync::Mutex;

use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use super::transaction::assign_seqs;
use super::{AppendOutcome, NewEvent};
use crate::integrity::merkle::CompactTree;
use crate::store::commits::{Committed, NOTIFY_CHANNEL};
use crate::store::insert::events_insert;
use crate::store::rollups::Tally;
use crate::store::sqlite_write::write_if;
use crate::store::tree::{nodes_insert, push_rows, tree_size_of};
use crate::store::{Store, StoreResult, now_micros};
use crate::tenant::TenantId;

/// Tenants whose kept head is forgotten (all of them) once exceeded.
const KEPT_TENANTS: usize = 4_096;

/// Selects a PostgreSQL CTE's rows only if the head's `UPDATE` matched.
const IF_HEAD_MOVED: &str = " WHERE EXISTS (SELECT FROM head)";

/// A tenant's head as a group of this process committed it.
#[derive(Debug, Clone)]
pub(super) struct KnownHead {
    /// The last seq.
    pub head: i64,
    /// Leaves in the tree.
    pub tree_size: i64,
    /// That tree.
    pub tree: CompactTree,
}

/// The head each tenant's latest group of this process committed.
#[derive(Default)]
pub(super) struct KnownHeads {
    heads: Mutex<HashMap<String, KnownHead>>,
}

impl KnownHeads {
    fn heads(&self) -> std::sync::MutexGuard<'_, HashMap<String, KnownHead>> {
        self.heads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant's kept head, if any.
    pub fn get(&self, tenant: &TenantId) -> Option<KnownHead> {
        self.heads().get(tenant.as_str()).cloned()
    }

    /// The tenant's kept tree if it has `size` leaves.
    pub fn tree_of_size(&self, tenant: &TenantId, size: i64) -> Option<CompactTree> {
        self.heads()
            .get(tenant.as_str())
            .filter(|known| known.tree_size == size)
            .map(|known| known.tree.clone())
    }

    /// Keeps `known`, just committed, unless a later head is kept already
    /// (groups of one tenant may finish out of order).
    pub fn remember(&self, tenant: &TenantId, known: KnownHead) {
        let mut heads = self.heads();
        if heads.len() >= KEPT_TENANTS && !heads.contains_key(tenant.as_str()) {
            heads.clear();
        }
        match heads.get_mut(tenant.as_str()) {
            Some(kept) if kept.head >= known.head => {}
            Some(kept) => *kept = known,
            None => {
                heads.insert(tenant.as_str().to_owned(), known);
            }
        }
    }

    /// Forgets the tenant's head (it moved elsewhere).
    pub fn forget(&self, tenant: &TenantId) {
        self.heads().remove(tenant.as_str());
    }
}

/// Whether a group of `batches` may be written at a kept head: nothing to
/// look up (no idempotency key).
pub(super) fn fits(batches: &[Vec<NewEvent>]) -> bool {
    batches.iter().flatten().all(|e| e.idempotency_key.is_none())
}

impl Store {
    /// Records `batches` (see [`fits`]) at `known`, in one statement on
    /// PostgreSQL, one transaction in one hop on SQLite. `None` when
    /// the head is no longer `known`: nothing was written. The caller
    /// holds the tenant's turn throughout, with no group in flight.
    pub(super) async fn append_at_known_head(
        &self,
        tenant: &TenantId,
        batches: &[Vec<NewEvent>],
        known: KnownHead,
    ) -> StoreResult<Option<Vec<Vec<AppendOutcome>>>> {
        let seqs = assign_seqs(tenant, batches.to_vec(), HashMap::new(), known.head, now_micros());
        let mut tree = known.tree;
        let nodes = push_rows(&mut tree, &seqs.rows);
        let tree_size = tree_size_of(&tree);
        let (first_seq, last_seq) = (known.head + 1, seqs.last_seq);
        let tally = Tally::added(&seqs.rows);
        let backend = self.backend();
        let mut writes = nodes_insert(backend, tenant, &nodes, IF_HEAD_MOVED);
        writes.extend(events_insert(backend, &seqs.rows, IF_HEAD_MOVED)?);
        writes.extend(tally.upserts(backend, tenant, IF_HEAD_MOVED));
        let head = [
            last_seq.into(),
            tree_size.into(),
            known.head.into(),
            known.tree_size.into(),
        ];
        let written = if backend == DbBackend::Postgres {
            self.write_postgres(tenant, writes, head, first_seq, last_seq)
                .await?
        } else {
            self.write_sqlite(tenant, writes, head).await?
        };
        if !written {
            self.group_commit.known.forget(tenant);
            return Ok(None);
        }
        self.group_commit.known.remember(
            tenant,
            KnownHead {
                head: last_seq,
                tree_size,
                tree,
            },
        );
        if self.wants_commits() {
            self.publish(Committed {
                tenant: tenant.clone(),
                first_seq,
                last_seq,
                events: seqs.rows,
            });
        }
        Ok(Some(seqs.outcomes))
    }

    /// One statement, committed on its own: true when the head matched
    /// and everything was written.
    async fn write_postgres(
        &self,
        tenant: &TenantId,
        writes: Vec<Statement>,
        head: [Value; 4],
        first_seq: i64,
        last_seq: i64,
    ) -> StoreResult<bool> {
        let mut joined = Joined::new(tenant);
        let head_sql = joined.add_sql(
            "UPDATE tenant_heads SET head_seq = $2, tree_size = $3 \
             WHERE tenant_id = $1 AND head_seq = $4 AND tree_size = $5 RETURNING 1",
            head,
        );
        let mut sql = format!("WITH head AS ({head_sql})");
        for (i, write) in writes.into_iter().enumerate() {
            sql.push_str(&format!(", w{i} AS ({})", joined.add(write)));
        }
        let notify = joined.add_sql(
            "SELECT pg_notify($2, $3) FROM head",
            [
                NOTIFY_CHANNEL.into(),
                format!("{tenant}\t{first_seq}\t{last_seq}").into(),
            ],
        );
        sql.push(' ');
        sql.push_str(&notify);
        let rows = self
            .lone_writes
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                joined.values,
            ))
            .await?;
        Ok(!rows.is_empty())
    }

    /// One transaction holding the writer lock, run on the connection's
    /// own handle in one hop (`store::sqlite_write`): the head's
    /// conditional `UPDATE`, then the writes, `COMMIT`.
    async fn write_sqlite(
        &self,
        tenant: &TenantId,
        writes: Vec<Statement>,
        head: [Value; 4],
    ) -> StoreResult<bool> {
        let _writer = self.write_guard().await;
        let guard = crate::entity::tenant_statement(
            DbBackend::Sqlite,
            tenant,
            "UPDATE tenant_heads SET head_seq = $2, tree_size = $3 \
             WHERE tenant_id = $1 AND head_seq = $4 AND tree_size = $5",
            head,
        );
        write_if(self.db.get_sqlite_connection_pool(), guard, writes).await
    }
}

/// Statements joined into one text with one list of parameters, numbered
/// `$n` throughout; `$1` is the tenant, shared by all.
struct Joined {
    values: Vec<Value>,
}

impl Joined {
    fn new(tenant: &TenantId) -> Self {
        Self {
            values: vec![Value::from(tenant.clone())],
        }
    }

    /// `statement`'s text renumbered to follow the parameters so far.
    fn add(&mut self, statement: Statement) -> String {
        let values = statement.values.map(|v| v.0).unwrap_or_default();
        self.add_sql_values(&statement.sql, values)
    }

    /// `sql` (`$1` the tenant, its own parameters `$2`…) renumbered.
    fn add_sql(&mut self, sql: &str, values: impl IntoIterator<Item = Value>) -> String {
        let values = std::iter::once(self.values[0].clone()).chain(values).collect();
        self.add_sql_values(sql, values)
    }

    fn add_sql_values(&mut self, sql: &str, mut values: Vec<Value>) -> String {
        let before = self.values.len();
        let (text, shared_tenant) = renumber(sql, before);
        if shared_tenant && !values.is_empty() {
            // `$1` (the tenant) stays the first parameter of the whole.
            values.remove(0);
        }
        self.values.extend(values);
        text
    }
}

/// `sql` numbered after `before` parameters: each `?` becomes the next
/// `$n`; in a statement numbered `$n` already, `$1` (the tenant) is kept
/// and each later `$n` moves up by `before - 1`. Returns the text and
/// whether it used the shared `$1`. Neither kind of statement holds
/// literals here (every value is a parameter), so no `?` or `$` is quoted.
fn renumber(sql: &str, before: usize) -> (String, bool) {
    let mut out = String::with_capacity(sql.len() + 32);
    let numbered = sql.contains('$');
    let mut anonymous = 0;
    let mut rest = sql;
    while let Some(at) = rest.find(['$', '?']) {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if rest.as_bytes()[at] == b'?' {
            anonymous += 1;
            out.push_str(&format!("${}", before + anonymous));
            rest = after;
            continue;
        }
        let digits = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
        match after[..digits].parse::<usize>() {
            Ok(1) => out.push_str("$1"),
            Ok(n) => out.push_str(&format!("${}", n + before - 1)),
            Err(_) => out.push('$'),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    (out, numbered)
}

#[cfg(test)]
mod tests {
    use super::renumber;

    #[test]
    fn numbered_statements_keep_the_tenant_and_move_up() {
        assert_eq!(
            renumber("SELECT $1, $2::int, $10, $25::text[]", 4),
            ("SELECT $1, $5::int, $13, $28::text[]".into(), true)
        );
        assert_eq!(renumber("SELECT $1, $2", 1), ("SELECT $1, $2".into(), true));
    }

    #[test]
    fn anonymous_parameters_take_the_next_numbers() {
        assert_eq!(
            renumber("INSERT INTO t (a, b) VALUES (?, ?), (?, ?)", 3),
            ("INSERT INTO t (a, b) VALUES ($4, $5), ($6, $7)".into(), false)
        );
        assert_eq!(renumber("no parameters", 7), ("no parameters".into(), false));
    }
}

#[cfg(test)]
mod postgres_tests {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    use super::super::NewEvent;
    use crate::config::DatabaseConfig;
    use crate::store::Store;
    use crate::store::connect::postgres_test_url;
    use crate::tenant::TenantId;

    /// The one statement of a lone caller's append used to be planned anew
    /// at every call (the pools' sessions force custom plans, for the
    /// reads' skewed statements): 0.38 ms of planning in a 1.5 ms call.
    /// It runs on sessions of its own that keep a generic plan.
    #[tokio::test]
    async fn a_lone_callers_statement_keeps_a_generic_plan_on_postgres() {
        let Some(url) = postgres_test_url() else {
            return;
        };
        let store = Store::connect(&DatabaseConfig::new(url)).await.unwrap();
        let name = format!("plans-{}", uuid::Uuid::now_v7().simple());
        let tenant = TenantId::parse(&name, "tenant").unwrap();
        for i in 0..20 {
            let event = NewEvent {
                actor_id: format!("user-{i}"),
                action: "document.read".into(),
                resource_type: "document".into(),
                resource_id: format!("doc-{i}"),
                source: "plans-test".into(),
                ..NewEvent::default()
            };
            store.append(&tenant, vec![event]).await.unwrap();
            // A connection goes back to its pool in a task of its own:
            // waiting for it keeps every call (and the count below) on
            // the one connection the pool has opened.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let plans = store
            .lone_writes()
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT COALESCE(SUM(generic_plans), 0)::bigint, COALESCE(SUM(custom_plans), 0)::bigint \
                 FROM pg_prepared_statements WHERE statement LIKE 'WITH head AS (UPDATE tenant_heads%'",
            ))
            .await
            .unwrap()
            .unwrap();
        let generic: i64 = plans.try_get_by_index(0).unwrap();
        let custom: i64 = plans.try_get_by_index(1).unwrap();
        assert!(
            generic >= 5,
            "20 lone appends: {generic} generic and {custom} custom plans of the one statement"
        );
        store.close().await.unwrap();
    }
}

//! Events read on SQLite straight from the connection's own handle, on the
//! blocking pool: the statement is prepared and stepped here, and each
//! row's text is borrowed from SQLite for the duration of its step.
//!
//! Through the driver, an export of 1M events spent 27% of the service's
//! time handing each row from the driver's worker thread to the runtime
//! over a channel, and 15% allocating, the driver copying every value of
//! every row (`sqlite3_value_dup`) before any was read (docs/performance.md,
//! #20). Here one hop to the blocking pool reads a whole statement.

use std::borrow::Cow;
use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use libsqlite3_sys as ffi;
use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::sqlite::{LockedSqliteHandle, Sqlite, SqlitePool};
use sea_orm::{DbErr, Statement};
use uuid::Uuid;

use super::sqlite_handle::{BoundQuery, Failure, Prepared, Row, acquire_error, query_error};
use super::{StoreError, StoreResult};
use crate::entity::audit_event::{Column, EventFields};

/// SQLite virtual-machine steps between two looks at the deadline (a few
/// hundred microseconds of work).
const PROGRESS_STEPS: c_int = 20_000;

/// Runs `statement` (an `audit_event::Entity::find()` on SQLite: every
/// column, in declaration order, with `?` parameters) on a connection of
/// `pool`, on the blocking pool, and hands each row's fields to `take`
/// with `state` and whether the event is erased (its `deleted_at` set),
/// until the rows end or `take` returns false; gives `state` back.
///
/// Fails with [`StoreError::ReadTimedOut`] if the statement is still
/// running at `deadline` (SQLite itself is stopped then), and stops it too
/// when the returned future is dropped. Database errors are
/// [`StoreError::Database`], their text for the server log only.
pub(super) async fn read_events<T, F>(
    pool: &SqlitePool,
    statement: Statement,
    deadline: Instant,
    state: T,
    take: F,
) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnMut(&mut T, &EventFields<'_>, bool) -> bool + Send + 'static,
{
    let query = BoundQuery::of(statement)?;
    let connection = pool.acquire().await.map_err(acquire_error)?;
    let abandoned = AbandonOnDrop(Arc::new(AtomicBool::new(false)));
    let stop = Stop {
        deadline,
        abandoned: abandoned.0.clone(),
    };
    let read = tokio::task::spawn_blocking(move || {
        let mut connection = connection;
        let result = read_on(&mut connection, &query, stop, state, take);
        // The connection goes back to the pool here, unlocked.
        drop(connection);
        result
    });
    match read.await {
        Ok(result) => result,
        Err(join) => Err(StoreError::Database(DbErr::Custom(format!(
            "the SQLite reader failed: {join}"
        )))),
    }
}

/// When a read must stop: at its deadline, or when nobody waits for it.
#[derive(Clone)]
struct Stop {
    deadline: Instant,
    abandoned: Arc<AtomicBool>,
}

impl Stop {
    fn now(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// Marks the read abandoned when the future waiting for it is dropped.
struct AbandonOnDrop(Arc<AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// On the blocking pool: locks the driver's worker out of the connection,
/// reads, and lets it back in.
fn read_on<T, F>(
    connection: &mut PoolConnection<Sqlite>,
    query: &BoundQuery,
    stop: Stop,
    mut state: T,
    mut take: F,
) -> StoreResult<T>
where
    F: FnMut(&mut T, &EventFields<'_>, bool) -> bool,
{
    // Waits for the worker to finish what it is doing and park; no runtime
    // is needed for that (a channel send and a mutex).
    let mut handle = futures::executor::block_on(connection.lock_handle()).map_err(query_error)?;
    let interrupt = stop.clone();
    handle.set_progress_handler(PROGRESS_STEPS, move || !interrupt.now());
    let read = read_locked(
        &mut handle,
        query,
        &mut |fields: &EventFields<'_>, erased: bool| take(&mut state, fields, erased),
    );
    handle.remove_progress_handler();
    match read {
        Ok(()) => Ok(state),
        Err(Failure::Sqlite { code, .. }) if code == ffi::SQLITE_INTERRUPT && stop.now() => {
            Err(StoreError::ReadTimedOut {
                seconds: super::READ_DEADLINE.as_secs(),
            })
        }
        Err(failure) => Err(StoreError::Database(failure.into())),
    }
}

/// Prepares, binds and steps `query` on the locked handle, each row to
/// `take` until it says stop.
fn read_locked(
    handle: &mut LockedSqliteHandle<'_>,
    query: &BoundQuery,
    take: &mut dyn FnMut(&EventFields<'_>, bool) -> bool,
) -> Result<(), Failure> {
    let mut statement = Prepared::new(handle.as_raw_handle(), &query.sql)?;
    if statement.column_count() <= Column::DeletedAt as c_int {
        return Err(Failure::Decode(DbErr::Type(format!(
            "a statement of {} columns is not a row of audit_events",
            statement.column_count()
        ))));
    }
    for (index, value) in (1..).zip(&query.values) {
        statement.bind(index, value)?;
    }
    while statement.step()? {
        let row = statement.row();
        let (fields, erased) = fields_of(&row).map_err(Failure::Decode)?;
        if !take(&fields, erased) {
            break;
        }
    }
    Ok(())
}

/// The event's fields, borrowed from the row, and whether it is erased:
/// the values [`fields_of_row`](crate::entity::audit_event::fields_of_row)
/// reads through the driver, decoded as its decoders do.
fn fields_of<'s>(row: &Row<'s>) -> Result<(EventFields<'s>, bool), DbErr> {
    let type_error = |column: Column, error: &dyn std::fmt::Display| {
        DbErr::Type(format!(
            "audit_events.{}: {error}",
            sea_orm::IdenStatic::as_str(&column)
        ))
    };
    let required = |column: Column| -> Result<i64, DbErr> {
        row.int(column)
            .ok_or_else(|| type_error(column, &"unexpected NULL"))
    };
    let small = |column: Column| -> Result<i32, DbErr> {
        row.int(column)
            .map_or(Ok(0), i32::try_from)
            .map_err(|error| type_error(column, &error))
    };
    let text = |column: Column| -> Result<&'s str, DbErr> {
        std::str::from_utf8(row.bytes(column).unwrap_or_default()).map_err(|error| type_error(column, &error))
    };
    let id = row
        .bytes(Column::Id)
        .ok_or_else(|| type_error(Column::Id, &"unexpected NULL"))?;
    let metadata = row
        .bytes(Column::Metadata)
        .map(serde_json::from_slice::<serde_json::Value>)
        .transpose()
        .map_err(|error| type_error(Column::Metadata, &error))?;
    let fields = EventFields {
        tenant_id: text(Column::TenantId)?,
        seq: required(Column::Seq)?,
        id: Uuid::from_slice(id).map_err(|error| type_error(Column::Id, &error))?,
        occurred_at: row.int(Column::OccurredAt),
        recorded_at: required(Column::RecordedAt)?,
        actor_id: text(Column::ActorId)?,
        actor_type: small(Column::ActorType)?,
        actor_name: text(Column::ActorName)?,
        actor_email: text(Column::ActorEmail)?,
        action: text(Column::Action)?,
        resource_type: text(Column::ResourceType)?,
        resource_id: text(Column::ResourceId)?,
        resource_name: text(Column::ResourceName)?,
        outcome: small(Column::Outcome)?,
        request_method: text(Column::RequestMethod)?,
        request_path: text(Column::RequestPath)?,
        request_status_code: small(Column::RequestStatusCode)?,
        request_client_ip: text(Column::RequestClientIp)?,
        request_user_agent: text(Column::RequestUserAgent)?,
        request_id: text(Column::RequestId)?,
        request_client_identity: text(Column::RequestClientIdentity)?,
        source: text(Column::Source)?,
        reasoning: text(Column::Reasoning)?,
        metadata: metadata.map(Cow::Owned),
    };
    Ok((fields, row.int(Column::DeletedAt).is_some()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::TryStreamExt as _;
    use sea_orm::{DbBackend, QueryTrait as _};
    use serde_json::json;

    use super::*;
    use crate::config::DatabaseConfig;
    use crate::entity::audit_event;
    use crate::filter::EventMatcher;
    use crate::proto::EventFilter;
    use crate::store::export::chunk_select;
    use crate::store::{ChangeRequest, NewEvent, PageSink, Store};
    use crate::tenant::TenantId;

    fn acme() -> TenantId {
        TenantId::parse("acme", "tenant").unwrap()
    }

    /// 40 events in one tenant (and 5 in another): every 4th a logout,
    /// metadata of every kind of JSON value on some, text with multi-byte
    /// characters, the 5th and the 8th erased.
    async fn store_with_events() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
        let store = Store::connect(&DatabaseConfig::new(url)).await.unwrap();
        let event = |n: i64| {
            NewEvent {
            occurred_at: Some(1_700_000_000_000_000 + n * 1_000_001),
            actor_id: format!("user-{n}"),
            actor_type: i32::try_from(n % 3).unwrap(),
            actor_name: "Ådа Lovelace ✓".into(),
            actor_email: if n % 2 == 0 { "ada@example.com".into() } else { String::new() },
            action: if n % 4 == 0 { "user.logout".into() } else { "user.login".into() },
            resource_type: "session".into(),
            resource_id: format!("s-{n}"),
            outcome: 1 + i32::try_from(n % 2).unwrap(),
            request_status_code: if n % 5 == 0 { -1 } else { 200 },
            request_path: "/login".into(),
            source: "auth".into(),
            metadata: (n % 3 != 0).then(|| {
                json!({"attempt": n, "ratio": 0.098_009_800_000_000_01, "tags": ["a", null, true, {"k": "ü"}]})
            }),
            ..NewEvent::default()
        }
        };
        let outcomes = store
            .append(&acme(), (1..=40).map(event).collect())
            .await
            .unwrap();
        let other = TenantId::parse("other", "tenant").unwrap();
        store.append(&other, (1..=5).map(event).collect()).await.unwrap();
        for erased in [4, 7] {
            let request = ChangeRequest {
                actor_id: "admin".into(),
                actor_type: 1,
                reason: "test".into(),
                client_identity: None,
            };
            store.delete(&acme(), outcomes[erased].id, request).await.unwrap();
        }
        (dir, store)
    }

    /// Each row as `(its fields, erased)`, written out to compare.
    type Read = Vec<(String, bool)>;

    async fn through_the_driver(store: &Store, statement: Statement) -> Read {
        let mut rows = store.reader().stream_rows(statement).await.unwrap();
        let mut read = Vec::new();
        while let Some(row) = rows.try_next().await.unwrap() {
            let fields = audit_event::fields_of_row(&row).unwrap();
            read.push((format!("{fields:?}"), audit_event::is_erased_row(&row).unwrap()));
        }
        read
    }

    async fn in_place(store: &Store, statement: Statement, most: usize) -> StoreResult<Read> {
        let deadline = Instant::now() + Duration::from_secs(60);
        read_events(
            pool(store),
            statement,
            deadline,
            Vec::new(),
            move |read: &mut Read, fields, erased| {
                read.push((format!("{fields:?}"), erased));
                read.len() < most
            },
        )
        .await
    }

    fn pool(store: &Store) -> &SqlitePool {
        store.reads.get_sqlite_connection_pool()
    }

    fn chunk(matcher: &EventMatcher, after: i64, head: i64, events: u64) -> Statement {
        chunk_select(&acme(), matcher, DbBackend::Sqlite, after, head, events).build(DbBackend::Sqlite)
    }

    #[tokio::test]
    async fn reads_what_the_driver_reads_for_a_filter_with_bound_values() {
        let (_dir, store) = store_with_events().await;
        let filter = EventFilter {
            actions: vec!["user.log*".into()],
            expression: r#"(metadata.attempt >= 10 AND metadata.ratio < 0.5 AND actor.name : "LOVELACE") OR outcome = OUTCOME_INTENT"#.into(),
            ..EventFilter::default()
        };
        let matcher = EventMatcher::new(&filter, "filter").unwrap();
        let statement = chunk(&matcher, 2, 39, 1000);
        let values = statement.values.as_ref().unwrap().0.len();
        assert!(
            values >= 8,
            "the tenant, seqs, the filter's values, the limit: {values}"
        );

        let expected = through_the_driver(&store, statement.clone()).await;
        let read = in_place(&store, statement, usize::MAX).await.unwrap();
        assert_eq!(read, expected);
        let erased = read.iter().filter(|(_, erased)| *erased).count();
        assert_eq!(erased, 2, "erased events are read whatever the filter");
        // Seqs 3 to 39: the even ones (intent), the odd ones from 11 with
        // metadata (not multiples of 3), and 5, erased.
        assert_eq!(read.len(), 18 + 10 + 1);
        assert!(
            read.iter().any(|(fields, _)| fields.contains("\"ü\"")),
            "metadata read"
        );
        assert!(read[0].0.contains("seq: 4,"), "{}", read[0].0);
    }

    #[tokio::test]
    async fn stops_where_the_reader_says_and_gives_the_connection_back() {
        let (_dir, store) = store_with_events().await;
        let matcher = EventMatcher::new(&EventFilter::default(), "filter").unwrap();
        let statement = chunk(&matcher, 0, 40, 1000);
        let expected = through_the_driver(&store, statement.clone()).await;
        assert_eq!(expected.len(), 40);
        // Again and again on the same pool: each read's connection goes
        // back unlocked, or the driver could not use it.
        for most in [1, 7, 40, 41] {
            let read = in_place(&store, statement.clone(), most).await.unwrap();
            assert_eq!(read, expected[..most.min(40)], "{most}");
            assert_eq!(through_the_driver(&store, statement.clone()).await, expected);
        }
    }

    #[tokio::test]
    async fn a_chunk_cut_by_its_byte_budget_ends_at_its_last_event() {
        /// Counts each event as 100 bytes.
        struct Hundreds(usize, usize);
        impl PageSink for Hundreds {
            fn with_budget(budget: usize, _: usize) -> Self {
                Self(budget, 0)
            }
            fn push(&mut self, _: &EventFields<'_>) -> bool {
                let fits = self.1 == 0 || (self.1 + 1) * 100 <= self.0;
                self.1 += usize::from(fits);
                fits
            }
            fn count(&self) -> usize {
                self.1
            }
            fn byte_len(&self) -> usize {
                self.1 * 100
            }
        }
        let (_dir, store) = store_with_events().await;
        let matcher = EventMatcher::new(&EventFilter::default(), "filter").unwrap();
        let limits = crate::store::ChunkLimits {
            events: 1000,
            bytes: 650,
        };
        let chunk = store
            .export_chunk::<Hundreds>(&acme(), &matcher, 3, 40, limits)
            .await
            .unwrap();
        assert_eq!(chunk.events.count(), 6, "seqs 4 to 9");
        assert_eq!(chunk.through, 9, "the next chunk starts after the last event");
        assert_eq!(chunk.whole, 4, "5 and 8 are erased");
        assert_eq!(chunk.leaves.len(), 4);
        let skipped: Vec<_> = chunk.skipped.iter().map(|(id, _)| (id.level, id.index)).collect();
        assert_eq!(skipped, [(0, 4), (0, 7)], "the erased seqs' leaves");
    }

    #[tokio::test]
    async fn a_read_past_its_deadline_is_stopped_by_sqlite() {
        let (_dir, store) = store_with_events().await;
        // Every column of audit_events, behind ten million rows of work
        // before the first row.
        let statement = Statement::from_string(
            DbBackend::Sqlite,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000000) \
             SELECT audit_events.* FROM n, audit_events WHERE n.i = 0 AND audit_events.seq = 1",
        );
        let past = Instant::now();
        let read = read_events(pool(&store), statement, past, 0, |n: &mut u32, _, _| {
            *n += 1;
            true
        })
        .await;
        assert!(matches!(read, Err(StoreError::ReadTimedOut { .. })), "{read:?}");
    }

    #[tokio::test]
    async fn a_failing_statement_is_a_database_error() {
        let (_dir, store) = store_with_events().await;
        let statement = Statement::from_string(DbBackend::Sqlite, "SELECT * FROM no_such_table");
        let read = in_place(&store, statement, usize::MAX).await;
        let Err(StoreError::Database(error)) = read else {
            panic!("{read:?}")
        };
        assert!(
            error.to_string().contains("no_such_table"),
            "for the server log: {error}"
        );
    }
}

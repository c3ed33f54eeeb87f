//! One write transaction on SQLite run on the connection's own handle
//! ([`sqlite_handle`](super::sqlite_handle)), in one hop to the blocking
//! pool: `BEGIN IMMEDIATE`, a guard statement that must change exactly one
//! row, the writes, `COMMIT`.
//!
//! Through the driver each statement is a trip to the connection's worker
//! thread and back (a channel hand-off and two wake-ups); a lone caller's
//! `Append` took four of them (`BEGIN`, the head's conditional `UPDATE`,
//! the rows as one batch, `COMMIT`) where a raw INSERT takes one.

use std::ffi::{c_int, c_void};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libsqlite3_sys as ffi;
use sea_orm::sqlx::sqlite::SqlitePool;
use sea_orm::{DbErr, Statement};

use super::connect::SQLITE_BUSY_TIMEOUT;
use super::sqlite_handle::{BoundQuery, Failure, acquire_error, execute, query_error};
use super::{StoreError, StoreResult};

/// Runs `guard` and then `writes` in one transaction on a connection of
/// `pool` (the caller holds the process's writer lock): committed, `true`,
/// when `guard` changed exactly one row; rolled back, `false`, when it
/// changed none. On any failure the transaction is rolled back and the
/// connection closed rather than handed back to the pool.
pub(super) async fn write_if(
    pool: &SqlitePool,
    guard: Statement,
    writes: Vec<Statement>,
) -> StoreResult<bool> {
    let guard = BoundQuery::of(guard)?;
    let writes = writes
        .into_iter()
        .map(BoundQuery::of)
        .collect::<Result<Vec<_>, _>>()?;
    let connection = pool.acquire().await.map_err(acquire_error)?;
    let abandoned = Abandoned::default();
    let wait = LockWait {
        abandoned: abandoned.0.clone(),
        until: Instant::now() + SQLITE_BUSY_TIMEOUT,
    };
    let task = tokio::task::spawn_blocking(move || {
        let mut connection = connection;
        // Waits for the worker to finish what it is doing and park (a
        // channel send and a mutex: no runtime needed). A panic must not
        // hand a connection inside a transaction back to the pool.
        let run = match futures::executor::block_on(connection.lock_handle()) {
            Ok(mut handle) => Ok(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                transaction(handle.as_raw_handle(), &wait, &guard, &writes)
            }))),
            Err(error) => Err(error),
        };
        let result = match run {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => {
                connection.close_on_drop();
                std::panic::resume_unwind(panic);
            }
            Err(error) => {
                connection.close_on_drop();
                return Err(query_error(error));
            }
        };
        if result.is_err() {
            connection.close_on_drop();
        }
        result.map_err(|failure| StoreError::Database(failure.into()))
    });
    // The task runs to its end even if this future is dropped (the
    // runtime waits for its blocking tasks when it shuts down), but then
    // stops waiting for another process's lock and rolls back instead of
    // committing, unless its COMMIT has already begun.
    let result = task.await;
    drop(abandoned);
    match result {
        Ok(result) => result,
        Err(join) => Err(StoreError::Database(DbErr::Custom(format!(
            "the SQLite writer failed: {join}"
        )))),
    }
}

/// Set when the future waiting for the write is dropped.
#[derive(Default)]
struct Abandoned(Arc<AtomicBool>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How `BEGIN IMMEDIATE` waits for another process's write lock: as the
/// connection's busy timeout would, but no longer once abandoned.
struct LockWait {
    abandoned: Arc<AtomicBool>,
    until: Instant,
}

/// SQLite's busy handler for [`LockWait`]: nonzero to try again.
unsafe extern "C" fn wait_for_lock(wait: *mut c_void, attempts: c_int) -> c_int {
    // SAFETY: `wait` is the `LockWait` that `begin` registered, alive until
    // `begin` puts the connection's own handler back.
    let wait = unsafe { &*wait.cast::<LockWait>() };
    if wait.abandoned.load(Ordering::Relaxed) || Instant::now() >= wait.until {
        return 0;
    }
    // 1, 2, ... 10 ms between attempts (SQLite's own handler backs off
    // to 100 ms; another process holding the lock is rare here, and the
    // append is picked up sooner).
    let pause = u64::try_from(attempts.clamp(0, 9)).unwrap_or(9) + 1;
    std::thread::sleep(Duration::from_millis(pause));
    1
}

/// `BEGIN IMMEDIATE`, waiting for another process's write lock by
/// `wait`, then the connection's own busy timeout back in place.
fn begin(db: NonNull<ffi::sqlite3>, wait: &LockWait) -> Result<(), Failure> {
    let arg = std::ptr::from_ref(wait).cast_mut().cast::<c_void>();
    // SAFETY: `db` is open and used by this thread alone; `wait` outlives
    // the handler, which is replaced below before `wait` is dropped.
    unsafe { ffi::sqlite3_busy_handler(db.as_ptr(), Some(wait_for_lock), arg) };
    let begun = execute(db, "BEGIN IMMEDIATE", &[]);
    let timeout = c_int::try_from(SQLITE_BUSY_TIMEOUT.as_millis()).unwrap_or(c_int::MAX);
    // SAFETY: as above; this also removes `wait_for_lock`.
    unsafe { ffi::sqlite3_busy_timeout(db.as_ptr(), timeout) };
    begun.map(|_| ())
}

fn transaction(
    db: NonNull<ffi::sqlite3>,
    wait: &LockWait,
    guard: &BoundQuery,
    writes: &[BoundQuery],
) -> Result<bool, Failure> {
    begin(db, wait)?;
    let written = (|| {
        if execute(db, &guard.sql, &guard.values)? != 1 {
            return Ok(false);
        }
        for write in writes {
            execute(db, &write.sql, &write.values)?;
        }
        // Nobody waits for the answer any more (the runtime is shutting
        // down): the caller was told it failed, so nothing is kept.
        if wait.abandoned.load(Ordering::Relaxed) {
            return Err(Failure::Sqlite {
                code: ffi::SQLITE_ABORT,
                message: "abandoned before its commit".to_owned(),
            });
        }
        execute(db, "COMMIT", &[])?;
        Ok(true)
    })();
    match written {
        Ok(true) => Ok(true),
        Ok(false) => execute(db, "ROLLBACK", &[]).map(|_| false),
        Err(failure) => {
            // A failed COMMIT leaves the transaction open as well.
            let _ = execute(db, "ROLLBACK", &[]);
            Err(failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::str::FromStr as _;

    use sea_orm::sqlx::pool::PoolConnection;
    use sea_orm::sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqlitePoolOptions};
    use sea_orm::{DbBackend, Value};

    use super::*;

    async fn pool() -> (tempfile::TempDir, SqlitePool) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("w.db").display());
        // As the service's connections wait for a lock (sqlx's default is 5 s).
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .busy_timeout(SQLITE_BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        for sql in [
            "CREATE TABLE heads (name TEXT PRIMARY KEY, head INTEGER NOT NULL)",
            "CREATE TABLE rows (name TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (name, n))",
            "INSERT INTO heads VALUES ('a', 0)",
        ] {
            sea_orm::sqlx::query(sql).execute(&pool).await.unwrap();
        }
        (dir, pool)
    }

    fn statement(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
        Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
    }

    /// Moves head `a` from `from` to `from + 1`.
    fn guard(from: i64) -> Statement {
        statement(
            "UPDATE heads SET head = $2 WHERE name = $1 AND head = $3",
            ["a".into(), (from + 1).into(), from.into()],
        )
    }

    fn row(n: i64) -> Statement {
        statement("INSERT INTO rows (name, n) VALUES (?, ?)", ["a".into(), n.into()])
    }

    async fn state(pool: &SqlitePool) -> (i64, Vec<i64>) {
        let head: i64 = sea_orm::sqlx::query_scalar("SELECT head FROM heads")
            .fetch_one(pool)
            .await
            .unwrap();
        let rows: Vec<i64> = sea_orm::sqlx::query_scalar("SELECT n FROM rows ORDER BY n")
            .fetch_all(pool)
            .await
            .unwrap();
        (head, rows)
    }

    #[tokio::test]
    async fn writes_commit_when_the_guard_changes_its_row_and_not_otherwise() {
        let (_dir, pool) = pool().await;
        assert!(write_if(&pool, guard(0), vec![row(1), row(2)]).await.unwrap());
        assert_eq!(state(&pool).await, (1, vec![1, 2]));
        // The head is 1 now: a guard expecting 0 changes nothing.
        assert!(!write_if(&pool, guard(0), vec![row(3)]).await.unwrap());
        assert_eq!(state(&pool).await, (1, vec![1, 2]));
        assert!(write_if(&pool, guard(1), vec![row(3)]).await.unwrap());
        assert_eq!(state(&pool).await, (2, vec![1, 2, 3]));
    }

    #[tokio::test]
    async fn a_failing_write_rolls_everything_back_and_the_pool_goes_on() {
        let (_dir, pool) = pool().await;
        assert!(write_if(&pool, guard(0), vec![row(1)]).await.unwrap());
        // Row 1 exists: the second write fails after the guard and the
        // first write ran.
        let failed = write_if(&pool, guard(1), vec![row(2), row(1)]).await;
        let Err(StoreError::Database(error)) = failed else {
            panic!("{failed:?}")
        };
        assert!(error.to_string().contains("UNIQUE"), "{error}");
        assert_eq!(state(&pool).await, (1, vec![1]));
        // The pool (of one connection) serves the next transaction.
        assert!(write_if(&pool, guard(1), vec![row(2)]).await.unwrap());
        assert_eq!(state(&pool).await, (2, vec![1, 2]));
    }

    #[tokio::test]
    async fn parameters_bind_by_number_and_a_second_statement_is_refused() {
        let (_dir, pool) = pool().await;
        // `$3` before `$2`, `$1` twice.
        let reordered = statement(
            "UPDATE heads SET head = $3 + $2 WHERE name = $1 AND $1 = 'a'",
            ["a".into(), 10.into(), 5.into()],
        );
        assert!(write_if(&pool, reordered, vec![]).await.unwrap());
        assert_eq!(state(&pool).await.0, 15);
        let two = statement(
            "INSERT INTO rows VALUES ('a', 7); INSERT INTO rows VALUES ('a', 8)",
            [],
        );
        let refused = write_if(&pool, guard(15), vec![two]).await;
        assert!(
            matches!(&refused, Err(StoreError::Database(e)) if e.to_string().contains("more than one statement")),
            "{refused:?}"
        );
        let missing = statement("INSERT INTO rows VALUES ($1, $2)", ["a".into()]);
        assert!(write_if(&pool, guard(15), vec![missing]).await.is_err());
        assert_eq!(state(&pool).await, (15, vec![]));
    }

    /// A connection of its own to `pool`'s database, in a transaction
    /// holding the write lock (as another process would).
    async fn hold_write_lock(dir: &tempfile::TempDir) -> PoolConnection<Sqlite> {
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let other = SqlitePoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        let mut holder = other.acquire().await.unwrap();
        sea_orm::sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *holder)
            .await
            .unwrap();
        holder
    }

    /// Another connection (another process, say) holds the write lock:
    /// the write waits for it, and goes on once it is released.
    #[tokio::test]
    async fn a_write_waits_for_another_connections_lock() {
        let (dir, pool) = pool().await;
        let mut holder = hold_write_lock(&dir).await;
        let write = tokio::spawn({
            let pool = pool.clone();
            async move { write_if(&pool, guard(0), vec![row(1)]).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !write.is_finished(),
            "wrote while another connection held the lock"
        );
        sea_orm::sqlx::query("COMMIT")
            .execute(&mut *holder)
            .await
            .unwrap();
        assert!(write.await.unwrap().unwrap());
        assert_eq!(state(&pool).await, (1, vec![1]));
    }

    /// A runtime waits for its blocking tasks when it shuts down: a write
    /// waiting for another connection's lock stops waiting once nobody
    /// waits for it, instead of holding the shutdown for the busy timeout
    /// (30 s), and writes nothing.
    #[test]
    fn an_abandoned_write_stops_waiting_for_the_lock() {
        let outer = tokio::runtime::Runtime::new().unwrap();
        let (dir, pool) = outer.block_on(pool());
        let holder = outer.block_on(hold_write_lock(&dir));
        let (done, ended) = std::sync::mpsc::channel();
        let writer_pool = pool.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.spawn(async move { write_if(&writer_pool, guard(0), vec![row(1)]).await });
            runtime.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
            drop(runtime);
            done.send(()).unwrap();
        });
        ended
            .recv_timeout(SQLITE_BUSY_TIMEOUT / 3)
            .expect("the runtime's shutdown waited for the lock");
        let mut holder = holder;
        outer.block_on(async move {
            sea_orm::sqlx::query("COMMIT")
                .execute(&mut *holder)
                .await
                .unwrap();
            drop(holder);
            assert_eq!(state(&pool).await, (0, vec![]));
        });
    }

    /// A write whose caller is gone by the time it runs (the blocking task
    /// started after the runtime began to shut down, with the lock free)
    /// keeps nothing: its caller was told it failed.
    #[tokio::test]
    async fn a_write_abandoned_before_its_commit_keeps_nothing() {
        let (_dir, pool) = pool().await;
        let guard = BoundQuery::of(guard(0)).unwrap();
        let writes = vec![BoundQuery::of(row(1)).unwrap()];
        let wait = LockWait {
            abandoned: Arc::new(AtomicBool::new(true)),
            until: Instant::now() + SQLITE_BUSY_TIMEOUT,
        };
        let mut connection = pool.acquire().await.unwrap();
        let result = {
            let mut handle = connection.lock_handle().await.unwrap();
            transaction(handle.as_raw_handle(), &wait, &guard, &writes)
        };
        assert!(result.is_err(), "{result:?}");
        drop(connection);
        assert_eq!(state(&pool).await, (0, vec![]));
    }
}

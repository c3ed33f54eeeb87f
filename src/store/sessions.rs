//! The service's database sessions: the PostgreSQL settings that bound a
//! stuck transaction and name the service in `pg_stat_activity`, and
//! recovery from pooled connections that died (a database restart, an
//! operator's `pg_terminate_backend`): once one is found dead, the pools
//! hand out only connections opened after that, and a read that failed on
//! it runs once more.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sea_orm::StreamTrait;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr, Statement,
};

/// `application_name` of the service's sessions unless the database URL
/// (or `PGAPPNAME`) names them otherwise.
pub const APPLICATION_NAME: &str = "audit-service";

/// Longest a statement of the service waits for a lock before it fails
/// (PostgreSQL `lock_timeout`). The service's own lock waits are short (a
/// group holds a tenant's head for one commit); this only ends a wait that
/// nothing will end, so its transaction rolls back and releases what it
/// holds.
pub const LOCK_WAIT_LIMIT: Duration = Duration::from_secs(20);

/// Longest a session may sit inside a transaction without a statement
/// running before PostgreSQL ends it (`idle_in_transaction_session_timeout`),
/// rolling the transaction back. The service keeps a transaction idle only
/// while the group before it commits.
pub const IDLE_IN_TRANSACTION_LIMIT: Duration = Duration::from_secs(60);

/// How often PostgreSQL checks, while a statement runs, that the service
/// is still connected (`client_connection_check_interval`, PostgreSQL 14
/// and later): a replica killed while its statement waited on a lock has
/// that statement and its transaction ended within this, instead of when
/// the lock is granted.
pub const CLIENT_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// `server_version_num` of PostgreSQL 14, the first with
/// `client_connection_check_interval`.
const CLIENT_CHECK_SINCE: u32 = 140_000;

/// A duration as a PostgreSQL setting value in milliseconds.
pub(super) fn millis_setting(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// The session settings every PostgreSQL connection of the service starts
/// with: sent in the startup packet, so they cost no round trip.
pub(super) fn postgres_session(options: PgConnectOptions) -> PgConnectOptions {
    let options = match options.get_application_name() {
        Some(_) => options,
        None => options.application_name(APPLICATION_NAME),
    };
    options.options([
        ("lock_timeout", millis_setting(LOCK_WAIT_LIMIT)),
        (
            "idle_in_transaction_session_timeout",
            millis_setting(IDLE_IN_TRANSACTION_LIMIT),
        ),
    ])
}

/// The settings a new PostgreSQL connection gets once it is open, where
/// the server is recent enough to know them (an unknown setting in the
/// startup packet would refuse the connection).
pub(super) async fn after_postgres_connect(
    connection: &mut PgConnection,
) -> Result<(), sea_orm::sqlx::Error> {
    if connection.server_version_num().unwrap_or(0) >= CLIENT_CHECK_SINCE {
        use sea_orm::sqlx::Executor;
        let set = format!(
            "SET client_connection_check_interval = '{}'",
            millis_setting(CLIENT_CHECK_INTERVAL)
        );
        connection.execute(sea_orm::sqlx::AssertSqlSafe(set)).await?;
    }
    Ok(())
}

/// When the service last found one of its pooled connections dead: every
/// connection opened before then is suspect, since whatever killed one
/// (most often a database restart) likely killed them all.
#[derive(Debug, Default)]
pub(super) struct ConnectionLoss {
    found_at: Mutex<Option<Instant>>,
}

impl ConnectionLoss {
    /// Records that a connection was found dead now.
    pub fn found(&self) {
        *self.found_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Whether a connection opened `age` ago predates the last loss.
    pub fn predates(&self, age: Duration) -> bool {
        let found_at = *self.found_at.lock().unwrap_or_else(|e| e.into_inner());
        match found_at {
            None => false,
            Some(found_at) => Instant::now()
                .checked_sub(age)
                .is_none_or(|opened| opened <= found_at),
        }
    }

    /// Makes a PostgreSQL pool close, instead of handing out, an idle
    /// connection opened before the last loss; it opens a fresh one.
    pub fn guard_postgres(self: &Arc<Self>, pool: PgPoolOptions) -> PgPoolOptions {
        let loss = self.clone();
        pool.before_acquire(move |_, meta| {
            let keep = !loss.predates(meta.age);
            Box::pin(async move { Ok(keep) })
        })
    }

    /// Runs `operation`, and once more if it failed because its connection
    /// had died: the second run gets a connection opened after the loss.
    /// Only for operations that changed nothing when they failed that way:
    /// reads, and a `BEGIN`.
    pub async fn once_more_if_connection_died<T, F, Fut>(&self, operation: F) -> Result<T, DbErr>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, DbErr>>,
    {
        match operation().await {
            Err(error) if connection_died(&error) => {
                tracing::info!(%error, "a pooled database connection had died; trying a fresh one");
                self.found();
                operation().await
            }
            result => result,
        }
    }
}

/// Whether `error` says the connection it ran on is gone (closed, reset,
/// or ended by the server), as opposed to a statement that failed or a
/// database that cannot be reached.
pub fn connection_died(error: &DbErr) -> bool {
    let (DbErr::Conn(RuntimeErr::SqlxError(error))
    | DbErr::Exec(RuntimeErr::SqlxError(error))
    | DbErr::Query(RuntimeErr::SqlxError(error))) = error
    else {
        return false;
    };
    match error.as_ref() {
        sea_orm::sqlx::Error::Io(_) | sea_orm::sqlx::Error::WorkerCrashed => true,
        sea_orm::sqlx::Error::Database(db) => db.code().is_some_and(|code| session_ended(&code)),
        _ => false,
    }
}

/// SQLSTATEs with which PostgreSQL ends a session: class 08 (connection
/// exception), `admin_shutdown` (57P01, a restart or
/// `pg_terminate_backend`), `crash_shutdown` (57P02), `idle_session_timeout`
/// (57P05) and `idle_in_transaction_session_timeout` (25P03).
fn session_ended(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P05" | "25P03")
}

/// Reads on a pool, each run once more on a fresh connection when the one
/// it got had died.
#[derive(Clone)]
pub(super) struct RetryingReads {
    pool: DatabaseConnection,
    loss: Arc<ConnectionLoss>,
}

impl RetryingReads {
    pub fn new(pool: DatabaseConnection, loss: Arc<ConnectionLoss>) -> Self {
        Self { pool, loss }
    }

    /// The rows of `stmt` one at a time. Opening the statement and reading
    /// its first row run once more on a fresh connection when the first
    /// connection had died: nothing has been handed to the caller then.
    pub async fn stream_rows<'a>(
        &'a self,
        stmt: Statement,
    ) -> Result<BoxStream<'a, Result<QueryResult, DbErr>>, DbErr> {
        self.loss
            .once_more_if_connection_died(|| async {
                let mut rows = self.pool.stream_raw(stmt.clone()).await?;
                let first = rows.try_next().await?;
                Ok(futures::stream::iter(first.map(Ok)).chain(rows).boxed())
            })
            .await
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for RetryingReads {
    fn get_database_backend(&self) -> DbBackend {
        self.pool.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        // Not retried: a statement that changes data may have run.
        self.pool.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.pool.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.loss
            .once_more_if_connection_died(|| self.pool.query_one_raw(stmt.clone()))
            .await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.loss
            .once_more_if_connection_died(|| self.pool.query_all_raw(stmt.clone()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_suspect_before_a_loss() {
        let loss = ConnectionLoss::default();
        assert!(!loss.predates(Duration::from_secs(3600)));
    }

    #[test]
    fn connections_opened_before_a_loss_are_suspect_and_later_ones_are_not() {
        let loss = ConnectionLoss::default();
        loss.found();
        assert!(loss.predates(Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!loss.predates(Duration::from_millis(5)));
        assert!(loss.predates(Duration::from_secs(60)));
    }

    #[test]
    fn a_session_ended_by_the_server_is_a_dead_connection_and_a_failed_statement_is_not() {
        for code in ["57P01", "57P02", "57P05", "25P03", "08006", "08003"] {
            assert!(session_ended(code), "{code}");
        }
        for code in ["57014", "55P03", "23505", "40P01", "57P03"] {
            assert!(!session_ended(code), "{code}");
        }
    }
}

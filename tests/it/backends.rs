//! Test harness for a server's PostgreSQL sessions: a database URL whose
//! sessions carry a name of their own, and an administrator's connection
//! that finds and ends them without touching other tests' sessions.

use std::time::Duration;

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

/// Bound on waiting for PostgreSQL to act; a failure, not a hang.
const PATIENCE: Duration = Duration::from_secs(60);

/// `url` with `application_name` set to a fresh name, and that name.
pub fn named_sessions(url: &str) -> (String, String) {
    let name = format!("audit-test-{}", uuid::Uuid::now_v7().simple());
    let separator = if url.contains('?') { '&' } else { '?' };
    (format!("{url}{separator}application_name={name}"), name)
}

/// An administrator's connection to the test database.
pub struct Admin {
    pub db: DatabaseConnection,
}

impl Admin {
    pub async fn connect(url: &str) -> Self {
        Self {
            db: Database::connect(url).await.expect("admin connection"),
        }
    }

    /// Backend pids of the sessions named `name`.
    pub async fn backends(&self, name: &str) -> Vec<i32> {
        self.pids("application_name = $1", name).await
    }

    /// Backend pids of the sessions named `name` waiting on a lock.
    pub async fn waiting_on_a_lock(&self, name: &str) -> Vec<i32> {
        self.pids("application_name = $1 AND wait_event_type = 'Lock'", name)
            .await
    }

    /// Pids of the sessions in `pg_stat_activity` matching `condition`
    /// (with `name` as `$1`).
    async fn pids(&self, condition: &str, name: &str) -> Vec<i32> {
        self.db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!("SELECT pid FROM pg_stat_activity WHERE {condition}"),
                [name.into()],
            ))
            .await
            .expect("pg_stat_activity")
            .iter()
            .map(|row| row.try_get::<i32>("", "pid").expect("pid"))
            .collect()
    }

    /// Ends every session named `name` (as a database restart would) and
    /// waits until they are gone; returns how many there were.
    pub async fn terminate(&self, name: &str) -> usize {
        let pids = self.backends(name).await;
        for pid in &pids {
            self.db
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT pg_terminate_backend($1)",
                    [(*pid).into()],
                ))
                .await
                .expect("pg_terminate_backend");
        }
        self.wait_until_gone(&pids).await;
        pids.len()
    }

    /// Waits until none of `pids` is a live backend.
    pub async fn wait_until_gone(&self, pids: &[i32]) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let alive = self
                .db
                .query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT count(*) AS alive FROM pg_stat_activity \
                     WHERE pid = ANY(string_to_array($1, ',')::int[])",
                    [pids
                        .iter()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                        .into()],
                ))
                .await
                .expect("pg_stat_activity")
                .map(|row| row.try_get::<i64>("", "alive").expect("count"))
                .unwrap_or(0);
            if alive == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "backends {pids:?} still alive"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

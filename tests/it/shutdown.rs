//! Shutdown: the grace period is a hard bound, in-flight work is rolled
//! back, and what streams are told names the shutdown.

use std::time::Duration;

use audit_service::proto::watch_response::Kind;
use audit_service::proto::{AppendRequest, EventFilter, WatchRequest};
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, SqliteTransactionMode, Statement,
    TransactionOptions, TransactionTrait,
};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::backends::{Admin, named_sessions};
use crate::on_both_backends;
use crate::support::{Backend, ServerProcess, TestServer, assert_status, end_status, event, new_tenant};

on_both_backends!(
    shutdown_with_an_append_stuck_on_a_lock_exits_within_the_grace_and_stores_nothing_of_it,
    shutdown_tells_streams_the_server_is_stopping_not_that_storage_failed,
);

/// Grace period of the server under test.
const GRACE_SECS: u64 = 2;
/// What the process may take beyond the grace to close up and exit. An
/// append stuck behind a lock (SQLite waits 30 s for it, PostgreSQL as long
/// as the lock is held) must not hold the exit up.
const EXIT_MARGIN: Duration = Duration::from_secs(15);
/// Bound on waiting for something that must happen; a failure, not a hang.
const PATIENCE: Duration = Duration::from_secs(60);

async fn shutdown_with_an_append_stuck_on_a_lock_exits_within_the_grace_and_stores_nothing_of_it(
    backend: Backend,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    // On PostgreSQL the server's sessions carry a name of their own, so
    // the test can tell them from its own and from other tests'.
    let (url, server_url, sessions) = match &backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
            (url.clone(), url, None)
        }
        Backend::Postgres(url) => {
            let (named, sessions) = named_sessions(url);
            (url.clone(), named, Some(sessions))
        }
    };
    let grace = GRACE_SECS.to_string();
    let server = ServerProcess::start(&server_url, &[("AUDIT_SHUTDOWN_GRACE_SECS", &grace)]);
    let tenant = new_tenant();
    let mut caller = server.caller_for(&tenant).await;
    let first = caller.append(vec![event("user.login", "first")]).await;
    assert_eq!(first[0].seq, 1);

    // Another session holds what the next append needs.
    let blocker = Database::connect(&url).await.expect("blocker connection");
    let lock = match &backend {
        Backend::Sqlite => {
            let options = TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            };
            blocker
                .begin_with_options(options)
                .await
                .expect("BEGIN IMMEDIATE")
        }
        Backend::Postgres(_) => {
            let txn = blocker.begin().await.expect("begin");
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT head_seq FROM tenant_heads WHERE tenant_id = $1 FOR UPDATE",
                [tenant.clone().into()],
            ))
            .await
            .expect("lock the tenant's head");
            txn
        }
    };
    let mut stuck_caller = server.caller_for(&tenant).await;
    let stuck = tokio::spawn(async move {
        let events = (0..5)
            .map(|i| event("user.logout", &format!("stuck-{i}")))
            .collect();
        let mut request = stuck_caller.request(AppendRequest { events });
        request.set_timeout(PATIENCE * 2);
        stuck_caller.client.append(request).await
    });
    let admin = match &backend {
        Backend::Postgres(_) => Some(Admin::connect(&url).await),
        Backend::Sqlite => None,
    };
    match (&admin, &sessions) {
        (Some(admin), Some(sessions)) => {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while admin.waiting_on_a_lock(sessions).await.is_empty() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the append never waited on the lock"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        _ => {
            // SQLite shows no waiters: an append that has not answered in
            // this long (it takes milliseconds) is waiting on the lock.
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(!stuck.is_finished(), "the append did not wait on the lock");
        }
    }

    let exit = server.terminate_within(Duration::from_secs(GRACE_SECS) + EXIT_MARGIN);
    let status = exit.unwrap_or_else(|| {
        panic!("the server was still running {EXIT_MARGIN:?} after its {GRACE_SECS} s grace")
    });
    assert!(status.success(), "exit status {status:?}");
    let answer = tokio::time::timeout(PATIENCE, stuck)
        .await
        .expect("the stuck append never ended")
        .expect("append task");
    assert!(answer.is_err(), "the stuck append was acknowledged: {answer:?}");

    if let (Some(admin), Some(sessions)) = (&admin, &sessions) {
        // The exited server's transactions end while the lock is still
        // held: rolled back, not left waiting for it.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let left = admin.backends(sessions).await;
            if left.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sessions {left:?} of the exited server are still open"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    lock.rollback().await.expect("release the lock");
    let (events, head) = stored(&blocker, &tenant).await;
    assert_eq!((events, head), (1, 1), "the stuck append left something behind");
}

/// The tenant's stored events (erased ones included) and its head seq.
async fn stored(db: &DatabaseConnection, tenant: &str) -> (i64, i64) {
    let backend = db.get_database_backend();
    let one = |sql: &str| Statement::from_sql_and_values(backend, sql, [tenant.into()]);
    let events: i64 = db
        .query_one_raw(one("SELECT count(*) AS n FROM audit_events WHERE tenant_id = $1"))
        .await
        .expect("count events")
        .map(|row| row.try_get("", "n").expect("n"))
        .unwrap_or(0);
    let head: i64 = db
        .query_one_raw(one("SELECT head_seq FROM tenant_heads WHERE tenant_id = $1"))
        .await
        .expect("head")
        .map(|row| row.try_get("", "head_seq").expect("head_seq"))
        .unwrap_or(0);
    (events, head)
}

async fn shutdown_tells_streams_the_server_is_stopping_not_that_storage_failed(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    caller.append(vec![event("user.login", "u1")]).await;
    let request = caller.request(WatchRequest {
        filter: Some(EventFilter::default()),
        after_seq: Some(0),
        ..Default::default()
    });
    let mut stream = caller.client.watch(request).await.expect("watch").into_inner();
    loop {
        let message = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("stream hung")
            .expect("stream open")
            .expect("message");
        if matches!(message.kind, Some(Kind::Event(_))) {
            break;
        }
    }
    server.stop().await;
    let status = end_status(&mut stream, PATIENCE).await;
    assert_status(&status, Code::Unavailable, "UNAVAILABLE", None);
    let message = status.message();
    assert!(message.contains("shutting down"), "{message}");
    assert!(message.contains("after_seq=1"), "{message}");
    assert!(!message.to_lowercase().contains("storage"), "{message}");
}

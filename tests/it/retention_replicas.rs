//! Retention enforced by real server processes: two replicas on one
//! PostgreSQL database erase each event once and record each run once; a
//! run cut short by SIGKILL is finished and recorded by another replica;
//! and a run over a 200 000-event backlog leaves `Append` served.

use std::time::{Duration, Instant};

use audit_service::config::DatabaseConfig;
use audit_service::entity::audit_event;
use audit_service::proto::{AuditEvent, EventFilter, GetRequest, SetRetentionRequest};
use audit_service::store::Store;
use audit_service::tenant::TenantId;
use prost_types::value::Kind;
use sea_orm::{ColumnTrait, PaginatorTrait, QueryFilter};
use tonic::Code;

use crate::on_both_backends;
use crate::support::{Backend, Caller, ServerProcess, TestServer, event, new_tenant};

on_both_backends!(a_retention_run_over_a_200000_event_backlog_leaves_append_served);

/// Appends `count` events in calls of 1000, four at a time.
async fn backlog(callers: Vec<Caller>, count: usize) {
    let per_caller = count / callers.len();
    let mut tasks = Vec::new();
    for (c, mut caller) in callers.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut left = per_caller;
            while left > 0 {
                let size = left.min(1000);
                let batch = (0..size)
                    .map(|i| event("document.read", &format!("c{c}-{i}")))
                    .collect();
                caller.append(batch).await;
                left -= size;
            }
        }));
    }
    for task in tasks {
        task.await.expect("appender");
    }
}

async fn set_retention(admin: &mut Caller, seconds: i64) {
    let request = admin.request(SetRetentionRequest {
        period: Some(prost_types::Duration { seconds, nanos: 0 }),
        locked: false,
        reason: "test".into(),
    });
    admin
        .policy()
        .set_retention(request)
        .await
        .expect("set retention");
}

/// The `audit.retention.applied` events of the log.
async fn runs(caller: &mut Caller) -> Vec<AuditEvent> {
    let filter = EventFilter {
        actions: vec!["audit.retention.applied".into()],
        ..Default::default()
    };
    caller.query_all(filter, "seq asc", 1000).await
}

fn metadata_u64(event: &AuditEvent, key: &str) -> u64 {
    match event
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(key))
        .and_then(|v| v.kind.clone())
    {
        // JSON numbers arrive as f64; these are whole and small.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(Kind::NumberValue(n)) => n as u64,
        other => panic!("{key} missing from {event:?}: {other:?}"),
    }
}

/// Counts a tenant's erased rows in the database.
struct Erased {
    store: Store,
    tenant: TenantId,
}

impl Erased {
    async fn of(url: &str, tenant: &str) -> Self {
        Self {
            store: Store::connect(&DatabaseConfig::new(url.to_owned()))
                .await
                .expect("store"),
            tenant: TenantId::parse(tenant, "tenant").unwrap(),
        }
    }

    async fn count(&self) -> u64 {
        audit_event::Entity::of_tenant(&self.tenant)
            .filter(audit_event::Column::DeletedAt.is_not_null())
            .count(self.store.connection())
            .await
            .expect("count")
    }

    /// Waits (up to `limit`) until `count` rows are erased.
    async fn until(&self, count: u64, limit: Duration) {
        let start = Instant::now();
        loop {
            let now = self.count().await;
            if now == count {
                return;
            }
            assert!(start.elapsed() < limit, "{now} of {count} erased after {limit:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn verify(url: &str, tenant: &str) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args(["verify", "--tenant", tenant])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run audit-service verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(0), "{text}");
}

const EVERY_SECOND: [(&str, &str); 1] = [("AUDIT_RETENTION_INTERVAL_SECS", "1")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_enforcing_together_erase_each_event_once_and_record_the_run_once() {
    let Some(Backend::Postgres(url)) = Backend::postgres() else {
        return;
    };
    let replicas = [
        ServerProcess::start(&url, &EVERY_SECOND),
        ServerProcess::start(&url, &EVERY_SECOND),
    ];
    let tenant = new_tenant();
    let mut callers = Vec::new();
    for i in 0..4 {
        callers.push(replicas[i % 2].caller_for(&tenant).await);
    }
    backlog(callers, 6000).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut admin = replicas[1].admin_for(&tenant).await;
    let erased = Erased::of(&url, &tenant).await;
    set_retention(&mut admin, 1).await;
    erased.until(6000, Duration::from_secs(300)).await;
    // Both replicas keep running: a later run must find nothing to do.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(erased.count().await, 6000);

    let recorded = runs(&mut admin).await;
    assert_eq!(recorded.len(), 1, "one run, recorded once: {recorded:?}");
    let run = &recorded[0];
    assert_eq!(
        (
            metadata_u64(run, "first_seq"),
            metadata_u64(run, "last_seq"),
            metadata_u64(run, "count")
        ),
        (1, 6000, 6000)
    );
    verify(&url, &tenant);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_short_by_a_killed_replica_is_finished_and_recorded_by_another() {
    let Some(Backend::Postgres(url)) = Backend::postgres() else {
        return;
    };
    let first = ServerProcess::start(&url, &EVERY_SECOND);
    let tenant = new_tenant();
    let mut callers = Vec::new();
    for _ in 0..4 {
        callers.push(first.caller_for(&tenant).await);
    }
    const BACKLOG: u64 = 40_000;
    backlog(callers, 40_000).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut admin = first.admin_for(&tenant).await;
    let erased = Erased::of(&url, &tenant).await;
    set_retention(&mut admin, 1).await;

    // SIGKILL the only replica once its run is under way.
    let start = Instant::now();
    let cut_at = loop {
        let now = erased.count().await;
        if now > 0 {
            break now;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the run never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    first.crash();
    let left_by_the_killed = erased.count().await;
    assert!(
        left_by_the_killed < BACKLOG,
        "the run ended before the kill ({cut_at} then {left_by_the_killed} erased); nothing to prove"
    );

    let second = ServerProcess::start(&url, &EVERY_SECOND);
    let mut reader = second.admin_for(&tenant).await;
    erased.until(BACKLOG, Duration::from_secs(300)).await;
    let start = Instant::now();
    let recorded = loop {
        let recorded = runs(&mut reader).await;
        if !recorded.is_empty() || start.elapsed() > Duration::from_secs(30) {
            break recorded;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let run = &recorded[0];
    assert_eq!(
        (
            metadata_u64(run, "first_seq"),
            metadata_u64(run, "last_seq"),
            metadata_u64(run, "count")
        ),
        (1, BACKLOG, BACKLOG),
        "the record counts what the killed replica erased too ({left_by_the_killed})"
    );
    verify(&url, &tenant);
}

async fn a_retention_run_over_a_200000_event_backlog_leaves_append_served(backend: Backend) {
    const BACKLOG: u64 = 200_000;
    let server = TestServer::start_with(backend, |config| config.retention_interval_secs = 1).await;
    let tenant = new_tenant();
    let mut callers = Vec::new();
    for _ in 0..4 {
        callers.push(server.caller_for(&tenant).await);
    }
    backlog(callers, 200_000).await;
    let first_id = {
        let mut reader = server.caller_for(&tenant).await;
        let page = reader
            .query(audit_service::proto::QueryRequest {
                order_by: "seq asc".into(),
                page_size: 1,
                ..Default::default()
            })
            .await;
        page.events[0].id.clone()
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut admin = server.admin_for(&tenant).await;
    set_retention(&mut admin, 1).await;

    // Append one event at a time until the run is recorded; note those
    // acknowledged after the run had begun (the first event is gone).
    let mut producer = server.caller_for(&tenant).await;
    let mut probe = server.caller_for(&tenant).await;
    let mut started = false;
    let mut appended: u64 = 0;
    let mut during = Vec::new();
    let mut slowest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(600);
    let run = loop {
        let sent = Instant::now();
        let seq = producer.append(vec![event("user.login", "during")]).await[0].seq;
        appended += 1;
        let took = sent.elapsed();
        if started {
            during.push(seq);
            slowest = slowest.max(took);
        } else {
            let request = probe.request(GetRequest { id: first_id.clone() });
            started = probe
                .client
                .get(request)
                .await
                .is_err_and(|s| s.code() == Code::NotFound);
        }
        if during.len() % 20 == 1 {
            let recorded = runs(&mut probe).await;
            if let Some(run) = recorded.into_iter().next() {
                break run;
            }
        }
        assert!(Instant::now() < deadline, "the run did not end within 10 minutes");
    };
    let served = during.iter().filter(|seq| **seq < run.seq).count();
    eprintln!(
        "retention over {BACKLOG} events: {served} appends acknowledged during the run, the slowest in {slowest:?}"
    );
    assert!(
        served >= 20,
        "only {served} appends were acknowledged during the run"
    );
    // On the shared PostgreSQL database another test's server, starting,
    // may join the run with a later clock and so also erase appends made
    // during it: the run then counts those too.
    let (first, last, count) = (
        metadata_u64(&run, "first_seq"),
        metadata_u64(&run, "last_seq"),
        metadata_u64(&run, "count"),
    );
    assert_eq!(first, 1);
    assert!(last >= BACKLOG && count >= BACKLOG, "{first}..={last}: {count}");
    // Later runs erase the appends made during this one (1 s old by then),
    // never more than those.
    let erased = Erased::of(&server.database_url, &tenant).await.count().await;
    assert!(
        erased >= BACKLOG && erased <= BACKLOG + appended,
        "{erased} erased"
    );
}

/// The backends of the sessions `blocker` keeps waiting (PostgreSQL).
async fn sessions_blocked_by(observer: &sea_orm::DatabaseConnection, blocker: i32) -> i64 {
    use sea_orm::{ConnectionTrait, Statement};
    let row = observer
        .query_one_raw(Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            [blocker.into()],
        ))
        .await
        .expect("pg_stat_activity")
        .expect("a row");
    row.try_get("", "n").expect("n")
}

/// A retention batch never holds the tenant's head, so `Append` is served
/// while one waits: here on a row lock another transaction holds on an
/// event the batch erases (a slow disk, a vacuum, a long `Delete` would
/// keep it waiting the same way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_is_served_while_a_retention_batch_waits() {
    use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
    let Some(Backend::Postgres(url)) = Backend::postgres() else {
        return;
    };
    let server = TestServer::start(Backend::Postgres(url.clone())).await;
    let tenant = new_tenant();
    let mut caller = server.caller_for(&tenant).await;
    let seqs: Vec<u64> = caller
        .append(
            (0..10)
                .map(|i| event("document.read", &format!("a{i}")))
                .collect(),
        )
        .await
        .iter()
        .map(|r| r.seq)
        .collect();
    let mut admin = server.admin_for(&tenant).await;
    set_retention(&mut admin, 3600).await;
    let due_at = audit_service::store::now_micros() + 3_600_000_000 + 1_000_000;

    // Another transaction holds the first event's row.
    let db = sea_orm::Database::connect(url.as_str()).await.expect("connect");
    let blocker = db.begin().await.expect("begin");
    let pid: i32 = blocker
        .query_one_raw(Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT pg_backend_pid() AS pid FROM audit_events WHERE tenant_id = $1 AND seq = $2 FOR UPDATE",
            [tenant.clone().into(), i64::try_from(seqs[0]).unwrap().into()],
        ))
        .await
        .expect("lock the row")
        .expect("the row")
        .try_get("", "pid")
        .expect("pid");

    let store = Store::connect(&DatabaseConfig::new(url.clone()))
        .await
        .expect("store");
    let tenant_id = TenantId::parse(&tenant, "tenant").unwrap();
    let run = tokio::spawn(async move {
        let run = store.apply_retention(&tenant_id, due_at, || true).await;
        store.close().await.expect("close");
        run
    });
    let observer = sea_orm::Database::connect(url.as_str()).await.expect("connect");
    let start = Instant::now();
    while sessions_blocked_by(&observer, pid).await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the batch never reached the held row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let append = caller.request(audit_service::proto::AppendRequest {
        events: vec![event("document.read", "during")],
    });
    let appended = tokio::time::timeout(Duration::from_secs(15), caller.client.append(append))
        .await
        .expect("Append waited for the retention batch")
        .expect("append");
    assert_eq!(appended.into_inner().results.len(), 1);

    blocker.rollback().await.expect("release the row");
    let run = run.await.expect("task").expect("retention");
    assert_eq!(run.erased, 10);
    assert!(run.event.is_some(), "the run is recorded");
    verify(&url, &tenant);
}

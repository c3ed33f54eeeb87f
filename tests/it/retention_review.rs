//! Review of #19 (retention and legal holds): behaviours the first tests
//! did not pin down, each found broken or suspected.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use audit_service::entity::audit_event;
use audit_service::proto::{AuditEvent, EventFilter, ReleaseLegalHoldRequest};
use audit_service::tenant::TenantId;
use sea_orm::{ColumnTrait, QueryFilter, QueryOrder};

use crate::integrity::run_verify;
use crate::on_both_backends;
use crate::retention::{
    append_as, apply_at, create_hold, live_events, metadata_i64, of_action, set_retention, store_of,
};
use crate::support::{Backend, Caller, TestServer};

on_both_backends!(
    a_hold_released_while_a_run_is_cut_short_leaves_every_erasure_recorded,
    each_hold_keeps_exactly_what_query_returns_for_its_filter,
    many_holds_together_keep_every_event_any_of_them_matches,
    two_retention_apply_processes_at_once_erase_each_event_once,
    retention_and_delete_still_run_under_many_holds_of_the_largest_filters,
    an_erasure_of_a_held_event_inside_a_retention_runs_range_is_tampering,
    a_hold_and_a_delete_between_batches_of_a_run_are_respected,
    one_tenants_holds_and_locked_retention_never_reach_another,
);

/// Far enough in the future that every event recorded now is due.
fn far_future() -> i64 {
    audit_service::store::now_micros() + 10 * 86_400 * 1_000_000
}

/// The seqs of the tenant's erased rows, as stored.
async fn erased_seqs(server: &TestServer, tenant: &str) -> Vec<i64> {
    let store = store_of(server).await;
    let tenant = TenantId::parse(tenant, "tenant").unwrap();
    let rows = audit_event::Entity::of_tenant(&tenant)
        .filter(audit_event::Column::DeletedAt.is_not_null())
        .order_by_asc(audit_event::Column::Seq)
        .all(store.connection())
        .await
        .expect("rows");
    store.close().await.expect("close");
    rows.into_iter().map(|r| r.seq).collect()
}

/// Every `audit.retention.applied` event's (first_seq, last_seq, count).
fn recorded_runs(events: &[AuditEvent]) -> Vec<(i64, i64, i64)> {
    of_action(events, "audit.retention.applied")
        .into_iter()
        .map(|e| {
            (
                metadata_i64(e, "first_seq").expect("first_seq"),
                metadata_i64(e, "last_seq").expect("last_seq"),
                metadata_i64(e, "count").expect("count"),
            )
        })
        .collect()
}

/// Asserts each seq erased but not by Delete lies in a recorded run's
/// range, the runs' counts add up to those erasures, and `verify` passes.
async fn assert_every_erasure_recorded(server: &TestServer, admin: &mut Caller) {
    let (code, output) = run_verify(server, &admin.tenant, &[]);
    assert_eq!(code, 0, "{output}");
    let events = live_events(admin).await;
    let deleted: BTreeSet<i64> = of_action(&events, "audit.event.deleted")
        .into_iter()
        .filter_map(|e| metadata_i64(e, "deleted_seq"))
        .collect();
    let erased: Vec<i64> = erased_seqs(server, &admin.tenant)
        .await
        .into_iter()
        .filter(|seq| !deleted.contains(seq))
        .collect();
    let runs = recorded_runs(&events);
    let unrecorded: Vec<i64> = erased
        .iter()
        .copied()
        .filter(|seq| !runs.iter().any(|(first, last, _)| (*first..=*last).contains(seq)))
        .collect();
    assert!(
        unrecorded.is_empty(),
        "erased but in no run's range: {unrecorded:?}; runs {runs:?}"
    );
    let counted: i64 = runs.iter().map(|(_, _, count)| count).sum();
    assert_eq!(counted, i64::try_from(erased.len()).unwrap(), "runs {runs:?}");
}

async fn a_hold_released_while_a_run_is_cut_short_leaves_every_erasure_recorded(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    set_retention(&mut admin, Some(60), false).await.expect("set");
    // seq 1 the policy event; 2..=6 held; 7..=606 not.
    append_as(&mut admin, "suspect", 5).await;
    for _ in 0..6 {
        append_as(&mut admin, "bystander", 100).await;
    }
    let hold = create_hold(
        &mut admin,
        EventFilter {
            actor_ids: vec!["suspect".into()],
            ..Default::default()
        },
    )
    .await
    .hold
    .expect("hold");

    // One batch, then the replica stops (a shutdown): the run is cut short.
    let store = store_of(&server).await;
    let tenant_id = TenantId::parse(&tenant, "tenant").unwrap();
    let now = far_future();
    let batches = AtomicUsize::new(0);
    let cut = store
        .apply_retention(&tenant_id, now, || batches.fetch_add(1, Ordering::SeqCst) < 1)
        .await
        .expect("first batch");
    assert!(cut.erased > 0 && cut.event.is_none(), "{cut:?}");

    // The hold is released before the run is finished.
    admin
        .policy()
        .release_legal_hold(admin.request(ReleaseLegalHoldRequest {
            id: hold.id,
            reason: "case closed".into(),
        }))
        .await
        .expect("release");
    let rest = store
        .apply_retention(&tenant_id, now, || true)
        .await
        .expect("rest of the run");
    assert!(rest.event.is_some(), "{rest:?}");
    store.close().await.expect("close");

    assert_every_erasure_recorded(&server, &mut admin).await;
}

/// Filters beside the expression cases: the structured fields.
fn structured_filters() -> Vec<EventFilter> {
    let time = |rfc3339: &str| {
        let t = chrono::DateTime::parse_from_rfc3339(rfc3339).expect("time");
        prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: 0,
        }
    };
    vec![
        EventFilter::default(),
        EventFilter {
            actions: vec!["user.*".into()],
            ..Default::default()
        },
        EventFilter {
            actions: vec!["user.login*".into(), "document.read".into()],
            ..Default::default()
        },
        EventFilter {
            actor_email: "ALICE@example.COM".into(),
            ..Default::default()
        },
        EventFilter {
            actor_email: "carol@example.com".into(),
            expression: "NOT outcome = OUTCOME_SUCCESS".into(),
            ..Default::default()
        },
        EventFilter {
            start_time: Some(time("2026-01-01T00:00:00Z")),
            end_time: Some(time("2026-01-03T00:00:00Z")),
            ..Default::default()
        },
        EventFilter {
            end_time: Some(time("1970-01-01T00:00:00Z")),
            ..Default::default()
        },
        EventFilter {
            resource_ids: vec!["d-42".into()],
            outcomes: vec![audit_service::proto::Outcome::Failure as i32],
            ..Default::default()
        },
        EventFilter {
            sources: vec!["sso".into()],
            client_ip: "203.0.113.7".into(),
            request_id: "r-3".into(),
            ..Default::default()
        },
    ]
}

/// Every filter a test holds with: the expression cases of the Query
/// tests, then the structured ones.
fn hold_filters() -> Vec<EventFilter> {
    crate::expressions::CASES
        .iter()
        .map(|(expression, _)| EventFilter {
            expression: (*expression).to_owned(),
            ..Default::default()
        })
        .chain(structured_filters())
        .collect()
}

/// The seqs of the fixture (1..=7) `filter` returns through Query.
async fn queried_fixture_seqs(caller: &mut Caller, filter: &EventFilter) -> BTreeSet<u64> {
    caller
        .query_all(filter.clone(), "seq asc", 1000)
        .await
        .iter()
        .map(|e| e.seq)
        .filter(|seq| *seq <= 7)
        .collect()
}

/// The fixture's seqs (1..=7) still live.
async fn live_fixture_seqs(caller: &mut Caller) -> BTreeSet<u64> {
    live_events(caller)
        .await
        .iter()
        .map(|e| e.seq)
        .filter(|seq| *seq <= 7)
        .collect()
}

async fn each_hold_keeps_exactly_what_query_returns_for_its_filter(backend: Backend) {
    let server = TestServer::start(backend).await;
    let store = store_of(&server).await;
    let mut failures = Vec::new();
    for filter in hold_filters() {
        let tenant = crate::support::new_tenant();
        let mut admin = server.admin_for(&tenant).await;
        admin.append(crate::expressions::fixture()).await;
        create_hold(&mut admin, filter.clone()).await;
        set_retention(&mut admin, Some(60), false).await.expect("set");
        let held = queried_fixture_seqs(&mut admin, &filter).await;
        let tenant_id = TenantId::parse(&tenant, "tenant").unwrap();
        store
            .apply_retention(&tenant_id, far_future(), || true)
            .await
            .expect("retention");
        let kept = live_fixture_seqs(&mut admin).await;
        if kept != held {
            failures.push(format!(
                "{filter:?}: Query returns {held:?}, retention kept {kept:?}"
            ));
        }
    }
    store.close().await.expect("close");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

async fn many_holds_together_keep_every_event_any_of_them_matches(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    admin.append(crate::expressions::fixture()).await;
    // The holds that keep one event or none: together they must keep the
    // union of what each keeps.
    let mut union = BTreeSet::new();
    let mut holds = 0;
    for filter in hold_filters() {
        let held = queried_fixture_seqs(&mut admin, &filter).await;
        if held.len() <= 1 && holds < 90 {
            union.extend(held);
            create_hold(&mut admin, filter).await;
            holds += 1;
        }
    }
    assert!(holds > 10, "{holds}");
    set_retention(&mut admin, Some(60), false).await.expect("set");
    apply_at(&server, &tenant, far_future()).await;
    assert_eq!(live_fixture_seqs(&mut admin).await, union);
}

/// Starts `audit-service retention apply` on the server's database.
fn spawn_apply(server: &TestServer) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args(["retention", "apply"])
        .env("DATABASE_URL", &server.database_url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn retention apply")
}

/// What `retention apply` printed it erased for `tenant`.
fn erased_by(output: &str, tenant: &str) -> u64 {
    output
        .lines()
        .filter_map(|line| line.strip_prefix(&format!("tenant {tenant}: erased ")))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

async fn two_retention_apply_processes_at_once_erase_each_event_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut admins = Vec::new();
    for _ in 0..2 {
        let tenant = crate::support::new_tenant();
        let mut admin = server.admin_for(&tenant).await;
        for _ in 0..3 {
            append_as(&mut admin, "old", 1000).await;
        }
        admins.push(admin);
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for admin in &mut admins {
        set_retention(admin, Some(1), false).await.expect("set");
    }
    let children = [spawn_apply(&server), spawn_apply(&server)];
    let outputs: Vec<String> = children
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().expect("wait");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(output.status.success(), "{text}");
            text
        })
        .collect();
    for admin in &mut admins {
        let printed: u64 = outputs.iter().map(|o| erased_by(o, &admin.tenant)).sum();
        // Another test's server starting on the shared PostgreSQL database
        // runs the task too, and may take some of the batches.
        assert!(printed <= 3000, "each event erased once: {outputs:?}");
        assert_eq!(erased_seqs(&server, &admin.tenant).await.len(), 3000);
        let runs = recorded_runs(&live_events(admin).await);
        assert_eq!(runs.len(), 1, "one run, recorded once: {runs:?}");
        assert_every_erasure_recorded(&server, admin).await;
    }
}

/// The largest filter validation accepts, in terms: an expression of
/// `MAX_TERMS` metadata comparisons and 100 values in each repeated field.
fn largest_filter(hold: usize) -> EventFilter {
    let terms: Vec<String> = (0..200).map(|i| format!("metadata.k{i}=\"h\"")).collect();
    let values = |prefix: &str| {
        (0..100)
            .map(|i| format!("{prefix}-{hold}-{i}"))
            .collect::<Vec<_>>()
    };
    EventFilter {
        expression: terms.join(" OR "),
        actions: values("held.*"),
        actor_ids: values("a"),
        resource_types: values("t"),
        resource_ids: values("r"),
        sources: values("s"),
        ..Default::default()
    }
}

async fn retention_and_delete_still_run_under_many_holds_of_the_largest_filters(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    let ids: Vec<String> = admin
        .append(vec![
            crate::support::event("document.read", "alice"),
            crate::support::event("document.read", "bob"),
        ])
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    // Holds that keep none of these events, as many as a tenant may have
    // (each validated alone, as Query validates its filter).
    for hold in 0..40 {
        create_hold(&mut admin, largest_filter(hold)).await;
    }
    crate::retention::delete(&mut admin, &ids[0])
        .await
        .expect("Delete of an event no hold keeps");
    set_retention(&mut admin, Some(60), false).await.expect("set");
    let run = apply_at(&server, &tenant, far_future()).await;
    assert_eq!(run.erased, 1, "{run:?}");
}

/// Erases the row at `seq` in the database directly, as Delete would but
/// without its record: what someone with write access to the database
/// could do.
async fn erase_behind_the_services_back(server: &TestServer, tenant: &str, seq: u64) {
    use sea_orm::{ConnectionTrait, IdenStatic};
    let columns: Vec<String> = audit_event::CONTENT_COLUMNS
        .iter()
        .map(|c| format!("{} = NULL", c.as_str()))
        .collect();
    let statement = format!(
        "UPDATE audit_events SET {}, deleted_at = 1 WHERE tenant_id = '{tenant}' AND seq = {seq}",
        columns.join(", ")
    );
    let store = store_of(server).await;
    store
        .connection()
        .execute_unprepared(&statement)
        .await
        .expect("tamper");
    store.close().await.expect("close");
}

async fn an_erasure_of_a_held_event_inside_a_retention_runs_range_is_tampering(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    // seq 1 the policy, 2..=4 erased, 5 held, 6 the hold's record, 7..=9 erased.
    set_retention(&mut admin, Some(60), false).await.expect("set");
    append_as(&mut admin, "bystander", 3).await;
    let held = append_as(&mut admin, "suspect", 1).await[0];
    let hold = create_hold(
        &mut admin,
        EventFilter {
            actor_ids: vec!["suspect".into()],
            ..Default::default()
        },
    )
    .await;
    let hold_record = hold.policy_event.expect("record").seq;
    append_as(&mut admin, "bystander", 3).await;
    let run = apply_at(&server, &tenant, far_future()).await;
    assert_eq!(run.erased, 6, "{run:?}");
    let (code, output) = run_verify(&server, &tenant, &[]);
    assert_eq!(code, 0, "{output}");

    // The held event, and the record of who held it, erased in the
    // database: neither is an erasure retention made.
    erase_behind_the_services_back(&server, &tenant, held).await;
    erase_behind_the_services_back(&server, &tenant, hold_record).await;
    let (code, output) = run_verify(&server, &tenant, &[]);
    assert_eq!(code, 2, "verify must report tampering:\n{output}");
}

async fn a_hold_and_a_delete_between_batches_of_a_run_are_respected(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    set_retention(&mut admin, Some(60), false).await.expect("set");
    for _ in 0..7 {
        append_as(&mut admin, "bystander", 100).await;
    }
    let suspect = append_as(&mut admin, "suspect", 5).await;
    let later = admin
        .append(
            (0..100)
                .map(|_| crate::support::event("document.read", "late"))
                .collect(),
        )
        .await;
    for _ in 0..4 {
        append_as(&mut admin, "bystander", 100).await;
    }
    let store = store_of(&server).await;
    let tenant_id = TenantId::parse(&tenant, "tenant").unwrap();
    let now = far_future();
    let batches = AtomicUsize::new(0);
    store
        .apply_retention(&tenant_id, now, || batches.fetch_add(1, Ordering::SeqCst) < 1)
        .await
        .expect("first batch");

    // Between two batches: a hold on events not yet reached, and a Delete.
    create_hold(
        &mut admin,
        EventFilter {
            actor_ids: vec!["suspect".into()],
            ..Default::default()
        },
    )
    .await;
    crate::retention::delete(&mut admin, &later[50].id)
        .await
        .expect("delete");
    let rest = store
        .apply_retention(&tenant_id, now, || true)
        .await
        .expect("rest of the run");
    store.close().await.expect("close");
    assert!(rest.event.is_some(), "{rest:?}");

    let live: BTreeSet<u64> = live_events(&mut admin).await.iter().map(|e| e.seq).collect();
    assert!(suspect.iter().all(|s| live.contains(s)), "held events stay");
    assert_eq!(
        erased_seqs(&server, &tenant).await.len(),
        700 + 100 + 400,
        "everything else erased, once"
    );
    assert_every_erasure_recorded(&server, &mut admin).await;
}

async fn one_tenants_holds_and_locked_retention_never_reach_another(backend: Backend) {
    use audit_service::proto::ListLegalHoldsRequest;
    use tonic::Code;

    let server = TestServer::start(backend).await;
    let mut a = server.admin_for(&crate::support::new_tenant()).await;
    let mut b = server.admin_for(&crate::support::new_tenant()).await;
    // A holds its whole log and locks a year; B keeps events a minute.
    let hold = create_hold(&mut a, EventFilter::default())
        .await
        .hold
        .expect("hold");
    set_retention(&mut a, Some(365 * 86_400), true)
        .await
        .expect("lock");
    set_retention(&mut b, Some(60), false).await.expect("set");
    let a_ids: Vec<String> = a
        .append(vec![crate::support::event("document.read", "alice")])
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    let b_ids: Vec<String> = b
        .append(vec![
            crate::support::event("document.read", "alice"),
            crate::support::event("document.read", "alice"),
        ])
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();

    let refused = crate::retention::delete(&mut a, &a_ids[0])
        .await
        .expect_err("held");
    crate::support::assert_status(&refused, Code::FailedPrecondition, "LEGAL_HOLD", None);
    crate::retention::delete(&mut b, &b_ids[0])
        .await
        .expect("A's hold and lock are not B's");
    let foreign = b
        .policy()
        .release_legal_hold(b.request(ReleaseLegalHoldRequest {
            id: hold.id.clone(),
            reason: "not mine".into(),
        }))
        .await
        .expect_err("A's hold");
    crate::support::assert_status(&foreign, Code::NotFound, "NOT_FOUND", None);
    let listed = b
        .policy()
        .list_legal_holds(b.request(ListLegalHoldsRequest {
            include_released: true,
        }))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.holds.is_empty(), "{listed:?}");

    for caller in [&a, &b] {
        apply_at(&server, &caller.tenant, far_future()).await;
    }
    assert_eq!(erased_seqs(&server, &a.tenant).await, Vec::<i64>::new());
    assert_eq!(erased_seqs(&server, &b.tenant).await.len(), 2);
    assert_every_erasure_recorded(&server, &mut b).await;
}

/// On SQLite only: on the PostgreSQL database the tests share, the corrupt
/// hold would fail other tests' `retention apply` runs while it exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_apply_fails_loudly_when_a_tenants_run_fails() {
    use sea_orm::ConnectionTrait;

    let server = TestServer::start(Backend::Sqlite).await;
    let tenant = crate::support::new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    append_as(&mut admin, "old", 3).await;
    create_hold(&mut admin, EventFilter::default()).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    set_retention(&mut admin, Some(1), false).await.expect("set");
    // A hold whose stored filter no longer decodes: the tenant's run fails.
    let store = store_of(&server).await;
    store
        .connection()
        .execute_unprepared(&format!(
            "UPDATE legal_holds SET filter = X'FFFFFFFF' WHERE tenant_id = '{tenant}'"
        ))
        .await
        .expect("corrupt the hold");
    store.close().await.expect("close");

    let output = spawn_apply(&server).wait_with_output().expect("wait");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !output.status.success(),
        "a run that failed is not a success:\n{text}"
    );
    assert!(text.contains(&tenant), "the failed tenant is named:\n{text}");
    assert_eq!(erased_seqs(&server, &tenant).await, Vec::<i64>::new());
}

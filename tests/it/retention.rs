//! PolicyService: retention (locked or not) enforced by the service, legal
//! holds, and the log's record of every change to its own rules.

use std::collections::BTreeSet;
use std::time::Duration;

use audit_service::config::DatabaseConfig;
use audit_service::entity::audit_event;
use audit_service::proto::get_inclusion_proof_request::Target;
use audit_service::proto::{
    AuditEvent, CreateLegalHoldRequest, CreateLegalHoldResponse, DeleteRequest, EventFilter, EventInput,
    GetCheckpointRequest, GetConsistencyProofRequest, GetInclusionProofRequest, GetRetentionRequest,
    ListLegalHoldsRequest, ReleaseLegalHoldRequest, SetRetentionRequest, SetRetentionResponse,
};
use audit_service::store::{Store, now_micros};
use audit_service::tenant::TenantId;
use prost_types::value::Kind;
use sea_orm::{ColumnTrait, QueryFilter};
use tonic::{Code, Status};

use crate::fixtures::{get_status, status_of};
use crate::integrity::{consistency_holds, leaf_of, open_checkpoint, root_from_inclusion, run_verify};
use crate::on_both_backends;
use crate::support::{Backend, Caller, Credential, TestServer, assert_status, claims, event, hs256_token};

on_both_backends!(
    retention_erases_only_what_is_due_and_every_proof_still_verifies,
    retention_apply_command_runs_the_task_now,
    a_held_event_survives_retention_and_delete_until_its_hold_is_released,
    locked_retention_only_grows_and_refuses_early_deletes,
    every_policy_change_is_recorded_naming_the_caller,
    policy_service_needs_the_admin_scope,
    bad_policy_requests_are_invalid_argument,
    erased_content_is_cleared_in_storage,
    records_of_reads_go_when_due_and_policy_records_stay,
    one_tenants_long_run_does_not_hold_up_another_tenants_retention,
);

// ---- helpers ----------------------------------------------------------------

pub(crate) async fn set_retention(
    admin: &mut Caller,
    seconds: Option<i64>,
    locked: bool,
) -> Result<SetRetentionResponse, Status> {
    let request = admin.request(SetRetentionRequest {
        period: seconds.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
        locked,
        reason: "records schedule RS-7".into(),
    });
    admin
        .policy()
        .set_retention(request)
        .await
        .map(|r| r.into_inner())
}

pub(crate) async fn create_hold(admin: &mut Caller, filter: EventFilter) -> CreateLegalHoldResponse {
    let request = admin.request(CreateLegalHoldRequest {
        filter: Some(filter),
        reason: "litigation 2026-CV-001".into(),
    });
    admin
        .policy()
        .create_legal_hold(request)
        .await
        .expect("create hold")
        .into_inner()
}

pub(crate) async fn delete(caller: &mut Caller, id: &str) -> Result<(), Status> {
    let request = caller.request(DeleteRequest {
        id: id.to_owned(),
        reason: "erasure request".into(),
    });
    caller.client.delete(request).await.map(|_| ())
}

/// A store on the server's database, as the retention task of another
/// replica (or `retention apply`) would use it.
pub(crate) async fn store_of(server: &TestServer) -> Store {
    Store::connect(&DatabaseConfig::new(server.database_url.clone()))
        .await
        .expect("store")
}

/// Runs retention over `tenant` as of `now`: what the task does when its
/// clock reads `now`.
pub(crate) async fn apply_at(
    server: &TestServer,
    tenant: &str,
    now: i64,
) -> audit_service::store::RetentionRun {
    let store = store_of(server).await;
    let tenant = TenantId::parse(tenant, "tenant").unwrap();
    let run = store
        .apply_retention(&tenant, now, || true)
        .await
        .expect("retention");
    store.close().await.expect("close");
    run
}

/// Every event of the log (live ones in full; erased ones are missing).
pub(crate) async fn live_events(caller: &mut Caller) -> Vec<AuditEvent> {
    caller.query_all(EventFilter::default(), "seq asc", 1000).await
}

pub(crate) fn metadata_i64(event: &AuditEvent, key: &str) -> Option<i64> {
    match event.metadata.as_ref()?.fields.get(key)?.kind {
        // JSON numbers arrive as f64 and these are small and whole.
        #[allow(clippy::cast_possible_truncation)]
        Some(Kind::NumberValue(n)) => Some(n as i64),
        _ => None,
    }
}

pub(crate) fn seqs_of(events: &[AuditEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

pub(crate) fn of_action<'a>(events: &'a [AuditEvent], action: &str) -> Vec<&'a AuditEvent> {
    events.iter().filter(|e| e.action == action).collect()
}

/// Appends `count` events of `actor` and returns them as stored.
pub(crate) async fn append_as(caller: &mut Caller, actor: &str, count: usize) -> Vec<u64> {
    let events: Vec<EventInput> = (0..count).map(|_| event("document.read", actor)).collect();
    caller.append(events).await.iter().map(|r| r.seq).collect()
}

/// A moment strictly between two appends.
pub(crate) async fn a_moment_later() -> i64 {
    tokio::time::sleep(Duration::from_millis(5)).await;
    let at = now_micros();
    tokio::time::sleep(Duration::from_millis(5)).await;
    at
}

// ---- tests ------------------------------------------------------------------

async fn retention_erases_only_what_is_due_and_every_proof_still_verifies(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    // seq 1: the policy event; 2..=6 old events; 7..=9 new ones.
    let set = set_retention(&mut admin, Some(3600), false)
        .await
        .expect("set retention");
    assert_eq!(set.policy_event.as_ref().map(|e| e.seq), Some(1));
    let old = append_as(&mut admin, "old", 5).await;
    assert_eq!(old, [2, 3, 4, 5, 6]);
    let cutoff = a_moment_later().await;
    let new = append_as(&mut admin, "new", 3).await;
    let before = live_events(&mut admin).await;

    let mut integrity = admin.integrity();
    let first = integrity
        .get_checkpoint(admin.request(GetCheckpointRequest {}))
        .await
        .expect("checkpoint")
        .into_inner();
    assert_eq!(first.tree_size, 9);

    // As the task would see it an hour after `cutoff`.
    let run = apply_at(&server, &tenant, cutoff + 3600 * 1_000_000).await;
    assert_eq!(run.erased, 5, "{run:?}");
    let recorded = run.event.expect("the run is recorded");
    assert_eq!(recorded.seq, 10);

    let after = live_events(&mut admin).await;
    let expected: Vec<u64> = [1].into_iter().chain(new.clone()).chain([10]).collect();
    assert_eq!(
        seqs_of(&after),
        expected,
        "policy record, new events and the run's record stay"
    );
    for event in before.iter().filter(|e| old.contains(&e.seq)) {
        assert_eq!(get_status(&mut admin, &event.id).await.code(), Code::NotFound);
    }
    let applied = of_action(&after, "audit.retention.applied");
    assert_eq!(applied.len(), 1);
    let applied = applied[0];
    assert_eq!(
        applied.actor.as_ref().map(|a| a.id.as_str()),
        Some("audit-service/retention")
    );
    assert_eq!(metadata_i64(applied, "first_seq"), Some(2));
    assert_eq!(metadata_i64(applied, "last_seq"), Some(6));
    assert_eq!(metadata_i64(applied, "count"), Some(5));
    assert_eq!(metadata_i64(applied, "period_seconds"), Some(3600));

    // Nothing more is due: a second run erases and records nothing.
    let again = apply_at(&server, &tenant, cutoff + 3600 * 1_000_000).await;
    assert_eq!((again.erased, again.event.is_none()), (0, true), "{again:?}");

    // Every proof still holds: the earlier checkpoint is a prefix of the
    // later one, and every event, erased or not, is at its seq with the
    // leaf of its original content.
    let second = integrity
        .get_checkpoint(admin.request(GetCheckpointRequest {}))
        .await
        .expect("checkpoint")
        .into_inner();
    assert_eq!(second.tree_size, 10);
    let (_, root) = open_checkpoint(&second.note, &first.verifier_key).expect("signed checkpoint");
    let consistency = integrity
        .get_consistency_proof(admin.request(GetConsistencyProofRequest {
            first_tree_size: 9,
            second_tree_size: 10,
        }))
        .await
        .expect("consistency")
        .into_inner();
    assert!(consistency_holds(
        9,
        10,
        &first.root_hash,
        &second.root_hash,
        &consistency.hashes
    ));
    for event in before.iter().chain([applied]) {
        let proof = integrity
            .get_inclusion_proof(admin.request(GetInclusionProofRequest {
                target: Some(Target::Seq(event.seq)),
                tree_size: 10,
            }))
            .await
            .expect("inclusion")
            .into_inner();
        assert_eq!(
            root_from_inclusion(event.seq - 1, 10, leaf_of(event), &proof.hashes),
            Some(root),
            "seq {}",
            event.seq
        );
    }
    let (code, output) = run_verify(&server, &tenant, &[]);
    assert_eq!(code, 0, "{output}");
}

async fn retention_apply_command_runs_the_task_now(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    let old = append_as(&mut admin, "old", 3).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    set_retention(&mut admin, Some(1), false)
        .await
        .expect("set retention");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args(["retention", "apply"])
        .env("DATABASE_URL", &server.database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run audit-service retention apply");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // On the shared PostgreSQL database another test's server, starting,
    // runs retention over every tenant and may have erased them first: the
    // command then finds nothing left to do, and the log is the same.
    let postgres = matches!(server.backend, Backend::Postgres(_));
    assert!(
        stdout.contains(&format!(
            "tenant {tenant}: erased 3 events; run recorded at seq 5"
        )) || (postgres && stdout.contains(&format!("tenant {tenant}: erased 0 events"))),
        "{stdout}"
    );
    let left = live_events(&mut admin).await;
    assert!(left.iter().all(|e| !old.contains(&e.seq)), "{:?}", seqs_of(&left));
    assert_eq!(
        left.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["audit.policy.retention.set", "audit.retention.applied"]
    );
}

async fn a_held_event_survives_retention_and_delete_until_its_hold_is_released(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    set_retention(&mut admin, Some(60), false)
        .await
        .expect("set retention");
    let suspect = append_as(&mut admin, "suspect", 2).await;
    let others = append_as(&mut admin, "bystander", 2).await;
    let held = create_hold(
        &mut admin,
        EventFilter {
            actor_ids: vec!["suspect".into()],
            ..Default::default()
        },
    )
    .await;
    let hold = held.hold.expect("hold");
    let hold_id = hold.id.clone();
    let created = held.policy_event.expect("policy event");
    assert_eq!(created.action, "audit.policy.legal_hold.created");
    assert_eq!(
        created.resource.as_ref().map(|r| r.id.as_str()),
        Some(hold_id.as_str())
    );
    let cutoff = a_moment_later().await;

    // Delete is refused, naming the hold.
    let events = live_events(&mut admin).await;
    let suspect_event = events.iter().find(|e| e.seq == suspect[0]).unwrap();
    let refused = delete(&mut admin, &suspect_event.id).await.expect_err("held");
    assert_status(&refused, Code::FailedPrecondition, "LEGAL_HOLD", None);
    let info = tonic_types::StatusExt::get_error_details(&refused);
    assert_eq!(
        info.error_info()
            .and_then(|i| i.metadata.get("hold_id"))
            .map(String::as_str),
        Some(hold_id.as_str())
    );

    // Retention skips what the hold keeps.
    let later = cutoff + 3600 * 1_000_000;
    let run = apply_at(&server, &tenant, later).await;
    assert_eq!(run.erased, 2, "only the bystander's events: {run:?}");
    let left = seqs_of(&live_events(&mut admin).await);
    assert!(
        suspect.iter().all(|s| left.contains(s)),
        "held events stay: {left:?}"
    );
    assert!(others.iter().all(|s| !left.contains(s)), "others go: {left:?}");

    // A second hold on the same events; releasing the first leaves them held.
    let second = create_hold(
        &mut admin,
        EventFilter {
            expression: "actor.id = \"suspect\"".into(),
            ..Default::default()
        },
    )
    .await
    .hold
    .expect("hold");
    let release = |id: String| ReleaseLegalHoldRequest {
        id,
        reason: "case closed".into(),
    };
    let released = admin
        .policy()
        .release_legal_hold(admin.request(release(hold_id.clone())))
        .await
        .expect("release")
        .into_inner();
    assert_eq!(
        released.hold.as_ref().map(|h| h.released_by.as_str()),
        Some("compliance-officer")
    );
    assert_eq!(
        released.policy_event.as_ref().map(|e| e.action.as_str()),
        Some("audit.policy.legal_hold.released")
    );
    assert_eq!(apply_at(&server, &tenant, later).await.erased, 0);
    let refused = delete(&mut admin, &suspect_event.id)
        .await
        .expect_err("still held");
    assert_status(&refused, Code::FailedPrecondition, "LEGAL_HOLD", None);

    // Released twice is refused; both released, the next run erases them.
    let twice = admin
        .policy()
        .release_legal_hold(admin.request(release(hold_id.clone())))
        .await
        .expect_err("released already");
    assert_status(&twice, Code::FailedPrecondition, "HOLD_RELEASED", None);
    admin
        .policy()
        .release_legal_hold(admin.request(release(second.id.clone())))
        .await
        .expect("release the second");
    let run = apply_at(&server, &tenant, later).await;
    assert_eq!(run.erased, 2, "what the holds kept goes once released: {run:?}");
    let left = seqs_of(&live_events(&mut admin).await);
    assert!(suspect.iter().all(|s| !left.contains(s)), "{left:?}");

    let listed = admin
        .policy()
        .list_legal_holds(admin.request(ListLegalHoldsRequest {
            include_released: false,
        }))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.holds.is_empty());
    let listed = admin
        .policy()
        .list_legal_holds(admin.request(ListLegalHoldsRequest {
            include_released: true,
        }))
        .await
        .expect("list")
        .into_inner();
    let ids: BTreeSet<&str> = listed.holds.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from([hold_id.as_str(), second.id.as_str()]));
    assert!(
        listed
            .holds
            .iter()
            .all(|h| h.release_time.is_some() && h.release_reason == "case closed")
    );
    let (code, output) = run_verify(&server, &tenant, &[]);
    assert_eq!(code, 0, "{output}");
}

async fn locked_retention_only_grows_and_refuses_early_deletes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    let locked = set_retention(&mut admin, Some(3600), true).await.expect("lock");
    assert_eq!(
        locked.policy_event.as_ref().map(|e| e.action.as_str()),
        Some("audit.policy.retention.locked")
    );
    for (seconds, lock) in [
        (Some(1800), true),
        (None, false),
        (Some(7200), false),
        (Some(3599), true),
    ] {
        let refused = set_retention(&mut admin, seconds, lock)
            .await
            .expect_err("locked");
        assert_status(&refused, Code::FailedPrecondition, "RETENTION_LOCKED", None);
    }
    let grown = set_retention(&mut admin, Some(7200), true).await.expect("grow");
    assert_eq!(
        grown.policy_event.as_ref().map(|e| e.action.as_str()),
        Some("audit.policy.retention.set")
    );
    let policy = admin
        .policy()
        .get_retention(admin.request(GetRetentionRequest {}))
        .await
        .expect("get retention")
        .into_inner();
    assert_eq!(policy.period.map(|p| p.seconds), Some(7200));
    assert!(policy.locked);
    assert_eq!(policy.updated_by, "compliance-officer");

    let young = admin.append(vec![event("document.read", "alice")]).await[0]
        .id
        .clone();
    let refused = delete(&mut admin, &young)
        .await
        .expect_err("younger than the locked period");
    assert_status(&refused, Code::FailedPrecondition, "RETENTION_LOCKED", None);
    assert_eq!(
        seqs_of(&live_events(&mut admin).await).len(),
        3,
        "the lock, the change and the event: nothing erased, nothing recorded"
    );

    // An event older than a locked period may be deleted.
    let tenant = crate::support::new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    let old = admin.append(vec![event("document.read", "bob")]).await[0]
        .id
        .clone();
    set_retention(&mut admin, Some(1), true)
        .await
        .expect("lock at 1 s");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    match delete(&mut admin, &old).await {
        Ok(()) => {}
        // Every server on a shared PostgreSQL database runs retention over
        // every tenant when it starts: one may have erased the event first,
        // which its run's record then says.
        Err(status) if status.code() == Code::NotFound => {
            let runs = admin
                .query_all(
                    EventFilter {
                        actions: vec!["audit.retention.applied".into()],
                        ..Default::default()
                    },
                    "seq asc",
                    10,
                )
                .await;
            assert!(
                runs.iter().any(|run| metadata_i64(run, "first_seq") == Some(1)),
                "{status:?}, and no retention run erased it: {runs:?}"
            );
        }
        Err(status) => panic!("an event older than the locked period may be deleted: {status:?}"),
    }
}

async fn every_policy_change_is_recorded_naming_the_caller(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    let set = set_retention(&mut admin, Some(86_400), false).await.expect("set");
    let hold = create_hold(
        &mut admin,
        EventFilter {
            actions: vec!["user.*".into()],
            ..Default::default()
        },
    )
    .await;
    let returned = [set.policy_event.unwrap(), hold.policy_event.unwrap()];
    let logged = live_events(&mut admin).await;
    assert_eq!(logged, returned, "the responses carry the events as logged");
    let retention = &logged[0];
    assert_eq!(retention.action, "audit.policy.retention.set");
    assert_eq!(retention.source, "audit-service");
    assert_eq!(retention.reasoning, "records schedule RS-7");
    assert_eq!(metadata_i64(retention, "period_seconds"), Some(86_400));
    for event in &logged {
        let actor = event.actor.as_ref().expect("actor");
        assert_eq!(actor.id, "compliance-officer");
        assert!(event.action.starts_with("audit.policy."));
        // The log's own records cannot be deleted.
        let refused = delete(&mut admin, &event.id).await.expect_err("protected");
        assert_status(&refused, Code::FailedPrecondition, "PROTECTED_EVENT", None);
    }
    let filter = logged[1].metadata.as_ref().unwrap().fields.get("filter").unwrap();
    assert!(format!("{filter:?}").contains("user.*"), "{filter:?}");
}

async fn policy_service_needs_the_admin_scope(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    // Every other scope, audit:write included, is not enough.
    let mut writer = server.caller_for(&tenant).await;
    let refused = set_retention(&mut writer, Some(60), false)
        .await
        .expect_err("no admin scope");
    assert_status(&refused, Code::PermissionDenied, "MISSING_SCOPE", None);
    let details = tonic_types::StatusExt::get_error_details(&refused);
    assert_eq!(
        details
            .error_info()
            .and_then(|i| i.metadata.get("scope"))
            .map(String::as_str),
        Some("audit:admin")
    );
    let status = status_of(
        writer
            .policy()
            .list_legal_holds(writer.request(ListLegalHoldsRequest::default()))
            .await,
    );
    assert_status(&status, Code::PermissionDenied, "MISSING_SCOPE", None);
    let status = status_of(
        writer
            .policy()
            .get_retention(writer.request(GetRetentionRequest {}))
            .await,
    );
    assert_status(&status, Code::PermissionDenied, "MISSING_SCOPE", None);

    // audit:admin alone does not delete (nor does it imply audit:write).
    let mut admin_only = server
        .caller_with(
            &tenant,
            Credential::Bearer(hs256_token(&claims("officer", &tenant, "audit:admin"))),
        )
        .await;
    set_retention(&mut admin_only, Some(60), false)
        .await
        .expect("admin sets retention");
    let id = writer.append(vec![event("document.read", "alice")]).await[0]
        .id
        .clone();
    let refused = delete(&mut admin_only, &id).await.expect_err("no write scope");
    assert_status(&refused, Code::PermissionDenied, "MISSING_SCOPE", None);

    // An API key minted with audit:admin works; no credential does not.
    let (_, key) = server.mint_api_key(&tenant, &["audit:admin"]).await;
    let keyed = server.caller_with(&tenant, Credential::ApiKey(key)).await;
    let policy = keyed
        .policy()
        .get_retention(keyed.request(GetRetentionRequest {}))
        .await
        .expect("api key with audit:admin")
        .into_inner();
    assert_eq!(policy.period.map(|p| p.seconds), Some(60));
    let mut anonymous = server.caller_with(&tenant, Credential::None).await;
    let refused = set_retention(&mut anonymous, Some(1), false)
        .await
        .expect_err("no credential");
    assert_eq!(refused.code(), Code::Unauthenticated);
    // Another tenant's policy is its own.
    let other = server.admin_for(&crate::support::new_tenant()).await;
    let theirs = other
        .policy()
        .get_retention(other.request(GetRetentionRequest {}))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(theirs.period, None);
}

async fn bad_policy_requests_are_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut admin = server.admin_for(&crate::support::new_tenant()).await;
    for (seconds, nanos) in [(0, 0), (-1, 0), (10, 500)] {
        let request = admin.request(SetRetentionRequest {
            period: Some(prost_types::Duration { seconds, nanos }),
            ..Default::default()
        });
        let refused = admin
            .policy()
            .set_retention(request)
            .await
            .expect_err("bad period");
        assert_status(
            &refused,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("period"),
        );
    }
    let refused = set_retention(&mut admin, None, true)
        .await
        .expect_err("lock without a period");
    assert_status(
        &refused,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("period"),
    );

    let request = admin.request(CreateLegalHoldRequest {
        filter: Some(EventFilter {
            expression: "actor.id = ".into(),
            ..Default::default()
        }),
        reason: String::new(),
    });
    let refused = admin
        .policy()
        .create_legal_hold(request)
        .await
        .expect_err("bad hold");
    assert_status(
        &refused,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("filter.expression"),
    );
    assert_status(
        &refused,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("reason"),
    );

    for (id, code) in [
        ("", Code::InvalidArgument),
        ("not-a-uuid", Code::InvalidArgument),
        ("0190d1a4-8b5c-7cde-9f00-112233445566", Code::NotFound),
    ] {
        let request = admin.request(ReleaseLegalHoldRequest {
            id: id.into(),
            reason: "x".into(),
        });
        let refused = admin
            .policy()
            .release_legal_hold(request)
            .await
            .expect_err("bad release");
        assert_eq!(refused.code(), code, "{id:?}: {refused:?}");
    }
    // Nothing of it was recorded.
    assert!(live_events(&mut admin).await.is_empty());
}

async fn erased_content_is_cleared_in_storage(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    // A marker in every kind of content column, and one large enough that
    // SQLite keeps it on overflow pages.
    let marker = format!("erase-me-{}", uuid::Uuid::now_v7().simple());
    let mut big = event("document.read", &marker);
    big.reasoning = format!("{marker} {}", "x".repeat(20_000));
    big.metadata = Some(prost_types::Struct {
        fields: [(
            "note".to_owned(),
            prost_types::Value {
                kind: Some(Kind::StringValue(marker.clone())),
            },
        )]
        .into(),
    });
    admin.append(vec![big, event("document.read", &marker)]).await;
    set_retention(&mut admin, Some(60), false).await.expect("set");
    let run = apply_at(&server, &tenant, now_micros() + 3600 * 1_000_000).await;
    assert_eq!(run.erased, 2);
    // SQLite: what retention's task does after a run that erased anything.
    let store = store_of(&server).await;
    store.reclaim_erased_space().await.expect("reclaim");

    let tenant_id = TenantId::parse(&tenant, "tenant").unwrap();
    let rows = audit_event::Entity::of_tenant(&tenant_id)
        .filter(audit_event::Column::Seq.lte(2))
        .all(store.connection())
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2, "the rows stay");
    for row in rows {
        assert!(row.deleted_at.is_some());
        assert_eq!(
            row.clone().erased(row.deleted_at.unwrap()),
            row,
            "every content column is NULL"
        );
    }
    store.close().await.expect("close");

    if let Backend::Sqlite = server.backend {
        // Zeroed in the file itself (secure_delete), and the write-ahead
        // log that held the pages as they were is checkpointed away.
        let path = server
            .database_url
            .trim_start_matches("sqlite://")
            .split('?')
            .next()
            .unwrap()
            .to_owned();
        for file in [path.clone(), format!("{path}-wal")] {
            let Ok(bytes) = std::fs::read(&file) else { continue };
            let found = bytes.windows(marker.len()).any(|w| w == marker.as_bytes());
            assert!(!found, "{file} still holds the erased content");
        }
    }
}

/// Access records are erased when due, like what they recorded (the log
/// does not grow with every read for good); the records of policy changes
/// and of retention runs stay.
async fn records_of_reads_go_when_due_and_policy_records_stay(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    // seq 1: retention set; 2: access audit set; 3: an event; 4: the read.
    set_retention(&mut admin, Some(3600), false)
        .await
        .expect("set retention");
    let request = admin.request(audit_service::proto::SetAccessAuditRequest {
        enabled: true,
        reason: "review who reads".into(),
    });
    admin
        .policy()
        .set_access_audit(request)
        .await
        .expect("set access audit");
    append_as(&mut admin, "old", 1).await;
    let read = admin.query(audit_service::proto::QueryRequest::default()).await;
    assert_eq!(read.events.len(), 3);
    let cutoff = a_moment_later().await;

    let run = apply_at(&server, &tenant, cutoff + 3600 * 1_000_000).await;
    assert_eq!(run.erased, 2, "the event and the record of its read: {run:?}");
    assert!(run.event.is_some(), "the run is recorded");
    let after = live_events(&mut admin).await;
    let applied = of_action(&after, "audit.retention.applied");
    assert_eq!(applied.len(), 1);
    assert_eq!(
        (
            metadata_i64(applied[0], "first_seq"),
            metadata_i64(applied[0], "last_seq")
        ),
        (Some(3), Some(4))
    );

    let reads = EventFilter {
        actions: vec!["audit.log.read".into()],
        ..Default::default()
    };
    // (The reads since the run are recorded in turn, after it.)
    let records = admin.query_all(reads, "seq asc", 10).await;
    assert!(records.iter().all(|r| r.seq > 4), "{records:?}");
    let kept: Vec<String> = after
        .iter()
        .filter(|e| e.seq <= 4)
        .map(|e| e.action.clone())
        .collect();
    assert_eq!(
        kept,
        ["audit.policy.retention.set", "audit.policy.access_audit.set"],
        "the policy records stay"
    );
    let (code, output) = run_verify(&server, &tenant, &[]);
    assert_eq!(code, 0, "{output}");
}

/// When each of the tenant's retention runs was recorded, in seq order.
async fn runs_recorded_at(admin: &mut Caller) -> Vec<(i64, i32)> {
    of_action(&live_events(admin).await, "audit.retention.applied")
        .into_iter()
        .map(|e| {
            let at = e.recorded_at.as_ref().expect("recorded_at");
            (at.seconds, at.nanos)
        })
        .collect()
}

/// The retention task takes the tenants' batches in turn: a tenant with a
/// few due events has its run recorded before a tenant listed before it,
/// with a backlog of many batches, ends its own (it used to wait for it).
async fn one_tenants_long_run_does_not_hold_up_another_tenants_retention(backend: Backend) {
    let server = TestServer::start(backend).await;
    // Tenant ids made later sort later: the task lists `long` first.
    let long = crate::support::new_tenant();
    let short = crate::support::new_tenant();
    assert!(long < short);
    let mut long_admin = server.admin_for(&long).await;
    let mut short_admin = server.admin_for(&short).await;
    for _ in 0..4 {
        append_as(&mut long_admin, "old", 1000).await;
    }
    append_as(&mut short_admin, "old", 3).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for admin in [&mut long_admin, &mut short_admin] {
        set_retention(admin, Some(1), false).await.expect("set retention");
    }

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args(["retention", "apply"])
        .env("DATABASE_URL", &server.database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run audit-service retention apply");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let long_runs = runs_recorded_at(&mut long_admin).await;
    let short_runs = runs_recorded_at(&mut short_admin).await;
    assert_eq!(long_runs.len(), 1, "{long_runs:?}");
    assert_eq!(short_runs.len(), 1, "{short_runs:?}");
    assert!(
        short_runs[0] < long_runs[0],
        "the 3-event run was recorded at {:?}, after the 4000-event run ({:?})",
        short_runs[0],
        long_runs[0]
    );
}

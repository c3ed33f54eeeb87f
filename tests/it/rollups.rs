//! Rollups: every `Stats` the rollups answer equals the scan's answer
//! after random appends, deletions and retention; what answered is
//! reported; `rollups rebuild` repairs them; `GetFilterMetadata` lists
//! only values live events have.

use std::time::Duration;

use audit_service::convert::micros_to_timestamp;
use audit_service::filter::EventMatcher;
use audit_service::proto::{
    self, ActorType, EventFilter, EventInput, Outcome, StatsRequest, StatsResponse, StatsSource,
};
use audit_service::store::stats::{GroupField, ScanLimits, StatsQuery, StatsSource as Answered};
use audit_service::tenant::TenantId;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use sea_orm::{ConnectionTrait, Statement};

use crate::filter_metadata::metadata;
use crate::on_both_backends;
use crate::retention::{a_moment_later, apply_at, delete, set_retention, store_of};
use crate::support::{Backend, Caller, TestServer, event, new_tenant};

on_both_backends!(
    rollup_answers_equal_the_scans_after_appends_deletions_and_retention,
    stats_says_whether_rollups_or_a_scan_answered,
    rollups_rebuild_recomputes_corrupted_rollups_from_the_events,
    rollups_rebuilt_while_appends_and_deletes_go_on_stay_exact,
    filter_metadata_drops_values_whose_last_event_is_erased,
    a_scan_out_of_time_answers_partially_naming_the_seq_it_reached,
);

const HOUR: i64 = 3_600_000_000;
const ACTIONS: [&str; 5] = [
    "user.login",
    "user.logout",
    "document.read",
    "document.write",
    "api_key.create",
];
const RESOURCE_TYPES: [&str; 3] = ["document", "session", ""];
const SOURCES: [&str; 3] = ["sso", "docs", ""];
const OUTCOMES: [Outcome; 3] = [Outcome::Success, Outcome::Failure, Outcome::Intent];
const ACTOR_TYPES: [ActorType; 3] = [ActorType::User, ActorType::Service, ActorType::ApiKey];
const DIMENSIONS: [&str; 5] = ["action", "outcome", "actor.type", "resource.type", "source"];
/// An expression every live event matches: it sends a request to the scan.
const ALWAYS: &str = "seq > 0";

/// Where a log's events occur: within 30 hours either side of `base`.
#[derive(Debug, Clone, Copy)]
struct Span {
    base: i64,
    /// Whether a bucketed request needs both bounds: the log's service
    /// events (deletions, retention) occur now, far from `base`.
    bounded_buckets: bool,
}

impl Span {
    /// Around the hour that is starting now, where the service's own
    /// events also occur.
    fn now() -> Self {
        let now = audit_service::store::now_micros();
        Self {
            base: now - now.rem_euclid(HOUR),
            bounded_buckets: false,
        }
    }

    /// Around the epoch, so some hours are before 1970.
    fn epoch() -> Self {
        Self {
            base: 0,
            bounded_buckets: true,
        }
    }
}

/// An event at a random time of `span`, with random dimensions.
fn random_event(rng: &mut StdRng, span: Span) -> EventInput {
    let at = span.base + rng.random_range(-30 * HOUR..30 * HOUR);
    EventInput {
        occurred_at: Some(micros_to_timestamp(at)),
        action: (*ACTIONS.choose(rng).unwrap()).to_owned(),
        actor: Some(proto::Actor {
            id: format!("actor-{}", rng.random_range(0..4)),
            r#type: *ACTOR_TYPES.choose(rng).unwrap() as i32,
            ..Default::default()
        }),
        resource: Some(proto::Resource {
            r#type: (*RESOURCE_TYPES.choose(rng).unwrap()).to_owned(),
            ..Default::default()
        }),
        outcome: *OUTCOMES.choose(rng).unwrap() as i32,
        source: (*SOURCES.choose(rng).unwrap()).to_owned(),
        ..Default::default()
    }
}

/// Some of `values`, maybe none.
fn some_of<T: Copy>(rng: &mut StdRng, values: &[T]) -> Vec<T> {
    if rng.random_bool(0.5) {
        return Vec::new();
    }
    let n = rng.random_range(1..=values.len().min(2));
    values.choose_multiple(rng, n).copied().collect()
}

/// A random request the rollups can answer: structured filters on the five
/// dimensions (action prefixes included), whole-hour bounds, grouping on
/// the dimensions, whole-hour buckets.
fn expressible_request(rng: &mut StdRng, span: Span) -> StatsRequest {
    let mut actions: Vec<String> = some_of(rng, &ACTIONS).into_iter().map(str::to_owned).collect();
    if rng.random_bool(0.2) {
        actions.push(
            (*["user.*", "document.*", "audit.*", "nothing.*"]
                .choose(rng)
                .unwrap())
            .to_owned(),
        );
    }
    let hour_bound = |rng: &mut StdRng| micros_to_timestamp(span.base + rng.random_range(-32..32) * HOUR);
    let bucket = rng.random_bool(0.4).then(|| prost_types::Duration {
        seconds: *[1i64, 2, 3, 24].choose(rng).unwrap() * 3600,
        nanos: 0,
    });
    let bounded = bucket.is_some() && span.bounded_buckets;
    let start_time = (bounded || rng.random_bool(0.4)).then(|| hour_bound(rng));
    let end_time = match (bounded || rng.random_bool(0.4), &start_time) {
        (false, _) => None,
        (true, Some(start)) => Some(prost_types::Timestamp {
            seconds: start.seconds + rng.random_range(0..40) * 3600,
            nanos: 0,
        }),
        (true, None) => Some(hour_bound(rng)),
    };
    let filter = EventFilter {
        actions,
        actor_types: some_of(rng, &ACTOR_TYPES).into_iter().map(|t| t as i32).collect(),
        resource_types: some_of(rng, &["document", "session", "nothing"])
            .into_iter()
            .map(str::to_owned)
            .collect(),
        outcomes: some_of(rng, &OUTCOMES).into_iter().map(|o| o as i32).collect(),
        sources: some_of(rng, &["sso", "docs", "audit-service"])
            .into_iter()
            .map(str::to_owned)
            .collect(),
        start_time,
        end_time,
        ..Default::default()
    };
    let mut group_by: Vec<String> = DIMENSIONS.iter().map(|d| (*d).to_owned()).collect();
    group_by.shuffle(rng);
    group_by.truncate(rng.random_range(0..=3));
    StatsRequest {
        filter: Some(filter),
        group_by,
        bucket,
        limit: *[0, 1, 3, 1000].choose(rng).unwrap(),
    }
}

/// The same request sent to the scan by a trivially true expression.
fn by_scan(request: &StatsRequest) -> StatsRequest {
    let mut request = request.clone();
    request.filter.get_or_insert_default().expression = ALWAYS.to_owned();
    request
}

async fn stats(caller: &mut Caller, request: StatsRequest) -> StatsResponse {
    let request = caller.request(request);
    caller.client.stats(request).await.expect("stats").into_inner()
}

/// The counts of a response, without what answered it.
fn counts(response: &StatsResponse) -> (u64, Vec<proto::StatsGroup>, Vec<proto::StatsBucket>) {
    (response.total, response.groups.clone(), response.buckets.clone())
}

/// Asserts the rollups answer `request` exactly as the scan does.
async fn assert_rollups_agree(caller: &mut Caller, request: &StatsRequest) {
    let from_rollups = stats(caller, request.clone()).await;
    let from_scan = stats(caller, by_scan(request)).await;
    assert_eq!(
        from_rollups.answered_from(),
        StatsSource::Rollup,
        "{request:?} was not answered from the rollups"
    );
    assert_eq!(from_scan.answered_from(), StatsSource::Scan);
    assert!(!from_scan.partial, "{request:?}");
    assert_eq!(counts(&from_rollups), counts(&from_scan), "{request:?}");
}

/// Appends random events in random batches; returns their ids.
async fn append_random(caller: &mut Caller, rng: &mut StdRng, span: Span, events: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < events {
        let batch = rng.random_range(1..=20).min(events - ids.len());
        let inputs = (0..batch).map(|_| random_event(rng, span)).collect();
        ids.extend(caller.append(inputs).await.into_iter().map(|r| r.id));
    }
    ids
}

async fn rollup_answers_equal_the_scans_after_appends_deletions_and_retention(backend: Backend) {
    let server = TestServer::start(backend).await;
    for (seed, span) in [(7u64, Span::now()), (2026, Span::now()), (31337, Span::epoch())] {
        let mut rng = StdRng::seed_from_u64(seed);
        let tenant = new_tenant();
        let mut admin = server.admin_for(&tenant).await;
        // Retention erases what is recorded before `cutoff`: the first batch.
        let early = append_random(&mut admin, &mut rng, span, 60).await;
        let cutoff = a_moment_later().await;
        let late = append_random(&mut admin, &mut rng, span, 90).await;
        for id in early.iter().chain(&late) {
            if rng.random_bool(0.15) {
                delete(&mut admin, id).await.expect("delete");
            }
        }
        // An hour's period, run as of an hour after the cutoff: only this
        // call erases (other tests' servers, on PostgreSQL, run retention
        // as of now, when nothing here is an hour old).
        set_retention(&mut admin, Some(3600), false)
            .await
            .expect("set retention");
        let run = apply_at(&server, &tenant, cutoff + HOUR).await;
        assert!(run.erased > 0, "seed {seed}: retention erased nothing");
        assert!(run.event.is_some(), "seed {seed}: the run was not recorded");

        assert_rollups_agree(&mut admin, &StatsRequest::default()).await;
        for _ in 0..40 {
            let request = expressible_request(&mut rng, span);
            assert_rollups_agree(&mut admin, &request).await;
        }
    }
    server.stop().await;
}

async fn stats_says_whether_rollups_or_a_scan_answered(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let appended = caller
        .append(vec![event("user.login", "alice"), event("user.logout", "bob")])
        .await;
    let head = appended.last().unwrap().seq;

    let this_hour = Span::now().base;
    let hour = |h: i64| Some(micros_to_timestamp(this_hour + h * HOUR));
    let expressible = [
        StatsRequest::default(),
        StatsRequest {
            filter: Some(EventFilter {
                actions: vec!["user.*".into()],
                outcomes: vec![Outcome::Unspecified as i32],
                start_time: hour(-24),
                end_time: hour(24),
                ..Default::default()
            }),
            group_by: vec!["source".into(), "actor.type".into()],
            bucket: Some(prost_types::Duration {
                seconds: 7200,
                nanos: 0,
            }),
            limit: 0,
        },
    ];
    for request in expressible {
        let response = stats(&mut caller, request.clone()).await;
        assert_eq!(response.answered_from(), StatsSource::Rollup, "{request:?}");
        assert_eq!(
            (response.total, response.partial, response.scanned_through_seq),
            (2, false, 0)
        );
    }

    let filtered = |filter: EventFilter| StatsRequest {
        filter: Some(filter),
        ..Default::default()
    };
    let inexpressible = [
        filtered(EventFilter {
            expression: ALWAYS.into(),
            ..Default::default()
        }),
        filtered(EventFilter {
            actor_ids: vec!["alice".into(), "bob".into()],
            ..Default::default()
        }),
        filtered(EventFilter {
            start_time: Some(prost_types::Timestamp {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        }),
        StatsRequest {
            group_by: vec!["actor.id".into()],
            ..Default::default()
        },
        StatsRequest {
            bucket: Some(prost_types::Duration {
                seconds: 5400,
                nanos: 0,
            }),
            ..Default::default()
        },
    ];
    for request in inexpressible {
        let response = stats(&mut caller, request.clone()).await;
        assert_eq!(response.answered_from(), StatsSource::Scan, "{request:?}");
        assert_eq!(
            (response.total, response.partial, response.scanned_through_seq),
            (2, false, head),
            "{request:?}"
        );
    }
    server.stop().await;
}

/// Runs `audit-service rollups rebuild --tenant T`; returns its stdout.
fn run_rebuild(server: &TestServer, tenant: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args(["rollups", "rebuild", "--tenant", tenant])
        .env("DATABASE_URL", &server.database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run audit-service rollups rebuild");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn rollups_rebuild_recomputes_corrupted_rollups_from_the_events(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut rng = StdRng::seed_from_u64(22);
    let tenant = new_tenant();
    let mut caller = server.caller_for(&tenant).await;
    let span = Span::now();
    let ids = append_random(&mut caller, &mut rng, span, 50).await;
    delete(&mut caller, &ids[3]).await.expect("delete");
    let by_action = StatsRequest {
        group_by: vec!["action".into(), "outcome".into()],
        bucket: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        ..Default::default()
    };
    assert_rollups_agree(&mut caller, &by_action).await;

    // Damage the rollups the ways a bug or a hand-edit could.
    let store = store_of(&server).await;
    let db = store.connection();
    for sql in [
        "UPDATE event_rollups SET event_count = event_count + 5 WHERE tenant_id = $1 AND action = 'user.login'",
        "DELETE FROM event_rollups WHERE tenant_id = $1 AND action = 'document.read'",
        "INSERT INTO event_rollups (tenant_id, hour_start, action, outcome, actor_type, resource_type, source, \
         event_count) VALUES ($1, $2, 'ghost.action', 0, 0, '', 'ghost', 3)",
    ] {
        let values: Vec<sea_orm::Value> = if sql.contains("$2") {
            vec![tenant.clone().into(), span.base.into()]
        } else {
            vec![tenant.clone().into()]
        };
        db.execute_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            values,
        ))
        .await
        .expect(sql);
    }
    let damaged = stats(&mut caller, by_action.clone()).await;
    let scanned = stats(&mut caller, by_scan(&by_action)).await;
    assert_ne!(counts(&damaged), counts(&scanned), "the damage went unseen");
    assert!(
        metadata(&mut caller)
            .await
            .actions
            .contains(&"ghost.action".to_owned())
    );

    let stdout = run_rebuild(&server, &tenant);
    // 50 events, one erased, and the deletion's own event.
    assert!(
        stdout.contains(&format!("tenant {tenant}: rollups rebuilt: "))
            && stdout.contains("counting 50 live events"),
        "{stdout}"
    );
    assert_rollups_agree(&mut caller, &by_action).await;
    for _ in 0..20 {
        let request = expressible_request(&mut rng, span);
        assert_rollups_agree(&mut caller, &request).await;
    }
    let listed = metadata(&mut caller).await;
    assert!(!listed.actions.contains(&"ghost.action".to_owned()), "{listed:?}");
    assert!(!listed.sources.contains(&"ghost".to_owned()), "{listed:?}");
    store.close().await.expect("close");
    server.stop().await;
}

async fn rollups_rebuilt_while_appends_and_deletes_go_on_stay_exact(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let span = Span::now();
    let mut writer = server.caller_for(&tenant).await;
    let writing = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(99);
        for _ in 0..30 {
            let ids = append_random(&mut writer, &mut rng, span, 5).await;
            if rng.random_bool(0.5) {
                delete(&mut writer, &ids[0]).await.expect("delete");
            }
        }
    });
    let store = store_of(&server).await;
    let tenant_id = TenantId::parse(&tenant, "tenant").unwrap();
    let mut rebuilds = 0;
    while !writing.is_finished() || rebuilds == 0 {
        store.rebuild_rollups(&tenant_id).await.expect("rebuild");
        rebuilds += 1;
    }
    writing.await.expect("writer");
    store.close().await.expect("close");

    let mut caller = server.caller_for(&tenant).await;
    let mut rng = StdRng::seed_from_u64(100);
    assert_rollups_agree(&mut caller, &StatsRequest::default()).await;
    for _ in 0..20 {
        let request = expressible_request(&mut rng, span);
        assert_rollups_agree(&mut caller, &request).await;
    }
    server.stop().await;
}

async fn filter_metadata_drops_values_whose_last_event_is_erased(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let mut admin = server.admin_for(&tenant).await;
    let sourced = |action: &str, source: &str| EventInput {
        source: source.into(),
        ..event(action, "alice")
    };
    let early = admin.append(vec![sourced("report.export", "reports")]).await;
    let cutoff = a_moment_later().await;
    let late = admin
        .append(vec![
            sourced("user.login", "sso"),
            sourced("user.login", "sso"),
            sourced("document.read", "docs"),
        ])
        .await;
    let listed = metadata(&mut admin).await;
    assert_eq!(listed.actions, ["document.read", "report.export", "user.login"]);
    assert_eq!(listed.sources, ["docs", "reports", "sso"]);

    // Deleting one of two keeps the value; deleting the last drops it.
    delete(&mut admin, &late[0].id).await.expect("delete");
    assert!(
        metadata(&mut admin)
            .await
            .actions
            .contains(&"user.login".to_owned())
    );
    delete(&mut admin, &late[1].id).await.expect("delete");
    let listed = metadata(&mut admin).await;
    assert_eq!(
        listed.actions,
        ["audit.event.deleted", "document.read", "report.export"]
    );
    assert_eq!(listed.sources, ["audit-service", "docs", "reports"]);

    // Retention erasing the last event of an action and of a source drops them too.
    set_retention(&mut admin, Some(3600), false)
        .await
        .expect("set retention");
    let run = apply_at(&server, &tenant, cutoff + HOUR).await;
    assert_eq!(run.erased, 1, "only the early event was due");
    assert_eq!(early.len(), 1);
    let listed = metadata(&mut admin).await;
    assert!(
        !listed.actions.contains(&"report.export".to_owned()),
        "{listed:?}"
    );
    assert!(!listed.sources.contains(&"reports".to_owned()), "{listed:?}");
    assert!(listed.actions.contains(&"document.read".to_owned()), "{listed:?}");
    server.stop().await;
}

async fn a_scan_out_of_time_answers_partially_naming_the_seq_it_reached(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let mut caller = server.caller_for(&tenant).await;
    let events: Vec<EventInput> = (0..12)
        .map(|i| event(if i % 3 == 0 { "user.login" } else { "user.logout" }, "alice"))
        .collect();
    caller.append(events).await;
    let tenant = TenantId::parse(&tenant, "tenant").unwrap();
    let filter = EventFilter {
        expression: ALWAYS.into(),
        ..Default::default()
    };
    let matcher = EventMatcher::new(&filter, "filter").unwrap();
    let query = StatsQuery {
        group_by: vec![GroupField::Action],
        limit: 10,
        bucket: None,
    };

    // No time at all: the first chunk (seqs 1..=5) runs, then the scan
    // stops and says so.
    let store = store_of(&server).await.with_stats_scan(ScanLimits {
        budget: Duration::ZERO,
        first_chunk: 5,
    });
    let partial = store.stats(&tenant, &matcher, &query).await.expect("stats");
    assert_eq!(
        partial.answered_by,
        Answered::Scan {
            partial: true,
            scanned_through: 5
        }
    );
    assert_eq!(partial.total, 5);
    let counted: Vec<u64> = partial.groups.iter().map(|g| g.count).collect();
    assert_eq!(counted, [3, 2], "seqs 1..=5: logins at 1 and 4");

    // With the default budget the same scan, in chunks of 5, reaches the end.
    let store = store.with_stats_scan(ScanLimits {
        first_chunk: 5,
        ..ScanLimits::default()
    });
    let whole = store.stats(&tenant, &matcher, &query).await.expect("stats");
    assert_eq!(
        whole.answered_by,
        Answered::Scan {
            partial: false,
            scanned_through: 12
        }
    );
    assert_eq!(whole.total, 12);
    assert_eq!(whole.groups.iter().map(|g| g.count).collect::<Vec<_>>(), [8, 4]);
    store.close().await.expect("close");
    server.stop().await;
}

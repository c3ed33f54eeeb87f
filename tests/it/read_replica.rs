//! Reads from a PostgreSQL hot standby (`AUDIT_READ_DATABASE_URL`), against
//! a real streaming standby ([`StreamingPair`]): reads are served there, a
//! position a client holds (page token, `after_seq`, an export's
//! checkpoint) beyond what the standby has replayed never skips an event,
//! and a stopped standby leaves reads to the primary until it is back.
//! PostgreSQL only (SQLite has no standbys and refuses the setting).

use std::net::SocketAddr;
use std::time::Duration;

use audit_service::config::DatabaseConfig;
use audit_service::proto::export_response::Part;
use audit_service::proto::{
    EventFilter, ExportRequest, GetFilterMetadataRequest, GetRequest, QueryRequest, StatsRequest,
    WatchRequest, watch_response,
};
use audit_service::store::Store;
use tokio_stream::StreamExt as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::metrics::{free_address, http_get, value};
use crate::streaming_standby::StreamingPair;
use crate::support::{Backend, Caller, TestServer, event};

/// Health's name for the read replica.
const READ_REPLICA_HEALTH: &str = "read-replica";

#[tokio::test]
async fn a_read_database_with_sqlite_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DatabaseConfig::new(format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("audit.db").display()
    ));
    config.read_url = Some("postgres://postgres@127.0.0.1:5432/standby".into());
    let Err(error) = Store::connect(&config).await else {
        panic!("a read database beside SQLite was accepted");
    };
    let message = error.to_string();
    assert!(
        message.contains("AUDIT_READ_DATABASE_URL") && message.contains("PostgreSQL"),
        "{message}"
    );
}

/// A server reading from the standby, one without a read replica on the
/// same primary, the pair, and the first server's metrics address.
struct Setup {
    pair: StreamingPair,
    server: TestServer,
    primary_only: TestServer,
    metrics: SocketAddr,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_a_streaming_standby_and_never_skip_what_a_client_knows() {
    let Some(Backend::Postgres(_)) = Backend::postgres() else {
        return;
    };
    // One standby for every step: making one takes seconds.
    let pair = StreamingPair::start();
    let url = pair.primary_url();
    let standby = pair.standby_url();
    let metrics = free_address();
    let server = TestServer::start_on(Backend::Postgres(url.clone()), url.clone(), |config| {
        config.database.read_url = Some(standby);
        config.metrics_listen = Some(metrics);
    })
    .await;
    let primary_only = TestServer::start_on(Backend::Postgres(url.clone()), url, |_| {}).await;
    let setup = Setup {
        pair,
        server,
        primary_only,
        metrics,
    };
    reads_are_served_by_the_standby(&setup).await;
    a_page_token_beyond_the_replay_never_skips_an_event(&setup).await;
    a_watch_resumed_beyond_the_replay_misses_nothing(&setup).await;
    an_export_beyond_the_replay_ends_at_its_checkpoint(&setup).await;
    a_stopped_standby_leaves_reads_to_the_primary_until_it_is_back(&setup).await;
    a_standby_cut_off_from_the_primary_leaves_reads_to_the_primary(&setup).await;
}

/// The standby's database reports `pg_is_in_recovery()` through the read
/// pool, reads count as served there, and a read while replay is paused
/// sees the standby's older state, which only the standby has.
async fn reads_are_served_by_the_standby(setup: &Setup) {
    wait_for_metric(setup, "audit_read_replica_in_recovery", 1.0).await;
    wait_for_metric(setup, "audit_read_replica_up", 1.0).await;
    let mut caller = setup.server.caller().await;
    caller
        .append(vec![event("user.login", "a"), event("user.login", "b")])
        .await;
    setup.pair.wait_for_replay().await;

    let before = served_by(setup, "replica").await;
    assert_eq!(seqs_of(&mut caller, "", 50).await.0, [2, 1]);
    assert!(
        served_by(setup, "replica").await > before,
        "the query was not served by the standby"
    );

    setup.pair.pause_replay();
    let third = caller.append(vec![event("user.logout", "a")]).await;
    assert_eq!(
        seqs_of(&mut caller, "", 50).await.0,
        [2, 1],
        "a first page from the standby shows what it has replayed"
    );
    let mut on_primary = setup.primary_only.caller_for(&caller.tenant).await;
    assert_eq!(seqs_of(&mut on_primary, "", 50).await.0, [3, 2, 1]);
    // An id the client got from Append is found although the standby has
    // not replayed it yet.
    let request = caller.request(GetRequest {
        id: third[0].id.clone(),
    });
    let got = caller.client.get(request).await.expect("get").into_inner();
    assert_eq!(got.seq, 3);
    setup.pair.resume_replay();
    setup.pair.wait_for_replay().await;
}

/// A page token the primary issued after an append the standby has not
/// replayed continues right after it: the next page comes from the
/// primary instead of skipping the event; once replayed, from the standby.
async fn a_page_token_beyond_the_replay_never_skips_an_event(setup: &Setup) {
    let mut caller = setup.server.caller().await;
    caller
        .append((0..3).map(|i| event("doc.read", &format!("u{i}"))).collect())
        .await;
    setup.pair.wait_for_replay().await;
    setup.pair.pause_replay();
    caller
        .append(vec![event("doc.write", "u3"), event("doc.write", "u4")])
        .await;
    let mut on_primary = setup.primary_only.caller_for(&caller.tenant).await;
    let (first, token) = seqs_of(&mut on_primary, "", 1).await;
    assert_eq!(first, [5]);

    let behind = value_of(setup, "audit_read_replica_routed_total", &[("reason", "behind")]).await;
    let (rest, end) = seqs_of(&mut caller, &token, 10).await;
    assert_eq!(rest, [4, 3, 2, 1], "the page after seq 5 skipped nothing");
    assert!(end.is_empty());
    assert!(
        value_of(setup, "audit_read_replica_routed_total", &[("reason", "behind")]).await > behind,
        "the page was not left to the primary"
    );

    setup.pair.resume_replay();
    setup.pair.wait_for_replay().await;
    let before = served_by(setup, "replica").await;
    assert_eq!(seqs_of(&mut caller, &token, 10).await.0, [4, 3, 2, 1]);
    assert!(
        served_by(setup, "replica").await > before,
        "replayed, the standby serves the token"
    );
}

/// A Watch resumed with `after_seq` while the standby is behind the head
/// receives every later event.
async fn a_watch_resumed_beyond_the_replay_misses_nothing(setup: &Setup) {
    let mut caller = setup.server.caller().await;
    caller
        .append(vec![event("user.login", "a"), event("user.login", "b")])
        .await;
    setup.pair.wait_for_replay().await;
    setup.pair.pause_replay();
    caller
        .append(vec![event("user.logout", "a"), event("user.logout", "b")])
        .await;
    let request = caller.request(WatchRequest {
        filter: None,
        after_seq: Some(2),
        ..Default::default()
    });
    let mut stream = caller.client.watch(request).await.expect("watch").into_inner();
    let mut seqs = Vec::new();
    while seqs.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the stream delivered within 30 s")
            .expect("the stream is open")
            .expect("a message");
        if let Some(watch_response::Kind::Event(event)) = message.kind {
            seqs.push(event.seq);
        }
    }
    assert_eq!(seqs, [3, 4]);
    setup.pair.resume_replay();
    setup.pair.wait_for_replay().await;
}

/// An export while the standby is behind holds every event up to the
/// checkpoint it ends with.
async fn an_export_beyond_the_replay_ends_at_its_checkpoint(setup: &Setup) {
    let mut caller = setup.server.caller().await;
    caller.append(vec![event("user.login", "a")]).await;
    setup.pair.wait_for_replay().await;
    setup.pair.pause_replay();
    caller
        .append(vec![event("user.login", "b"), event("user.login", "c")])
        .await;
    let request = caller.request(ExportRequest {
        filter: None,
        after_seq: 0,
        ..Default::default()
    });
    let mut stream = caller.client.export(request).await.expect("export").into_inner();
    let (mut seqs, mut size) = (Vec::new(), None);
    while let Some(message) = stream.message().await.expect("export message") {
        match message.part.expect("a part") {
            Part::Header(header) => size = Some(header.tree_size),
            Part::Chunk(chunk) => seqs.extend(chunk.events.iter().map(|e| e.seq)),
            Part::Checkpoint(_) => {}
        }
    }
    assert_eq!(size, Some(3));
    assert_eq!(seqs, [1, 2, 3]);
    setup.pair.resume_replay();
    setup.pair.wait_for_replay().await;
}

/// With the standby stopped every read is answered (from the primary) and
/// health says the replica is down; started again, it serves reads again.
async fn a_stopped_standby_leaves_reads_to_the_primary_until_it_is_back(setup: &Setup) {
    let mut caller = setup.server.caller().await;
    caller
        .append(vec![event("user.login", "a"), event("user.login", "b")])
        .await;
    setup.pair.wait_for_replay().await;
    setup.pair.stop_standby();

    every_read_is_answered(&mut caller).await;
    wait_for_metric(setup, "audit_read_replica_up", 0.0).await;
    wait_for_health(setup, ServingStatus::NotServing).await;
    let mut health = HealthClient::new(setup.server.channel().await);
    let request = HealthCheckRequest {
        service: "audit.v1.AuditService".into(),
    };
    let status = health.check(request).await.expect("health").into_inner().status;
    assert_eq!(
        status,
        ServingStatus::Serving as i32,
        "the service still serves reads"
    );

    setup.pair.start_standby();
    wait_for_metric(setup, "audit_read_replica_up", 1.0).await;
    wait_for_health(setup, ServingStatus::Serving).await;
    let before = served_by(setup, "replica").await;
    every_read_is_answered(&mut caller).await;
    assert!(
        served_by(setup, "replica").await > before,
        "the standby is used again"
    );
}

/// A standby that still answers but no longer receives WAL (its link to
/// the primary is down) has replayed everything it received, so its replay
/// "lag" reads zero although it falls further behind with every append:
/// reads must leave it, and health say why, until it streams again.
async fn a_standby_cut_off_from_the_primary_leaves_reads_to_the_primary(setup: &Setup) {
    let mut caller = setup.server.caller().await;
    caller.append(vec![event("user.login", "a")]).await;
    setup.pair.wait_for_replay().await;
    let conninfo = setup.pair.cut_off_standby();
    setup.pair.wait_for_receiver(false).await;
    wait_for_health(setup, ServingStatus::NotServing).await;

    caller.append(vec![event("user.login", "b")]).await;
    assert_eq!(
        seqs_of(&mut caller, "", 50).await.0,
        [2, 1],
        "a first page was served by a standby cut off from the primary"
    );
    let request = caller.request(StatsRequest::default());
    let stats = caller.client.stats(request).await.expect("stats").into_inner();
    assert_eq!(
        stats.total, 2,
        "Stats was served by a standby cut off from the primary"
    );

    setup.pair.reconnect_standby(&conninfo);
    setup.pair.wait_for_receiver(true).await;
    setup.pair.wait_for_replay().await;
    wait_for_health(setup, ServingStatus::Serving).await;
    let before = served_by(setup, "replica").await;
    assert_eq!(seqs_of(&mut caller, "", 50).await.0, [2, 1]);
    assert!(
        served_by(setup, "replica").await > before,
        "the standby is used again once it streams"
    );
}

/// Query, Get, Stats and GetFilterMetadata answer OK with the caller's two
/// events.
async fn every_read_is_answered(caller: &mut Caller) {
    let (seqs, _) = seqs_of(caller, "", 50).await;
    assert_eq!(seqs, [2, 1]);
    let page = caller
        .query(QueryRequest {
            page_size: 1,
            ..Default::default()
        })
        .await;
    let request = caller.request(GetRequest {
        id: page.events[0].id.clone(),
    });
    caller.client.get(request).await.expect("get");
    let request = caller.request(StatsRequest::default());
    let stats = caller.client.stats(request).await.expect("stats").into_inner();
    assert_eq!(stats.total, 2);
    let request = caller.request(GetFilterMetadataRequest::default());
    let metadata = caller
        .client
        .get_filter_metadata(request)
        .await
        .expect("filter metadata")
        .into_inner();
    assert_eq!(metadata.actions, ["user.login"]);
}

/// The seqs of one page (newest first) after `token`, and the next token.
async fn seqs_of(caller: &mut Caller, token: &str, page_size: i32) -> (Vec<u64>, String) {
    let page = caller
        .query(QueryRequest {
            filter: Some(EventFilter::default()),
            page_size,
            page_token: token.to_owned(),
            order_by: String::new(),
        })
        .await;
    (page.events.iter().map(|e| e.seq).collect(), page.next_page_token)
}

async fn value_of(setup: &Setup, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, body) = http_get(setup.metrics, "/metrics").await;
    value(&body, name, labels)
}

/// Reads routed to `served_by` (`replica` or `primary`) so far.
async fn served_by(setup: &Setup, served_by: &str) -> f64 {
    value_of(
        setup,
        "audit_read_replica_routed_total",
        &[("served_by", served_by)],
    )
    .await
}

/// Waits (at most 60 s) until the gauge `name` reads `wanted`.
async fn wait_for_metric(setup: &Setup, name: &str, wanted: f64) {
    let mut seen = f64::NAN;
    for _ in 0..600 {
        seen = value_of(setup, name, &[]).await;
        if seen == wanted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} stayed {seen}, not {wanted}, for 60 s");
}

/// Waits (at most 60 s) until health reports the read replica `wanted`.
async fn wait_for_health(setup: &Setup, wanted: ServingStatus) {
    let mut health = HealthClient::new(setup.server.channel().await);
    let mut seen = None;
    for _ in 0..600 {
        let request = HealthCheckRequest {
            service: READ_REPLICA_HEALTH.into(),
        };
        seen = Some(health.check(request).await.map(|r| r.into_inner().status));
        if matches!(&seen, Some(Ok(status)) if *status == wanted as i32) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("read replica health stayed {seen:?}, not {wanted:?}, for 60 s");
}

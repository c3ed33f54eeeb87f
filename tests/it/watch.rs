//! Watch: gap-free, resumable live streams.

use std::time::Duration;

use audit_service::proto::{DeleteRequest, EventFilter, WatchRequest, WatchResponse, watch_response::Kind};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

use crate::on_both_backends;
use crate::support::{Backend, Caller, ServerProcess, TestServer, assert_status, event, new_tenant};

on_both_backends!(
    watch_from_now_delivers_only_events_committed_after_it_starts,
    watch_from_now_is_in_place_when_the_call_returns,
    watch_after_seq_replays_history_then_follows_live_without_gap,
    resume_after_disconnect_has_no_gap_or_duplicate_while_appends_continue,
    two_hundred_subscribers_each_receive_every_event_once_in_order,
    stalled_subscriber_does_not_hold_back_others_and_later_catches_up,
    filters_apply_to_watch,
    expression_filters_apply_to_watch_history_and_live,
    deleted_events_are_not_delivered_but_the_deletion_event_is,
    heartbeats_report_the_position_of_a_narrow_subscriber,
    shutdown_ends_streams_with_a_resumable_status,
    stream_limit_per_tenant_is_resource_exhausted_and_freed_on_cancel,
);

/// Generous bound so a broken stream fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(120);

async fn heartbeat_server(backend: Backend) -> TestServer {
    TestServer::start_with(backend, |config| config.heartbeat_secs = 1).await
}

async fn open(caller: &mut Caller, filter: EventFilter, after_seq: Option<u64>) -> Streaming<WatchResponse> {
    let request = caller.request(WatchRequest {
        filter: Some(filter),
        after_seq,
        ..Default::default()
    });
    caller.client.watch(request).await.expect("watch").into_inner()
}

/// The next message, or a failure after [`PATIENCE`].
async fn next(stream: &mut Streaming<WatchResponse>) -> Result<Kind, tonic::Status> {
    match tokio::time::timeout(PATIENCE, stream.next()).await {
        Ok(Some(Ok(response))) => Ok(response.kind.expect("a kind")),
        Ok(Some(Err(status))) => Err(status),
        Ok(None) => panic!("stream ended without a status"),
        Err(_) => panic!("no message within {PATIENCE:?}"),
    }
}

/// Seqs of the next `count` events, skipping heartbeats.
async fn events(stream: &mut Streaming<WatchResponse>, count: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(count);
    while seqs.len() < count {
        if let Kind::Event(e) = next(stream).await.expect("stream failed") {
            seqs.push(e.seq);
        }
    }
    seqs
}

/// Waits for a heartbeat: proof that the stream is live.
async fn heartbeat(stream: &mut Streaming<WatchResponse>) -> u64 {
    loop {
        if let Kind::Heartbeat(beat) = next(stream).await.expect("stream failed") {
            return beat.head_seq;
        }
    }
}

async fn append_n(caller: &mut Caller, n: usize, batch: usize) {
    let mut left = n;
    while left > 0 {
        let size = left.min(batch);
        caller
            .append(
                (0..size)
                    .map(|i| event("document.read", &format!("u{i}")))
                    .collect(),
            )
            .await;
        left -= size;
    }
}

async fn watch_from_now_delivers_only_events_committed_after_it_starts(backend: Backend) {
    let server = heartbeat_server(backend).await;
    let mut caller = server.caller().await;
    append_n(&mut caller, 5, 5).await;
    let mut stream = open(&mut caller, EventFilter::default(), None).await;
    assert_eq!(heartbeat(&mut stream).await, 5);
    append_n(&mut caller, 3, 1).await;
    assert_eq!(events(&mut stream, 3).await, [6, 7, 8]);
}

async fn watch_from_now_is_in_place_when_the_call_returns(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    append_n(&mut caller, 5, 5).await;
    // Many streams, each followed at once by an append: none may miss it.
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(open(&mut caller, EventFilter::default(), None).await);
        append_n(&mut caller, 1, 1).await;
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        assert_eq!(events(stream, 1).await, [6 + i as u64], "stream {i}");
    }
}

async fn watch_after_seq_replays_history_then_follows_live_without_gap(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    append_n(&mut caller, 1200, 400).await;
    let mut stream = open(&mut caller, EventFilter::default(), Some(100)).await;
    let mut appender = server.caller_for(&caller.tenant).await;
    let appending = tokio::spawn(async move { append_n(&mut appender, 300, 7).await });
    let seqs = events(&mut stream, 1400).await;
    appending.await.expect("appender");
    assert_eq!(seqs, (101..=1500).collect::<Vec<u64>>());
}

async fn resume_after_disconnect_has_no_gap_or_duplicate_while_appends_continue(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let total = 3000usize;
    let mut appender = server.caller_for(&caller.tenant).await;
    let appending = tokio::spawn(async move { append_n(&mut appender, total, 13).await });

    let mut seen = Vec::new();
    let mut position = 0u64;
    for chunk in [250usize, 700, 1, 1200] {
        let mut stream = open(&mut caller, EventFilter::default(), Some(position)).await;
        let got = events(&mut stream, chunk).await;
        position = *got.last().expect("events");
        seen.extend(got);
        drop(stream); // disconnect mid-stream
    }
    let mut stream = open(&mut caller, EventFilter::default(), Some(position)).await;
    seen.extend(events(&mut stream, total - seen.len()).await);
    appending.await.expect("appender");
    assert_eq!(seen, (1..=total as u64).collect::<Vec<u64>>());
}

async fn two_hundred_subscribers_each_receive_every_event_once_in_order(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let total = 10_000usize;
    let mut subscribers = Vec::new();
    for _ in 0..200 {
        let mut caller = server.caller_for(&tenant).await;
        let mut stream = open(&mut caller, EventFilter::default(), Some(0)).await;
        subscribers.push(tokio::spawn(async move { events(&mut stream, total).await }));
    }
    let mut appender = server.caller_for(&tenant).await;
    append_n(&mut appender, total, 100).await;
    let expected: Vec<u64> = (1..=total as u64).collect();
    for subscriber in subscribers {
        assert_eq!(subscriber.await.expect("subscriber"), expected);
    }
}

async fn stalled_subscriber_does_not_hold_back_others_and_later_catches_up(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let total = 6000usize;
    let mut stalled_caller = server.caller_for(&tenant).await;
    // Opened, then not read at all while everything below happens.
    let mut stalled = open(&mut stalled_caller, EventFilter::default(), Some(0)).await;

    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut caller = server.caller_for(&tenant).await;
        let mut stream = open(&mut caller, EventFilter::default(), Some(0)).await;
        readers.push(tokio::spawn(async move { events(&mut stream, total).await }));
    }
    let mut appender = server.caller_for(&tenant).await;
    // More commits than a feed holds, so the stalled stream's feed lags and
    // it must switch to reading storage.
    let batches = audit_service::watch::FEED_CAPACITY * 2;
    append_n(&mut appender, total, total / batches).await;
    let expected: Vec<u64> = (1..=total as u64).collect();
    for reader in readers {
        assert_eq!(reader.await.expect("reader"), expected);
    }
    // The stalled stream fell far behind its buffer and the live feed; it
    // still gets everything, in order, once it reads.
    assert_eq!(events(&mut stalled, total).await, expected);
}

async fn filters_apply_to_watch(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let filter = EventFilter {
        actions: vec!["user.*".into()],
        actor_ids: vec!["alice".into()],
        ..Default::default()
    };
    let mut stream = open(&mut caller, filter, Some(0)).await;
    caller
        .append(vec![
            event("user.login", "alice"),
            event("user.login", "bob"),
            event("document.read", "alice"),
            event("user.logout", "alice"),
        ])
        .await;
    caller
        .append(vec![
            event("usergroup.create", "alice"),
            event("user.login", "alice"),
        ])
        .await;
    assert_eq!(events(&mut stream, 3).await, [1, 4, 6]);
}

async fn deleted_events_are_not_delivered_but_the_deletion_event_is(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let ids: Vec<String> = caller
        .append((0..5).map(|i| event("a.b", &format!("u{i}"))).collect())
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    let request = caller.request(DeleteRequest {
        id: ids[2].clone(),
        reason: "erasure".into(),
    });
    caller.client.delete(request).await.expect("delete");
    let mut stream = open(&mut caller, EventFilter::default(), Some(0)).await;
    let mut delivered = Vec::new();
    while delivered.len() < 5 {
        if let Kind::Event(e) = next(&mut stream).await.expect("stream") {
            delivered.push((e.seq, e.action));
        }
    }
    let seqs: Vec<u64> = delivered.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [1, 2, 4, 5, 6]);
    assert_eq!(delivered[4].1, "audit.event.deleted");
}

async fn heartbeats_report_the_position_of_a_narrow_subscriber(backend: Backend) {
    let server = heartbeat_server(backend).await;
    let mut caller = server.caller().await;
    let filter = EventFilter {
        actions: vec!["never.happens".into()],
        ..Default::default()
    };
    let mut stream = open(&mut caller, filter, Some(0)).await;
    append_n(&mut caller, 10, 10).await;
    loop {
        match next(&mut stream).await.expect("stream") {
            Kind::Event(e) => panic!("unexpected event {e:?}"),
            Kind::Heartbeat(beat) if beat.head_seq >= 10 => {
                assert_eq!(beat.head_seq, 10);
                assert!(beat.time.is_some());
                break;
            }
            Kind::Heartbeat(_) => {}
        }
    }
}

async fn shutdown_ends_streams_with_a_resumable_status(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    append_n(&mut caller, 3, 3).await;
    let mut stream = open(&mut caller, EventFilter::default(), Some(0)).await;
    assert_eq!(events(&mut stream, 3).await, [1, 2, 3]);
    server.stop().await;
    let status = loop {
        match stream.next().await {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("stream ended without a status"),
        }
    };
    assert_status(&status, Code::Unavailable, "UNAVAILABLE", None);
    assert!(status.message().contains("after_seq=3"), "{status:?}");
}

async fn stream_limit_per_tenant_is_resource_exhausted_and_freed_on_cancel(backend: Backend) {
    let server = TestServer::start_with(backend, |config| config.max_streams_per_tenant = 2).await;
    let mut caller = server.caller().await;
    let first = open(&mut caller, EventFilter::default(), Some(0)).await;
    let _second = open(&mut caller, EventFilter::default(), Some(0)).await;
    let request = caller.request(WatchRequest {
        filter: None,
        after_seq: Some(0),
        ..Default::default()
    });
    let status = caller
        .client
        .watch(request)
        .await
        .expect_err("third stream accepted");
    assert_status(&status, Code::ResourceExhausted, "RESOURCE_EXHAUSTED", None);
    // Another tenant is not affected.
    let mut other = server.caller().await;
    let _other = open(&mut other, EventFilter::default(), Some(0)).await;

    drop(first);
    let mut reopened = false;
    for _ in 0..200 {
        let request = caller.request(WatchRequest {
            filter: None,
            after_seq: Some(0),
            ..Default::default()
        });
        if caller.client.watch(request).await.is_ok() {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(reopened, "the cancelled stream's slot was never freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_event_appended_on_one_replica_reaches_a_subscriber_on_another() {
    let Some(Backend::Postgres(url)) = Backend::postgres() else {
        return;
    };
    let tenant = new_tenant();
    let a = ServerProcess::start(&url, &[]);
    // B never heartbeats during the test, so events appended on A can only
    // reach B's subscriber through PostgreSQL's NOTIFY.
    let b = ServerProcess::start(&url, &[("AUDIT_HEARTBEAT_SECS", "3600")]);
    let mut on_a = a.caller_for(&tenant).await;
    let mut on_b = b.caller_for(&tenant).await;
    let mut stream = open(&mut on_b, EventFilter::default(), Some(0)).await;
    on_b.append(vec![event("user.login", "first")]).await;
    assert_eq!(events(&mut stream, 1).await, [1]);
    for _ in 0..33 {
        on_a.append((0..3).map(|i| event("user.login", &format!("u{i}"))).collect())
            .await;
    }
    assert_eq!(events(&mut stream, 99).await, (2..=100).collect::<Vec<u64>>());
    assert!(a.terminate(), "replica a did not exit cleanly on SIGTERM");
}

async fn expression_filters_apply_to_watch_history_and_live(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let failed = |actor: &str| {
        let mut e = event("user.login", actor);
        e.outcome = audit_service::proto::Outcome::Failure as i32;
        e
    };
    // Seqs 1..=3 are history when the stream opens; 4..=6 arrive live.
    caller
        .append(vec![failed("alice"), event("user.login", "alice"), failed("bob")])
        .await;
    let filter = EventFilter {
        expression: r#"outcome = OUTCOME_FAILURE AND NOT actor.id = "bob""#.into(),
        ..Default::default()
    };
    let mut stream = open(&mut caller, filter, Some(0)).await;
    assert_eq!(events(&mut stream, 1).await, [1]);
    caller
        .append(vec![failed("bob"), failed("carol"), event("user.login", "dave")])
        .await;
    caller.append(vec![failed("erin")]).await;
    assert_eq!(events(&mut stream, 2).await, [5, 7]);
}

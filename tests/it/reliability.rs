//! Reliability under faults and hostile input: crashes, database outages,
//! limits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audit_service::proto::{AppendRequest, EventFilter, EventInput, WatchRequest, watch_response::Kind};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::on_both_backends;
use crate::support::{
    Backend, Caller, ServerProcess, TestServer, assert_status, end_status, event, new_tenant,
};

on_both_backends!(
    acknowledged_appends_survive_sigkill_with_no_gap_and_no_half_batch,
    expired_deadline_stores_a_batch_whole_or_not_at_all,
    global_stream_cap_is_resource_exhausted,
    oversized_metadata_is_refused_and_the_server_keeps_serving,
    streams_that_never_read_keep_server_memory_bounded,
);

/// Bound on waiting for something that must happen; a failure, not a hang.
const PATIENCE: Duration = Duration::from_secs(60);

fn batch_event(batch: &str, size: usize, i: usize) -> EventInput {
    let mut e = event("document.update", &format!("writer-{i}"));
    e.metadata = Some(prost_types::Struct {
        fields: [
            (
                "batch".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(batch.into())),
                },
            ),
            (
                "size".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(f64::from(
                        u32::try_from(size).expect("a batch size"),
                    ))),
                },
            ),
        ]
        .into(),
    });
    e
}

fn metadata_text(event: &audit_service::proto::AuditEvent, key: &str) -> Option<String> {
    match event.metadata.as_ref()?.fields.get(key)?.kind.as_ref()? {
        prost_types::value::Kind::StringValue(s) => Some(s.clone()),
        prost_types::value::Kind::NumberValue(n) => Some(n.to_string()),
        _ => None,
    }
}

async fn acknowledged_appends_survive_sigkill_with_no_gap_and_no_half_batch(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = backend.database_url_in(dir.path());
    let tenant = new_tenant();
    let server = ServerProcess::start(&url, &[]);
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let acked_events = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..4 {
        let mut caller = server.caller_for(&tenant).await;
        let acked = acked.clone();
        let acked_events = acked_events.clone();
        clients.push(tokio::spawn(async move {
            for round in 0.. {
                let size = 1 + (client * 7 + round * 3) % 25;
                let batch = format!("c{client}-r{round}");
                let events = (0..size).map(|i| batch_event(&batch, size, i)).collect();
                let request = caller.request(AppendRequest { events });
                match caller.client.append(request).await {
                    Ok(response) => {
                        let results = response.into_inner().results;
                        acked_events.fetch_add(results.len(), Ordering::SeqCst);
                        acked
                            .lock()
                            .unwrap()
                            .extend(results.into_iter().map(|r| (r.id, r.seq)));
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while acked_events.load(Ordering::SeqCst) < 1500 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "appenders made no progress"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.crash();
    for client in clients {
        client.await.expect("client");
    }

    let restarted = ServerProcess::start(&url, &[]);
    let mut reader = restarted.caller_for(&tenant).await;
    let stored = reader.query_all(EventFilter::default(), "seq asc", 1000).await;
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "gap in the log after the crash"
    );
    let by_id: HashMap<&str, u64> = stored.iter().map(|e| (e.id.as_str(), e.seq)).collect();
    let acked = acked.lock().unwrap();
    assert!(acked.len() >= 1500);
    for (id, seq) in acked.iter() {
        assert_eq!(
            by_id.get(id.as_str()),
            Some(seq),
            "acknowledged event {id} lost or moved"
        );
    }
    let mut batches: HashMap<String, (usize, usize)> = HashMap::new();
    for e in &stored {
        let batch = metadata_text(e, "batch").expect("batch");
        let size: usize = metadata_text(e, "size").expect("size").parse().unwrap();
        let entry = batches.entry(batch).or_insert((0, size));
        entry.0 += 1;
    }
    for (batch, (count, size)) in batches {
        assert_eq!(count, size, "batch {batch} stored partially");
    }
}

async fn expired_deadline_stores_a_batch_whole_or_not_at_all(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    for attempt in 0..10 {
        let batch = format!("deadline-{attempt}");
        let events = (0..1000).map(|i| batch_event(&batch, 1000, i)).collect();
        let mut request = caller.request(AppendRequest { events });
        request.set_timeout(Duration::from_micros(1 + attempt * 300));
        if let Err(status) = caller.client.append(request).await {
            assert!(
                matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
                "{status:?}"
            );
        }
    }
    let stored = caller.query_all(EventFilter::default(), "seq asc", 1000).await;
    assert_eq!(stored.len() % 1000, 0, "a batch was stored partially");
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<_>>());
    // The server still answers within a normal deadline.
    let mut request = caller.request(AppendRequest {
        events: vec![event("a.b", "x")],
    });
    request.set_timeout(Duration::from_secs(30));
    caller
        .client
        .append(request)
        .await
        .expect("append with a normal deadline");
}

async fn global_stream_cap_is_resource_exhausted(backend: Backend) {
    let server = TestServer::start_with(backend, |config| config.max_streams = 3).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut caller = server.caller().await;
        let request = caller.request(WatchRequest {
            filter: None,
            after_seq: Some(0),
            ..Default::default()
        });
        streams.push(caller.client.watch(request).await.expect("stream within the cap"));
    }
    let mut caller = server.caller().await;
    let request = caller.request(WatchRequest {
        filter: None,
        after_seq: Some(0),
        ..Default::default()
    });
    let status = caller
        .client
        .watch(request)
        .await
        .expect_err("stream beyond the cap");
    assert_status(&status, Code::ResourceExhausted, "RESOURCE_EXHAUSTED", None);
}

async fn oversized_metadata_is_refused_and_the_server_keeps_serving(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let mut request = caller.request(AppendRequest {
        events: vec![event("a.b", "x")],
    });
    let huge = "x".repeat(64 * 1024);
    request.metadata_mut().insert("x-padding", huge.parse().unwrap());
    assert!(
        caller.client.append(request).await.is_err(),
        "a 64 KiB header was accepted"
    );
    // A fresh connection is served normally.
    let mut caller = server.caller_for(&caller.tenant).await;
    let appended = caller.append(vec![event("a.b", "x")]).await;
    assert_eq!(
        appended[0].seq, 1,
        "the refused call must not have stored anything"
    );
}

async fn streams_that_never_read_keep_server_memory_bounded(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&backend.database_url_in(dir.path()), &[]);
    let tenant = new_tenant();
    let mut caller = server.caller_for(&tenant).await;
    for _ in 0..20 {
        let batch = (0..1000).map(|i| batch_event("load", 1000, i)).collect();
        caller.append(batch).await;
    }
    let (idle, _) = server.rss_kib();
    // Read at the end.
    let mut stream = server.watch_from_start(&tenant).await;
    let _unread = server.unread_watch_streams(&tenant, 30, 300).await;
    // Let every stream fill its buffers while nobody reads.
    let peak = server.settled_peak_rss_kib().await;
    eprintln!("RSS idle {idle} KiB, peak with 300 unread streams {peak} KiB");
    assert!(
        peak < 256 * 1024,
        "300 unread streams took the server to {peak} KiB"
    );
    // Appends still work while the streams stall.
    assert_eq!(caller.append(vec![event("a.b", "x")]).await[0].seq, 20_001);
    // And a stalled stream still gets everything once it reads.
    let mut seq = 0;
    while seq < 20_001 {
        match tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("stalled stream never resumed")
        {
            Some(Ok(response)) => {
                if let Some(Kind::Event(e)) = response.kind {
                    assert_eq!(e.seq, seq + 1);
                    seq = e.seq;
                }
            }
            other => panic!("stream ended: {other:?}"),
        }
    }
}

/// A TCP proxy to PostgreSQL that can cut every connection and refuse new
/// ones, as a database restart or a network partition would.
struct FaultyProxy {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    generation: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl FaultyProxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (up2, generation2, stop2) = (up.clone(), generation.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop2.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut client, _)) = accepted else { continue };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let cut = generation2.lock().unwrap().clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            generation,
            stop,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut generation = self.generation.lock().unwrap();
        generation.cancel();
        *generation = CancellationToken::new();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.generation.lock().unwrap().cancel();
    }
}

/// `url` with its host and port replaced by `addr`.
fn via(url: &str, addr: std::net::SocketAddr) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let (userinfo, rest) = match rest.split_once('@') {
        Some((user, rest)) => (format!("{user}@"), rest),
        None => (String::new(), rest),
    };
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let upstream = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    (format!("{scheme}://{userinfo}{addr}/{path}"), upstream)
}

async fn health(server: &TestServer) -> Option<i32> {
    let channel = tonic::transport::Channel::from_shared(server.url())
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest {
        service: "audit.v1.AuditService".into(),
    };
    client.check(request).await.ok().map(|r| r.into_inner().status)
}

async fn wait_for_health(
    server: &TestServer,
    wanted: tonic_health::pb::health_check_response::ServingStatus,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while health(server).await != Some(wanted as i32) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never became {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn append_with_key(caller: &mut Caller, key: &str) -> Result<u64, tonic::Status> {
    let mut e = event("payment.refund", "ops");
    e.idempotency_key = key.to_owned();
    let request = caller.request(AppendRequest { events: vec![e] });
    let response = tokio::time::timeout(PATIENCE, caller.client.append(request))
        .await
        .expect("Append hung");
    response.map(|r| r.into_inner().results[0].seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_fast_reports_not_serving_and_recovers_without_gaps() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let Some(Backend::Postgres(url)) = Backend::postgres() else {
        return;
    };
    let (_, upstream) = via(&url, "127.0.0.1:1".parse().unwrap());
    let proxy = FaultyProxy::start(upstream).await;
    let (proxied, _) = via(&url, proxy.addr);
    let server = TestServer::start_on(Backend::Postgres(proxied.clone()), proxied, |config| {
        config.heartbeat_secs = 1
    })
    .await;
    let mut caller = server.caller().await;
    caller
        .append((0..10).map(|i| event("user.login", &format!("u{i}"))).collect())
        .await;
    let request = caller.request(WatchRequest {
        filter: None,
        after_seq: Some(0),
        ..Default::default()
    });
    let mut stream = caller.client.watch(request).await.expect("watch").into_inner();
    let mut delivered = Vec::new();
    while delivered.len() < 10 {
        if let Some(Kind::Event(e)) = stream.next().await.expect("open").expect("event").kind {
            delivered.push(e.seq);
        }
    }

    proxy.cut();
    // Calls fail, quickly and as UNAVAILABLE, never with a wrong answer.
    let status = append_with_key(&mut caller, "refund-7")
        .await
        .expect_err("append during the outage");
    assert_status(&status, Code::Unavailable, "UNAVAILABLE", None);
    wait_for_health(&server, ServingStatus::NotServing).await;
    // The stream ends with a status naming where to resume.
    let status = end_status(&mut stream, PATIENCE).await;
    assert_status(&status, Code::Unavailable, "UNAVAILABLE", None);
    let resume: u64 = status
        .message()
        .rsplit("after_seq=")
        .next()
        .and_then(|n| n.parse().ok())
        .expect("resume position");
    assert_eq!(resume, 10);

    proxy.restore();
    wait_for_health(&server, ServingStatus::Serving).await;
    // The pool recovers by itself; the retried key records exactly once.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let seq = loop {
        match append_with_key(&mut caller, "refund-7").await {
            Ok(seq) => break seq,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(tokio::time::Instant::now() < deadline, "never recovered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(seq, 11);
    assert_eq!(
        append_with_key(&mut caller, "refund-7").await.expect("duplicate"),
        11
    );
    caller
        .append((0..9).map(|i| event("user.logout", &format!("u{i}"))).collect())
        .await;

    let request = caller.request(WatchRequest {
        filter: None,
        after_seq: Some(resume),
        ..Default::default()
    });
    let mut stream = caller.client.watch(request).await.expect("resume").into_inner();
    while delivered.len() < 20 {
        if let Some(Kind::Event(e)) = stream.next().await.expect("open").expect("event").kind {
            delivered.push(e.seq);
        }
    }
    assert_eq!(delivered, (1..=20).collect::<Vec<u64>>());
}

//! Metrics: the `/metrics` listener counts a known sequence of calls
//! exactly (codes from response headers and from stream trailers), and its
//! exposition passes `promtool check metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use audit_service::proto::{self, ExportRequest, QueryRequest, WatchRequest};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::on_both_backends;
use crate::support::{Backend, Caller, Credential, TestServer, event, new_tenant};

on_both_backends!(metrics_count_a_known_sequence_of_calls_exactly);

/// Paths no service of the server has: a method the audit service lacks
/// and a service that does not exist.
const INVENTED: [&str; 2] = ["/audit.v1.AuditService/Nope", "/no.such.Service/X"];

/// A free port on loopback for the metrics listener.
pub fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

async fn start(backend: Backend) -> (TestServer, SocketAddr) {
    let metrics = free_address();
    let server = TestServer::start_with(backend, |config| config.metrics_listen = Some(metrics)).await;
    (server, metrics)
}

/// `GET path` over plain HTTP/1.1: the status line and the body.
pub async fn http_get(address: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// The status line of a `GET /metrics` on a new connection, or `None`
/// when the listener closed it unanswered (too many connections).
async fn try_scrape(address: SocketAddr) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    response.lines().next().map(str::to_owned)
}

/// The samples of an exposition: name, labels, value.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample");
            let value: f64 = value.parse().expect("a number");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels.trim_end_matches('}');
                    let labels = labels
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair.split_once('=').expect("label=value");
                            (key.to_owned(), value.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), BTreeMap::new()),
            };
            (name, labels, value)
        })
        .collect()
}

/// The sum of the samples of `name` whose labels include `labels` (0 when
/// there are none).
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .into_iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

fn call(service: &'static str, method: &'static str) -> [(&'static str, &'static str); 2] {
    [("grpc_service", service), ("grpc_method", method)]
}

fn handled(text: &str, service: &str, method: &str, code: &str) -> f64 {
    value(
        text,
        "grpc_server_handled_total",
        &[
            ("grpc_service", service),
            ("grpc_method", method),
            ("grpc_code", code),
        ],
    )
}

const AUDIT: &str = "audit.v1.AuditService";

async fn metrics_count_a_known_sequence_of_calls_exactly(backend: Backend) {
    let postgres = matches!(backend, Backend::Postgres(_));
    let (server, metrics) = start(backend).await;
    let mut caller = server.caller().await;

    // Append: one OK with two events, one refused for its missing credential.
    caller
        .append(vec![event("user.login", "alice"), event("user.logout", "alice")])
        .await;
    let mut anonymous = server.caller_with(&new_tenant(), Credential::None).await;
    let request = anonymous.request(proto::AppendRequest {
        events: vec![event("user.login", "mallory")],
    });
    let refused = anonymous.client.append(request).await.expect_err("no credential");
    assert_eq!(refused.code(), Code::Unauthenticated);

    // Query: one OK, one with a forged page token.
    caller.query(QueryRequest::default()).await;
    let request = caller.request(QueryRequest {
        page_token: "forged".into(),
        ..Default::default()
    });
    let refused = caller.client.query(request).await.expect_err("forged token");
    assert_eq!(refused.code(), Code::InvalidArgument);

    // Export, read to its end: OK arrives in the stream's trailers.
    let request = caller.request(ExportRequest::default());
    let mut export = caller.client.export(request).await.expect("export").into_inner();
    let mut exported = 0.0;
    while let Some(message) = export.next().await {
        message.expect("export message");
        exported += 1.0;
    }

    // Watch from the start, two events read, then dropped: CANCELLED.
    let request = caller.request(WatchRequest {
        filter: None,
        after_seq: Some(0),
        ..Default::default()
    });
    let mut watch = caller.client.watch(request).await.expect("watch").into_inner();
    let mut events = 0;
    while events < 2 {
        let message = watch.next().await.expect("open").expect("a message");
        if matches!(message.kind, Some(proto::watch_response::Kind::Event(_))) {
            events += 1;
        }
    }
    drop(watch);

    // The server learns of the cancel when the reset reaches it.
    let mut text = String::new();
    for _ in 0..600 {
        let (status, body) = http_get(metrics, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        text = body;
        if handled(&text, AUDIT, "Watch", "Canceled") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let started = |method| value(&text, "grpc_server_started_total", &call(AUDIT, method));
    assert_eq!(started("Append"), 2.0, "{text}");
    assert_eq!(started("Query"), 2.0);
    assert_eq!(started("Export"), 1.0);
    assert_eq!(started("Watch"), 1.0);
    assert_eq!(handled(&text, AUDIT, "Append", "OK"), 1.0);
    assert_eq!(handled(&text, AUDIT, "Append", "Unauthenticated"), 1.0);
    assert_eq!(handled(&text, AUDIT, "Query", "OK"), 1.0);
    assert_eq!(handled(&text, AUDIT, "Query", "InvalidArgument"), 1.0);
    assert_eq!(handled(&text, AUDIT, "Export", "OK"), 1.0, "{text}");
    assert_eq!(handled(&text, AUDIT, "Watch", "Canceled"), 1.0, "{text}");
    let of_type = |kind| [("grpc_type", kind), ("grpc_service", AUDIT)];
    assert_eq!(value(&text, "grpc_server_handled_total", &of_type("unary")), 4.0);
    assert_eq!(
        value(&text, "grpc_server_handled_total", &of_type("server_stream")),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "grpc_server_handling_seconds_count",
            &call(AUDIT, "Append")
        ),
        2.0
    );
    // One response per OK unary call (a refused call sends none); the
    // Export's messages as the client counted them; at least the Watch's
    // two events.
    let sent = |method| value(&text, "grpc_server_msg_sent_total", &call(AUDIT, method));
    assert_eq!(sent("Append"), 1.0);
    assert_eq!(sent("Query"), 1.0);
    assert_eq!(sent("Export"), exported);
    assert!(sent("Watch") >= 2.0, "{text}");
    // The refused Append's request is never read.
    assert_eq!(
        value(&text, "grpc_server_msg_received_total", &call(AUDIT, "Append")),
        1.0
    );
    // Health and reflection are counted as well (the harness's readiness checks).
    assert!(
        handled(&text, "grpc.health.v1.Health", "Check", "OK") >= 1.0,
        "{text}"
    );

    assert_eq!(value(&text, "audit_events_appended_total", &[]), 2.0);
    assert_eq!(value(&text, "audit_append_group_events_count", &[]), 1.0);
    assert_eq!(value(&text, "audit_append_group_events_sum", &[]), 2.0);
    assert_eq!(value(&text, "audit_append_commit_seconds_count", &[]), 1.0);
    assert_eq!(value(&text, "audit_page_token_rejects_total", &[]), 1.0);
    assert_eq!(
        value(
            &text,
            "audit_auth_failures_total",
            &[("reason", "credential_missing")]
        ),
        1.0
    );
    assert_eq!(value(&text, "audit_auth_failures_total", &[]), 1.0);
    assert!(
        value(&text, "audit_db_connections", &[("pool", "write")]) >= 1.0,
        "{text}"
    );
    if postgres {
        // The lone caller's append pool (generic plans) is a pool of its own.
        assert!(text.contains(r#"pool="append""#), "{text}");
    }
    assert!(text.contains("audit_watch_streams_open "), "{text}");
    assert!(!text.contains(&caller.tenant), "no tenant label");

    // The listener serves /metrics only.
    let (status, _) = http_get(metrics, "/other").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    check_with_promtool(&text);
    server.stop().await;
}

/// Calls `path` as a unary gRPC method with an empty message over
/// `caller`'s channel and credential: the status it ends with.
async fn call_path(caller: &Caller, path: &'static str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(caller.channel.clone());
    grpc.ready().await.expect("channel ready");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    grpc.unary(
        caller.request(()),
        http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .expect_err("no such method")
}

/// A client cannot add series by inventing gRPC paths: its calls are
/// counted under `grpc_service="unknown"`, `grpc_method="unknown"`, and no
/// label takes a value from the path. The database plays no part: SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_grpc_paths_are_counted_as_unknown_without_labels_of_their_own() {
    let (server, metrics) = start(Backend::Sqlite).await;
    let caller = server.caller().await;
    for path in INVENTED {
        for _ in 0..2 {
            let status = call_path(&caller, path).await;
            assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
        }
    }

    let (status, text) = http_get(metrics, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let unknown = [
        ("grpc_type", "unknown"),
        ("grpc_service", "unknown"),
        ("grpc_method", "unknown"),
    ];
    assert_eq!(value(&text, "grpc_server_started_total", &unknown), 4.0, "{text}");
    assert_eq!(
        handled(&text, "unknown", "unknown", "Unimplemented"),
        4.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "grpc_server_handling_seconds_count", &unknown),
        4.0,
        "{text}"
    );
    // No sample of any metric has a label value taken from the paths
    // (`audit.v1.AuditService` is a real service: only what was invented).
    for (name, labels, _) in samples(&text) {
        for value in labels.values() {
            assert!(
                !["Nope", "no.such.Service", "X"].contains(&value.as_str())
                    && !value.contains("Nope")
                    && !value.contains("no.such"),
                "{name}{labels:?} takes a label value from an invented path"
            );
        }
    }
    server.stop().await;
}

/// Idle connections far beyond the listener's cap (64) neither pin it nor
/// keep scrapes out for good: those beyond the cap are closed at once
/// (while the first are still open), those within it when their request
/// head is overdue (10 s), every one unanswered, and a scrape is then
/// served. The database plays no part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_cap_are_closed_and_a_scrape_is_then_served() {
    let (server, metrics) = start(Backend::Sqlite).await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(metrics).await.expect("connect"));
    }
    // The last is beyond the cap: closed at once, while the first still
    // waits for its request head.
    let mut answer = Vec::new();
    let _ = idle
        .last_mut()
        .expect("connections")
        .read_to_end(&mut answer)
        .await;
    assert!(answer.is_empty(), "a connection beyond the cap was answered");
    let first = idle.remove(0).into_std().expect("std stream");
    first.set_nonblocking(true).expect("nonblocking");
    let peeked = first.peek(&mut [0; 1]);
    assert!(
        peeked
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "the first connection was not open when the last was closed: {peeked:?}"
    );
    drop(first);
    for stream in &mut idle {
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        assert!(answer.is_empty(), "an idle connection was answered");
    }
    let mut served = None;
    for _ in 0..600 {
        served = try_scrape(metrics).await;
        if served.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served.as_deref(), Some("HTTP/1.1 200 OK"));
    server.stop().await;
}

/// `promtool check metrics` on `exposition`: fails loudly under CI when
/// promtool is missing, and says it skipped elsewhere.
fn check_with_promtool(exposition: &str) {
    use std::io::Write as _;
    let spawned = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") => {
            panic!("promtool (Debian package `prometheus`) is required under CI: {error}")
        }
        Err(error) => {
            eprintln!("SKIPPED promtool check metrics: {error}; install the Debian package `prometheus`");
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n{exposition}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// SQLite only: on the shared PostgreSQL database another test's server
/// may run retention over this tenant first, and count the erasures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_erasures_are_counted() {
    let metrics = free_address();
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        config.metrics_listen = Some(metrics);
        config.retention_interval_secs = 1;
    })
    .await;
    let mut admin = server.admin_for(&new_tenant()).await;
    crate::retention::append_as(&mut admin, "old", 3).await;
    // Due once a one-second period has passed since they were recorded.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    crate::retention::set_retention(&mut admin, Some(1), false)
        .await
        .expect("set retention");
    let mut erased = 0.0;
    for _ in 0..600 {
        let (_, text) = http_get(metrics, "/metrics").await;
        erased = value(&text, "audit_retention_erased_events_total", &[]);
        if erased >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(erased, 3.0);
    server.stop().await;
}

/// A Watch whose client does not read stays behind the head, reading
/// storage: it counts as open and lagging until it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_watch_counts_as_lagging_until_it_goes() {
    let (server, metrics) = start(Backend::Sqlite).await;
    let mut caller = server.caller().await;
    // 1.6 MB of events: far more than a stream's 256 KiB buffer and the
    // client's 64 KiB windows.
    for _ in 0..4 {
        let batch = (0..50)
            .map(|_| proto::EventInput {
                reasoning: "x".repeat(8 * 1024),
                ..event("document.read", "frank")
            })
            .collect();
        caller.append(batch).await;
    }
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .expect("url")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut client = proto::audit_service_client::AuditServiceClient::new(channel);
    let request = caller.request(WatchRequest {
        filter: None,
        after_seq: Some(0),
        ..Default::default()
    });
    let unread = client.watch(request).await.expect("watch").into_inner();

    let gauges = |text: &str| {
        (
            value(text, "audit_watch_streams_open", &[]),
            value(text, "audit_watch_streams_lagging", &[]),
        )
    };
    let until = |want: (f64, f64)| async move {
        let mut seen = (f64::NAN, f64::NAN);
        for _ in 0..600 {
            let (_, text) = http_get(metrics, "/metrics").await;
            seen = gauges(&text);
            if seen == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    };
    assert_eq!(until((1.0, 1.0)).await, (1.0, 1.0), "open and lagging");
    drop(unread);
    assert_eq!(until((0.0, 0.0)).await, (0.0, 0.0), "gone");
    server.stop().await;
}

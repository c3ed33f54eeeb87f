//! Query pages are capped in bytes as well as in events: large valid
//! events page through at any page size, every response fits the 4 MiB a
//! gRPC client accepts by default, and concurrent pages of large events
//! keep the server's memory bounded.

use std::time::Duration;

use audit_service::proto::audit_service_client::AuditServiceClient;
use audit_service::proto::{EventFilter, EventInput, QueryRequest, QueryResponse};
use prost::Message as _;
use prost_types::value::Kind;
use prost_types::{Struct, Value};
use tonic::transport::Endpoint;

use crate::on_both_backends;
use crate::support::{Backend, Caller, ServerProcess, TestServer, event, new_tenant};

on_both_backends!(
    large_events_page_through_at_page_size_1000_once_each_in_order_within_4_mib,
    concurrent_pages_of_large_events_keep_server_memory_bounded,
);

/// The largest message gRPC clients accept unless told otherwise (tonic,
/// grpc-go, grpc-java, grpc C core, grpcurl): what a page may weigh.
const DEFAULT_CLIENT_LIMIT: usize = 4 * 1024 * 1024;

/// Events of the scenario, and how many are appended per call.
pub(crate) const EVENTS: usize = 1200;
const BATCH: usize = 50;

/// Metadata string fields per event, and bytes per field: ~60 KB of JSON.
const FIELDS: usize = 60;
const FIELD_BYTES: usize = 1000;

/// A valid event with ~60 KB of metadata that does not compress well
/// (PostgreSQL would otherwise store a page of it in a few kilobytes),
/// marked with its index.
pub(crate) fn large_event(index: usize) -> EventInput {
    let mut state = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut text = |len: usize| -> String {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[(state % 36) as usize])
            })
            .collect()
    };
    let mut fields: std::collections::BTreeMap<String, Value> = (0..FIELDS)
        .map(|f| {
            let value = Value {
                kind: Some(Kind::StringValue(text(FIELD_BYTES))),
            };
            (format!("f{f:02}"), value)
        })
        .collect();
    fields.insert(
        "index".to_owned(),
        Value {
            kind: Some(Kind::NumberValue(f64::from(
                u32::try_from(index).expect("a small index"),
            ))),
        },
    );
    EventInput {
        metadata: Some(Struct { fields }),
        ..event("document.update", &format!("writer-{}", index % 7))
    }
}

/// Appends the scenario's events; returns their ids in seq order.
pub(crate) async fn append_large_events(caller: &mut Caller) -> Vec<String> {
    let mut ids = Vec::with_capacity(EVENTS);
    for start in (0..EVENTS).step_by(BATCH) {
        let batch = (start..start + BATCH).map(large_event).collect();
        let results = caller.append(batch).await;
        assert_eq!(results.len(), BATCH);
        ids.extend(results.into_iter().map(|r| r.id));
    }
    ids
}

/// Every page of one query at `page_size`, each checked as it arrives.
async fn all_pages(caller: &mut Caller, order_by: &str, page_size: i32) -> Vec<QueryResponse> {
    let mut pages = Vec::new();
    let mut page_token = String::new();
    // A bound on the loop, far above the pages a correct server needs.
    for _ in 0..EVENTS + 1 {
        let request = caller.request(QueryRequest {
            filter: Some(EventFilter::default()),
            page_size,
            page_token: page_token.clone(),
            order_by: order_by.to_owned(),
        });
        let page = match caller.client.query(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => panic!(
                "page {} of {order_by:?} at page_size {page_size}: {status:?}",
                pages.len() + 1
            ),
        };
        assert!(
            !page.events.is_empty(),
            "page {} is empty: paging would not progress",
            pages.len() + 1
        );
        let last = page.next_page_token.is_empty();
        page_token = page.next_page_token.clone();
        pages.push(page);
        if last {
            return pages;
        }
    }
    panic!("more than {} pages for {EVENTS} events", EVENTS + 1);
}

async fn large_events_page_through_at_page_size_1000_once_each_in_order_within_4_mib(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let ids = append_large_events(&mut caller).await;
    let largest_event = (0..EVENTS)
        .map(|i| large_event(i).metadata.map_or(0, |m| m.encoded_len()))
        .max()
        .unwrap_or_default();

    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    // Events appended in order occur in order: oldest first by occurred_at
    // is seq order, through the other kind of cursor.
    for (order_by, expected) in [("", &newest_first), ("occurred_at asc", &ids)] {
        let pages = all_pages(&mut caller, order_by, 1000).await;
        let mut seen = Vec::with_capacity(EVENTS);
        for (number, page) in pages.iter().enumerate() {
            let bytes = page.encoded_len();
            assert!(
                bytes <= DEFAULT_CLIENT_LIMIT,
                "page {} of {order_by:?} weighs {bytes} bytes",
                number + 1
            );
            // A page ends early only when the next event would not fit:
            // the budget is used, not a page of one event each time.
            if number + 1 < pages.len() {
                assert!(
                    bytes + 2 * largest_event > DEFAULT_CLIENT_LIMIT,
                    "page {} of {order_by:?} ended at {bytes} bytes and {} events",
                    number + 1,
                    page.events.len()
                );
            }
            seen.extend(page.events.iter().map(|e| e.id.clone()));
        }
        assert!(pages.len() > 1, "{EVENTS} events of ~60 KB fit one page");
        assert_eq!(seen.len(), EVENTS, "{order_by:?}: events missing or repeated");
        assert_eq!(&seen, expected, "{order_by:?}: not every event once, in order");
    }
    // Each event arrives whole: its metadata as appended.
    let first = all_pages(&mut caller, "seq asc", 3).await.remove(0);
    for (index, stored) in first.events.iter().enumerate() {
        assert_eq!(stored.metadata, large_event(index).metadata, "event {index}");
    }
}

/// Resets the process's peak resident set size (VmHWM) to its current
/// size, so the peak read afterwards is that of what follows; false where
/// the kernel does not allow it (the peak then covers the whole run, which
/// only makes the check stricter).
pub(crate) fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// A client of `server` on a connection of its own, with tonic's default
/// 4 MiB limit on what it accepts.
async fn own_connection(server: &ServerProcess, tenant: &str) -> Caller {
    let mut caller = server.caller_for(tenant).await;
    let channel = Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    caller.client = AuditServiceClient::new(channel);
    caller
}

async fn concurrent_pages_of_large_events_keep_server_memory_bounded(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&backend.database_url_in(dir.path()), &[]);
    let tenant = new_tenant();
    let mut writer = server.caller_for(&tenant).await;
    append_large_events(&mut writer).await;

    let mut readers = Vec::new();
    for _ in 0..16 {
        readers.push(own_connection(&server, &tenant).await);
    }
    // Settle after the appends, then measure from here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reset = reset_peak_rss(server.pid());
    let (before, _) = server.rss_kib();
    // 16 callers at once, twice, each asking for the first 1000 events.
    let mut outcomes = Vec::new();
    for _round in 0..2 {
        let calls: Vec<_> = readers
            .drain(..)
            .map(|mut reader| {
                tokio::spawn(async move {
                    let request = reader.request(QueryRequest {
                        page_size: 1000,
                        ..QueryRequest::default()
                    });
                    let outcome =
                        tokio::time::timeout(Duration::from_secs(300), reader.client.query(request))
                            .await
                            .map(|result| result.map(|response| response.into_inner()));
                    (reader, outcome)
                })
            })
            .collect();
        for call in calls {
            let (reader, outcome) = call.await.expect("reader task");
            readers.push(reader);
            outcomes.push(outcome);
        }
    }
    let (after, peak) = server.rss_kib();
    let growth = peak.saturating_sub(before);
    eprintln!(
        "RSS before {before} KiB, after {after} KiB, peak {peak} KiB (growth {growth} KiB; \
         peak reset: {reset}) over 2 rounds of 16 concurrent pages of 1000 large events"
    );
    // A page holds at most 4 MiB, and its encoded copy as much again; SQLite
    // reads up to 50 rows (3 MB here) ahead and each of its connections
    // caches 2 MB of pages: 16 MiB per call at most, where the whole page
    // in memory took 1.3 GiB (SQLite) and 760 MiB (PostgreSQL).
    assert!(
        growth < 256 * 1024,
        "16 concurrent pages took the server from {before} KiB to a peak of {peak} KiB"
    );
    for outcome in outcomes {
        let page = outcome.expect("a page within 300 s").expect("query");
        assert!(!page.events.is_empty() && !page.next_page_token.is_empty());
        assert!(page.encoded_len() <= DEFAULT_CLIENT_LIMIT);
        assert_eq!(page.events[0].seq, EVENTS as u64, "newest first");
    }
}

//! Watch memory is bounded in bytes: clients that never read, over events
//! as large as validation allows, cannot grow the server without bound,
//! and cannot starve the streams that do read.

use std::time::Duration;

use audit_service::proto::{EventInput, WatchRequest, WatchResponse, watch_response::Kind};
use tokio_stream::StreamExt;
use tonic::Streaming;

use crate::on_both_backends;
use crate::support::{Backend, Caller, ServerProcess, event, new_tenant};

on_both_backends!(
    hundred_unread_streams_of_large_events_keep_the_server_under_512_mib,
    unread_streams_cannot_starve_a_reading_stream_of_a_small_watch_budget,
);

/// Bound on waiting for something that must happen; a failure, not a hang.
const PATIENCE: Duration = Duration::from_secs(120);
/// Events in the log the streams replay.
const EVENTS: usize = 600;

/// A valid event of about 97 KB: 64 keys of 1 000 characters of metadata
/// (64 577 bytes as JSON, under the 64 KiB limit) and 32 KiB of reasoning.
fn large_event(i: usize) -> EventInput {
    let mut e = event("document.update", &format!("writer-{i}"));
    let text = |salt: usize, len: usize| -> String {
        (0..len)
            .map(|n| char::from(b'a' + u8::try_from((n * 7 + salt * 13 + i) % 26).expect("below 26")))
            .collect()
    };
    e.metadata = Some(prost_types::Struct {
        fields: (0..64)
            .map(|k| {
                (
                    format!("k{k:02}"),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(text(k, 1000))),
                    },
                )
            })
            .collect(),
    });
    e.reasoning = text(99, 32 * 1024);
    e
}

async fn append_large_events(caller: &mut Caller) {
    for batch in 0..EVENTS / 20 {
        let events = (0..20).map(|i| large_event(batch * 20 + i)).collect();
        caller.append(events).await;
    }
}

/// Opens `count` streams replaying the whole log over `connections`
/// connections with the smallest HTTP/2 windows (64 KiB), and never reads
/// them: the client holds little, so the server's buffers are what fill.
/// Reads `stream` until it has delivered every seq in `1..=last`, in order,
/// each once.
async fn read_all(stream: &mut Streaming<WatchResponse>, last: u64) {
    let mut seq = 0;
    while seq < last {
        match tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("the stream never delivered")
        {
            Some(Ok(response)) => {
                if let Some(Kind::Event(e)) = response.kind {
                    assert_eq!(e.seq, seq + 1, "gap or repeat");
                    seq = e.seq;
                }
            }
            other => panic!("stream ended: {other:?}"),
        }
    }
}

async fn hundred_unread_streams_of_large_events_keep_the_server_under_512_mib(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&backend.database_url_in(dir.path()), &[]);
    let tenant = new_tenant();
    let mut caller = server.caller_for(&tenant).await;
    append_large_events(&mut caller).await;
    let (idle, _) = server.rss_kib();
    // Read at the end.
    let mut stream = server.watch_from_start(&tenant).await;
    let unread = server.unread_watch_streams(&tenant, 10, 100).await;
    let peak = server.settled_peak_rss_kib().await;
    eprintln!(
        "RSS idle {idle} KiB, peak with 100 unread streams of {EVENTS} large events {peak} KiB (+{} MiB)",
        peak.saturating_sub(idle) / 1024
    );
    assert!(
        peak < idle + 512 * 1024,
        "100 unread streams took the server from {idle} KiB to {peak} KiB"
    );
    // Appends go on while the streams stall.
    let seq = caller.append(vec![event("a.b", "x")]).await[0].seq;
    assert_eq!(seq, EVENTS as u64 + 1);
    // A stalled stream still gets everything, in order, once it reads.
    read_all(&mut stream, seq).await;
    drop(unread);
}

async fn unread_streams_cannot_starve_a_reading_stream_of_a_small_watch_budget(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    // 40 unread streams could buffer 20 MiB; the process may buffer 2.
    let server = ServerProcess::start(
        &backend.database_url_in(dir.path()),
        &[("AUDIT_WATCH_BUFFER_MIB", "2")],
    );
    let tenant = new_tenant();
    let mut caller = server.caller_for(&tenant).await;
    append_large_events(&mut caller).await;
    let (idle, _) = server.rss_kib();
    let unread = server.unread_watch_streams(&tenant, 4, 40).await;
    let peak = server.settled_peak_rss_kib().await;
    eprintln!(
        "RSS idle {idle} KiB, peak with 40 unread streams and a 2 MiB budget {peak} KiB (+{} MiB)",
        peak.saturating_sub(idle) / 1024
    );
    // Opened after the unread streams have taken the whole budget: it is
    // served all the same, from storage, as they give their buffers back.
    let mut own = server.caller_for(&tenant).await;
    let request = own.request(WatchRequest {
        filter: None,
        after_seq: Some(0),
        ..Default::default()
    });
    let mut stream = own.client.watch(request).await.expect("watch").into_inner();
    let seq = caller.append(vec![event("a.b", "x")]).await[0].seq;
    read_all(&mut stream, seq).await;
    assert!(
        peak < idle + 128 * 1024,
        "40 unread streams under a 2 MiB budget took the server from {idle} KiB to {peak} KiB"
    );
    drop(unread);
}

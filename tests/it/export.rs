//! Export: the log in seq order, chunk by chunk, provable offline against
//! the signed checkpoint it ends with; flat server memory for readers that
//! do not read.

use std::time::Duration;

use audit_service::integrity::VerifierKey;
use audit_service::integrity::export::{ExportMismatch, ExportVerifier};
use audit_service::proto::export_response::Part;
use audit_service::proto::{
    AuditEvent, Checkpoint, DeleteRequest, EventFilter, ExportChunk, ExportHeader, ExportRequest,
};
use tonic::Code;

use crate::integrity::leaf_of;
use crate::on_both_backends;
use crate::page_bytes::{EVENTS, append_large_events, reset_peak_rss};
use crate::support::{Backend, Caller, ServerProcess, TestServer, assert_status, event, new_tenant};

on_both_backends!(
    export_of_the_whole_log_proves_every_event_against_the_signed_checkpoint,
    filtered_export_from_a_resume_point_proves_what_it_holds,
    an_export_with_a_changed_event_does_not_check_out,
    export_needs_read_scope_and_a_position_within_the_log,
    exports_to_readers_that_do_not_read_keep_server_memory_flat,
);

/// An export as received: header, chunks, checkpoint.
pub(crate) struct Export {
    pub(crate) header: ExportHeader,
    pub(crate) chunks: Vec<ExportChunk>,
    pub(crate) checkpoint: Checkpoint,
}

impl Export {
    pub(crate) fn events(&self) -> impl Iterator<Item = &AuditEvent> {
        self.chunks.iter().flat_map(|c| c.events.iter())
    }

    /// Rebuilds the tree and checks it against the checkpoint, whose
    /// signature is checked with `key`; leaves recomputed by the tests'
    /// own hashing.
    pub(crate) fn check(&self, key: &str) -> Result<(), ExportMismatch> {
        let signed = VerifierKey::parse(key)
            .unwrap()
            .open(&self.checkpoint.note)
            .expect("the checkpoint is signed by the key");
        let prefix = self
            .header
            .prefix
            .iter()
            .map(|h| h.as_slice().try_into().unwrap())
            .collect();
        let mut verifier = ExportVerifier::new(self.header.after_seq, prefix)?;
        for chunk in &self.chunks {
            let whole: Vec<&AuditEvent> = chunk.events.iter().filter(|e| !e.action.is_empty()).collect();
            assert_eq!(whole.len(), chunk.leaf_hashes.len());
            let mut leaves = whole.iter().zip(&chunk.leaf_hashes).peekable();
            let mut skipped = chunk.skipped.iter().peekable();
            loop {
                let next_event = leaves.peek().map(|(e, _)| e.seq);
                let next_node = skipped.peek().map(|n| (n.index << n.level) + 1);
                match (next_event, next_node) {
                    (Some(seq), node) if node.is_none_or(|n| seq < n) => {
                        let (event, _) = leaves.next().unwrap();
                        verifier.event(seq, leaf_of(event))?;
                    }
                    (_, Some(_)) => {
                        let node = skipped.next().unwrap();
                        verifier.subtree(node.level, node.index, node.hash.as_slice().try_into().unwrap())?;
                    }
                    (None, None) => break,
                    _ => unreachable!(),
                }
            }
            assert_eq!(
                verifier.next_seq(),
                chunk.resume_after_seq + 1,
                "a chunk covers up to its resume position"
            );
        }
        verifier.finish(&signed.checkpoint)
    }
}

async fn export(caller: &mut Caller, filter: EventFilter, after_seq: u64) -> Result<Export, tonic::Status> {
    let request = caller.request(ExportRequest {
        filter: Some(filter),
        after_seq,
        ..Default::default()
    });
    let mut stream = caller.client.export(request).await?.into_inner();
    let mut header = None;
    let mut chunks = Vec::new();
    let mut checkpoint = None;
    while let Some(message) = stream.message().await? {
        match message.part.expect("a part") {
            Part::Header(h) => header = Some(h),
            Part::Chunk(c) => {
                assert!(header.is_some() && checkpoint.is_none(), "chunks come between");
                chunks.push(c);
            }
            Part::Checkpoint(c) => checkpoint = Some(c),
        }
    }
    Ok(Export {
        header: header.expect("header"),
        chunks,
        checkpoint: checkpoint.expect("checkpoint last"),
    })
}

/// 2 500 events (three chunks), the 10th erased; every 100th a logout.
async fn log_of_2500(server: &TestServer) -> (Caller, Vec<String>) {
    let mut caller = server.caller().await;
    let mut ids = Vec::new();
    for round in 0..3 {
        let batch = (0..1000)
            .take(if round == 2 { 500 } else { 1000 })
            .map(|i| {
                let n = round * 1000 + i + 1;
                event(
                    if n % 100 == 0 { "user.logout" } else { "user.login" },
                    &format!("u{n}"),
                )
            })
            .collect();
        ids.extend(caller.append(batch).await.into_iter().map(|r| r.id));
    }
    let request = caller.request(DeleteRequest {
        id: ids[9].clone(),
        reason: "erasure".into(),
    });
    caller.client.delete(request).await.expect("delete");
    (caller, ids)
}

async fn export_of_the_whole_log_proves_every_event_against_the_signed_checkpoint(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, _) = log_of_2500(&server).await;
    let export = export(&mut caller, EventFilter::default(), 0)
        .await
        .expect("export");
    assert_eq!(export.header.tree_size, 2501);
    assert!(export.chunks.len() >= 3, "in chunks: {}", export.chunks.len());
    let seqs: Vec<u64> = export.events().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=2501).collect::<Vec<_>>(), "every event, in seq order");
    let erased = export.events().find(|e| e.seq == 10).unwrap();
    assert!(erased.action.is_empty() && erased.actor.as_ref().is_none_or(|a| a.id.is_empty()));
    assert!(
        !erased.id.is_empty() && erased.recorded_at.is_some(),
        "an erased event keeps its place"
    );
    let key = export.checkpoint.verifier_key.clone();
    export.check(&key).expect("the export checks out");
    assert_eq!(export.chunks.last().unwrap().resume_after_seq, 2501);
}

async fn filtered_export_from_a_resume_point_proves_what_it_holds(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, _) = log_of_2500(&server).await;
    let filter = EventFilter {
        actions: vec!["user.logout".into()],
        ..Default::default()
    };
    let export = export(&mut caller, filter.clone(), 700).await.expect("export");
    assert_eq!(export.header.after_seq, 700);
    assert_eq!(
        export.header.tenant_id, caller.tenant,
        "the header names the tenant"
    );
    assert_eq!(export.header.filter, Some(filter), "and the filter applied");
    let whole: Vec<u64> = export
        .events()
        .filter(|e| !e.action.is_empty())
        .map(|e| e.seq)
        .collect();
    assert_eq!(whole, (8..=25).map(|n| n * 100).collect::<Vec<_>>());
    assert!(export.events().all(|e| e.seq > 700));
    let key = export.checkpoint.verifier_key.clone();
    export.check(&key).expect("the filtered export checks out");
}

async fn an_export_with_a_changed_event_does_not_check_out(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, _) = log_of_2500(&server).await;
    let mut export = export(&mut caller, EventFilter::default(), 2000)
        .await
        .expect("export");
    let key = export.checkpoint.verifier_key.clone();
    export.check(&key).expect("as exported");
    let event = export.chunks[0]
        .events
        .iter_mut()
        .find(|e| e.seq == 2100)
        .unwrap();
    event.action = "user.logoff".into();
    let recomputed = leaf_of(event);
    let position = export.chunks[0]
        .events
        .iter()
        .filter(|e| !e.action.is_empty())
        .position(|e| e.seq == 2100)
        .unwrap();
    assert_ne!(
        export.chunks[0].leaf_hashes[position],
        recomputed.to_vec(),
        "the stored leaf shows the change"
    );
    assert_eq!(export.check(&key), Err(ExportMismatch::Root));
    // A removed event leaves its seq uncovered.
    export.chunks[0].events.retain(|e| e.seq != 2100);
    export.chunks[0].leaf_hashes.remove(position);
    assert!(matches!(
        export.check(&key),
        Err(ExportMismatch::OutOfPlace { expected: 2100, .. })
    ));
}

async fn export_needs_read_scope_and_a_position_within_the_log(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    caller.append(vec![event("user.login", "a")]).await;
    let status = export(&mut caller, EventFilter::default(), 5)
        .await
        .err()
        .expect("beyond the head");
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("after_seq"),
    );
    let bad = EventFilter {
        expression: "action =".into(),
        ..Default::default()
    };
    let status = export(&mut caller, bad, 0).await.err().expect("bad filter");
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("filter.expression"),
    );
    let token = crate::support::hs256_token(&crate::support::claims("w", &caller.tenant, "audit:append"));
    let mut writer = server
        .caller_with(&caller.tenant, crate::support::Credential::Bearer(token))
        .await;
    let status = export(&mut writer, EventFilter::default(), 0)
        .await
        .err()
        .expect("no read scope");
    assert_status(&status, Code::PermissionDenied, "MISSING_SCOPE", None);
    // An empty log exports a header and its checkpoint.
    let mut empty = server.caller().await;
    let export = export(&mut empty, EventFilter::default(), 0)
        .await
        .expect("empty export");
    assert!(export.chunks.is_empty() && export.header.tree_size == 0);
}

async fn exports_to_readers_that_do_not_read_keep_server_memory_flat(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&backend.database_url_in(dir.path()), &[]);
    let tenant = new_tenant();
    let mut writer = server.caller_for(&tenant).await;
    append_large_events(&mut writer).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reset = reset_peak_rss(server.pid());
    let (before, _) = server.rss_kib();

    // 16 exports of ~70 MB each on connections with 64 KiB windows, none read.
    let mut streams = Vec::new();
    for _ in 0..16 {
        let channel = crate::support::small_window_channel(&format!("http://{}", server.addr)).await;
        let mut reader = server.caller_for(&tenant).await;
        reader.client = audit_service::proto::audit_service_client::AuditServiceClient::new(channel);
        let request = reader.request(ExportRequest::default());
        streams.push(reader.client.export(request).await.expect("export").into_inner());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peak = server.settled_peak_rss_kib().await;
    let growth = peak.saturating_sub(before);
    eprintln!(
        "RSS before {before} KiB, peak {peak} KiB (growth {growth} KiB; peak reset: {reset}) with 16 unread exports"
    );
    // Each stream holds at most two chunks of at most 1 MiB (the one in
    // HTTP/2's send buffer and the one read ahead) until its reader takes
    // them (measured: 53 MiB for the 16); SQLite's connections
    // cache up to 2 MiB of pages each. Reading whole statements of 1000
    // such events grew it by 600 MiB.
    assert!(
        growth < 128 * 1024,
        "16 unread exports grew the server by {growth} KiB"
    );

    // One of them, read now, is whole.
    let mut stream = streams.pop().unwrap();
    let mut events = 0;
    while let Some(message) = stream.message().await.expect("message") {
        if let Some(Part::Chunk(chunk)) = message.part {
            events += chunk.events.len();
        }
    }
    assert_eq!(events, EVENTS);
}

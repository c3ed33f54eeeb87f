//! A Watch stream lives no longer than its credential: a revoked API key or
//! an expired JWT ends it UNAUTHENTICATED, and nothing appended after the
//! revocation reaches it.

use std::time::Duration;

use audit_service::auth::jwt::LEEWAY_SECS;
use audit_service::proto::{EventFilter, WatchRequest, WatchResponse, watch_response::Kind};
use tokio_stream::StreamExt;
use tonic::{Code, Status, Streaming};

use crate::on_both_backends;
use crate::support::{
    ALL_SCOPES, Backend, Caller, Credential, TestServer, assert_status, event, hs256_token, new_tenant,
    now_secs,
};

on_both_backends!(
    stream_of_a_revoked_api_key_ends_unauthenticated_within_a_heartbeat,
    events_appended_after_an_api_key_is_revoked_are_not_delivered,
    stream_of_a_jwt_ends_unauthenticated_once_exp_and_the_leeway_pass,
);

/// Bound on waiting for one message; a failure, not a hang.
const PATIENCE: Duration = Duration::from_secs(120);

async fn open(caller: &mut Caller, after_seq: Option<u64>) -> Streaming<WatchResponse> {
    let request = caller.request(WatchRequest {
        filter: Some(EventFilter::default()),
        after_seq,
        ..Default::default()
    });
    caller.client.watch(request).await.expect("watch").into_inner()
}

async fn next(stream: &mut Streaming<WatchResponse>) -> Result<Kind, Status> {
    match tokio::time::timeout(PATIENCE, stream.next()).await {
        Ok(Some(Ok(response))) => Ok(response.kind.expect("a kind")),
        Ok(Some(Err(status))) => Err(status),
        Ok(None) => panic!("stream ended without a status"),
        Err(_) => panic!("no message within {PATIENCE:?}"),
    }
}

/// Reads until the stream ends, allowing at most `heartbeats` heartbeats
/// and no event; returns the status it ends with.
async fn end_status(stream: &mut Streaming<WatchResponse>, heartbeats: usize) -> Status {
    let mut seen = 0;
    loop {
        match next(stream).await {
            Ok(Kind::Heartbeat(_)) => {
                seen += 1;
                assert!(seen <= heartbeats, "still streaming after {seen} heartbeats");
            }
            Ok(Kind::Event(e)) => panic!("event {} delivered after the credential ended", e.seq),
            Err(status) => return status,
        }
    }
}

/// Revokes `id` with the operator's command, as an operator would.
fn revoke_with_the_cli(server: &TestServer, id: uuid::Uuid) {
    let revoked = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args(["keys", "revoke", &id.to_string()])
        .env("DATABASE_URL", &server.database_url)
        .output()
        .expect("keys revoke");
    assert!(revoked.status.success(), "{revoked:?}");
}

async fn stream_of_a_revoked_api_key_ends_unauthenticated_within_a_heartbeat(backend: Backend) {
    let server = TestServer::start_with(backend, |config| config.heartbeat_secs = 1).await;
    let tenant = new_tenant();
    let mut writer = server.caller_for(&tenant).await;
    writer
        .append((0..3).map(|i| event("user.login", &format!("u{i}"))).collect())
        .await;
    let (id, key) = server.mint_api_key(&tenant, &["audit:read"]).await;
    let mut reader = server.caller_with(&tenant, Credential::ApiKey(key)).await;
    let mut stream = open(&mut reader, Some(0)).await;
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        if let Kind::Event(e) = next(&mut stream).await.expect("stream") {
            seqs.push(e.seq);
        }
    }
    assert_eq!(seqs, [1, 2, 3]);
    // A heartbeat: the stream is live and idle.
    while !matches!(next(&mut stream).await.expect("stream"), Kind::Heartbeat(_)) {}

    revoke_with_the_cli(&server, id);
    // One heartbeat may already be on its way; the next check ends it.
    let status = end_status(&mut stream, 2).await;
    assert_status(&status, Code::Unauthenticated, "UNAUTHENTICATED", None);
}

async fn events_appended_after_an_api_key_is_revoked_are_not_delivered(backend: Backend) {
    // No heartbeat during the test: only the check before delivering can
    // stop the events.
    let server = TestServer::start_with(backend, |config| config.heartbeat_secs = 3600).await;
    let tenant = new_tenant();
    let mut writer = server.caller_for(&tenant).await;
    let (id, key) = server.mint_api_key(&tenant, &["audit:read"]).await;
    let mut reader = server.caller_with(&tenant, Credential::ApiKey(key)).await;
    let mut stream = open(&mut reader, None).await;
    writer.append(vec![event("user.login", "before")]).await;
    match next(&mut stream).await.expect("stream") {
        Kind::Event(e) => assert_eq!(e.seq, 1),
        other => panic!("unexpected {other:?}"),
    }

    revoke_with_the_cli(&server, id);
    writer
        .append(
            (0..3)
                .map(|i| event("user.login", &format!("after-{i}")))
                .collect(),
        )
        .await;
    let status = end_status(&mut stream, 0).await;
    assert_status(&status, Code::Unauthenticated, "UNAUTHENTICATED", None);

    // Nor does a new stream with the key, from any position.
    let request = reader.request(WatchRequest {
        filter: None,
        after_seq: Some(0),
        ..Default::default()
    });
    let status = reader
        .client
        .watch(request)
        .await
        .expect_err("revoked key opened a stream");
    assert_status(&status, Code::Unauthenticated, "UNAUTHENTICATED", None);
}

async fn stream_of_a_jwt_ends_unauthenticated_once_exp_and_the_leeway_pass(backend: Backend) {
    let server = TestServer::start_with(backend, |config| config.heartbeat_secs = 1).await;
    let tenant = new_tenant();
    let mut writer = server.caller_for(&tenant).await;
    writer.append(vec![event("user.login", "alice")]).await;
    // Past its exp but within the leeway verification allows: accepted now,
    // and refused by verification a few seconds from now.
    let leeway = i64::try_from(LEEWAY_SECS).expect("leeway fits i64");
    let exp = now_secs() - leeway + 4;
    let claims = serde_json::json!({ "sub": "tester", "tenant_id": tenant, "scope": ALL_SCOPES, "exp": exp });
    let mut reader = server
        .caller_with(&tenant, Credential::Bearer(hs256_token(&claims)))
        .await;
    let mut stream = open(&mut reader, Some(0)).await;
    match next(&mut stream).await.expect("stream") {
        Kind::Event(e) => assert_eq!(e.seq, 1),
        other => panic!("unexpected {other:?}"),
    }
    // Heartbeats every second until the token lapses; without the check
    // the stream would go on for ever.
    let status = end_status(&mut stream, 60).await;
    assert_status(&status, Code::Unauthenticated, "UNAUTHENTICATED", None);
    assert!(now_secs() > exp + leeway, "the stream ended before exp + leeway");
}

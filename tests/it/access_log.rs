//! The access log: one JSON line per finished call under the target
//! `audit_service::access`, naming the caller by credential id and never
//! carrying a secret; `RUST_LOG` turns it off.

use std::time::Duration;

use audit_service::proto::{self, ExportRequest, GetRequest, QueryRequest, WatchRequest};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{Backend, Caller, Credential, ServerProcess, TestServer, event, new_tenant};

const TARGET: &str = "audit_service::access";

/// Log lines until `done` holds for the access lines seen so far (each
/// line within a minute), then every line seen.
fn lines_until(server: &ServerProcess, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<String> {
    let mut lines = Vec::new();
    let mut access = Vec::new();
    while !done(&access) {
        let line = server
            .next_log_line(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("the access lines never came; log:\n{}", lines.join("\n")));
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
            && value["target"] == TARGET
        {
            access.push(value);
        }
        lines.push(line);
    }
    lines
}

fn access_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|value| value["target"] == TARGET)
        .collect()
}

async fn caller_on(server: &ServerProcess, tenant: &str, credential: Credential) -> Caller {
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    Caller::on(channel, tenant, credential)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_call_and_no_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = Backend::Sqlite.database_url_in(dir.path());
    // The key is minted before the server starts, in the same database.
    let minted = TestServer::start_on(Backend::Sqlite, url.clone(), |_| {}).await;
    let tenant = new_tenant();
    let (key_id, api_key) = minted
        .mint_api_key(&tenant, &["audit:read", "audit:append"])
        .await;
    minted.stop().await;
    let server = ServerProcess::start(&url, &[("AUDIT_LOG_FORMAT", "json")]);

    let mut with_token = server.caller_for(&tenant).await;
    let Credential::Bearer(token) = with_token.credential.clone() else {
        unreachable!("caller_for presents a bearer token")
    };
    with_token
        .append(vec![event("user.login", "alice"), event("user.logout", "alice")])
        .await;
    let mut with_key = caller_on(&server, &tenant, Credential::ApiKey(api_key.clone())).await;
    let page = with_key.query(QueryRequest::default()).await;
    assert_eq!(page.events.len(), 2);
    let wrong_key = format!("{api_key}x");
    let mut with_wrong_key = caller_on(&server, &tenant, Credential::ApiKey(wrong_key.clone())).await;
    let request = with_wrong_key.request(QueryRequest::default());
    let refused = with_wrong_key.client.query(request).await.expect_err("wrong key");
    assert_eq!(refused.code(), Code::Unauthenticated);

    let audit_calls = |access: &[serde_json::Value]| {
        access
            .iter()
            .filter(|line| {
                line["fields"]["method"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("/audit.v1."))
            })
            .count()
    };
    let lines = lines_until(&server, |access| audit_calls(access) >= 3);
    let access = access_lines(&lines);
    let call = |method: &str, code: &str| {
        access
            .iter()
            .find(|line| line["fields"]["method"] == method && line["fields"]["code"] == code)
            .unwrap_or_else(|| panic!("no {method} {code} line in {access:#?}"))["fields"]
            .clone()
    };

    let append = call("/audit.v1.AuditService/Append", "OK");
    assert_eq!(append["tenant"], tenant.as_str());
    assert_eq!(append["credential"], "jwt:tester");
    assert_eq!(append["events_appended"], 2);
    assert!(append["duration_ms"].as_f64().is_some(), "{append}");
    let query = call("/audit.v1.AuditService/Query", "OK");
    assert_eq!(query["credential"], format!("api_key:{key_id}").as_str());
    assert_eq!(query["events_returned"], 2);
    let refused = call("/audit.v1.AuditService/Query", "Unauthenticated");
    assert_eq!(refused["auth_failure"], "api_key_refused");
    assert!(refused.get("credential").is_none(), "{refused}");

    let everything = lines.join("\n");
    for secret in [&api_key, &wrong_key, &token] {
        assert!(
            !everything.contains(secret.as_str()),
            "a secret was logged:\n{everything}"
        );
    }
    assert!(server.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_counts_the_events_get_export_and_watch_return() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = Backend::Sqlite.database_url_in(dir.path());
    let server = ServerProcess::start(&url, &[("AUDIT_LOG_FORMAT", "json")]);
    let mut caller = server.caller_for(&new_tenant()).await;
    let appended = caller
        .append(vec![
            event("user.login", "alice"),
            event("document.read", "alice"),
            event("user.logout", "alice"),
        ])
        .await;

    let request = caller.request(GetRequest {
        id: appended[0].id.clone(),
    });
    caller.client.get(request).await.expect("get");
    let request = caller.request(ExportRequest::default());
    let mut export = caller.client.export(request).await.expect("export").into_inner();
    while let Some(message) = export.next().await {
        message.expect("export message");
    }
    // Read up to its third event, then dropped: ends CANCELLED.
    let request = caller.request(WatchRequest {
        filter: None,
        after_seq: Some(0),
        ..Default::default()
    });
    let mut watch = caller.client.watch(request).await.expect("watch").into_inner();
    let mut events = 0;
    while events < 3 {
        let message = watch.next().await.expect("open").expect("a message");
        if matches!(message.kind, Some(proto::watch_response::Kind::Event(_))) {
            events += 1;
        }
    }
    drop(watch);

    let line_of = |access: &[serde_json::Value], method: &str| {
        access
            .iter()
            .find(|line| line["fields"]["method"] == format!("/audit.v1.AuditService/{method}").as_str())
            .map(|line| line["fields"].clone())
    };
    let lines = lines_until(&server, |access| {
        ["Get", "Export", "Watch"]
            .iter()
            .all(|method| line_of(access, method).is_some())
    });
    let access = access_lines(&lines);
    let line = |method| line_of(&access, method).expect("a line");
    assert_eq!(line("Get")["code"], "OK");
    assert_eq!(line("Get")["events_returned"], 1, "{}", line("Get"));
    assert_eq!(line("Export")["code"], "OK");
    assert_eq!(line("Export")["events_returned"], 3, "{}", line("Export"));
    assert_eq!(line("Watch")["code"], "Canceled");
    assert_eq!(line("Watch")["events_returned"], 3, "{}", line("Watch"));
    assert!(server.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_turns_the_access_log_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = Backend::Sqlite.database_url_in(dir.path());
    let server = ServerProcess::start(
        &url,
        &[
            ("AUDIT_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,audit_service::access=off"),
        ],
    );
    let mut caller = server.caller_for(&new_tenant()).await;
    caller.append(vec![event("user.login", "alice")]).await;
    caller.query(proto::QueryRequest::default()).await;
    let pid = server.pid().to_string();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    // Every line the process wrote, up to its exit.
    let mut lines = Vec::new();
    while let Some(line) = server.next_log_line(Duration::from_secs(60)) {
        lines.push(line);
    }
    assert!(
        lines.iter().any(|line| line.contains("stopped")),
        "the process did not stop: {lines:#?}"
    );
    // Whatever its target: no line of a finished call at all.
    assert!(
        !lines.iter().any(|line| line.contains("call finished")),
        "{lines:#?}"
    );
}

//! Platform administrators: the reserved `x-tenant-id` values `*` (every
//! tenant) and `_platform` (the platform's own log), platform credentials
//! (a JWT with `platform: true`, a key minted with `keys create
//! --platform`), and the tenants registry (`audit-service tenants`).

use std::process::Command;

use audit_service::proto::{
    self, AppendRequest, DeleteRequest, EventFilter, ExportRequest, GetFilterMetadataRequest, GetRequest,
    QueryRequest, StatsRequest, WatchRequest,
};
use tonic::{Code, Status};

use crate::fixtures::status_of;
use crate::on_both_backends;
use crate::support::{
    ADMIN_SCOPES, Backend, Caller, Credential, TestServer, assert_status, claims, event, hs256_token,
    new_tenant, now_secs,
};

on_both_backends!(
    every_rpc_with_an_ordinary_credential_and_star_is_refused,
    ordinary_credentials_cannot_name_the_platform_log,
    platform_credentials_cannot_append_or_delete_through_star,
    platform_jwt_and_key_read_the_platform_log,
    platform_credentials_cannot_write_the_platform_log,
    a_platform_credential_does_not_act_for_an_ordinary_tenant,
    a_token_naming_star_without_the_platform_claim_is_refused,
    tenants_appear_in_the_registry_on_first_append,
    tenants_set_and_clear_partner,
    setting_the_partner_of_an_unknown_tenant_fails,
);

/// Scopes a platform administrator holds.
const PLATFORM_SCOPES: &str = "audit:admin audit:read";

/// A platform JWT (`platform: true`, no `tenant_id`) with `scope`.
fn platform_token(scope: &str) -> String {
    hs256_token(&serde_json::json!({
        "sub": "platform-operator",
        "platform": true,
        "scope": scope,
        "exp": now_secs() + 3600,
    }))
}

/// Runs `audit-service ARGS` on `server`'s database: (exit code, stdout, stderr).
fn cli(server: &TestServer, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args(args)
        .env("DATABASE_URL", &server.database_url)
        .output()
        .expect("run audit-service");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Mints a platform API key with `keys create --platform` (and `extra`
/// arguments) and returns it.
fn platform_key(server: &TestServer, extra: &[&str]) -> String {
    let mut args = vec![
        "keys",
        "create",
        "--platform",
        "--scope",
        "audit:admin",
        "--scope",
        "audit:read",
    ];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = cli(server, &args);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let key = stdout.lines().last().expect("key line").trim().to_owned();
    assert!(key.starts_with("ak_"), "{stdout}");
    key
}

/// The status every AuditService, PolicyService and IntegrityService RPC
/// `caller` can call answers with, by RPC name; each must fail.
async fn every_rpc_refusal(caller: &mut Caller) -> Vec<(&'static str, Status)> {
    let id = uuid::Uuid::now_v7().to_string();
    let mut refused = Vec::new();
    let request = caller.request(AppendRequest {
        events: vec![event("user.login", "alice")],
    });
    refused.push(("Append", status_of(caller.client.append(request).await)));
    let request = caller.request(QueryRequest::default());
    refused.push(("Query", status_of(caller.client.query(request).await)));
    let request = caller.request(GetRequest { id: id.clone() });
    refused.push(("Get", status_of(caller.client.get(request).await)));
    let request = caller.request(StatsRequest::default());
    refused.push(("Stats", status_of(caller.client.stats(request).await)));
    let request = caller.request(GetFilterMetadataRequest::default());
    refused.push((
        "GetFilterMetadata",
        status_of(caller.client.get_filter_metadata(request).await),
    ));
    let request = caller.request(DeleteRequest {
        id,
        reason: "cleanup".into(),
    });
    refused.push(("Delete", status_of(caller.client.delete(request).await)));
    let request = caller.request(WatchRequest {
        filter: None,
        after_seq: Some(0),
        ..Default::default()
    });
    match caller.client.watch(request).await {
        Ok(_) => panic!("Watch succeeded"),
        Err(status) => refused.push(("Watch", status)),
    }
    let request = caller.request(ExportRequest::default());
    match caller.client.export(request).await {
        Ok(_) => panic!("Export succeeded"),
        Err(status) => refused.push(("Export", status)),
    }
    let request = caller.request(proto::GetRetentionRequest::default());
    refused.push((
        "GetRetention",
        status_of(caller.policy().get_retention(request).await),
    ));
    let request = caller.request(proto::GetCheckpointRequest::default());
    refused.push((
        "GetCheckpoint",
        status_of(caller.integrity().get_checkpoint(request).await),
    ));
    refused
}

async fn every_rpc_with_an_ordinary_credential_and_star_is_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    // A tenant's administrator holding every scope, by JWT and by API key.
    let token = hs256_token(&claims("tenant-admin", &tenant, ADMIN_SCOPES));
    let scopes = ["audit:read", "audit:append", "audit:write", "audit:admin"];
    let (_, key) = server.mint_api_key(&tenant, &scopes).await;
    for credential in [Credential::Bearer(token), Credential::ApiKey(key)] {
        let mut caller = server.caller_with("*", credential.clone()).await;
        for (rpc, status) in every_rpc_refusal(&mut caller).await {
            assert_eq!(
                status.code(),
                Code::PermissionDenied,
                "{rpc} {credential:?}: {status:?}"
            );
            assert_status(&status, Code::PermissionDenied, "TENANT_MISMATCH", None);
        }
    }
}

async fn ordinary_credentials_cannot_name_the_platform_log(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let token = hs256_token(&claims("tenant-admin", &tenant, ADMIN_SCOPES));
    let mut caller = server.caller_with("_platform", Credential::Bearer(token)).await;
    let status = status_of(caller.client.query(caller.request(QueryRequest::default())).await);
    assert_status(&status, Code::PermissionDenied, "TENANT_MISMATCH", None);
}

async fn platform_credentials_cannot_append_or_delete_through_star(backend: Backend) {
    let server = TestServer::start(backend).await;
    let everything = "audit:admin audit:read audit:append audit:write";
    let key = platform_key(&server, &["--scope", "audit:append", "--scope", "audit:write"]);
    for credential in [
        Credential::Bearer(platform_token(everything)),
        Credential::ApiKey(key),
    ] {
        let mut caller = server.caller_with("*", credential.clone()).await;
        let request = caller.request(AppendRequest {
            events: vec![event("user.login", "alice")],
        });
        let status = status_of(caller.client.append(request).await);
        assert_status(&status, Code::PermissionDenied, "PLATFORM_READ_ONLY", None);
        let request = caller.request(DeleteRequest {
            id: uuid::Uuid::now_v7().to_string(),
            reason: "cleanup".into(),
        });
        let status = status_of(caller.client.delete(request).await);
        assert_status(&status, Code::PermissionDenied, "PLATFORM_READ_ONLY", None);
    }
}

async fn platform_jwt_and_key_read_the_platform_log(backend: Backend) {
    let server = TestServer::start(backend).await;
    let key = platform_key(&server, &[]);
    for credential in [
        Credential::Bearer(platform_token(PLATFORM_SCOPES)),
        Credential::ApiKey(key),
    ] {
        let mut caller = server.caller_with("_platform", credential).await;
        let page = caller
            .query(QueryRequest {
                filter: Some(EventFilter {
                    actions: vec!["no.such.action".into()],
                    ..EventFilter::default()
                }),
                ..QueryRequest::default()
            })
            .await;
        assert!(page.events.is_empty(), "{page:?}");
        let request = caller.request(GetFilterMetadataRequest::default());
        caller
            .client
            .get_filter_metadata(request)
            .await
            .expect("filter metadata of _platform");
    }
}

async fn platform_credentials_cannot_write_the_platform_log(backend: Backend) {
    let server = TestServer::start(backend).await;
    let everything = "audit:admin audit:read audit:append audit:write";
    let mut caller = server
        .caller_with("_platform", Credential::Bearer(platform_token(everything)))
        .await;
    let request = caller.request(AppendRequest {
        events: vec![event("user.login", "alice")],
    });
    let status = status_of(caller.client.append(request).await);
    assert_status(&status, Code::PermissionDenied, "PLATFORM_READ_ONLY", None);
    let request = caller.request(proto::SetAccessAuditRequest::default());
    let status = status_of(caller.policy().set_access_audit(request).await);
    assert_status(&status, Code::PermissionDenied, "PLATFORM_READ_ONLY", None);
}

async fn a_platform_credential_does_not_act_for_an_ordinary_tenant(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut owner = server.caller().await;
    owner.append(vec![event("user.login", "alice")]).await;
    let mut caller = server
        .caller_with(&owner.tenant, Credential::Bearer(platform_token(PLATFORM_SCOPES)))
        .await;
    let status = status_of(caller.client.query(caller.request(QueryRequest::default())).await);
    assert_status(&status, Code::PermissionDenied, "TENANT_MISMATCH", None);
}

async fn a_token_naming_star_without_the_platform_claim_is_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = hs256_token(&claims("impostor", "*", ADMIN_SCOPES));
    let mut caller = server.caller_with("*", Credential::Bearer(token)).await;
    let status = status_of(caller.client.query(caller.request(QueryRequest::default())).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // A platform claim that is not `true` is no platform claim.
    let token = hs256_token(&serde_json::json!({
        "sub": "impostor", "platform": "yes", "scope": PLATFORM_SCOPES, "exp": now_secs() + 3600,
    }));
    let mut caller = server.caller_with("*", Credential::Bearer(token)).await;
    let status = status_of(caller.client.query(caller.request(QueryRequest::default())).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

/// The `tenants list` row of `tenant`: its columns.
fn registry_row(server: &TestServer, tenant: &str) -> Option<Vec<String>> {
    let (code, stdout, stderr) = cli(server, &["tenants", "list"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("TENANT"), "a header first: {stdout}");
    stdout
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|columns| columns.first().map(String::as_str) == Some(tenant))
}

async fn tenants_appear_in_the_registry_on_first_append(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    assert_eq!(
        registry_row(&server, &caller.tenant),
        None,
        "not before its first append"
    );
    caller.append(vec![event("user.login", "alice")]).await;
    let row = registry_row(&server, &caller.tenant).expect("listed after its first append");
    assert_eq!(row[1], "-", "no partner yet: {row:?}");
    let created = chrono::DateTime::parse_from_rfc3339(&row[2]).expect("created at, RFC 3339");
    assert!((created.timestamp() - now_secs()).abs() < 600, "{row:?}");
    // Later appends leave the row as it is.
    caller.append(vec![event("user.logout", "alice")]).await;
    assert_eq!(registry_row(&server, &caller.tenant), Some(row));
}

async fn tenants_set_and_clear_partner(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    caller.append(vec![event("user.login", "alice")]).await;
    let partner = format!("p-{}", uuid::Uuid::now_v7().simple());
    let (code, stdout, stderr) = cli(&server, &["tenants", "set-partner", &caller.tenant, &partner]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let row = registry_row(&server, &caller.tenant).expect("listed");
    assert_eq!(row[1], partner, "{row:?}");
    let (code, stdout, stderr) = cli(&server, &["tenants", "clear-partner", &caller.tenant]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let row = registry_row(&server, &caller.tenant).expect("listed");
    assert_eq!(row[1], "-", "{row:?}");
}

async fn setting_the_partner_of_an_unknown_tenant_fails(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let (code, stdout, stderr) = cli(&server, &["tenants", "set-partner", &tenant, "p-1"]);
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains(&tenant), "names the tenant: {stderr}");
    assert_eq!(registry_row(&server, &tenant), None);
    for reserved in ["*", "_platform"] {
        let (code, stdout, stderr) = cli(&server, &["tenants", "set-partner", reserved, "p-1"]);
        assert_ne!(code, 0, "{reserved}: {stdout}{stderr}");
    }
}

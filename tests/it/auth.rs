//! Credentials, tenants and scopes: every refusal row of the contract.

use audit_service::proto::{
    AppendRequest, DeleteRequest, GetFilterMetadataRequest, GetRequest, QueryRequest, StatsRequest,
    WatchRequest,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tonic::Code;

use crate::on_both_backends;
use crate::support::{
    ALL_SCOPES, Backend, Caller, Credential, JWT_SECRET, TestServer, assert_status, claims, event, fixture,
    hs256_token, new_tenant, now_secs,
};

on_both_backends!(
    call_without_credential_is_unauthenticated,
    tampered_token_is_unauthenticated,
    expired_token_is_unauthenticated,
    token_expired_within_clock_skew_is_accepted,
    not_yet_valid_token_is_unauthenticated,
    token_without_exp_is_unauthenticated,
    alg_none_token_is_unauthenticated,
    rs256_token_against_hs256_server_is_unauthenticated,
    hs256_token_signed_with_public_key_against_rs256_server_is_unauthenticated,
    rs256_and_es256_tokens_verify_with_the_configured_public_key,
    token_with_unknown_kid_is_unauthenticated,
    issuer_and_audience_are_enforced_when_configured,
    missing_tenant_header_is_tenant_required,
    credential_of_another_tenant_is_tenant_mismatch,
    cross_tenant_get_delete_query_find_nothing,
    missing_scope_is_permission_denied_naming_the_scope,
    scope_matrix_covers_every_rpc,
    api_key_authenticates_and_revocation_is_immediate,
    malformed_or_wrong_api_key_is_unauthenticated,
    deletion_event_actor_is_the_caller,
    reflection_and_health_need_no_credential,
);

async fn get_status(caller: &mut Caller) -> tonic::Status {
    let request = caller.request(GetRequest {
        id: uuid::Uuid::now_v7().to_string(),
    });
    match caller.client.get(request).await {
        Ok(_) => panic!("Get of an unknown id succeeded"),
        Err(status) => status,
    }
}

/// A Get that passed authentication ends in NOT_FOUND (the id is random).
async fn assert_authenticated(caller: &mut Caller) {
    let status = get_status(caller).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

async fn assert_unauthenticated(caller: &mut Caller) {
    let status = get_status(caller).await;
    assert_status(&status, Code::Unauthenticated, "UNAUTHENTICATED", None);
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-private.pem")).unwrap()).unwrap()
}

async fn call_without_credential_is_unauthenticated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller_with(&new_tenant(), Credential::None).await;
    assert_unauthenticated(&mut caller).await;
    let mut caller = server
        .caller_with(&new_tenant(), Credential::Bearer(String::new()))
        .await;
    assert_unauthenticated(&mut caller).await;
}

async fn tampered_token_is_unauthenticated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let token = hs256_token(&claims("tester", &tenant, ALL_SCOPES));
    let (head, rest) = token.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    // Same signature over a payload granting another subject.
    let forged_claims = claims("intruder", &tenant, ALL_SCOPES);
    let forged = hs256_token(&forged_claims);
    let forged_payload = forged.split('.').nth(1).unwrap();
    let tampered = format!("{head}.{forged_payload}.{signature}");
    let mut caller = server.caller_with(&tenant, Credential::Bearer(tampered)).await;
    assert_unauthenticated(&mut caller).await;

    let wrong_secret = EncodingKey::from_secret(b"not the server's secret");
    let token = sign(
        Algorithm::HS256,
        &wrong_secret,
        None,
        &claims("tester", &tenant, ALL_SCOPES),
    );
    let mut caller = server.caller_with(&tenant, Credential::Bearer(token)).await;
    assert_unauthenticated(&mut caller).await;
}

async fn expired_token_is_unauthenticated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let token =
        hs256_token(&json!({"sub": "t", "tenant_id": tenant, "scope": ALL_SCOPES, "exp": now_secs() - 600}));
    let mut caller = server.caller_with(&tenant, Credential::Bearer(token)).await;
    assert_unauthenticated(&mut caller).await;
}

async fn token_expired_within_clock_skew_is_accepted(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let token =
        hs256_token(&json!({"sub": "t", "tenant_id": tenant, "scope": ALL_SCOPES, "exp": now_secs() - 5}));
    let mut caller = server.caller_with(&tenant, Credential::Bearer(token)).await;
    assert_authenticated(&mut caller).await;
}

async fn not_yet_valid_token_is_unauthenticated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let mut claims = claims("t", &tenant, ALL_SCOPES);
    claims["nbf"] = json!(now_secs() + 600);
    let mut caller = server
        .caller_with(&tenant, Credential::Bearer(hs256_token(&claims)))
        .await;
    assert_unauthenticated(&mut caller).await;
}

async fn token_without_exp_is_unauthenticated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let token = hs256_token(&json!({"sub": "t", "tenant_id": tenant, "scope": ALL_SCOPES}));
    let mut caller = server.caller_with(&tenant, Credential::Bearer(token)).await;
    assert_unauthenticated(&mut caller).await;
}

async fn alg_none_token_is_unauthenticated(backend: Backend) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64.encode(claims("t", &tenant, ALL_SCOPES).to_string());
    for token in [format!("{header}.{payload}."), format!("{header}.{payload}")] {
        let mut caller = server.caller_with(&tenant, Credential::Bearer(token)).await;
        assert_unauthenticated(&mut caller).await;
    }
}

async fn rs256_token_against_hs256_server_is_unauthenticated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let token = sign(
        Algorithm::RS256,
        &rsa_key(),
        None,
        &claims("t", &tenant, ALL_SCOPES),
    );
    let mut caller = server.caller_with(&tenant, Credential::Bearer(token)).await;
    assert_unauthenticated(&mut caller).await;
}

async fn hs256_token_signed_with_public_key_against_rs256_server_is_unauthenticated(backend: Backend) {
    let server = TestServer::start_with(backend, |config| {
        config.jwt.secret = None;
        config.jwt.public_key_file = Some(fixture("rsa-public.pem"));
    })
    .await;
    let tenant = new_tenant();
    // The classic confusion attack: the public key used as an HMAC secret.
    let public_pem = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        None,
        &claims("t", &tenant, ALL_SCOPES),
    );
    let mut caller = server.caller_with(&tenant, Credential::Bearer(token)).await;
    assert_unauthenticated(&mut caller).await;
    // And the server's usual HS256 secret no longer counts either.
    let mut caller = server.caller_for(&tenant).await;
    assert_unauthenticated(&mut caller).await;
}

async fn rs256_and_es256_tokens_verify_with_the_configured_public_key(backend: Backend) {
    for (public, alg, key) in [
        ("rsa-public.pem", Algorithm::RS256, rsa_key()),
        ("ec-public.pem", Algorithm::ES256, ec_key()),
    ] {
        let server = TestServer::start_with(backend.clone(), |config| {
            config.jwt.public_key_file = Some(fixture(public));
        })
        .await;
        let tenant = new_tenant();
        let token = sign(alg, &key, None, &claims("t", &tenant, ALL_SCOPES));
        let mut caller = server.caller_with(&tenant, Credential::Bearer(token)).await;
        assert_authenticated(&mut caller).await;
        // HS256 still works beside it, with its own key only.
        let mut caller = server.caller_for(&tenant).await;
        assert_authenticated(&mut caller).await;
    }
}

async fn token_with_unknown_kid_is_unauthenticated(backend: Backend) {
    let server = TestServer::start_with(backend, |config| config.jwt.key_id = Some("k1".into())).await;
    let tenant = new_tenant();
    let key = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let good = sign(
        Algorithm::HS256,
        &key,
        Some("k1"),
        &claims("t", &tenant, ALL_SCOPES),
    );
    let mut caller = server.caller_with(&tenant, Credential::Bearer(good)).await;
    assert_authenticated(&mut caller).await;
    let unknown = sign(
        Algorithm::HS256,
        &key,
        Some("k2"),
        &claims("t", &tenant, ALL_SCOPES),
    );
    let mut caller = server.caller_with(&tenant, Credential::Bearer(unknown)).await;
    assert_unauthenticated(&mut caller).await;
}

async fn issuer_and_audience_are_enforced_when_configured(backend: Backend) {
    let server = TestServer::start_with(backend, |config| {
        config.jwt.issuer = Some("https://idp.example".into());
        config.jwt.audience = Some("audit".into());
    })
    .await;
    let tenant = new_tenant();
    let with = |iss: &str, aud: &str| {
        let mut claims = claims("t", &tenant, ALL_SCOPES);
        claims["iss"] = json!(iss);
        claims["aud"] = json!(aud);
        hs256_token(&claims)
    };
    let mut caller = server
        .caller_with(&tenant, Credential::Bearer(with("https://idp.example", "audit")))
        .await;
    assert_authenticated(&mut caller).await;
    for token in [
        with("https://evil.example", "audit"),
        with("https://idp.example", "other"),
        caller_token(&tenant),
    ] {
        let mut caller = server.caller_with(&tenant, Credential::Bearer(token)).await;
        assert_unauthenticated(&mut caller).await;
    }
}

/// A token without iss and aud.
fn caller_token(tenant: &str) -> String {
    hs256_token(&claims("t", tenant, ALL_SCOPES))
}

async fn missing_tenant_header_is_tenant_required(backend: Backend) {
    let server = TestServer::start(backend).await;
    let caller = server.caller().await;
    let mut request = caller.request(GetRequest {
        id: uuid::Uuid::now_v7().to_string(),
    });
    request.metadata_mut().remove("x-tenant-id");
    let status = caller.client.clone().get(request).await.expect_err("accepted");
    assert_status(&status, Code::InvalidArgument, "TENANT_REQUIRED", None);
}

async fn credential_of_another_tenant_is_tenant_mismatch(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (tenant_a, tenant_b) = (new_tenant(), new_tenant());
    let (_, key_b) = server.mint_api_key(&tenant_b, &["audit:read"]).await;
    for credential in [
        Credential::Bearer(caller_token(&tenant_b)),
        Credential::ApiKey(key_b),
    ] {
        let mut caller = server.caller_with(&tenant_a, credential).await;
        let status = get_status(&mut caller).await;
        assert_status(&status, Code::PermissionDenied, "TENANT_MISMATCH", None);
    }
}

async fn cross_tenant_get_delete_query_find_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut owner = server.caller().await;
    let id = owner.append(vec![event("document.read", "alice")]).await[0]
        .id
        .clone();
    let mut other = server.caller().await;

    let status = other
        .client
        .get(other.request(GetRequest { id: id.clone() }))
        .await
        .expect_err("get");
    assert_status(&status, Code::NotFound, "NOT_FOUND", None);
    let status = other
        .client
        .delete(other.request(DeleteRequest {
            id: id.clone(),
            reason: "x".into(),
        }))
        .await
        .expect_err("delete");
    assert_status(&status, Code::NotFound, "NOT_FOUND", None);
    let page = other.query(QueryRequest::default()).await;
    assert!(page.events.is_empty());

    // The owner still has it, untouched.
    let event = owner
        .client
        .get(owner.request(GetRequest { id }))
        .await
        .expect("owner get")
        .into_inner();
    assert_eq!(event.action, "document.read");
}

async fn missing_scope_is_permission_denied_naming_the_scope(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let token = hs256_token(&claims("t", &tenant, "audit:append"));
    let mut caller = server.caller_with(&tenant, Credential::Bearer(token)).await;
    let status = get_status(&mut caller).await;
    assert_status(&status, Code::PermissionDenied, "MISSING_SCOPE", None);
    let details = tonic_types::StatusExt::get_error_details(&status);
    assert_eq!(
        details
            .error_info()
            .unwrap()
            .metadata
            .get("scope")
            .map(String::as_str),
        Some("audit:read")
    );
}

/// The result of calling each RPC: `Err(scope)` when refused for a missing
/// scope, `Ok(())` when the call got past the scope check.
async fn try_every_rpc(caller: &mut Caller) -> Vec<(&'static str, Result<(), String>)> {
    let id = uuid::Uuid::now_v7().to_string();
    let outcome = |result: Result<(), tonic::Status>| match result {
        Err(status) if status.code() == Code::PermissionDenied => {
            let details = tonic_types::StatusExt::get_error_details(&status);
            let info = details.error_info().expect("error info");
            assert_eq!(info.reason, "MISSING_SCOPE");
            Err(info.metadata["scope"].clone())
        }
        _ => Ok(()),
    };
    let c = caller.client.clone();
    vec![
        (
            "Append",
            outcome(
                c.clone()
                    .append(caller.request(AppendRequest {
                        events: vec![event("a.b", "x")],
                    }))
                    .await
                    .map(drop),
            ),
        ),
        (
            "Query",
            outcome(
                c.clone()
                    .query(caller.request(QueryRequest::default()))
                    .await
                    .map(drop),
            ),
        ),
        (
            "Get",
            outcome(
                c.clone()
                    .get(caller.request(GetRequest { id: id.clone() }))
                    .await
                    .map(drop),
            ),
        ),
        (
            "Stats",
            outcome(
                c.clone()
                    .stats(caller.request(StatsRequest::default()))
                    .await
                    .map(drop),
            ),
        ),
        (
            "GetFilterMetadata",
            outcome(
                c.clone()
                    .get_filter_metadata(caller.request(GetFilterMetadataRequest {}))
                    .await
                    .map(drop),
            ),
        ),
        (
            "Delete",
            outcome(
                c.clone()
                    .delete(caller.request(DeleteRequest {
                        id,
                        reason: String::new(),
                    }))
                    .await
                    .map(drop),
            ),
        ),
        (
            "Watch",
            outcome(
                c.clone()
                    .watch(caller.request(WatchRequest::default()))
                    .await
                    .map(drop),
            ),
        ),
    ]
}

async fn scope_matrix_covers_every_rpc(backend: Backend) {
    let server = TestServer::start(backend).await;
    let needs = |rpc: &str| match rpc {
        "Append" => "audit:append",
        "Delete" => "audit:write",
        _ => "audit:read",
    };
    for granted in ["", "audit:read", "audit:append", "audit:write", ALL_SCOPES] {
        let tenant = new_tenant();
        let mut caller = server
            .caller_with(
                &tenant,
                Credential::Bearer(hs256_token(&claims("t", &tenant, granted))),
            )
            .await;
        for (rpc, result) in try_every_rpc(&mut caller).await {
            let scope = needs(rpc);
            if granted.split_whitespace().any(|g| g == scope) {
                assert_eq!(result, Ok(()), "{rpc} with {granted:?}");
            } else {
                assert_eq!(result, Err(scope.to_owned()), "{rpc} with {granted:?}");
            }
        }
    }
}

async fn api_key_authenticates_and_revocation_is_immediate(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let binary = env!("CARGO_BIN_EXE_audit-service");
    let created = std::process::Command::new(binary)
        .args([
            "keys",
            "create",
            "--tenant",
            &tenant,
            "--scope",
            "audit:read",
            "--scope",
            "audit:append",
        ])
        .env("DATABASE_URL", &server.database_url)
        .output()
        .expect("keys create");
    assert!(created.status.success(), "{created:?}");
    let stdout = String::from_utf8(created.stdout).unwrap();
    let key = stdout.lines().last().expect("key line").trim().to_owned();
    assert!(key.starts_with("ak_"), "{stdout}");

    let mut caller = server.caller_with(&tenant, Credential::ApiKey(key.clone())).await;
    let appended = caller.append(vec![event("user.login", "alice")]).await;
    assert_eq!(appended[0].seq, 1);

    let listed = std::process::Command::new(binary)
        .args(["keys", "list", "--tenant", &tenant])
        .env("DATABASE_URL", &server.database_url)
        .output()
        .expect("keys list");
    let listing = String::from_utf8(listed.stdout).unwrap();
    let id = listing
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("key row")
        .to_owned();
    assert!(listing.contains("audit:read,audit:append"), "{listing}");
    assert!(
        !listing.contains(key.splitn(3, '_').nth(2).expect("secret part")),
        "secret shown: {listing}"
    );

    let revoked = std::process::Command::new(binary)
        .args(["keys", "revoke", &id])
        .env("DATABASE_URL", &server.database_url)
        .output()
        .expect("keys revoke");
    assert!(revoked.status.success(), "{revoked:?}");
    // The very next call fails: no cache outlives a revocation.
    assert_unauthenticated(&mut caller).await;
}

async fn malformed_or_wrong_api_key_is_unauthenticated(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let (_, key) = server.mint_api_key(&tenant, &["audit:read"]).await;
    let mut wrong = key.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    for presented in [
        wrong,
        "ak_nothing".to_owned(),
        "garbage".to_owned(),
        format!("{key}x"),
    ] {
        let mut caller = server.caller_with(&tenant, Credential::ApiKey(presented)).await;
        assert_unauthenticated(&mut caller).await;
    }
    let mut caller = server.caller_with(&tenant, Credential::ApiKey(key)).await;
    assert_authenticated(&mut caller).await;
}

async fn deletion_event_actor_is_the_caller(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let mut appender = server.caller_for(&tenant).await;
    let ids: Vec<String> = appender
        .append(vec![event("a.b", "x"), event("a.b", "y")])
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();

    let token = hs256_token(&claims("compliance-officer", &tenant, "audit:write"));
    let mut by_token = server.caller_with(&tenant, Credential::Bearer(token)).await;
    let deleted = by_token
        .client
        .delete(by_token.request(DeleteRequest {
            id: ids[0].clone(),
            reason: "GDPR erasure".into(),
        }))
        .await
        .expect("delete")
        .into_inner();
    let actor = deleted.deletion_event.unwrap().actor.unwrap();
    assert_eq!(actor.id, "compliance-officer");

    let (key_id, key) = server.mint_api_key(&tenant, &["audit:write"]).await;
    let mut by_key = server.caller_with(&tenant, Credential::ApiKey(key)).await;
    let deleted = by_key
        .client
        .delete(by_key.request(DeleteRequest {
            id: ids[1].clone(),
            reason: "retention".into(),
        }))
        .await
        .expect("delete")
        .into_inner();
    let actor = deleted.deletion_event.unwrap().actor.unwrap();
    assert_eq!(actor.id, key_id.to_string());
    assert_eq!(actor.r#type, audit_service::proto::ActorType::ApiKey as i32);
}

async fn reflection_and_health_need_no_credential(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "audit.v1.AuditService".into(),
        })
        .await
        .expect("health without credential")
        .into_inner();
    assert_eq!(
        response.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_response::MessageResponse};
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection without credential")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}")
    };
    assert!(
        list.service.iter().any(|s| s.name == "audit.v1.AuditService"),
        "{list:?}"
    );
}

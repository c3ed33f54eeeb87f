//! `audit-service token mint`: a token it prints is accepted by a server
//! with the same secret, carrying the scopes asked for; without a secret,
//! or for longer than a day, it refuses.

use std::process::{Command, Output};

use audit_service::proto::{AppendRequest, QueryRequest};
use tonic::Code;

use crate::support::{Backend, Credential, JWT_SECRET, TestServer, event, new_tenant};

fn token_mint(secret: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_audit-service"));
    command.args(["token", "mint"]).args(args);
    for variable in [
        "AUDIT_JWT_SECRET",
        "AUDIT_JWT_ISSUER",
        "AUDIT_JWT_AUDIENCE",
        "AUDIT_JWT_KEY_ID",
        "AUDIT_JWT_PUBLIC_KEY_FILE",
    ] {
        command.env_remove(variable);
    }
    if let Some(secret) = secret {
        command.env("AUDIT_JWT_SECRET", secret);
    }
    command.output().expect("run audit-service token mint")
}

/// The claims of a JWT, read without checking its signature.
fn claims_of(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("header.payload.signature");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&json).expect("JSON claims")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_token_is_accepted_with_the_scopes_it_names() {
    let server = TestServer::start(Backend::Sqlite).await;
    let tenant = new_tenant();
    let mint = |scopes: &[&str]| {
        let mut args = vec!["--tenant", tenant.as_str(), "--ttl", "10m", "--sub", "debugger"];
        for scope in scopes {
            args.extend(["--scope", scope]);
        }
        let output = token_mint(Some(JWT_SECRET), &args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        assert!(stderr.contains("for debugging"), "{stderr}");
        String::from_utf8(output.stdout).expect("utf-8").trim().to_owned()
    };

    let writer = mint(&["audit:read", "audit:append"]);
    let claims = claims_of(&writer);
    assert_eq!(
        claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"),
        600,
        "--ttl 10m: {claims}"
    );
    assert_eq!(claims["sub"], "debugger");
    assert_eq!(claims["scope"], "audit:read audit:append");
    let mut caller = server.caller_with(&tenant, Credential::Bearer(writer)).await;
    caller.append(vec![event("user.login", "alice")]).await;
    assert_eq!(caller.query(QueryRequest::default()).await.events.len(), 1);

    let reader = mint(&["audit:read"]);
    let mut caller = server.caller_with(&tenant, Credential::Bearer(reader)).await;
    let request = caller.request(AppendRequest {
        events: vec![event("user.login", "alice")],
    });
    let refused = caller.client.append(request).await.expect_err("read only");
    assert_eq!(refused.code(), Code::PermissionDenied);
    server.stop().await;
}

#[test]
fn token_mint_refuses_without_a_secret_and_beyond_a_day() {
    let args = ["--tenant", "acme", "--scope", "audit:read"];
    let output = token_mint(None, &args);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("AUDIT_JWT_SECRET"));

    let output = token_mint(Some(JWT_SECRET), &[&args[..], &["--ttl", "25h"]].concat());
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("24h"));
}

//! Hostile and careless input found by probing the service: each refused
//! with a clear gRPC status (ErrorInfo, and BadRequest where a field is at
//! fault), none of it recorded, and the server serving on.

use audit_service::proto::integrity_service_client::IntegrityServiceClient;
use audit_service::proto::{
    AppendRequest, DeleteRequest, EventFilter, EventInput, GetInclusionProofRequest, GetRequest,
    get_inclusion_proof_request::Target,
};
use prost_types::value::Kind;
use serde_json::json;
use tonic::Code;

use crate::fixtures::{append_status, get, query, query_status, seqs, status_of};
use crate::on_both_backends;
use crate::support::{
    ALL_SCOPES, Backend, Caller, Credential, TestServer, assert_status, claims, event, hs256_token,
};

on_both_backends!(
    token_subject_must_be_a_valid_actor_id,
    token_with_exp_out_of_range_says_so,
    not_found_messages_name_the_event_once,
    metadata_nested_past_the_decoder_limit_is_invalid_argument_naming_the_field,
    call_metadata_over_16_kib_is_a_grpc_status,
    filter_number_that_underflows_is_invalid_argument,
    global_database_option_applies_to_every_command,
);

/// A caller of `tenant` whose token claims `sub` (every scope).
async fn caller_with_subject(server: &TestServer, tenant: &str, sub: &str) -> Caller {
    let token = hs256_token(&claims(sub, tenant, ALL_SCOPES));
    server.caller_with(tenant, Credential::Bearer(token)).await
}

async fn token_subject_must_be_a_valid_actor_id(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut owner = server.caller().await;
    let id = owner.append(vec![event("document.read", "alice")]).await[0]
        .id
        .clone();
    let long = "s".repeat(5000);
    for sub in ["", "   ", long.as_str(), "nul\0byte", "line\nbreak"] {
        let mut caller = caller_with_subject(&server, &owner.tenant, sub).await;
        let request = caller.request(DeleteRequest {
            id: id.clone(),
            reason: "probe".into(),
        });
        let status = status_of(caller.client.delete(request).await);
        assert_status(&status, Code::Unauthenticated, "UNAUTHENTICATED", None);
        assert!(status.message().contains("sub"), "{sub:?}: {status:?}");
    }
    // Nothing was erased and no deletion event was written.
    let events = owner.query_all(EventFilter::default(), "seq asc", 100).await;
    assert_eq!(seqs(&events), [1]);
    assert_eq!(get(&mut owner, &id).await.action, "document.read");
}

async fn token_with_exp_out_of_range_says_so(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    for exp in [json!(1e20), json!(1.5e300)] {
        let token = hs256_token(&json!({"sub": "t", "tenant_id": tenant, "scope": ALL_SCOPES, "exp": exp}));
        let mut caller = server.caller_with(&tenant, Credential::Bearer(token)).await;
        let request = caller.request(GetRequest {
            id: uuid::Uuid::now_v7().to_string(),
        });
        let status = status_of(caller.client.get(request).await);
        assert_status(&status, Code::Unauthenticated, "UNAUTHENTICATED", None);
        assert!(
            status.message().contains("exp is not a NumericDate"),
            "{exp}: {status:?}"
        );
    }
}

async fn not_found_messages_name_the_event_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let appended = caller.append(vec![event("a.b", "x"), event("a.c", "x")]).await;
    let erased = appended[0].id.clone();
    let request = caller.request(DeleteRequest {
        id: erased.clone(),
        reason: "gone".into(),
    });
    caller.client.delete(request).await.expect("delete");
    let unknown = uuid::Uuid::now_v7().to_string();

    let mut statuses = Vec::new();
    for id in [&erased, &unknown] {
        let request = caller.request(GetRequest { id: id.clone() });
        statuses.push((id.clone(), status_of(caller.client.get(request).await)));
        let request = caller.request(DeleteRequest {
            id: id.clone(),
            reason: "again".into(),
        });
        statuses.push((id.clone(), status_of(caller.client.delete(request).await)));
        let mut integrity = IntegrityServiceClient::new(server.channel().await);
        let request = caller.request(GetInclusionProofRequest {
            target: Some(Target::EventId(id.clone())),
            tree_size: 0,
        });
        statuses.push((
            id.clone(),
            status_of(integrity.get_inclusion_proof(request).await),
        ));
    }
    for (id, status) in statuses {
        assert_status(&status, Code::NotFound, "NOT_FOUND", None);
        assert_eq!(status.message(), format!("event {id} not found"));
    }
}

/// A metadata value nested `levels` Structs deep.
fn nested(levels: usize) -> prost_types::Struct {
    let mut inner = prost_types::Struct::default();
    for _ in 0..levels {
        inner = prost_types::Struct {
            fields: [(
                "k".to_owned(),
                prost_types::Value {
                    kind: Some(Kind::StructValue(inner)),
                },
            )]
            .into(),
        };
    }
    inner
}

async fn metadata_nested_past_the_decoder_limit_is_invalid_argument_naming_the_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    for levels in [45, 46, 200] {
        let deep = EventInput {
            metadata: Some(nested(levels)),
            ..event("a.b", "x")
        };
        let status = append_status(&mut caller, vec![event("a.b", "x"), deep]).await;
        assert_status(
            &status,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("events.metadata"),
        );
    }
    // Nothing of the refused batches was stored; nesting the decoder
    // handles still goes through validation and is stored.
    let appended = caller
        .append(vec![EventInput {
            metadata: Some(nested(20)),
            ..event("a.b", "x")
        }])
        .await;
    assert_eq!(appended[0].seq, 1);
}

async fn call_metadata_over_16_kib_is_a_grpc_status(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    for size in [17 * 1024, 64 * 1024, 200 * 1024] {
        let mut request = caller.request(AppendRequest {
            events: vec![event("a.b", "x")],
        });
        request
            .metadata_mut()
            .insert("x-padding", "x".repeat(size).parse().expect("header"));
        let status = status_of(caller.client.append(request).await);
        assert_status(&status, Code::ResourceExhausted, "RESOURCE_EXHAUSTED", None);
        assert!(status.message().contains("metadata"), "{status:?}");
    }
    // Metadata just under the limit is served, on the same connection.
    let mut request = caller.request(AppendRequest {
        events: vec![event("a.b", "x")],
    });
    request
        .metadata_mut()
        .insert("x-padding", "x".repeat(12 * 1024).parse().expect("header"));
    let appended = caller.client.append(request).await.expect("append").into_inner();
    assert_eq!(appended.results[0].seq, 1, "a refused call stored something");
}

async fn filter_number_that_underflows_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    caller.append(vec![event("a.b", "x")]).await;
    for number in ["1e-400", "-1e-400", "1e999"] {
        let filter = EventFilter {
            expression: format!("metadata.n = {number}"),
            ..Default::default()
        };
        let status = query_status(&mut caller, query(filter, "seq asc", 10, "")).await;
        assert_status(
            &status,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("filter.expression"),
        );
        assert!(status.message().contains("out of range"), "{status:?}");
    }
}

/// Runs the `audit-service` binary with `args` in `dir`, without a
/// `DATABASE_URL` in its environment: (exit code, stdout, stderr).
fn run_cli(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run audit-service");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn global_database_option_applies_to_every_command(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = crate::support::new_tenant();
    let cwd = tempfile::tempdir().expect("temp dir");
    let url = server.database_url.as_str();
    let (code, stdout, stderr) = run_cli(
        cwd.path(),
        &[
            "--database-url",
            url,
            "keys",
            "create",
            "--tenant",
            &tenant,
            "--scope",
            "audit:read",
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let key = stdout
        .lines()
        .last()
        .expect("the key on the last line")
        .to_owned();
    assert!(
        !cwd.path().join("audit.db").exists(),
        "the global --database-url was ignored: ./audit.db was created"
    );
    // The key was minted in the server's database: the server accepts it.
    let mut caller = server.caller_with(&tenant, Credential::ApiKey(key)).await;
    let request = caller.request(GetRequest {
        id: uuid::Uuid::now_v7().to_string(),
    });
    let status = status_of(caller.client.get(request).await);
    assert_status(&status, Code::NotFound, "NOT_FOUND", None);

    // Listed through the option given after the command's name too.
    let (code, stdout, stderr) = run_cli(
        cwd.path(),
        &["keys", "list", "--tenant", &tenant, "--database-url", url],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&tenant), "{stdout}");

    // A setting of `serve` before another command is refused, not ignored.
    let (code, stdout, stderr) = run_cli(
        cwd.path(),
        &[
            "--database-url",
            url,
            "--listen",
            "127.0.0.1:1",
            "keys",
            "list",
            "--tenant",
            &tenant,
        ],
    );
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("--listen is a setting of `serve`"), "{stderr}");
    assert!(!cwd.path().join("audit.db").exists());
}

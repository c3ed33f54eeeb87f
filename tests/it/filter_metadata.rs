//! GetFilterMetadata: the filterable fields, the orders, and this tenant's
//! distinct values only.

use audit_service::proto::{self, EventInput, GetFilterMetadataRequest, GetFilterMetadataResponse};

use crate::on_both_backends;
use crate::support::{Backend, Caller, TestServer, event};

on_both_backends!(
    filter_metadata_lists_this_tenants_distinct_values_only,
    filter_metadata_describes_fields_and_orders,
);

fn sourced(action: &str, resource_type: &str, source: &str) -> EventInput {
    EventInput {
        resource: Some(proto::Resource {
            r#type: resource_type.into(),
            ..Default::default()
        }),
        source: source.into(),
        ..event(action, "alice")
    }
}

pub(crate) async fn metadata(caller: &mut Caller) -> GetFilterMetadataResponse {
    let request = caller.request(GetFilterMetadataRequest {});
    caller
        .client
        .get_filter_metadata(request)
        .await
        .expect("metadata")
        .into_inner()
}

async fn filter_metadata_lists_this_tenants_distinct_values_only(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut mine = server.caller().await;
    let mut theirs = server.caller().await;
    mine.append(vec![
        sourced("user.login", "session", "sso"),
        sourced("document.read", "document", "docs"),
        sourced("user.login", "", ""),
        sourced("api_key.create", "api_key", "console"),
        sourced("document.read", "document", "docs"),
    ])
    .await;
    theirs
        .append(vec![sourced("secret.other_tenant", "vault", "elsewhere")])
        .await;

    let response = metadata(&mut mine).await;
    assert_eq!(
        response.actions,
        ["api_key.create", "document.read", "user.login"]
    );
    assert_eq!(response.resource_types, ["api_key", "document", "session"]);
    assert_eq!(response.sources, ["console", "docs", "sso"]);

    let response = metadata(&mut theirs).await;
    assert_eq!(response.actions, ["secret.other_tenant"]);
    assert_eq!(response.resource_types, ["vault"]);
    assert_eq!(response.sources, ["elsewhere"]);

    let empty = metadata(&mut server.caller().await).await;
    assert!(empty.actions.is_empty() && empty.resource_types.is_empty() && empty.sources.is_empty());
}

async fn filter_metadata_describes_fields_and_orders(backend: Backend) {
    let server = TestServer::start(backend).await;
    let response = metadata(&mut server.caller().await).await;
    assert_eq!(
        response.order_by,
        ["seq desc", "seq asc", "occurred_at desc", "occurred_at asc"]
    );
    let field = |name: &str| {
        response
            .fields
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no field {name}"))
    };
    for name in [
        "action",
        "actor.id",
        "actor.name",
        "actor.email",
        "resource.type",
        "resource.id",
        "source",
        "request.method",
        "request.path",
        "request.client_ip",
        "request.request_id",
    ] {
        assert_eq!(field(name).r#type, "string", "{name}");
        assert_eq!(
            field(name).operators,
            ["=", "!=", "<", "<=", ">", ">=", ":"],
            "{name}"
        );
    }
    let outcome = field("outcome");
    assert_eq!(outcome.r#type, "enum");
    assert_eq!(outcome.operators, ["=", "!="]);
    assert_eq!(
        outcome.values,
        [
            "OUTCOME_UNSPECIFIED",
            "OUTCOME_INTENT",
            "OUTCOME_SUCCESS",
            "OUTCOME_FAILURE"
        ]
    );
    assert!(
        field("actor.type")
            .values
            .contains(&"ACTOR_TYPE_API_KEY".to_owned())
    );
    for name in ["occurred_at", "recorded_at"] {
        assert_eq!(field(name).r#type, "timestamp");
    }
    for name in ["seq", "request.status_code"] {
        assert_eq!(field(name).r#type, "integer");
        assert!(!field(name).operators.contains(&":".to_owned()));
    }
    assert_eq!(field("metadata").r#type, "struct");
}

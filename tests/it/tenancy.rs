//! Tenancy: every call names its tenant, and a tenant sees only its own log.

use audit_service::proto::{DeleteRequest, EventFilter, GetRequest};
use tonic::Code;

use crate::fixtures::{get, get_status, seqs, status_of};
use crate::on_both_backends;
use crate::support::{
    ALL_SCOPES, Backend, TestServer, assert_status, claims, event, hs256_token, new_tenant,
};

on_both_backends!(
    missing_tenant_header_is_tenant_required,
    malformed_tenant_header_is_invalid_argument,
    get_of_other_tenants_event_is_not_found,
    delete_of_other_tenants_event_is_not_found_and_keeps_it,
    query_of_a_tenant_returns_none_of_another_tenants_events,
    each_tenants_seq_starts_at_one,
);

async fn missing_tenant_header_is_tenant_required(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let id = caller.append(vec![event("user.login", "alice")]).await[0]
        .id
        .clone();

    // No metadata at all.
    let status = status_of(
        caller
            .client
            .get(tonic::Request::new(GetRequest { id: id.clone() }))
            .await,
    );
    assert_status(&status, Code::InvalidArgument, "TENANT_REQUIRED", None);

    // A valid credential, but no x-tenant-id.
    let mut request = caller.request(GetRequest { id: id.clone() });
    request.metadata_mut().remove("x-tenant-id");
    let status = status_of(caller.client.get(request).await);
    assert_status(&status, Code::InvalidArgument, "TENANT_REQUIRED", None);

    // An empty x-tenant-id is no tenant either.
    let mut request = caller.request(GetRequest { id });
    request.metadata_mut().insert("x-tenant-id", "".parse().unwrap());
    let status = status_of(caller.client.get(request).await);
    assert_status(&status, Code::InvalidArgument, "TENANT_REQUIRED", None);
}

async fn malformed_tenant_header_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let too_long = "a".repeat(129);
    for tenant in [
        "bad tenant!",
        "-leading-dash",
        "semi;colon",
        "a/b",
        too_long.as_str(),
    ] {
        // The credential names the same (malformed) tenant, so only the
        // header's form is wrong.
        let mut caller = server.caller_for(tenant).await;
        let status = get_status(&mut caller, &uuid::Uuid::now_v7().to_string()).await;
        assert_status(
            &status,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("x-tenant-id"),
        );
        let request = caller.request(audit_service::proto::AppendRequest {
            events: vec![event("user.login", "alice")],
        });
        let status = status_of(caller.client.append(request).await);
        assert_status(
            &status,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("x-tenant-id"),
        );
    }
}

async fn get_of_other_tenants_event_is_not_found(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut owner = server.caller().await;
    let mut other = server.caller().await;
    let id = owner.append(vec![event("user.login", "alice")]).await[0]
        .id
        .clone();
    let status = get_status(&mut other, &id).await;
    assert_status(&status, Code::NotFound, "NOT_FOUND", None);
    // Indistinguishable from an id that exists nowhere.
    let unknown = get_status(&mut other, &uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(unknown.code(), status.code());
    assert_eq!(get(&mut owner, &id).await.id, id);
}

async fn delete_of_other_tenants_event_is_not_found_and_keeps_it(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut owner = server.caller().await;
    let mut other = server.caller().await;
    let id = owner.append(vec![event("user.login", "alice")]).await[0]
        .id
        .clone();

    let request = other.request(DeleteRequest {
        id: id.clone(),
        reason: "not mine".into(),
    });
    let status = status_of(other.client.delete(request).await);
    assert_status(&status, Code::NotFound, "NOT_FOUND", None);

    let kept = get(&mut owner, &id).await;
    assert_eq!((kept.seq, kept.action.as_str()), (1, "user.login"));
    // Nothing was written to either log.
    let owners = owner.query_all(EventFilter::default(), "seq asc", 100).await;
    assert_eq!(seqs(&owners), [1]);
    let others = other.query_all(EventFilter::default(), "seq asc", 100).await;
    assert!(others.is_empty(), "{others:?}");
    // The other tenant's log still starts at 1.
    assert_eq!(other.append(vec![event("user.login", "bob")]).await[0].seq, 1);
}

async fn query_of_a_tenant_returns_none_of_another_tenants_events(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut a = server.caller().await;
    let mut b = server.caller().await;
    let a_ids: Vec<String> = a
        .append((0..5).map(|i| event("user.login", &format!("a{i}"))).collect())
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    let b_ids: Vec<String> = b
        .append((0..3).map(|i| event("user.login", &format!("b{i}"))).collect())
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();

    for order_by in ["seq desc", "seq asc", "occurred_at desc", "occurred_at asc"] {
        let seen = b.query_all(EventFilter::default(), order_by, 2).await;
        let mut seen_ids: Vec<String> = seen.iter().map(|e| e.id.clone()).collect();
        seen_ids.sort();
        let mut expected = b_ids.clone();
        expected.sort();
        assert_eq!(seen_ids, expected, "{order_by}");
        assert!(seen.iter().all(|e| e.tenant_id == b.tenant));
    }
    // Even when the filter names A's actors.
    let filter = EventFilter {
        actor_ids: vec!["a0".into(), "a1".into()],
        ..Default::default()
    };
    assert!(b.query_all(filter.clone(), "", 10).await.is_empty());
    let seen = a.query_all(filter, "seq asc", 10).await;
    assert_eq!(seqs(&seen), [1, 2]);
    assert!(seen.iter().all(|e| a_ids.contains(&e.id)));
}

async fn each_tenants_seq_starts_at_one(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenants: Vec<String> = (0..3).map(|_| new_tenant()).collect();
    let mut callers = Vec::new();
    for tenant in &tenants {
        let token = hs256_token(&claims("tester", tenant, ALL_SCOPES));
        callers.push(
            server
                .caller_with(tenant, crate::support::Credential::Bearer(token))
                .await,
        );
    }
    // Interleave the tenants' appends: each log still counts 1, 2, 3...
    for round in 0..3u64 {
        for (i, caller) in callers.iter_mut().enumerate() {
            let size = i + 1;
            let appended = caller
                .append((0..size).map(|_| event("user.login", "alice")).collect())
                .await;
            let expected: Vec<u64> = (1..=size as u64).map(|k| round * size as u64 + k).collect();
            assert_eq!(appended.iter().map(|r| r.seq).collect::<Vec<_>>(), expected);
        }
    }
    for (i, caller) in callers.iter_mut().enumerate() {
        let stored = caller.query_all(EventFilter::default(), "seq asc", 100).await;
        assert_eq!(seqs(&stored), (1..=3 * (i as u64 + 1)).collect::<Vec<_>>());
    }
}

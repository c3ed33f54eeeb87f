//! Platform reads across tenants: `Query` with `x-tenant-id: *` spans the
//! registered tenants (or a partner's), carries each event's `tenant_id`,
//! orders by time, tenant, seq, pages stably, and is recorded in the
//! `_platform` log.

use audit_service::proto::{AuditEvent, EventFilter, GetFilterMetadataRequest, QueryRequest, StatsRequest};
use tonic::Code;

use crate::fixtures::{micros, status_of};
use crate::on_both_backends;
use crate::platform_fixtures::{cli, fresh, fresh_action, platform_token, tenants_with};
use crate::support::{Backend, Caller, Credential, TestServer, assert_status, event};

on_both_backends!(
    a_platform_query_spans_tenants_and_names_each_events_tenant,
    tenant_ids_and_the_tenant_id_expression_narrow_the_span,
    a_partner_scoped_key_sees_exactly_its_partners_tenants,
    pages_across_tenants_stay_stable_while_tenants_append,
    a_page_token_is_bound_to_its_tenant_set,
    every_platform_read_is_recorded_in_the_platform_log,
    reading_across_tenants_needs_the_admin_scope,
    stats_across_tenants_count_every_reached_tenants_events,
    filter_metadata_across_tenants_lists_the_reached_tenants_values,
    stats_across_tenants_group_by_tenant,
    stats_and_filter_metadata_across_tenants_record_the_tenants_they_read,
);

/// A platform administrator reading every tenant, by JWT.
async fn platform(server: &TestServer, sub: &str) -> Caller {
    let token = platform_token(sub, "audit:admin audit:read", None);
    server.caller_with("*", Credential::Bearer(token)).await
}

/// The `audit.log.read` records of `operator`'s reads in `_platform`,
/// oldest first, read with a platform credential.
async fn platform_records(server: &TestServer, operator: &str) -> Vec<audit_service::proto::AuditEvent> {
    let token = platform_token(operator, "audit:read", None);
    let mut log = server.caller_with("_platform", Credential::Bearer(token)).await;
    log.query_all(
        EventFilter {
            actions: vec!["audit.log.read".into()],
            actor_ids: vec![operator.to_owned()],
            ..EventFilter::default()
        },
        "seq asc",
        10,
    )
    .await
}

/// Events of `action` only: keeps a test apart from the others sharing a
/// PostgreSQL database.
fn of_action(action: &str) -> EventFilter {
    EventFilter {
        actions: vec![action.to_owned()],
        ..EventFilter::default()
    }
}

/// (tenant, seq) of each event.
fn positions(events: &[AuditEvent]) -> Vec<(String, u64)> {
    events.iter().map(|e| (e.tenant_id.clone(), e.seq)).collect()
}

async fn a_platform_query_spans_tenants_and_names_each_events_tenant(backend: Backend) {
    let server = TestServer::start(backend).await;
    let action = fresh_action("span");
    let tenants = tenants_with(&server, 3, 2, &action).await;
    let mut admin = platform(&server, &fresh("operator")).await;

    for order_by in ["seq desc", "seq asc", "occurred_at desc", "occurred_at asc"] {
        let events = admin.query_all(of_action(&action), order_by, 100).await;
        let mut expected: Vec<(String, u64)> = tenants
            .iter()
            .flat_map(|t| [(t.tenant.clone(), 1), (t.tenant.clone(), 2)])
            .collect();
        expected.sort();
        let mut got = positions(&events);
        got.sort();
        assert_eq!(
            got, expected,
            "{order_by}: every tenant's events, each naming its tenant"
        );

        // In (time, tenant, seq) order.
        let key = |e: &AuditEvent| {
            let time = if order_by.starts_with("seq") {
                e.recorded_at.as_ref()
            } else {
                e.occurred_at.as_ref()
            };
            (micros(time.expect("time")), e.tenant_id.clone(), e.seq)
        };
        let keys: Vec<_> = events.iter().map(key).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        if order_by.ends_with("desc") {
            sorted.reverse();
        }
        assert_eq!(keys, sorted, "{order_by}");
    }
}

async fn tenant_ids_and_the_tenant_id_expression_narrow_the_span(backend: Backend) {
    let server = TestServer::start(backend).await;
    let action = fresh_action("narrow");
    let tenants = tenants_with(&server, 3, 1, &action).await;
    let mut admin = platform(&server, &fresh("operator")).await;
    let by_ids = EventFilter {
        tenant_ids: vec![tenants[0].tenant.clone(), tenants[2].tenant.clone()],
        ..of_action(&action)
    };
    let mut got: Vec<String> = admin
        .query_all(by_ids, "seq desc", 10)
        .await
        .into_iter()
        .map(|e| e.tenant_id)
        .collect();
    got.sort();
    let mut wanted = vec![tenants[0].tenant.clone(), tenants[2].tenant.clone()];
    wanted.sort();
    assert_eq!(got, wanted);

    let by_expression = EventFilter {
        expression: format!("tenant_id = \"{}\"", tenants[1].tenant),
        ..of_action(&action)
    };
    let got = admin.query_all(by_expression, "seq desc", 10).await;
    assert_eq!(positions(&got), [(tenants[1].tenant.clone(), 1)]);

    // A tenant naming another tenant in its own call sees nothing of it.
    let mut own = server.caller_for(&tenants[0].tenant).await;
    let other = EventFilter {
        tenant_ids: vec![tenants[1].tenant.clone()],
        ..of_action(&action)
    };
    assert!(own.query_all(other, "seq desc", 10).await.is_empty());
}

async fn a_partner_scoped_key_sees_exactly_its_partners_tenants(backend: Backend) {
    let server = TestServer::start(backend).await;
    let action = fresh_action("partner");
    let tenants = tenants_with(&server, 3, 2, &action).await;
    let partner = fresh("partner");
    for member in &tenants[..2] {
        cli(&server, &["tenants", "set-partner", &member.tenant, &partner]);
    }
    let created = cli(
        &server,
        &[
            "keys",
            "create",
            "--platform",
            "--partner",
            &partner,
            "--scope",
            "audit:admin",
            "--scope",
            "audit:read",
        ],
    );
    let key = created.lines().last().expect("key").trim().to_owned();
    let mut reseller = server.caller_with("*", Credential::ApiKey(key)).await;
    let mut seen: Vec<String> = reseller
        .query_all(EventFilter::default(), "seq desc", 1000)
        .await
        .into_iter()
        .map(|e| e.tenant_id)
        .collect();
    seen.dedup();
    seen.sort();
    seen.dedup();
    let mut members = vec![tenants[0].tenant.clone(), tenants[1].tenant.clone()];
    members.sort();
    assert_eq!(
        seen, members,
        "exactly the partner's tenants, with no filter at all"
    );

    // An unlimited administrator narrows to the partner with partner_ids.
    let mut admin = platform(&server, &fresh("operator")).await;
    let filter = EventFilter {
        partner_ids: vec![partner.clone()],
        ..of_action(&action)
    };
    assert_eq!(admin.query_all(filter, "seq asc", 10).await.len(), 4);

    // A JWT limited to the partner sees the same.
    let token = platform_token(&fresh("reseller"), "audit:admin audit:read", Some(&partner));
    let mut limited = server.caller_with("*", Credential::Bearer(token)).await;
    assert_eq!(
        limited.query_all(of_action(&action), "seq asc", 10).await.len(),
        4
    );
}

async fn pages_across_tenants_stay_stable_while_tenants_append(backend: Backend) {
    let server = TestServer::start(backend).await;
    let action = fresh_action("paging");
    let mut tenants = tenants_with(&server, 3, 5, &action).await;
    let mut admin = platform(&server, &fresh("operator")).await;
    let first = admin
        .query(QueryRequest {
            filter: Some(of_action(&action)),
            page_size: 4,
            ..QueryRequest::default()
        })
        .await;
    assert_eq!(first.events.len(), 4);
    // Every tenant appends before the next pages are read: newest first,
    // the new events come before the cursor and move nothing after it.
    for tenant in &mut tenants {
        tenant.append(vec![event(&action, "late")]).await;
    }
    let mut events = first.events;
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let page = admin
            .query(QueryRequest {
                filter: Some(of_action(&action)),
                page_size: 4,
                page_token: token,
                ..QueryRequest::default()
            })
            .await;
        events.extend(page.events);
        token = page.next_page_token;
    }
    let mut got = positions(&events);
    let count = got.len();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), count, "no event twice");
    let mut expected: Vec<(String, u64)> = tenants
        .iter()
        .flat_map(|t| (1..=5).map(move |seq| (t.tenant.clone(), seq)))
        .collect();
    expected.sort();
    assert_eq!(got, expected, "every event there was at the first page, once");
}

async fn a_page_token_is_bound_to_its_tenant_set(backend: Backend) {
    let server = TestServer::start(backend).await;
    let action = fresh_action("bound");
    let tenants = tenants_with(&server, 2, 3, &action).await;
    let mut admin = platform(&server, &fresh("operator")).await;
    let first = admin
        .query(QueryRequest {
            filter: Some(of_action(&action)),
            page_size: 2,
            ..QueryRequest::default()
        })
        .await;
    assert!(!first.next_page_token.is_empty());
    // Another tenant set through the filter.
    let narrowed = QueryRequest {
        filter: Some(EventFilter {
            tenant_ids: vec![tenants[0].tenant.clone()],
            ..of_action(&action)
        }),
        page_size: 2,
        page_token: first.next_page_token.clone(),
        ..QueryRequest::default()
    };
    let status = status_of(admin.client.query(admin.request(narrowed)).await);
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("page_token"),
    );
    // Another tenant set through the credential's partner.
    let token = platform_token(
        &fresh("reseller"),
        "audit:admin audit:read",
        Some(&fresh("partner")),
    );
    let mut limited = server.caller_with("*", Credential::Bearer(token)).await;
    let moved = QueryRequest {
        filter: Some(of_action(&action)),
        page_size: 2,
        page_token: first.next_page_token.clone(),
        ..QueryRequest::default()
    };
    let status = status_of(limited.client.query(limited.request(moved)).await);
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("page_token"),
    );
    // A tenant's own token does not open across tenants, nor the reverse.
    let mut own = server.caller_for(&tenants[0].tenant).await;
    let own_page = own
        .query(QueryRequest {
            filter: Some(of_action(&action)),
            page_size: 1,
            ..QueryRequest::default()
        })
        .await;
    let crossed = QueryRequest {
        filter: Some(of_action(&action)),
        page_size: 2,
        page_token: own_page.next_page_token,
        ..QueryRequest::default()
    };
    let status = status_of(admin.client.query(admin.request(crossed)).await);
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("page_token"),
    );
    let crossed = QueryRequest {
        filter: Some(of_action(&action)),
        page_size: 2,
        page_token: first.next_page_token,
        ..QueryRequest::default()
    };
    let status = status_of(own.client.query(own.request(crossed)).await);
    assert_status(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("page_token"),
    );
}

async fn every_platform_read_is_recorded_in_the_platform_log(backend: Backend) {
    let server = TestServer::start(backend).await;
    let action = fresh_action("recorded");
    let tenants = tenants_with(&server, 2, 1, &action).await;
    let operator = fresh("operator");
    let mut admin = platform(&server, &operator).await;
    let read = admin.query_all(of_action(&action), "seq desc", 10).await;
    assert_eq!(read.len(), 2);

    let records = platform_records(&server, &operator).await;
    assert_eq!(records.len(), 1, "one record of the one read: {records:?}");
    let record = &records[0];
    assert_eq!(record.tenant_id, "_platform");
    let field = |name: &str| {
        let value = &record.metadata.as_ref().expect("metadata").fields[name];
        value.clone()
    };
    use prost_types::value::Kind;
    assert!(matches!(&field("rpc").kind, Some(Kind::StringValue(rpc)) if rpc == "Query"));
    assert!(matches!(field("returned").kind, Some(Kind::NumberValue(n)) if n == 2.0));
    let Some(Kind::ListValue(touched)) = field("tenants").kind else {
        panic!("no tenants list in {record:?}");
    };
    let mut touched: Vec<String> = touched
        .values
        .iter()
        .filter_map(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .collect();
    touched.sort();
    let mut wanted: Vec<String> = tenants.iter().map(|t| t.tenant.clone()).collect();
    wanted.sort();
    assert_eq!(touched, wanted);
    assert!(
        matches!(field("filter").kind, Some(Kind::StructValue(_))),
        "{record:?}"
    );

    // Reads across tenants never reach the platform's own log.
    let across = admin
        .query_all(
            EventFilter {
                actions: vec!["audit.log.read".into()],
                actor_ids: vec![operator.clone()],
                ..EventFilter::default()
            },
            "seq asc",
            10,
        )
        .await;
    assert!(across.is_empty(), "{across:?}");
}

async fn reading_across_tenants_needs_the_admin_scope(backend: Backend) {
    let server = TestServer::start(backend).await;
    let token = platform_token(&fresh("operator"), "audit:read", None);
    let mut reader = server.caller_with("*", Credential::Bearer(token)).await;
    let status = status_of(reader.client.query(reader.request(QueryRequest::default())).await);
    assert_status(&status, Code::PermissionDenied, "MISSING_SCOPE", None);
}

/// A platform key limited to a fresh partner holding `members`.
fn partner_key(server: &TestServer, members: &[Caller]) -> String {
    let partner = fresh("partner");
    for member in members {
        cli(server, &["tenants", "set-partner", &member.tenant, &partner]);
    }
    let created = cli(
        server,
        &[
            "keys",
            "create",
            "--platform",
            "--partner",
            &partner,
            "--scope",
            "audit:admin",
            "--scope",
            "audit:read",
        ],
    );
    created.lines().last().expect("key").trim().to_owned()
}

/// The `audit.log.read` records of `operator`'s reads, from `_platform`.
async fn records_of(server: &TestServer, operator: &str) -> Vec<AuditEvent> {
    let token = platform_token(operator, "audit:read", None);
    let mut log = server.caller_with("_platform", Credential::Bearer(token)).await;
    let filter = EventFilter {
        actions: vec!["audit.log.read".into()],
        actor_ids: vec![operator.to_owned()],
        ..EventFilter::default()
    };
    log.query_all(filter, "seq asc", 100).await
}

async fn stats_across_tenants_count_every_reached_tenants_events(backend: Backend) {
    let server = TestServer::start(backend).await;
    let action = fresh_action("stats");
    let tenants = tenants_with(&server, 3, 2, &action).await;
    let operator = fresh("operator");
    let mut admin = platform(&server, &operator).await;
    let stats = |filter: EventFilter| StatsRequest {
        filter: Some(filter),
        group_by: vec!["action".into()],
        ..StatsRequest::default()
    };
    // From the rollups, and by a scan (actor ids are not in the rollups).
    let scanned = EventFilter {
        actor_ids: vec!["actor-0".into(), "actor-1".into()],
        ..of_action(&action)
    };
    for filter in [of_action(&action), scanned] {
        let request = admin.request(stats(filter));
        let answer = admin.client.stats(request).await.expect("stats").into_inner();
        assert_eq!(answer.total, 6, "{answer:?}");
        assert_eq!(answer.groups.len(), 1, "{answer:?}");
        assert_eq!(
            (answer.groups[0].keys.clone(), answer.groups[0].count),
            (vec![action.clone()], 6)
        );
    }
    let key = partner_key(&server, &tenants[..2]);
    let mut reseller = server.caller_with("*", Credential::ApiKey(key)).await;
    let request = reseller.request(stats(of_action(&action)));
    let answer = reseller.client.stats(request).await.expect("stats").into_inner();
    assert_eq!(answer.total, 4, "only the partner's tenants: {answer:?}");

    let records = records_of(&server, &operator).await;
    assert_eq!(records.len(), 2, "{records:?}");
    let rpc = &records[0].metadata.as_ref().expect("metadata").fields["rpc"];
    assert!(
        matches!(&rpc.kind, Some(prost_types::value::Kind::StringValue(name)) if name == "Stats"),
        "{records:?}"
    );
}

async fn filter_metadata_across_tenants_lists_the_reached_tenants_values(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut tenants = Vec::new();
    let mut actions = Vec::new();
    for _ in 0..3 {
        let action = fresh_action("meta");
        tenants.extend(tenants_with(&server, 1, 1, &action).await);
        actions.push(action);
    }
    let key = partner_key(&server, &tenants[..2]);
    let mut reseller = server.caller_with("*", Credential::ApiKey(key)).await;
    let request = reseller.request(GetFilterMetadataRequest::default());
    let answer = reseller
        .client
        .get_filter_metadata(request)
        .await
        .expect("filter metadata")
        .into_inner();
    let mut wanted = actions[..2].to_vec();
    wanted.sort();
    assert_eq!(
        answer.actions, wanted,
        "the partner's tenants' actions, and only theirs"
    );
    assert!(
        answer.fields.iter().any(|f| f.name == "tenant_id"),
        "{:?}",
        answer.fields
    );
}

async fn stats_across_tenants_group_by_tenant(backend: Backend) {
    let server = TestServer::start(backend).await;
    let action = fresh_action("grouped");
    let mut tenants = tenants_with(&server, 3, 1, &action).await;
    tenants[0].append(vec![event(&action, "again")]).await;
    let mut admin = platform(&server, &fresh("operator")).await;
    let request = admin.request(StatsRequest {
        filter: Some(of_action(&action)),
        group_by: vec!["tenant_id".into()],
        ..StatsRequest::default()
    });
    let answer = admin.client.stats(request).await.expect("stats").into_inner();
    let groups: Vec<(Vec<String>, u64)> = answer.groups.into_iter().map(|g| (g.keys, g.count)).collect();
    assert_eq!(groups[0], (vec![tenants[0].tenant.clone()], 2), "largest first");
    let mut rest: Vec<(Vec<String>, u64)> = groups[1..].to_vec();
    rest.sort();
    let mut wanted = vec![
        (vec![tenants[1].tenant.clone()], 1),
        (vec![tenants[2].tenant.clone()], 1),
    ];
    wanted.sort();
    assert_eq!(rest, wanted);
}

/// `Stats` and `GetFilterMetadata` across tenants record, like every
/// platform read, the tenants they read: a partner's key reads its
/// partner's tenants; a filter's `tenant_ids` narrow them.
async fn stats_and_filter_metadata_across_tenants_record_the_tenants_they_read(backend: Backend) {
    use audit_service::proto::{GetFilterMetadataRequest, StatsRequest};
    use prost_types::value::Kind;

    let server = TestServer::start(backend).await;
    let action = fresh_action("counted");
    let tenants = tenants_with(&server, 3, 1, &action).await;
    let partner = fresh("partner");
    for member in &tenants[..2] {
        cli(&server, &["tenants", "set-partner", &member.tenant, &partner]);
    }
    let operator = fresh("operator");
    let token = platform_token(&operator, "audit:admin audit:read", Some(&partner));
    let mut reseller = server.caller_with("*", Credential::Bearer(token)).await;
    let request = reseller.request(StatsRequest {
        filter: Some(of_action(&action)),
        ..StatsRequest::default()
    });
    let stats = reseller.client.stats(request).await.expect("stats").into_inner();
    assert_eq!(stats.total, 2);
    let request = reseller.request(GetFilterMetadataRequest::default());
    reseller
        .client
        .get_filter_metadata(request)
        .await
        .expect("filter metadata");
    let mut admin = platform(&server, &operator).await;
    let narrowed = EventFilter {
        tenant_ids: vec![tenants[2].tenant.clone()],
        ..of_action(&action)
    };
    let request = admin.request(StatsRequest {
        filter: Some(narrowed),
        ..StatsRequest::default()
    });
    let stats = admin.client.stats(request).await.expect("stats").into_inner();
    assert_eq!(stats.total, 1);

    let records = platform_records(&server, &operator).await;
    let read = |record: &audit_service::proto::AuditEvent| -> (String, Vec<String>) {
        let fields = &record.metadata.as_ref().expect("metadata").fields;
        let Some(Kind::StringValue(rpc)) = fields["rpc"].kind.clone() else {
            panic!("no rpc in {record:?}");
        };
        let Some(Kind::ListValue(list)) = fields.get("tenants").and_then(|v| v.kind.clone()) else {
            panic!("no tenants list in the {rpc} record: {record:?}");
        };
        let mut tenants: Vec<String> = list
            .values
            .into_iter()
            .filter_map(|v| match v.kind {
                Some(Kind::StringValue(s)) => Some(s),
                _ => None,
            })
            .collect();
        tenants.sort();
        (rpc, tenants)
    };
    let mut partners: Vec<String> = tenants[..2].iter().map(|t| t.tenant.clone()).collect();
    partners.sort();
    let seen: Vec<(String, Vec<String>)> = records.iter().map(read).collect();
    assert_eq!(
        seen,
        [
            ("Stats".to_owned(), partners.clone()),
            ("GetFilterMetadata".to_owned(), partners),
            ("Stats".to_owned(), vec![tenants[2].tenant.clone()]),
        ]
    );
}

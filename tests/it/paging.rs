//! Query: keyset paging in the four orders, page sizes, page-token misuse,
//! order_by, and the structured EventFilter.

use std::collections::HashSet;

use audit_service::proto::{
    Actor, ActorType, AuditEvent, EventFilter, EventInput, Outcome, RequestContext, Resource,
};
use tonic::Code;

use crate::fixtures::{BASE_SECS, at, event_at, micros, query, query_status, seqs};
use crate::on_both_backends;
use crate::support::{Backend, Caller, TestServer, assert_status, event};

on_both_backends!(
    paging_through_1200_events_in_every_order_has_no_duplicate_and_no_gap,
    paging_through_time_ranges_in_seq_order_returns_exactly_the_range,
    page_size_zero_returns_fifty_events_and_a_next_token,
    page_size_above_1000_returns_1000_events,
    negative_page_size_is_invalid_argument,
    last_page_has_an_empty_next_page_token,
    page_token_with_one_character_changed_is_invalid_argument,
    page_token_reused_with_another_filter_is_invalid_argument,
    page_token_reused_with_another_order_by_is_invalid_argument,
    page_token_of_another_tenant_is_invalid_argument,
    garbage_page_token_is_invalid_argument,
    unknown_order_by_is_invalid_argument,
    filter_by_actions_matches_exact_values_and_prefixes,
    filter_by_actor_ids_matches_any_listed_actor,
    filter_by_actor_types_matches_any_listed_type,
    filter_by_actor_email_is_case_insensitive,
    filter_by_resource_types_and_ids,
    filter_by_outcomes_matches_any_listed_outcome,
    filter_by_sources_matches_any_listed_source,
    filter_by_request_id_and_client_ip,
    filter_by_time_range_is_start_inclusive_end_exclusive,
    combined_filters_are_and_ed,
);

const EVENTS: u64 = 1200;

/// `occurred_at` offset (seconds) of the event with `seq`: not in seq
/// order, with four events on each of 300 distinct seconds.
fn scrambled_offset(seq: u64) -> i64 {
    i64::try_from((seq - 1) * 7919 % 300).expect("below 300")
}

/// A server holding 1200 events appended in seq order whose `occurred_at`
/// follows [`scrambled_offset`], and the (occurred_at micros, seq) of each.
async fn scrambled_events(backend: Backend) -> (TestServer, Caller, Vec<(i64, u64)>) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let inputs: Vec<EventInput> = (1..=EVENTS)
        .map(|seq| event_at("document.read", &format!("a{seq}"), at(scrambled_offset(seq))))
        .collect();
    let mut inputs = inputs.into_iter();
    for batch in [1000, 200] {
        let appended = caller.append(inputs.by_ref().take(batch).collect()).await;
        assert_eq!(appended.len(), batch);
    }
    let keys = (1..=EVENTS)
        .map(|seq| (micros(&at(scrambled_offset(seq))), seq))
        .collect();
    (server, caller, keys)
}

async fn paging_through_1200_events_in_every_order_has_no_duplicate_and_no_gap(backend: Backend) {
    let (_server, mut caller, keys) = scrambled_events(backend).await;
    let mut by_occurred_at = keys.clone();
    by_occurred_at.sort_unstable();
    let occurred_asc: Vec<u64> = by_occurred_at.iter().map(|k| k.1).collect();
    let occurred_desc: Vec<u64> = occurred_asc.iter().rev().copied().collect();
    let seq_asc: Vec<u64> = (1..=EVENTS).collect();
    let seq_desc: Vec<u64> = seq_asc.iter().rev().copied().collect();
    // The scrambling must really disagree with seq order and tie.
    assert_ne!(occurred_asc, seq_asc);

    for (order_by, expected) in [
        ("", &seq_desc),
        ("seq desc", &seq_desc),
        ("seq asc", &seq_asc),
        ("occurred_at desc", &occurred_desc),
        ("occurred_at asc", &occurred_asc),
    ] {
        let events = caller.query_all(EventFilter::default(), order_by, 97).await;
        assert_eq!(events.len() as u64, EVENTS, "{order_by:?}");
        let unique: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(unique.len() as u64, EVENTS, "duplicates in {order_by:?}");
        assert_eq!(&seqs(&events), expected, "{order_by:?}");
        for e in &events {
            let occurred_at = e.occurred_at.as_ref().expect("occurred_at");
            assert_eq!(
                micros(occurred_at),
                keys[usize::try_from(e.seq - 1).expect("a seq below 1200")].0,
                "occurred_at of seq {}",
                e.seq
            );
        }
    }
}

/// Broad and narrow ranges, paged in seq order: on SQLite the service
/// walks the broad ones in seq order and reads the narrow ones through the
/// `occurred_at` index (`store::time_bounds`); either way, every page holds
/// exactly the range's events, in order.
async fn paging_through_time_ranges_in_seq_order_returns_exactly_the_range(backend: Backend) {
    let (_server, mut caller, keys) = scrambled_events(backend).await;
    for (start, end) in [
        (Some(50), Some(250)),
        (Some(10), Some(12)),
        (Some(100), None),
        (None, Some(3)),
        (Some(299), Some(400)),
        (Some(400), None),
    ] {
        let filter = EventFilter {
            start_time: start.map(at),
            end_time: end.map(at),
            ..Default::default()
        };
        let inside = |value: i64| {
            start.is_none_or(|s| value >= micros(&at(s))) && end.is_none_or(|e| value < micros(&at(e)))
        };
        let seq_asc: Vec<u64> = keys.iter().filter(|k| inside(k.0)).map(|k| k.1).collect();
        let seq_desc: Vec<u64> = seq_asc.iter().rev().copied().collect();
        for (order_by, expected) in [("seq desc", &seq_desc), ("seq asc", &seq_asc)] {
            let events = caller.query_all(filter.clone(), order_by, 97).await;
            assert_eq!(&seqs(&events), expected, "{start:?}..{end:?} {order_by}");
        }
    }
}

async fn append_n(caller: &mut Caller, n: usize) {
    let mut left = n;
    while left > 0 {
        let batch = left.min(1000);
        let events = (0..batch)
            .map(|i| event("document.read", &format!("a{i}")))
            .collect();
        caller.append(events).await;
        left -= batch;
    }
}

async fn page_size_zero_returns_fifty_events_and_a_next_token(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    append_n(&mut caller, 60).await;
    let page = caller.query(query(EventFilter::default(), "", 0, "")).await;
    assert_eq!(seqs(&page.events), (11..=60).rev().collect::<Vec<u64>>());
    assert!(!page.next_page_token.is_empty());

    let rest = caller
        .query(query(EventFilter::default(), "", 0, &page.next_page_token))
        .await;
    assert_eq!(seqs(&rest.events), (1..=10).rev().collect::<Vec<u64>>());
    assert!(rest.next_page_token.is_empty());
}

async fn page_size_above_1000_returns_1000_events(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    append_n(&mut caller, 1005).await;
    let page = caller
        .query(query(EventFilter::default(), "seq asc", 5000, ""))
        .await;
    assert_eq!(seqs(&page.events), (1..=1000).collect::<Vec<u64>>());
    assert!(!page.next_page_token.is_empty());

    let rest = caller
        .query(query(
            EventFilter::default(),
            "seq asc",
            5000,
            &page.next_page_token,
        ))
        .await;
    assert_eq!(seqs(&rest.events), (1001..=1005).collect::<Vec<u64>>());
    assert!(rest.next_page_token.is_empty());
}

async fn negative_page_size_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    append_n(&mut caller, 3).await;
    for page_size in [-1, i32::MIN] {
        let status = query_status(&mut caller, query(EventFilter::default(), "", page_size, "")).await;
        assert_status(
            &status,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("page_size"),
        );
    }
}

async fn last_page_has_an_empty_next_page_token(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    append_n(&mut caller, 10).await;

    // Exactly as many events as the page holds: one page, no token.
    let all = caller
        .query(query(EventFilter::default(), "seq asc", 10, ""))
        .await;
    assert_eq!(seqs(&all.events), (1..=10).collect::<Vec<u64>>());
    assert_eq!(all.next_page_token, "");

    // Two full pages: the second is the last.
    let first = caller
        .query(query(EventFilter::default(), "seq asc", 5, ""))
        .await;
    assert_eq!(seqs(&first.events), [1, 2, 3, 4, 5]);
    assert_ne!(first.next_page_token, "");
    let second = caller
        .query(query(
            EventFilter::default(),
            "seq asc",
            5,
            &first.next_page_token,
        ))
        .await;
    assert_eq!(seqs(&second.events), [6, 7, 8, 9, 10]);
    assert_eq!(second.next_page_token, "");

    // A filter matching nothing: an empty last page.
    let none = caller
        .query(query(
            EventFilter {
                actor_ids: vec!["nobody".into()],
                ..Default::default()
            },
            "",
            5,
            "",
        ))
        .await;
    assert!(none.events.is_empty());
    assert_eq!(none.next_page_token, "");
}

/// A caller whose tenant has 10 events, and the token of the first page of
/// 3 events of `filter` in `order_by`.
async fn first_page_token(server: &TestServer, filter: EventFilter, order_by: &str) -> (Caller, String) {
    let mut caller = server.caller().await;
    let events = (0..10)
        .map(|i| event(if i % 2 == 0 { "user.login" } else { "user.logout" }, "alice"))
        .collect();
    caller.append(events).await;
    let page = caller.query(query(filter, order_by, 3, "")).await;
    assert_eq!(page.events.len(), 3);
    assert!(!page.next_page_token.is_empty());
    (caller, page.next_page_token)
}

fn assert_bad_page_token(status: &tonic::Status) {
    assert_status(
        status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("page_token"),
    );
}

async fn page_token_with_one_character_changed_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, token) = first_page_token(&server, EventFilter::default(), "seq desc").await;
    // The untouched token works.
    let next = caller
        .query(query(EventFilter::default(), "seq desc", 3, &token))
        .await;
    assert_eq!(seqs(&next.events), [7, 6, 5]);

    for i in 0..token.len() {
        let mut edited: Vec<u8> = token.clone().into_bytes();
        edited[i] = if edited[i] == b'A' { b'B' } else { b'A' };
        let edited = String::from_utf8(edited).unwrap();
        let status = query_status(&mut caller, query(EventFilter::default(), "seq desc", 3, &edited)).await;
        assert_bad_page_token(&status);
    }
}

async fn page_token_reused_with_another_filter_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let user_actions = EventFilter {
        actions: vec!["user.*".into()],
        ..Default::default()
    };
    let (mut caller, token) = first_page_token(&server, user_actions, "seq desc").await;
    for other in [
        EventFilter::default(),
        EventFilter {
            actions: vec!["user.login".into()],
            ..Default::default()
        },
        EventFilter {
            actions: vec!["user.*".into()],
            actor_ids: vec!["alice".into()],
            ..Default::default()
        },
    ] {
        let status = query_status(&mut caller, query(other, "seq desc", 3, &token)).await;
        assert_bad_page_token(&status);
    }
}

async fn page_token_reused_with_another_order_by_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, token) = first_page_token(&server, EventFilter::default(), "seq desc").await;
    for other in ["seq asc", "occurred_at desc", "occurred_at asc"] {
        let status = query_status(&mut caller, query(EventFilter::default(), other, 3, &token)).await;
        assert_bad_page_token(&status);
    }
}

async fn page_token_of_another_tenant_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, token) = first_page_token(&server, EventFilter::default(), "seq desc").await;
    let (mut other, _) = first_page_token(&server, EventFilter::default(), "seq desc").await;
    let status = query_status(&mut other, query(EventFilter::default(), "seq desc", 3, &token)).await;
    assert_bad_page_token(&status);
}

async fn garbage_page_token_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (mut caller, token) = first_page_token(&server, EventFilter::default(), "seq desc").await;
    for garbage in [
        "garbage".to_owned(),
        "!!!".to_owned(),
        "AAAA".to_owned(),
        "A".repeat(500),
        format!("{token}A"),
        token[..token.len() - 1].to_owned(),
        uuid::Uuid::now_v7().to_string(),
    ] {
        let status = query_status(
            &mut caller,
            query(EventFilter::default(), "seq desc", 3, &garbage),
        )
        .await;
        assert_bad_page_token(&status);
    }
}

async fn unknown_order_by_is_invalid_argument(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    for order_by in [
        "action desc",
        "seq sideways",
        "desc",
        "seq desc, occurred_at asc",
        "recorded_at",
    ] {
        let status = query_status(&mut caller, query(EventFilter::default(), order_by, 10, "")).await;
        assert_status(
            &status,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            Some("order_by"),
        );
    }
}

/// The events the filter tests select from (seq in the comment):
///
/// | seq | action | actor (type, email) | resource | outcome | source | request_id | client_ip | at |
/// | 1 | user.login | alice (USER, Alice@Example.com) | document/doc-1 | SUCCESS | web | req-1 | 10.0.0.1 | +0 |
/// | 2 | user.logout | alice (USER, alice@example.com) | - | SUCCESS | web | req-2 | 10.0.0.1 | +10 |
/// | 3 | user.login | bob (USER, bob@example.com) | - | FAILURE | web | req-3 | 10.0.0.2 | +20 |
/// | 4 | api_key.create | svc-1 (SERVICE) | api_key/key-1 | SUCCESS | iam | req-4 | 2001:db8::1 | +30 |
/// | 5 | document.read | agent-7 (AGENT) | document/doc-1 | INTENT | agent | req-5 | - | +40 |
/// | 6 | document.read | alice (USER, ALICE@EXAMPLE.COM) | document/doc-2 | SUCCESS | web | req-1 | 10.0.0.1 | +50 |
/// | 7 | users.create | admin (USER, alicex@example.com) | user/u-9 | FAILURE | iam | - | - | +60 |
/// | 8 | user.password.reset | bob (UNSPECIFIED) | user/doc-1 | UNSPECIFIED | - | - | - | +70 |
async fn seed_filter_events(caller: &mut Caller) {
    #[allow(clippy::too_many_arguments)]
    fn e(
        action: &str,
        actor: (&str, ActorType, &str),
        resource: (&str, &str),
        outcome: Outcome,
        source: &str,
        request_id: &str,
        client_ip: &str,
        offset: i64,
    ) -> EventInput {
        EventInput {
            occurred_at: Some(at(offset)),
            actor: Some(Actor {
                id: actor.0.into(),
                r#type: actor.1 as i32,
                name: String::new(),
                email: actor.2.into(),
            }),
            action: action.into(),
            resource: Some(Resource {
                r#type: resource.0.into(),
                id: resource.1.into(),
                name: String::new(),
            }),
            outcome: outcome as i32,
            request: Some(RequestContext {
                request_id: request_id.into(),
                client_ip: client_ip.into(),
                ..Default::default()
            }),
            source: source.into(),
            ..Default::default()
        }
    }
    use ActorType::{Agent, Service, Unspecified, User};
    let events = vec![
        e(
            "user.login",
            ("alice", User, "Alice@Example.com"),
            ("document", "doc-1"),
            Outcome::Success,
            "web",
            "req-1",
            "10.0.0.1",
            0,
        ),
        e(
            "user.logout",
            ("alice", User, "alice@example.com"),
            ("", ""),
            Outcome::Success,
            "web",
            "req-2",
            "10.0.0.1",
            10,
        ),
        e(
            "user.login",
            ("bob", User, "bob@example.com"),
            ("", ""),
            Outcome::Failure,
            "web",
            "req-3",
            "10.0.0.2",
            20,
        ),
        e(
            "api_key.create",
            ("svc-1", Service, ""),
            ("api_key", "key-1"),
            Outcome::Success,
            "iam",
            "req-4",
            "2001:db8::1",
            30,
        ),
        e(
            "document.read",
            ("agent-7", Agent, ""),
            ("document", "doc-1"),
            Outcome::Intent,
            "agent",
            "req-5",
            "",
            40,
        ),
        e(
            "document.read",
            ("alice", User, "ALICE@EXAMPLE.COM"),
            ("document", "doc-2"),
            Outcome::Success,
            "web",
            "req-1",
            "10.0.0.1",
            50,
        ),
        e(
            "users.create",
            ("admin", User, "alicex@example.com"),
            ("user", "u-9"),
            Outcome::Failure,
            "iam",
            "",
            "",
            60,
        ),
        e(
            "user.password.reset",
            ("bob", Unspecified, ""),
            ("user", "doc-1"),
            Outcome::Unspecified,
            "",
            "",
            "",
            70,
        ),
    ];
    let appended = caller.append(events).await;
    assert_eq!(
        appended.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<u64>>()
    );
}

/// Seqs (ascending) of the events `filter` selects, through every page.
async fn selected(caller: &mut Caller, filter: EventFilter) -> Vec<u64> {
    let events: Vec<AuditEvent> = caller.query_all(filter, "seq asc", 3).await;
    seqs(&events)
}

async fn seeded(backend: Backend) -> (TestServer, Caller) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    seed_filter_events(&mut caller).await;
    // Another tenant with look-alike events must never show up.
    let mut other = server.caller().await;
    seed_filter_events(&mut other).await;
    (server, caller)
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

async fn filter_by_actions_matches_exact_values_and_prefixes(backend: Backend) {
    let (_server, mut caller) = seeded(backend).await;
    let by = |actions: &[&str]| EventFilter {
        actions: strings(actions),
        ..Default::default()
    };
    assert_eq!(selected(&mut caller, by(&["user.login"])).await, [1, 3]);
    // `user.*` is a prefix on `user.`: not `users.create`.
    assert_eq!(selected(&mut caller, by(&["user.*"])).await, [1, 2, 3, 8]);
    assert_eq!(selected(&mut caller, by(&["user.password.*"])).await, [8]);
    assert_eq!(
        selected(&mut caller, by(&["user.login", "document.*"])).await,
        [1, 3, 5, 6]
    );
    assert_eq!(
        selected(&mut caller, by(&["users.*", "api_key.create"])).await,
        [4, 7]
    );
    // No implicit prefix without `*`.
    assert_eq!(selected(&mut caller, by(&["user"])).await, Vec::<u64>::new());
    assert_eq!(selected(&mut caller, by(&["user.log"])).await, Vec::<u64>::new());
}

async fn filter_by_actor_ids_matches_any_listed_actor(backend: Backend) {
    let (_server, mut caller) = seeded(backend).await;
    let by = |ids: &[&str]| EventFilter {
        actor_ids: strings(ids),
        ..Default::default()
    };
    assert_eq!(selected(&mut caller, by(&["alice"])).await, [1, 2, 6]);
    assert_eq!(
        selected(&mut caller, by(&["alice", "bob"])).await,
        [1, 2, 3, 6, 8]
    );
    assert_eq!(selected(&mut caller, by(&["ALICE"])).await, Vec::<u64>::new());
}

async fn filter_by_actor_types_matches_any_listed_type(backend: Backend) {
    let (_server, mut caller) = seeded(backend).await;
    let by = |types: &[ActorType]| EventFilter {
        actor_types: types.iter().map(|t| *t as i32).collect(),
        ..Default::default()
    };
    assert_eq!(
        selected(&mut caller, by(&[ActorType::User])).await,
        [1, 2, 3, 6, 7]
    );
    assert_eq!(
        selected(&mut caller, by(&[ActorType::Service, ActorType::Agent])).await,
        [4, 5]
    );
    assert_eq!(selected(&mut caller, by(&[ActorType::Unspecified])).await, [8]);
    assert_eq!(
        selected(&mut caller, by(&[ActorType::System])).await,
        Vec::<u64>::new()
    );
}

async fn filter_by_actor_email_is_case_insensitive(backend: Backend) {
    let (_server, mut caller) = seeded(backend).await;
    for email in ["alice@example.com", "ALICE@example.COM", "Alice@Example.com"] {
        let filter = EventFilter {
            actor_email: email.into(),
            ..Default::default()
        };
        assert_eq!(selected(&mut caller, filter).await, [1, 2, 6], "{email}");
    }
    // Exact, not a substring or prefix match.
    let filter = EventFilter {
        actor_email: "example.com".into(),
        ..Default::default()
    };
    assert_eq!(selected(&mut caller, filter).await, Vec::<u64>::new());
}

async fn filter_by_resource_types_and_ids(backend: Backend) {
    let (_server, mut caller) = seeded(backend).await;
    let types = |values: &[&str]| EventFilter {
        resource_types: strings(values),
        ..Default::default()
    };
    let ids = |values: &[&str]| EventFilter {
        resource_ids: strings(values),
        ..Default::default()
    };
    assert_eq!(selected(&mut caller, types(&["document"])).await, [1, 5, 6]);
    assert_eq!(
        selected(&mut caller, types(&["user", "api_key"])).await,
        [4, 7, 8]
    );
    assert_eq!(selected(&mut caller, ids(&["doc-1"])).await, [1, 5, 8]);
    assert_eq!(
        selected(&mut caller, ids(&["doc-1", "key-1"])).await,
        [1, 4, 5, 8]
    );
    // Resource types are not prefix-matched.
    assert_eq!(selected(&mut caller, types(&["doc*"])).await, Vec::<u64>::new());
}

async fn filter_by_outcomes_matches_any_listed_outcome(backend: Backend) {
    let (_server, mut caller) = seeded(backend).await;
    let by = |outcomes: &[Outcome]| EventFilter {
        outcomes: outcomes.iter().map(|o| *o as i32).collect(),
        ..Default::default()
    };
    assert_eq!(selected(&mut caller, by(&[Outcome::Failure])).await, [3, 7]);
    assert_eq!(
        selected(&mut caller, by(&[Outcome::Success, Outcome::Intent])).await,
        [1, 2, 4, 5, 6]
    );
    assert_eq!(selected(&mut caller, by(&[Outcome::Unspecified])).await, [8]);
}

async fn filter_by_sources_matches_any_listed_source(backend: Backend) {
    let (_server, mut caller) = seeded(backend).await;
    let by = |sources: &[&str]| EventFilter {
        sources: strings(sources),
        ..Default::default()
    };
    assert_eq!(selected(&mut caller, by(&["iam"])).await, [4, 7]);
    assert_eq!(
        selected(&mut caller, by(&["web", "agent"])).await,
        [1, 2, 3, 5, 6]
    );
    assert_eq!(selected(&mut caller, by(&["WEB"])).await, Vec::<u64>::new());
}

async fn filter_by_request_id_and_client_ip(backend: Backend) {
    let (_server, mut caller) = seeded(backend).await;
    let request_id = |value: &str| EventFilter {
        request_id: value.into(),
        ..Default::default()
    };
    let client_ip = |value: &str| EventFilter {
        client_ip: value.into(),
        ..Default::default()
    };
    assert_eq!(selected(&mut caller, request_id("req-1")).await, [1, 6]);
    assert_eq!(selected(&mut caller, request_id("req-4")).await, [4]);
    assert_eq!(selected(&mut caller, request_id("req")).await, Vec::<u64>::new());
    assert_eq!(selected(&mut caller, client_ip("10.0.0.1")).await, [1, 2, 6]);
    assert_eq!(selected(&mut caller, client_ip("2001:db8::1")).await, [4]);
    assert_eq!(
        selected(&mut caller, client_ip("10.0.0.3")).await,
        Vec::<u64>::new()
    );
}

async fn filter_by_time_range_is_start_inclusive_end_exclusive(backend: Backend) {
    let (_server, mut caller) = seeded(backend).await;
    let range = |start: Option<i64>, end: Option<i64>| EventFilter {
        start_time: start.map(at),
        end_time: end.map(at),
        ..Default::default()
    };
    assert_eq!(
        selected(&mut caller, range(Some(20), None)).await,
        [3, 4, 5, 6, 7, 8]
    );
    assert_eq!(
        selected(&mut caller, range(None, Some(50))).await,
        [1, 2, 3, 4, 5]
    );
    assert_eq!(selected(&mut caller, range(Some(20), Some(50))).await, [3, 4, 5]);
    assert_eq!(selected(&mut caller, range(Some(21), Some(51))).await, [4, 5, 6]);
    assert_eq!(
        selected(&mut caller, range(Some(30), Some(30))).await,
        Vec::<u64>::new()
    );
    // One microsecond past an event excludes it from the start bound.
    let filter = EventFilter {
        start_time: Some(crate::fixtures::ts(BASE_SECS + 60, 1000)),
        ..Default::default()
    };
    assert_eq!(selected(&mut caller, filter).await, [8]);
}

async fn combined_filters_are_and_ed(backend: Backend) {
    let (_server, mut caller) = seeded(backend).await;
    let filter = EventFilter {
        actor_ids: strings(&["alice"]),
        outcomes: vec![Outcome::Success as i32],
        resource_types: strings(&["document"]),
        ..Default::default()
    };
    assert_eq!(selected(&mut caller, filter).await, [1, 6]);

    let filter = EventFilter {
        actions: strings(&["user.*"]),
        outcomes: vec![Outcome::Failure as i32],
        ..Default::default()
    };
    assert_eq!(selected(&mut caller, filter).await, [3]);

    let filter = EventFilter {
        actions: strings(&["user.*", "document.*"]),
        actor_types: vec![ActorType::User as i32],
        sources: strings(&["web"]),
        client_ip: "10.0.0.1".into(),
        start_time: Some(at(5)),
        end_time: Some(at(60)),
        ..Default::default()
    };
    assert_eq!(selected(&mut caller, filter).await, [2, 6]);

    let filter = EventFilter {
        actor_email: "alice@example.com".into(),
        request_id: "req-2".into(),
        ..Default::default()
    };
    assert_eq!(selected(&mut caller, filter).await, [2]);

    // Disjoint parts select nothing.
    let filter = EventFilter {
        actor_ids: strings(&["svc-1"]),
        outcomes: vec![Outcome::Failure as i32],
        ..Default::default()
    };
    assert_eq!(selected(&mut caller, filter).await, Vec::<u64>::new());
}

//! Stats: totals, groups and time buckets against counts computed here.

use std::collections::BTreeMap;

use audit_service::proto::{
    self, ActorType, EventFilter, EventInput, Outcome, StatsBucket, StatsGroup, StatsRequest, StatsResponse,
};
use tonic::Code;

use crate::on_both_backends;
use crate::support::{Backend, Caller, TestServer, assert_status};

on_both_backends!(
    stats_counts_groups_largest_first_with_keys_breaking_ties,
    stats_limit_caps_the_groups_but_not_the_total,
    stats_totals_and_groups_honour_the_filter,
    stats_buckets_include_empty_ones_within_the_bounds,
    stats_buckets_floor_before_the_epoch,
    stats_refuses_bad_requests_naming_each_field,
);

const ACTIONS: [&str; 4] = ["user.login", "document.read", "user.logout", "api_key.create"];
const ACTORS: [&str; 3] = ["alice", "bob", "carol"];
const SOURCES: [&str; 2] = ["sso", "docs"];

/// One key of a group, ordered as the service orders ties: text byte-wise,
/// enums by number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Text(String),
    Enum(i32, &'static str),
}

impl Key {
    fn render(&self) -> String {
        match self {
            Key::Text(s) => s.clone(),
            Key::Enum(_, name) => (*name).to_owned(),
        }
    }
}

/// A deterministic, lopsided log: 61 events with repeated counts so ties occur.
fn log() -> Vec<EventInput> {
    (0..61)
        .map(|i: usize| {
            let outcome = [
                Outcome::Success,
                Outcome::Failure,
                Outcome::Success,
                Outcome::Intent,
            ][i % 4];
            let actor_type = [ActorType::User, ActorType::Service][(i / 5) % 2];
            EventInput {
                action: ACTIONS[(i * i) % 4].into(),
                actor: Some(proto::Actor {
                    id: ACTORS[(i / 2) % 3].into(),
                    r#type: actor_type as i32,
                    ..Default::default()
                }),
                resource: Some(proto::Resource {
                    r#type: if i.is_multiple_of(3) {
                        "document".into()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                }),
                outcome: outcome as i32,
                source: SOURCES[i % 2].into(),
                ..Default::default()
            }
        })
        .collect()
}

fn key_of(event: &EventInput, field: &str) -> Key {
    let actor = event.actor.clone().unwrap_or_default();
    match field {
        "action" => Key::Text(event.action.clone()),
        "actor.id" => Key::Text(actor.id),
        "actor.type" => {
            let t = ActorType::try_from(actor.r#type).expect("actor type");
            Key::Enum(actor.r#type, t.as_str_name())
        }
        "resource.type" => Key::Text(event.resource.clone().unwrap_or_default().r#type),
        "outcome" => {
            let o = Outcome::try_from(event.outcome).expect("outcome");
            Key::Enum(event.outcome, o.as_str_name())
        }
        "source" => Key::Text(event.source.clone()),
        other => panic!("{other}"),
    }
}

/// The groups the service must return for `events` grouped by `fields`.
fn expected_groups(events: &[&EventInput], fields: &[&str], limit: usize) -> Vec<StatsGroup> {
    let mut counts: BTreeMap<Vec<Key>, u64> = BTreeMap::new();
    for event in events {
        let keys = fields.iter().map(|f| key_of(event, f)).collect();
        *counts.entry(keys).or_default() += 1;
    }
    let mut groups: Vec<(Vec<Key>, u64)> = counts.into_iter().collect();
    groups.sort_by(|(ka, ca), (kb, cb)| cb.cmp(ca).then_with(|| ka.cmp(kb)));
    groups
        .into_iter()
        .take(limit)
        .map(|(keys, count)| StatsGroup {
            keys: keys.iter().map(Key::render).collect(),
            count,
        })
        .collect()
}

async fn stats(caller: &mut Caller, request: StatsRequest) -> StatsResponse {
    let request = caller.request(request);
    caller.client.stats(request).await.expect("stats").into_inner()
}

fn group_by(fields: &[&str]) -> Vec<String> {
    fields.iter().map(|f| (*f).to_owned()).collect()
}

async fn stats_counts_groups_largest_first_with_keys_breaking_ties(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let events = log();
    caller.append(events.clone()).await;
    // Another tenant's events are never counted.
    server.caller().await.append(log()).await;
    let all: Vec<&EventInput> = events.iter().collect();

    for fields in [
        vec!["action"],
        vec!["actor.id"],
        vec!["actor.type"],
        vec!["resource.type"],
        vec!["outcome"],
        vec!["source"],
        vec!["outcome", "action"],
        vec!["actor.id", "actor.type", "source"],
    ] {
        let response = stats(
            &mut caller,
            StatsRequest {
                group_by: group_by(&fields),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(response.total, 61, "{fields:?}");
        assert_eq!(response.groups, expected_groups(&all, &fields, 100), "{fields:?}");
        assert!(response.buckets.is_empty());
    }
}

async fn stats_limit_caps_the_groups_but_not_the_total(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let events = log();
    caller.append(events.clone()).await;
    let all: Vec<&EventInput> = events.iter().collect();
    let fields = ["actor.id", "action"];
    let response = stats(
        &mut caller,
        StatsRequest {
            group_by: group_by(&fields),
            limit: 4,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(response.total, 61);
    assert_eq!(response.groups.len(), 4);
    assert_eq!(response.groups, expected_groups(&all, &fields, 4));
}

async fn stats_totals_and_groups_honour_the_filter(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let events = log();
    caller.append(events.clone()).await;

    let failures: Vec<&EventInput> = events
        .iter()
        .filter(|e| e.outcome == Outcome::Failure as i32)
        .collect();
    let response = stats(
        &mut caller,
        StatsRequest {
            filter: Some(EventFilter {
                outcomes: vec![Outcome::Failure as i32],
                ..Default::default()
            }),
            group_by: group_by(&["action"]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(response.total, failures.len() as u64);
    assert_eq!(response.groups, expected_groups(&failures, &["action"], 100));

    let chosen: Vec<&EventInput> = events
        .iter()
        .filter(|e| e.action.starts_with("user.") && e.source == "docs")
        .collect();
    let response = stats(
        &mut caller,
        StatsRequest {
            filter: Some(EventFilter {
                expression: r#"action = "user.*" AND NOT source = sso"#.into(),
                ..Default::default()
            }),
            group_by: group_by(&["outcome"]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(response.total, chosen.len() as u64);
    assert_eq!(response.groups, expected_groups(&chosen, &["outcome"], 100));

    let none = stats(
        &mut caller,
        StatsRequest {
            filter: Some(EventFilter {
                actions: vec!["nothing.matches".into()],
                ..Default::default()
            }),
            group_by: group_by(&["action"]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((none.total, none.groups.len()), (0, 0));
}

fn at(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

fn event_at(seconds: i64) -> EventInput {
    EventInput {
        occurred_at: Some(at(seconds)),
        ..crate::support::event("user.login", "alice")
    }
}

fn series(response: &StatsResponse) -> Vec<(i64, u64)> {
    response
        .buckets
        .iter()
        .map(|StatsBucket { start, count }| (start.expect("start").seconds, *count))
        .collect()
}

async fn stats_buckets_include_empty_ones_within_the_bounds(backend: Backend) {
    const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
    const HOUR: i64 = 3600;
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    caller
        .append(vec![
            event_at(T0 - 30 * 60),
            event_at(T0 + 10 * 60),
            event_at(T0 + 10 * 60),
            event_at(T0 + 59 * 60),
            event_at(T0 + 2 * HOUR + 5 * 60),
            event_at(T0 + 2 * HOUR + 6 * 60),
            // Outside the bounds: not counted anywhere.
            event_at(T0 - 2 * HOUR),
            event_at(T0 + 4 * HOUR),
        ])
        .await;
    let bucketed = |filter: EventFilter| StatsRequest {
        filter: Some(filter),
        bucket: Some(prost_types::Duration {
            seconds: HOUR,
            nanos: 0,
        }),
        ..Default::default()
    };

    let response = stats(
        &mut caller,
        bucketed(EventFilter {
            start_time: Some(at(T0 - HOUR + 1)),
            end_time: Some(at(T0 + 4 * HOUR)),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(response.total, 6);
    assert_eq!(
        series(&response),
        [
            (T0 - HOUR, 1),
            (T0, 3),
            (T0 + HOUR, 0),
            (T0 + 2 * HOUR, 2),
            (T0 + 3 * HOUR, 0)
        ]
    );

    // Without bounds the series runs from the first to the last event.
    let response = stats(&mut caller, bucketed(EventFilter::default())).await;
    assert_eq!(response.total, 8);
    let counts = series(&response);
    assert_eq!(counts.len(), 7);
    assert_eq!(counts.first(), Some(&(T0 - 2 * HOUR, 1)));
    assert_eq!(counts.last(), Some(&(T0 + 4 * HOUR, 1)));
    assert_eq!(counts.iter().map(|(_, c)| c).sum::<u64>(), 8);
}

async fn stats_buckets_floor_before_the_epoch(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    caller
        .append(vec![event_at(-1800), event_at(-1), event_at(0), event_at(1800)])
        .await;
    let response = stats(
        &mut caller,
        StatsRequest {
            bucket: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(series(&response), [(-3600, 2), (0, 2)]);
}

async fn stats_refuses_bad_requests_naming_each_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut caller = server.caller().await;
    let cases = [
        (
            StatsRequest {
                group_by: group_by(&["action", "reasoning"]),
                ..Default::default()
            },
            "group_by[1]",
        ),
        (
            StatsRequest {
                limit: -1,
                ..Default::default()
            },
            "limit",
        ),
        (
            StatsRequest {
                bucket: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 500_000_000,
                }),
                ..Default::default()
            },
            "bucket",
        ),
        (
            StatsRequest {
                filter: Some(EventFilter {
                    start_time: Some(at(0)),
                    end_time: Some(at(86_400)),
                    ..Default::default()
                }),
                bucket: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
                ..Default::default()
            },
            "bucket",
        ),
        (
            StatsRequest {
                filter: Some(EventFilter {
                    outcomes: vec![99],
                    ..Default::default()
                }),
                ..Default::default()
            },
            "filter.outcomes[0]",
        ),
    ];
    for (request, field) in cases {
        let request = caller.request(request);
        let status = caller.client.stats(request).await.expect_err(field);
        assert_status(&status, Code::InvalidArgument, "INVALID_ARGUMENT", Some(field));
    }
}

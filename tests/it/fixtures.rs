//! Helpers shared by the core-service tests: timestamps, error capture and
//! small event builders.

#![allow(dead_code)]

use audit_service::proto::{self, AppendRequest, AuditEvent, EventInput, QueryRequest};
use prost_types::Timestamp;
use tonic::{Response, Status};

use crate::support::{Caller, event};

/// 2026-01-01T00:00:00Z in unix seconds: the base of the tests' `occurred_at`s.
pub const BASE_SECS: i64 = 1_767_225_600;

/// A timestamp.
pub fn ts(seconds: i64, nanos: i32) -> Timestamp {
    Timestamp { seconds, nanos }
}

/// `BASE_SECS + offset` seconds.
pub fn at(offset: i64) -> Timestamp {
    ts(BASE_SECS + offset, 0)
}

/// Unix microseconds of a timestamp.
pub fn micros(timestamp: &Timestamp) -> i64 {
    timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos / 1000)
}

/// The seqs of `events`, in their order.
pub fn seqs(events: &[AuditEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// The error of a call that must fail.
#[track_caller]
pub fn status_of<T: std::fmt::Debug>(result: Result<Response<T>, Status>) -> Status {
    match result {
        Ok(response) => panic!("call succeeded: {:?}", response.into_inner()),
        Err(status) => status,
    }
}

/// The error of an Append of `events` that must fail.
pub async fn append_status(caller: &mut Caller, events: Vec<EventInput>) -> Status {
    let request = caller.request(AppendRequest { events });
    status_of(caller.client.append(request).await)
}

/// The error of a Query that must fail.
pub async fn query_status(caller: &mut Caller, query: QueryRequest) -> Status {
    let request = caller.request(query);
    status_of(caller.client.query(request).await)
}

/// The error of a Get of `id` that must fail.
pub async fn get_status(caller: &mut Caller, id: &str) -> Status {
    let request = caller.request(proto::GetRequest { id: id.to_owned() });
    status_of(caller.client.get(request).await)
}

/// Gets `id`, panicking on error.
pub async fn get(caller: &mut Caller, id: &str) -> AuditEvent {
    let request = caller.request(proto::GetRequest { id: id.to_owned() });
    caller.client.get(request).await.expect("get").into_inner()
}

/// A minimal event with an explicit `occurred_at`.
pub fn event_at(action: &str, actor: &str, occurred_at: Timestamp) -> EventInput {
    EventInput {
        occurred_at: Some(occurred_at),
        ..event(action, actor)
    }
}

/// A query of every event of the caller's tenant in `order_by`.
pub fn query(filter: proto::EventFilter, order_by: &str, page_size: i32, page_token: &str) -> QueryRequest {
    QueryRequest {
        filter: Some(filter),
        page_size,
        page_token: page_token.to_owned(),
        order_by: order_by.to_owned(),
    }
}

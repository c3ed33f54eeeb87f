//! A stream's outbox: the messages it has ready for its client, bounded in
//! bytes per stream and across the process.
//!
//! A message holds its bytes (its encoded length, which is what the
//! generated message takes in memory give or take its allocations) from
//! the moment it is queued until the response stream hands it to tonic.
//! Beyond that, tonic and h2 hold at most about two encoded messages per
//! stream for a client that does not read: the chunk h2 has queued but
//! cannot send, and the one hyper has taken and waits to queue (hyper asks
//! for the next chunk only once the previous one is queued, and h2 queues
//! one only when the client's window is open). Those are bounded by the
//! stream caps, not by these budgets.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::Stream;
use prost::Message as _;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::Status;

use crate::proto::{AuditEvent, WatchResponse, watch_response};

/// Bytes of messages one stream may hold for its client. A single message
/// larger than this is still sent, alone.
pub const STREAM_BUFFER_BYTES: usize = 256 * 1024;
/// How long a stream's client may leave its oldest message untaken before
/// the stream, when the process-wide budget runs low, gives its buffer
/// back and reads it again from storage once the client takes more.
pub const STALL_AFTER: Duration = Duration::from_secs(2);

/// The bytes all streams of the process may hold for their clients.
#[derive(Clone, Debug)]
pub struct WatchBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

impl WatchBudget {
    /// A budget of `bytes` (at least one stream's worth).
    pub fn new(bytes: usize) -> Self {
        let total = bytes.clamp(STREAM_BUFFER_BYTES, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Bytes all streams together may hold.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes no stream holds right now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Whether streams may soon wait for bytes: less than a quarter is
    /// left. Stalled streams then give their buffers back.
    pub fn under_pressure(&self) -> bool {
        self.available() < self.total / 4
    }

    /// A message can never need more than the whole budget.
    fn permits_for(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.min(self.total)).unwrap_or(u32::MAX)
    }

    /// `bytes` of the budget, if free now.
    pub fn try_take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        self.permits
            .clone()
            .try_acquire_many_owned(self.permits_for(bytes))
            .ok()
    }

    /// `bytes` of the budget, once free (first come, first served).
    pub async fn take(&self, bytes: usize) -> OwnedSemaphorePermit {
        match self
            .permits
            .clone()
            .acquire_many_owned(self.permits_for(bytes))
            .await
        {
            Ok(permit) => permit,
            // The semaphore is never closed: nothing calls `close` on it.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Bytes set aside for messages about to be queued.
#[derive(Debug)]
pub struct Reservation {
    permit: OwnedSemaphorePermit,
}

impl Reservation {
    /// Bytes still set aside.
    pub fn bytes(&self) -> usize {
        self.permit.num_permits()
    }

    /// Adds `more` to this reservation.
    pub fn merge(&mut self, more: Reservation) {
        self.permit.merge(more.permit);
    }

    /// Splits off `bytes` (or all that is left) for one message.
    fn split(&mut self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        self.permit.split(bytes.min(self.bytes()))
    }
}

/// Bytes counted for each metadata value beyond its encoding: the
/// generated `Value` (32 bytes) in a `BTreeMap` node or a `Vec`, with the
/// node's slack and a small allocation's rounding.
const METADATA_VALUE_BYTES: usize = 96;
/// Bytes counted for the text fields' allocations beyond their encoding.
const TEXT_FIELD_BYTES: usize = 256;

/// Bytes a message is counted for: what it takes in memory, estimated as
/// its encoded length, the generated structs' own size, and the
/// allocations behind its text fields and metadata values (a small event
/// takes several times its encoded length; a large one about its
/// encoded length).
pub fn message_bytes(message: &WatchResponse) -> usize {
    match &message.kind {
        Some(watch_response::Kind::Event(event)) => event_bytes(event),
        _ => std::mem::size_of::<WatchResponse>() + message.encoded_len(),
    }
}

/// [`message_bytes`] of the message carrying `event`, without building it.
pub fn event_bytes(event: &AuditEvent) -> usize {
    let encoded = event.encoded_len();
    let values = event.metadata.as_ref().map_or(0, metadata_values);
    std::mem::size_of::<WatchResponse>()
        + TEXT_FIELD_BYTES
        + 1
        + prost::length_delimiter_len(encoded)
        + encoded
        + values * METADATA_VALUE_BYTES
}

/// Values in `metadata`, nested ones included.
fn metadata_values(metadata: &prost_types::Struct) -> usize {
    fn count(value: &prost_types::Value) -> usize {
        1 + match &value.kind {
            Some(prost_types::value::Kind::StructValue(inner)) => metadata_values(inner),
            Some(prost_types::value::Kind::ListValue(list)) => list.values.iter().map(count).sum(),
            _ => 0,
        }
    }
    metadata.fields.values().map(count).sum()
}

struct Queued {
    message: Result<WatchResponse, Status>,
    /// The seq of the event it carries.
    seq: Option<i64>,
    bytes: usize,
    _permit: Option<OwnedSemaphorePermit>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Queued>,
    bytes: usize,
    /// The client asked for a message and found none.
    wanting: bool,
    /// Since when the oldest message has waited for the client.
    waiting_since: Option<Instant>,
    waker: Option<Waker>,
    /// Nothing more will be queued.
    finished: bool,
    /// The client went away.
    gone: bool,
    /// Wake the producer once this stream has this much room (or nothing
    /// queued).
    wake_at_room: Option<usize>,
    /// Wake the producer when the client asks for a message and finds none.
    wake_on_want: bool,
}

impl Queue {
    fn room(&self) -> usize {
        STREAM_BUFFER_BYTES.saturating_sub(self.bytes)
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the producer when the client took a message, wants one, or
    /// went away.
    producer: Notify,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The producer's side of a stream's outbox.
pub struct Outbox {
    shared: Arc<Shared>,
    budget: WatchBudget,
}

/// The response stream tonic sends: the consumer's side of an outbox.
pub struct WatchStream {
    shared: Arc<Shared>,
}

/// A new outbox drawing on `budget`, and the stream that empties it.
pub fn outbox(budget: WatchBudget) -> (Outbox, WatchStream) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        producer: Notify::new(),
    });
    (
        Outbox {
            shared: shared.clone(),
            budget,
        },
        WatchStream { shared },
    )
}

impl Outbox {
    /// The process-wide budget this outbox draws on.
    pub fn budget(&self) -> &WatchBudget {
        &self.budget
    }

    /// This stream's room if it is at least `bytes` or nothing is queued;
    /// otherwise `None`, and [`Outbox::changed`] resolves once it is.
    pub fn room_for(&self, bytes: usize) -> Option<usize> {
        let mut queue = self.shared.queue();
        if queue.items.is_empty() || queue.room() >= bytes {
            return Some(queue.room());
        }
        queue.wake_at_room = Some(bytes);
        None
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.shared.queue().items.is_empty()
    }

    /// Whether the client asked for a message and found none; if not,
    /// [`Outbox::changed`] resolves once it does.
    pub fn wanting(&self) -> bool {
        let mut queue = self.shared.queue();
        queue.wake_on_want = !queue.wanting;
        queue.wanting
    }

    /// Whether the client went away.
    pub fn is_gone(&self) -> bool {
        self.shared.queue().gone
    }

    /// Whether the oldest queued message has waited [`STALL_AFTER`] or
    /// longer for the client.
    pub fn stalled(&self) -> bool {
        self.shared
            .queue()
            .waiting_since
            .is_some_and(|since| since.elapsed() >= STALL_AFTER)
    }

    /// Resolves when the client went away, or did what the producer asked
    /// to be woken for ([`Outbox::room_for`], [`Outbox::wanting`]).
    pub async fn changed(&self) {
        self.shared.producer.notified().await;
    }

    /// Sets aside `bytes` for one message, if both this stream's buffer and
    /// the process-wide budget have them now; a stream with nothing queued
    /// may always take one message, however large, of the stream budget.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        {
            let queue = self.shared.queue();
            if !queue.items.is_empty() && queue.bytes + bytes > STREAM_BUFFER_BYTES {
                return None;
            }
        }
        self.budget.try_take(bytes).map(|permit| Reservation { permit })
    }

    /// Sets aside `bytes` of the process-wide budget alone, if free now: for
    /// a message whose room the caller already checked.
    pub fn try_reserve_more(&self, bytes: usize) -> Option<Reservation> {
        self.budget.try_take(bytes).map(|permit| Reservation { permit })
    }

    /// Sets aside `bytes` of the process-wide budget once they are free.
    /// The caller checks [`Outbox::room`] first.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        Reservation {
            permit: self.budget.take(bytes).await,
        }
    }

    /// Queues `message` of [`message_bytes`] `bytes` (the event with
    /// `seq`, if it carries one), paid for from `reservation`.
    pub fn push(
        &self,
        message: WatchResponse,
        seq: Option<i64>,
        bytes: usize,
        reservation: &mut Reservation,
    ) {
        let permit = reservation.split(bytes);
        self.enqueue(Queued {
            message: Ok(message),
            seq,
            bytes,
            _permit: permit,
        });
    }

    fn enqueue(&self, item: Queued) {
        let waker = {
            let mut queue = self.shared.queue();
            if queue.gone {
                return;
            }
            if queue.items.is_empty() {
                queue.waiting_since = Some(Instant::now());
            }
            queue.bytes += item.bytes;
            queue.items.push_back(item);
            queue.wanting = false;
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Drops every queued message, freeing its bytes; returns the seq of
    /// the first event dropped, from which the stream must read again.
    pub fn give_back(&self) -> Option<i64> {
        let dropped = {
            let mut queue = self.shared.queue();
            queue.bytes = 0;
            queue.waiting_since = None;
            std::mem::take(&mut queue.items)
        };
        dropped.iter().find_map(|item| item.seq)
    }

    /// Ends the stream after what is queued, with `status` last if given.
    pub fn finish(&self, status: Option<Status>) {
        if let Some(status) = status {
            self.enqueue(Queued {
                message: Err(status),
                seq: None,
                bytes: 0,
                _permit: None,
            });
        }
        let waker = {
            let mut queue = self.shared.queue();
            queue.finished = true;
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.finish(None);
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut queue = self.shared.queue();
        if let Some(item) = queue.items.pop_front() {
            queue.bytes -= item.bytes;
            queue.waiting_since = (!queue.items.is_empty()).then(Instant::now);
            // The bytes are tonic's now; the producer may queue more.
            let wake = queue
                .wake_at_room
                .is_some_and(|bytes| queue.items.is_empty() || queue.room() >= bytes);
            if wake {
                queue.wake_at_room = None;
            }
            drop(queue);
            if wake {
                self.shared.producer.notify_one();
            }
            return Poll::Ready(Some(item.message));
        }
        if queue.finished {
            return Poll::Ready(None);
        }
        queue.waker = Some(cx.waker().clone());
        queue.wanting = true;
        if std::mem::take(&mut queue.wake_on_want) {
            drop(queue);
            self.shared.producer.notify_one();
        }
        Poll::Pending
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        let dropped = {
            let mut queue = self.shared.queue();
            queue.gone = true;
            queue.bytes = 0;
            std::mem::take(&mut queue.items)
        };
        drop(dropped);
        self.shared.producer.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;
    use crate::proto::Heartbeat;

    fn message(bytes: usize) -> WatchResponse {
        // Only its size matters here.
        let event = crate::proto::AuditEvent {
            reasoning: "x".repeat(bytes),
            ..Default::default()
        };
        WatchResponse {
            kind: Some(watch_response::Kind::Event(event)),
        }
    }

    fn heartbeat() -> WatchResponse {
        WatchResponse {
            kind: Some(watch_response::Kind::Heartbeat(Heartbeat::default())),
        }
    }

    #[tokio::test]
    async fn a_stream_holds_at_most_its_budget_and_frees_it_as_the_client_takes() {
        let budget = WatchBudget::new(4 * STREAM_BUFFER_BYTES);
        let (outbox, mut stream) = outbox(budget.clone());
        let size = message_bytes(&message(100_000));
        let mut queued = 0usize;
        while let Some(mut reservation) = outbox.try_reserve(size) {
            queued += 1;
            let seq = i64::try_from(queued).expect("a few seqs");
            outbox.push(message(100_000), Some(seq), size, &mut reservation);
        }
        assert_eq!(queued, STREAM_BUFFER_BYTES / size);
        assert!(outbox.room_for(size).is_none());
        assert_eq!(budget.available(), 4 * STREAM_BUFFER_BYTES - queued * size);
        stream.next().await.expect("a message").expect("not a status");
        assert_eq!(budget.available(), 4 * STREAM_BUFFER_BYTES - (queued - 1) * size);
        assert!(outbox.try_reserve(size).is_some());
    }

    #[tokio::test]
    async fn a_message_larger_than_the_stream_budget_goes_alone() {
        let (outbox, _stream) = outbox(WatchBudget::new(8 * STREAM_BUFFER_BYTES));
        let big = message(STREAM_BUFFER_BYTES + 1);
        let bytes = message_bytes(&big);
        let mut reservation = outbox.try_reserve(bytes).expect("alone");
        outbox.push(big, Some(1), bytes, &mut reservation);
        assert!(outbox.try_reserve(message_bytes(&heartbeat())).is_none());
    }

    #[tokio::test]
    async fn the_process_budget_bounds_all_streams_together() {
        let budget = WatchBudget::new(STREAM_BUFFER_BYTES);
        let (first, _a) = outbox(budget.clone());
        let (second, _b) = outbox(budget.clone());
        let size = STREAM_BUFFER_BYTES / 2;
        let half = message(size - 2048);
        let bytes = message_bytes(&half);
        assert!(bytes <= size);
        let mut one = first.try_reserve(size).expect("first half");
        first.push(half.clone(), Some(1), bytes, &mut one);
        let mut two = second.try_reserve(size).expect("second half");
        second.push(half, Some(1), bytes, &mut two);
        // What a reservation did not spend goes back when it is dropped.
        drop((one, two));
        assert!(second.try_reserve(size).is_none(), "the budget is spent");
        assert!(budget.under_pressure());
        // Giving a buffer back frees its bytes and says where to read again.
        assert_eq!(first.give_back(), Some(1));
        assert!(second.try_reserve(size).is_some());
    }

    #[tokio::test]
    async fn a_client_that_goes_away_frees_the_buffer_and_wakes_the_producer() {
        let budget = WatchBudget::new(STREAM_BUFFER_BYTES);
        let (outbox, stream) = outbox(budget.clone());
        let mut reservation = outbox.try_reserve(2000).expect("room");
        outbox.push(message(900), Some(7), 1000, &mut reservation);
        drop(reservation);
        drop(stream);
        outbox.changed().await;
        assert!(outbox.is_gone());
        assert_eq!(budget.available(), STREAM_BUFFER_BYTES);
    }

    #[tokio::test]
    async fn a_status_ends_the_stream_after_the_queued_messages() {
        let (outbox, mut stream) = outbox(WatchBudget::new(STREAM_BUFFER_BYTES));
        let mut reservation = outbox.try_reserve(200).expect("room");
        outbox.push(heartbeat(), None, 100, &mut reservation);
        outbox.finish(Some(Status::unauthenticated("revoked")));
        assert!(stream.next().await.expect("heartbeat").is_ok());
        assert!(stream.next().await.expect("status").is_err());
        assert!(stream.next().await.is_none());
    }
}

//! One stream: a cursor over its tenant's log, fed by the live feed while
//! it keeps up and by storage while it does not, queuing no more than its
//! outbox has bytes for.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sea_orm::Condition;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::credential::CredentialCheck;
use super::outbox::{Outbox, Reservation, STALL_AFTER, STREAM_BUFFER_BYTES, message_bytes};
use super::{LiveBatch, StreamSlot};
use crate::convert::{event_to_proto, micros_to_timestamp, seq_to_proto};
use crate::error::Error;
use crate::filter::EventMatcher;
use crate::observe::metrics::GaugeFlag;
use crate::proto::{self, WatchResponse, watch_response};
use crate::store::{Store, now_micros};
use crate::tenant::TenantId;

/// Most rows one storage read asks for; the outbox's room in bytes bounds
/// what a read keeps, this bounds what the database sends past it.
const CATCH_UP_ROWS: u64 = 128;
/// Bytes a stream assumes an event takes until it has read some.
const FIRST_ROW_GUESS: usize = 4 * 1024;

/// Why a stream stopped.
pub(super) enum Stop {
    /// The client went away.
    Gone,
    /// Temporarily: the client resumes from where the stream got to.
    Resumable(&'static str),
    /// For good: end the stream with this error.
    Refused(Error),
}

pub(super) struct Subscription {
    pub(super) store: Store,
    pub(super) tenant: TenantId,
    pub(super) matcher: EventMatcher,
    pub(super) condition: Condition,
    /// Highest seq accounted for: queued for the client, or known not to
    /// match.
    pub(super) cursor: i64,
    /// Highest seq known committed; `cursor < head` means events are owed
    /// and are read from storage.
    pub(super) head: i64,
    pub(super) outbox: Outbox,
    pub(super) live: broadcast::Receiver<Arc<LiveBatch>>,
    pub(super) heartbeat: Duration,
    pub(super) shutdown: CancellationToken,
    pub(super) readers: Arc<Semaphore>,
    pub(super) credential: Arc<dyn CredentialCheck>,
    /// Unix microseconds at which the credential was last seen standing:
    /// an event recorded later is delivered only after a new check.
    pub(super) standing_at: i64,
    /// A heartbeat is owed once the stream has caught up.
    pub(super) beat_due: bool,
    /// The client has not taken its buffer, which was given back; nothing
    /// is queued until it asks for more.
    pub(super) parked: bool,
    /// Largest event seen, to size the next read.
    pub(super) row_bytes: usize,
    /// Bytes the next event needs when it did not fit in the last read.
    pub(super) need: usize,
    pub(super) _slot: StreamSlot,
}

impl Subscription {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        store: Store,
        tenant: TenantId,
        matcher: EventMatcher,
        condition: Condition,
        outbox: Outbox,
        live: broadcast::Receiver<Arc<LiveBatch>>,
        heartbeat: Duration,
        shutdown: CancellationToken,
        readers: Arc<Semaphore>,
        credential: Arc<dyn CredentialCheck>,
        slot: StreamSlot,
    ) -> Self {
        Self {
            store,
            tenant,
            matcher,
            condition,
            cursor: 0,
            head: 0,
            outbox,
            live,
            heartbeat,
            shutdown,
            readers,
            standing_at: credential.verified_at(),
            credential,
            beat_due: false,
            parked: false,
            row_bytes: FIRST_ROW_GUESS,
            need: 0,
            _slot: slot,
        }
    }

    pub(super) async fn run(mut self, after_seq: i64, replay: bool) {
        self.cursor = after_seq;
        self.head = after_seq;
        let stop = match self.follow(replay).await {
            Ok(never) => match never {},
            Err(stop) => stop,
        };
        // What the client has not taken is dropped: a resumed stream reads
        // it again, and a refused one must not see it.
        self.give_back();
        let status = match stop {
            Stop::Gone => None,
            Stop::Resumable(why) => Some(Status::from(Error::Unavailable(format!(
                "{why}; resume with after_seq={}",
                self.cursor
            )))),
            Stop::Refused(error) => Some(Status::from(error)),
        };
        self.outbox.finish(status);
    }

    /// Replays stored history first when `replay` (a resume from
    /// `after_seq`), then follows live events and heartbeats, until the
    /// stream stops.
    async fn follow(&mut self, replay: bool) -> Result<std::convert::Infallible, Stop> {
        if replay {
            self.head = self.read_head().await?;
        }
        let start = tokio::time::Instant::now();
        let mut heartbeat = tokio::time::interval_at(start + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stall_check = tokio::time::interval_at(start + STALL_AFTER, STALL_AFTER);
        stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lapse = self
            .credential
            .lapses_at()
            .map(|at| Box::pin(tokio::time::sleep(until(at))));
        let mut lagging = GaugeFlag::new(self.store.metrics().watch_streams_lagging.clone());
        loop {
            lagging.set(self.cursor < self.head);
            if self.parked && self.outbox.wanting() {
                self.parked = false;
            }
            self.offer_heartbeat();
            let want = self.read_want();
            let take_live = self.takes_live();
            let readers = self.readers.clone();
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(Stop::Resumable("the server is shutting down")),
                () = lapsed(&mut lapse) => {
                    // Verification's own rule decides; a clock that moved
                    // only re-arms the timer.
                    self.standing_at = self.confirm(now_micros()).await?;
                    if let (Some(sleep), Some(at)) = (lapse.as_mut(), self.credential.lapses_at()) {
                        sleep.as_mut().reset(tokio::time::Instant::now() + until(at).max(Duration::from_millis(100)));
                    }
                }
                () = self.outbox.changed() => {
                    if self.outbox.is_gone() {
                        return Err(Stop::Gone);
                    }
                }
                _ = heartbeat.tick() => {
                    self.standing_at = self.confirm(now_micros()).await?;
                    self.head = self.head.max(self.read_head().await?);
                    self.beat_due = true;
                }
                _ = stall_check.tick(), if !self.parked && !self.outbox.is_empty() => {
                    if self.outbox.stalled() && self.outbox.budget().under_pressure() {
                        self.give_back();
                        self.parked = true;
                    }
                }
                received = self.live.recv(), if take_live => match received {
                    Ok(batch) => self.take_live(&batch).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.head = self.head.max(self.read_head().await?);
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(Stop::Resumable("the live feed closed"));
                    }
                },
                (reservation, reader) = reserve(&self.outbox, readers, want), if want > 0 => {
                    self.read_page(reservation, reader).await?;
                }
            }
        }
    }

    /// Bytes to read from storage now, or 0 when nothing is owed or the
    /// outbox has too little room (half of it, or the whole of a large
    /// event, is worth a read).
    fn read_want(&self) -> usize {
        if self.cursor >= self.head || self.parked {
            return 0;
        }
        match self.outbox.room_for((STREAM_BUFFER_BYTES / 2).max(self.need)) {
            Some(room) => room.max(self.need),
            None => 0,
        }
    }

    /// Whether to take the next live batch now: when the stream has caught
    /// up and has room for it. A stream that is behind (reading storage)
    /// or whose client is slow leaves batches in its feed, whose bytes are
    /// bounded, and continues from them once it has caught up; a stream
    /// whose client has stalled for [`STALL_AFTER`], or that gave its
    /// buffer back, drains the feed (learning only the head) and reads
    /// storage later, so it pins no feed memory.
    fn takes_live(&self) -> bool {
        self.parked
            || self.outbox.stalled()
            || (self.cursor >= self.head && self.outbox.room_for(STREAM_BUFFER_BYTES / 2).is_some())
    }

    /// Queues a heartbeat reporting the stream's position once it has
    /// caught up, if one is due and the client is taking messages.
    fn offer_heartbeat(&mut self) {
        if !self.beat_due || self.cursor < self.head || self.parked {
            return;
        }
        let beat = WatchResponse {
            kind: Some(watch_response::Kind::Heartbeat(proto::Heartbeat {
                head_seq: seq_to_proto(self.cursor),
                time: Some(micros_to_timestamp(now_micros())),
                positions: Vec::new(),
            })),
        };
        let bytes = message_bytes(&beat);
        match self.outbox.try_reserve(bytes) {
            Some(mut reservation) => {
                self.outbox.push(beat, None, bytes, &mut reservation);
                self.beat_due = false;
            }
            // Offered again once the client makes room.
            None => _ = self.outbox.room_for(bytes),
        }
    }

    /// Queues a live batch's matching events when it continues the stream
    /// and the outbox has room for them; otherwise only learns that the
    /// log reached its last seq, and storage supplies the events.
    async fn take_live(&mut self, batch: &LiveBatch) -> Result<(), Stop> {
        if self.parked || self.cursor < self.head || batch.first_seq > self.cursor + 1 {
            self.head = self.head.max(batch.last_seq);
            return Ok(());
        }
        let newest = batch
            .events
            .iter()
            .filter(|(model, _, _)| model.seq > self.cursor)
            .map(|(model, _, _)| model.recorded_at)
            .max();
        if let Some(newest) = newest
            && newest >= self.standing_at
        {
            self.standing_at = self.confirm(newest.saturating_add(1)).await?;
        }
        for (model, event, bytes) in &batch.events {
            let bytes = *bytes;
            if model.seq <= self.cursor {
                continue;
            }
            if self.matcher.matches(model) {
                let Some(mut reservation) = self.outbox.try_reserve(bytes) else {
                    self.head = self.head.max(batch.last_seq);
                    return Ok(());
                };
                let message = WatchResponse {
                    kind: Some(watch_response::Kind::Event(event.clone())),
                };
                self.outbox
                    .push(message, Some(model.seq), bytes, &mut reservation);
            }
            self.cursor = model.seq;
        }
        self.cursor = self.cursor.max(batch.last_seq);
        self.head = self.head.max(self.cursor);
        Ok(())
    }

    /// Reads the owed events after the cursor from storage, keeping no
    /// more than `reservation` holds (and at least one event), and queues
    /// them.
    async fn read_page(
        &mut self,
        mut reservation: Reservation,
        reader: OwnedSemaphorePermit,
    ) -> Result<(), Stop> {
        let budget = reservation.bytes();
        let rows = ((budget / self.row_bytes.max(1)) as u64).clamp(1, CATCH_UP_ROWS);
        let mut page: Vec<(i64, i64, WatchResponse, usize)> = Vec::new();
        let mut kept = 0usize;
        let mut largest = 0usize;
        let mut full = false;
        let read = self
            .store
            .scan_events(
                &self.tenant,
                self.condition.clone(),
                self.cursor,
                self.head,
                rows,
                |model| {
                    let (seq, recorded_at) = (model.seq, model.recorded_at);
                    let message = WatchResponse {
                        kind: Some(watch_response::Kind::Event(event_to_proto(model))),
                    };
                    let bytes = message_bytes(&message);
                    largest = largest.max(bytes);
                    if !page.is_empty() && kept + bytes > budget {
                        full = true;
                        return ControlFlow::Break(());
                    }
                    kept += bytes;
                    page.push((seq, recorded_at, message, bytes));
                    if kept >= budget {
                        full = true;
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                },
            )
            .await;
        drop(reader);
        let handed = read.map_err(|error| self.storage_failed(error))?;
        if largest > 0 {
            self.row_bytes = largest;
        }
        if kept > budget {
            // A lone event larger than the room: it waits until the outbox
            // and the budget have its bytes (all of the budget at most).
            match self.outbox.try_reserve_more(kept - budget) {
                Some(more) => reservation.merge(more),
                None if budget < self.outbox.budget().total() => {
                    self.need = kept;
                    return Ok(());
                }
                None => {}
            }
        }
        self.need = 0;
        if let Some(newest) = page.iter().map(|(_, recorded_at, _, _)| *recorded_at).max()
            && newest >= self.standing_at
        {
            self.standing_at = self.confirm(newest.saturating_add(1)).await?;
        }
        let complete = !full && handed < rows;
        for (seq, _, message, bytes) in page {
            self.outbox.push(message, Some(seq), bytes, &mut reservation);
            self.cursor = seq;
        }
        if complete {
            self.cursor = self.head;
        }
        Ok(())
    }

    /// Drops what the client has not taken and moves the cursor back to
    /// just before it, so it is read again from storage.
    fn give_back(&mut self) {
        if let Some(first) = self.outbox.give_back() {
            self.cursor = self.cursor.min(first - 1);
        }
    }

    async fn confirm(&self, after: i64) -> Result<i64, Stop> {
        self.credential.confirm(after).await.map_err(|error| match error {
            Error::Unauthenticated(_) => Stop::Refused(error),
            error => {
                tracing::warn!(%error, tenant = %self.tenant, "watch: cannot check the stream's credential");
                Stop::Resumable("the credential cannot be checked right now")
            }
        })
    }

    async fn read_head(&self) -> Result<i64, Stop> {
        let _permit = self
            .readers
            .acquire()
            .await
            .map_err(|_| Stop::Resumable("the server is shutting down"))?;
        self.store
            .head_seq(&self.tenant)
            .await
            .map_err(|error| self.storage_failed(error))
    }

    fn storage_failed(&self, error: impl std::fmt::Display) -> Stop {
        tracing::warn!(%error, tenant = %self.tenant, "watch: storage read failed");
        Stop::Resumable("storage is unavailable")
    }
}

/// How long from now until `at` (zero when it has passed).
fn until(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now()).unwrap_or_default()
}

/// Resolves when the credential's lapse timer fires; never without one.
async fn lapsed(lapse: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match lapse {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// `want` bytes of the process-wide budget, then a storage reader: what a
/// read needs before it starts.
async fn reserve(
    outbox: &Outbox,
    readers: Arc<Semaphore>,
    want: usize,
) -> (Reservation, OwnedSemaphorePermit) {
    let reservation = outbox.reserve(want).await;
    match readers.acquire_owned().await {
        Ok(reader) => (reservation, reader),
        // The readers semaphore is never closed.
        Err(_) => std::future::pending().await,
    }
}

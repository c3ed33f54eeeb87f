//! Watch: live streams of a tenant's log that never miss or repeat an event.
//!
//! Storage is the source of truth; the live feed only saves reads. Each
//! stream keeps a cursor, the highest seq it has accounted for. A live
//! batch says "these are the live events with seqs `first..=last`"; a
//! stream skips what it has already accounted for, and whenever a batch
//! starts beyond `cursor + 1` (it lagged, a notification was lost, or
//! another replica committed) it first reads the missing range from
//! storage. Seqs are handed out in commit order, so once seq N is seen
//! committed every smaller seq is too, and reading `cursor+1..N` from
//! storage closes the gap exactly.
//!
//! Memory is bounded: each tenant's feed is a broadcast ring of
//! [`FEED_CAPACITY`] batches shared by its streams, and each stream buffers
//! at most [`STREAM_BUFFER`] messages for its client plus one storage page. A client that stops
//! reading blocks only its own stream; its feed receiver then lags and it
//! catches up from storage when it reads again. `Append` never waits on a
//! stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::Condition;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::convert::{event_to_proto, micros_to_timestamp};
use crate::error::Error;
use crate::filter::EventMatcher;
use crate::proto::{self, EventFilter, WatchResponse, watch_response};
use crate::store::{Committed, NOTIFY_CHANNEL, Store, audit_event, now_micros};
use crate::tenant::TenantId;

/// Batches a tenant's feed keeps for its slowest stream before that stream
/// lags (and reads storage instead).
pub const FEED_CAPACITY: usize = 256;
/// Messages a stream buffers for a client that is not reading.
pub const STREAM_BUFFER: usize = 64;
/// Rows per storage read while catching up. A stream blocked on a slow
/// client holds at most one page besides its buffer, so this bounds its
/// memory too.
const CATCH_UP_PAGE: u64 = 128;

/// Limits on concurrent streams.
#[derive(Debug, Clone, Copy)]
pub struct WatchLimits {
    /// Streams the whole process serves at once.
    pub max_streams: usize,
    /// Streams one tenant may hold at once.
    pub max_streams_per_tenant: usize,
    /// Interval between heartbeats.
    pub heartbeat: Duration,
    /// Storage reads all streams together may run at once, so that catching
    /// up never takes every pooled connection from Append and Query.
    pub storage_readers: usize,
}

/// Live events with seqs `first_seq..=last_seq` of one tenant (erased
/// events are absent). An empty batch with `first_seq = last_seq + 1` says
/// only "the log reached `last_seq`".
#[derive(Debug)]
pub struct LiveBatch {
    first_seq: i64,
    last_seq: i64,
    events: Vec<(audit_event::Model, proto::AuditEvent)>,
}

impl LiveBatch {
    fn from_models(first_seq: i64, last_seq: i64, models: Vec<audit_event::Model>) -> Self {
        let events = models
            .into_iter()
            .map(|m| (m.clone(), event_to_proto(m)))
            .collect();
        Self {
            first_seq,
            last_seq,
            events,
        }
    }
}

struct Feed {
    sender: broadcast::Sender<Arc<LiveBatch>>,
    known_head: i64,
    streams: usize,
}

struct HubState {
    feeds: HashMap<TenantId, Feed>,
    streams: usize,
}

/// Fans committed events out to the streams of this process.
#[derive(Clone)]
pub struct WatchHub {
    store: Store,
    limits: WatchLimits,
    shutdown: CancellationToken,
    state: Arc<Mutex<HubState>>,
    readers: Arc<Semaphore>,
}

impl WatchHub {
    /// Starts the hub: it follows this process's commits and, on
    /// PostgreSQL, every replica's through LISTEN/NOTIFY.
    pub fn start(store: Store, limits: WatchLimits, shutdown: CancellationToken) -> Self {
        let hub = Self {
            store: store.clone(),
            limits,
            shutdown,
            state: Arc::new(Mutex::new(HubState {
                feeds: HashMap::new(),
                streams: 0,
            })),
            readers: Arc::new(Semaphore::new(limits.storage_readers.max(1))),
        };
        tokio::spawn(hub.clone().follow_commits(store.subscribe_commits()));
        if store.backend() == sea_orm::DbBackend::Postgres {
            tokio::spawn(hub.clone().follow_replicas());
        }
        hub
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn follow_commits(self, mut commits: broadcast::Receiver<Arc<Committed>>) {
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                received = commits.recv() => match received {
                    Ok(committed) => {
                        if self.has_feed(&committed.tenant) {
                            let batch = LiveBatch::from_models(
                                committed.first_seq,
                                committed.last_seq,
                                committed.events.clone(),
                            );
                            self.route(&committed.tenant, batch);
                        }
                    }
                    // Missed commits: streams see the gap and read storage.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Follows the commits of every replica on PostgreSQL.
    async fn follow_replicas(self) {
        let pool = self.store.connection().get_postgres_connection_pool().clone();
        while !self.shutdown.is_cancelled() {
            let mut listener = match sea_orm::sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "watch: cannot LISTEN yet; retrying");
                    self.pause().await;
                    continue;
                }
            };
            if let Err(error) = listener.listen(NOTIFY_CHANNEL).await {
                tracing::warn!(%error, "watch: LISTEN failed; retrying");
                self.pause().await;
                continue;
            }
            // Anything committed while not listening is found in storage.
            self.nudge_all().await;
            loop {
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => self.on_notification(notification.payload()).await,
                        Ok(None) => {
                            tracing::warn!("watch: LISTEN connection lost; reconnecting");
                            self.nudge_all().await;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "watch: LISTEN failed; reconnecting");
                            self.pause().await;
                            break;
                        }
                    },
                }
            }
        }
    }

    async fn pause(&self) {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }

    /// A replica announced `tenant\tfirst\tlast`: read it once for all of
    /// this process's streams of that tenant.
    async fn on_notification(&self, payload: &str) {
        let mut parts = payload.split('\t');
        let (Some(tenant), Some(first), Some(last)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let (Ok(tenant), Ok(first), Ok(last)) = (
            TenantId::parse(tenant, "tenant"),
            first.parse::<i64>(),
            last.parse::<i64>(),
        ) else {
            return;
        };
        let known = match self.state().feeds.get(&tenant) {
            Some(feed) if feed.known_head < last => feed.known_head,
            _ => return,
        };
        let from = first.max(known + 1);
        match self
            .store
            .events_between(
                &tenant,
                Condition::all(),
                from - 1,
                last,
                (last - from + 1) as u64,
            )
            .await
        {
            Ok(models) => self.route(&tenant, LiveBatch::from_models(from, last, models)),
            // The streams find the events in storage at their next batch
            // or heartbeat.
            Err(error) => tracing::warn!(%error, %tenant, "watch: cannot read a replica's commit"),
        }
    }

    /// Tells every stream to check storage for what it may have missed.
    async fn nudge_all(&self) {
        let tenants: Vec<TenantId> = self.state().feeds.keys().cloned().collect();
        for tenant in tenants {
            if let Ok(head) = self.store.head_seq(&tenant).await {
                self.route(
                    &tenant,
                    LiveBatch {
                        first_seq: head + 1,
                        last_seq: head,
                        events: Vec::new(),
                    },
                );
            }
        }
    }

    fn has_feed(&self, tenant: &TenantId) -> bool {
        self.state().feeds.contains_key(tenant)
    }

    fn route(&self, tenant: &TenantId, batch: LiveBatch) {
        let mut state = self.state();
        let Some(feed) = state.feeds.get_mut(tenant) else {
            return;
        };
        if batch.last_seq <= feed.known_head && !batch.events.is_empty() {
            return;
        }
        feed.known_head = feed.known_head.max(batch.last_seq);
        // No receiver only means every stream of the tenant just ended.
        let _ = feed.sender.send(Arc::new(batch));
    }

    /// Opens a stream of `tenant`'s events matching `filter`: those with a
    /// seq above `after_seq`, or, when it is `None`, those committed from
    /// now on: the head is read before this returns, so every event whose
    /// `Append` completes after the caller has the stream is delivered.
    pub async fn open(
        &self,
        tenant: TenantId,
        filter: &EventFilter,
        after_seq: Option<u64>,
    ) -> Result<ReceiverStream<Result<WatchResponse, Status>>, Error> {
        let matcher = EventMatcher::new(filter, "filter")?;
        let condition = matcher.condition(self.store.backend());
        let after_seq = after_seq
            .map(i64::try_from)
            .transpose()
            .map_err(|_| Error::invalid("after_seq", "is larger than any seq"))?;
        let (live, slot) = self.register(&tenant)?;
        // From now: the head read after joining the live feed; nothing
        // before it is owed, and anything after it arrives live (or, after a
        // gap, from storage).
        let (after_seq, replay) = match after_seq {
            Some(seq) => (seq, true),
            None => (self.store.head_seq(&tenant).await.map_err(Error::from)?, false),
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = Subscription {
            store: self.store.clone(),
            tenant,
            matcher,
            condition,
            cursor: 0,
            tx,
            live,
            heartbeat: self.limits.heartbeat,
            shutdown: self.shutdown.clone(),
            readers: self.readers.clone(),
            _slot: slot,
        };
        tokio::spawn(stream.run(after_seq, replay));
        Ok(ReceiverStream::new(rx))
    }

    fn register(
        &self,
        tenant: &TenantId,
    ) -> Result<(broadcast::Receiver<Arc<LiveBatch>>, StreamSlot), Error> {
        let mut state = self.state();
        if state.streams >= self.limits.max_streams {
            return Err(Error::ResourceExhausted(format!(
                "the server already serves {} Watch streams; retry later",
                self.limits.max_streams
            )));
        }
        let feed = state.feeds.entry(tenant.clone()).or_insert_with(|| Feed {
            sender: broadcast::channel(FEED_CAPACITY).0,
            known_head: 0,
            streams: 0,
        });
        if feed.streams >= self.limits.max_streams_per_tenant {
            return Err(Error::ResourceExhausted(format!(
                "this tenant already holds {} Watch streams; close some or retry later",
                self.limits.max_streams_per_tenant
            )));
        }
        feed.streams += 1;
        let receiver = feed.sender.subscribe();
        state.streams += 1;
        Ok((
            receiver,
            StreamSlot {
                hub: self.clone(),
                tenant: tenant.clone(),
            },
        ))
    }

    /// Streams open right now.
    pub fn open_streams(&self) -> usize {
        self.state().streams
    }
}

/// A stream's place in the limits; freed when the stream ends.
struct StreamSlot {
    hub: WatchHub,
    tenant: TenantId,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut state = self.hub.state();
        state.streams = state.streams.saturating_sub(1);
        if let Some(feed) = state.feeds.get_mut(&self.tenant) {
            feed.streams = feed.streams.saturating_sub(1);
            if feed.streams == 0 {
                state.feeds.remove(&self.tenant);
            }
        }
    }
}

/// Why a stream stopped.
enum Stop {
    /// The client went away.
    Gone,
    /// End the stream with this status.
    Fail(Status),
}

struct Subscription {
    store: Store,
    tenant: TenantId,
    matcher: EventMatcher,
    condition: Condition,
    /// Highest seq accounted for: delivered, or known not to match.
    cursor: i64,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    live: broadcast::Receiver<Arc<LiveBatch>>,
    heartbeat: Duration,
    shutdown: CancellationToken,
    readers: Arc<Semaphore>,
    _slot: StreamSlot,
}

impl Subscription {
    async fn run(mut self, after_seq: i64, replay: bool) {
        self.cursor = after_seq;
        let result = self.follow(replay).await;
        if let Err(Stop::Fail(status)) = result {
            // A client that stopped reading must not hold the stream open.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.tx.send(Err(status))).await;
        }
    }

    /// Sends stored history first when `replay` (a resume from
    /// `after_seq`), then live events and heartbeats.
    async fn follow(&mut self, replay: bool) -> Result<(), Stop> {
        if replay {
            let head = self.head().await?;
            self.catch_up(head).await?;
        }
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(self.resumable("the server is shutting down")),
                () = self.tx.closed() => return Err(Stop::Gone),
                _ = heartbeat.tick() => {
                    let head = self.head().await?;
                    self.catch_up(head).await?;
                    let beat = proto::Heartbeat { head_seq: self.cursor as u64, time: Some(micros_to_timestamp(now_micros())) };
                    self.send(watch_response::Kind::Heartbeat(beat)).await?;
                }
                received = self.live.recv() => match received {
                    Ok(batch) => self.deliver(&batch).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let head = self.head().await?;
                        self.catch_up(head).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(self.resumable("the live feed closed"));
                    }
                },
            }
        }
    }

    async fn deliver(&mut self, batch: &LiveBatch) -> Result<(), Stop> {
        if batch.first_seq > self.cursor + 1 {
            self.catch_up(batch.first_seq - 1).await?;
        }
        for (model, event) in &batch.events {
            if model.seq > self.cursor {
                if self.matcher.matches(model) {
                    self.send(watch_response::Kind::Event(event.clone())).await?;
                }
                self.cursor = model.seq;
            }
        }
        self.cursor = self.cursor.max(batch.last_seq);
        Ok(())
    }

    /// Delivers every matching stored event with `cursor < seq <= up_to`.
    async fn catch_up(&mut self, up_to: i64) -> Result<(), Stop> {
        while self.cursor < up_to {
            let page = {
                let _permit = self.read_permit().await?;
                self.store
                    .events_between(
                        &self.tenant,
                        self.condition.clone(),
                        self.cursor,
                        up_to,
                        CATCH_UP_PAGE,
                    )
                    .await
                    .map_err(|error| self.storage_failed(error))?
            };
            let full = page.len() as u64 == CATCH_UP_PAGE;
            for model in page {
                let seq = model.seq;
                self.send(watch_response::Kind::Event(event_to_proto(model)))
                    .await?;
                self.cursor = seq;
            }
            if !full {
                self.cursor = up_to;
            }
        }
        Ok(())
    }

    async fn head(&self) -> Result<i64, Stop> {
        let _permit = self.read_permit().await?;
        self.store
            .head_seq(&self.tenant)
            .await
            .map_err(|error| self.storage_failed(error))
    }

    async fn read_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Stop> {
        self.readers
            .acquire()
            .await
            .map_err(|_| self.resumable("the server is shutting down"))
    }

    fn storage_failed(&self, error: sea_orm::DbErr) -> Stop {
        tracing::warn!(%error, tenant = %self.tenant, "watch: storage read failed");
        self.resumable("storage is unavailable")
    }

    fn resumable(&self, why: &str) -> Stop {
        Stop::Fail(Error::Unavailable(format!("{why}; resume with after_seq={}", self.cursor)).into())
    }

    async fn send(&self, kind: watch_response::Kind) -> Result<(), Stop> {
        let message = Ok(WatchResponse { kind: Some(kind) });
        tokio::select! {
            sent = self.tx.send(message) => sent.map_err(|_| Stop::Gone),
            () = self.shutdown.cancelled() => Err(self.resumable("the server is shutting down")),
        }
    }
}

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
//! Memory is bounded in bytes, not messages. Each stream queues at most
//! [`STREAM_BUFFER_BYTES`] for its client and reads storage only as far as
//! that room allows (a read stops at the room, past one event); all streams
//! together queue at most the process-wide budget (`--watch-buffer-mib`,
//! [`DEFAULT_WATCH_BUFFER_MIB`](crate::config::DEFAULT_WATCH_BUFFER_MIB)). When that budget runs low, a stream
//! whose client has left its messages untaken for [`STALL_AFTER`] gives
//! them back and reads them again from storage once the client asks for
//! more, so clients that never read cannot starve those that do. Live
//! batches held in the tenants' feeds take at most [`FEED_BUFFER_BYTES`]
//! together; a batch beyond that travels as "the log reached seq N" and
//! streams read its events from storage. Streams keep draining their live
//! feed while their client is not reading, so a stalled client holds no
//! feed slot. `Append` never waits on a stream.
//!
//! A stream lives no longer than its credential: the layer that
//! authenticated the call supplies a [`CredentialCheck`], which the stream
//! asks again at every heartbeat, before it delivers any event recorded
//! after the last check, and when the credential lapses by itself.

mod across;
mod credential;
mod outbox;
mod subscription;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::Condition;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

pub use across::{AcrossRequest, AcrossStream};
pub use credential::CredentialCheck;
pub use outbox::{STALL_AFTER, STREAM_BUFFER_BYTES, WatchStream};

use crate::convert::{event_to_proto, seq_from_proto};
use crate::entity::audit_event;
use crate::error::Error;
use crate::filter::EventMatcher;
use crate::proto::{self, EventFilter};
use crate::store::{Committed, NOTIFY_CHANNEL, Store};
use crate::tenant::{PartnerId, TenantId};
use outbox::{WatchBudget, event_bytes};
use subscription::Subscription;

/// Batches a tenant's feed keeps for its slowest stream before that stream
/// lags (and reads storage instead).
pub const FEED_CAPACITY: usize = 256;
/// Bytes of live batches all tenants' feeds may hold together (a batch
/// counts its rows and their messages, twice the messages' bytes); a batch
/// that does not fit is announced without its events.
pub const FEED_BUFFER_BYTES: usize = 32 * 1024 * 1024;
/// Largest live batch carried with its events; larger ones are announced
/// without them.
const FEED_BATCH_BYTES: usize = FEED_BUFFER_BYTES / 8;

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
    /// Bytes all streams together may hold for their clients.
    pub buffer_bytes: usize,
}

/// Live events with seqs `first_seq..=last_seq` of one tenant (erased
/// events are absent). An empty batch with `first_seq = last_seq + 1` says
/// only "the log reached `last_seq`".
#[derive(Debug)]
pub struct LiveBatch {
    first_seq: i64,
    last_seq: i64,
    /// Each event as a row, as a message, and the message's bytes.
    events: Vec<(audit_event::Model, proto::AuditEvent, usize)>,
    /// Its share of [`FEED_BUFFER_BYTES`], returned when the last feed
    /// drops it.
    _bytes: Option<OwnedSemaphorePermit>,
}

impl LiveBatch {
    /// "The log reached `last_seq`": streams read what they miss from
    /// storage.
    fn head(last_seq: i64) -> Self {
        Self {
            first_seq: last_seq + 1,
            last_seq,
            events: Vec::new(),
            _bytes: None,
        }
    }
}

/// Builds live batches within [`FEED_BUFFER_BYTES`].
struct BatchBuilder {
    bytes: Arc<Semaphore>,
    events: Vec<(audit_event::Model, proto::AuditEvent, usize)>,
    size: usize,
}

impl BatchBuilder {
    fn new(bytes: Arc<Semaphore>) -> Self {
        Self {
            bytes,
            events: Vec::new(),
            size: 0,
        }
    }

    /// Adds an event; breaks once the batch is too large to carry.
    fn add(&mut self, model: audit_event::Model) -> ControlFlow<()> {
        let event = event_to_proto(model.clone());
        let bytes = event_bytes(&event);
        // The row and its message are both held, about alike.
        self.size += 2 * bytes;
        if self.size > FEED_BATCH_BYTES {
            self.events.clear();
            return ControlFlow::Break(());
        }
        self.events.push((model, event, bytes));
        ControlFlow::Continue(())
    }

    /// The batch of seqs `first_seq..=last_seq` with the events added, or
    /// only its head when they were too many bytes or the feeds hold too
    /// many already.
    fn finish(self, first_seq: i64, last_seq: i64, complete: bool) -> LiveBatch {
        if !complete {
            return LiveBatch::head(last_seq);
        }
        let permits = u32::try_from(self.size).unwrap_or(u32::MAX);
        match self.bytes.try_acquire_many_owned(permits) {
            Ok(permit) => LiveBatch {
                first_seq,
                last_seq,
                events: self.events,
                _bytes: Some(permit),
            },
            _ => LiveBatch::head(last_seq),
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
    budget: WatchBudget,
    feed_bytes: Arc<Semaphore>,
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
            budget: WatchBudget::new(limits.buffer_bytes),
            feed_bytes: Arc::new(Semaphore::new(FEED_BUFFER_BYTES)),
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
                            let mut batch = BatchBuilder::new(self.feed_bytes.clone());
                            let complete = committed
                                .events
                                .iter()
                                .try_for_each(|model| batch.add(model.clone()))
                                .is_continue();
                            let batch = batch.finish(committed.first_seq, committed.last_seq, complete);
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
        // Empty only when the announcement is malformed (`first > last`).
        let Ok(rows) = u64::try_from(last - from + 1) else {
            return;
        };
        let mut batch = BatchBuilder::new(self.feed_bytes.clone());
        let mut complete = true;
        let read = self
            .store
            .scan_events(&tenant, Condition::all(), from - 1, last, rows, |model| {
                let step = batch.add(model);
                complete = step.is_continue();
                step
            })
            .await;
        match read {
            Ok(_) => self.route(&tenant, batch.finish(from, last, complete)),
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
                self.route(&tenant, LiveBatch::head(head));
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
    /// `Append` completes after the caller has the stream is delivered. The
    /// stream ends UNAUTHENTICATED once `credential` no longer stands.
    pub async fn open(
        &self,
        tenant: TenantId,
        filter: &EventFilter,
        after_seq: Option<u64>,
        credential: Arc<dyn CredentialCheck>,
    ) -> Result<WatchStream, Error> {
        let matcher = EventMatcher::new(filter, "filter")?;
        // `partner_id` is the tenant's partner as the stream opens.
        let matcher = if matcher.names_partner() {
            let partner = self.store.partner_of(&tenant).await?;
            matcher.bind_partner(partner.as_ref().map(PartnerId::as_str))
        } else {
            matcher
        };
        let matcher = matcher.decidable_in_memory("filter")?;
        let after_seq = after_seq
            .map(|seq| seq_from_proto(seq, "after_seq"))
            .transpose()?;
        Ok(self.open_matched(tenant, matcher, after_seq, credential).await?.0)
    }

    /// Opens a stream of `tenant`'s events `matcher` (decidable in memory)
    /// matches, after `after_seq` or, when it is `None`, from now; returns
    /// it with the position it starts from.
    async fn open_matched(
        &self,
        tenant: TenantId,
        matcher: EventMatcher,
        after_seq: Option<i64>,
        credential: Arc<dyn CredentialCheck>,
    ) -> Result<(WatchStream, i64), Error> {
        let condition = matcher.condition(self.store.backend());
        let (live, slot) = self.register(&tenant)?;
        // From now: the head read after joining the live feed; nothing
        // before it is owed, and anything after it arrives live (or, after a
        // gap, from storage).
        let (after_seq, replay) = match after_seq {
            Some(seq) => (seq, true),
            None => (self.store.head_seq(&tenant).await?, false),
        };
        let (outbox, stream) = outbox::outbox(self.budget.clone());
        let subscription = Subscription::new(
            self.store.clone(),
            tenant,
            matcher,
            condition,
            outbox,
            live,
            self.limits.heartbeat,
            self.shutdown.clone(),
            self.readers.clone(),
            credential,
            slot,
        );
        tokio::spawn(subscription.run(after_seq, replay));
        Ok((stream, after_seq))
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

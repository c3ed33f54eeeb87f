//! The workloads, each against the service and against its baseline.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use audit_service::entity::audit_event;
use audit_service::filter::EventMatcher;
use audit_service::proto::{self, EventFilter, EventInput, QueryRequest, WatchRequest, watch_response};
use audit_service::store::{EventOrder, PageCursor, now_micros, page_query};
use audit_service::tenant::TenantId;
use sea_orm::{DatabaseConnection, QueryTrait};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::baseline::{self, RawWriter};
use crate::client::{Caller, connect, sample_batch, sample_event, stored_row};
use crate::measure::{Percentiles, Phase, closed_loop, closed_loop_until};

/// Events per page in the Query workloads.
pub const PAGE_SIZE: i32 = 50;

/// `clients` closed loops appending batches of `batch` events to `tenant`.
pub async fn append(
    channels: &[Channel],
    tenant: &str,
    batch: usize,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let load = AppendLoad::new(channels, tenant, batch, clients)?;
    closed_loop(clients, duration, move |client, _| load.call(client)).await
}

/// [`append`] until `stop` is cancelled.
pub async fn append_until(
    channels: &[Channel],
    tenant: &str,
    batch: usize,
    clients: usize,
    stop: CancellationToken,
) -> anyhow::Result<Phase> {
    let load = AppendLoad::new(channels, tenant, batch, clients)?;
    closed_loop_until(clients, stop, move |client, _| load.call(client)).await
}

/// The calls of the Append loads: each client appends the same batch.
struct AppendLoad {
    callers: Arc<Vec<Caller>>,
    template: Vec<EventInput>,
}

impl AppendLoad {
    fn new(channels: &[Channel], tenant: &str, batch: usize, clients: usize) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            callers: callers(channels, tenant, clients)?,
            template: sample_batch(0, batch, 1_000_000),
        }))
    }

    /// One Append by `client`; completes the batch's events.
    fn call(&self, client: usize) -> impl Future<Output = anyhow::Result<u64>> + Send + use<> {
        let mut caller = self.callers[client].clone();
        let events = self.template.clone();
        async move {
            let count = events.len() as u64;
            caller.append(events).await?;
            Ok(count)
        }
    }
}

/// The same rows as [`append`], inserted directly into `tenant` (which the
/// service never writes to) with seqs handed out by the bench.
pub async fn raw_insert(
    writer: &RawWriter,
    tenant: &str,
    batch: usize,
    clients: usize,
    duration: Duration,
    copy: bool,
) -> anyhow::Result<Phase> {
    let template: Vec<audit_event::Model> = sample_batch(0, batch, 1_000_000)
        .iter()
        .map(|input| stored_row(input, tenant, 0, 0))
        .collect::<anyhow::Result<_>>()?;
    let template = Arc::new(template);
    let next_seq = Arc::new(AtomicI64::new(0));
    let writer = writer.clone();
    closed_loop(clients, duration, move |_, _| {
        let first = next_seq.fetch_add(i64::try_from(batch).unwrap_or(i64::MAX), Ordering::Relaxed);
        let recorded_at = now_micros();
        let rows: Vec<audit_event::Model> = template
            .iter()
            .zip(first + 1..)
            .map(|(row, seq)| audit_event::Model {
                seq,
                id: uuid::Uuid::now_v7(),
                recorded_at,
                ..row.clone()
            })
            .collect();
        let writer = writer.clone();
        async move {
            if copy {
                writer.copy(&rows).await?;
            } else {
                writer.insert(rows).await?;
            }
            Ok(batch as u64)
        }
    })
    .await
}

/// What prefilling the query tenant produced.
pub struct Prefill {
    pub phase: Phase,
    /// Ids of events spread over the tenant, for `Get`.
    pub ids: Vec<String>,
}

/// Appends `events` events to `tenant` in batches of 1000 from 4 clients.
pub async fn prefill(channels: &[Channel], tenant: &str, events: u64) -> anyhow::Result<Prefill> {
    const BATCH: u64 = 1000;
    const CLIENTS: usize = 4;
    let batches = events.div_ceil(BATCH);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for caller in callers(channels, tenant, CLIENTS)?.iter() {
        let (next, done) = (next.clone(), done.clone());
        let mut caller = caller.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut ids = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= batches {
                    break;
                }
                let first = index * BATCH;
                let count = usize::try_from(BATCH.min(events - first)).unwrap_or(usize::MAX);
                let begun = Instant::now();
                let results = caller.append(sample_batch(first, count, events)).await?;
                latencies.push(begun.elapsed());
                if let Some((id, _)) = results.into_iter().next() {
                    ids.push(id);
                }
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if finished % (batches / 10).max(1) == 0 {
                    eprintln!(
                        "  prefill: {} of {} events ({:.0} s)",
                        finished * BATCH,
                        events,
                        start.elapsed().as_secs_f64()
                    );
                }
            }
            anyhow::Ok((latencies, ids))
        }));
    }
    let mut phase = Phase::default();
    let mut ids = Vec::new();
    for task in tasks {
        let (latencies, task_ids) = task.await.context("prefill task panicked")??;
        phase.latencies.extend(latencies);
        ids.extend(task_ids);
    }
    phase.items = events;
    phase.elapsed = start.elapsed();
    Ok(Prefill { phase, ids })
}

/// When `tenant` already holds at least `events` events (a database kept
/// from an earlier run), no prefill: ids of 1 000 of its events spread over
/// it, for `Get`, and an empty prefill phase.
pub async fn kept_prefill(
    db: &sea_orm::DatabaseConnection,
    tenant: &str,
    events: u64,
) -> anyhow::Result<Option<Prefill>> {
    use sea_orm::{ConnectionTrait, Statement};
    let backend = db.get_database_backend();
    let count = Statement::from_sql_and_values(
        backend,
        "SELECT COUNT(*) FROM audit_events WHERE tenant_id = $1",
        [tenant.into()],
    );
    let held: i64 = match db.query_one_raw(count).await? {
        Some(row) => row.try_get_by_index(0)?,
        None => 0,
    };
    if u64::try_from(held).unwrap_or_default() < events.max(1) {
        return Ok(None);
    }
    eprintln!("  prefill skipped: {tenant} already holds {held} events");
    let step = (held / 1000).max(1);
    let ids = Statement::from_sql_and_values(
        backend,
        "SELECT id::text FROM audit_events WHERE tenant_id = $1 AND seq % $2 = 1 ORDER BY seq LIMIT 1000",
        [tenant.into(), step.into()],
    );
    let mut found = Vec::new();
    for row in db.query_all_raw(ids).await? {
        found.push(row.try_get_by_index::<String>(0)?);
    }
    Ok(Some(Prefill {
        phase: Phase::default(),
        ids: found,
    }))
}

/// One client repeating `request` against the service.
pub async fn query(caller: &Caller, request: QueryRequest, duration: Duration) -> anyhow::Result<Phase> {
    let caller = caller.clone();
    closed_loop(1, duration, move |_, _| {
        let mut caller = caller.clone();
        let request = caller.request(request.clone());
        async move {
            let page = caller.client.query(request).await.context("Query")?.into_inner();
            Ok(page.events.len() as u64)
        }
    })
    .await
}

/// The Query path's SQL for one page of `filter` (newest first), strictly
/// below `before_seq` when paging: the service's own time-range probe,
/// page constructor and filter compiler, limited to one page plus the row
/// that tells whether another page follows.
#[derive(Clone)]
pub struct PageSql {
    tenant: TenantId,
    matcher: Arc<EventMatcher>,
    after: Option<PageCursor>,
}

impl PageSql {
    pub fn new(tenant: &str, filter: &EventFilter, before_seq: Option<i64>) -> anyhow::Result<Self> {
        let tenant = TenantId::parse(tenant, "tenant").map_err(|e| anyhow::anyhow!("{e}"))?;
        let matcher = EventMatcher::new(filter, "filter").map_err(|e| anyhow::anyhow!("filter: {e}"))?;
        // Newest first compares seq alone; occurred_at is not read.
        let after = before_seq.map(|seq| PageCursor { seq, occurred_at: 0 });
        Ok(Self {
            tenant,
            matcher: Arc::new(matcher),
            after,
        })
    }

    /// Runs the statements the service runs for the page (the probe where
    /// the service runs one, then the SELECT) directly on `db`; returns the
    /// rows read.
    pub async fn run(&self, db: &DatabaseConnection) -> anyhow::Result<u64> {
        let select = page_query(
            db,
            &self.tenant,
            &self.matcher,
            EventOrder::SeqDesc,
            self.after,
            PAGE_SIZE as u64 + 1,
        )
        .await?;
        baseline::direct_query(db, select.build(db.get_database_backend())).await
    }
}

/// One client repeating the Query path's SQL for one page directly on the
/// database.
pub async fn direct_sql(db: &DatabaseConnection, page: PageSql, duration: Duration) -> anyhow::Result<Phase> {
    let db = db.clone();
    closed_loop(1, duration, move |_, _| {
        let (db, page) = (db.clone(), page.clone());
        async move { page.run(&db).await }
    })
    .await
}

/// Where page `page` of an unfiltered newest-first query starts.
pub struct DeepPage {
    /// The token that fetches it.
    pub token: String,
    /// The seq it starts below (the last event of the page before).
    pub before_seq: i64,
    /// Time to walk there page by page.
    pub walk: Phase,
}

/// Follows page tokens of the whole-tenant query to the start of page
/// `page` (of [`PAGE_SIZE`] events). Tokens are bound to the filter and
/// order, not the page size, so the walk takes pages of up to 1000 events:
/// the token it ends with is the one page `page - 1` of [`PAGE_SIZE`] would
/// have returned.
pub async fn walk_to_page(caller: &Caller, page: u32) -> anyhow::Result<DeepPage> {
    let mut caller = caller.clone();
    let mut token = String::new();
    let mut before_seq = 0;
    let mut walk = Phase::default();
    let mut remaining = u64::from(page - 1) * PAGE_SIZE as u64;
    let start = Instant::now();
    while remaining > 0 {
        let size = remaining.min(1000);
        let request = caller.request(QueryRequest {
            page_size: size as i32,
            page_token: token.clone(),
            ..QueryRequest::default()
        });
        let begun = Instant::now();
        let response = caller.client.query(request).await.context("Query")?.into_inner();
        walk.latencies.push(begun.elapsed());
        walk.items += response.events.len() as u64;
        if response.next_page_token.is_empty() || response.events.len() as u64 != size {
            bail!(
                "the query tenant ended after {} events, before page {page}",
                walk.items
            );
        }
        remaining -= size;
        token = response.next_page_token;
        before_seq = response
            .events
            .last()
            .map_or(0, |e| i64::try_from(e.seq).unwrap_or(i64::MAX));
    }
    walk.elapsed = start.elapsed();
    Ok(DeepPage {
        token,
        before_seq,
        walk,
    })
}

/// One client calling `Get` over `ids` in turn.
pub async fn get(caller: &Caller, ids: Vec<String>, duration: Duration) -> anyhow::Result<Phase> {
    if ids.is_empty() {
        bail!("no event ids to Get");
    }
    let caller = caller.clone();
    let ids = Arc::new(ids);
    closed_loop(1, duration, move |_, iteration| {
        let mut caller = caller.clone();
        let id = ids[usize::try_from(iteration).unwrap_or_default() % ids.len()].clone();
        async move {
            let request = caller.request(proto::GetRequest { id });
            caller.client.get(request).await.context("Get")?;
            Ok(1)
        }
    })
    .await
}

/// One client calling `Stats` with `request`, and what answered its last
/// call (`ROLLUP`, `SCAN`, with `partial` when the scan stopped early).
pub async fn stats(
    caller: &Caller,
    request: proto::StatsRequest,
    duration: Duration,
) -> anyhow::Result<(Phase, String)> {
    let caller = caller.clone();
    let answered = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = answered.clone();
    let phase = closed_loop(1, duration, move |_, _| {
        let mut caller = caller.clone();
        let request = caller.request(request.clone());
        let seen = seen.clone();
        async move {
            let response = caller.client.stats(request).await.context("Stats")?.into_inner();
            let source = response
                .answered_from()
                .as_str_name()
                .trim_start_matches("STATS_SOURCE_");
            let text = if response.partial {
                format!("{source}, partial")
            } else {
                source.to_owned()
            };
            *seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = text;
            Ok(1)
        }
    })
    .await?;
    let answered = answered.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    Ok((phase, answered))
}

/// One client calling `GetFilterMetadata`.
pub async fn filter_metadata(caller: &Caller, duration: Duration) -> anyhow::Result<Phase> {
    let caller = caller.clone();
    closed_loop(1, duration, move |_, _| {
        let mut caller = caller.clone();
        let request = caller.request(proto::GetFilterMetadataRequest {});
        async move {
            caller
                .client
                .get_filter_metadata(request)
                .await
                .context("GetFilterMetadata")?;
            Ok(1)
        }
    })
    .await
}

/// One client calling the in-process health `Check` (the RPC floor).
pub async fn rpc_floor(url: &str, duration: Duration) -> anyhow::Result<Phase> {
    let client = tonic_health::pb::health_client::HealthClient::new(connect(url).await?);
    closed_loop(1, duration, move |_, _| {
        let mut client = client.clone();
        async move {
            client
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .context("health Check")?;
            Ok(1)
        }
    })
    .await
}

/// Watch fan-out: latencies from just before `Append` to each subscriber's
/// receipt of the event.
pub struct Fanout {
    pub latency: Percentiles,
    pub delivered: u64,
    pub expected: u64,
    pub elapsed: Duration,
}

/// Appends per second while subscribers watch.
pub const WATCH_APPENDS_PER_SEC: u64 = 10;
/// Watch streams per HTTP/2 connection.
const STREAMS_PER_CONNECTION: usize = 250;

/// `subscribers` Watch streams on `tenant` while one producer appends one
/// event every 1/[`WATCH_APPENDS_PER_SEC`] s for `duration`.
pub async fn watch_fanout(
    url: &str,
    tenant: &str,
    subscribers: usize,
    duration: Duration,
) -> anyhow::Result<Fanout> {
    let mut watchers = Vec::new();
    for _ in 0..subscribers.div_ceil(STREAMS_PER_CONNECTION).max(1) {
        watchers.push(Caller::new(connect(url).await?, tenant)?);
    }
    let opened = futures::future::try_join_all((0..subscribers).map(|i| {
        let mut caller = watchers[i % watchers.len()].clone();
        async move {
            let request = caller.request(WatchRequest::default());
            caller.client.watch(request).await.context("Watch")
        }
    }))
    .await?;

    let cancel = CancellationToken::new();
    // Readers stop on every way out of this function, errors included.
    let _stop_readers = cancel.clone().drop_guard();
    let (last_seq, last_seq_rx) = tokio::sync::watch::channel(u64::MAX);
    let readers: Vec<_> = opened
        .into_iter()
        .map(|response| {
            let mut stream = response.into_inner();
            let cancel = cancel.clone();
            let mut last_seq = last_seq_rx.clone();
            tokio::spawn(async move {
                let mut received = Vec::new();
                let mut highest = 0;
                loop {
                    if highest >= *last_seq.borrow() {
                        break;
                    }
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        _ = last_seq.changed() => {}
                        message = stream.message() => match message.context("Watch stream")? {
                            Some(proto::WatchResponse { kind: Some(watch_response::Kind::Event(event)) }) => {
                                received.push((event.seq, Instant::now()));
                                highest = highest.max(event.seq);
                            }
                            Some(_) => {}
                            None => bail!("a Watch stream ended early"),
                        },
                    }
                }
                anyhow::Ok(received)
            })
        })
        .collect();

    let mut producer = Caller::new(connect(url).await?, tenant)?;
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / WATCH_APPENDS_PER_SEC));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < duration {
        tick.tick().await;
        let begun = Instant::now();
        for (_, seq) in producer.append(vec![sample_event(i, 1_000_000)]).await? {
            sent.insert(seq, begun);
        }
        i += 1;
    }
    let highest = sent.keys().copied().max().unwrap_or(0);
    let _ = last_seq.send(highest);
    // Deliveries still missing after 10 s are counted as not delivered.
    let stopper = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            cancel.cancel();
        })
    };
    let mut latencies = Vec::with_capacity(sent.len() * subscribers);
    for reader in readers {
        for (seq, received_at) in reader.await.context("Watch reader panicked")?? {
            if let Some(sent_at) = sent.get(&seq) {
                latencies.push(received_at.saturating_duration_since(*sent_at));
            }
        }
    }
    stopper.abort();
    Ok(Fanout {
        latency: Percentiles::of(&latencies),
        delivered: latencies.len() as u64,
        expected: (sent.len() * subscribers) as u64,
        elapsed: start.elapsed(),
    })
}

/// `count` callers of `tenant`, spread over `channels`.
fn callers(channels: &[Channel], tenant: &str, count: usize) -> anyhow::Result<Arc<Vec<Caller>>> {
    if channels.is_empty() {
        bail!("no connections to the service");
    }
    let callers = (0..count)
        .map(|i| Caller::new(channels[i % channels.len()].clone(), tenant))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(callers))
}

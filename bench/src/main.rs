//! `audit-bench`: the load generator of issue 7. Starts `audit-service` as a
//! child process on a fresh database, drives it with the generated tonic
//! client, measures the same work against the database directly (and a bare
//! tonic call) in the same run, and prints one Markdown table per backend:
//! events/s, p50/p95/p99, the baseline, the ratio and the issue's target.
//!
//! ```sh
//! cargo build --release --workspace    # both binaries, in target/release/
//! target/release/audit-bench --quick --backend both      # CI-sized smoke run
//! target/release/audit-bench --backend both              # 1M events per backend
//! target/release/audit-bench --retention --backend both  # issue 19: Append during a retention run
//! target/release/audit-bench --export --backend both     # issue 20: Export beside COPY / SELECT
//! target/release/audit-bench --storage --backend both    # issue 22: bytes per event, query plans
//! target/release/audit-bench --tenants 100 --backend both # issue 24: Append across 100 tenants
//! ```
#![expect(
    clippy::cast_precision_loss,
    reason = "rates, sizes in MiB and percentiles are f64 approximations of counts by design"
)]

mod baseline;
mod client;
mod export;
mod measure;
mod platform;
mod report;
mod retention;
mod server;
mod storage;
mod tenants;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use audit_service::config::DatabaseConfig;
use audit_service::proto::{EventFilter, QueryRequest, StatsRequest};
use audit_service::store::Store;
use clap::{Parser, ValueEnum};
use prost_types::Timestamp;
use tonic::transport::Channel;

use crate::baseline::{RawWriter, RpcFloor, page_floor};
use crate::client::{ACTORS, Caller, DAY_MICROS, DAY_START_MICROS, actor_id, connect};
use crate::measure::{Phase, RssSampler, by_turns, rss_kib};
use crate::report::{Row, Table, Target, grouped, mib, millis, rate};
use crate::server::{Backend, BenchDatabase, ServiceProcess};

/// The service's allocator, so the direct SQL baseline runs the driver on
/// the same allocator as the service does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator for audit-service: throughput and latency of every RPC,
/// each beside its baseline (raw INSERT/COPY, direct SQL, bare tonic call).
#[derive(Parser, Debug)]
#[command(name = "audit-bench", version)]
struct Options {
    /// Database(s) to run on.
    #[arg(long, value_enum, default_value_t = BackendChoice::Both)]
    backend: BackendChoice,
    /// CI-sized smoke run: 60 000 events, 0.5 s phases, 1 s Watch phases
    /// (under 2 minutes for both backends).
    #[arg(long)]
    quick: bool,
    /// Events in the tenant the Query, Get and Stats workloads read
    /// (default 1 000 000; 60 000 with --quick); with --retention, in each
    /// backlog a run erases (default 200 000); with --export, in the
    /// tenant exported (default 1 000 000; 60 000 with --quick); with
    /// --platform, in each of the 1 000 tenants (default 1 000).
    #[arg(long)]
    events: Option<u64>,
    /// Seconds each measured phase runs (default 5; 0.5 with --quick).
    /// Watch phases run at least 2 s (1 s with --quick).
    #[arg(long)]
    duration_secs: Option<f64>,
    /// A PostgreSQL database the bench may connect to in order to create
    /// (and afterwards drop) its own database `audit_bench_<pid>`.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// The service binary (default: `audit-service` beside this binary,
    /// where `cargo build --workspace` puts both).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Only the Append rows (each beside its raw INSERT), e.g. to compare
    /// two builds of the service taking turns.
    #[arg(long)]
    append_only: bool,
    /// Only the Append cells of this batch size (repeatable; default all
    /// of 1, 10, 100, 1000).
    #[arg(long = "batch", value_name = "EVENTS")]
    batches: Vec<usize>,
    /// Only the Append cells of this many clients (repeatable; default all
    /// of 1, 8, 64).
    #[arg(long = "clients", value_name = "CLIENTS")]
    client_counts: Vec<usize>,
    /// Only the retention rows (issue 19): Append's latency while
    /// `audit-service retention apply` erases a backlog of the same
    /// tenant, beside its latency without a run.
    #[arg(long, conflicts_with = "append_only")]
    retention: bool,
    /// Only the export rows (issue 20): the `Export` RPC (and `audit-service
    /// export`) over one tenant, beside `COPY ... TO STDOUT` (PostgreSQL) or
    /// a `SELECT` (SQLite) of the same rows, and the service's RSS during it.
    #[arg(long, conflicts_with_all = ["append_only", "retention"])]
    export: bool,
    /// Only the storage rows (issue 22): bytes per event of each table and
    /// index after filling one tenant (default 200 000 events), and the plan
    /// of each statement shape the service runs on the event tables.
    #[arg(long, conflicts_with_all = ["append_only", "retention", "export"])]
    storage: bool,
    /// Only the platform rows (issue 23): the first page of a Query across
    /// 1 000 tenants (`x-tenant-id: *`), each filled with `--events` events
    /// (default 1 000), beside one tenant's first page.
    #[arg(long, conflicts_with_all = ["append_only", "retention", "export", "storage"])]
    platform: bool,
    /// Only the many-tenant Append rows (issue 24): Append spread over N
    /// tenants, beside the same load on one tenant and a raw INSERT.
    #[arg(long, value_name = "N", conflicts_with_all = ["append_only", "retention", "export", "storage", "platform"])]
    tenants: Option<usize>,
    /// PostgreSQL only: run on the database NAME (created if missing) and
    /// keep it afterwards; when its query tenant already holds `--events`
    /// events, the prefill is skipped (to measure the reads of a 10M-event
    /// tenant again without filling it again).
    #[arg(long, value_name = "NAME")]
    keep_database: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    Sqlite,
    Postgres,
    Both,
}

/// What every workload needs to know about the run.
struct Settings {
    quick: bool,
    events: u64,
    phase: Duration,
    server_bin: PathBuf,
    postgres_url: String,
    append_only: bool,
    /// The batch sizes and client counts of the Append cells run.
    batches: Vec<usize>,
    client_counts: Vec<usize>,
    retention: bool,
    export: bool,
    storage: bool,
    platform: bool,
    /// With `--tenants N`: N.
    tenants: usize,
    keep_database: Option<String>,
}

impl Settings {
    /// A Watch phase needs a few appends (10 a second) to measure.
    fn shortest_watch_phase(&self) -> Duration {
        Duration::from_secs(if self.quick { 1 } else { 2 })
    }
}

const BATCH_SIZES: [usize; 4] = [1, 10, 100, 1000];
const CLIENT_COUNTS: [usize; 3] = [1, 8, 64];
const WATCH_SUBSCRIBERS: [usize; 3] = [1, 100, 1000];
/// The deep page of the paging workload.
const DEEP_PAGE: u32 = 1000;
/// Counted turns each Query row's service and direct-SQL loops take (see
/// [`by_turns`]); together they run one phase each.
const QUERY_TURNS: u32 = 5;
const QUERY_TENANT: &str = "bench-query";

#[tokio::main]
async fn main() -> ExitCode {
    audit_service::store::tune_process();
    let options = Options::parse();
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> anyhow::Result<()> {
    let server_bin = match options.server_bin {
        Some(path) => path,
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("audit-service"),
    };
    let settings = Settings {
        quick: options.quick,
        events: options.events.unwrap_or(if options.retention {
            retention::DEFAULT_BACKLOG
        } else if options.storage {
            200_000
        } else if options.platform {
            1_000
        } else if options.quick {
            60_000
        } else {
            1_000_000
        }),
        phase: Duration::from_secs_f64(options.duration_secs.unwrap_or(if options.quick {
            0.5
        } else {
            5.0
        })),
        server_bin,
        postgres_url: options.postgres_url,
        append_only: options.append_only,
        batches: if options.batches.is_empty() {
            BATCH_SIZES.to_vec()
        } else {
            options.batches
        },
        client_counts: if options.client_counts.is_empty() {
            CLIENT_COUNTS.to_vec()
        } else {
            options.client_counts
        },
        retention: options.retention,
        export: options.export,
        storage: options.storage,
        platform: options.platform,
        tenants: options.tenants.unwrap_or(0),
        keep_database: options.keep_database,
    };
    if settings.keep_database.is_some() && options.backend != BackendChoice::Postgres {
        anyhow::bail!("--keep-database needs --backend postgres");
    }
    let backends = match options.backend {
        BackendChoice::Sqlite => vec![Backend::Sqlite],
        BackendChoice::Postgres => vec![Backend::Postgres],
        BackendChoice::Both => vec![Backend::Sqlite, Backend::Postgres],
    };
    let started = Instant::now();
    let mut tables = Vec::new();
    for backend in backends {
        eprintln!("== {} ==", backend.title());
        tables.push(run_backend(&settings, backend).await?);
    }
    if settings.storage {
        println!(
            "### audit-bench --storage — {} events in the measured tenant\n",
            grouped(settings.events)
        );
    } else if settings.platform {
        println!(
            "### audit-bench --platform — {} tenants × {} events, {} s phases\n",
            grouped(platform::TENANTS),
            grouped(settings.events),
            settings.phase.as_secs_f64()
        );
    } else if settings.tenants > 0 {
        println!(
            "### audit-bench --tenants {} — {} s phases\n",
            grouped(settings.tenants as u64),
            settings.phase.as_secs_f64()
        );
    } else if settings.export {
        println!(
            "### audit-bench{} --export — {} events in the exported tenant\n",
            if settings.quick { " --quick" } else { "" },
            grouped(settings.events)
        );
    } else {
        println!(
            "### audit-bench{}{} — {} events in {}, {} s phases\n",
            if settings.quick { " --quick" } else { "" },
            if settings.retention { " --retention" } else { "" },
            grouped(settings.events),
            if settings.retention {
                "each retention backlog"
            } else {
                "the query tenant"
            },
            settings.phase.as_secs_f64()
        );
    }
    for table in &tables {
        println!("{}", table.markdown());
    }
    println!("Whole run: {}.", minutes(started.elapsed()));
    let missed: Vec<String> = tables
        .iter()
        .flat_map(|t| {
            t.missed()
                .map(move |row| format!("{}: {}", t.title, row.workload))
        })
        .collect();
    if !missed.is_empty() {
        println!("\nTargets missed:\n");
        for line in missed {
            println!("- {line}");
        }
    }
    Ok(())
}

async fn run_backend(settings: &Settings, backend: Backend) -> anyhow::Result<Table> {
    let database = match backend {
        Backend::Sqlite => BenchDatabase::sqlite()?,
        Backend::Postgres => match &settings.keep_database {
            Some(name) => BenchDatabase::postgres_kept(&settings.postgres_url, name).await?,
            None => BenchDatabase::postgres(&settings.postgres_url).await?,
        },
    };
    let started = Instant::now();
    let result = if settings.retention {
        retention::bench(settings, &database).await
    } else if settings.export {
        export::bench(settings, &database).await
    } else if settings.storage {
        storage::bench(settings, &database).await
    } else if settings.platform {
        platform::bench(settings, &database).await
    } else if settings.tenants > 0 {
        tenants::bench(settings, &database).await
    } else {
        bench(settings, &database).await
    };
    let removed = database.remove().await;
    let mut table = result?;
    removed?;
    table.notes.push(format!(
        "{} part of the run: {}.",
        table.title,
        minutes(started.elapsed())
    ));
    Ok(table)
}

/// Every workload on one backend.
async fn bench(settings: &Settings, database: &BenchDatabase) -> anyhow::Result<Table> {
    let mut table = Table::new(database.backend.title());
    let service = ServiceProcess::start(&settings.server_bin, &database.url, &[]).await?;
    let pid = service.pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_rss, _) = rss_kib(pid)?;

    // The baselines use the pool the service itself opens (same driver,
    // same settings); the migrations it runs are already applied.
    let store = Store::connect(&DatabaseConfig::new(database.url.clone()))
        .await
        .context("connecting the baseline pool")?;
    let db = store.connection().clone();
    let writer = RawWriter::new(db.clone());
    let url = service.url();
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(connect(&url).await?);
    }

    let ingest = RssSampler::start(pid);
    append_matrix(settings, database.backend, &channels, &writer, &mut table).await?;
    if settings.append_only {
        store.close().await?;
        return Ok(table);
    }

    let prefill = match workloads::kept_prefill(&db, QUERY_TENANT, settings.events).await? {
        Some(kept) => kept,
        None => workloads::prefill(&channels, QUERY_TENANT, settings.events).await?,
    };
    let ingest_rss = ingest.finish().await;
    if database.backend == Backend::Postgres {
        // What autovacuum would do soon after a bulk load; without it the
        // planner's estimates of the fresh table are wild for both the
        // service and the direct SQL.
        sea_orm::ConnectionTrait::execute_unprepared(&db, "ANALYZE audit_events").await?;
        // The ingest phases wrote 0.5-3 GB of WAL; the checkpoints it calls
        // for would otherwise fall on the read and Watch phases that follow
        // (a Watch p99 of 108 ms instead of 15 during one), measuring the
        // disk's flush instead of the service.
        if let Err(error) = sea_orm::ConnectionTrait::execute_unprepared(&db, "CHECKPOINT").await {
            eprintln!(
                "note: CHECKPOINT after the prefill failed ({error}); later phases may share a checkpoint"
            );
        }
    }
    if prefill.phase.latencies.is_empty() {
        table.push(Row {
            workload: format!(
                "Prefill skipped: the kept database's tenant holds at least {} events",
                grouped(settings.events)
            ),
            ..Row::default()
        });
    } else {
        table.push(Row {
            workload: format!("Prefill {} events (Append 1000 × 4)", grouped(settings.events)),
            rate: rate(prefill.phase.rate(), "ev/s"),
            latency: Some(prefill.phase.percentiles()),
            ..Row::default()
        });
    }

    let (bytes, stored) = storage::database_bytes(&db, database.backend).await?;
    table.push(Row {
        workload: format!(
            "Storage: every table and index ÷ events stored ({} events, all tenants)",
            grouped(u64::try_from(stored).unwrap_or_default())
        ),
        rate: format!("{:.1} B/event", bytes as f64 / stored.max(1) as f64),
        baseline: format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0)),
        ..Row::default()
    });

    let reader = Caller::new(channels[0].clone(), QUERY_TENANT)?;
    query_rows(settings, &db, &reader, &mut table).await?;

    let floor = RpcFloor::start().await?;
    let floor_phase = workloads::rpc_floor(&format!("http://{}", floor.server.addr), settings.phase).await?;
    let floor_p = floor_phase.percentiles();
    table.push(Row {
        workload: "RPC floor (tonic health Check, in-process)".into(),
        rate: rate(floor_phase.calls_per_sec(), "ops/s"),
        latency: Some(floor_p),
        ..Row::default()
    });
    let get = workloads::get(&reader, prefill.ids.clone(), settings.phase).await?;
    let get_p = get.percentiles();
    let workload = flagged(&mut table, "Get by id".into(), &[&get, &floor_phase]);
    table.push(Row {
        workload,
        rate: rate(get.calls_per_sec(), "ops/s"),
        latency: Some(get_p),
        baseline: format!("RPC floor p99 {} ms", millis(floor_p.p99)),
        ratio: Some(latency_ratio(get_p.p99, floor_p.p99)),
        target: None,
    });
    stats_rows(settings, &reader, &mut table).await?;

    let mut stream_rss = 0;
    for subscribers in WATCH_SUBSCRIBERS {
        let sampler = RssSampler::start(pid);
        let tenant = format!("bench-watch-{subscribers}");
        let fanout = workloads::watch_fanout(
            &url,
            &tenant,
            subscribers,
            settings.phase.max(settings.shortest_watch_phase()),
        )
        .await?;
        let peak = sampler.finish().await;
        if subscribers == 1000 {
            stream_rss = peak;
        }
        let p99_ms = fanout.latency.p99.as_secs_f64() * 1000.0;
        table.push(Row {
            workload: format!(
                "Watch fan-out, {subscribers} subscribers ({}/{} delivered)",
                grouped(fanout.delivered),
                grouped(fanout.expected)
            ),
            rate: rate(fanout.delivered as f64 / fanout.elapsed.as_secs_f64(), "ev/s"),
            latency: Some(fanout.latency),
            baseline: format!("{} appends/s of 1 event", workloads::WATCH_APPENDS_PER_SEC),
            ratio: None,
            target: (subscribers == 1000).then(|| Target::at_most(p99_ms, 50.0, " ms p99")),
        });
    }

    let (_, peak_rss) = rss_kib(pid)?;
    let idle_mib = idle_rss as f64 / 1024.0;
    for (workload, kib, target) in [
        (
            "Service RSS idle",
            idle_rss,
            Some(Target::at_most(idle_mib, 30.0, " MiB")),
        ),
        ("Service RSS peak under ingest (sampled)", ingest_rss, None),
        (
            "Service RSS peak with 1 000 Watch streams (sampled)",
            stream_rss,
            None,
        ),
        ("Service VmHWM (peak over the run)", peak_rss, None),
    ] {
        table.push(Row {
            workload: workload.into(),
            rate: mib(kib),
            target,
            ..Row::default()
        });
    }

    integrity_row(settings, database, service, &channels, &mut table).await?;
    store.close().await?;
    let mut all_notes = notes(settings, database.backend);
    all_notes.append(&mut table.notes);
    table.notes = all_notes;
    Ok(table)
}

/// Append at every batch size and client count, each beside the raw INSERT
/// of the same rows (and COPY on PostgreSQL for batches of 100 and 1000).
async fn append_matrix(
    settings: &Settings,
    backend: Backend,
    channels: &[Channel],
    writer: &RawWriter,
    table: &mut Table,
) -> anyhow::Result<()> {
    for &batch in &settings.batches {
        for &clients in &settings.client_counts {
            let cell = format!("b{batch}-c{clients}");
            let service = workloads::append(
                channels,
                &format!("bench-append-{cell}"),
                batch,
                clients,
                settings.phase,
            )
            .await?;
            let raw = workloads::raw_insert(
                writer,
                &format!("bench-raw-{cell}"),
                batch,
                clients,
                settings.phase,
                false,
            )
            .await?;
            let ratio = service.rate() / raw.rate();
            let workload = flagged(
                table,
                format!("Append {batch} × {clients} clients"),
                &[&service, &raw],
            );
            table.push(Row {
                workload,
                rate: rate(service.rate(), "ev/s"),
                latency: Some(service.percentiles()),
                baseline: format!("INSERT {}", rate(raw.rate(), "ev/s")),
                ratio: Some(ratio),
                target: (batch == 100).then(|| Target::at_least(ratio, 0.5)),
            });
            if backend == Backend::Postgres && batch >= 100 && clients == 8 {
                let copy = workloads::raw_insert(
                    writer,
                    &format!("bench-copy-{cell}"),
                    batch,
                    clients,
                    settings.phase,
                    true,
                )
                .await?;
                let workload = flagged(
                    table,
                    format!("COPY of the same rows, {batch} × {clients}"),
                    &[&copy],
                );
                table.push(Row {
                    workload,
                    rate: rate(copy.rate(), "ev/s"),
                    latency: Some(copy.percentiles()),
                    baseline: format!("Append {}", rate(service.rate(), "ev/s")),
                    ratio: Some(service.rate() / copy.rate()),
                    target: None,
                });
            }
        }
    }
    Ok(())
}

/// The page `request` returns, served again and again from memory by a
/// tonic server in the bench process (see [`page_floor`]), beside the SQL
/// of that page (`sql_p99`): its p99, and a row of the table when `shown`.
async fn page_floor_row(
    settings: &Settings,
    reader: &Caller,
    request: QueryRequest,
    sql_p99: Duration,
    shown: bool,
    table: &mut Table,
) -> anyhow::Result<Duration> {
    let mut caller = reader.clone();
    let page = caller
        .client
        .query(caller.request(request.clone()))
        .await
        .context("Query")?
        .into_inner();
    let floor = page_floor(page).await?;
    let floor_caller = Caller::new(connect(&format!("http://{}", floor.addr)).await?, QUERY_TENANT)?;
    let phase = workloads::query(&floor_caller, request, settings.phase).await?;
    let p = phase.percentiles();
    if shown {
        table.push(Row {
            workload: format!(
                "Query first page served from memory (tonic in-process, no database), {} per page",
                workloads::PAGE_SIZE
            ),
            rate: rate(phase.calls_per_sec(), "ops/s"),
            latency: Some(p),
            baseline: format!("direct SQL p99 {} ms", millis(sql_p99)),
            ratio: Some(latency_ratio(p.p99, sql_p99)),
            target: None,
        });
    }
    Ok(p.p99)
}

/// Query: first page, a deep page reached through tokens, a selective
/// filter and a broad time range, each beside its SQL run directly.
async fn query_rows(
    settings: &Settings,
    db: &sea_orm::DatabaseConnection,
    reader: &Caller,
    table: &mut Table,
) -> anyhow::Result<()> {
    let pages = settings.events.div_ceil(workloads::PAGE_SIZE as u64);
    let deep = DEEP_PAGE.min(u32::try_from(pages).unwrap_or(u32::MAX)).max(2);
    let walked = workloads::walk_to_page(reader, deep).await?;
    eprintln!(
        "  followed tokens past {} events in {} calls ({:.1} s)",
        walked.walk.items,
        walked.walk.latencies.len(),
        walked.walk.elapsed.as_secs_f64()
    );
    let whole_day = EventFilter {
        start_time: Some(timestamp(DAY_START_MICROS)),
        end_time: Some(timestamp(DAY_START_MICROS + DAY_MICROS)),
        ..EventFilter::default()
    };
    let one_actor = EventFilter {
        actor_ids: vec![actor_id(42)],
        ..EventFilter::default()
    };
    let cases = [
        (
            "Query first page".to_owned(),
            EventFilter::default(),
            String::new(),
            None,
        ),
        (
            format!("Query page {deep} (via tokens)"),
            EventFilter::default(),
            walked.token.clone(),
            Some(walked.before_seq),
        ),
        (
            format!("Query selective (1 actor of {ACTORS})"),
            one_actor,
            String::new(),
            None,
        ),
        (
            "Query broad time range (whole day)".to_owned(),
            whole_day,
            String::new(),
            None,
        ),
    ];
    let mut first_page_p50 = Duration::ZERO;
    for (i, (workload, filter, page_token, before_seq)) in cases.into_iter().enumerate() {
        let request = QueryRequest {
            filter: Some(filter.clone()),
            page_size: workloads::PAGE_SIZE,
            page_token,
            order_by: String::new(),
        };
        let page_sql = workloads::PageSql::new(QUERY_TENANT, &filter, before_seq)?;
        let (service, direct) = by_turns(
            QUERY_TURNS,
            settings.phase,
            |slice| workloads::query(reader, request.clone(), slice),
            |slice| workloads::direct_sql(db, page_sql.clone(), slice),
        )
        .await?;
        let (p, sql) = (service.percentiles(), direct.percentiles());
        let ratio = latency_ratio(p.p99, sql.p99);
        let case = workload.clone();
        let workload = flagged(
            table,
            format!("{workload}, {} per page", workloads::PAGE_SIZE),
            &[&service, &direct],
        );
        table.push(Row {
            workload,
            rate: rate(service.calls_per_sec(), "ops/s"),
            latency: Some(p),
            baseline: format!("direct SQL p99 {} ms", millis(sql.p99)),
            ratio: Some(ratio),
            target: Some(Target::at_most(ratio, 2.0, "× SQL p99")),
        });
        // The baseline issue 22 holds Query to: the SQL of the page plus
        // the same page served from memory (gRPC, encoding, the client).
        let floor_p99 = page_floor_row(settings, reader, request, sql.p99, i == 0, table).await?;
        let combined = sql.p99 + floor_p99;
        let combined_ratio = latency_ratio(p.p99, combined);
        table.push(Row {
            workload: format!("{case} p99 / (SQL p99 + in-memory page floor p99)"),
            baseline: format!(
                "SQL {} + floor {} = {} ms",
                millis(sql.p99),
                millis(floor_p99),
                millis(combined)
            ),
            ratio: Some(combined_ratio),
            target: Some(Target::at_most(combined_ratio, 1.5, "×")),
            ..Row::default()
        });
        if i == 0 {
            first_page_p50 = p.p50;
        } else if i == 1 {
            let deep_ratio = latency_ratio(p.p50, first_page_p50);
            table.push(Row {
                workload: format!("Query page {deep} / page 1 (p50)"),
                baseline: format!("page 1 p50 {} ms", millis(first_page_p50)),
                ratio: Some(deep_ratio),
                target: Some(Target::at_most(deep_ratio, 1.5, "×")),
                ..Row::default()
            });
        }
    }
    Ok(())
}

async fn stats_rows(settings: &Settings, reader: &Caller, table: &mut Table) -> anyhow::Result<()> {
    // 30 days of hourly buckets ending at the end of the tenant's day.
    let thirty_days = 30 * DAY_MICROS;
    let window_end = DAY_START_MICROS + DAY_MICROS;
    let cases = [
        ("Stats total of the whole tenant", StatsRequest::default(), true),
        (
            "Stats of the whole tenant grouped by action",
            StatsRequest {
                group_by: vec!["action".into()],
                ..StatsRequest::default()
            },
            true,
        ),
        (
            "Stats hourly buckets over 30 days",
            StatsRequest {
                filter: Some(EventFilter {
                    start_time: Some(timestamp(window_end - thirty_days)),
                    end_time: Some(timestamp(window_end)),
                    ..EventFilter::default()
                }),
                bucket: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                ..StatsRequest::default()
            },
            true,
        ),
        (
            "Stats of 1 actor grouped by action",
            StatsRequest {
                filter: Some(EventFilter {
                    actor_ids: vec![actor_id(42)],
                    ..EventFilter::default()
                }),
                group_by: vec!["action".into()],
                ..StatsRequest::default()
            },
            false,
        ),
    ];
    for (workload, request, targeted) in cases {
        let (phase, answered) = workloads::stats(reader, request, settings.phase).await?;
        let bound = targeted.then_some(50.0);
        latency_row(
            table,
            format!("{workload} (answered from {answered})"),
            &phase,
            bound,
        );
    }
    let phase = workloads::filter_metadata(reader, settings.phase).await?;
    latency_row(table, "GetFilterMetadata".into(), &phase, Some(20.0));
    Ok(())
}

/// A row of calls per second and latency, its p99 held to `p99_bound_ms`.
fn latency_row(table: &mut Table, workload: String, phase: &Phase, p99_bound_ms: Option<f64>) {
    let workload = flagged(table, workload, &[phase]);
    let p = phase.percentiles();
    let p99_ms = p.p99.as_secs_f64() * 1000.0;
    table.push(Row {
        workload,
        rate: rate(phase.calls_per_sec(), "ops/s"),
        latency: Some(p),
        target: p99_bound_ms.map(|bound| Target::at_most(p99_ms, bound, " ms p99")),
        ..Row::default()
    });
}

/// Append 100 × 8 with the Merkle tree (this service) and without it (a
/// service started with `AUDIT_INTEGRITY=off` on the same database).
async fn integrity_row(
    settings: &Settings,
    database: &BenchDatabase,
    service: ServiceProcess,
    channels: &[Channel],
    table: &mut Table,
) -> anyhow::Result<()> {
    let with_tree = workloads::append(channels, "bench-integrity-on", 100, 8, settings.phase).await?;
    service.stop()?;
    let without =
        ServiceProcess::start(&settings.server_bin, &database.url, &[("AUDIT_INTEGRITY", "off")]).await?;
    let mut off_channels = Vec::new();
    for _ in 0..8 {
        off_channels.push(connect(&without.url()).await?);
    }
    let without_tree =
        workloads::append(&off_channels, "bench-integrity-off", 100, 8, settings.phase).await?;
    without.stop()?;
    let workload = flagged(
        table,
        "Append 100 × 8, with tree / without tree".into(),
        &[&with_tree, &without_tree],
    );
    table.push(Row {
        workload,
        rate: rate(with_tree.rate(), "ev/s"),
        latency: Some(with_tree.percentiles()),
        baseline: format!("AUDIT_INTEGRITY=off {}", rate(without_tree.rate(), "ev/s")),
        ratio: Some(with_tree.rate() / without_tree.rate()),
        target: None,
    });
    Ok(())
}

fn notes(settings: &Settings, backend: Backend) -> Vec<String> {
    let mut notes = vec![
        "Append rows: ratio = service events/s ÷ raw INSERT events/s (a multi-row INSERT of the \
         same rows, 400 rows per statement, through the service's pool settings, into another tenant, \
         without gRPC, auth, validation, the tenant head lock, the idempotency lookup or the Merkle tree)."
            .to_owned(),
        "Query rows: one client; ratio = service p99 ÷ p99 of the same SQL (the SELECT built by the \
         service's page constructor and filter compiler, preceded on SQLite for a time range by the \
         service's range probe) run directly on the pool; the service and the direct SQL take turns, \
         five slices each after one uncounted warm-up slice each, so drift of the machine falls on \
         both. The deep page is reached by following page tokens (in pages of up to 1000 events; \
         tokens are bound to filter and order, not page size) and then re-requested with its token. \
         The page served from memory is the first page, answered in the bench process by the \
         service's own generated server with the page's encoded events, copied into each response \
         as the service sends the events it has written: the gRPC cost of a page with no database \
         at all; its ratio is to the first page's SQL."
            .to_owned(),
        "Get: ratio = Get p99 ÷ p99 of a bare tonic unary call served in the bench process.".to_owned(),
        format!(
            "Watch: one producer appends {} single-event batches per second; latency = receipt by \
             each subscriber − the instant before Append was called.",
            workloads::WATCH_APPENDS_PER_SEC
        ),
    ];
    if backend == Backend::Sqlite {
        notes.push(
            "SQLite baseline writers queue on one in-process lock (as the service does), so SQLite's \
             busy back-off does not slow them."
                .to_owned(),
        );
    }
    if backend == Backend::Postgres {
        notes.push(
            "PostgreSQL: `ANALYZE audit_events` runs after the prefill, as autovacuum would, then a \
             `CHECKPOINT`, so the WAL of the ingest phases is flushed before the read and Watch phases \
             rather than during them."
                .to_owned(),
        );
    }
    if settings.quick {
        notes.push("--quick: phases and the query tenant are small; percentiles are rough.".to_owned());
    }
    notes
}

/// `workload`, marked when calls of `phases` failed (the first error of
/// each goes into the table's notes).
fn flagged(table: &mut Table, workload: String, phases: &[&Phase]) -> String {
    let failures: u64 = phases.iter().map(|p| p.failures).sum();
    if failures == 0 {
        return workload;
    }
    for error in phases.iter().filter_map(|p| p.first_error.as_deref()) {
        table
            .notes
            .push(format!("{workload}: calls failed; the first error: {error}"));
    }
    format!("{workload} (**{failures} calls failed**)")
}

/// `a / b` of two latencies.
fn latency_ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        f64::NAN
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

fn timestamp(micros: i64) -> Timestamp {
    audit_service::convert::micros_to_timestamp(micros)
}

/// `4 min 05 s`.
fn minutes(duration: Duration) -> String {
    let secs = duration.as_secs();
    format!("{} min {:02} s", secs / 60, secs % 60)
}

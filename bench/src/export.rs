//! Issue 20's export figures: the `Export` RPC over a tenant of 1 000 000
//! events, beside the raw read of the same rows in the same run (`COPY
//! (SELECT …) TO STDOUT` on PostgreSQL, a plain `SELECT` on SQLite), and
//! the service's memory while it streams them.
//!
//! The tenant is filled through `Append` (so the service keeps its Merkle
//! tree, which the export proves against) by one service process; a fresh
//! one is then started on the same database, so its idle RSS is the
//! baseline of the peak the exports reach, and VmHWM is the peak of the
//! exports alone. After one uncounted warm-up of each (the database's and
//! the OS's caches, the service's pool), the raw read and the export take
//! [`TURNS`] turns, so drift of the machine falls on both. Each turn
//! exports twice: decoded into the generated messages, and read as the
//! same fields left as bytes (what the service delivers).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use audit_service::config::DatabaseConfig;
use audit_service::proto::export_response::Part;
use audit_service::proto::{EventFilter, ExportRequest};
use audit_service::store::Store;
use futures::TryStreamExt as _;
use prost::Message as _;
use sea_orm::sqlx::{self, Decode, Row as _, Sqlite, TypeInfo as _, ValueRef as _};
use sea_orm::{ConnectionTrait, DatabaseConnection};

use crate::baseline::COLUMNS;
use tonic::transport::Channel;

use crate::client::{Caller, connect};
use crate::measure::{RssSampler, rss_kib};
use crate::report::{Row, Table, Target, grouped, mib, rate};
use crate::server::{Backend, BenchDatabase, ServiceProcess};
use crate::{Settings, workloads};

/// The tenant every export reads.
pub const EXPORT_TENANT: &str = "bench-export";
/// Counted turns of the raw read and of the export, each.
const TURNS: u32 = 2;
/// How often the service's VmRSS is read during the exports.
const RSS_EVERY: Duration = Duration::from_millis(20);
/// The target: the export at least this share of the raw read.
const LEAST_RATIO: f64 = 0.5;
/// The target: peak RSS during the export at most this far above
/// idle, in MiB.
const MOST_RSS_GROWTH_MIB: f64 = 64.0;

/// Events and bytes one read moved, and in how long.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Transfer {
    events: u64,
    bytes: u64,
    elapsed: Duration,
}

impl Transfer {
    fn add(&mut self, other: Transfer) {
        self.events += other.events;
        self.bytes += other.bytes;
        self.elapsed += other.elapsed;
    }

    fn events_per_sec(&self) -> f64 {
        per_sec(self.events, self.elapsed)
    }

    /// Megabytes (10^6 bytes) per second.
    fn megabytes_per_sec(&self) -> f64 {
        per_sec(self.bytes, self.elapsed) / 1e6
    }

    /// `12,345 ev/s, 6.7 MB/s`.
    fn rates(&self) -> String {
        format!(
            "{}, {:.1} MB/s",
            rate(self.events_per_sec(), "ev/s"),
            self.megabytes_per_sec()
        )
    }
}

fn per_sec(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// The export rows on one backend.
pub async fn bench(settings: &Settings, database: &BenchDatabase) -> anyhow::Result<Table> {
    let mut table = Table::new(database.backend.title());
    let events = settings.events;

    let seeding = ServiceProcess::start(&settings.server_bin, &database.url, &[]).await?;
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(connect(&seeding.url()).await?);
    }
    let prefill = workloads::prefill(&channels, EXPORT_TENANT, events).await?;
    drop(channels);
    seeding.stop()?;
    table.push(Row {
        workload: format!("Prefill {} events (Append 1000 × 4)", grouped(events)),
        rate: rate(prefill.phase.rate(), "ev/s"),
        latency: Some(prefill.phase.percentiles()),
        ..Row::default()
    });

    let store = Store::connect(&DatabaseConfig::new(database.url.clone()))
        .await
        .context("connecting the baseline pool")?;
    let db = store.connection().clone();
    if database.backend == Backend::Postgres {
        // As the default bench does after its prefill (see main.rs): the
        // statistics autovacuum would gather, and the ingest's WAL flushed
        // before the reads rather than during them.
        db.execute_unprepared("ANALYZE").await?;
        if let Err(error) = db.execute_unprepared("CHECKPOINT").await {
            eprintln!("note: CHECKPOINT after the prefill failed ({error})");
        }
    }

    let service = ServiceProcess::start(&settings.server_bin, &database.url, &[]).await?;
    let pid = service.pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_rss, _) = rss_kib(pid)?;
    let channel = connect(&service.url()).await?;
    let caller = Caller::new(channel.clone(), EXPORT_TENANT)?;

    let warm_raw = raw_read(&db, database.backend, events).await?;
    eprintln!(
        "  warm-up raw read: {} in {:.1} s",
        warm_raw.rates(),
        warm_raw.elapsed.as_secs_f64()
    );
    let sampler = RssSampler::every(pid, RSS_EVERY);
    let warm_export = export_rpc(&caller, events).await?;
    eprintln!(
        "  warm-up export: {} in {:.1} s",
        warm_export.rates(),
        warm_export.elapsed.as_secs_f64()
    );
    let (mut raw, mut export, mut lean) = (Transfer::default(), Transfer::default(), Transfer::default());
    for turn in 1..=TURNS {
        let r = raw_read(&db, database.backend, events).await?;
        let e = export_rpc(&caller, events).await?;
        let l = export_rpc_lean(&channel, &caller, events).await?;
        eprintln!(
            "  turn {turn}: raw {} ({:.1} s); export decoded {} ({:.1} s); export counted {} ({:.1} s)",
            r.rates(),
            r.elapsed.as_secs_f64(),
            e.rates(),
            e.elapsed.as_secs_f64(),
            l.rates(),
            l.elapsed.as_secs_f64()
        );
        raw.add(r);
        export.add(e);
        lean.add(l);
    }
    let peak_rss = sampler.finish().await;
    let (_, hwm) = rss_kib(pid)?;

    let cli = export_cli(&settings.server_bin, &database.url, events).await;
    service.stop()?;
    store.close().await?;

    let raw_name = match database.backend {
        Backend::Postgres => "Raw read: `COPY (SELECT every column … ORDER BY seq) TO STDOUT` (text)",
        Backend::Sqlite => "Raw read: `SELECT` every column `… ORDER BY seq`, each value read",
    };
    table.push(Row {
        workload: raw_name.into(),
        rate: raw.rates(),
        ..Row::default()
    });
    let ratio = export.events_per_sec() / raw.events_per_sec();
    table.push(Row {
        workload: "Export RPC (gRPC, every message decoded by the client)".into(),
        rate: export.rates(),
        baseline: format!("raw read {}", rate(raw.events_per_sec(), "ev/s")),
        ratio: Some(ratio),
        ..Row::default()
    });
    let ratio = lean.events_per_sec() / raw.events_per_sec();
    table.push(Row {
        workload: "Export RPC (gRPC, events counted, not decoded: what the service delivers)".into(),
        rate: lean.rates(),
        baseline: format!("raw read {}", rate(raw.events_per_sec(), "ev/s")),
        ratio: Some(ratio),
        target: Some(Target::at_least(ratio, LEAST_RATIO)),
        ..Row::default()
    });
    match cli {
        Ok(cli) => {
            table.push(Row {
                workload: "`audit-service export --format ndjson --output /dev/null` (one run)".into(),
                rate: rate(cli.run.events_per_sec(), "ev/s"),
                baseline: format!("raw read {}", rate(raw.events_per_sec(), "ev/s")),
                ratio: Some(cli.run.events_per_sec() / raw.events_per_sec()),
                ..Row::default()
            });
            table.push(Row {
                workload: "`audit-service export` process RSS peak (sampled)".into(),
                rate: mib(cli.peak_rss),
                ..Row::default()
            });
        }
        Err(error) => table
            .notes
            .push(format!("`audit-service export` could not be measured: {error:#}")),
    }
    let growth_mib = (peak_rss.max(hwm) as f64 - idle_rss as f64) / 1024.0;
    for (workload, kib) in [
        ("Service RSS idle (fresh process, before the exports)", idle_rss),
        (
            "Service RSS peak during the exports (sampled every 20 ms)",
            peak_rss,
        ),
        ("Service VmHWM (peak over the process's life)", hwm),
    ] {
        table.push(Row {
            workload: workload.into(),
            rate: mib(kib),
            ..Row::default()
        });
    }
    table.push(Row {
        workload: "Service RSS growth: max(peak, VmHWM) − idle".into(),
        rate: format!("{growth_mib:.1} MiB"),
        target: Some(Target::at_most(growth_mib, MOST_RSS_GROWTH_MIB, " MiB")),
        ..Row::default()
    });
    table.notes = notes(database.backend, events);
    Ok(table)
}

/// Every event of the tenant straight from the database through the
/// service's own pool and driver: on PostgreSQL `COPY … TO STDOUT` (bytes
/// = the COPY data received), on SQLite a `SELECT` whose every value is
/// read as the type SQLite stored it (bytes = text and blob lengths, 8 per
/// number).
async fn raw_read(db: &DatabaseConnection, backend: Backend, events: u64) -> anyhow::Result<Transfer> {
    let transfer = match backend {
        Backend::Postgres => copy_out(db).await?,
        Backend::Sqlite => select_all(db).await?,
    };
    if transfer.events != events {
        bail!(
            "the raw read returned {} rows of {EXPORT_TENANT}, not {events}",
            transfer.events
        );
    }
    Ok(transfer)
}

async fn copy_out(db: &DatabaseConnection) -> anyhow::Result<Transfer> {
    let statement = format!(
        "COPY (SELECT {COLUMNS} FROM audit_events WHERE tenant_id = '{EXPORT_TENANT}' ORDER BY seq) \
         TO STDOUT"
    );
    let started = Instant::now();
    let mut connection = db.get_postgres_connection_pool().acquire().await?;
    let mut data = connection
        .copy_out_raw(&statement)
        .await
        .context("COPY TO STDOUT")?;
    let mut transfer = Transfer::default();
    while let Some(bytes) = data.try_next().await.context("COPY TO STDOUT")? {
        transfer.bytes += bytes.len() as u64;
        // One line per row: text format escapes newlines within values.
        transfer.events += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    transfer.elapsed = started.elapsed();
    Ok(transfer)
}

async fn select_all(db: &DatabaseConnection) -> anyhow::Result<Transfer> {
    let statement = format!("SELECT {COLUMNS} FROM audit_events WHERE tenant_id = ? ORDER BY seq");
    let started = Instant::now();
    let pool = db.get_sqlite_connection_pool();
    // Built from constants only; the tenant is bound.
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(statement))
        .bind(EXPORT_TENANT)
        .fetch(pool);
    let mut transfer = Transfer::default();
    while let Some(row) = rows.try_next().await.context("SELECT")? {
        for column in 0..row.len() {
            transfer.bytes += value_bytes(row.try_get_raw(column)?)?;
        }
        transfer.events += 1;
    }
    transfer.elapsed = started.elapsed();
    Ok(transfer)
}

/// Reads one SQLite value as the type it is stored as; returns its size.
fn value_bytes(value: sqlx::sqlite::SqliteValueRef<'_>) -> anyhow::Result<u64> {
    if value.is_null() {
        return Ok(0);
    }
    let stored = value.type_info().name().to_owned();
    let size = match stored.as_str() {
        "TEXT" => <&str as Decode<Sqlite>>::decode(value)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .len(),
        "BLOB" => <&[u8] as Decode<Sqlite>>::decode(value)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .len(),
        "REAL" => {
            <f64 as Decode<Sqlite>>::decode(value).map_err(|e| anyhow::anyhow!("{e}"))?;
            8
        }
        _ => {
            <i64 as Decode<Sqlite>>::decode(value).map_err(|e| anyhow::anyhow!("{e}"))?;
            8
        }
    };
    Ok(size as u64)
}

/// An `ExportResponse` as a reader that counts events sees it: the same
/// fields on the wire (so its encoded length is the message's), the events
/// and everything but the chunk left as bytes, not decoded.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportView {
    #[prost(bytes = "bytes", optional, tag = "1")]
    header: Option<prost::bytes::Bytes>,
    #[prost(message, optional, tag = "2")]
    chunk: Option<ChunkView>,
    #[prost(bytes = "bytes", optional, tag = "3")]
    checkpoint: Option<prost::bytes::Bytes>,
}

/// An `ExportChunk` with its events and proof material left as bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct ChunkView {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    events: Vec<prost::bytes::Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    leaf_hashes: Vec<prost::bytes::Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    skipped: Vec<prost::bytes::Bytes>,
    #[prost(uint64, tag = "4")]
    resume_after_seq: u64,
}

/// One `Export` of the whole tenant read as [`ExportView`]s: what the
/// service delivers, without the client's cost of building every event
/// (the raw read's client does not parse its rows either). Bytes and
/// checks as [`export_rpc`].
async fn export_rpc_lean(channel: &Channel, caller: &Caller, events: u64) -> anyhow::Result<Transfer> {
    let request = caller.request(ExportRequest {
        filter: Some(EventFilter::default()),
        after_seq: 0,
        ..Default::default()
    });
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.context("Export: connection")?;
    let started = Instant::now();
    let codec = tonic_prost::ProstCodec::<ExportRequest, ExportView>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/audit.v1.AuditService/Export");
    let mut stream = grpc
        .server_streaming(request, path, codec)
        .await
        .context("Export")?
        .into_inner();
    let mut transfer = Transfer::default();
    let mut checkpoint = false;
    while let Some(message) = stream.message().await.context("Export stream")? {
        transfer.bytes += message.encoded_len() as u64;
        if let Some(chunk) = &message.chunk {
            transfer.events += chunk.events.len() as u64;
        }
        checkpoint |= message.checkpoint.is_some();
    }
    transfer.elapsed = started.elapsed();
    whole(transfer, checkpoint, events)
}

/// One `Export` of the whole tenant, every message received and decoded;
/// bytes = the encoded size of each message (without gRPC's 5-byte
/// frame). Checks that it ends with its checkpoint and holds every event.
async fn export_rpc(caller: &Caller, events: u64) -> anyhow::Result<Transfer> {
    let mut caller = caller.clone();
    let request = caller.request(ExportRequest {
        filter: Some(EventFilter::default()),
        after_seq: 0,
        ..Default::default()
    });
    let started = Instant::now();
    let mut stream = caller
        .client
        .export(request)
        .await
        .context("Export")?
        .into_inner();
    let mut transfer = Transfer::default();
    let mut checkpoint = false;
    while let Some(message) = stream.message().await.context("Export stream")? {
        transfer.bytes += message.encoded_len() as u64;
        match &message.part {
            Some(Part::Chunk(chunk)) => transfer.events += chunk.events.len() as u64,
            Some(Part::Checkpoint(_)) => checkpoint = true,
            _ => {}
        }
    }
    transfer.elapsed = started.elapsed();
    whole(transfer, checkpoint, events)
}

/// `transfer`, if the export it measured ended with its checkpoint and
/// held all `events`.
fn whole(transfer: Transfer, checkpoint: bool, events: u64) -> anyhow::Result<Transfer> {
    if !checkpoint || transfer.events != events {
        bail!(
            "the export held {} events of {events}{}",
            transfer.events,
            if checkpoint { "" } else { " and no checkpoint" }
        );
    }
    Ok(transfer)
}

/// One run of the CLI export.
struct CliExport {
    run: Transfer,
    /// The CLI process's largest sampled VmRSS, KiB.
    peak_rss: u64,
}

/// `audit-service export --tenant … --format ndjson --output /dev/null`
/// on the database, timed from spawn to exit (start-up included).
async fn export_cli(server_bin: &Path, database_url: &str, events: u64) -> anyhow::Result<CliExport> {
    let mut command = Command::new(server_bin);
    command
        .args([
            "export",
            "--tenant",
            EXPORT_TENANT,
            "--format",
            "ndjson",
            "--output",
            "/dev/null",
        ])
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .env_remove("AUDIT_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("running {} export", server_bin.display()))?;
    let sampler = RssSampler::every(child.id(), RSS_EVERY);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .context("waiting for `audit-service export`")??;
    let elapsed = started.elapsed();
    let peak_rss = sampler.finish().await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("`audit-service export` exited with {}:\n{stderr}", output.status);
    }
    let whole = exported_events(&stderr)
        .with_context(|| format!("no `exported tenant` line in the CLI's output:\n{stderr}"))?;
    if whole != events {
        bail!("`audit-service export` wrote {whole} events of {events}");
    }
    Ok(CliExport {
        run: Transfer {
            events: whole,
            bytes: 0,
            elapsed,
        },
        peak_rss,
    })
}

/// Events written whole, from the CLI's `exported tenant T: seqs …, N
/// events whole and M erased` line.
fn exported_events(log: &str) -> Option<u64> {
    let line = log.lines().find(|line| line.starts_with("exported tenant "))?;
    let (before, _) = line.split_once(" events whole")?;
    before.rsplit(' ').next()?.parse().ok()
}

fn notes(backend: Backend, events: u64) -> Vec<String> {
    let raw = match backend {
        Backend::Postgres => {
            "the raw read is `COPY (SELECT <all 25 columns> FROM audit_events WHERE tenant_id = … \
             ORDER BY seq) TO STDOUT` (text format) on a connection of the service's own sqlx pool \
             settings, every COPY data message received; MB/s counts the COPY data"
        }
        Backend::Sqlite => {
            "the raw read is `SELECT <all 25 columns> FROM audit_events WHERE tenant_id = ? ORDER BY \
             seq` on the service's own sqlx pool settings, in the bench process, every value read as \
             the type SQLite stored it; MB/s counts text and blob lengths and 8 bytes per number"
        }
    };
    vec![
        format!(
            "Export rows: the tenant's {} events are appended (1000 × 4) by one service process, \
             which is then stopped; a fresh one is started on the same database and idles 1 s \
             (its idle RSS). After one uncounted warm-up of each, the raw read and `Export` of the \
             whole tenant (no filter) take {TURNS} turns, each export twice: once decoded into the \
             generated messages (every event built, as a client that uses them would) and once \
             read as the same fields left as bytes, events counted (what the service delivers; \
             the raw read's client does not parse rows either: the target applies to this one); \
             the rates are their totals; {raw}. The export's MB/s counts the encoded size of every \
             message (header, chunks with their events, leaf hashes, skipped subtrees and resume \
             positions, the checkpoint), without gRPC's 5-byte frames; ratio = export events/s ÷ \
             raw read events/s. All three read on the same 2 cores as the service. The service's \
             VmRSS is sampled every {} ms from just before the warm-up export to the end of the \
             last; VmHWM covers the whole life of the fresh process, whose only work was the \
             exports. MB = 10^6 bytes.",
            grouped(events),
            RSS_EVERY.as_millis()
        ),
        "The CLI row runs `audit-service export --tenant bench-export --format ndjson --output \
         /dev/null` once, after the turns, beside the idle service: spawn to exit, start-up \
         included."
            .to_owned(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_event_count_is_read_from_its_summary_line() {
        let log = "exported tenant bench-export: seqs 1 to 1000000, 1000000 events whole and 0 erased\n\
                   check it offline with: audit-service verify-export FILE --key k\n";
        assert_eq!(exported_events(log), Some(1_000_000));
        assert_eq!(exported_events("nothing here\n"), None);
    }

    #[test]
    fn transfer_rates_are_per_second_over_all_turns() {
        let mut total = Transfer::default();
        for _ in 0..2 {
            total.add(Transfer {
                events: 500,
                bytes: 1_000_000,
                elapsed: Duration::from_millis(250),
            });
        }
        assert_eq!(total.events_per_sec(), 2000.0);
        assert_eq!(total.megabytes_per_sec(), 4.0);
        assert_eq!(total.rates(), "2,000 ev/s, 4.0 MB/s");
    }
}

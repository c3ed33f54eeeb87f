//! Issue 19's retention workload: a retention run over a backlog of 200 000
//! events, run as an operator runs one (`audit-service retention apply`, a
//! child process on the service's database, beside the running service),
//! while clients go on appending to the same tenant. Reports the run's pace
//! and Append's latency during the run beside its latency without one.
//!
//! The run erases what is older than the tenant's retention period when it
//! reads its clock, so the period and the moment the baseline phase starts
//! are chosen (see [`Schedule`]) for the whole backlog to be due and none of
//! the events the baseline phase appends.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use audit_service::proto::{QueryRequest, StatsRequest};
use audit_service::store::RETENTION_BATCH;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::client::{Administrator, Caller, connect};
use crate::measure::Phase;
use crate::report::{Row, Table, grouped, millis, rate};
use crate::server::{BenchDatabase, ServiceProcess};
use crate::{Settings, flagged, latency_ratio, workloads};

/// Events in each backlog the issue asks for (`--events` changes it).
pub const DEFAULT_BACKLOG: u64 = 200_000;
/// Events per Append call of the two loads, each beside its own run.
const APPEND_BATCHES: [usize; 2] = [1, 100];
/// Clients appending at once.
const APPEND_CLIENTS: usize = 4;
/// The service's own retention task runs once at start-up (with nothing to
/// do yet) and then only after a day: every run measured is the bench's.
const SERVICE_RETENTION_INTERVAL_SECS: &str = "86400";
/// Time allowed, beyond the CLI's measured start-up (twice over), between
/// the end of the baseline phase and the run reading its clock.
const LATE_MARGIN: Duration = Duration::from_secs(3);
/// How long before the run's cutoff the backlog ends, at the least.
const EARLY_MARGIN: Duration = Duration::from_secs(1);

/// When the phases of one round happen, relative to the end of the backlog
/// (when its last Append returned: every backlog event was recorded by
/// then).
///
/// With a retention period P, a baseline phase of D starting at `t_b` and
/// the run started right after it and reading its clock at `t_r`, the run
/// erases what was recorded before `t_r − P`. The backlog ended at `t_0`;
/// the baseline's first event was recorded after `t_b`. So the whole
/// backlog and nothing of the baseline is due when
/// `t_0 < t_r − P < t_b`, which holds when `t_b = t_0 + P − D + EARLY`
/// (`t_r − P ≥ t_b + D − P = t_0 + EARLY`) and `P ≥ D + late`, where
/// `late ≥ t_r − (t_b + D)`: the baseline's last calls finishing plus the
/// CLI starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Schedule {
    /// The tenant's retention period: whole seconds, as the service takes it.
    period: Duration,
    /// When the baseline phase starts, after the backlog's end.
    baseline_after: Duration,
}

impl Schedule {
    /// The schedule of a baseline phase of `phase` whose run reads its
    /// clock at most `late` after the phase ends.
    fn new(phase: Duration, late: Duration) -> Self {
        let least = phase + late;
        let secs = least.as_secs() + u64::from(least.subsec_nanos() > 0);
        let period = Duration::from_secs(secs.max(1));
        Self {
            period,
            baseline_after: period - phase + EARLY_MARGIN,
        }
    }
}

/// What `audit-service retention apply` reported for one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CliRun {
    /// Events it erased (its output line).
    erased: u64,
    /// The seq of the `audit.retention.applied` event that records the run.
    recorded_seq: Option<u64>,
    /// Batches (transactions) it ran, from its `retention applied` log line.
    batches: Option<u64>,
}

/// The run of `tenant` in the CLI's standard output (`tenant T: erased N
/// events; run recorded at seq S`) and its log (`retention applied
/// tenant=T erased=N batches=B …`); `None` when the output names no run of
/// `tenant`.
fn parse_cli_run(stdout: &str, log: &str, tenant: &str) -> Option<CliRun> {
    let prefix = format!("tenant {tenant}: erased ");
    let line = stdout.lines().find_map(|line| line.strip_prefix(&prefix))?;
    let (erased, rest) = line.split_once(" events")?;
    let recorded_seq = rest
        .strip_prefix("; run recorded at seq ")
        .and_then(|seq| seq.trim().parse().ok());
    let tenant_field = format!("tenant={tenant}");
    let batches = log
        .lines()
        .filter(|line| line.contains("retention applied"))
        .find(|line| line.split_whitespace().any(|word| word == tenant_field))
        .and_then(|line| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix("batches="))
                .and_then(|n| n.parse().ok())
        });
    Some(CliRun {
        erased: erased.parse().ok()?,
        recorded_seq,
        batches,
    })
}

/// One finished run of `audit-service retention apply`.
struct CliOutput {
    stdout: String,
    stderr: String,
    /// From spawning the process to its exit.
    elapsed: Duration,
}

/// Runs `audit-service retention apply` on `database_url` now.
async fn apply_retention(server_bin: &Path, database_url: &str) -> anyhow::Result<CliOutput> {
    let mut command = Command::new(server_bin);
    command
        .args(["retention", "apply"])
        .env("DATABASE_URL", database_url)
        // The `retention applied` line names the batches.
        .env("RUST_LOG", "warn,audit_service::startup::retention=info")
        .env("NO_COLOR", "1")
        .env_remove("AUDIT_LOG_FORMAT")
        .stdin(Stdio::null());
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .context("waiting for `retention apply`")?
        .with_context(|| format!("running {} retention apply", server_bin.display()))?;
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        bail!(
            "`audit-service retention apply` exited with {}:\n{stderr}",
            output.status
        );
    }
    Ok(CliOutput {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr,
        elapsed,
    })
}

/// A tenant's live (not erased) events: how many, and the seqs of the
/// oldest and newest.
struct LiveEvents {
    count: u64,
    first: Option<u64>,
    last: Option<u64>,
}

async fn live_events(caller: &Caller) -> anyhow::Result<LiveEvents> {
    let mut caller = caller.clone();
    let stats = caller
        .client
        .stats(caller.request(StatsRequest::default()))
        .await
        .context("Stats")?
        .into_inner();
    Ok(LiveEvents {
        count: stats.total,
        first: end_seq(&mut caller, "seq asc").await?,
        last: end_seq(&mut caller, "seq desc").await?,
    })
}

/// The seq of the first live event in `order_by`.
async fn end_seq(caller: &mut Caller, order_by: &str) -> anyhow::Result<Option<u64>> {
    let request = caller.request(QueryRequest {
        page_size: 1,
        order_by: order_by.to_owned(),
        ..QueryRequest::default()
    });
    let page = caller.client.query(request).await.context("Query")?.into_inner();
    Ok(page.events.first().map(|event| event.seq))
}

/// One backlog, its baseline phase and its run.
struct Round {
    batch: usize,
    baseline: Phase,
    during: Phase,
    run: CliRun,
    run_time: Duration,
}

/// The retention rows on one backlog per Append load, on a service of
/// their own on `database`.
pub async fn bench(settings: &Settings, database: &BenchDatabase) -> anyhow::Result<Table> {
    let mut table = Table::new(database.backend.title());
    let service = ServiceProcess::start(
        &settings.server_bin,
        &database.url,
        &[("AUDIT_RETENTION_INTERVAL_SECS", SERVICE_RETENTION_INTERVAL_SECS)],
    )
    .await?;
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(connect(&service.url()).await?);
    }
    // No tenant has a retention period yet: this run only starts, connects
    // and lists tenants, which every run does before it erases.
    let idle = apply_retention(&settings.server_bin, &database.url).await?;
    if !idle.stdout.trim().is_empty() {
        bail!(
            "`retention apply` found work before any retention was set:\n{}",
            idle.stdout
        );
    }
    let schedule = Schedule::new(settings.phase, LATE_MARGIN + idle.elapsed * 2);
    eprintln!(
        "  retention apply with nothing to do: {} ms; retention period {} s",
        millis(idle.elapsed),
        schedule.period.as_secs()
    );
    for batch in APPEND_BATCHES {
        let round = round(settings, database, &channels, schedule, batch).await?;
        push_rows(&mut table, settings.events, &round);
    }
    service.stop()?;
    table.notes = notes(settings, schedule, idle.elapsed);
    Ok(table)
}

/// Prefills a fresh tenant with the backlog, measures Append on it without
/// a run, then during `retention apply`, and checks the run erased exactly
/// the backlog.
async fn round(
    settings: &Settings,
    database: &BenchDatabase,
    channels: &[Channel],
    schedule: Schedule,
    batch: usize,
) -> anyhow::Result<Round> {
    let tenant = format!("bench-retention-b{batch}");
    let backlog = settings.events;
    let reader = Caller::new(channels[0].clone(), &tenant)?;
    let prefill = workloads::prefill(channels, &tenant, backlog).await?;
    let backlog_end = Instant::now();
    eprintln!(
        "  backlog of {} events in {:.1} s",
        grouped(backlog),
        prefill.phase.elapsed.as_secs_f64()
    );
    let before = live_events(&reader).await?;
    let Some(backlog_last) = before.last.filter(|_| before.count == backlog) else {
        bail!(
            "tenant {tenant} holds {} live events after its prefill of {backlog}",
            before.count
        );
    };

    let mut admin = Administrator::new(channels[0].clone(), &tenant)?;
    admin
        .set_retention(Some(schedule.period), "audit-bench: the backlog is due")
        .await?;
    tokio::time::sleep_until((backlog_end + schedule.baseline_after).into()).await;
    let baseline = workloads::append(channels, &tenant, batch, APPEND_CLIENTS, settings.phase).await?;

    let stop = CancellationToken::new();
    let (during, output) = tokio::join!(
        workloads::append_until(channels, &tenant, batch, APPEND_CLIENTS, stop.clone()),
        async {
            let output = apply_retention(&settings.server_bin, &database.url).await;
            stop.cancel();
            output
        }
    );
    let output = output?;
    let during = during?;
    let Some(run) = parse_cli_run(&output.stdout, &output.stderr, &tenant) else {
        bail!(
            "`retention apply` reported no run of {tenant}; its output:\n{}{}",
            output.stdout,
            output.stderr
        );
    };
    if run.erased != backlog {
        bail!(
            "the run erased {} events of {tenant}, not its backlog of {backlog}: the events the \
             baseline appended were due too, or some of the backlog not yet (the schedule's margins \
             were too small for this machine)",
            run.erased
        );
    }
    let after = live_events(&reader).await?;
    if after.first.is_none_or(|first| first <= backlog_last) {
        bail!(
            "after the run, tenant {tenant}'s oldest live event is {:?}, not after the backlog's \
             last seq {backlog_last}",
            after.first
        );
    }
    // The next round's run must find nothing due here.
    admin.set_retention(None, "audit-bench: round over").await?;
    Ok(Round {
        batch,
        baseline,
        during,
        run,
        run_time: output.elapsed,
    })
}

fn push_rows(table: &mut Table, backlog: u64, round: &Round) {
    let load = format!("Append {} × {APPEND_CLIENTS} clients", round.batch);
    let batches = round
        .run
        .batches
        .map_or_else(|| "? batches".to_owned(), |n| format!("{n} batches"));
    let recorded = round
        .run
        .recorded_seq
        .map_or_else(String::new, |seq| format!(", recorded at seq {seq}"));
    table.push(Row {
        workload: format!(
            "Retention run ({load} alongside): {} of {} erased in {batches}, {:.1} s{recorded}",
            grouped(round.run.erased),
            grouped(backlog),
            round.run_time.as_secs_f64()
        ),
        rate: rate(round.run.erased as f64 / round.run_time.as_secs_f64(), "ev/s"),
        ..Row::default()
    });
    let without = round.baseline.percentiles();
    let workload = flagged(table, format!("{load}, no retention run"), &[&round.baseline]);
    table.push(Row {
        workload,
        rate: rate(round.baseline.rate(), "ev/s"),
        latency: Some(without),
        ..Row::default()
    });
    let during = round.during.percentiles();
    let workload = flagged(
        table,
        format!(
            "{load} during the retention run ({} calls)",
            grouped(round.during.latencies.len() as u64)
        ),
        &[&round.during],
    );
    table.push(Row {
        workload,
        rate: rate(round.during.rate(), "ev/s"),
        latency: Some(during),
        baseline: format!(
            "no run: p50 {} / p99 {} ms",
            millis(without.p50),
            millis(without.p99)
        ),
        ratio: Some(latency_ratio(during.p99, without.p99)),
        target: None,
    });
}

fn notes(settings: &Settings, schedule: Schedule, idle: Duration) -> Vec<String> {
    vec![
        format!(
            "Retention rows: for each Append load, a fresh tenant gets a backlog of {} events \
             (Append 1000 × 4, the bench's events), then a retention period of {} s (unlocked), \
             long enough that the backlog is due when the run starts but none of the events the \
             baseline appends. The baseline phase ({} s) appends to that tenant with no run; then \
             `audit-service retention apply` (a child process on the service's database) starts \
             together with the same load, which stops when the process exits. The service runs \
             with AUDIT_RETENTION_INTERVAL_SECS={SERVICE_RETENTION_INTERVAL_SECS}, so its own \
             retention task never runs during the bench.",
            grouped(settings.events),
            schedule.period.as_secs(),
            settings.phase.as_secs_f64(),
        ),
        format!(
            "The run's time is the process's, spawn to exit: with nothing to do, it took {} ms \
             (start, connect, list tenants); it also includes the WAL checkpoint on SQLite. \
             Events/s of a run = events erased ÷ that time; each batch (one transaction holding \
             the tenant's head lock) examines up to {RETENTION_BATCH} events; batches as its \
             `retention applied` log line counts them. Ratio = Append p99 during the run ÷ p99 \
             without. Each run was checked to have erased exactly the backlog (its output line) \
             and, afterwards, the tenant's oldest live event to follow the backlog's last.",
            millis(idle)
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_puts_the_cutoff_between_the_backlog_and_the_baseline() {
        for (phase, late) in [
            (Duration::from_secs(5), Duration::from_millis(3200)),
            (Duration::from_millis(500), Duration::from_secs(3)),
            (Duration::from_secs(2), Duration::ZERO),
        ] {
            let schedule = Schedule::new(phase, late);
            assert_eq!(schedule.period.subsec_nanos(), 0, "{schedule:?}");
            // The earliest cutoff (run right after the phase, clock read at
            // once) is after the backlog's end.
            let earliest_cutoff =
                (schedule.baseline_after + phase).as_secs_f64() - schedule.period.as_secs_f64();
            assert!(earliest_cutoff >= EARLY_MARGIN.as_secs_f64(), "{schedule:?}");
            // The latest (clock read `late` after the phase) is before the
            // baseline's start.
            let latest_cutoff = earliest_cutoff + late.as_secs_f64();
            assert!(
                latest_cutoff <= schedule.baseline_after.as_secs_f64(),
                "{schedule:?}"
            );
        }
    }

    #[test]
    fn schedule_rounds_the_period_up_to_whole_seconds() {
        let schedule = Schedule::new(Duration::from_secs(5), Duration::from_millis(3200));
        assert_eq!(schedule.period, Duration::from_secs(9));
        assert_eq!(schedule.baseline_after, Duration::from_secs(5));
    }

    const LOG: &str = "2026-11-23T08:00:01.5Z  INFO audit_service::startup::retention: retention applied \
                       tenant=bench-retention-b1 erased=200000 batches=401 recorded_seq=200123\n";

    #[test]
    fn cli_run_is_read_from_its_output_line_and_log() {
        let stdout = "tenant bench-retention-b1: erased 200000 events; run recorded at seq 200123\n";
        assert_eq!(
            parse_cli_run(stdout, LOG, "bench-retention-b1"),
            Some(CliRun {
                erased: 200_000,
                recorded_seq: Some(200_123),
                batches: Some(401),
            })
        );
    }

    #[test]
    fn cli_run_of_another_tenant_is_not_taken() {
        let stdout = "tenant bench-retention-b10: erased 5 events; run recorded at seq 9\n\
                      tenant bench-retention-b1: erased 0 events\n";
        let run = parse_cli_run(stdout, LOG, "bench-retention-b10").unwrap();
        assert_eq!((run.erased, run.recorded_seq, run.batches), (5, Some(9), None));
        let run = parse_cli_run(stdout, "", "bench-retention-b1").unwrap();
        assert_eq!((run.erased, run.recorded_seq, run.batches), (0, None, None));
        assert_eq!(parse_cli_run(stdout, LOG, "bench-retention-b100"), None);
    }
}

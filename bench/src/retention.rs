//! Issue 19's retention workload: a retention run over a backlog of 200 000
//! events, run as an operator runs one (`audit-service retention apply`, a
//! child process on the service's database, beside the running service),
//! while clients go on appending to the same tenant. Reports the run's pace
//! and Append's latency during the run beside its latency without one.
//!
//! The run erases what is older than the tenant's retention period when it
//! reads its clock, so the period is set, just before each run starts, for
//! the whole backlog to be due and none of the events appended after it
//! (see [`Schedule`]).
//!
//! On SQLite the run is the service's own retention task (every second):
//! the CLI there is a second process writing the same file, which waits for
//! the write lock through SQLite's busy handler while the service's own
//! writers queue fairly in-process, and is starved by a busy service. On
//! PostgreSQL a failed CLI run is run again, as an operator would (a later
//! run finishes what an earlier one began), and the attempts are counted in
//! the report.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use audit_service::proto::{AuditEvent, EventFilter, QueryRequest, StatsRequest};
use audit_service::store::{RETENTION_ACTION, RETENTION_BATCH};
use prost_types::value::Kind;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::client::{Administrator, Caller, connect};
use crate::measure::Phase;
use crate::report::{Row, Table, grouped, millis, rate};
use crate::server::{Backend, BenchDatabase, ServiceProcess};
use crate::{Settings, flagged, latency_ratio, workloads};

/// Events in each backlog the issue asks for (`--events` changes it).
pub const DEFAULT_BACKLOG: u64 = 200_000;
/// Events per Append call of the two loads, each beside its own run.
const APPEND_BATCHES: [usize; 2] = [1, 100];
/// Clients appending at once.
const APPEND_CLIENTS: usize = 4;
/// On PostgreSQL the service's own retention task runs once at start-up
/// (with nothing to do yet) and then only after a day: every run measured
/// is the CLI's.
const SERVICE_RETENTION_INTERVAL_SECS: &str = "86400";
/// On SQLite the service's own task makes the runs measured, starting at
/// most this long after the period is set.
const SQLITE_RETENTION_INTERVAL_SECS: &str = "1";
/// How often the bench looks for the run's record when the service runs it.
const RECORD_POLL: Duration = Duration::from_millis(100);
/// Time allowed, beyond the CLI's measured start-up (twice over), from
/// computing a retention period to the run reading its clock (setting the
/// period, starting the process, connecting).
const LATE_MARGIN: Duration = Duration::from_secs(3);
/// How long before the earliest cutoff the backlog ends, at the least
/// (one second of it goes to rounding the period up to whole seconds).
const EARLY_MARGIN: Duration = Duration::from_secs(2);
/// Runs of `retention apply` one round may take before it gives up.
const MOST_ATTEMPTS: u32 = 20;

/// When the baseline phase starts, and the retention period each run gets.
///
/// The backlog ended at `t_0` (its last Append returned: every backlog
/// event was recorded by then); the baseline phase starts at
/// `t_b = t_0 + late + EARLY` and every event appended after the backlog
/// is recorded after `t_b`. A run started at `t_b + s` with the period
/// `P = ⌈s + late⌉` reads its clock at `t_b + s + δ` (δ < late) and erases
/// what was recorded before `t_b + s + δ − P`: before `t_b` (P ≥ s + late)
/// and after `t_0` (P < s + late + 1 s): the whole backlog and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Schedule {
    /// Bound on δ.
    late: Duration,
}

impl Schedule {
    /// When the baseline phase starts, after the backlog's end.
    fn baseline_after(self) -> Duration {
        self.late + EARLY_MARGIN
    }

    /// The retention period (whole seconds, as the service takes it) for a
    /// run started `since_baseline` after the baseline phase started.
    fn period(self, since_baseline: Duration) -> Duration {
        let least = since_baseline + self.late;
        let secs = least.as_secs() + u64::from(least.subsec_nanos() > 0);
        Duration::from_secs(secs.max(1))
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
    run: Run,
}

/// A retention run, in one or more runs of the CLI.
struct Run {
    /// What the last (successful) CLI run reported.
    last: CliRun,
    /// CLI runs, the failed ones included.
    attempts: u32,
    /// The failures of the earlier attempts, as the CLI logged them.
    failures: Vec<String>,
    /// From the first spawn to the last exit.
    elapsed: Duration,
    /// The retention period of the last attempt.
    period: Duration,
}

/// The retention rows on one backlog per Append load, on a service of
/// their own on `database`.
pub async fn bench(settings: &Settings, database: &BenchDatabase) -> anyhow::Result<Table> {
    let mut table = Table::new(database.backend.title());
    let service = ServiceProcess::start(
        &settings.server_bin,
        &database.url,
        &[("AUDIT_RETENTION_INTERVAL_SECS", interval(database.backend))],
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
    let schedule = Schedule {
        late: LATE_MARGIN + idle.elapsed * 2,
    };
    eprintln!(
        "  retention apply with nothing to do: {} ms; retention period {} s",
        millis(idle.elapsed),
        schedule.period(settings.phase).as_secs()
    );
    for batch in APPEND_BATCHES {
        let round = round(settings, database, &channels, schedule, batch).await?;
        push_rows(&mut table, settings.events, &round);
    }
    service.stop()?;
    table.notes = notes(settings, database.backend, schedule, idle.elapsed);
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
    tokio::time::sleep_until((backlog_end + schedule.baseline_after()).into()).await;
    let baseline_start = Instant::now();
    let baseline = workloads::append(channels, &tenant, batch, APPEND_CLIENTS, settings.phase).await?;

    let stop = CancellationToken::new();
    let (during, run) = tokio::join!(
        workloads::append_until(channels, &tenant, batch, APPEND_CLIENTS, stop.clone()),
        async {
            let run = run_retention(
                settings,
                database,
                &mut admin,
                &reader,
                &tenant,
                schedule,
                baseline_start,
            )
            .await;
            stop.cancel();
            run
        }
    );
    let run = run?;
    let during = during?;
    let recorded = recorded_run(&reader).await?;
    let expected = [backlog, before.first.unwrap_or_default(), backlog_last].map(|n| n as f64);
    if recorded != expected {
        bail!(
            "the run of {tenant} recorded (count, first seq, last seq) = {recorded:?}, not its backlog's \
             {expected:?}"
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
    })
}

/// Runs `retention apply` until it reports a run of `tenant` (at most
/// [`MOST_ATTEMPTS`] times), setting before each the period that makes the
/// backlog, and nothing appended after it, due.
async fn run_retention(
    settings: &Settings,
    database: &BenchDatabase,
    admin: &mut Administrator,
    reader: &Caller,
    tenant: &str,
    schedule: Schedule,
    baseline_start: Instant,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    if database.backend == Backend::Sqlite {
        let period = schedule.period(baseline_start.elapsed());
        admin
            .set_retention(Some(period), "audit-bench: the backlog is due")
            .await?;
        let (count, seq) = loop {
            if let Some(record) = latest_record(reader).await? {
                let [count, _, _] = run_numbers(&record)?;
                // A count of events: whole, far below 2^53.
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "a whole count"
                )]
                break (count as u64, record.seq);
            }
            tokio::time::sleep(RECORD_POLL).await;
        };
        return Ok(Run {
            last: CliRun {
                erased: count,
                recorded_seq: Some(seq),
                batches: None,
            },
            attempts: 1,
            failures: Vec::new(),
            elapsed: started.elapsed(),
            period,
        });
    }
    let mut failures = Vec::new();
    for attempt in 1..=MOST_ATTEMPTS {
        let period = schedule.period(baseline_start.elapsed());
        admin
            .set_retention(Some(period), "audit-bench: the backlog is due")
            .await?;
        let output = apply_retention(&settings.server_bin, &database.url).await?;
        if let Some(last) = parse_cli_run(&output.stdout, &output.stderr, tenant) {
            return Ok(Run {
                last,
                attempts: attempt,
                failures,
                elapsed: started.elapsed(),
                period,
            });
        }
        let Some(failure) = cli_failure(&output.stderr, tenant) else {
            bail!(
                "`retention apply` reported no run of {tenant} (it ran {:.1} s); its output:\n{}{}",
                output.elapsed.as_secs_f64(),
                output.stdout,
                output.stderr
            );
        };
        eprintln!(
            "  retention apply failed after {:.1} s; running it again: {failure}",
            output.elapsed.as_secs_f64()
        );
        failures.push(format!("after {:.1} s: {failure}", output.elapsed.as_secs_f64()));
    }
    bail!(
        "`retention apply` failed {MOST_ATTEMPTS} times on {tenant}; the last: {}",
        failures.last().map_or("", String::as_str)
    )
}

/// The error of the CLI's `retention run failed` log line about `tenant`.
fn cli_failure(log: &str, tenant: &str) -> Option<String> {
    let tenant_field = format!("tenant={tenant}");
    log.lines()
        .filter(|line| line.contains("retention run failed"))
        .find(|line| line.split_whitespace().any(|word| word == tenant_field))
        .map(|line| {
            line.split_once(" error=")
                .map_or(line, |(_, error)| error)
                .to_owned()
        })
}

/// The retention task's period of the service on `backend`.
fn interval(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => SQLITE_RETENTION_INTERVAL_SECS,
        Backend::Postgres => SERVICE_RETENTION_INTERVAL_SECS,
    }
}

/// The tenant's latest `audit.retention.applied` record, if it has one.
async fn latest_record(caller: &Caller) -> anyhow::Result<Option<AuditEvent>> {
    let mut caller = caller.clone();
    let request = caller.request(QueryRequest {
        filter: Some(EventFilter {
            actions: vec![RETENTION_ACTION.to_owned()],
            ..EventFilter::default()
        }),
        page_size: 1,
        ..QueryRequest::default()
    });
    let page = caller.client.query(request).await.context("Query")?.into_inner();
    Ok(page.events.into_iter().next())
}

/// (count, first seq, last seq) of the tenant's latest
/// `audit.retention.applied` record.
async fn recorded_run(caller: &Caller) -> anyhow::Result<[f64; 3]> {
    run_numbers(
        &latest_record(caller)
            .await?
            .context("no audit.retention.applied event")?,
    )
}

/// (count, first seq, last seq) of an `audit.retention.applied` record.
fn run_numbers(record: &AuditEvent) -> anyhow::Result<[f64; 3]> {
    let metadata = record
        .metadata
        .as_ref()
        .context("an audit.retention.applied event without metadata")?;
    let number = |key: &str| match metadata.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::NumberValue(n)) => Ok(*n),
        _ => Err(anyhow::anyhow!("the retention record has no number {key}")),
    };
    Ok([number("count")?, number("first_seq")?, number("last_seq")?])
}

fn push_rows(table: &mut Table, backlog: u64, round: &Round) {
    let load = format!("Append {} × {APPEND_CLIENTS} clients", round.batch);
    let run = &round.run;
    let batches = run
        .last
        .batches
        .map_or_else(|| "? batches".to_owned(), |n| format!("{n} batches"));
    let how = if run.attempts == 1 {
        batches
    } else {
        format!(
            "{} runs of the CLI (the last: {}, {} events)",
            run.attempts,
            batches,
            grouped(run.last.erased)
        )
    };
    let recorded = run
        .last
        .recorded_seq
        .map_or_else(String::new, |seq| format!(", recorded at seq {seq}"));
    table.push(Row {
        workload: format!(
            "Retention run ({load} alongside): {} erased in {how}, {:.1} s{recorded} (period {} s)",
            grouped(backlog),
            run.elapsed.as_secs_f64(),
            run.period.as_secs()
        ),
        rate: rate(backlog as f64 / run.elapsed.as_secs_f64(), "ev/s"),
        ..Row::default()
    });
    for (i, failure) in run.failures.iter().enumerate() {
        table.notes.push(format!(
            "Retention run beside {load}: `retention apply` run {} of {} failed {failure}",
            i + 1,
            run.attempts
        ));
    }
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

fn notes(settings: &Settings, backend: Backend, schedule: Schedule, idle: Duration) -> Vec<String> {
    if backend == Backend::Sqlite {
        return vec![format!(
            "Retention rows: for each Append load, a fresh tenant gets a backlog of {} events \
             (Append 1000 × 4, the bench's events); {:.1} s later the baseline phase ({} s) appends \
             to it with no run; then the tenant's retention period is set (unlocked; {} s for a run \
             right after the baseline) so that the whole backlog is due and none of the events \
             appended after it, and the service's own retention task (AUDIT_RETENTION_INTERVAL_SECS=\
             {SQLITE_RETENTION_INTERVAL_SECS}) erases it while the same load goes on; the load stops \
             when the run's `audit.retention.applied` record appears (looked for every {} ms). The \
             run's time counts from setting the period to seeing that record (it includes up to \
             {SQLITE_RETENTION_INTERVAL_SECS} s before the task's next pass). Each batch examines up \
             to {RETENTION_BATCH} events, and the run rests after each as long as it took. Ratio = \
             Append p99 during the run ÷ p99 without. Each run was checked: its record counts \
             exactly the backlog, from its first seq to its last, and afterwards the tenant's \
             oldest live event follows the backlog.",
            grouped(settings.events),
            schedule.baseline_after().as_secs_f64(),
            settings.phase.as_secs_f64(),
            schedule.period(settings.phase).as_secs(),
            RECORD_POLL.as_millis(),
        )];
    }
    vec![
        format!(
            "Retention rows: for each Append load, a fresh tenant gets a backlog of {} events \
             (Append 1000 × 4, the bench's events); {:.1} s later the baseline phase ({} s) appends \
             to it with no run; then `audit-service retention apply` (a child process on the \
             service's database) starts together with the same load, which stops when the \
             process exits. Just before the process starts, the tenant's retention period is set \
             (unlocked; {} s for a run right after the baseline) so that the whole backlog is due \
             and none of the events appended after it. The service runs with \
             AUDIT_RETENTION_INTERVAL_SECS={SERVICE_RETENTION_INTERVAL_SECS}, so its own retention \
             task never runs during the bench.",
            grouped(settings.events),
            schedule.baseline_after().as_secs_f64(),
            settings.phase.as_secs_f64(),
            schedule.period(settings.phase).as_secs(),
        ),
        format!(
            "The run's time is the process's, spawn to exit (with nothing to do, the process took \
             {} ms: start, connect, list tenants), and includes the WAL checkpoint on SQLite; a run \
             that failed (its log says so, and it exits 0) is run again, with the period set anew, \
             and the time counts from the first start to the last exit. Events/s of a run = the \
             backlog ÷ that time; each batch (one transaction holding the tenant's retention row, \
             not its head) examines up to {RETENTION_BATCH} events, and the run rests after each as \
             long as it took; batches as the CLI's `retention applied` log \
             line counts them. Ratio = Append p99 during the run ÷ p99 without. Each run was \
             checked: its `audit.retention.applied` record counts exactly the backlog, from its \
             first seq to its last, and afterwards the tenant's oldest live event follows the \
             backlog.",
            millis(idle)
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cutoff of a run started `since` after the baseline's start and
    /// reading its clock `delta` later, in seconds after the backlog's end.
    fn cutoff(schedule: Schedule, since: Duration, delta: Duration) -> f64 {
        (schedule.baseline_after() + since + delta).as_secs_f64() - schedule.period(since).as_secs_f64()
    }

    #[test]
    fn schedule_puts_every_cutoff_between_the_backlog_and_the_baseline() {
        for late in [
            Duration::from_millis(3200),
            Duration::from_secs(3),
            Duration::from_millis(10),
        ] {
            let schedule = Schedule { late };
            let baseline = schedule.baseline_after().as_secs_f64();
            for since in [0.0, 0.5, 5.0, 5.3, 47.9, 600.0].map(Duration::from_secs_f64) {
                let period = schedule.period(since);
                assert_eq!(period.subsec_nanos(), 0, "{period:?}");
                for delta in [Duration::ZERO, late.mul_f64(0.999)] {
                    let at = cutoff(schedule, since, delta);
                    assert!(
                        at > 0.0 && at < baseline,
                        "{schedule:?} {since:?} {delta:?}: {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn schedule_rounds_the_period_up_to_whole_seconds() {
        let schedule = Schedule {
            late: Duration::from_millis(3200),
        };
        assert_eq!(schedule.period(Duration::from_secs(5)), Duration::from_secs(9));
        assert_eq!(
            schedule.period(Duration::from_millis(4800)),
            Duration::from_secs(8)
        );
        assert_eq!(schedule.baseline_after(), Duration::from_millis(5200));
    }

    #[test]
    fn cli_failure_is_read_from_its_log() {
        let log = "2026-12-02T05:45:24.2Z  WARN audit_service::startup::retention: retention run failed; \
                   the next run continues it tenant=bench-retention-b1 error=database: Query Error: \
                   (code: 5) database is locked\n";
        assert_eq!(
            cli_failure(log, "bench-retention-b1").as_deref(),
            Some("database: Query Error: (code: 5) database is locked")
        );
        assert_eq!(cli_failure(log, "bench-retention-b100"), None);
        assert_eq!(cli_failure(LOG, "bench-retention-b1"), None);
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

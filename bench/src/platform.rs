//! Issue 23's figure: the first page of a `Query` across tenants
//! (`x-tenant-id: *`, a platform credential) over 1 000 tenants of 1 000
//! events each, beside the first page of one of those tenants, in the same
//! run. A read across tenants also appends its `audit.log.read` record to
//! `_platform` before it answers, so its latency includes that append.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use audit_service::proto::{EventFilter, QueryRequest};

use crate::client::{Caller, connect, sample_batch};
use crate::measure::Phase;
use crate::report::{Row, Table, grouped, millis, rate};
use crate::server::{BenchDatabase, ServiceProcess};
use crate::{Settings, latency_ratio, workloads};

/// Tenants filled.
pub const TENANTS: u64 = 1000;
/// Clients filling them.
const CLIENTS: u64 = 8;

/// `bench-tenant-0042`.
fn tenant(n: u64) -> String {
    format!("bench-tenant-{n:04}")
}

pub async fn bench(settings: &Settings, database: &BenchDatabase) -> anyhow::Result<Table> {
    let mut table = Table::new(database.backend.title());
    let per_tenant = settings.events;
    let service = ServiceProcess::start(&settings.server_bin, &database.url, &[]).await?;
    let url = service.url();

    // Each tenant gets its events in one Append (batches of at most 1000).
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let channel = connect(&url).await?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= TENANTS {
                    return anyhow::Ok(());
                }
                let mut caller = Caller::new(channel.clone(), &tenant(n))?;
                let mut first = 0;
                while first < per_tenant {
                    let count = (per_tenant - first).min(1000);
                    caller
                        .append(sample_batch(first, usize::try_from(count)?, per_tenant))
                        .await?;
                    first += count;
                }
            }
        }));
    }
    for task in tasks {
        task.await.context("prefill task panicked")??;
    }
    let filled = TENANTS * per_tenant;
    table.push(Row {
        workload: format!(
            "Prefill {} tenants × {} events (Append ≤ 1000 × {CLIENTS})",
            grouped(TENANTS),
            grouped(per_tenant)
        ),
        rate: rate(filled as f64 / started.elapsed().as_secs_f64(), "ev/s"),
        ..Row::default()
    });

    let channel = connect(&url).await?;
    let one = Caller::new(channel.clone(), &tenant(TENANTS / 2))?;
    let across = Caller::platform(channel)?;
    let first_page = QueryRequest {
        filter: Some(EventFilter::default()),
        page_size: workloads::PAGE_SIZE,
        page_token: String::new(),
        order_by: String::new(),
    };
    let one_action = QueryRequest {
        filter: Some(EventFilter {
            actions: vec!["document.read".into()],
            ..EventFilter::default()
        }),
        ..first_page.clone()
    };
    // One uncounted call of each (caches, pools), then the phases.
    for (caller, request) in [(&one, &first_page), (&across, &first_page)] {
        workloads::query(caller, request.clone(), settings.phase / 5).await?;
    }
    let single = workloads::query(&one, first_page.clone(), settings.phase).await?;
    row(&mut table, "Query first page of one tenant", &single, None);
    let all = workloads::query(&across, first_page, settings.phase).await?;
    row(
        &mut table,
        "Query first page across all tenants (*)",
        &all,
        Some(&single),
    );
    let filtered = workloads::query(&across, one_action, settings.phase).await?;
    row(
        &mut table,
        "Query first page across all tenants (*), actions = [document.read]",
        &filtered,
        Some(&single),
    );
    service.stop()?;
    table.notes.push(format!(
        "Platform rows: {} tenants of {} events each; {} events a page; a read across tenants \
         (a platform JWT with x-tenant-id *) also appends its audit.log.read record to _platform \
         before it answers; ratio = p99 ÷ the one tenant's first-page p99.",
        grouped(TENANTS),
        grouped(per_tenant),
        workloads::PAGE_SIZE
    ));
    Ok(table)
}

fn row(table: &mut Table, workload: &str, phase: &Phase, beside: Option<&Phase>) {
    let p = phase.percentiles();
    table.push(Row {
        workload: workload.into(),
        rate: rate(phase.calls_per_sec(), "ops/s"),
        latency: Some(p),
        baseline: beside.map_or_else(String::new, |b| {
            format!("one tenant p99 {} ms", millis(b.percentiles().p99))
        }),
        ratio: beside.map(|b| latency_ratio(p.p99, b.percentiles().p99)),
        target: None,
    });
}

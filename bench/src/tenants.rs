//! Issue 24's capacity figure: `Append` spread over many tenants (each call
//! to the next tenant in turn) beside the same load on one tenant and beside
//! a raw INSERT of the same rows, in the same run. One tenant's appends are
//! serialized by its head row lock (group commit shares one transaction
//! between concurrent callers); different tenants' appends share no lock,
//! so the many-tenant rows show what one primary carries across tenants.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use audit_service::config::DatabaseConfig;
use audit_service::store::Store;
use tonic::transport::Channel;

use crate::baseline::RawWriter;
use crate::client::{Caller, connect, sample_batch};
use crate::measure::{Phase, closed_loop};
use crate::report::{Row, Table, grouped, rate};
use crate::server::{BenchDatabase, ServiceProcess};
use crate::{Settings, flagged, workloads};

/// The (batch, clients) cells measured.
const CELLS: [(usize, usize); 4] = [(1, 8), (1, 64), (100, 8), (100, 64)];

/// `bench-many-007`.
fn tenant(n: usize) -> String {
    format!("bench-many-{n:03}")
}

pub async fn bench(settings: &Settings, database: &BenchDatabase) -> anyhow::Result<Table> {
    let mut table = Table::new(database.backend.title());
    let tenants = settings.tenants;
    let service = ServiceProcess::start(&settings.server_bin, &database.url, &[]).await?;
    let store = Store::connect(&DatabaseConfig::new(database.url.clone()))
        .await
        .context("connecting the baseline pool")?;
    let writer = RawWriter::new(store.connection().clone());
    let url = service.url();
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(connect(&url).await?);
    }
    // Every tenant's first append (its head row) before the phases.
    let callers = many_callers(&channels, tenants)?;
    for caller in callers.iter() {
        caller.clone().append(sample_batch(0, 1, 1)).await?;
    }

    for (batch, clients) in CELLS {
        let cell = format!("b{batch}-c{clients}");
        let one = workloads::append(
            &channels,
            &format!("bench-one-{cell}"),
            batch,
            clients,
            settings.phase,
        )
        .await?;
        let many = across(&callers, batch, clients, settings.phase).await?;
        let raw = workloads::raw_insert(
            &writer,
            &format!("bench-raw-{cell}"),
            batch,
            clients,
            settings.phase,
            false,
        )
        .await?;
        let baseline = format!("INSERT {}", rate(raw.rate(), "ev/s"));
        for (what, phase) in [
            ("one tenant".to_owned(), &one),
            (format!("across {} tenants", grouped(tenants as u64)), &many),
        ] {
            let workload = flagged(
                &mut table,
                format!("Append {batch} × {clients} clients, {what}"),
                &[phase, &raw],
            );
            table.push(Row {
                workload,
                rate: rate(phase.rate(), "ev/s"),
                latency: Some(phase.percentiles()),
                baseline: baseline.clone(),
                ratio: Some(phase.rate() / raw.rate()),
                target: None,
            });
        }
    }
    store.close().await?;
    service.stop()?;
    table.notes.push(format!(
        "Many-tenant rows: each client's k-th call appends to tenant (client + k × clients) mod {}, \
         so every tenant is written in turn and no two calls in flight share a tenant while \
         clients ≤ tenants; the one-tenant rows put the same load on a single tenant; ratio = \
         events/s ÷ the raw INSERT of the same rows with the same clients (no lock, no tree).",
        grouped(tenants as u64)
    ));
    Ok(table)
}

/// One caller per tenant, spread over `channels`.
fn many_callers(channels: &[Channel], tenants: usize) -> anyhow::Result<Arc<Vec<Caller>>> {
    if channels.is_empty() || tenants == 0 {
        bail!("no connections or no tenants");
    }
    let callers = (0..tenants)
        .map(|n| Caller::new(channels[n % channels.len()].clone(), &tenant(n)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(callers))
}

/// `clients` closed loops appending batches of `batch`, each call to the
/// next tenant of the client's turn.
async fn across(
    callers: &Arc<Vec<Caller>>,
    batch: usize,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let template = Arc::new(sample_batch(0, batch, 1_000_000));
    let callers = callers.clone();
    closed_loop(clients, duration, move |client, iteration| {
        let count = callers.len() as u64;
        let index = (client as u64 + iteration * clients as u64) % count;
        let mut caller = callers[usize::try_from(index).unwrap_or(0)].clone();
        let events = template.as_ref().clone();
        async move {
            let appended = events.len() as u64;
            caller.append(events).await?;
            Ok(appended)
        }
    })
    .await
}

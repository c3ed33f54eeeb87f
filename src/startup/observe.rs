//! Wires the metrics and the access log into the server: the layer that
//! sees every call, and the `/metrics` listener when one is configured.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::observe::{MethodTable, Metrics, ObserveLayer, listener};
use crate::store::Store;
use crate::watch::WatchHub;

/// The layer counting and logging the calls of every service the server
/// runs (those of the descriptor sets reflection serves).
pub fn layer(metrics: Arc<Metrics>) -> anyhow::Result<ObserveLayer> {
    let methods = MethodTable::from_descriptor_sets(&[
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ])?;
    Ok(ObserveLayer::new(metrics, methods))
}

/// Binds `address` and serves `/metrics` there until `shutdown`; the
/// gauges of the moment are read from `store` and `hub` at each scrape.
pub async fn serve_metrics(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    store: Store,
    hub: WatchHub,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for metrics on AUDIT_METRICS_LISTEN {address}"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "metrics at http://{address}/metrics");
    let refresh: listener::Refresh = Arc::new(move |metrics: &Metrics| {
        store.read_pool_usage();
        metrics
            .watch_streams_open
            .set(i64::try_from(hub.open_streams()).unwrap_or(i64::MAX));
    });
    tokio::spawn(listener::serve(
        listener,
        metrics,
        refresh,
        listener::ListenerLimits::default(),
        shutdown,
    ));
    Ok(())
}

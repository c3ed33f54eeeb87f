//! Builds the gRPC server (AuditService, IntegrityService, PolicyService,
//! reflection v1 and v1alpha, health; gRPC-Web and the viewer at `/ui/`
//! for browsers) with its metrics and access log, and
//! the `/metrics` listener when configured, starts the retention task (and
//! the read replica's sampler), and runs until the shutdown token fires,
//! then drains.

pub mod observe;
pub mod read_replica;
pub mod retention;
pub mod signing_key;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::{AccessLog, AuditApi, IntegrityApi, PolicyApi};
use crate::auth::{AuthLayer, Authenticator, JwtVerifier};
use crate::config::{ServeConfig, TreeMaintenance, Viewer};
use crate::observe::Metrics;

use crate::store::Store;
use crate::tls::ServerTls;
use crate::transport::{MAX_HEADER_BLOCK_BYTES, MetadataLimitLayer};
use crate::viewer::{ViewerLayer, cors_layer};
use crate::watch::{WatchHub, WatchLimits};
use crate::wire::server::audit_service_server::AuditServiceServer;
use crate::wire::server::integrity_service_server::IntegrityServiceServer;
use crate::wire::server::policy_service_server::PolicyServiceServer;

/// Name under which health reports the audit service.
pub const AUDIT_SERVICE_NAME: &str = "audit.v1.AuditService";
/// Name under which health reports the integrity service.
pub const INTEGRITY_SERVICE_NAME: &str = "audit.v1.IntegrityService";
/// Name under which health reports the policy service.
pub const POLICY_SERVICE_NAME: &str = "audit.v1.PolicyService";
/// Largest request or response message.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
/// Concurrent calls (HTTP/2 streams) one connection may have open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 2048;
/// Longest a call may take to answer when the client set no deadline.
pub const MAX_CALL_DURATION: Duration = Duration::from_secs(60);
/// How often health checks that the database answers.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Longest the pools may take to close once calls have drained or their
/// grace has expired.
const CLOSE_LIMIT: Duration = Duration::from_secs(2);

/// Serves on `listener` until `shutdown` is cancelled, then stops accepting,
/// lets in-flight calls finish (up to the configured grace) and returns, at
/// most [`CLOSE_LIMIT`] after the grace; calls still running then are
/// abandoned, and their transactions roll back.
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // First, so that a bad certificate file or origin stops the start at once.
    let tls = ServerTls::from_config(&config.tls)?;
    let cors = cors_layer(&config.cors_origins)?;
    let metrics = Arc::new(Metrics::new());
    let store = Store::connect(&config.database)
        .await?
        .with_tree_maintenance(config.tree_maintenance == TreeMaintenance::On)
        .with_metrics(metrics.clone());
    let notary = signing_key::load_notary(&config.integrity, &store).await?;
    tracing::info!(verifier_key = %notary.verifier().encode(), "checkpoints are signed with this key");
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::Serving).await;
    tokio::spawn(watch_database(store.clone(), health.clone(), shutdown.clone()));
    if store.has_read_replica() {
        tokio::spawn(read_replica::follow(
            store.clone(),
            health.clone(),
            shutdown.clone(),
        ));
    }

    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let limits = WatchLimits {
        max_streams: config.max_streams,
        max_streams_per_tenant: config.max_streams_per_tenant,
        heartbeat: config.heartbeat_interval(),
        storage_readers: (config.database.max_connections / 2).max(1) as usize,
        buffer_bytes: config.watch_buffer_mib.saturating_mul(1024 * 1024),
    };
    let hub = WatchHub::start(store.clone(), limits, shutdown.clone());
    if let Some(address) = config.metrics_listen {
        observe::serve_metrics(
            address,
            metrics.clone(),
            store.clone(),
            hub.clone(),
            shutdown.clone(),
        )
        .await?;
    }
    let access = AccessLog::new(store.clone());
    let audit = AuditServiceServer::new(AuditApi::new(store.clone(), hub, notary.clone(), access.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let integrity = IntegrityServiceServer::new(IntegrityApi::new(store.clone(), notary));
    let policy = PolicyServiceServer::new(PolicyApi::new(store.clone()));
    tokio::spawn(retention::enforce(
        store.clone(),
        config.retention_interval(),
        shutdown.clone(),
    ));
    let authenticator = Arc::new(Authenticator::new(
        JwtVerifier::from_config(&config.jwt)?,
        store.clone(),
    ));

    let address = listener.local_addr()?;
    tracing::info!(%address, database = store.backend_name(), tls = tls.is_some(), "audit-service listening");
    if tls.is_none() && !address.ip().is_loopback() {
        tracing::warn!(%address, "serving plaintext beyond loopback: credentials cross the network in the clear; set AUDIT_TLS_CERT_FILE and AUDIT_TLS_KEY_FILE");
    }
    let drain_signal = {
        let shutdown = shutdown.clone();
        let health = health.clone();
        async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: draining in-flight calls");
            set_health(&health, ServingStatus::NotServing).await;
        }
    };
    let router = Server::builder()
        // A call without its own deadline still ends; Watch streams are not
        // cut by this (it bounds the wait for response headers only).
        .timeout(MAX_CALL_DURATION)
        .http2_max_header_list_size(MAX_HEADER_BLOCK_BYTES)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        // Finds clients that vanished without closing their streams.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Browsers: the viewer and gRPC-Web arrive over HTTP/1.1 too.
        .accept_http1(true)
        .layer(cors)
        .layer(ViewerLayer::new(config.ui == Viewer::On))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(observe::layer(metrics)?)
        .layer(MetadataLimitLayer)
        .layer(AuthLayer::new(authenticator))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(audit)
        .add_service(integrity)
        .add_service(policy);
    let serve: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls {
        Some(tls) => {
            tokio::spawn(tls.clone().reload_on_change(shutdown.clone()));
            Box::pin(router.serve_with_incoming_shutdown(tls.incoming(incoming(listener)), drain_signal))
        }
        None => Box::pin(router.serve_with_incoming_shutdown(incoming(listener), drain_signal)),
    };
    tokio::pin!(serve);
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    tokio::select! {
        served = &mut serve => served?,
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "drain grace expired; closing remaining calls");
        }
    }
    // Streams still open are recorded now, and the records of those that
    // ended are written, while the pools are open.
    if tokio::time::timeout(CLOSE_LIMIT, access.close()).await.is_err() {
        tracing::warn!(limit = ?CLOSE_LIMIT, "records of Watch reads still being written; leaving them");
    }
    // Closing the pools waits for every connection in use, and a call past
    // its grace may be waiting on a lock that nothing will release: it is
    // abandoned instead: unless its COMMIT was already sent, the database
    // rolls its transaction back once this process has gone (at once when
    // it is idle, within `store::CLIENT_CHECK_INTERVAL` or at worst
    // `store::LOCK_WAIT_LIMIT` when it waits on a lock).
    match tokio::time::timeout(CLOSE_LIMIT, store.close()).await {
        Ok(closed) => closed?,
        Err(_) => tracing::warn!(
            limit = ?CLOSE_LIMIT,
            "database connections still in use; leaving their transactions to roll back"
        ),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Accepted connections with `TCP_NODELAY` (without it a small response
/// waits ~40 ms for the client's delayed ACK) and TCP keepalive. The
/// builder's own TCP settings apply only to listeners it binds itself.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

/// Reflection over every service this server runs.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::proto::ERROR_DETAILS_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status(AUDIT_SERVICE_NAME, status).await;
    health.set_service_status(INTEGRITY_SERVICE_NAME, status).await;
    health.set_service_status(POLICY_SERVICE_NAME, status).await;
    health.set_service_status("", status).await;
}

/// Keeps health truthful: NOT_SERVING while the database does not answer.
async fn watch_database(store: Store, health: HealthReporter, shutdown: CancellationToken) {
    let mut serving = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(HEALTH_PROBE_INTERVAL) => {}
        }
        let reachable = tokio::time::timeout(HEALTH_PROBE_INTERVAL, store.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if reachable != serving && !shutdown.is_cancelled() {
            serving = reachable;
            if reachable {
                tracing::info!("database reachable again: SERVING");
                set_health(&health, ServingStatus::Serving).await;
            } else {
                tracing::warn!("database unreachable: NOT_SERVING");
                set_health(&health, ServingStatus::NotServing).await;
            }
        }
    }
}

//! Follows the read replica (`AUDIT_READ_DATABASE_URL`): samples it every
//! [`REPLICA_SAMPLE_INTERVAL`], which sets its gauges, sends reads back to
//! it once it answers again, and reports it in health under
//! [`READ_REPLICA_HEALTH_NAME`]: SERVING while reads go to it, NOT_SERVING
//! while it is down or lags more than
//! [`MAX_REPLICA_LAG`](crate::store::MAX_REPLICA_LAG) (reads then go to the
//! primary, and the audit service itself stays SERVING).

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::store::{REPLICA_SAMPLE_INTERVAL, Store};

/// Name under which health reports the read replica.
pub const READ_REPLICA_HEALTH_NAME: &str = "read-replica";

/// Samples the read replica until `shutdown`; returns at once without one.
pub async fn follow(store: Store, health: HealthReporter, shutdown: CancellationToken) {
    let mut reported = None;
    loop {
        let Some(sample) = store.sample_read_replica().await else {
            return;
        };
        let status = if sample.usable {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if reported != Some(status) {
            if reported.is_none() && sample.reachable && !sample.in_recovery {
                tracing::warn!(
                    "AUDIT_READ_DATABASE_URL is not a standby (pg_is_in_recovery() is false); reads use it all the same"
                );
            }
            tracing::info!(
                reachable = sample.reachable,
                in_recovery = sample.in_recovery,
                receiving = sample.receiving,
                lag_seconds = sample.lag.as_secs_f64(),
                serving = sample.usable,
                "read replica"
            );
            health.set_service_status(READ_REPLICA_HEALTH_NAME, status).await;
            reported = Some(status);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(REPLICA_SAMPLE_INTERVAL) => {}
        }
    }
}

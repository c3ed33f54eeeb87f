//! The process's Prometheus metrics, in a registry of their own (one per
//! server, so servers sharing a process, as tests do, count apart).
//!
//! The gRPC metrics follow go-grpc-middleware's `providers/prometheus`:
//! labels `grpc_type` (`unary`, `client_stream`, `server_stream`,
//! `bidi_stream`), `grpc_service`, `grpc_method`, and `grpc_code` (the
//! code's name, `OK`, `InvalidArgument`, ...) on `grpc_server_handled_total`.
//! No metric has a tenant label: per-tenant counts come from the Stats RPC.

use prometheus::{
    Encoder as _, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Labels of the per-call gRPC metrics, without the code.
const CALL_LABELS: &[&str] = &["grpc_type", "grpc_service", "grpc_method"];

/// Every metric the service exposes.
pub struct Metrics {
    registry: Registry,
    /// `grpc_server_started_total`.
    pub started: IntCounterVec,
    /// `grpc_server_handled_total`.
    pub handled: IntCounterVec,
    /// `grpc_server_handling_seconds`.
    pub handling_seconds: HistogramVec,
    /// `grpc_server_msg_received_total`.
    pub msg_received: IntCounterVec,
    /// `grpc_server_msg_sent_total`.
    pub msg_sent: IntCounterVec,
    /// `audit_events_appended_total`: events a committed append group
    /// recorded (duplicates answered from the log are not counted).
    pub events_appended: IntCounter,
    /// `audit_append_group_events`: events per group-commit transaction.
    pub append_group_events: Histogram,
    /// `audit_append_commit_seconds`: one group's write and commit.
    pub append_commit_seconds: Histogram,
    /// `audit_watch_streams_open`.
    pub watch_streams_open: IntGauge,
    /// `audit_watch_streams_lagging`: streams catching up from storage.
    pub watch_streams_lagging: IntGauge,
    /// `audit_db_connections{pool,state}`.
    pub db_connections: IntGaugeVec,
    /// `audit_retention_erased_events_total`.
    pub retention_erased: IntCounter,
    /// `audit_page_token_rejects_total`.
    pub page_token_rejects: IntCounter,
    /// `audit_auth_failures_total{reason}`.
    pub auth_failures: IntCounterVec,
    /// `audit_read_replica_up`: the standby answered its last sample.
    pub read_replica_up: IntGauge,
    /// `audit_read_replica_in_recovery`: the read replica's database
    /// reports `pg_is_in_recovery()`.
    pub read_replica_in_recovery: IntGauge,
    /// `audit_read_replica_lag_seconds`: the standby's replay lag at its
    /// last sample.
    pub read_replica_lag_seconds: Gauge,
    /// `audit_read_replica_routed_total{served_by,reason}`: reads sent to
    /// the standby (`current`, `waited` for replay) or the primary
    /// (`unavailable`, `behind`, `failed`).
    pub read_replica_routed: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all zero.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let gauge = |name: &str, help: &str| {
            let metric = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let metric =
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let started = counter_vec(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            CALL_LABELS,
        );
        let handled = counter_vec(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        );
        let handling_seconds = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            )
            .buckets(prometheus::DEFAULT_BUCKETS.to_vec()),
            CALL_LABELS,
        )
        .expect("valid metric");
        registry
            .register(Box::new(handling_seconds.clone()))
            .expect("unique metric");
        let msg_received = counter_vec(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            CALL_LABELS,
        );
        let msg_sent = counter_vec(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            CALL_LABELS,
        );
        let db_connections = IntGaugeVec::new(
            Opts::new(
                "audit_db_connections",
                "Pooled database connections by pool (write, read) and state (in_use, idle).",
            ),
            &["pool", "state"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(db_connections.clone()))
            .expect("unique metric");
        Self {
            started,
            handled,
            handling_seconds,
            msg_received,
            msg_sent,
            events_appended: counter(
                "audit_events_appended_total",
                "Events recorded by committed appends (not duplicates).",
            ),
            append_group_events: histogram(
                "audit_append_group_events",
                "Events per group-commit transaction.",
                prometheus::exponential_buckets(1.0, 4.0, 8).expect("valid buckets"),
            ),
            append_commit_seconds: histogram(
                "audit_append_commit_seconds",
                "Time to write and commit one append group.",
                prometheus::DEFAULT_BUCKETS.to_vec(),
            ),
            watch_streams_open: gauge("audit_watch_streams_open", "Watch streams open now."),
            watch_streams_lagging: gauge(
                "audit_watch_streams_lagging",
                "Watch streams catching up from storage now (behind the live feed).",
            ),
            db_connections,
            retention_erased: counter(
                "audit_retention_erased_events_total",
                "Events erased by this process's retention runs.",
            ),
            page_token_rejects: counter(
                "audit_page_token_rejects_total",
                "Query page tokens refused as malformed, altered, or of another query.",
            ),
            auth_failures: counter_vec(
                "audit_auth_failures_total",
                "Calls refused before their handler for their credential, by ErrorInfo reason.",
                &["reason"],
            ),
            read_replica_up: gauge(
                "audit_read_replica_up",
                "1 when the read replica (AUDIT_READ_DATABASE_URL) answered its last sample.",
            ),
            read_replica_in_recovery: gauge(
                "audit_read_replica_in_recovery",
                "1 when the read replica's database is a standby in recovery (pg_is_in_recovery()).",
            ),
            read_replica_lag_seconds: {
                let metric = Gauge::new(
                    "audit_read_replica_lag_seconds",
                    "Replay lag of the read replica at its last sample: now() - pg_last_xact_replay_timestamp() while it has WAL to replay, else 0.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(metric.clone()))
                    .expect("unique metric");
                metric
            },
            read_replica_routed: counter_vec(
                "audit_read_replica_routed_total",
                "Reads routed with a read replica configured, by where they ran (replica, primary) and why.",
                &["served_by", "reason"],
            ),
            registry,
        }
    }

    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> Vec<u8> {
        let mut text = Vec::new();
        // Writing into a Vec fails only on a metric without a value, which
        // the registry never holds.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut text) {
            tracing::error!(%error, "could not encode the metrics");
        }
        text
    }
}

/// Content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One unit of a gauge while a condition holds (a stream is lagging, say),
/// given back when it stops holding or the flag is dropped.
#[derive(Debug)]
pub struct GaugeFlag {
    gauge: IntGauge,
    raised: bool,
}

impl GaugeFlag {
    /// A lowered flag on `gauge`.
    pub fn new(gauge: IntGauge) -> Self {
        Self { gauge, raised: false }
    }

    /// Raises or lowers the flag.
    pub fn set(&mut self, raised: bool) {
        if raised != self.raised {
            self.raised = raised;
            if raised {
                self.gauge.inc()
            } else {
                self.gauge.dec()
            }
        }
    }
}

impl Drop for GaugeFlag {
    fn drop(&mut self) {
        self.set(false);
    }
}

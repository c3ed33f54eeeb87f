//! The `/metrics` HTTP listener (`AUDIT_METRICS_LISTEN`): HTTP/1.1 through
//! hyper, `GET /metrics` in the Prometheus text format, 404 for any other
//! path. Gauges that are a reading of the moment (database pools, Watch
//! streams) are read at each scrape.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use super::metrics::CONTENT_TYPE;

/// How long a scraper may take to send its request's headers.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the gauges of the moment into the metrics before a scrape.
pub type Refresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// Serves `/metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    refresh: Refresh,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, refresh, shutdown) = (metrics.clone(), refresh.clone(), shutdown.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let response = answer(request.method(), request.uri().path(), &metrics, &refresh);
                async move { Ok::<_, Infallible>(response) }
            });
            // A client that never finishes its request is dropped.
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(%error, "metrics connection ended");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
    }
}

fn answer(
    method: &http::Method,
    path: &str,
    metrics: &Metrics,
    refresh: &Refresh,
) -> http::Response<Full<Bytes>> {
    let plain = |status: http::StatusCode, text: &'static str| {
        let mut response = http::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if path != "/metrics" {
        return plain(
            http::StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if method != http::Method::GET && method != http::Method::HEAD {
        return plain(http::StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
    }
    refresh(metrics);
    let mut response = http::Response::new(Full::new(Bytes::from(metrics.render())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

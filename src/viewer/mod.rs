//! The log viewer on the gRPC port: its bundle at `/ui/` ([`assets`]) and
//! what lets a browser call the service (gRPC-Web, CORS).
//!
//! The layers stand in front of everything else the port runs: CORS
//! answers preflights before any credential is asked for, `/ui/` is
//! answered before gRPC-Web (which refuses HTTP/1 requests that are not
//! gRPC-Web), and gRPC-Web turns a browser's call into a gRPC call before
//! metrics, the metadata limit and authentication see it, so they treat
//! both alike. See `docs/viewer.md`.

pub mod assets;

use std::time::Duration;

use anyhow::Context as _;
use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use assets::{ViewerLayer, bundle_file};

/// Request headers a gRPC-Web call from a browser may carry: the protocol's
/// own, and the service's credentials and tenant.
const ALLOWED_HEADERS: [&str; 8] = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
    crate::auth::API_KEY_HEADER,
    crate::auth::TENANT_HEADER,
    "traceparent",
];

/// Response headers a browser page may read: the call's status and its
/// error details (`google.rpc.Status`), which gRPC-Web sends as headers
/// when a call fails before any message.
const EXPOSED_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// How long a browser may reuse a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(2 * 60 * 60);

/// The CORS policy of the gRPC port: pages of `origins` may make gRPC-Web
/// calls with the service's credential headers; with no origins, only the
/// viewer the service serves itself (same origin, which needs no CORS).
/// Credentials travel in headers, never cookies, so no origin is granted
/// `Access-Control-Allow-Credentials`.
pub fn cors_layer(origins: &[String]) -> anyhow::Result<CorsLayer> {
    let origins = origins
        .iter()
        .map(|origin| {
            let origin = origin.trim();
            if origin == "*" || !(origin.starts_with("http://") || origin.starts_with("https://")) {
                anyhow::bail!(
                    "AUDIT_CORS_ORIGINS: {origin:?} is not an origin such as https://viewer.example.com"
                );
            }
            HeaderValue::from_str(origin.trim_end_matches('/'))
                .with_context(|| format!("AUDIT_CORS_ORIGINS: {origin:?} is not a valid origin"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::POST])
        .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(PREFLIGHT_MAX_AGE))
}

//! A multi-tenant gRPC audit-log service: append security-relevant events,
//! read them back, follow them live. See `README.md` and `../shared/API.md`.

pub mod api;
pub mod auth;
pub mod cli;
pub mod codec;
pub mod config;
pub mod convert;
pub mod entity;
pub mod error;
pub mod filter;
pub mod integrity;
pub mod observe;
pub mod proto;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tenant;
pub mod tls;
pub mod transport;
pub mod viewer;
pub mod watch;
pub mod wire;

/// Name of the binary and the `source` of the events the service writes.
pub const SERVICE_NAME: &str = "audit-service";

//! The access log: one `info` line per finished call under the target
//! [`TARGET`], so `RUST_LOG=...,audit_service::access=off` turns it off and
//! `AUDIT_LOG_FORMAT=json` makes each line one JSON object. A line names
//! the caller by credential id (the API key's id, or the bearer token's
//! `sub`), never by the secret.

use std::time::Duration;

use super::CallNotes;

/// The `tracing` target of access-log lines.
pub const TARGET: &str = "audit_service::access";

/// Logs that the call to `method` finished with `code` after `elapsed`,
/// having sent `messages`.
pub fn finished(method: &str, code: &str, elapsed: Duration, messages: u64, notes: &CallNotes) {
    tracing::info!(
        target: TARGET,
        method,
        code,
        tenant = notes.tenant.as_deref(),
        credential = notes.credential.as_deref(),
        auth_failure = notes.auth_failure,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        messages_sent = messages,
        events_appended = notes.events_appended,
        events_returned = notes.events_returned,
        "call finished"
    );
}

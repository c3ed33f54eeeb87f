//! What the platform tests (`platform_reads`, `platform_streams`) share:
//! platform tokens, the CLI on a test server's database, fresh names, and
//! tenants of their own with events.

use std::process::Command;

use crate::support::{Caller, TestServer, event, hs256_token, now_secs};

/// A platform JWT for subject `sub` with `scope`, limited to `partner`.
pub fn platform_token(sub: &str, scope: &str, partner: Option<&str>) -> String {
    let mut claims = serde_json::json!({
        "sub": sub, "platform": true, "scope": scope, "exp": now_secs() + 3600,
    });
    if let Some(partner) = partner {
        claims["partner_id"] = partner.into();
    }
    hs256_token(&claims)
}

/// Runs `audit-service ARGS` on `server`'s database and returns stdout.
pub fn cli(server: &TestServer, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args(args)
        .env("DATABASE_URL", &server.database_url)
        .output()
        .expect("run audit-service");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("utf-8")
}

/// A fresh id with `prefix`.
pub fn fresh(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// A fresh action `probe.<what>_<unique>`.
pub fn fresh_action(what: &str) -> String {
    format!("probe.{what}_{}", uuid::Uuid::now_v7().simple())
}

/// Tenants of their own, each appending `per_tenant` events of `action`,
/// ordered by tenant id.
pub async fn tenants_with(server: &TestServer, count: usize, per_tenant: usize, action: &str) -> Vec<Caller> {
    let mut tenants = Vec::new();
    for _ in 0..count {
        let mut caller = server.caller().await;
        for i in 0..per_tenant {
            caller.append(vec![event(action, &format!("actor-{i}"))]).await;
        }
        tenants.push(caller);
    }
    tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    tenants
}

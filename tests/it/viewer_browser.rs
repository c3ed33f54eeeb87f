//! The viewer in a real browser: starts the service, then runs
//! `ui/test/browser/run.ts` (`npm run test:browser`: Debian's chromium,
//! headless, driven by playwright-core), which signs in, filters, pages,
//! opens and verifies an event (and sees tampered answers fail), follows
//! the log live, checks the charts' totals, sets retention and a legal
//! hold, and reads the tenant again as a platform credential with `*`. Screenshots are saved under
//! `$CARGO_TARGET_TMPDIR/viewer-browser/<backend>/`.
//!
//! Needs Node.js, `npm ci` run in `ui/` and `/usr/bin/chromium` (`.ci/run`
//! installs them). Without them the test says so on stderr and passes,
//! except under CI, where it fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use audit_service::proto::GetCheckpointRequest;

use crate::on_both_backends;
use crate::support::{ADMIN_SCOPES, Backend, TestServer, claims, hs256_token, new_tenant, now_secs};

/// The browser the test drives.
const CHROMIUM: &str = "/usr/bin/chromium";

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ui")
}

/// What is missing to run the browser test, if anything.
fn missing_tools() -> Option<String> {
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !node {
        return Some("node is not installed".into());
    }
    if !ui_dir().join("node_modules/playwright-core").is_dir() {
        return Some("ui/node_modules is missing: run `npm ci` in ui/".into());
    }
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} is missing: apt-get install chromium"));
    }
    None
}

async fn the_viewer_works_in_a_browser(backend: Backend) {
    if let Some(missing) = missing_tools() {
        if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
            panic!("the browser test cannot run under CI: {missing}");
        }
        eprintln!("SKIPPED the viewer's browser test: {missing}");
        return;
    }
    let name = match &backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres(_) => "postgres",
    };
    // Heartbeats every second, so live mode shows one soon.
    let server = TestServer::start_with(backend, |c| c.heartbeat_secs = 1).await;
    let tenant = new_tenant();
    let token = hs256_token(&claims("reviewer", &tenant, ADMIN_SCOPES));
    // A platform credential, which reads across tenants with `*`.
    let platform_token = hs256_token(&serde_json::json!({
        "sub": "platform-operator",
        "platform": true,
        "scope": "audit:read audit:admin",
        "exp": now_secs() + 3600,
    }));
    let caller = server.caller_for(&tenant).await;
    // The key the test pins: from the service over gRPC, as an operator
    // would take it from the service's log at start.
    let verifier_key = caller
        .integrity()
        .get_checkpoint(caller.request(GetCheckpointRequest {}))
        .await
        .expect("checkpoint")
        .into_inner()
        .verifier_key;
    let output = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("viewer-browser")
        .join(name);
    std::fs::create_dir_all(&output).expect("output directory");

    let mut npm = std::process::Command::new("npm");
    npm.args(["run", "--silent", "test:browser"])
        .current_dir(ui_dir())
        .env("VIEWER_URL", server.url())
        .env("VIEWER_TOKEN", &token)
        .env("VIEWER_TENANT", &tenant)
        .env("VIEWER_VERIFIER_KEY", &verifier_key)
        .env("VIEWER_PLATFORM_TOKEN", &platform_token)
        .env("VIEWER_OUTPUT", &output)
        .env("CHROMIUM", CHROMIUM);
    // The server runs on this runtime's other threads meanwhile.
    let status = tokio::task::spawn_blocking(move || npm.status())
        .await
        .expect("npm task")
        .expect("run npm");
    assert!(
        status.success(),
        "the browser test failed ({status}); screenshots in {}",
        output.display()
    );
    for shot in [
        "01-signed-in",
        "04-verified",
        "05-tampered",
        "06-live",
        "07-charts",
    ] {
        assert!(
            output.join(format!("{shot}.png")).is_file(),
            "screenshot {shot} missing"
        );
    }
    server.stop().await;
}

on_both_backends!(the_viewer_works_in_a_browser);

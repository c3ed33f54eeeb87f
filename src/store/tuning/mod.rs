//! The crate's calls into C that tune it, and their `unsafe`: SQLite's
//! process-wide configuration and per-connection options, and TCP_NODELAY
//! on the PostgreSQL sockets (the only other `unsafe` is the export's row
//! reader, `store::sqlite_rows`).
//!
//! What changes the whole process happens only in [`tune_process`], which
//! the binaries call first thing; a [`Store`](super::Store) connected
//! without it works the same, only without these speed-ups.

mod nodelay;
mod sqlite;

use std::sync::atomic::{AtomicBool, Ordering};

pub(super) use sqlite::stable_query_plans;

/// Whether the process asked for TCP_NODELAY on its sockets ([`tune_process`]).
static NAGLE_OFF: AtomicBool = AtomicBool::new(false);

/// Tunes the whole process for the service; call it first thing in `main`,
/// before anything opens a database connection. It changes, for every part
/// of the process:
/// - SQLite's memory statistics go off and SQLite allocates from mimalloc
///   (only if SQLite has not been initialized in this process yet;
///   otherwise SQLite keeps its settings);
/// - from then on, every new PostgreSQL connection of a [`Store`](super::Store)
///   sets TCP_NODELAY on every TCP socket the process has open (sqlx 0.9.0
///   leaves Nagle's algorithm on its sockets and gives no access to them).
///
/// Calling it again changes nothing more.
pub fn tune_process() {
    sqlite::sqlite_process_settings();
    NAGLE_OFF.store(true, Ordering::Relaxed);
}

/// Run by each new PostgreSQL connection: TCP_NODELAY on every TCP socket
/// of the process, the new one among them, if the process opted in.
pub(super) fn nodelay_if_tuned() -> std::io::Result<()> {
    if NAGLE_OFF.load(Ordering::Relaxed) {
        nodelay::disable_nagle_everywhere()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseConfig;
    use crate::store::Store;

    /// Whether the probe below runs in a process that called [`tune_process`].
    const PROBE_ENV: &str = "AUDIT_TUNING_PROBE";

    /// Runs [`probe_a_fresh_process`] alone in a new test process, tuned or
    /// not, and fails unless it passed: SQLite's allocator can be chosen only
    /// before the library initializes, which other tests of this process do.
    fn probe(tuned: bool) {
        let name = format!(
            "{}::probe_a_fresh_process",
            module_path!().split_once("::").unwrap().1
        );
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name.as_str(), "--exact", "--ignored", "--test-threads=1"])
            .env(PROBE_ENV, if tuned { "tuned" } else { "untuned" })
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "probe failed:\n{stdout}");
        assert!(stdout.contains("1 passed"), "probe did not run:\n{stdout}");
    }

    #[test]
    fn a_tuned_process_gives_sqlite_mimalloc_and_postgres_sockets_nodelay() {
        probe(true);
    }

    #[test]
    fn connecting_a_store_changes_nothing_process_wide() {
        probe(false);
    }

    /// Checks, in a process of its own (see [`probe`]), what a Store's
    /// connection did to SQLite's allocator and what a new PostgreSQL
    /// connection does to the process's sockets, with and without
    /// [`tune_process`]. Run by hand it does nothing.
    #[tokio::test]
    #[ignore = "run in a process of its own by the two tests above"]
    async fn probe_a_fresh_process() {
        let tuned = match std::env::var(PROBE_ENV).as_deref() {
            Ok("tuned") => true,
            Ok("untuned") => false,
            _ => return,
        };
        if tuned {
            tune_process();
        }
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
        let store = Store::connect(&DatabaseConfig::new(url)).await.unwrap();
        store.ping().await.unwrap();
        assert_eq!(sqlite::allocates_from_mimalloc(), tuned);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(!client.nodelay().unwrap(), "Nagle is on by default");
        nodelay_if_tuned().unwrap();
        assert_eq!(client.nodelay().unwrap(), tuned && cfg!(target_os = "linux"));
    }
}

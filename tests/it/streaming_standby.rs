//! A real PostgreSQL primary with a streaming hot standby, for the tests of
//! `AUDIT_READ_DATABASE_URL`: a small cluster of its own (`initdb` in a
//! temporary directory) on a free port, and a standby made from it with
//! `pg_basebackup -R -X stream`, started with `hot_standby=on` on another
//! free port. Both are stopped (and their directories removed) on drop.
//!
//! A cluster of its own rather than a standby of the test run's cluster:
//! a base backup copies the whole cluster, and a shared development
//! cluster holds gigabytes of other databases; this one takes seconds.
//! Its `pg_hba.conf` (initdb's, `-A trust`) admits replication from
//! 127.0.0.1. The server binaries refuse to run as root: as root, every
//! command runs as the `postgres` user (`runuser`), which owns the
//! directories.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where Debian's PostgreSQL 15 server binaries live; `AUDIT_TEST_PG_BIN`
/// names another directory.
const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A primary and its streaming hot standby, both running.
pub struct StreamingPair {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub primary_port: u16,
    pub standby_port: u16,
}

impl StreamingPair {
    /// Creates and starts both clusters. Panics, naming what failed, when
    /// a step fails: the caller decides before whether PostgreSQL tests
    /// run at all ([`crate::support::Backend::postgres`]), and once they
    /// do, a standby that cannot be made is a failure, never a skip.
    pub fn start() -> Self {
        let bin = std::env::var("AUDIT_TEST_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(DEFAULT_PG_BIN));
        assert!(
            bin.join("pg_basebackup").exists(),
            "no pg_basebackup in {}: install PostgreSQL's server binaries or set AUDIT_TEST_PG_BIN",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("audit-standby-")
            .tempdir()
            .expect("temp dir");
        let pair = Self {
            dir,
            bin,
            primary_port: free_port(),
            standby_port: free_port(),
        };
        pair.own_directory();
        let primary = pair.primary_dir();
        pair.run(
            "initdb",
            &["-D", &primary, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        pair.start_cluster(&primary, pair.primary_port, &["-c", "fsync=off"]);
        let port = pair.primary_port.to_string();
        pair.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &pair.standby_dir(),
                "-R",
                "-X",
                "stream",
            ],
        );
        pair.start_standby();
        pair
    }

    /// `postgres://` URL of the primary's `postgres` database.
    pub fn primary_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.primary_port)
    }

    /// `postgres://` URL of the standby's `postgres` database.
    pub fn standby_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.standby_port)
    }

    /// Stops the standby (fast shutdown: its sessions are ended).
    pub fn stop_standby(&self) {
        self.run("pg_ctl", &["-D", &self.standby_dir(), "-m", "fast", "-w", "stop"]);
    }

    /// Starts the standby again (after [`stop_standby`](Self::stop_standby)).
    pub fn start_standby(&self) {
        self.start_cluster(&self.standby_dir(), self.standby_port, &["-c", "hot_standby=on"]);
    }

    /// Runs `sql` on the standby through `psql`, returning its output.
    pub fn standby_sql(&self, sql: &str) -> String {
        psql(self.standby_port, sql)
    }

    /// Runs `sql` on the primary through `psql`, returning its output.
    pub fn primary_sql(&self, sql: &str) -> String {
        psql(self.primary_port, sql)
    }

    /// Cuts the standby off from the primary while it keeps running and
    /// answering: its `primary_conninfo` is emptied and reloaded, so its WAL
    /// receiver stops and nothing new arrives. Returns the setting, for
    /// [`reconnect_standby`](Self::reconnect_standby).
    pub fn cut_off_standby(&self) -> String {
        let conninfo = self.standby_sql("SHOW primary_conninfo");
        assert!(!conninfo.is_empty(), "the standby has no primary_conninfo");
        self.standby_sql("ALTER SYSTEM SET primary_conninfo = ''");
        self.standby_sql("SELECT pg_reload_conf()");
        conninfo
    }

    /// Gives the standby its `primary_conninfo` back: it streams again.
    pub fn reconnect_standby(&self, conninfo: &str) {
        let quoted = conninfo.replace('\'', "''");
        self.standby_sql(&format!("ALTER SYSTEM SET primary_conninfo = '{quoted}'"));
        self.standby_sql("SELECT pg_reload_conf()");
    }

    /// Waits (at most 30 s) until the standby's WAL receiver is running
    /// (`true`) or gone (`false`).
    pub async fn wait_for_receiver(&self, running: bool) {
        let wanted = if running { "t" } else { "f" };
        for _ in 0..300 {
            if self.standby_sql("SELECT EXISTS (SELECT 1 FROM pg_stat_wal_receiver)") == wanted {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the standby's WAL receiver running: not {wanted} within 30 s");
    }

    /// Stops applying WAL on the standby (it keeps receiving it).
    pub fn pause_replay(&self) {
        self.standby_sql("SELECT pg_wal_replay_pause()");
    }

    /// Applies WAL on the standby again.
    pub fn resume_replay(&self) {
        self.standby_sql("SELECT pg_wal_replay_resume()");
    }

    /// Waits until the standby has replayed everything the primary has
    /// written so far (at most 30 s).
    pub async fn wait_for_replay(&self) {
        let target = self.primary_sql("SELECT pg_current_wal_lsn()");
        for _ in 0..300 {
            let caught_up =
                self.standby_sql(&format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"));
            if caught_up == "t" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the standby did not replay up to {target} within 30 s");
    }

    fn primary_dir(&self) -> String {
        self.path("primary")
    }

    fn standby_dir(&self) -> String {
        self.path("standby")
    }

    fn socket_dir(&self) -> String {
        self.path("sockets")
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn start_cluster(&self, data: &str, port: u16, settings: &[&str]) {
        let mut options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            self.socket_dir()
        );
        for setting in settings {
            options.push(' ');
            options.push_str(setting);
        }
        let log = Path::new(data).with_extension("log").display().to_string();
        self.run("pg_ctl", &["-D", data, "-o", &options, "-l", &log, "-w", "start"]);
    }

    /// The temporary directory and the socket directory, owned by the user
    /// the server runs as.
    fn own_directory(&self) {
        std::fs::create_dir(self.socket_dir()).expect("socket dir");
        if running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(self.dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of {} failed", self.dir.path().display());
        }
    }

    /// Runs a PostgreSQL binary (as `postgres` when root), panicking with
    /// its output when it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let binary = self.bin.join(program);
        let output = self
            .command(program)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        assert!(
            output.status.success(),
            "{program} {args:?} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A PostgreSQL binary as a command, run as `postgres` when root (the
    /// server refuses root).
    fn command(&self, program: &str) -> Command {
        let binary = self.bin.join(program);
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&binary);
            command
        } else {
            Command::new(&binary)
        }
    }
}

impl Drop for StreamingPair {
    fn drop(&mut self) {
        for data in [self.standby_dir(), self.primary_dir()] {
            if Path::new(&data).join("postmaster.pid").exists() {
                let _ = self
                    .command("pg_ctl")
                    .args(["-D", &data, "-m", "immediate", "-w", "stop"])
                    .output();
            }
        }
    }
}

/// `psql -tAq` on 127.0.0.1:`port` as `postgres`: the output, trimmed.
fn psql(port: u16, sql: &str) -> String {
    let output = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-tAq",
        ])
        .args(["-p", &port.to_string(), "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql on port {port}: {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

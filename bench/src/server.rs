//! The service under test, run as a child process on a database of its own,
//! so its memory can be read from `/proc` and nothing of the bench runs in it.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sea_orm::{ConnectionTrait, Database};
use tonic::transport::Channel;

/// HS256 secret the bench's service accepts bearer tokens for.
pub const JWT_SECRET: &str = "audit-bench-secret-0123456789abcdef0123456789";

/// Which database a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// How the report names it.
    pub fn title(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// A database made for one run and removed afterwards: a SQLite file in a
/// temporary directory, or a PostgreSQL database `audit_bench_<pid>`.
pub struct BenchDatabase {
    pub backend: Backend,
    /// `DATABASE_URL` of the service and the baselines.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Directory(PathBuf),
    Postgres { admin_url: String, name: String },
    Done,
}

impl BenchDatabase {
    /// A fresh SQLite database file.
    pub fn sqlite() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("audit-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            backend: Backend::Sqlite,
            url: format!("sqlite://{}?mode=rwc", dir.join("audit.db").display()),
            cleanup: Cleanup::Directory(dir),
        })
    }

    /// A fresh PostgreSQL database, created through `admin_url` (a URL of
    /// the `postgres` database, or any other the user may connect to).
    pub async fn postgres(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("audit_bench_{}", std::process::id());
        let admin = Database::connect(admin_url)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {admin_url} (see --postgres-url)"))?;
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        admin.close().await?;
        Ok(Self {
            backend: Backend::Postgres,
            url: replace_database(admin_url, &name)?,
            cleanup: Cleanup::Postgres {
                admin_url: admin_url.to_owned(),
                name,
            },
        })
    }

    /// The PostgreSQL database `name`, created unless it exists, and kept
    /// after the run (to run again on what an earlier run filled).
    pub async fn postgres_kept(admin_url: &str, name: &str) -> anyhow::Result<Self> {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("--keep-database takes a plain database name (letters, digits, '_'), not {name:?}");
        }
        let admin = Database::connect(admin_url)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {admin_url} (see --postgres-url)"))?;
        let exists = admin
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
            ))
            .await?
            .is_some();
        if !exists {
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .with_context(|| format!("creating database {name}"))?;
        }
        admin.close().await?;
        eprintln!(
            "  database {name} {} and kept after the run",
            if exists { "reused" } else { "created" }
        );
        Ok(Self {
            backend: Backend::Postgres,
            url: replace_database(admin_url, name)?,
            cleanup: Cleanup::Done,
        })
    }

    /// Removes the database; also done (less politely) on drop.
    pub async fn remove(mut self) -> anyhow::Result<()> {
        match std::mem::replace(&mut self.cleanup, Cleanup::Done) {
            Cleanup::Directory(dir) => {
                std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?
            }
            Cleanup::Postgres { admin_url, name } => {
                let admin = Database::connect(admin_url.as_str()).await?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .with_context(|| format!("dropping database {name}"))?;
                admin.close().await?;
            }
            Cleanup::Done => {}
        }
        Ok(())
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Directory(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { name, .. } => {
                eprintln!("note: database {name} was left behind (the run failed); drop it by hand");
            }
            Cleanup::Done => {}
        }
    }
}

/// `url` with its database name replaced by `name`.
fn replace_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    if base.len() <= authority_start {
        bail!("cannot read a host from the PostgreSQL URL {url:?}");
    }
    Ok(match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    })
}

/// A running `audit-service` child process, killed when dropped.
pub struct ServiceProcess {
    pub addr: SocketAddr,
    child: Child,
}

impl ServiceProcess {
    /// Starts `binary` on `database_url` on an ephemeral port with `env`
    /// added, and waits until its health check says SERVING.
    pub async fn start(binary: &Path, database_url: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .env("DATABASE_URL", database_url)
            .env("AUDIT_LISTEN", "127.0.0.1:0")
            .env("AUDIT_JWT_SECRET", JWT_SECRET)
            .env("RUST_LOG", "warn,audit_service::startup=info")
            .env("NO_COLOR", "1")
            .env_remove("AUDIT_LOG_FORMAT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it with `cargo build --release --workspace`, or pass --server-bin)",
                    binary.display()
                )
            })?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (lines, received) = mpsc::channel();
        // Drains stderr for the life of the process, so a full pipe never
        // blocks the service; warnings and errors are passed on.
        std::thread::spawn(move || {
            let mut listening = false;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if listening {
                    eprintln!("  [service] {line}");
                } else {
                    listening = line.contains("audit-service listening");
                    let _ = lines.send(line);
                }
            }
        });
        let mut process = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
        };
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        process.addr = loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = received.recv_timeout(wait) else {
                bail!(
                    "{} did not say it was listening within 60 s; its log:\n{}",
                    binary.display(),
                    seen.join("\n")
                );
            };
            if line.contains("audit-service listening") {
                break listen_address(&line).with_context(|| format!("no address in {line:?}"))?;
            }
            seen.push(line);
        };
        process.wait_until_serving().await?;
        Ok(process)
    }

    async fn wait_until_serving(&self) -> anyhow::Result<()> {
        use tonic_health::pb::health_check_response::ServingStatus;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(channel) = Channel::from_shared(self.url())?.connect().await {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let request = tonic_health::pb::HealthCheckRequest {
                    service: "audit.v1.AuditService".into(),
                };
                if let Ok(response) = health.check(request).await
                    && response.into_inner().status == ServingStatus::Serving as i32
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the service on {} did not report SERVING within 30 s", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to 10 s for a clean exit, then kills.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    eprintln!("note: the service exited with {status}");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("note: the service did not stop within 10 s of SIGTERM; killing it");
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `address=` of the service's "listening" log line.
fn listen_address(line: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("address="))
        .and_then(|address| address.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_url_gets_the_bench_database() {
        let url = replace_database("postgres://postgres@127.0.0.1:5432/postgres", "b").unwrap();
        assert_eq!(url, "postgres://postgres@127.0.0.1:5432/b");
        let url = replace_database("postgres://u:p@h/postgres?sslmode=disable", "b").unwrap();
        assert_eq!(url, "postgres://u:p@h/b?sslmode=disable");
        assert_eq!(replace_database("postgres://h", "b").unwrap(), "postgres://h/b");
    }

    #[test]
    fn listen_address_is_read_from_the_log_line() {
        let line = "2026-11-23T08:00:00Z  INFO audit_service::startup: audit-service listening \
                    address=127.0.0.1:41234 database=\"sqlite\"";
        assert_eq!(listen_address(line), Some("127.0.0.1:41234".parse().unwrap()));
    }
}

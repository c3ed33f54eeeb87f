//! Settings of the service: each a flag of `serve` and an environment
//! variable, as the README's settings table lists them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The SQLite file used when `DATABASE_URL` is not set: `audit.db` in the
/// working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://audit.db?mode=rwc";

/// Where the audit log is stored. Global options of the command line:
/// they apply to every command, wherever they stand on the line.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseConfig {
    /// `sqlite://PATH?mode=rwc` or `postgres://...`.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        global = true
    )]
    pub url: String,
    /// Largest number of pooled database connections.
    #[arg(
        long = "db-max-connections",
        env = "AUDIT_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub max_connections: u32,
    /// `postgres://...` of a hot standby of `DATABASE_URL` (streaming
    /// replication) that serves `Query`, `Get`, `Stats`,
    /// `GetFilterMetadata`, `Export`'s chunks and `Watch`'s catch-up;
    /// unset: reads use `DATABASE_URL`. Refused with SQLite.
    #[arg(
        long = "read-database-url",
        env = "AUDIT_READ_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub read_url: Option<String>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self::new(DEFAULT_DATABASE_URL)
    }
}

impl DatabaseConfig {
    /// A configuration for `url` with default pool settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
            read_url: None,
        }
    }
}

/// How bearer tokens are verified. With neither a secret nor a public key,
/// bearer tokens are refused and only API keys authenticate.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct JwtConfig {
    /// HS256 shared secret for bearer tokens.
    #[arg(long = "jwt-secret", env = "AUDIT_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// PEM public key (RSA or EC P-256) for RS256 / ES256 bearer tokens.
    #[arg(long = "jwt-public-key-file", env = "AUDIT_JWT_PUBLIC_KEY_FILE")]
    pub public_key_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    #[arg(long = "jwt-issuer", env = "AUDIT_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// Key id (`kid`) of the configured key; tokens naming another kid are
    /// refused, and so is any kid when this is unset.
    #[arg(long = "jwt-key-id", env = "AUDIT_JWT_KEY_ID")]
    pub key_id: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long = "jwt-audience", env = "AUDIT_JWT_AUDIENCE")]
    pub audience: Option<String>,
}

/// TLS on the gRPC port (see `src/tls.rs`). Unset: plaintext.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsConfig {
    /// PEM certificate chain the gRPC port serves (TLS only when set);
    /// re-read when it changes.
    #[arg(long = "tls-cert-file", env = "AUDIT_TLS_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the certificate; re-read when it changes.
    #[arg(long = "tls-key-file", env = "AUDIT_TLS_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates: clients must present a certificate one of them
    /// signed (mTLS).
    #[arg(
        long = "tls-client-ca-file",
        env = "AUDIT_TLS_CLIENT_CA_FILE",
        requires = "cert_file"
    )]
    pub client_ca_file: Option<PathBuf>,
}

/// Who signs checkpoints, and the name of the logs they sign. Global
/// options of the command line, like [`DatabaseConfig`].
#[derive(clap::Args, Debug, Clone)]
pub struct IntegrityConfig {
    /// Prefix of each log's name in checkpoints (tenant T's log is
    /// `<origin>/T`) and the signing key's name when the service creates
    /// the key; a host name of yours, such as `audit.example.com`.
    #[arg(
        long = "log-origin",
        env = "AUDIT_LOG_ORIGIN",
        default_value = "audit-service",
        global = true
    )]
    pub origin: String,
    /// File with the Ed25519 checkpoint signing key in signed-note form
    /// (`PRIVATE+KEY+<name>+<hash>+<key>`), created with mode 0600 on first
    /// start when absent. Unset: the key is created once and kept in the
    /// database, shared by every replica.
    #[arg(long = "signing-key-file", env = "AUDIT_SIGNING_KEY_FILE", global = true)]
    pub signing_key_file: Option<PathBuf>,
}

impl Default for IntegrityConfig {
    fn default() -> Self {
        Self {
            origin: "audit-service".to_owned(),
            signing_key_file: None,
        }
    }
}

/// Whether `Append` extends the Merkle tree in its own transaction.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TreeMaintenance {
    /// Every append extends the tree (the default).
    #[default]
    On,
    /// Appends leave the tree behind until the next checkpoint, proof or
    /// delete catches it up: only for measuring the tree's cost.
    Off,
}

/// Whether the gRPC port serves the log viewer at `/ui/`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Viewer {
    /// `/ui/` serves the viewer embedded in the binary (the default).
    #[default]
    On,
    /// `/ui/` answers 404; gRPC-Web calls are still served.
    Off,
}

/// Everything `audit-service serve` needs.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeConfig {
    /// gRPC listen address.
    #[arg(long = "listen", env = "AUDIT_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Storage (global options of the command line, filled in by `main`).
    #[arg(skip)]
    pub database: DatabaseConfig,
    /// Bearer-token verification.
    #[command(flatten)]
    pub jwt: JwtConfig,
    /// TLS and mTLS on the gRPC port.
    #[command(flatten)]
    pub tls: TlsConfig,
    /// Checkpoint signing (global options, as `database`).
    #[arg(skip)]
    pub integrity: IntegrityConfig,
    /// Whether appends extend the Merkle tree at once (`on`) or leave it to
    /// the next checkpoint (`off`, for benchmarks).
    #[arg(long = "integrity", env = "AUDIT_INTEGRITY", value_enum, default_value_t = TreeMaintenance::On)]
    pub tree_maintenance: TreeMaintenance,
    /// Seconds between Watch heartbeats.
    #[arg(long = "heartbeat-secs", env = "AUDIT_HEARTBEAT_SECS", default_value_t = 15)]
    pub heartbeat_secs: u64,
    /// Watch streams the process serves at once.
    #[arg(long = "max-streams", env = "AUDIT_MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: usize,
    /// Watch streams one tenant may hold at once.
    #[arg(
        long = "max-streams-per-tenant",
        env = "AUDIT_MAX_STREAMS_PER_TENANT",
        default_value_t = 2_000
    )]
    pub max_streams_per_tenant: usize,
    /// MiB of messages all Watch streams together may hold for clients
    /// that have not taken them yet (each stream holds at most 256 KiB).
    #[arg(
        long = "watch-buffer-mib",
        env = "AUDIT_WATCH_BUFFER_MIB",
        default_value_t = DEFAULT_WATCH_BUFFER_MIB
    )]
    pub watch_buffer_mib: usize,
    /// Seconds between retention runs (each erases what tenants' retention
    /// periods make due; `audit-service retention apply` runs one now).
    #[arg(
        long = "retention-interval-secs",
        env = "AUDIT_RETENTION_INTERVAL_SECS",
        default_value_t = DEFAULT_RETENTION_INTERVAL_SECS
    )]
    pub retention_interval_secs: u64,
    /// Seconds SIGTERM waits for in-flight calls and streams before exiting.
    #[arg(
        long = "shutdown-grace-secs",
        env = "AUDIT_SHUTDOWN_GRACE_SECS",
        default_value_t = 30
    )]
    pub shutdown_grace_secs: u64,
    /// HTTP address serving Prometheus `/metrics`; unset, no metrics
    /// listener.
    #[arg(long = "metrics-listen", env = "AUDIT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Whether `/ui/` on the gRPC port serves the log viewer (`on`) or
    /// answers 404 (`off`).
    #[arg(long = "ui", env = "AUDIT_UI", value_enum, default_value_t = Viewer::On)]
    pub ui: Viewer,
    /// Origins (`https://host:port`, comma-separated) whose pages may call
    /// the service over gRPC-Web (CORS); unset: only the viewer served by
    /// the service itself (same origin).
    #[arg(long = "cors-origins", env = "AUDIT_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
}

/// Default of `--retention-interval-secs`: ten minutes.
pub const DEFAULT_RETENTION_INTERVAL_SECS: u64 = 600;

/// Default of `--watch-buffer-mib`.
pub const DEFAULT_WATCH_BUFFER_MIB: usize = 64;

impl ServeConfig {
    /// Defaults for everything but the listen address and the database,
    /// as tests and benchmarks want.
    pub fn new(listen: SocketAddr, database: DatabaseConfig) -> Self {
        Self {
            listen,
            database,
            jwt: JwtConfig::default(),
            tls: TlsConfig::default(),
            integrity: IntegrityConfig::default(),
            tree_maintenance: TreeMaintenance::On,
            heartbeat_secs: 15,
            max_streams: 10_000,
            max_streams_per_tenant: 2_000,
            watch_buffer_mib: DEFAULT_WATCH_BUFFER_MIB,
            retention_interval_secs: DEFAULT_RETENTION_INTERVAL_SECS,
            shutdown_grace_secs: 30,
            metrics_listen: None,
            ui: Viewer::On,
            cors_origins: Vec::new(),
        }
    }

    /// Interval between retention runs.
    pub fn retention_interval(&self) -> Duration {
        Duration::from_secs(self.retention_interval_secs.max(1))
    }

    /// Interval between Watch heartbeats.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }
}

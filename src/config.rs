//! Settings of the service: each a flag of `serve` and an environment
//! variable, as the README's settings table lists them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The SQLite file used when `DATABASE_URL` is not set: `audit.db` in the
/// working directory, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://audit.db?mode=rwc";

/// Where the audit log is stored.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseConfig {
    /// `sqlite://PATH?mode=rwc` or `postgres://...`.
    #[arg(long = "database-url", env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub url: String,
    /// Largest number of pooled database connections.
    #[arg(
        long = "db-max-connections",
        env = "AUDIT_DB_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub max_connections: u32,
}

impl DatabaseConfig {
    /// A configuration for `url` with default pool settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
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

/// Everything `audit-service serve` needs.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeConfig {
    /// gRPC listen address.
    #[arg(long = "listen", env = "AUDIT_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Storage.
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// Bearer-token verification.
    #[command(flatten)]
    pub jwt: JwtConfig,
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
    /// Seconds SIGTERM waits for in-flight calls and streams before exiting.
    #[arg(
        long = "shutdown-grace-secs",
        env = "AUDIT_SHUTDOWN_GRACE_SECS",
        default_value_t = 30
    )]
    pub shutdown_grace_secs: u64,
}

impl ServeConfig {
    /// Defaults for everything but the listen address and the database,
    /// as tests and benchmarks want.
    pub fn new(listen: SocketAddr, database: DatabaseConfig) -> Self {
        Self {
            listen,
            database,
            jwt: JwtConfig::default(),
            heartbeat_secs: 15,
            max_streams: 10_000,
            max_streams_per_tenant: 2_000,
            shutdown_grace_secs: 30,
        }
    }

    /// Interval between Watch heartbeats.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }
}

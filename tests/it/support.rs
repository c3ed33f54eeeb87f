//! Test harness: backends, a running server, callers and status checks.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use audit_service::config::{DatabaseConfig, ServeConfig};
use audit_service::proto::audit_service_client::AuditServiceClient;
use audit_service::proto::integrity_service_client::IntegrityServiceClient;
use audit_service::proto::policy_service_client::PolicyServiceClient;
use audit_service::proto::{self, AppendRequest, AppendResult, EventInput};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// HS256 secret every test server accepts bearer tokens for.
pub const JWT_SECRET: &str = "integration-test-secret-0123456789abcdef";
/// Every scope, as a JWT `scope` claim.
pub const ALL_SCOPES: &str = "audit:read audit:append audit:write";
/// Every scope, `audit:admin` (PolicyService) included.
pub const ADMIN_SCOPES: &str = "audit:read audit:append audit:write audit:admin";

/// Environment variable naming the PostgreSQL database of the test run.
pub const POSTGRES_URL_VAR: &str = "AUDIT_TEST_DATABASE_URL";

/// Which database a test runs on.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// PostgreSQL from `AUDIT_TEST_DATABASE_URL`. Under CI the variable is
    /// required; elsewhere its absence is reported on stderr, loudly.
    pub fn postgres() -> Option<Self> {
        match std::env::var(POSTGRES_URL_VAR) {
            Ok(url) if !url.is_empty() => Some(Backend::Postgres(url)),
            _ if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") => {
                panic!("{POSTGRES_URL_VAR} must be set under CI: PostgreSQL tests cannot be skipped there")
            }
            _ => {
                eprintln!(
                    "SKIPPED on PostgreSQL: set {POSTGRES_URL_VAR}=postgres://... to run this test there too"
                );
                None
            }
        }
    }
}

/// Defines each listed `async fn name(backend: Backend)` as two tests,
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(backend) = $crate::support::Backend::postgres() {
                        super::$name(backend).await;
                    }
                }
            )*
        }
    };
}

impl Backend {
    /// The database a separate server process uses: a fresh SQLite file in
    /// `dir`, or the test run's PostgreSQL database.
    pub fn database_url_in(&self, dir: &std::path::Path) -> String {
        match self {
            Backend::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("audit.db").display()),
            Backend::Postgres(url) => url.clone(),
        }
    }
}

/// A server running in this process on an ephemeral port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub backend: Backend,
    pub database_url: String,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
    /// How this harness's own connections reach a TLS server.
    client_tls: Option<ClientTlsConfig>,
}

impl TestServer {
    /// Starts a server on a fresh SQLite file, or on the shared PostgreSQL
    /// database (tests there keep apart by using their own tenants).
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Like [`TestServer::start`], with `configure` adjusting the settings.
    pub async fn start_with(backend: Backend, configure: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::start_with_tls(backend, None, configure).await
    }

    /// Like [`TestServer::start_with`] for a server `configure` puts on
    /// TLS: the harness's own connections (health, callers) use
    /// `client_tls`.
    pub async fn start_with_tls(
        backend: Backend,
        client_tls: Option<ClientTlsConfig>,
        configure: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        let (database_url, dir) = match &backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit.db").display());
                (url, Some(dir))
            }
            Backend::Postgres(url) => (url.clone(), None),
        };
        let mut server = Self::launch(backend, database_url, client_tls, configure).await;
        server._dir = dir;
        server
    }

    /// Starts a server on an existing database.
    pub async fn start_on(
        backend: Backend,
        database_url: String,
        configure: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        Self::launch(backend, database_url, None, configure).await
    }

    async fn launch(
        backend: Backend,
        database_url: String,
        client_tls: Option<ClientTlsConfig>,
        configure: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        // As `main` does: the in-process servers run as the binary would.
        audit_service::store::tune_process();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = ServeConfig::new(addr, DatabaseConfig::new(database_url.clone()));
        config.shutdown_grace_secs = 5;
        config.jwt.secret = Some(JWT_SECRET.to_owned());
        configure(&mut config);
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(audit_service::startup::run(config, listener, shutdown.clone()));
        let server = Self {
            addr,
            backend,
            database_url,
            shutdown,
            handle: Some(handle),
            _dir: None,
            client_tls,
        };
        server.wait_until_serving().await;
        server
    }

    async fn wait_until_serving(&self) {
        // Up to a minute: a loaded 2-core machine running the whole suite
        // on both databases once took more than 10 s to start a server.
        for _ in 0..1200 {
            if let Ok(channel) = self.endpoint().connect().await {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let request = tonic_health::pb::HealthCheckRequest {
                    service: "audit.v1.AuditService".into(),
                };
                if health.check(request).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server on {} did not become healthy", self.addr);
    }

    pub fn url(&self) -> String {
        let scheme = if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The server's endpoint, with the harness's TLS settings if any.
    pub fn endpoint(&self) -> Endpoint {
        let endpoint = Channel::from_shared(self.url()).expect("url");
        match &self.client_tls {
            Some(tls) => endpoint.tls_config(tls.clone()).expect("client TLS"),
            None => endpoint,
        }
    }

    /// A connected channel.
    pub async fn channel(&self) -> Channel {
        self.endpoint().connect().await.expect("connect")
    }

    /// A connected AuditService client.
    pub async fn client(&self) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(self.channel().await)
    }

    /// A caller of a tenant of its own, holding every scope.
    pub async fn caller(&self) -> Caller {
        self.caller_for(&new_tenant()).await
    }

    /// A caller of `tenant` with an HS256 bearer token holding every scope.
    pub async fn caller_for(&self, tenant: &str) -> Caller {
        let token = hs256_token(&claims("tester", tenant, ALL_SCOPES));
        self.caller_with(tenant, Credential::Bearer(token)).await
    }

    /// A caller of `tenant` presenting `credential`.
    pub async fn caller_with(&self, tenant: &str, credential: Credential) -> Caller {
        Caller::on(self.channel().await, tenant, credential)
    }

    /// A caller of `tenant` holding every scope, `audit:admin` included.
    pub async fn admin_for(&self, tenant: &str) -> Caller {
        let token = hs256_token(&claims("compliance-officer", tenant, ADMIN_SCOPES));
        self.caller_with(tenant, Credential::Bearer(token)).await
    }

    /// Mints an API key directly in the server's database.
    pub async fn mint_api_key(&self, tenant: &str, scopes: &[&str]) -> (uuid::Uuid, String) {
        let store = audit_service::store::Store::connect(&DatabaseConfig::new(self.database_url.clone()))
            .await
            .expect("store");
        let tenant = audit_service::tenant::TenantId::parse(tenant, "tenant").expect("tenant");
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        let (info, key) = store.create_api_key(&tenant, &scopes).await.expect("mint key");
        store.close().await.expect("close");
        (info.id, key)
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server result");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A fresh tenant id.
pub fn new_tenant() -> String {
    format!("t-{}", uuid::Uuid::now_v7().simple())
}

/// What a caller presents.
#[derive(Debug, Clone)]
pub enum Credential {
    /// `authorization: Bearer <token>`.
    Bearer(String),
    /// `x-api-key: <key>`.
    ApiKey(String),
    /// Nothing.
    None,
}

/// A client acting for one tenant.
pub struct Caller {
    pub tenant: String,
    pub credential: Credential,
    pub client: AuditServiceClient<Channel>,
    pub channel: Channel,
}

impl Caller {
    /// A caller of `tenant` presenting `credential` on `channel`.
    pub fn on(channel: Channel, tenant: &str, credential: Credential) -> Self {
        Self {
            tenant: tenant.to_owned(),
            credential,
            client: AuditServiceClient::new(channel.clone()),
            channel,
        }
    }

    /// A PolicyService client on this caller's connection (send requests
    /// made with [`Caller::request`]).
    pub fn policy(&self) -> PolicyServiceClient<Channel> {
        PolicyServiceClient::new(self.channel.clone())
    }

    /// An IntegrityService client on this caller's connection.
    pub fn integrity(&self) -> IntegrityServiceClient<Channel> {
        IntegrityServiceClient::new(self.channel.clone())
    }

    /// `message` with this caller's tenant and credential metadata.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("x-tenant-id", self.tenant.parse().expect("tenant header"));
        match &self.credential {
            Credential::Bearer(token) => {
                let value = format!("Bearer {token}").parse().expect("authorization header");
                request.metadata_mut().insert("authorization", value);
            }
            Credential::ApiKey(key) => {
                request
                    .metadata_mut()
                    .insert("x-api-key", key.parse().expect("api key header"));
            }
            Credential::None => {}
        }
        request
    }

    /// Appends `events` and returns the results, panicking on error.
    pub async fn append(&mut self, events: Vec<EventInput>) -> Vec<AppendResult> {
        let request = self.request(AppendRequest { events });
        self.client
            .append(request)
            .await
            .expect("append")
            .into_inner()
            .results
    }

    /// Queries with `request`, panicking on error.
    pub async fn query(&mut self, request: proto::QueryRequest) -> proto::QueryResponse {
        let request = self.request(request);
        self.client.query(request).await.expect("query").into_inner()
    }

    /// Every event matching `filter` in `order_by`, through all pages.
    pub async fn query_all(
        &mut self,
        filter: proto::EventFilter,
        order_by: &str,
        page_size: i32,
    ) -> Vec<proto::AuditEvent> {
        let mut events = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .query(proto::QueryRequest {
                    filter: Some(filter.clone()),
                    page_size,
                    page_token: page_token.clone(),
                    order_by: order_by.to_owned(),
                })
                .await;
            events.extend(page.events);
            if page.next_page_token.is_empty() {
                return events;
            }
            page_token = page.next_page_token;
        }
    }
}

/// A minimal valid event.
pub fn event(action: &str, actor: &str) -> EventInput {
    EventInput {
        action: action.to_owned(),
        actor: Some(proto::Actor {
            id: actor.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Asserts `status` has `code`, the `ErrorInfo` reason (domain audit.v1),
/// and, when given, a BadRequest violation naming `field`.
#[track_caller]
pub fn assert_status(status: &Status, code: Code, reason: &str, field: Option<&str>) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "audit.v1");
    if let Some(field) = field {
        let violations = &details
            .bad_request()
            .unwrap_or_else(|| panic!("no BadRequest in {status:?}"))
            .field_violations;
        assert!(
            violations.iter().any(|v| v.field == field),
            "no violation of {field} in {violations:?}"
        );
    }
}

/// The status `stream` ends with, skipping the messages before it; fails
/// when it ends without one or stays silent for `patience`.
pub async fn end_status(stream: &mut tonic::Streaming<proto::WatchResponse>, patience: Duration) -> Status {
    use tokio_stream::StreamExt as _;
    loop {
        match tokio::time::timeout(patience, stream.next())
            .await
            .expect("stream hung")
        {
            Some(Ok(_)) => continue,
            Some(Err(status)) => return status,
            None => panic!("stream ended without a status"),
        }
    }
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims valid for an hour.
pub fn claims(sub: &str, tenant: &str, scope: &str) -> serde_json::Value {
    serde_json::json!({ "sub": sub, "tenant_id": tenant, "scope": scope, "exp": now_secs() + 3600 })
}

/// `claims` signed with HS256 and the test servers' secret.
pub fn hs256_token(claims: &serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &key,
    )
    .expect("sign")
}

/// Path of a test key file in tests/fixtures.
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A server running as a separate process of the built binary.
pub struct ServerProcess {
    pub addr: SocketAddr,
    child: std::process::Child,
    log: std::sync::mpsc::Receiver<String>,
}

/// A string field of a JSON log line (`AUDIT_LOG_FORMAT=json`), at its top
/// level or among its `fields`.
pub fn json_field(line: &str, name: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value
        .get(name)
        .or_else(|| value.get("fields")?.get(name))?
        .as_str()
        .map(str::to_owned)
}

impl ServerProcess {
    /// Starts `audit-service` on `database_url` with an ephemeral port and
    /// waits for its "listening" log line.
    pub fn start(database_url: &str, extra_env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
            .env("DATABASE_URL", database_url)
            .env("AUDIT_LISTEN", "127.0.0.1:0")
            .env("AUDIT_JWT_SECRET", JWT_SECRET)
            .env("RUST_LOG", "info")
            .env_remove("AUDIT_LOG_FORMAT")
            .envs(extra_env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn audit-service");
        let stderr = child.stderr.take().expect("stderr");
        let (lines, received) = std::sync::mpsc::channel();
        // Keeps draining stderr for the life of the process, so the pipe
        // never fills up and blocks it.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut seen = Vec::new();
        let addr = loop {
            let Ok(line) = received.recv_timeout(Duration::from_secs(60)) else {
                let _ = child.kill();
                panic!(
                    "audit-service did not log that it listens; stderr:\n{}",
                    seen.join("\n")
                );
            };
            if line.contains("audit-service listening") {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
                    .map(str::to_owned)
                    .or_else(|| json_field(&line, "address"));
                break addr
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("no address in {line:?}"));
            }
            seen.push(line);
        };
        Self {
            addr,
            child,
            log: received,
        }
    }

    /// The process's log lines from after its "listening" line, as they
    /// come: each within `patience`, until the process exits.
    pub fn next_log_line(&self, patience: Duration) -> Option<String> {
        self.log.recv_timeout(patience).ok()
    }

    /// A caller of `tenant` on this process, holding every scope.
    pub async fn caller_for(&self, tenant: &str) -> Caller {
        self.caller_with_scopes(tenant, ALL_SCOPES).await
    }

    /// A caller of `tenant` on this process, holding every scope,
    /// `audit:admin` included.
    pub async fn admin_for(&self, tenant: &str) -> Caller {
        self.caller_with_scopes(tenant, ADMIN_SCOPES).await
    }

    async fn caller_with_scopes(&self, tenant: &str, scopes: &str) -> Caller {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let token = hs256_token(&claims("tester", tenant, scopes));
        Caller::on(channel, tenant, Credential::Bearer(token))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size of the process now and at its peak, in KiB, from
    /// /proc.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// A Watch of all of `tenant`'s log from seq 0, on a connection of its
    /// own: streams sharing a connection share its flow-control window, so
    /// unread neighbours would starve it on the client side.
    pub async fn watch_from_start(&self, tenant: &str) -> tonic::Streaming<proto::WatchResponse> {
        let mut own = self.caller_for(tenant).await;
        let request = own.request(proto::WatchRequest {
            filter: None,
            after_seq: Some(0),
            ..Default::default()
        });
        own.client.watch(request).await.expect("watch").into_inner()
    }

    /// `count` Watch streams of `tenant` from seq 0, spread over
    /// `connections` connections with the smallest HTTP/2 windows (streams
    /// of one connection share its window), that are never read: the
    /// client holds little, and what fills is the server's buffers.
    pub async fn unread_watch_streams(
        &self,
        tenant: &str,
        connections: usize,
        count: usize,
    ) -> Vec<tonic::Streaming<proto::WatchResponse>> {
        let mut streams = Vec::new();
        for _ in 0..connections {
            let channel = small_window_channel(&format!("http://{}", self.addr)).await;
            let mut reader = self.caller_for(tenant).await;
            reader.client = AuditServiceClient::new(channel);
            for _ in 0..count / connections {
                let request = reader.request(proto::WatchRequest {
                    filter: None,
                    after_seq: Some(0),
                    ..Default::default()
                });
                streams.push(reader.client.watch(request).await.expect("watch").into_inner());
            }
        }
        streams
    }

    /// Waits until the process's RSS stops moving (8 samples 250 ms apart
    /// within 1 MiB, at most a minute) and returns its peak (VmHWM), in KiB.
    pub async fn settled_peak_rss_kib(&self) -> u64 {
        let mut steady = 0;
        let mut last = 0;
        for _ in 0..240 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let (now, _) = self.rss_kib();
            steady = if now.abs_diff(last) < 1024 { steady + 1 } else { 0 };
            last = now;
            if steady >= 8 {
                break;
            }
        }
        self.rss_kib().1
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn crash(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// Sends SIGTERM and waits for the process to exit; true when it exited
    /// successfully.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("wait");
        status.success()
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit: its
    /// exit status, or `None` if it is still running (then it is killed).
    pub fn terminate_within(mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection to `url` with the smallest HTTP/2 windows (64 KiB): a
/// stream it stops reading stalls once they are full.
pub async fn small_window_channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("url")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect")
}

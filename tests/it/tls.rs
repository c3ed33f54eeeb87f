//! TLS and mTLS on the gRPC port: who may connect, certificate rotation
//! without a restart, and the client certificate's identity in the events
//! a call causes. Transport behaviour runs on SQLite (the database plays no
//! part in it); the recorded identity runs on both databases.

use std::path::{Path, PathBuf};
use std::time::Duration;

use audit_service::config::ServeConfig;
use audit_service::proto::{
    AppendRequest, DeleteRequest, EventFilter, EventInput, GetRequest, QueryRequest, RequestContext,
    SetRetentionRequest, WatchRequest, watch_response::Kind,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::on_both_backends;
use crate::support::{Backend, Caller, TestServer, assert_status, event, new_tenant};

/// SPIFFE id of the workload the mTLS tests call as.
const WORKLOAD: &str = "spiffe://example.org/ns/compliance/sa/reviewer";
/// How long a test waits for something that must happen (the server
/// re-reads its certificate every 2 s); generous for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(120);

// ---- certificates -------------------------------------------------------------

/// A certificate authority made for one test.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) pem: String,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1: (chain, key) PEM.
    fn server(&self) -> (String, String) {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "audit-service");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("server certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate with subject CN `common_name` and, when given,
    /// a URI SAN.
    fn client(&self, common_name: &str, uri: Option<&str>) -> Identity {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, common_name);
        if let Some(uri) = uri {
            params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("URI SAN"))];
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("client certificate");
        Identity::from_pem(cert.pem(), key.serialize_pem())
    }

    /// Client TLS trusting this CA, naming the server `localhost`.
    pub(crate) fn trusted_by_client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.pem))
            .domain_name("localhost")
    }
}

/// The server's certificate, key and client CA files, in a directory of
/// the test's own.
pub(crate) struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    pub(crate) fn new(ca: &Ca) -> Self {
        let files = Self {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        files.install(ca.server());
        files
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// Writes a new certificate and key, as a renewal does.
    fn install(&self, (cert, key): (String, String)) {
        write(&self.key(), &key);
        write(&self.cert(), &cert);
    }

    /// Settings serving these files, with `client_ca` required when given.
    fn configure(&self, config: &mut ServeConfig, client_ca: Option<&Ca>) {
        config.tls.cert_file = Some(self.cert());
        config.tls.key_file = Some(self.key());
        config.tls.client_ca_file = client_ca.map(|ca| {
            let path = self.dir.path().join("client-ca.crt");
            write(&path, &ca.pem);
            path
        });
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write PEM file");
}

pub(crate) async fn tls_server(
    backend: Backend,
    files: &TlsFiles,
    client: ClientTlsConfig,
    client_ca: Option<&Ca>,
) -> TestServer {
    TestServer::start_with_tls(backend, Some(client), |config| files.configure(config, client_ca)).await
}

/// A health check over a new connection to `endpoint`: Ok, or why not.
async fn health_check(endpoint: Endpoint) -> Result<(), String> {
    let channel: Channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
        .map_err(|status| format!("call: {status:?}"))
}

fn endpoint(server: &TestServer, tls: ClientTlsConfig) -> Endpoint {
    Channel::from_shared(format!("https://{}", server.addr))
        .expect("url")
        .tls_config(tls)
        .expect("client TLS")
}

// ---- TLS ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_the_ca_is_served_and_one_without_it_is_refused() {
    let ca = Ca::new("test CA");
    let files = TlsFiles::new(&ca);
    let server = tls_server(Backend::Sqlite, &files, ca.trusted_by_client(), None).await;

    health_check(endpoint(&server, ca.trusted_by_client()))
        .await
        .expect("a client trusting the CA is served");
    let mut caller = server.caller().await;
    caller.append(vec![event("user.login", "alice")]).await;

    let untrusting = ClientTlsConfig::new().domain_name("localhost");
    assert!(health_check(endpoint(&server, untrusting)).await.is_err());
    let other_ca = Ca::new("another CA");
    assert!(
        health_check(endpoint(&server, other_ca.trusted_by_client()))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_is_refused_on_the_tls_port() {
    let ca = Ca::new("test CA");
    let files = TlsFiles::new(&ca);
    let server = tls_server(Backend::Sqlite, &files, ca.trusted_by_client(), None).await;

    let plaintext = Channel::from_shared(format!("http://{}", server.addr)).expect("url");
    assert!(health_check(plaintext).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_certificate_file_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("absent.crt");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let database = audit_service::config::DatabaseConfig::new(format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("audit.db").display()
    ));
    let mut config = ServeConfig::new(listener.local_addr().expect("addr"), database);
    config.tls.cert_file = Some(missing.clone());
    config.tls.key_file = Some(dir.path().join("absent.key"));
    let error = audit_service::startup::run(config, listener, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("a start without its certificate");
    let message = format!("{error:#}");
    assert!(message.contains(&missing.display().to_string()), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_reaches_new_connections_while_an_open_watch_continues() {
    let old_ca = Ca::new("old CA");
    let files = TlsFiles::new(&old_ca);
    let server = tls_server(Backend::Sqlite, &files, old_ca.trusted_by_client(), None).await;
    let mut caller = server.caller().await;
    let request = caller.request(WatchRequest {
        filter: Some(EventFilter::default()),
        after_seq: Some(0),
        ..Default::default()
    });
    let mut watch = caller.client.watch(request).await.expect("watch").into_inner();
    caller.append(vec![event("user.login", "alice")]).await;
    assert_eq!(next_event_seq(&mut watch).await, 1);

    let new_ca = Ca::new("new CA");
    files.install(new_ca.server());
    let renewed = endpoint(&server, new_ca.trusted_by_client());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while let Err(error) = health_check(renewed.clone()).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was never served: {error}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The connection made before the renewal still carries calls and the
    // stream opened on it.
    caller.append(vec![event("user.logout", "alice")]).await;
    assert_eq!(next_event_seq(&mut watch).await, 2);
}

async fn next_event_seq(watch: &mut tonic::Streaming<audit_service::proto::WatchResponse>) -> u64 {
    loop {
        let message = tokio::time::timeout(PATIENCE, watch.message())
            .await
            .expect("a Watch message in time")
            .expect("the Watch stream")
            .expect("an open Watch stream");
        if let Some(Kind::Event(event)) = message.kind {
            return event.seq;
        }
    }
}

// ---- mTLS ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_certificate_of_the_client_ca() {
    let ca = Ca::new("test CA");
    let files = TlsFiles::new(&ca);
    let right = ca
        .trusted_by_client()
        .identity(ca.client("reviewer", Some(WORKLOAD)));
    let server = tls_server(Backend::Sqlite, &files, right.clone(), Some(&ca)).await;

    health_check(endpoint(&server, right))
        .await
        .expect("a client certificate of the client CA is accepted");
    assert!(
        health_check(endpoint(&server, ca.trusted_by_client()))
            .await
            .is_err(),
        "a client without a certificate is refused"
    );
    let other_ca = Ca::new("another CA");
    let wrong = ca
        .trusted_by_client()
        .identity(other_ca.client("reviewer", Some(WORKLOAD)));
    assert!(
        health_check(endpoint(&server, wrong)).await.is_err(),
        "a client certificate of another CA is refused"
    );
}

async fn the_client_identity_is_recorded_in_deletion_and_policy_events(backend: Backend) {
    let ca = Ca::new("test CA");
    let files = TlsFiles::new(&ca);
    let spiffe = ca
        .trusted_by_client()
        .identity(ca.client("reviewer", Some(WORKLOAD)));
    let server = tls_server(backend, &files, spiffe, Some(&ca)).await;
    let tenant = new_tenant();

    let mut admin = server.admin_for(&tenant).await;
    let appended = admin.append(vec![event("user.login", "alice")]).await;
    let request = admin.request(DeleteRequest {
        id: appended[0].id.clone(),
        reason: "erasure request".into(),
    });
    let deleted = admin.client.delete(request).await.expect("delete").into_inner();
    let deletion = deleted.deletion_event.expect("deletion event");
    assert_eq!(deletion.action, "audit.event.deleted");
    assert_eq!(
        deletion.request.clone().unwrap_or_default().client_identity,
        WORKLOAD
    );
    let request = admin.request(GetRequest {
        id: deletion.id.clone(),
    });
    let stored = admin.client.get(request).await.expect("get").into_inner();
    assert_eq!(stored, deletion, "the identity is stored as returned");

    // Without a SPIFFE id, the subject's common name.
    let by_name = ca
        .trusted_by_client()
        .identity(ca.client("records-officer", None));
    let channel = endpoint(&server, by_name).connect().await.expect("connect");
    let admin = Caller::on(channel, &tenant, admin.credential.clone());
    let request = admin.request(SetRetentionRequest {
        period: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        locked: false,
        reason: "records schedule RS-7".into(),
    });
    let set = admin
        .policy()
        .set_retention(request)
        .await
        .expect("set retention")
        .into_inner();
    let policy_event = set.policy_event.expect("policy event");
    assert!(
        policy_event.action.starts_with("audit.policy."),
        "{}",
        policy_event.action
    );
    assert_eq!(
        policy_event.request.unwrap_or_default().client_identity,
        "records-officer"
    );
}

/// An event whose producer says it came from `identity`.
fn claiming(identity: &str) -> EventInput {
    EventInput {
        request: Some(RequestContext {
            client_identity: identity.to_owned(),
            ..Default::default()
        }),
        ..event("document.read", "alice")
    }
}

async fn over_mtls_appended_events_carry_the_verified_identity_and_another_is_refused(backend: Backend) {
    let ca = Ca::new("test CA");
    let files = TlsFiles::new(&ca);
    let spiffe = ca
        .trusted_by_client()
        .identity(ca.client("producer", Some(WORKLOAD)));
    let server = tls_server(backend, &files, spiffe, Some(&ca)).await;
    let mut caller = server.caller().await;

    // Left empty or naming the certificate's own identity: recorded with it.
    let appended = caller
        .append(vec![event("document.read", "alice"), claiming(WORKLOAD)])
        .await;
    for result in &appended {
        let request = caller.request(GetRequest {
            id: result.id.clone(),
        });
        let stored = caller.client.get(request).await.expect("get").into_inner();
        assert_eq!(stored.request.unwrap_or_default().client_identity, WORKLOAD);
    }

    // Naming another workload: the whole batch is refused, nothing recorded.
    let request = caller.request(AppendRequest {
        events: vec![
            event("document.read", "alice"),
            claiming("spiffe://example.org/ns/other/sa/impostor"),
        ],
    });
    let refused = caller.client.append(request).await.expect_err("another identity");
    assert_status(
        &refused,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        Some("events[1].request.client_identity"),
    );
    assert_eq!(caller.query(QueryRequest::default()).await.events.len(), 2);
}

on_both_backends!(
    the_client_identity_is_recorded_in_deletion_and_policy_events,
    over_mtls_appended_events_carry_the_verified_identity_and_another_is_refused,
);

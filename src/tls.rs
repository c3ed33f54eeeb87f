//! TLS on the gRPC port, terminated here with rustls (TLS 1.2 and 1.3 only)
//! so that a renewed certificate is served without a restart: the server's
//! certificate is an `Arc<CertifiedKey>` behind a lock that a task swaps
//! when the files change. Each handshake takes the certificate current at
//! its start; connections already open keep theirs.
//!
//! With a client CA (mTLS), a client must present a certificate that CA
//! signed or the handshake fails; the certificate's identity
//! ([`client_identity`]) is then recorded in the events the call causes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use futures::{Stream, StreamExt};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// How often the certificate and key files are read for a change.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Longest a client may take to finish its handshake; a connection that
/// never does is closed, not held.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// The TLS side of the gRPC port: accepts TLS connections with the
/// certificate current at each handshake.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    certificate: Arc<CurrentCertificate>,
    files: CertificateFiles,
    /// The certificate and key bytes the served certificate was made from:
    /// the reload compares the files with these, so a change made between
    /// the start and the first check is still seen.
    loaded: Arc<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// Where the server's certificate chain and key are read from.
#[derive(Debug, Clone)]
struct CertificateFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl ServerTls {
    /// TLS as `config` sets it, or `None` for plaintext. A certificate, key
    /// or client CA that cannot be read or parsed is an error naming its
    /// file.
    pub fn from_config(config: &TlsConfig) -> anyhow::Result<Option<Self>> {
        let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) else {
            anyhow::ensure!(
                config.cert_file.is_none() && config.key_file.is_none() && config.client_ca_file.is_none(),
                "TLS needs both AUDIT_TLS_CERT_FILE and AUDIT_TLS_KEY_FILE (AUDIT_TLS_CLIENT_CA_FILE needs them too)"
            );
            return Ok(None);
        };
        let files = CertificateFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = (read(&files.cert)?, read(&files.key)?);
        let key = load_certified_key(&files, &loaded.0, &loaded.1, &provider)?;
        let certificate = Arc::new(CurrentCertificate(RwLock::new(Arc::new(key))));
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS protocol versions")?;
        let builder = match &config.client_ca_file {
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots(ca)?), provider)
                        .build()
                        .with_context(|| format!("client CA {}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut server_config = builder.with_cert_resolver(certificate.clone());
        // gRPC runs on HTTP/2 only; gRPC clients (grpc-go) require it chosen
        // by ALPN, so h2 comes first. HTTP/1.1 is for browsers and tools
        // that fetch the viewer (`/ui/`) or make gRPC-Web calls without h2.
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(Self {
            acceptor: TlsAcceptor::from(Arc::new(server_config)),
            certificate,
            files,
            loaded: Arc::new(loaded),
        }))
    }

    /// The TLS connections of `tcp`, each handshaken on a task of its own
    /// so a slow client delays no other; a failed handshake is logged and
    /// the connection closed. Ends when the server drops the stream.
    pub fn incoming<S>(&self, tcp: S) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + Send + 'static
    where
        S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
    {
        let (accepted, stream) = mpsc::channel(ACCEPTED_BACKLOG);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            let mut tcp = std::pin::pin!(tcp);
            loop {
                let next = tokio::select! {
                    () = accepted.closed() => return,
                    next = tcp.next() => next,
                };
                let connection = match next {
                    None => return,
                    Some(Err(error)) => {
                        if accepted.send(Err(error)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Ok(connection)) => connection,
                };
                let acceptor = acceptor.clone();
                let accepted = accepted.clone();
                tokio::spawn(async move {
                    let peer = connection.peer_addr().ok();
                    match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(connection)).await {
                        Ok(Ok(tls)) => {
                            // Fails only once the server has stopped accepting.
                            let _ = accepted.send(Ok(tls)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(?peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(?peer, limit = ?HANDSHAKE_LIMIT, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(stream)
    }

    /// Re-reads the certificate and key every [`RELOAD_CHECK_INTERVAL`]
    /// until `shutdown`, and serves them from the next handshake on when
    /// their contents changed and parse as a matching pair; otherwise the
    /// current certificate stays and the error is logged (once per change).
    pub async fn reload_on_change(self, shutdown: CancellationToken) {
        let mut reload = Reload::new(self);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RELOAD_CHECK_INTERVAL) => {}
            }
            reload.check();
        }
    }
}

/// The state of [`ServerTls::reload_on_change`]: the file contents last
/// seen, so that a pair is tried (and a failure logged) once per change.
/// It starts from the bytes the served certificate was made from, not from
/// a second read of the files, which could already hold a newer pair.
struct Reload {
    tls: ServerTls,
    provider: CryptoProvider,
    seen: (Option<Vec<u8>>, Option<Vec<u8>>),
}

impl Reload {
    fn new(tls: ServerTls) -> Self {
        let seen = (Some(tls.loaded.0.clone()), Some(tls.loaded.1.clone()));
        Self {
            tls,
            provider: rustls::crypto::ring::default_provider(),
            seen,
        }
    }

    /// Reads both files; when either changed, serves them if they are a
    /// usable pair, else logs why and keeps the certificate served.
    fn check(&mut self) {
        let files = &self.tls.files;
        let now = (read(&files.cert), read(&files.key));
        let current = (now.0.as_ref().ok().cloned(), now.1.as_ref().ok().cloned());
        if current == self.seen {
            return;
        }
        self.seen = current;
        let reloaded = now.0.and_then(|cert| {
            now.1
                .and_then(|key| load_certified_key(files, &cert, &key, &self.provider))
        });
        match reloaded {
            Ok(key) => {
                self.tls.certificate.replace(key);
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "TLS certificate not reloaded; serving the previous one"
                )
            }
        }
    }
}

/// The server certificate handshakes use now.
#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl CurrentCertificate {
    fn replace(&self, key: CertifiedKey) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The chain in `cert` (PEM) with the key in `key` (PEM), which must match
/// the chain's first certificate.
fn load_certified_key(
    files: &CertificateFiles,
    cert: &[u8],
    key: &[u8],
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", files.cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{}: no PEM certificate in it",
        files.cert.display()
    );
    let key = PrivateKeyDer::from_pem_slice(key)
        .with_context(|| format!("{}: no PEM private key in it", files.key.display()))?;
    CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "{} and {}: not a usable certificate and matching key",
            files.cert.display(),
            files.key.display()
        )
    })
}

/// The CAs of `path` (PEM), which client certificates must chain to.
fn client_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let pem = read(path)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| format!("{}: not a PEM certificate", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{}: not a usable CA certificate", path.display()))?;
    }
    anyhow::ensure!(!roots.is_empty(), "{}: no PEM certificate in it", path.display());
    Ok(roots)
}

/// The identity of the TLS client certificate `request` came with (mTLS),
/// as [`client_identity`] reads it; `None` on plaintext or TLS without a
/// client certificate.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .peer_certs()?
        .first()
        .and_then(|cert| client_identity(cert))
}

/// For a call that came with a verified client certificate (mTLS): that
/// certificate's identity as [`client_identity`] reads it, empty when it
/// names none; `None` on plaintext or TLS without a client certificate.
pub fn verified_identity<T>(request: &tonic::Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    let first = certs.first()?;
    Some(client_identity(first).unwrap_or_default())
}

/// The identity of a client certificate (DER): its SPIFFE id (a URI SAN
/// starting `spiffe://`) when it has one, else its subject's common name;
/// `None` when it has neither or does not parse.
pub fn client_identity(cert: &[u8]) -> Option<String> {
    use x509_cert::der::Decode as _;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;

    let cert = x509_cert::Certificate::from_der(cert).ok()?;
    let tbs = &cert.tbs_certificate;
    let spiffe = tbs.get::<SubjectAltName>().ok().flatten().and_then(|(_, names)| {
        names.0.into_iter().find_map(|name| match name {
            GeneralName::UniformResourceIdentifier(uri) if uri.as_str().starts_with("spiffe://") => {
                Some(uri.as_str().to_owned())
            }
            _ => None,
        })
    });
    spiffe.or_else(|| {
        tbs.subject
            .0
            .iter()
            .flat_map(|rdn| rdn.0.iter())
            .find(|attribute| attribute.oid == x509_cert::der::oid::db::rfc4519::CN)
            .and_then(|attribute| common_name(&attribute.value))
    })
}

/// A CN value as text: UTF8String, PrintableString or IA5String.
fn common_name(value: &x509_cert::der::Any) -> Option<String> {
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    value
        .decode_as::<Utf8StringRef<'_>>()
        .map(|s| s.as_str().to_owned())
        .or_else(|_| {
            value
                .decode_as::<PrintableStringRef<'_>>()
                .map(|s| s.as_str().to_owned())
        })
        .or_else(|_| {
            value
                .decode_as::<Ia5StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    use super::*;

    fn certificate(common_name: Option<&str>, uris: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(name) = common_name {
            params.distinguished_name.push(DnType::CommonName, name);
        }
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    #[test]
    fn the_spiffe_id_is_the_identity_even_beside_other_uris_and_a_common_name() {
        let (cert, _) = certificate(
            Some("reviewer"),
            &["https://example.org/x", "spiffe://example.org/ns/a/sa/b"],
        );
        assert_eq!(
            client_identity(&der(&cert)).as_deref(),
            Some("spiffe://example.org/ns/a/sa/b")
        );
    }

    #[test]
    fn without_a_spiffe_id_the_common_name_is_the_identity() {
        let (cert, _) = certificate(Some("reviewer"), &["https://example.org/x"]);
        assert_eq!(client_identity(&der(&cert)).as_deref(), Some("reviewer"));
    }

    #[test]
    fn a_certificate_with_neither_and_bytes_that_are_no_certificate_have_no_identity() {
        let (cert, _) = certificate(None, &[]);
        assert_eq!(client_identity(&der(&cert)), None);
        assert_eq!(client_identity(b"not a certificate"), None);
    }

    struct Files {
        dir: tempfile::TempDir,
        config: TlsConfig,
    }

    fn files((cert, key): &(String, String)) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let config = TlsConfig {
            cert_file: Some(dir.path().join("tls.crt")),
            key_file: Some(dir.path().join("tls.key")),
            client_ca_file: None,
        };
        let files = Files { dir, config };
        files.write(cert, key);
        files
    }

    impl Files {
        fn write(&self, cert: &str, key: &str) {
            std::fs::write(self.dir.path().join("tls.crt"), cert).unwrap();
            std::fs::write(self.dir.path().join("tls.key"), key).unwrap();
        }
    }

    fn served(tls: &ServerTls) -> Vec<u8> {
        tls.certificate.0.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_at_start_naming_both_files() {
        let (cert, _) = certificate(Some("a"), &[]);
        let (_, other_key) = certificate(Some("b"), &[]);
        let files = files(&(cert, other_key));
        let error = format!("{:#}", ServerTls::from_config(&files.config).unwrap_err());
        assert!(error.contains("tls.crt") && error.contains("tls.key"), "{error}");
    }

    #[test]
    fn a_file_that_is_not_pem_is_refused_at_start_naming_it() {
        let files = files(&("garbage".to_owned(), "garbage".to_owned()));
        let error = format!("{:#}", ServerTls::from_config(&files.config).unwrap_err());
        assert!(error.contains("tls.crt"), "{error}");
    }

    #[test]
    fn a_bad_pair_keeps_the_served_certificate_and_a_good_one_replaces_it() {
        let first = certificate(Some("first"), &[]);
        let files = files(&first);
        let tls = ServerTls::from_config(&files.config).unwrap().unwrap();
        let mut reload = Reload::new(tls.clone());

        let (renewed_cert, renewed_key) = certificate(Some("renewed"), &[]);
        // The new certificate written, its key not yet: not a pair.
        files.write(&renewed_cert, &first.1);
        reload.check();
        assert_eq!(served(&tls), der(&first.0));
        files.write("garbage", "garbage");
        reload.check();
        assert_eq!(served(&tls), der(&first.0));

        files.write(&renewed_cert, &renewed_key);
        reload.check();
        assert_eq!(served(&tls), der(&renewed_cert));
    }

    #[test]
    fn a_pair_renewed_between_the_start_and_the_first_check_is_served() {
        let first = certificate(Some("first"), &[]);
        let files = files(&first);
        let tls = ServerTls::from_config(&files.config).unwrap().unwrap();
        // Renewed after the start read the files, before the watcher began.
        let renewed = certificate(Some("renewed"), &[]);
        files.write(&renewed.0, &renewed.1);
        let mut reload = Reload::new(tls.clone());
        reload.check();
        assert_eq!(served(&tls), der(&renewed.0));
        // Seen once: the next check leaves it as it is.
        reload.check();
        assert_eq!(served(&tls), der(&renewed.0));
    }
}

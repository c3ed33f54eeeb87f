//! The viewer on the gRPC port: its bundle at `/ui/` (the one committed in
//! `ui/dist/`, embedded in the binary), gRPC-Web calls from a browser over
//! HTTP/1.1 with the service's credentials and statuses, CORS, `AUDIT_UI=off`,
//! and all of it over TLS. The browser itself is in `viewer_browser.rs`.
//! Serving the bundle and CORS run on SQLite (no database plays a part);
//! gRPC-Web calls run on both databases.

use std::path::PathBuf;
use std::sync::Arc;

use audit_service::config::Viewer;
use audit_service::proto::{self, AppendRequest, EventFilter, QueryRequest};
use bytes::{Buf, Bytes};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tokio::net::TcpStream;

use crate::on_both_backends;
use crate::support::{ALL_SCOPES, Backend, TestServer, claims, event, hs256_token, new_tenant};
use crate::tls::{Ca, TlsFiles, tls_server};

/// A response read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// How the test reaches the server: plaintext, or TLS trusting `ca`.
enum Link<'a> {
    Plain,
    Tls(&'a Ca),
}

/// Sends `request` to `server` over a new HTTP/1.1 connection.
async fn send(server: &TestServer, link: Link<'_>, request: Request<Full<Bytes>>) -> Answer {
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let response = match link {
        Link::Plain => exchange(tcp, request).await,
        Link::Tls(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::pem::PemObject as _;
            let cert = rustls::pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("CA PEM");
            roots.add(cert).expect("CA certificate");
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            // As a browser without HTTP/2 would: only HTTP/1.1 offered.
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let tls = connector.connect(name, tcp).await.expect("TLS handshake");
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
            exchange(tls, request).await
        }
    };
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

async fn exchange<S>(stream: S, request: Request<Full<Bytes>>) -> http::Response<hyper::body::Incoming>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    sender.send_request(request).await.expect("HTTP/1.1 exchange")
}

fn get(server: &TestServer, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("{}{path}", server.url()))
        .header("host", server.addr.to_string())
        .body(Full::default())
        .expect("request")
}

/// A gRPC-Web call (binary, `application/grpc-web+proto`) of `method` with
/// `message`, for `tenant` with a bearer `token` when given.
fn grpc_web(
    server: &TestServer,
    method: &str,
    message: &impl prost::Message,
    tenant: &str,
    token: Option<&str>,
) -> Request<Full<Bytes>> {
    let payload = message.encode_to_vec();
    let mut body = Vec::with_capacity(5 + payload.len());
    body.push(0);
    body.extend_from_slice(&u32::try_from(payload.len()).expect("size").to_be_bytes());
    body.extend_from_slice(&payload);
    let mut request = Request::post(format!("{}{method}", server.url()))
        .header("host", server.addr.to_string())
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("x-tenant-id", tenant);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(Full::new(Bytes::from(body))).expect("request")
}

/// A gRPC-Web response: its messages, and its status from the trailer
/// frame (or the headers of a trailers-only answer).
struct GrpcWebAnswer {
    messages: Vec<Bytes>,
    status: String,
    message: String,
}

fn read_grpc_web(answer: &Answer) -> GrpcWebAnswer {
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let mut messages = Vec::new();
    let mut trailers = String::new();
    let mut body = answer.body.clone();
    while body.has_remaining() {
        let flag = body.get_u8();
        let length = usize::try_from(body.get_u32()).expect("length");
        let frame = body.split_to(length);
        if flag & 0x80 != 0 {
            trailers.push_str(std::str::from_utf8(&frame).expect("trailers are text"));
        } else {
            messages.push(frame);
        }
    }
    let mut status = answer
        .headers
        .get("grpc-status")
        .map(|v| v.to_str().expect("status").to_owned());
    let mut message = answer
        .headers
        .get("grpc-message")
        .map(|v| v.to_str().expect("message").to_owned());
    for line in trailers.split("\r\n") {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "grpc-status" => status = Some(value.trim().to_owned()),
                "grpc-message" => message = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    GrpcWebAnswer {
        messages,
        status: status.expect("a gRPC-Web answer carries grpc-status"),
        message: message.unwrap_or_default(),
    }
}

/// A successful gRPC-Web call of `method` with `message` for `tenant`, as
/// `token`, over `link`: its first message.
async fn call_ok(
    server: &TestServer,
    link: Link<'_>,
    method: &str,
    message: &impl prost::Message,
    tenant: &str,
    token: &str,
) -> Bytes {
    let request = grpc_web(server, method, message, tenant, Some(token));
    let answer = read_grpc_web(&send(server, link, request).await);
    assert_eq!(answer.status, "0", "{method}: {}", answer.message);
    answer.messages.into_iter().next().unwrap_or_default()
}

fn dist(path: &str) -> Vec<u8> {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("ui/dist")
        .join(path);
    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The asset paths (`/ui/assets/...`) index.html loads.
fn assets_of(index: &str) -> Vec<String> {
    index
        .split('"')
        .filter(|part| part.starts_with("/ui/assets/"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_is_served_at_ui_with_the_committed_bundle() {
    let server = TestServer::start(Backend::Sqlite).await;

    let index = send(&server, Link::Plain, get(&server, "/ui/")).await;
    assert_eq!(index.status, StatusCode::OK);
    assert_eq!(index.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(index.body, dist("index.html"), "/ui/ is ui/dist/index.html");
    let csp = index.headers["content-security-policy"].to_str().expect("csp");
    assert!(
        csp.contains("connect-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );

    let assets = assets_of(std::str::from_utf8(&index.body).expect("utf-8"));
    assert!(assets.iter().any(|a| a.ends_with(".js")), "{assets:?}");
    assert!(assets.iter().any(|a| a.ends_with(".css")), "{assets:?}");
    for asset in assets {
        let answer = send(&server, Link::Plain, get(&server, &asset)).await;
        assert_eq!(answer.status, StatusCode::OK, "{asset}");
        assert_eq!(answer.body, dist(&asset["/ui/".len()..]), "{asset}");
        let kind = if asset.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        assert!(
            answer.headers["content-type"]
                .to_str()
                .expect("type")
                .starts_with(kind),
            "{asset}"
        );
        assert!(
            answer.headers["cache-control"]
                .to_str()
                .expect("cache")
                .contains("immutable")
        );
    }

    let bare = send(&server, Link::Plain, get(&server, "/ui")).await;
    assert_eq!(bare.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(bare.headers["location"], "/ui/");
    let missing = send(&server, Link::Plain, get(&server, "/ui/no-such-file.js")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let mut post = get(&server, "/ui/");
    *post.method_mut() = Method::POST;
    assert_eq!(
        send(&server, Link::Plain, post).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_ui_off_answers_404_under_ui_and_still_serves_grpc_web() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.ui = Viewer::Off).await;
    for path in ["/ui/", "/ui", "/ui/index.html"] {
        let answer = send(&server, Link::Plain, get(&server, path)).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
    }
    let tenant = new_tenant();
    let token = hs256_token(&claims("viewer", &tenant, ALL_SCOPES));
    call_ok(
        &server,
        Link::Plain,
        "/audit.v1.AuditService/GetFilterMetadata",
        &proto::GetFilterMetadataRequest {},
        &tenant,
        &token,
    )
    .await;
    server.stop().await;
}

async fn grpc_web_calls_over_http1_append_and_read_back(backend: Backend) {
    let server = TestServer::start(backend).await;
    let tenant = new_tenant();
    let token = hs256_token(&claims("viewer", &tenant, ALL_SCOPES));
    let append = AppendRequest {
        events: vec![event("user.login", "alice"), event("user.logout", "alice")],
    };
    let answer = call_ok(
        &server,
        Link::Plain,
        "/audit.v1.AuditService/Append",
        &append,
        &tenant,
        &token,
    )
    .await;
    let appended = proto::AppendResponse::decode(answer).expect("AppendResponse");
    assert_eq!(appended.results.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);

    let query = QueryRequest {
        filter: Some(EventFilter {
            actions: vec!["user.logout".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer = call_ok(
        &server,
        Link::Plain,
        "/audit.v1.AuditService/Query",
        &query,
        &tenant,
        &token,
    )
    .await;
    let page = proto::QueryResponse::decode(answer).expect("QueryResponse");
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].seq, 2);
    assert_eq!(page.events[0].tenant_id, tenant);
    server.stop().await;
}

async fn a_grpc_web_call_without_a_credential_is_unauthenticated_with_its_details(backend: Backend) {
    let server = TestServer::start(backend).await;
    let request = grpc_web(
        &server,
        "/audit.v1.AuditService/Query",
        &QueryRequest::default(),
        &new_tenant(),
        None,
    );
    let answer = send(&server, Link::Plain, request).await;
    // A browser reads these only if CORS exposes them; same origin, here.
    assert!(
        answer.headers.contains_key("grpc-status-details-bin"),
        "{:?}",
        answer.headers
    );
    let read = read_grpc_web(&answer);
    assert_eq!(read.status, "16", "UNAUTHENTICATED: {}", read.message);
    server.stop().await;
}

on_both_backends!(
    grpc_web_calls_over_http1_append_and_read_back,
    a_grpc_web_call_without_a_credential_is_unauthenticated_with_its_details,
);

fn preflight(server: &TestServer, origin: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::OPTIONS)
        .uri(format!("{}/audit.v1.AuditService/Query", server.url()))
        .header("host", server.addr.to_string())
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,x-api-key,x-tenant-id,authorization",
        )
        .body(Full::default())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_lets_configured_origins_call_and_no_other() {
    let allowed = "https://viewer.example.com";
    let server = TestServer::start_with(Backend::Sqlite, |c| c.cors_origins = vec![allowed.to_owned()]).await;

    let answer = send(&server, Link::Plain, preflight(&server, allowed)).await;
    assert!(answer.status.is_success(), "{:?}", answer.status);
    assert_eq!(answer.headers["access-control-allow-origin"], allowed);
    let headers = answer.headers["access-control-allow-headers"]
        .to_str()
        .expect("headers");
    for needed in [
        "x-api-key",
        "x-tenant-id",
        "authorization",
        "x-grpc-web",
        "content-type",
    ] {
        assert!(headers.contains(needed), "{needed} not allowed: {headers}");
    }
    assert!(!answer.headers.contains_key("access-control-allow-credentials"));

    let other = send(
        &server,
        Link::Plain,
        preflight(&server, "https://evil.example.net"),
    )
    .await;
    assert!(
        !other.headers.contains_key("access-control-allow-origin"),
        "{:?}",
        other.headers
    );

    // The actual call's answer lets the allowed page read the status.
    let tenant = new_tenant();
    let token = hs256_token(&claims("viewer", &tenant, ALL_SCOPES));
    let mut call = grpc_web(
        &server,
        "/audit.v1.AuditService/GetFilterMetadata",
        &proto::GetFilterMetadataRequest {},
        &tenant,
        Some(&token),
    );
    call.headers_mut()
        .insert("origin", allowed.parse().expect("origin"));
    let answer = send(&server, Link::Plain, call).await;
    assert_eq!(answer.headers["access-control-allow-origin"], allowed);
    let exposed = answer.headers["access-control-expose-headers"]
        .to_str()
        .expect("exposed");
    assert!(exposed.contains("grpc-status-details-bin"), "{exposed}");
    assert_eq!(read_grpc_web(&answer).status, "0");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_viewer_and_grpc_web_are_served_and_grpc_keeps_http2() {
    let ca = Ca::new("viewer test CA");
    let files = TlsFiles::new(&ca);
    // The harness checks health over gRPC (HTTP/2 chosen by ALPN) before
    // the server counts as started.
    let server = tls_server(Backend::Sqlite, &files, ca.trusted_by_client(), None).await;

    let index = send(&server, Link::Tls(&ca), get(&server, "/ui/")).await;
    assert_eq!(index.status, StatusCode::OK);
    assert_eq!(index.body, dist("index.html"));

    let tenant = new_tenant();
    let token = hs256_token(&claims("viewer", &tenant, ALL_SCOPES));
    let append = AppendRequest {
        events: vec![event("user.login", "alice")],
    };
    call_ok(
        &server,
        Link::Tls(&ca),
        "/audit.v1.AuditService/Append",
        &append,
        &tenant,
        &token,
    )
    .await;

    let mut caller = server.caller_for(&tenant).await;
    let page = caller.query(QueryRequest::default()).await;
    assert_eq!(page.events.len(), 1, "the gRPC-Web append is read back over gRPC");
    server.stop().await;
}

//! The viewer's built bundle (`ui/dist/`, committed), embedded in the
//! binary, served under `/ui/`; or 404 there when the viewer is off.

use std::borrow::Cow;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::{Either, Ready, ready};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tonic::body::Body;
use tower::{Layer, Service};

/// Path prefix the viewer is served under.
pub const UI_PATH: &str = "/ui/";

/// What the browser may load and where the page may connect: only this
/// origin (the page calls the service it came from), no inline script,
/// never framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

#[derive(rust_embed::Embed)]
#[folder = "ui/dist/"]
struct Bundle;

/// The bytes of `path` in the embedded bundle (`index.html`,
/// `assets/...`), if it holds that file.
pub fn bundle_file(path: &str) -> Option<Cow<'static, [u8]>> {
    Bundle::get(path).map(|file| file.data)
}

/// Tower layer answering `/ui` and `/ui/...`; every other path goes on to
/// the gRPC services.
#[derive(Debug, Clone, Copy)]
pub struct ViewerLayer {
    enabled: bool,
}

impl ViewerLayer {
    /// Serves the bundle when `enabled`, else answers 404 under `/ui/`.
    pub fn new(enabled: bool) -> Self {
        Self { enabled }
    }
}

impl<S> Layer<S> for ViewerLayer {
    type Service = ViewerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ViewerService {
            inner,
            enabled: self.enabled,
        }
    }
}

/// The service [`ViewerLayer`] wraps.
#[derive(Debug, Clone)]
pub struct ViewerService<S> {
    inner: S,
    enabled: bool,
}

impl<S> Service<Request<Body>> for ViewerService<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if path != "/ui" && !path.starts_with(UI_PATH) {
            return Either::Left(self.inner.call(request));
        }
        let response = if self.enabled {
            answer(
                request.method(),
                path,
                request.headers().get(header::IF_NONE_MATCH),
            )
        } else {
            plain(StatusCode::NOT_FOUND, "the viewer is off (AUDIT_UI=off)\n")
        };
        Either::Right(ready(Ok(response)))
    }
}

/// The answer to `method path` under `/ui`.
fn answer(method: &Method, path: &str, if_none_match: Option<&HeaderValue>) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if path == "/ui" {
        let mut response = plain(StatusCode::PERMANENT_REDIRECT, "");
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static(UI_PATH));
        return response;
    }
    let name = match &path[UI_PATH.len()..] {
        "" => "index.html",
        name => name,
    };
    let Some(file) = Bundle::get(name) else {
        return plain(StatusCode::NOT_FOUND, "no such file in the viewer\n");
    };
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..16]));
    let cache = if name.starts_with("assets/") {
        // Vite names these after their content: a new build, a new name.
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let not_modified = if_none_match.is_some_and(|tag| tag.as_bytes() == etag.as_bytes());
    let (status, body) = if not_modified {
        (StatusCode::NOT_MODIFIED, Body::empty())
    } else if method == Method::HEAD {
        (StatusCode::OK, Body::empty())
    } else {
        (
            StatusCode::OK,
            Body::new(Full::new(Bytes::from(file.data.into_owned()))),
        )
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(name)));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// A text answer with `status`.
fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::new(Full::new(Bytes::from_static(text.as_bytes()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The media type of a bundle file, by its extension.
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! What every gRPC call leaves behind when it finishes: the Prometheus
//! gRPC metrics and one access-log line. One tower layer, outermost around
//! the tonic server, sees every call (health and reflection too, and calls
//! refused before any handler) and its final code, whether the code came
//! in the response headers or in the trailers of a stream.
//!
//! Inner layers and handlers add what only they know (the caller, events
//! appended or returned, a refused page token) to the call's [`CallRecord`],
//! found in the request's extensions.

pub mod access_log;
pub mod frames;
pub mod listener;
pub mod metrics;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::Frame;
use tonic::Code;
use tonic::body::Body;
use tower::{Layer, Service};

use frames::MessageCounter;
pub use metrics::Metrics;

/// What the layers and the handler of one call note about it, read when
/// the call finishes (cheap clones share it).
#[derive(Clone, Default)]
pub struct CallRecord(Arc<Mutex<CallNotes>>);

/// The notes of a [`CallRecord`].
#[derive(Debug, Default, Clone)]
pub struct CallNotes {
    /// The tenant the call acted for, once authenticated.
    pub tenant: Option<String>,
    /// `api_key:<id>` or `jwt:<sub>`: who, never the secret.
    pub credential: Option<String>,
    /// The `ErrorInfo` reason the credential was refused with.
    pub auth_failure: Option<&'static str>,
    /// Events the call appended.
    pub events_appended: Option<u64>,
    /// Events the call returned.
    pub events_returned: Option<u64>,
    /// Whether the call's page token was refused.
    pub page_token_rejected: bool,
}

impl CallRecord {
    /// The record of the call `request` belongs to; a detached one (whose
    /// notes go nowhere) when the layer is not installed.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        request.extensions().get::<Self>().cloned().unwrap_or_default()
    }

    /// The record among a call's HTTP extensions, as inner layers see it.
    pub fn in_extensions(extensions: &http::Extensions) -> Self {
        extensions.get::<Self>().cloned().unwrap_or_default()
    }

    fn note(&self, write: impl FnOnce(&mut CallNotes)) {
        write(&mut self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    }

    /// The call was authenticated as `credential` for `tenant`.
    pub fn identified(&self, tenant: &str, credential: String) {
        self.note(|n| {
            n.tenant = Some(tenant.to_owned());
            n.credential = Some(credential);
        });
    }

    /// The call's credential was refused with `reason`.
    pub fn auth_failed(&self, reason: &'static str) {
        self.note(|n| n.auth_failure = Some(reason));
    }

    /// The call appended `count` events.
    pub fn appended(&self, count: u64) {
        self.note(|n| n.events_appended = Some(count));
    }

    /// The call returned `count` events (so far, for a stream).
    pub fn returned(&self, count: u64) {
        self.note(|n| n.events_returned = Some(count));
    }

    /// The call's stream handed `count` more events to the transport.
    pub fn returned_more(&self, count: u64) {
        self.note(|n| n.events_returned = Some(n.events_returned.unwrap_or(0).saturating_add(count)));
    }

    /// The call's page token was refused.
    pub fn page_token_rejected(&self) {
        self.note(|n| n.page_token_rejected = true);
    }

    fn notes(&self) -> CallNotes {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// How a method streams, as go-grpc-middleware's `grpc_type` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallType {
    /// One request, one response.
    Unary,
    /// A stream of requests, one response.
    ClientStream,
    /// One request, a stream of responses.
    ServerStream,
    /// Streams both ways.
    BidiStream,
}

impl CallType {
    fn label(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::ClientStream => "client_stream",
            Self::ServerStream => "server_stream",
            Self::BidiStream => "bidi_stream",
        }
    }
}

/// The methods the server serves, by path (`/package.Service/Method`):
/// any other path is counted as service and method `unknown`, so a client
/// cannot add series by inventing paths.
#[derive(Debug, Default)]
pub struct MethodTable {
    methods: HashMap<String, (String, String, CallType)>,
}

impl MethodTable {
    /// The methods of every service in the encoded file descriptor `sets`.
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> anyhow::Result<Self> {
        let mut methods = HashMap::new();
        for set in sets {
            let pool = prost_reflect::DescriptorPool::decode(*set)?;
            for service in pool.services() {
                for method in service.methods() {
                    let kind = match (method.is_client_streaming(), method.is_server_streaming()) {
                        (false, false) => CallType::Unary,
                        (true, false) => CallType::ClientStream,
                        (false, true) => CallType::ServerStream,
                        (true, true) => CallType::BidiStream,
                    };
                    methods.insert(
                        format!("/{}/{}", service.full_name(), method.name()),
                        (service.full_name().to_owned(), method.name().to_owned(), kind),
                    );
                }
            }
        }
        Ok(Self { methods })
    }

    fn labels(&self, path: &str) -> [String; 3] {
        match self.methods.get(path) {
            Some((service, method, kind)) => [kind.label().to_owned(), service.clone(), method.clone()],
            None => ["unknown".into(), "unknown".into(), "unknown".into()],
        }
    }
}

/// Tower layer counting and logging every call (see the module docs).
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    methods: Arc<MethodTable>,
}

impl ObserveLayer {
    /// Counts into `metrics`, labelling the calls of `methods`.
    pub fn new(metrics: Arc<Metrics>, methods: MethodTable) -> Self {
        Self {
            metrics,
            methods: Arc::new(methods),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            methods: self.methods.clone(),
        }
    }
}

/// The service [`ObserveLayer`] wraps around the server.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
    methods: Arc<MethodTable>,
}

impl<S> Service<http::Request<Body>> for Observe<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let labels = self.methods.labels(&path);
        let record = CallRecord::default();
        request.extensions_mut().insert(record.clone());
        let mut call = Call {
            metrics: self.metrics.clone(),
            path,
            labels,
            record,
            started: Instant::now(),
            code: None,
            sent: 0,
            finished: false,
        };
        call.metrics.started.with_label_values(&call.labels).inc();
        let received = call.metrics.msg_received.with_label_values(&call.labels);
        let request = request.map(|body| {
            Body::new(CountedRequest {
                inner: body,
                counter: MessageCounter::default(),
                received,
            })
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            match response {
                Ok(response) => {
                    call.code = grpc_status(response.headers());
                    Ok(response.map(|body| {
                        Body::new(ObservedResponse {
                            inner: body,
                            counter: MessageCounter::default(),
                            call,
                        })
                    }))
                }
                Err(error) => {
                    call.code = Some(Code::Unknown);
                    call.finish();
                    Err(error)
                }
            }
        })
    }
}

/// The code in a `grpc-status` header or trailer.
fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// A call between its start and its end; counted as finished once, with
/// `CANCELLED` when it is dropped before its code was known (the client
/// went away).
struct Call {
    metrics: Arc<Metrics>,
    path: String,
    labels: [String; 3],
    record: CallRecord,
    started: Instant,
    code: Option<Code>,
    sent: u64,
    finished: bool,
}

impl Call {
    fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let code = self.code.unwrap_or(Code::Cancelled);
        let elapsed = self.started.elapsed();
        let [kind, service, method] = &self.labels;
        let metrics = &self.metrics;
        metrics
            .handled
            .with_label_values(&[kind, service, method, code_name(code)])
            .inc();
        metrics
            .handling_seconds
            .with_label_values(&self.labels)
            .observe(elapsed.as_secs_f64());
        let notes = self.record.notes();
        if let Some(reason) = notes.auth_failure {
            metrics.auth_failures.with_label_values(&[reason]).inc();
        }
        if notes.page_token_rejected {
            metrics.page_token_rejects.inc();
        }
        access_log::finished(&self.path, code_name(code), elapsed, self.sent, &notes);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A request body counting the messages it carries.
struct CountedRequest {
    inner: Body,
    counter: MessageCounter,
    received: prometheus::IntCounter,
}

impl http_body::Body for CountedRequest {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.received.inc_by(this.counter.feed(data));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body counting its messages and finishing its call at the
/// trailers (or when dropped).
struct ObservedResponse {
    inner: Body,
    counter: MessageCounter,
    call: Call,
}

impl http_body::Body for ObservedResponse {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let sent = this.counter.feed(data);
                    this.call.sent += sent;
                    this.call
                        .metrics
                        .msg_sent
                        .with_label_values(&this.call.labels)
                        .inc_by(sent);
                } else if let Some(trailers) = frame.trailers_ref() {
                    if let Some(code) = grpc_status(trailers) {
                        this.call.code = Some(code);
                    }
                    this.call.finish();
                }
            }
            Poll::Ready(Some(Err(status))) => {
                this.call.code = Some(status.code());
                this.call.finish();
            }
            Poll::Ready(None) => {
                if this.call.code.is_none() {
                    // Ended without a status: not a gRPC answer.
                    this.call.code = Some(Code::Unknown);
                }
                this.call.finish();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The name of `code` as gRPC's Go implementation spells it (`OK`,
/// `InvalidArgument`, ...), the `grpc_code` label's values.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

//! What the gRPC port enforces before any handler or credential check: the
//! size of a call's metadata, answered as a gRPC status.
//!
//! HTTP/2 itself refuses a header block larger than the server's
//! `SETTINGS_MAX_HEADER_LIST_SIZE` with a bare HTTP 431, which gRPC clients
//! report as an unknown or internal error. So the transport limit is set
//! well above [`MAX_METADATA_BYTES`] ([`MAX_HEADER_BLOCK_BYTES`]) and this
//! layer answers everything between them with RESOURCE_EXHAUSTED and an
//! `ErrorInfo`.

use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use http::HeaderMap;
use tonic::Status;
use tower::{Layer, Service};

use crate::error::Error;

/// Largest metadata a call may carry, counted as HTTP/2 counts a header
/// list (name + value + 32 bytes per entry).
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Largest header block the HTTP/2 layer accepts at all; beyond it the
/// connection-level answer is HTTP 431.
pub const MAX_HEADER_BLOCK_BYTES: u32 = 256 * 1024;

/// The size of `headers` as HTTP/2's `SETTINGS_MAX_HEADER_LIST_SIZE`
/// counts it (RFC 9113 section 6.5.2).
pub fn header_list_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

/// Tower layer refusing calls whose metadata exceeds [`MAX_METADATA_BYTES`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MetadataLimitLayer;

impl<S> Layer<S> for MetadataLimitLayer {
    type Service = MetadataLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetadataLimit { inner }
    }
}

/// The service [`MetadataLimitLayer`] wraps.
#[derive(Debug, Clone)]
pub struct MetadataLimit<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for MetadataLimit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let size = header_list_size(request.headers());
        if size > MAX_METADATA_BYTES {
            let error = Error::ResourceExhausted(format!(
                "the call's metadata is {size} bytes; at most {MAX_METADATA_BYTES} are accepted"
            ));
            return Either::Right(ready(Ok(Status::from(error).into_http())));
        }
        Either::Left(self.inner.call(request))
    }
}

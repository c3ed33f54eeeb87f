//! The `/metrics` HTTP listener (`AUDIT_METRICS_LISTEN`): HTTP/1.1 through
//! hyper, `GET /metrics` in the Prometheus text format, 404 for any other
//! path. Gauges that are a reading of the moment (database pools, Watch
//! streams) are read at each scrape.
//!
//! One request per connection, and what a connection may hold is bounded
//! ([`ListenerLimits`]): a client that connects and sends nothing, sends
//! its request slowly or reads the answer slowly, or thousands of them,
//! hold at most [`ListenerLimits::connections`] tasks and buffers, each for
//! a bounded time.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use super::metrics::CONTENT_TYPE;

/// Reads the gauges of the moment into the metrics before a scrape.
pub type Refresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// What the `/metrics` listener lets its clients hold.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Connections served at once. A connection beyond them is closed as
    /// soon as it is accepted, unanswered: scrapers are few, and one that
    /// is turned away scrapes again at its next interval.
    pub connections: usize,
    /// Longest a client may take to send its request's head (the timer
    /// starts at the accept, so a client that sends nothing is closed too).
    pub header_read: Duration,
    /// Longest a connection may stay open, whatever it is doing (a
    /// request body that never ends, an answer read a byte at a time).
    pub connection: Duration,
    /// Most bytes buffered for a connection; a request head that does not
    /// fit in [`Self::header_bytes`] is answered 431 and the connection
    /// closed.
    pub buffer_bytes: usize,
    /// Most bytes of a request head (request line and headers).
    pub header_bytes: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            connections: 64,
            header_read: Duration::from_secs(10),
            connection: Duration::from_secs(30),
            // hyper's smallest buffer; a scrape's head is a few hundred bytes.
            buffer_bytes: 8192,
            header_bytes: 8192,
        }
    }
}

/// Serves `/metrics` on `listener` with `limits` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    refresh: Refresh,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(false)
        .max_buf_size(limits.buffer_bytes)
        .max_header_size(limits.header_bytes);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, limit = limits.connections, "metrics listener: too many connections; closing this one");
            drop(stream);
            continue;
        };
        let (metrics, refresh, shutdown, builder) = (
            metrics.clone(),
            refresh.clone(),
            shutdown.clone(),
            builder.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let response = answer(request.method(), request.uri().path(), &metrics, &refresh);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                served = tokio::time::timeout(limits.connection, connection) => match served {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "metrics connection ended"),
                    Err(_) => tracing::debug!(%peer, limit = ?limits.connection, "metrics connection open too long; closed"),
                },
                () = shutdown.cancelled() => {}
            }
        });
    }
}

fn answer(
    method: &http::Method,
    path: &str,
    metrics: &Metrics,
    refresh: &Refresh,
) -> http::Response<Full<Bytes>> {
    let plain = |status: http::StatusCode, text: &'static str| {
        let mut response = http::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if path != "/metrics" {
        return plain(
            http::StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if method != http::Method::GET && method != http::Method::HEAD {
        return plain(http::StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
    }
    refresh(metrics);
    let mut response = http::Response::new(Full::new(Bytes::from(metrics.render())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;

    /// A listener with `limits` on a port of its own, until the token is
    /// cancelled (or the test's runtime ends).
    async fn start(limits: ListenerLimits) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let refresh: Refresh = Arc::new(|_: &Metrics| {});
        tokio::spawn(serve(
            listener,
            Arc::new(Metrics::new()),
            refresh,
            limits,
            shutdown.clone(),
        ));
        (address, shutdown)
    }

    /// Limits whose timeouts no test reaches unless it means to.
    fn patient(connections: usize) -> ListenerLimits {
        ListenerLimits {
            connections,
            header_read: Duration::from_secs(300),
            connection: Duration::from_secs(300),
            ..ListenerLimits::default()
        }
    }

    /// Sends `request` on a new connection and reads until the server
    /// closes it: what came back (empty when it was closed unanswered).
    async fn exchange(address: SocketAddr, request: &[u8]) -> Vec<u8> {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request).await.unwrap();
        read_until_closed(&mut stream).await
    }

    /// What the server sends until it closes the connection; a reset
    /// ends it as a close does.
    async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
        let mut answer = Vec::new();
        let mut buffer = [0; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return answer,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    }

    const SCRAPE: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n";

    fn status_line(answer: &[u8]) -> String {
        String::from_utf8_lossy(answer)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// Scrapes until one is answered (a slot frees once the server has
    /// seen a connection go): its status line.
    async fn scrape_once_served(address: SocketAddr) -> String {
        for _ in 0..500 {
            let answer = exchange(address, SCRAPE).await;
            if !answer.is_empty() {
                return status_line(&answer);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no scrape was served");
    }

    #[tokio::test]
    async fn a_connection_beyond_the_cap_is_closed_unanswered_until_a_slot_frees() {
        let (address, _shutdown) = start(patient(4)).await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(address).await.unwrap());
        }
        let answer = exchange(address, SCRAPE).await;
        assert!(
            answer.is_empty(),
            "served beyond the cap: {}",
            status_line(&answer)
        );

        drop(idle.pop());
        assert_eq!(scrape_once_served(address).await, "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_are_all_closed_and_a_scrape_then_succeeds() {
        let limits = ListenerLimits {
            header_read: Duration::from_millis(300),
            ..patient(4)
        };
        let (address, _shutdown) = start(limits).await;
        let mut idle = Vec::new();
        for _ in 0..3 * limits.connections {
            idle.push(TcpStream::connect(address).await.unwrap());
        }
        // Each is closed: beyond the cap at once, within it when it has
        // sent no request in time. None is answered.
        for stream in &mut idle {
            assert_eq!(read_until_closed(stream).await, b"");
        }
        assert_eq!(scrape_once_served(address).await, "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn a_request_head_beyond_the_header_limit_is_refused_unbuffered() {
        let limits = patient(4);
        let (address, _shutdown) = start(limits).await;
        // 8 times the limit, far below hyper's default buffer of ~400 KB.
        let padding = "a".repeat(8 * limits.header_bytes);
        let request = format!("GET /metrics HTTP/1.1\r\nHost: test\r\nX-Padding: {padding}\r\n\r\n");
        let answer = exchange(address, request.as_bytes()).await;
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        // A head within the limit is served.
        assert_eq!(status_line(&exchange(address, SCRAPE).await), "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn one_request_per_connection() {
        let (address, _shutdown) = start(patient(4)).await;
        let answer = exchange(address, &[SCRAPE, SCRAPE].concat()).await;
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 1, "{text}");
    }

    #[tokio::test]
    async fn a_connection_is_closed_at_the_connection_limit_whatever_it_is_doing() {
        let limits = ListenerLimits {
            connection: Duration::from_millis(300),
            ..patient(4)
        };
        let (address, _shutdown) = start(limits).await;
        // Half a head, then nothing: within the (patient) header timeout.
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(60), read_until_closed(&mut stream)).await;
        assert_eq!(closed.expect("still open: no connection limit"), b"");
    }
}

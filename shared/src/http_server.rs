//! The HTTP server loop of both processes (the API's ports, the invalidator's health port):
//! accepts connections within the `http.*` limits ([`LimitedAcceptor`]) and hands each socket to
//! hyper directly, with the poem endpoint as its service.
//!
//! poem's own `Server` boxes every connection into a `tokio::io::split` of it, which takes a lock
//! on each read and write and cannot write vectors, so hyper copies every response body into its
//! write buffer. Here hyper gets the socket itself and writes a response's head and body in one
//! `writev`. Graceful shutdown keeps poem's meaning: stop accepting, let each connection finish
//! the requests it has, and drop whatever is still open after the grace period. And two limits
//! apply that poem's `Server` leaves off, because a per-byte idle timeout alone cannot stop a
//! client that keeps bytes moving without ever making a request: hyper's header deadline (an
//! HTTP/1.1 client trickling its headers a byte at a time is cut off), and a connection that
//! starts no request for the idle timeout is closed, however many bytes move (HTTP/2 pings, or
//! a frame's bytes trickled).

use std::convert::Infallible;
use std::future::Future;
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

mod limits;

pub use limits::{LimitedAcceptor, Permitted};

/// How long the loop waits after an accept error that is not one connection's own (out of file
/// descriptors, say) before it tries again, so the error cannot spin a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The most header bytes one HTTP/2 request may carry (poem's own limit).
const MAX_HTTP2_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// An HTTP/1 connection's read buffer, which holds a request's headers until they are complete:
/// headers that do not fit are answered 431. (hyper's default, 400 KiB, let a client that never
/// finishes its headers hold that much per connection.)
const MAX_HTTP1_BUFFER_BYTES: usize = 32 * 1024;

/// The time limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServeTimeouts {
    /// How long an HTTP/1.1 request's headers may take to arrive in full, counted from the
    /// connection's opening or the end of the previous response; `None` for no limit.
    pub headers: Option<Duration>,
    /// How long a connection may go without starting a request before it is closed (gracefully:
    /// an HTTP/2 client is sent `GOAWAY`; outright as long again later), whatever bytes it
    /// moves; longer than any request lasts. `None` for no limit.
    pub requestless: Option<Duration>,
    /// How long a shutdown waits for the requests in flight.
    pub shutdown_grace: Duration,
}

/// Serves `endpoint` on every connection `acceptor` yields until `shutdown` completes, then waits
/// up to `timeouts.shutdown_grace` for the requests in flight.
pub async fn serve<A, E>(mut acceptor: A, endpoint: E, timeouts: ServeTimeouts, shutdown: impl Future<Output = ()>)
where
    A: Acceptor,
    E: Endpoint + 'static,
{
    let endpoint = Arc::new(endpoint);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(timeouts.headers).max_buf_size(MAX_HTTP1_BUFFER_BYTES);
    // poem's limit on an HTTP/2 request's headers, kept.
    builder.http2().max_header_list_size(MAX_HTTP2_HEADER_LIST_BYTES);
    let builder = Arc::new(builder);
    let connections = TaskTracker::new();
    let stop = Stop::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = acceptor.accept() => accepted,
        };
        match accepted {
            Ok((io, local, remote, scheme)) => {
                let peer = Peer { local, remote, scheme };
                let serving =
                    Serving { builder: Arc::clone(&builder), endpoint: Arc::clone(&endpoint), stop: stop.clone() };
                let connection = serve_connection(io, peer, serving, timeouts.requestless);
                connections.spawn(connection);
            }
            Err(error) if is_one_connections_error(error.kind()) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection; retrying shortly");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
    drop(acceptor);
    stop.finish_requests.cancel();
    connections.close();
    if tokio::time::timeout(timeouts.shutdown_grace, connections.wait()).await.is_err() {
        tracing::warn!(open = connections.len(), "connections still open after the shutdown grace; dropping them");
        stop.drop_connections.cancel();
        connections.wait().await;
    }
}

/// Errors that end one incoming connection (the client gave up before it was accepted), not the
/// listener.
fn is_one_connections_error(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset)
}

/// The two steps of a shutdown, as every connection sees them.
#[derive(Clone, Default)]
struct Stop {
    /// Answer the requests in flight, take no new ones, then close.
    finish_requests: CancellationToken,
    /// The grace period is over: close now.
    drop_connections: CancellationToken,
}

/// The addresses and scheme poem's request carries, cloned into each request of a connection.
#[derive(Clone)]
struct Peer {
    local: LocalAddr,
    remote: RemoteAddr,
    scheme: Scheme,
}

/// What every connection is served with.
struct Serving<E> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    endpoint: Arc<E>,
    stop: Stop,
}

/// Serves one connection (HTTP/1.1, or HTTP/2 with prior knowledge) until it closes, goes
/// `requestless` long without starting a request, or through the steps of `stop`.
async fn serve_connection<Io, E>(io: Io, peer: Peer, serving: Serving<E>, requestless: Option<Duration>)
where
    Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    E: Endpoint + 'static,
{
    let Serving { builder, endpoint, stop } = serving;
    let requests = Arc::new(RequestClock::new());
    let service = hyper::service::service_fn({
        let requests = Arc::clone(&requests);
        move |request: hyper::Request<Incoming>| {
            requests.note_request();
            let endpoint = Arc::clone(&endpoint);
            let Peer { local, remote, scheme } = peer.clone();
            async move {
                let response = endpoint.get_response(Request::from((request, local, remote, scheme))).await;
                Ok::<_, Infallible>(hyper::Response::<BoxBody<Bytes, std::io::Error>>::from(response))
            }
        }
    });
    // The shutdown's two steps, or a watch of the connection's requests, close it: gracefully
    // once no request has started for `requestless`, and outright `requestless` later if the
    // client has not let it end by then (an HTTP/2 client that never answers the ping of a
    // graceful `GOAWAY`, or is half-way through a frame). The watch is a task of its own: a branch
    // of the select below would poll its timer at every wake-up of the connection, which cost
    // about 1 % of a cached read's instructions.
    let (close, drop_now) = (stop.finish_requests.child_token(), stop.drop_connections.child_token());
    let _watch = requestless.map(|limit| {
        let (close, drop_now) = (close.clone(), drop_now.clone());
        AbortOnDropHandle::new(tokio::spawn(async move {
            requests.requestless_for(limit).await;
            close.cancel();
            tokio::time::sleep(limit).await;
            drop_now.cancel();
        }))
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        () = close.cancelled() => {}
    }
    connection.as_mut().graceful_shutdown();
    // An error here is the client's (a reset mid-request); the connection is over either way.
    tokio::select! {
        _ = connection => {}
        () = drop_now.cancelled() => {}
    }
}

/// When a connection's last request started, so that a connection whose bytes keep moving
/// without requests can be told from one in use. A request costs it one clock read and one store.
struct RequestClock {
    opened: Instant,
    /// When the last request started (or the connection opened), in microseconds since `opened`.
    last_started_micros: AtomicU64,
}

impl RequestClock {
    fn new() -> Self {
        Self { opened: Instant::now(), last_started_micros: AtomicU64::new(0) }
    }

    /// Notes that a request starts now.
    fn note_request(&self) {
        let since_opened = u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_started_micros.store(since_opened, Ordering::Relaxed);
    }

    /// Completes once no request has started for `limit`. A request lasts at most the request
    /// timeout, which the configuration keeps shorter than the idle timeout given here, so by
    /// then none is in flight; and if one were, the graceful close that follows would still
    /// answer it.
    async fn requestless_for(&self, limit: Duration) {
        loop {
            let last_started = Duration::from_micros(self.last_started_micros.load(Ordering::Relaxed));
            let deadline = self.opened + last_started + limit;
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::pending;

    use poem::endpoint::make;
    use poem::listener::TcpAcceptor;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    #[tokio::test]
    async fn a_request_still_running_when_the_grace_ends_is_dropped_and_the_server_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let entered = Arc::new(tokio::sync::Notify::new());
        let never_answers = make({
            let entered = Arc::clone(&entered);
            move |_| {
                entered.notify_one();
                pending::<&'static str>()
            }
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        let timeouts = ServeTimeouts { headers: None, requestless: None, shutdown_grace: Duration::from_millis(200) };
        let server = tokio::spawn(serve(TcpAcceptor::from_tokio(listener).unwrap(), never_answers, timeouts, stopped));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        entered.notified().await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server).await.expect("the server returned").unwrap();
        let mut received = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut received)).await;
        assert!(closed.is_ok(), "the connection was closed");
        assert!(received.is_empty(), "nothing was answered: {}", String::from_utf8_lossy(&received));
    }
}

//! What one client may hold of a server: at most `max_connections` connections served at once
//! (the listener accepts the next only when one closes), and a connection on which no byte moves
//! for the idle timeout is dropped (an idle keep-alive, or a request whose headers or body stall).

use std::io::Result as IoResult;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// An acceptor that holds one permit per open connection and gives each an idle deadline.
pub struct LimitedAcceptor<A> {
    inner: A,
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
}

impl<A> LimitedAcceptor<A> {
    pub fn new(inner: A, max_connections: u32, idle_timeout: Duration) -> Self {
        let permits = usize::try_from(max_connections).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        Self { inner, permits: Arc::new(Semaphore::new(permits)), idle_timeout }
    }
}

impl<A: Acceptor> Acceptor for LimitedAcceptor<A> {
    type Io = Permitted<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> IoResult<(Self::Io, LocalAddr, RemoteAddr, poem::http::uri::Scheme)> {
        let permit = Arc::clone(&self.permits).acquire_owned().await.map_err(std::io::Error::other)?;
        let (io, local, remote, scheme) = self.inner.accept().await?;
        Ok((Permitted::new(io, permit, self.idle_timeout), local, remote, scheme))
    }
}

/// A connection, the permit it gives back when it closes, and the deadline by which its next
/// byte must arrive or leave.
pub struct Permitted<Io> {
    io: Io,
    _permit: OwnedSemaphorePermit,
    /// Set `idle_timeout` after some earlier progress. When it fires it is moved on to
    /// `idle_timeout` after `last_progress`, unless that has passed too; progress itself only
    /// notes the time, so a busy connection costs a clock read per read or write, not a timer
    /// re-registration.
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    last_progress: Instant,
}

impl<Io> Permitted<Io> {
    fn new(io: Io, permit: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            io,
            _permit: permit,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
            idle_timeout,
            last_progress: now,
        }
    }

    /// Notes progress; fails a pending call once `idle_timeout` has passed without any.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<IoResult<T>>, progressed: bool) -> Poll<IoResult<T>> {
        match poll {
            Poll::Ready(result) => {
                if progressed {
                    self.last_progress = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => loop {
                if self.idle.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let deadline = self.last_progress + self.idle_timeout;
                if deadline <= Instant::now() {
                    let idle = std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle too long");
                    return Poll::Ready(Err(idle));
                }
                self.idle.as_mut().reset(deadline);
            },
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Permitted<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<IoResult<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        let progressed = buf.filled().len() > before;
        self.watch(cx, poll, progressed)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Permitted<Io> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<IoResult<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        let progressed = matches!(poll, Poll::Ready(Ok(written)) if written > 0);
        self.watch(cx, poll, progressed)
    }

    /// Forwarded, so hyper writes a response's head and body in one `writev` instead of copying
    /// the body into its head buffer (which it does for streams that cannot write vectors).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<IoResult<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        let progressed = matches!(poll, Poll::Ready(Ok(written)) if written > 0);
        self.watch(cx, poll, progressed)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<IoResult<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, poll, false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<IoResult<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

//! The accept loop: how TCP connections become HTTP connections, and how long
//! a client may take over each step.
//!
//! A slow or silent client costs a file descriptor and a task for as long as the
//! server waits on it, so nothing waits without a deadline:
//!
//! - **headers**: a request's head must arrive within the header timeout, counted
//!   from the connection's start or from the end of the previous response, so the
//!   same deadline closes idle keep-alive connections (hyper runs one timer for both);
//! - **bodies**: [`crate::extract::Body`] reads a body within the body timeout;
//! - **writes**: every write to the socket (an HTTP answer, an SSE or AG-UI
//!   stream, a WebSocket after its upgrade) must make progress within the write
//!   timeout; a peer that keeps its connection open but stops reading gets an
//!   error instead of holding its task, its queue and its slot, and is counted
//!   as a slow consumer ([`DeadlineIo`]);
//! - **per IP**: at most so many open HTTP connections from one address; one
//!   more is closed at once, before hyper sees it, so one client cannot take the
//!   descriptors every other client needs;
//! - **accept errors** (out of descriptors) pause the loop briefly instead of
//!   spinning, and are logged at most once a second.
//!
//! Upgraded connections (WebSockets) leave this count when they upgrade; the
//! hub's own caps (per user, per IP) govern them from there.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower::Service;

/// The accept loop's limits (settings in [`crate::ServerConfig`]).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time for a request's head, from the connection's start or the last response.
    pub header_timeout: Duration,
    /// Time a write to the socket may make no progress.
    pub write_timeout: Duration,
    /// Open HTTP connections from one IP address (0: no limit).
    pub max_per_ip: usize,
    /// Counts connections closed because a write timed out.
    pub write_timeouts: Counter,
}

/// A socket whose writes fail with `TimedOut` once one has made no progress for
/// `timeout`: the deadline that frees a connection whose peer stopped reading.
/// Reads are untouched (the header and body timeouts and the WebSocket pings cover them).
struct DeadlineIo {
    io: TcpStream,
    timeout: Duration,
    /// Armed while a write is pending; allocated the first time one stalls.
    stall: Option<Pin<Box<Sleep>>>,
    armed: bool,
    timeouts: Counter,
}

impl DeadlineIo {
    fn new(io: TcpStream, timeout: Duration, timeouts: Counter) -> Self {
        Self { io, timeout, stall: None, armed: false, timeouts }
    }

    /// Passes a finished write through, or checks the deadline of a pending one.
    fn check<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            stall.as_mut().reset(deadline);
            self.armed = true;
        }
        if stall.as_mut().poll(cx).is_ready() {
            self.timeouts.inc();
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the peer stopped reading")));
        }
        Poll::Pending
    }
}

impl AsyncRead for DeadlineIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for DeadlineIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.check(cx, polled)
    }
}

/// Open connections per IP address.
#[derive(Debug, Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; uncounted when dropped.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn acquire(table: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut open = table.open.lock();
        let count = open.entry(ip).or_default();
        if max != 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot { table: table.clone(), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                // Forget the address, so the table follows what is open, not what ever connected.
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` until `stop` is cancelled, then lets every
/// open connection finish its request and waits for them.
pub async fn serve(listener: TcpListener, router: Router, limits: HttpLimits, stop: CancellationToken) {
    let per_ip = Arc::new(PerIp::default());
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let mut last_error_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => break,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of descriptors: wait for some to close rather than spin.
                if last_error_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(error = %e, "cannot accept connections");
                    last_error_log = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = PerIp::acquire(&per_ip, addr.ip(), limits.max_per_ip) else {
            tracing::debug!(ip = %addr.ip(), "refused a connection: too many from this address");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = connection_service(router.clone(), addr);
        let io = DeadlineIo::new(stream, limits.write_timeout, limits.write_timeouts.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The router for one connection, with the peer's address for the handlers.
fn connection_service(
    router: Router,
    addr: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(addr));
        router.clone().call(request.map(axum::body::Body::new))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_forgotten_when_closed() {
        let table = Arc::new(PerIp::default());
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let first = PerIp::acquire(&table, a, 2).unwrap();
        let second = PerIp::acquire(&table, a, 2).unwrap();
        assert!(PerIp::acquire(&table, a, 2).is_none());
        let other = PerIp::acquire(&table, b, 2).unwrap();
        drop(first);
        let third = PerIp::acquire(&table, a, 2).unwrap();
        drop((second, third, other));
        assert!(table.open.lock().is_empty());
        assert!(PerIp::acquire(&table, a, 0).is_some(), "0 means no limit");
    }
}

//! The HTTP listener loop: accepts connections up to `server.max_connections` (more wait in the
//! kernel's listen queue), and serves each with hyper under the configured timeouts:
//! - a connection that does not send a complete request head within `read_timeout_secs` (or,
//!   between keep-alive requests, `idle_timeout_secs`, whichever is shorter) is closed — hyper's
//!   header-read timer starts whenever the connection waits for a request head;
//! - a request body that stalls for `read_timeout_secs` is refused (`HttpRequest::body_bytes`);
//! - a client that stops reading an answer for `write_timeout_secs` is dropped (`StallGuard`);
//! - one client address holds at most `max_connections_per_client`, and at a cap the oldest
//!   connection that never sent a request is closed to make room (`conns`).
//!
//! Warp's own `serve` offers none of these knobs, so the filter runs as a plain service here.

use crate::ctx::Ctx;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The peer address of a connection, handed to the filter as a request extension.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub SocketAddr);

/// The connection cap: the configured one, kept below the open-file limit (the CLIs' pipes and
/// the sessions need descriptors too).
fn connection_cap(configured: usize) -> usize {
    let fd_limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft as usize)
        .unwrap_or(1024);
    configured.min(fd_limit.saturating_sub(128).max(16))
}

/// Whether `ip` is one of `server.trusted_proxies`.
fn is_trusted_proxy(s: &clinvk_shared::config::Settings, ip: std::net::IpAddr) -> bool {
    use clinvk_shared::config::{cidr_contains, parse_cidr};
    s.server
        .trusted_proxies
        .iter()
        .filter_map(|t| parse_cidr(t))
        .any(|n| cidr_contains(n, ip))
}

/// Serves until `shutdown` resolves, then waits for open connections to finish.
pub(crate) async fn serve(
    ctx: Ctx,
    rate: Arc<super::guard::RateLimiter>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let cap = connection_cap(ctx.settings().server.max_connections);
    tracing::debug!(cap, "HTTP connection cap");
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    let conns = super::conns::Conns::default();
    let service = warp::service(super::filter(ctx.clone(), rate));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut backoff = Duration::from_millis(5);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => {
                    backoff = Duration::from_millis(5);
                    pair
                }
                Err(e) => {
                    // Out of descriptors and the like: wait a little, never spin.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let s = ctx.settings();
        // One client may not hold every connection; a trusted proxy carries many clients.
        let per_client = (!is_trusted_proxy(&s, peer.ip()))
            .then_some(s.server.max_connections_per_client.min(cap));
        if conns.make_room(peer.ip(), per_client).is_err() {
            metrics::counter!("clinvk_http_connections_refused_total", "reason" => "per_client")
                .increment(1);
            continue; // dropping the stream closes it
        }
        // At the cap, a connection that never sent a request makes room for this one.
        if slots.available_permits() == 0 && conns.close_oldest_unused() {
            metrics::counter!("clinvk_http_connections_refused_total", "reason" => "unused_evicted")
                .increment(1);
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let registered = conns.register(peer.ip());
        let _ = stream.set_nodelay(true);
        let head_timeout =
            Duration::from_secs(s.server.read_timeout_secs.min(s.server.idle_timeout_secs));
        let io = StallGuard::new(stream, Duration::from_secs(s.server.write_timeout_secs));
        let service = service.clone();
        let used = registered.used.clone();
        let hyper_service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                used.store(true, std::sync::atomic::Ordering::Relaxed);
                req.extensions_mut().insert(Peer(peer));
                let mut service = service.clone();
                tower_service::Service::call(&mut service, req)
            });
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let super::conns::Registered { closed, guard, .. } = registered;
            let _registered = guard;
            // HTTP/1 only: the auto-detecting builder waits for the first bytes without a
            // timer, so a silent connection would be kept forever.
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(io), hyper_service);
            tokio::select! {
                r = watcher.watch(conn) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, peer = %peer, "HTTP connection ended with an error");
                    }
                }
                // Closed to make room (it never sent a request): dropping it closes the socket.
                _ = closed => tracing::debug!(peer = %peer, "an unused HTTP connection was closed to make room"),
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A TCP stream whose writes fail once the peer has not taken any data for `limit`.
struct StallGuard {
    inner: TcpStream,
    limit: Duration,
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl StallGuard {
    fn new(inner: TcpStream, limit: Duration) -> Self {
        StallGuard {
            inner,
            limit,
            stalled_since: None,
        }
    }

    /// Passes a write's outcome on: progress resets the stall timer, a pending write starts (or
    /// checks) it.
    fn settle<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled_since = None;
                ready
            }
        }
    }

    /// On a pending write: starts (or checks) the stall timer.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let limit = self.limit;
        let timer = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading (server.write_timeout_secs)",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.settle(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.settle(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.settle(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

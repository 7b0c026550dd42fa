//! The transport under the services: connections accepted within
//! `server.transport`'s limits (TLS included), and the limits on what a
//! client can make the server hold without using it.
//!
//! - At most `max_connections` open; one more is closed at once, counted
//!   and logged.
//! - A TLS handshake has `handshake_timeout`; so has a cleartext
//!   connection to send its first bytes.
//! - A connection with no call running that sends nothing for
//!   `idle_timeout` is closed.
//! - Request bodies received and not yet decoded count against
//!   `max_buffered_request_bytes` (over all calls), and one that stops
//!   sending for `request_stall_timeout` fails: a client holding many
//!   streams with all but their last byte sent frees what they hold.
//! - Out of file descriptors, accepting backs off (10 ms doubling to 1 s)
//!   and logs at most every 10 s.
//!
//! Streams per connection and header size are HTTP/2 settings given to
//! the server builder (see `App::serve`).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use http_body::{Frame, SizeHint};
use opentelemetry::{KeyValue, metrics::Counter};
use roadie_config::TransportSettings;
use tokio::{net::TcpListener, time::Sleep};
use tokio_util::sync::CancellationToken;
use tonic::{Status, body::Body, transport::server::TcpConnectInfo};

use crate::{
    drain::{Drain, Holding, Lingering},
    tls::Tls,
};

/// Milliseconds since the process first asked, for cheap shared clocks.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The limits, and the counter of what they ended.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    settings: TransportSettings,
    closed: Counter<u64>,
    buffered: Arc<AtomicUsize>,
}

impl Limits {
    pub(crate) fn new(settings: &TransportSettings) -> Limits {
        Limits {
            settings: settings.clone(),
            closed: crate::metrics::transport_closed(),
            buffered: Arc::default(),
        }
    }

    fn count(&self, reason: &'static str) {
        self.closed.add(1, &[KeyValue::new("reason", reason)]);
    }
}

/// One connection's running calls and when it last sent anything.
#[derive(Debug)]
pub(crate) struct ConnState {
    calls: AtomicUsize,
    /// `now_ms()` of the last bytes read; 0 before the first.
    last_read: AtomicU64,
    accepted: u64,
}

/// Counts a call on its connection until its response body is done.
#[derive(Debug)]
struct Call(Arc<ConnState>);

impl Drop for Call {
    fn drop(&mut self) {
        self.0
            .last_read
            .fetch_max(now_ms().max(1), Ordering::Relaxed);
        self.0.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What every call learns of its connection (tonic puts it in the
/// request's extensions).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    tcp: TcpConnectInfo,
    state: Arc<ConnState>,
}

enum Io {
    Plain(Lingering),
    Tls(Box<tokio_rustls::server::TlsStream<Lingering>>),
}

/// An accepted connection, cleartext or TLS, closed once idle.
pub(crate) struct Conn {
    io: Io,
    info: ConnInfo,
    limits: Limits,
    timer: Pin<Box<Sleep>>,
    closed: bool,
}

impl Conn {
    fn new(io: Io, tcp: TcpConnectInfo, limits: &Limits) -> Conn {
        let state = Arc::new(ConnState {
            calls: AtomicUsize::new(0),
            last_read: AtomicU64::new(0),
            accepted: now_ms(),
        });
        let first = limits.settings.handshake_timeout;
        Conn {
            io,
            info: ConnInfo { tcp, state },
            limits: limits.clone(),
            timer: Box::pin(tokio::time::sleep(first)),
            closed: false,
        }
    }

    /// After the timer fires: whether to close now (and why), or when to
    /// look again.
    fn idle_check(&self) -> Result<Duration, &'static str> {
        let state = &self.info.state;
        let settings = &self.limits.settings;
        let now = now_ms();
        let last = state.last_read.load(Ordering::Relaxed);
        if last == 0 && state.calls.load(Ordering::SeqCst) == 0 {
            let age = Duration::from_millis(now.saturating_sub(state.accepted));
            if age >= settings.handshake_timeout {
                return Err("handshake");
            }
            return Ok(settings.handshake_timeout - age);
        }
        if state.calls.load(Ordering::SeqCst) > 0 {
            return Ok(settings.idle_timeout);
        }
        let quiet = Duration::from_millis(now.saturating_sub(last));
        if quiet >= settings.idle_timeout {
            return Err("idle");
        }
        Ok(settings.idle_timeout - quiet)
    }
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = match &mut this.io {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        };
        if !read.is_pending() {
            if buf.filled().len() > before {
                this.info
                    .state
                    .last_read
                    .store(now_ms().max(1), Ordering::Relaxed);
            }
            return read;
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            match this.idle_check() {
                Ok(again) => {
                    let at = tokio::time::Instant::now() + again;
                    this.timer.as_mut().reset(at);
                }
                Err(reason) => {
                    // End of input: the transport closes the connection.
                    this.closed = true;
                    this.limits.count(reason);
                    tracing::debug!(peer = ?this.info.tcp.remote_addr, reason, "closing a connection");
                    return Poll::Ready(Ok(()));
                }
            }
        }
        Poll::Pending
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Logs a repeated problem at most every 10 s, with how often it happened.
#[derive(Debug, Default)]
struct Throttled {
    last: Option<Instant>,
    since: u64,
}

impl Throttled {
    /// `Some(count)` when it is time to log again.
    fn hit(&mut self) -> Option<u64> {
        self.since += 1;
        let due = self
            .last
            .is_none_or(|last| last.elapsed() >= Duration::from_secs(10));
        if !due {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.since))
    }
}

/// Accepted connections (with TCP_NODELAY: without it a reply written as
/// two segments waits for the client's delayed ACK, about 40 ms a call once
/// calls pipeline), TLS-wrapped when `tls` is set, until `closing` fires,
/// when the listener is dropped and the port closes. The stream itself
/// stays open, so the transport does not take the end of accepting for the
/// start of its own shutdown. With `give_back`, the listener is handed
/// back instead of dropped (to serve on after the start-up server).
pub(crate) fn incoming(
    listener: TcpListener,
    closing: CancellationToken,
    drain: Arc<Drain>,
    tls: Option<Arc<Tls>>,
    limits: Limits,
    give_back: Option<tokio::sync::oneshot::Sender<TcpListener>>,
) -> impl futures::Stream<Item = std::io::Result<Conn>> {
    let (connections, incoming) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut over_limit = Throttled::default();
        let mut failing = Throttled::default();
        let mut backoff = Duration::ZERO;
        loop {
            let accepted = tokio::select! {
                biased;
                () = closing.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => {
                    backoff = Duration::ZERO;
                    accepted
                }
                Err(error) => {
                    // Out of file descriptors, most likely: wait for some to
                    // be released instead of spinning.
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    if let Some(count) = failing.hit() {
                        tracing::warn!(%error, failures = count, ?backoff, "cannot accept connections; backing off");
                    }
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            if drain.connections() >= limits.settings.max_connections {
                limits.count("connection_limit");
                if let Some(count) = over_limit.hit() {
                    tracing::warn!(
                        limit = limits.settings.max_connections,
                        refused = count,
                        "connection limit reached (server.transport.max_connections): closing new connections"
                    );
                }
                drop(stream);
                continue;
            }
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            let tcp = TcpConnectInfo {
                local_addr: stream.local_addr().ok(),
                remote_addr: Some(remote),
            };
            let lingering = Lingering::new(stream, &drain);
            match &tls {
                None => {
                    let conn = Conn::new(Io::Plain(lingering), tcp, &limits);
                    if connections.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let acceptor = tls.acceptor();
                    let (connections, limits) = (connections.clone(), limits.clone());
                    let timeout = limits.settings.handshake_timeout;
                    tokio::spawn(async move {
                        match tokio::time::timeout(timeout, acceptor.accept(lingering)).await {
                            Ok(Ok(stream)) => {
                                let conn = Conn::new(Io::Tls(Box::new(stream)), tcp, &limits);
                                let _ = connections.send(Ok(conn)).await;
                            }
                            Ok(Err(error)) => {
                                limits.count("handshake");
                                tracing::debug!(peer = %remote, %error, "TLS handshake failed");
                            }
                            Err(_) => {
                                limits.count("handshake");
                                tracing::debug!(peer = %remote, "TLS handshake timed out");
                            }
                        }
                    });
                }
            }
        }
        match give_back {
            Some(give_back) => {
                let _ = give_back.send(listener);
            }
            None => drop(listener),
        }
        // Keep the stream open until the transport stops reading it.
        connections.closed().await;
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

/// The tower layer applying the per-call limits: the call counted on its
/// connection (for the idle rule), its request body guarded, and the
/// peer's address where tonic's `remote_addr` finds it.
#[derive(Debug, Clone)]
pub(crate) struct CallLimitsLayer(pub(crate) Limits);

impl<S> tower::Layer<S> for CallLimitsLayer {
    type Service = CallLimits<S>;

    fn layer(&self, inner: S) -> CallLimits<S> {
        CallLimits {
            inner,
            limits: self.0.clone(),
        }
    }
}

/// See [`CallLimitsLayer`].
#[derive(Debug, Clone)]
pub(crate) struct CallLimits<S> {
    inner: S,
    limits: Limits,
}

impl<S> tower::Service<http::Request<Body>> for CallLimits<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let call = parts.extensions.get::<ConnInfo>().cloned().map(|info| {
            parts.extensions.insert(info.tcp.clone());
            info.state.calls.fetch_add(1, Ordering::SeqCst);
            Call(info.state)
        });
        let stall = self.limits.settings.request_stall_timeout;
        let body = Body::new(Guarded {
            body,
            stall,
            timer: Box::pin(tokio::time::sleep(stall)),
            limits: self.limits.clone(),
            held: 0,
            done: false,
        });
        let response = self.inner.call(http::Request::from_parts(parts, body));
        async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(Holding { body, _guard: call })))
        }
        .boxed()
    }
}

/// A request body under the stall timeout and the buffered-bytes budget.
struct Guarded {
    body: Body,
    stall: Duration,
    timer: Pin<Box<Sleep>>,
    limits: Limits,
    /// Bytes taken from the budget, given back on drop.
    held: usize,
    done: bool,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.limits.buffered.fetch_sub(self.held, Ordering::SeqCst);
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let limit = this.limits.settings.max_buffered_request_bytes;
                    let len = data.len();
                    let before = this.limits.buffered.fetch_add(len, Ordering::SeqCst);
                    this.held += len;
                    if before + len > limit {
                        this.done = true;
                        this.limits.count("request_bytes");
                        return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                            "the server holds {limit} bytes of unfinished requests \
                             (server.transport.max_buffered_request_bytes); retry later"
                        )))));
                    }
                }
                let at = tokio::time::Instant::now() + this.stall;
                this.timer.as_mut().reset(at);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.done = true;
                this.limits.count("request_stalled");
                Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                    "the request stopped sending for {} before its end \
                     (server.transport.request_stall_timeout)",
                    humantime::format_duration(this.stall)
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_problem_is_logged_once_per_window_with_its_count() {
        let mut throttled = Throttled::default();
        assert_eq!(throttled.hit(), Some(1));
        assert_eq!(throttled.hit(), None);
        assert_eq!(throttled.hit(), None);
        throttled.last = Some(Instant::now() - Duration::from_secs(11));
        assert_eq!(throttled.hit(), Some(3), "the two held back and this one");
    }
}

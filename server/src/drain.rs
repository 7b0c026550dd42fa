//! The drain on shutdown: finish what is in flight, refuse what is new.
//!
//! When the shutdown signal arrives the listener closes at once (a client
//! connecting now is refused and fails over), calls arriving on open
//! connections are answered UNAVAILABLE before any work is done, and the
//! calls already running go on to their end, response bodies included.
//! Only when none is left (or `server.shutdown_grace` runs out) do the
//! connections get their GOAWAY.
//!
//! The GOAWAY waits for the drain because h2 (0.4.20) answers a
//! WINDOW_UPDATE for a stream above the final GOAWAY's last stream id with
//! a connection-level PROTOCOL_ERROR, which tears down every stream still
//! running on that connection; sent with nothing in flight, it can cost no
//! call.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use futures::future::{BoxFuture, FutureExt};
use http_body::{Frame, SizeHint};
use tokio::sync::Notify;
use tonic::{Status, body::Body};

/// Calls running and whether new ones are refused.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
    /// Accepted connections not yet released (lingering ones included).
    connections: AtomicUsize,
    released: Notify,
}

impl Drain {
    /// From now on, new calls are refused.
    pub fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Resolves once no call is in flight (after [`Drain::start`]).
    pub async fn finished(&self) {
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Calls running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Accepted connections not yet released.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Resolves once every accepted connection has been released, its
    /// lingering close over: a process that exits before then resets the
    /// sockets it still holds.
    pub async fn connections_released(&self) {
        loop {
            let released = self.released.notified();
            if self.connections.load(Ordering::SeqCst) == 0 {
                return;
            }
            released.await;
        }
    }
}

/// Counts an accepted connection until its socket is released.
#[derive(Debug)]
struct Connection(Arc<Drain>);

impl Drop for Connection {
    fn drop(&mut self) {
        if self.0.connections.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.released.notify_waiters();
        }
    }
}

/// Counts a call from its arrival until its response body is done.
struct InFlight(Arc<Drain>);

impl InFlight {
    fn new(drain: &Arc<Drain>) -> InFlight {
        drain.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(drain.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The tower layer that applies a [`Drain`] to every call.
#[derive(Debug, Clone)]
pub struct DrainLayer(pub Arc<Drain>);

impl<S> tower::Layer<S> for DrainLayer {
    type Service = DrainService<S>;

    fn layer(&self, inner: S) -> DrainService<S> {
        DrainService {
            inner,
            drain: self.0.clone(),
        }
    }
}

/// See [`DrainLayer`].
#[derive(Debug, Clone)]
pub struct DrainService<S> {
    inner: S,
    drain: Arc<Drain>,
}

/// Health checks are answered while draining (they report NOT_SERVING) and
/// are not waited for: a health Watch stream would otherwise hold the drain
/// for the whole grace period.
fn is_health(request: &http::Request<Body>) -> bool {
    request.uri().path().starts_with("/grpc.health.v1.Health/")
}

impl<S> tower::Service<http::Request<Body>> for DrainService<S>
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
        if is_health(&request) {
            return self.inner.call(request).boxed();
        }
        let guard = InFlight::new(&self.drain);
        // Checked after counting: a call counted before the drain started
        // is waited for; one that sees the drain is refused.
        if self.drain.draining.load(Ordering::SeqCst) {
            drop(guard);
            let status = Status::from(crate::error::ApiError::ShuttingDown(
                "the server is shutting down; retry on another server or after it restarts"
                    .to_owned(),
            ));
            return futures::future::ready(Ok(status.into_http())).boxed();
        }
        let response = self.inner.call(request);
        async move {
            let response = response.await?;
            Ok(response.map(|body| {
                Body::new(Holding {
                    body,
                    _guard: guard,
                })
            }))
        }
        .boxed()
    }
}

/// A response body holding a guard (a call's count) until it is dropped.
pub(crate) struct Holding<G> {
    pub(crate) body: Body,
    pub(crate) _guard: G,
}

impl<G: Unpin + Send + 'static> http_body::Body for Holding<G> {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// How long a closing connection keeps reading what the client still sends.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// An accepted connection that closes the way HTTP servers must ("lingering
/// close"): when the transport is done with it, it sends FIN and keeps
/// reading for up to a second ([`LINGER`]) before the socket is released. Closing a
/// socket with unread input makes the kernel send RST, and a client that
/// gets RST may discard the final GOAWAY before reading it: calls it sent
/// meanwhile (never taken up) then fail as "broken pipe", which looks like a
/// call lost in flight rather than one refused.
#[derive(Debug)]
pub struct Lingering(Option<(tokio::net::TcpStream, Connection)>);

impl Lingering {
    /// Wraps an accepted stream, counted by `drain` until it is released.
    pub fn new(stream: tokio::net::TcpStream, drain: &Arc<Drain>) -> Lingering {
        drain.connections.fetch_add(1, Ordering::SeqCst);
        Lingering(Some((stream, Connection(drain.clone()))))
    }

    fn stream(self: Pin<&mut Self>) -> Pin<&mut tokio::net::TcpStream> {
        // Present until dropped.
        Pin::new(
            &mut self
                .get_mut()
                .0
                .as_mut()
                .expect("the stream is taken only on drop")
                .0,
        )
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some((mut stream, connection)) = self.0.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let _counted = connection;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = stream.shutdown().await;
            let mut sink = [0_u8; 4096];
            let _ = tokio::time::timeout(LINGER, async {
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

impl tokio::io::AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // The FIN goes out on drop, after which the socket still reads.
        self.stream().poll_flush(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(|(s, _)| s.is_write_vectored())
    }
}

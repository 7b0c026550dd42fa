//! [`Watch`]: a Cache.Watch stream that resumes by itself.
//!
//! Every message on a Watch stream carries a revision: a change its own, a
//! progress message the revision up to which everything that matched has
//! been delivered. A new stream asking for changes after the last of those
//! continues with nothing lost and nothing repeated, so [`Watch`] keeps that
//! revision and, when the stream breaks for a reason that retrying can fix,
//! opens a new one from it after a backoff. The caller sees one sequence of
//! changes in revision order, with a [`WatchEvent::Reconnecting`] wherever a
//! stream broke.
//!
//! # What is retried
//!
//! - the stream ending without an error (the server closed it);
//! - UNAVAILABLE: the server is shutting down or cannot be reached (a refused
//!   or reset connection is reported as UNAVAILABLE by the transport);
//! - RESOURCE_EXHAUSTED: the watcher fell too far behind and the server let
//!   it go;
//! - CANCELLED, UNKNOWN, INTERNAL, ABORTED: what the transport reports for a
//!   connection broken mid-stream (an HTTP/2 reset or GOAWAY), or what a
//!   proxy in between reports. INTERNAL may also be a server fault; retrying
//!   it under the capped backoff costs little and keeps a long-lived watcher
//!   alive through a bad moment;
//! - DEADLINE_EXCEEDED, including the watch's own idle timeout (nothing,
//!   not even a progress message, within [`Watch::with_idle_timeout`]): a
//!   connection that silently died.
//!
//! Everything else ends the watch with the error: OUT_OF_RANGE as
//! [`ClientError::Compacted`] (the caller must resync first), and
//! INVALID_ARGUMENT, UNIMPLEMENTED, PERMISSION_DENIED and the like, which a
//! new attempt would only repeat.
//!
//! # Backoff
//!
//! The first retry waits about 50 ms, each further one twice as long, up to
//! 5 s; each delay is drawn between half and all of that, so that many
//! watchers cut off by one server do not return in step. The delay falls
//! back to the initial one once a stream delivers something beyond its
//! opening progress message. Both bounds are set with [`Watch::with_backoff`].

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::time::{Instant, Sleep};
use tonic::{Code, Status, Streaming};

use crate::Client;
use crate::error::ClientError;
use crate::proto::{self, watch_response::Event};

/// Delay before the first retry.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// Longest delay between retries.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a stream may stay silent before it is taken for dead. The server
/// sends progress every few seconds when idle, so a minute of silence means
/// the connection is gone without either side being told.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One item of a [`Watch`].
// Nearly every event is a change: boxing it to shrink the rare variants would
// cost an allocation per change.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum WatchEvent {
    /// A change matching the filters; its revision is the new resume point.
    Change(proto::Change),
    /// Every matching change up to this revision has been delivered. Each
    /// stream opens with one, once the server's subscription is live: a
    /// change committed after the first `Progress` is certain to be seen.
    Progress(u64),
    /// The stream broke for a reason a retry can fix. After `delay` the
    /// watch opens a new one asking for the changes after `after`; nothing
    /// is lost. Informational: there is nothing to do but keep polling.
    Reconnecting {
        /// The resume point; `None` when the first stream broke before its
        /// opening progress message, in which case the watch starts afresh.
        after: Option<u64>,
        /// How long the watch waits before reconnecting.
        delay: Duration,
        /// Why the stream broke.
        cause: ClientError,
    },
}

/// A Cache.Watch that resumes by itself; made by [`Client::watch`].
///
/// Read it with [`Watch::next`] or as a [`Stream`] of
/// `Result<WatchEvent, ClientError>`. It yields until an error that retrying
/// cannot fix (see the [module docs](self)), yields that error, and then
/// ends. Both are cancel-safe: dropping a pending `next()` (in a `select!`,
/// say) loses nothing.
///
/// ```no_run
/// # async fn example(client: roadie_client::Client) -> Result<(), roadie_client::ClientError> {
/// use roadie_client::{WatchEvent, proto::WatchRequest};
///
/// let mut watch = client.watch(WatchRequest {
///     key_prefix: "artist:".into(),
///     ..Default::default()
/// });
/// while let Some(event) = watch.next().await {
///     match event? {
///         WatchEvent::Change(change) => println!("{} {}", change.revision, change.key),
///         WatchEvent::Progress(_) | WatchEvent::Reconnecting { .. } => {}
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub struct Watch {
    client: Client,
    request: proto::WatchRequest,
    /// The resume point: the revision of the last change or progress message
    /// seen, or the request's `after_revision` before any.
    revision: Option<u64>,
    backoff: Backoff,
    idle_timeout: Option<Duration>,
    /// Armed when an attempt starts and pushed back by every message; kept
    /// across attempts so that it is allocated once.
    idle: Option<Pin<Box<Sleep>>>,
    state: State,
}

type Opening =
    Pin<Box<dyn Future<Output = Result<Streaming<proto::WatchResponse>, Status>> + Send>>;

enum State {
    /// Connect at the next poll.
    Start,
    /// Waiting for the server to accept the call.
    Opening(Opening),
    /// Streaming; `messages` counts the messages this stream delivered.
    Open {
        stream: Box<Streaming<proto::WatchResponse>>,
        messages: u64,
    },
    /// Backing off before the next attempt.
    Waiting(Pin<Box<Sleep>>),
    /// Ended by an error that was handed to the caller.
    Done,
}

impl Watch {
    pub(crate) fn new(client: Client, request: proto::WatchRequest) -> Watch {
        Watch {
            client,
            revision: request.after_revision,
            request,
            backoff: Backoff::new(DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_BACKOFF),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            idle: None,
            state: State::Start,
        }
    }

    /// This watch with other retry delays: `initial` before the first retry,
    /// doubling up to `max` (an `initial` above `max` is lowered to it).
    /// Zero retries at once, every time.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Watch {
        self.backoff = Backoff::new(initial, max);
        self
    }

    /// This watch with another idle timeout: how long a stream may deliver
    /// nothing at all before the watch takes the connection for dead and
    /// reconnects. Keep it well above the server's progress interval.
    /// `None` waits forever.
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Watch {
        self.idle_timeout = timeout;
        self
    }

    /// The resume point: the revision of the last change or progress message
    /// yielded, or the request's `after_revision` before any. A new watch
    /// with `after_revision` set to it continues exactly where this one is.
    /// `None` until the first stream opens when the request named no
    /// revision.
    pub fn revision(&self) -> Option<u64> {
        self.revision
    }

    /// The request this watch repeats on every attempt (its `after_revision`
    /// replaced by [`Watch::revision`]).
    pub fn request(&self) -> &proto::WatchRequest {
        &self.request
    }

    /// The next event; `None` once the watch has ended, which it does only
    /// after yielding an error. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, ClientError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Starts an attempt from the resume point.
    fn open(&mut self) {
        let mut request = self.request.clone();
        request.after_revision = self.revision;
        let client = self.client.clone();
        self.state = State::Opening(Box::pin(async move { client.open_watch(request).await }));
        self.arm_idle();
    }

    fn arm_idle(&mut self) {
        let Some(timeout) = self.idle_timeout else {
            self.idle = None;
            return;
        };
        let deadline = Instant::now() + timeout;
        match &mut self.idle {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.idle = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Whether the idle timeout has passed; registers for a wake-up if not.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.idle {
            Some(sleep) => sleep.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }

    fn idle_error(&self) -> ClientError {
        let waited = self.idle_timeout.unwrap_or_default();
        ClientError::DeadlineExceeded(format!(
            "nothing from the server in {}",
            humantime::format_duration(waited)
        ))
    }

    /// Takes one message in; `None` for a message this client cannot read
    /// (an event kind added to the API after it was built), which is skipped.
    fn accept(&mut self, message: proto::WatchResponse, first: bool) -> Option<WatchEvent> {
        self.arm_idle();
        let event = match message.event? {
            Event::Change(change) => {
                self.advance(change.revision);
                WatchEvent::Change(change)
            }
            Event::Progress(progress) => {
                self.advance(progress.revision);
                WatchEvent::Progress(progress.revision)
            }
        };
        // The opening progress message only proves the server accepted the
        // call; a server that accepts and then fails must not be retried
        // at the initial delay forever.
        if !first {
            self.backoff.reset();
        }
        Some(event)
    }

    /// Moves the resume point forward, never back.
    fn advance(&mut self, revision: u64) {
        self.revision = Some(self.revision.map_or(revision, |seen| seen.max(revision)));
    }

    /// Handles a failed attempt or a broken stream: a retry, or the end.
    fn fail(&mut self, status: Status) -> Result<WatchEvent, ClientError> {
        if is_retryable(status.code()) {
            self.retry(ClientError::from(status))
        } else {
            self.state = State::Done;
            self.idle = None;
            Err(watch_error(status, self.revision))
        }
    }

    fn retry(&mut self, cause: ClientError) -> Result<WatchEvent, ClientError> {
        let delay = self.backoff.next_delay();
        self.state = State::Waiting(Box::pin(tokio::time::sleep(delay)));
        Ok(WatchEvent::Reconnecting {
            after: self.revision,
            delay,
            cause,
        })
    }
}

impl Stream for Watch {
    type Item = Result<WatchEvent, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Every field is Unpin (the futures are boxed).
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Start => this.open(),
                State::Waiting(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.open();
                }
                State::Opening(opening) => match opening.as_mut().poll(cx) {
                    Poll::Ready(Ok(stream)) => {
                        this.state = State::Open {
                            stream: Box::new(stream),
                            messages: 0,
                        };
                    }
                    Poll::Ready(Err(status)) => return Poll::Ready(Some(this.fail(status))),
                    Poll::Pending => {
                        if this.idle_expired(cx) {
                            let cause = this.idle_error();
                            return Poll::Ready(Some(this.retry(cause)));
                        }
                        return Poll::Pending;
                    }
                },
                State::Open { stream, messages } => match Pin::new(&mut **stream).poll_next(cx) {
                    Poll::Ready(Some(Ok(message))) => {
                        *messages += 1;
                        let first = *messages == 1;
                        if let Some(event) = this.accept(message, first) {
                            return Poll::Ready(Some(Ok(event)));
                        }
                    }
                    Poll::Ready(Some(Err(status))) => return Poll::Ready(Some(this.fail(status))),
                    Poll::Ready(None) => {
                        let cause = ClientError::Unavailable("the server ended the stream".into());
                        return Poll::Ready(Some(this.retry(cause)));
                    }
                    Poll::Pending => {
                        if this.idle_expired(cx) {
                            let cause = this.idle_error();
                            return Poll::Ready(Some(this.retry(cause)));
                        }
                        return Poll::Pending;
                    }
                },
            }
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Start => "start",
            State::Opening(_) => "opening",
            State::Open { .. } => "open",
            State::Waiting(_) => "waiting",
            State::Done => "done",
        };
        f.debug_struct("Watch")
            .field("request", &self.request)
            .field("revision", &self.revision)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

/// Whether a Watch that failed with `code` should reconnect; see the
/// [module docs](self) for why each is here.
fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
            | Code::Aborted
            | Code::DeadlineExceeded
    )
}

/// The error of a Watch that asked for the changes after `after`: a
/// compacted revision becomes [`ClientError::Compacted`], anything else the
/// usual mapping.
pub(crate) fn watch_error(status: Status, after: Option<u64>) -> ClientError {
    if status.code() == Code::OutOfRange
        && let Some(oldest) = roadie_proto::compacted_oldest(&status)
    {
        return ClientError::Compacted {
            after: after.unwrap_or_default(),
            oldest,
        };
    }
    ClientError::from(status)
}

/// Exponential backoff with jitter.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    /// The base of the next delay, before jitter.
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.min(max);
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// A delay between half and all of the current base; doubles the base.
    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.max);
        let half = base / 2;
        let spread = u64::try_from((base - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random() % spread.saturating_add(1))
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// A random number for jitter. `RandomState` is seeded from the OS once per
/// thread and varied on every call, which is plenty for spreading retries
/// and spares this crate a random-number dependency.
fn random() -> u64 {
    RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut base = Duration::from_millis(50);
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(
                delay >= base / 2 && delay <= base,
                "{delay:?} outside [{:?}, {base:?}]",
                base / 2
            );
            base = (base * 2).min(Duration::from_secs(5));
        }
        assert_eq!(backoff.next, Duration::from_secs(5));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(50));
    }

    #[test]
    fn backoff_accepts_zero_and_an_initial_above_the_cap() {
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.next_delay(), Duration::ZERO);
        let mut inverted = Backoff::new(Duration::from_secs(9), Duration::from_secs(1));
        assert!(inverted.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn jitter_varies() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: std::collections::HashSet<_> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.len() > 1, "{delays:?}");
    }

    #[test]
    fn transport_and_server_going_away_are_retried_bad_requests_are_not() {
        for code in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::Cancelled,
            Code::Unknown,
            Code::Internal,
            Code::Aborted,
            Code::DeadlineExceeded,
        ] {
            assert!(is_retryable(code), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::OutOfRange,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::Unimplemented,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::AlreadyExists,
            Code::DataLoss,
        ] {
            assert!(!is_retryable(code), "{code:?}");
        }
    }

    #[test]
    fn compacted_revision_becomes_a_typed_error() {
        let error = watch_error(roadie_proto::revision_compacted(3, 42), Some(3));
        assert!(
            matches!(
                error,
                ClientError::Compacted {
                    after: 3,
                    oldest: 42
                }
            ),
            "{error:?}"
        );
        // OUT_OF_RANGE without the detail (a message over the size limit).
        let error = watch_error(Status::out_of_range("too large"), Some(3));
        assert!(matches!(error, ClientError::OutOfRange(_)), "{error:?}");
        let error = watch_error(roadie_proto::field_violation("kinds", "bad"), None);
        assert_eq!(error.field(), Some("kinds"));
    }
}

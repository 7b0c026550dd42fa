//! What every call gets before its handler runs: a span named by its gRPC
//! method that continues the caller's W3C trace context, and the
//! `rpc.server.duration` measurement with its status code, both after
//! OpenTelemetry's RPC conventions. Keys are recorded by the handlers
//! (`roadie.key`, truncated); values and headers never are.

use std::{
    convert::Infallible,
    task::{Context, Poll},
    time::Instant,
};

use futures::future::{BoxFuture, FutureExt};
use opentelemetry::{KeyValue, metrics::Histogram};
use tonic::body::Body;
use tracing::{Instrument, field::Empty};

/// The longest key prefix a span carries.
const KEY_IN_SPAN: usize = 128;

/// The transport's own span of a call, for the logs, while nothing is
/// exported: the [`CallLayer`] makes a richer one otherwise (and is not
/// there at all without telemetry, so the call path is as lean as it can be).
/// At debug level (`roadie_server::rpc=debug`): a span the log filter
/// enables costs every call its making, 5-7 % of a Get hit's CPU
/// (BENCHMARKS.md), for a prefix on the few lines a call logs.
pub(crate) fn log_span(request: &http::Request<()>) -> tracing::Span {
    if roadie_telemetry::traces_on() || roadie_telemetry::metrics_on() {
        return tracing::Span::none();
    }
    tracing::debug_span!("rpc", method = %request.uri().path())
}

/// Whether calls go through the [`CallLayer`]: when anything reads spans or
/// metrics.
pub(crate) fn measured() -> bool {
    roadie_telemetry::traces_on() || roadie_telemetry::metrics_on()
}

/// The span of one call, with the RPC conventions' attributes and the
/// caller's context when spans are exported.
fn span<B>(request: &http::Request<B>) -> tracing::Span {
    let path = request.uri().path();
    if !roadie_telemetry::traces_on() {
        return tracing::info_span!("rpc", method = %path);
    }
    let (service, method) = split(path);
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = Empty,
        roadie.key = Empty,
    );
    roadie_telemetry::propagation::continue_from(&span, request.headers());
    span
}

/// Records the key a call is about on its span, cut to a bounded prefix
/// (keys may be long; values never go to spans).
pub(crate) fn record_key(key: &str) {
    if !roadie_telemetry::traces_on() {
        return;
    }
    let mut end = key.len().min(KEY_IN_SPAN);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    tracing::Span::current().record("roadie.key", &key[..end]);
}

/// `/roadie.v1.Cache/Get` → (`roadie.v1.Cache`, `Get`).
fn split(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

/// The tower layer measuring every call.
#[derive(Debug, Clone)]
pub(crate) struct CallLayer {
    /// `None` while nothing reads metrics: the call path then skips them.
    duration: Option<Histogram<f64>>,
}

impl CallLayer {
    pub(crate) fn new() -> CallLayer {
        CallLayer {
            duration: roadie_telemetry::metrics_on().then(crate::metrics::rpc_duration),
        }
    }
}

impl<S> tower::Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> CallService<S> {
        CallService {
            inner,
            duration: self.duration.clone(),
        }
    }
}

/// See [`CallLayer`].
#[derive(Debug, Clone)]
pub(crate) struct CallService<S> {
    inner: S,
    duration: Option<Histogram<f64>>,
}

impl<S> tower::Service<http::Request<Body>> for CallService<S>
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
        let started = Instant::now();
        let measured = self.duration.clone().map(|duration| {
            let (service, method) = split(request.uri().path());
            (duration, service.to_owned(), method.to_owned())
        });
        let span = span(&request);
        let response = span.in_scope(|| self.inner.call(request));
        let call = span.clone();
        async move {
            let response = response.await?;
            // An error is a trailers-only response: its status is in the
            // headers. A call that answered carries OK there or in trailers.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            call.record("rpc.grpc.status_code", code);
            if code != 0 {
                call.record("otel.status_code", "ERROR");
            }
            if let Some((duration, service, method)) = measured {
                duration.record(
                    started.elapsed().as_secs_f64() * 1000.0,
                    &[
                        KeyValue::new("rpc.system", "grpc"),
                        KeyValue::new("rpc.service", service),
                        KeyValue::new("rpc.method", method),
                        KeyValue::new("rpc.grpc.status_code", code),
                    ],
                );
            }
            Ok(response)
        }
        .instrument(span)
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_split_into_service_and_name() {
        assert_eq!(split("/roadie.v1.Cache/Get"), ("roadie.v1.Cache", "Get"));
        assert_eq!(split("/odd"), ("odd", ""));
    }
}

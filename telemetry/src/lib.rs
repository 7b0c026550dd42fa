//! Roadie's telemetry, set up once for both binaries.
//!
//! - **Logs**: `log.format` (`text` or `json`, whose lines carry `trace_id`
//!   and `span_id`) and `log.level`, which `RUST_LOG` overrides.
//! - **Traces and metrics**: OpenTelemetry, exported over OTLP only when the
//!   standard variables ask for it (`OTEL_EXPORTER_OTLP_ENDPOINT`, or the
//!   per-signal `_TRACES_`/`_METRICS_` ones; `OTEL_EXPORTER_OTLP_PROTOCOL`
//!   `grpc` or `http/protobuf`; `OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`_ARG`), never when
//!   `OTEL_SDK_DISABLED=true`. Without them no exporter, processor or
//!   OpenTelemetry layer exists: the instruments are the API's no-ops.
//! - **Propagation**: W3C `traceparent`/`tracestate` in and out
//!   ([`propagation`]).
//! - **The admin port** ([`admin`]): `/metrics`, `/livez`, `/readyz`.
//!
//! The span processor and the metric reader run on the tokio runtime (the
//! SDK's `*_with_async_runtime` variants): the tonic exporter needs a
//! runtime, which the SDK's default background threads do not have.
//! [`Telemetry::shutdown`] flushes both; the binaries call it after their
//! drain, within their grace period.

pub mod admin;
mod json;
pub mod propagation;

use std::{io::IsTerminal, sync::OnceLock, time::Duration};

use opentelemetry::{KeyValue, global, trace::TracerProvider as _};
use opentelemetry_sdk::{
    Resource,
    metrics::{SdkMeterProvider, periodic_reader_with_async_runtime::PeriodicReader},
    propagation::TraceContextPropagator,
    runtime,
    trace::{SdkTracerProvider, span_processor_with_async_runtime::BatchSpanProcessor},
};
use roadie_config::{LogFormat, Settings};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Why telemetry could not start; a configuration error naming the setting
/// or variable.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `log.level` (or `RUST_LOG`) is not a filter.
    #[error("{setting}: not a log filter ({message})")]
    Level {
        /// `log.level` or `RUST_LOG`.
        setting: &'static str,
        /// What the parser said.
        message: String,
    },
    /// An OTLP exporter could not be built from the `OTEL_*` variables.
    #[error("OTEL_EXPORTER_OTLP_*: {0}")]
    Exporter(String),
    /// The Prometheus registry for `/metrics`.
    #[error("admin.listen: cannot set up /metrics ({0})")]
    Prometheus(String),
    /// A subscriber was installed already.
    #[error("logging was set up twice: {0}")]
    Installed(String),
}

/// What was set up; keep it until the end and call [`Telemetry::shutdown`].
#[derive(Debug)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    registry: Option<prometheus::Registry>,
}

/// What the environment asks of the exporters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exports {
    traces: bool,
    metrics: bool,
}

impl Exports {
    fn from_env(var: &impl Fn(&str) -> Option<String>) -> Exports {
        let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Exports {
                traces: false,
                metrics: false,
            };
        }
        let all = set("OTEL_EXPORTER_OTLP_ENDPOINT");
        let off = |name: &str| var(name).is_some_and(|v| v.trim() == "none");
        Exports {
            traces: (all || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
                && !off("OTEL_TRACES_EXPORTER"),
            metrics: (all || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
                && !off("OTEL_METRICS_EXPORTER"),
        }
    }
}

/// What [`init`] set up, for code on the request path that would do work
/// only an exporter reads.
static ON: OnceLock<(bool, bool)> = OnceLock::new();

/// Whether spans are exported by this process (false before [`init`]).
pub fn traces_on() -> bool {
    ON.get().is_some_and(|on| on.0)
}

/// Whether metrics are read by this process: an OTLP exporter or the admin
/// port (false before [`init`]).
pub fn metrics_on() -> bool {
    ON.get().is_some_and(|on| on.1)
}

/// The longest the exporters' flush may hold a stopping process.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// How often metrics go to the OTLP endpoint unless
/// `OTEL_METRIC_EXPORT_INTERVAL` (ms) says otherwise.
const METRIC_INTERVAL: Duration = Duration::from_secs(60);

/// Sets up logs, traces and metrics for `service` (`roadie-server`,
/// `roadie-worker`, the default `service.name`). Call it inside the tokio
/// runtime, once, before anything logs.
pub fn init(service: &'static str, settings: &Settings) -> Result<Telemetry, TelemetryError> {
    let var = |name: &str| std::env::var(name).ok();
    let exports = Exports::from_env(&var);
    global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = resource(service, &var);

    let tracer = if exports.traces {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let processor = BatchSpanProcessor::builder(exporter, runtime::Tokio).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.clone())
            .build();
        global::set_tracer_provider(provider.clone());
        Some(provider)
    } else {
        None
    };

    let registry = settings
        .admin
        .listen
        .is_some()
        .then(prometheus::Registry::new);
    let meter = if exports.metrics || registry.is_some() {
        let mut builder = SdkMeterProvider::builder().with_resource(resource);
        if exports.metrics {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let interval = var("OTEL_METRIC_EXPORT_INTERVAL")
                .and_then(|ms| ms.trim().parse().ok())
                .map_or(METRIC_INTERVAL, Duration::from_millis);
            let reader = PeriodicReader::builder(exporter, runtime::Tokio)
                .with_interval(interval)
                .build();
            builder = builder.with_reader(reader);
        }
        if let Some(registry) = &registry {
            let exporter = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .build()
                .map_err(|e| TelemetryError::Prometheus(e.to_string()))?;
            builder = builder.with_reader(exporter);
        }
        let provider = builder.build();
        global::set_meter_provider(provider.clone());
        Some(provider)
    } else {
        None
    };

    // The log level filters the log lines only: traces keep Roadie's own
    // spans (and their events) whatever `log.level` says; the sampler
    // decides which are exported.
    let filter = filter(&settings.log.level, var("RUST_LOG"))?;
    let ansi = std::io::stderr().is_terminal() && var("NO_COLOR").is_none();
    let installed = match &tracer {
        // Without traces the filter is global, which keeps tracing's fast
        // path: disabled callsites cost nothing.
        None => tracing_subscriber::registry()
            .with(filter)
            .with(log_lines(settings.log.format, ansi))
            .try_init(),
        Some(provider) => {
            let otel = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(service))
                .with_filter(traced());
            tracing_subscriber::registry()
                .with(log_lines(settings.log.format, ansi).with_filter(filter))
                .with(otel)
                .try_init()
        }
    };
    installed.map_err(|e| TelemetryError::Installed(e.to_string()))?;
    let _ = ON.set((tracer.is_some(), meter.is_some()));
    if tracer.is_some() || exports.metrics {
        tracing::info!(
            traces = tracer.is_some(),
            metrics = exports.metrics,
            "exporting telemetry over OTLP"
        );
    }
    Ok(Telemetry {
        tracer,
        meter,
        registry,
    })
}

/// The process's resource: `service.name` defaults to `service` unless
/// `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names one (the SDK
/// reads both).
fn resource(service: &'static str, var: &impl Fn(&str) -> Option<String>) -> Resource {
    let named = var("OTEL_SERVICE_NAME").is_some_and(|v| !v.is_empty())
        || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| {
            attrs
                .split(',')
                .any(|kv| kv.trim_start().starts_with("service.name="))
        });
    let builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if named {
        builder.build()
    } else {
        builder.with_service_name(service).build()
    }
}

/// The log-line layer: text (coloured only for a person at a terminal,
/// not for files and collectors) or JSON lines.
fn log_lines<S>(format: LogFormat, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(json::JsonLines)
            .boxed(),
    }
}

/// What goes into traces: Roadie's spans at info and above, everything
/// else only from warn.
fn traced() -> tracing_subscriber::filter::Targets {
    use tracing::level_filters::LevelFilter;
    tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::WARN)
        .with_targets(
            [
                "roadie_server",
                "roadie_worker",
                "roadie_store",
                "roadie_telemetry",
            ]
            .map(|target| (target, LevelFilter::INFO)),
        )
}

/// The target of the store's client spans (`db entry_put`, `db job_claim`,
/// ...: `#[tracing::instrument(target = "roadie_store::db", ...)]` in
/// `roadie-store`). They follow OpenTelemetry's conventions for a database
/// client and are for traces only: a log line gains nothing from them, and
/// a span the log filter enables costs every call its making (about 5 µs a
/// Put, BENCHMARKS.md), so the log filter never enables them.
const CLIENT_SPANS: &str = "roadie_store::db";

/// `RUST_LOG` if set, else `log.level`; never the store's client spans.
fn filter(level: &str, rust_log: Option<String>) -> Result<EnvFilter, TelemetryError> {
    let (setting, directives) = match rust_log {
        Some(directives) if !directives.trim().is_empty() => ("RUST_LOG", directives),
        _ => ("log.level", level.to_owned()),
    };
    // The client spans' target is more specific than any the setting names
    // for `roadie_store` or as the default, so its `off` holds.
    EnvFilter::builder()
        .parse(format!("{directives},{CLIENT_SPANS}=off"))
        .map_err(|e| TelemetryError::Level {
            setting,
            message: e.to_string(),
        })
}

impl Telemetry {
    /// Flushes and stops the exporters, for at most [`FLUSH_LIMIT`] (an
    /// unreachable collector must not hold the exit past the grace period).
    /// The SDK blocks while it flushes, so this runs on a blocking thread
    /// while the runtime drives the export.
    pub async fn shutdown(self) {
        let Telemetry { tracer, meter, .. } = self;
        let flushed = tokio::task::spawn_blocking(move || {
            if let Some(tracer) = tracer
                && let Err(error) = tracer.shutdown()
            {
                eprintln!("telemetry: spans not flushed: {error}");
            }
            if let Some(meter) = meter
                && let Err(error) = meter.shutdown()
            {
                eprintln!("telemetry: metrics not flushed: {error}");
            }
        });
        match tokio::time::timeout(FLUSH_LIMIT, flushed).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("telemetry: the flush failed: {error}"),
            Err(_) => {
                eprintln!("telemetry: the flush took over {FLUSH_LIMIT:?}; exiting without it")
            }
        }
    }
}

/// Registers `db.client.connection.count` (OpenTelemetry's database
/// conventions) on `meter`: a store pool's connections by state, from
/// `usage` (`db.system.name`, connections open, of them idle), read when a
/// reader collects; `None` once the pool is gone.
pub fn observe_pool(
    meter: &opentelemetry::metrics::Meter,
    usage: impl Fn() -> Option<(&'static str, u32, u32)> + Send + Sync + 'static,
) {
    meter
        .u64_observable_gauge("db.client.connection.count")
        .with_description("Store connections by state (used, idle)")
        .with_unit("{connection}")
        .with_callback(move |o| {
            if let Some((system, open, idle)) = usage() {
                let system = KeyValue::new("db.system.name", system);
                let used = open.saturating_sub(idle);
                for (state, n) in [("used", used), ("idle", idle)] {
                    o.observe(
                        u64::from(n),
                        &[
                            system.clone(),
                            KeyValue::new("db.client.connection.state", state),
                        ],
                    );
                }
            }
        })
        .build();
}

/// A registry's metrics in Prometheus text format.
fn prometheus_text(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut out = Vec::new();
    match prometheus::TextEncoder::new().encode(&registry.gather(), &mut out) {
        Ok(()) => String::from_utf8_lossy(&out).into_owned(),
        Err(error) => {
            tracing::warn!(%error, "cannot encode the metrics");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn nothing_is_exported_unless_an_endpoint_is_set() {
        let none = Exports::from_env(&env(&[]));
        assert_eq!(
            none,
            Exports {
                traces: false,
                metrics: false
            }
        );
        let all = Exports::from_env(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]));
        assert_eq!(
            all,
            Exports {
                traces: true,
                metrics: true
            }
        );
        let traces = Exports::from_env(&env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces",
        )]));
        assert_eq!(
            traces,
            Exports {
                traces: true,
                metrics: false
            }
        );
    }

    #[test]
    fn the_sdk_can_be_switched_off_whatever_else_is_set() {
        let off = Exports::from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ]));
        assert_eq!(
            off,
            Exports {
                traces: false,
                metrics: false
            }
        );
        let no_metrics = Exports::from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ]));
        assert_eq!(
            no_metrics,
            Exports {
                traces: true,
                metrics: false
            }
        );
    }

    #[test]
    fn log_lines_never_enable_the_stores_client_spans() {
        use tracing_subscriber::layer::SubscriberExt as _;
        for directives in [
            None,
            Some("debug".to_owned()),
            Some("info,roadie_store=trace".to_owned()),
        ] {
            let filter = filter("info", directives.clone()).expect("filter");
            let subscriber = tracing_subscriber::registry().with(filter);
            tracing::subscriber::with_default(subscriber, || {
                let client = tracing::info_span!(target: CLIENT_SPANS, "db entry_put");
                assert!(client.is_disabled(), "{directives:?}");
                let call = tracing::info_span!(target: "roadie_server::rpc", "rpc");
                assert!(!call.is_disabled(), "{directives:?}");
            });
        }
    }

    #[test]
    fn rust_log_overrides_the_level_and_bad_filters_name_their_source() {
        assert!(filter("info", None).is_ok());
        let bad = filter("info", Some("=[".to_owned())).expect_err("bad RUST_LOG");
        assert!(bad.to_string().starts_with("RUST_LOG"), "{bad}");
        let bad = filter("=[", None).expect_err("bad level");
        assert!(bad.to_string().starts_with("log.level"), "{bad}");
    }
}

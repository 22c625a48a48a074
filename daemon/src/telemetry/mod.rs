//! The monitor observes itself: logs (tracing-subscriber), traces (OTLP
//! through tracing-opentelemetry), Prometheus metrics and health endpoints.

pub mod http;
pub mod metrics;

use std::collections::HashMap;

use opentelemetry::KeyValue;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use metrics::{Health, Metrics};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the otlp exporter: {0}")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    #[error("invalid otlp header {0:?}: expected name and value")]
    Header(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Keeps the tracer provider alive; dropping it flushes pending spans.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("modelwatch: flushing traces failed: {e}");
            }
        }
    }
}

/// Logs only: for commands that export no traces.
pub fn init_logging(config: &LogConfig) {
    let _ = tracing_subscriber::registry()
        .with(fmt_layer(config))
        .try_init();
}

fn fmt_layer<S>(config: &LogConfig) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    // RUST_LOG wins over the config, as operators expect.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match config.format {
        LogFormat::Text => layer.with_filter(filter).boxed(),
        LogFormat::Json => layer.json().with_filter(filter).boxed(),
    }
}

/// Where traces go: the config's endpoint, else the standard `OTEL_*`
/// variables, else nowhere (and then nothing is exported or logged about it).
pub fn otlp_endpoint(config: &OtlpConfig) -> Option<String> {
    if !config.endpoint.is_empty() {
        return Some(config.endpoint.clone());
    }
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
}

/// Logs, and spans through OpenTelemetry. With an OTLP endpoint the spans
/// are exported in batches; without one the tracing layer still runs, so
/// that trace context from message headers reaches stored alerts, and
/// nothing is exported or complained about. Must run inside the tokio
/// runtime: the gRPC client spawns its connection onto it.
pub fn init(log: &LogConfig, otlp: &OtlpConfig) -> Result<TelemetryGuard, TelemetryError> {
    let (subscriber, provider) = subscriber(log, otlp)?;
    let _ = tracing::subscriber::set_global_default(subscriber);
    if let Some(endpoint) = otlp_endpoint(otlp) {
        tracing::info!(%endpoint, "exporting traces over otlp");
    }
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// The subscriber `init` installs, for callers that scope it themselves
/// (the tracing-overhead benchmark).
pub fn subscriber(
    log: &LogConfig,
    otlp: &OtlpConfig,
) -> Result<
    (
        Box<dyn tracing::Subscriber + Send + Sync>,
        SdkTracerProvider,
    ),
    TelemetryError,
> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = Resource::builder()
        .with_service_name(otlp.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = otlp_endpoint(otlp) {
        builder = builder.with_batch_exporter(exporter(otlp, &endpoint)?);
    }
    let provider = builder.build();
    let tracer = provider.tracer("modelwatch");
    // Spans follow the pipeline at info and above, whatever the log filter says.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(EnvFilter::new("off,modelwatch=info"));
    let subscriber = tracing_subscriber::registry()
        .with(fmt_layer(log))
        .with(otel);
    Ok((Box::new(subscriber), provider))
}

fn exporter(
    otlp: &OtlpConfig,
    endpoint: &str,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let protocol = otlp.protocol.unwrap_or_else(|| {
        match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            Ok("http/protobuf") => OtlpProtocol::HttpProtobuf,
            _ => OtlpProtocol::Grpc,
        }
    });
    let timeout = std::time::Duration::from_secs(otlp.timeout_secs.max(1));
    match protocol {
        OtlpProtocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (k, v) in &otlp.headers {
                let key =
                    tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .map_err(|_| TelemetryError::Header(k.clone()))?;
                let value = v.parse().map_err(|_| TelemetryError::Header(k.clone()))?;
                metadata.insert(key, value);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(timeout)
                .with_metadata(metadata)
                .build()
        }
        OtlpProtocol::HttpProtobuf => {
            let headers: HashMap<String, String> = otlp.headers.clone().into_iter().collect();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .with_timeout(timeout)
                .with_headers(headers)
                .build()
        }
    }
    .map_err(TelemetryError::Exporter)
}

/// Makes `span` a child of the W3C trace context carried by a message
/// (`traceparent`, `tracestate` headers), so the monitor's spans join the
/// serving system's trace of the same request.
pub fn link_parent(span: &tracing::Span, headers: &[(String, String)]) {
    if headers.is_empty() {
        return;
    }
    let carrier: HashMap<String, String> = headers.iter().cloned().collect();
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace id of `span` as 32 hex digits, when it belongs to a trace.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The monitor's own logs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// tracing filter directive, overridden by `RUST_LOG`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            filter: "info".into(),
        }
    }
}

/// The monitor's own metrics, health endpoints and traces.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints; empty disables them.
    pub listen: String,
    /// Trace export over OTLP.
    pub otlp: OtlpConfig,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            otlp: OtlpConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OtlpProtocol {
    /// OTLP over gRPC.
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP protobuf over HTTP.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// Collector URL (`http://collector:4317`). Empty: the standard
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// variables, else no export.
    pub endpoint: String,
    /// `grpc` or `http/protobuf`; unset: `OTEL_EXPORTER_OTLP_PROTOCOL`, else `grpc`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocol>,
    /// Extra request headers (authentication); `OTEL_EXPORTER_OTLP_HEADERS` also applies.
    pub headers: BTreeMap<String, String>,
    /// Export timeout in seconds.
    pub timeout_secs: u64,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            protocol: None,
            headers: BTreeMap::new(),
            timeout_secs: 10,
            service_name: "modelwatch".into(),
        }
    }
}

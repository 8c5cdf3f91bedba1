//! Distributed tracing: one span per hop a proxy sees (a ztunnel connection, a waypoint request),
//! exported over OTLP (gRPC or HTTP/protobuf) to a collector such as Jaeger's.
//!
//! Off unless an endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`). The data path decides sampling
//! when a hop starts (the parent's flag, or the configured ratio of new trace ids), so the W3C
//! `traceparent` it sends on carries the decision; an unsampled hop costs nothing more. A sampled
//! hop becomes one `SpanData` when it ends, handed to a bounded queue without waiting: an export
//! task batches the queue (512 spans or 1 s) and sends it; when the queue is full the span is
//! dropped and counted (`mesh_trace_spans_total{result="dropped"}`), never the connection slowed.

use std::borrow::Cow;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::InstrumentationScope;
/// What a hop's caller needs to name its span and attributes.
pub use opentelemetry::{trace::SpanKind, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc;

use crate::hbone::TraceParent;

/// Spans waiting for export; more are dropped.
pub const QUEUE: usize = 2048;
/// Spans per export request.
const BATCH: usize = 512;
/// How long a span may wait for its batch to fill.
const BATCH_DELAY: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How spans travel to the collector (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        other => Err(format!("{other}: want grpc or http/protobuf")),
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{s}: want a ratio from 0 to 1 (0.01 samples 1% of new traces)"
        )),
    }
}

/// Tracing settings, shared by every proxy binary (the OpenTelemetry SDKs' environment names).
#[derive(Debug, Clone, clap::Args)]
pub struct TracingSettings {
    /// OTLP collector to send spans to, e.g. Jaeger's `http://jaeger-collector.istio-system:4317`
    /// (gRPC) or `http://...:4318` (HTTP, `/v1/traces` added when the URL has no path). Tracing
    /// is off when unset.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub endpoint: Option<String>,

    /// `grpc` or `http/protobuf`.
    #[arg(long = "otlp-protocol", env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "grpc", value_parser = parse_protocol)]
    pub protocol: Protocol,

    /// Share of new traces sampled (0 to 1; Istio's default is 1%). A hop that continues a
    /// trace follows the caller's decision (the `traceparent` sampled flag).
    #[arg(long = "trace-sampling", env = "OTEL_TRACES_SAMPLER_ARG", default_value = "0.01", value_parser = parse_ratio)]
    pub sampling: f64,

    /// `service.name` of the spans (default: the binary's name).
    #[arg(long = "otel-service-name", env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: Protocol::Grpc,
            sampling: 0.01,
            service_name: None,
        }
    }
}

static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// `mesh_trace_spans_total{result}` when tracing was ever on in this process, else nothing.
pub fn render() -> String {
    let (e, d, f) = (
        EXPORTED.load(Ordering::Relaxed),
        DROPPED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
    );
    if !STARTED.load(Ordering::Relaxed) {
        return String::new();
    }
    let mut out = String::from(
        "# HELP mesh_trace_spans_total Spans exported over OTLP, dropped because the queue was full, or lost in a failed export.\n# TYPE mesh_trace_spans_total counter\n",
    );
    for (result, n) in [("exported", e), ("dropped", d), ("failed", f)] {
        let _ = writeln!(out, "mesh_trace_spans_total{{result=\"{result}\"}} {n}");
    }
    out
}

static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A proxy's tracing: off, or a queue to its export task. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tracing(Option<Arc<Exporting>>);

struct Exporting {
    queue: mpsc::Sender<SpanData>,
    /// Trace ids whose low 64 bits are below this are sampled.
    bound: u64,
    scope: InstrumentationScope,
    /// The export task, awaited by `shutdown`.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Tracing(on)"
        } else {
            "Tracing(off)"
        })
    }
}

/// The endpoint as the exporter wants it: HTTP gets `/v1/traces` when no path was given.
fn endpoint_url(endpoint: &str, protocol: Protocol) -> Result<String, String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!(
            "OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: want http://HOST:PORT or https://HOST:PORT"
        ));
    }
    let bare = matches!(uri.path(), "" | "/");
    Ok(match protocol {
        Protocol::HttpProtobuf if bare => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
        _ => endpoint.to_owned(),
    })
}

impl Tracing {
    pub fn off() -> Self {
        Self(None)
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Starts exporting as `settings` say (off when no endpoint is set). Needs a tokio runtime;
    /// `resource` adds attributes such as `k8s.pod.name` to `service.name`.
    pub fn start(
        settings: &TracingSettings,
        binary: &'static str,
        resource: Vec<KeyValue>,
    ) -> Result<Self, String> {
        let Some(endpoint) = settings.endpoint.as_deref().filter(|e| !e.is_empty()) else {
            return Ok(Self::off());
        };
        let url = endpoint_url(endpoint, settings.protocol)?;
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let exporter = match settings.protocol {
            Protocol::Grpc => builder
                .with_tonic()
                .with_endpoint(url)
                .with_timeout(EXPORT_TIMEOUT)
                .build(),
            // hyper's client (the crate's `hyper-client` feature), on this runtime.
            Protocol::HttpProtobuf => builder
                .with_http()
                .with_endpoint(url)
                .with_timeout(EXPORT_TIMEOUT)
                .build(),
        }
        .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
        let service = settings.service_name.clone().unwrap_or(binary.to_owned());
        let resource = Resource::builder_empty()
            .with_service_name(service)
            .with_attributes(resource)
            .build();
        Ok(Self::with_exporter(
            exporter,
            resource,
            settings.sampling,
            binary,
        ))
    }

    /// Exports through `exporter` (the OTLP one, or a test's).
    pub fn with_exporter<E: SpanExporter + 'static>(
        mut exporter: E,
        resource: Resource,
        sampling: f64,
        binary: &'static str,
    ) -> Self {
        exporter.set_resource(&resource);
        STARTED.store(true, Ordering::Relaxed);
        let (queue, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(export_loop(exporter, rx));
        Self(Some(Arc::new(Exporting {
            queue,
            bound: (sampling.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
            scope: InstrumentationScope::builder(binary)
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            task: Mutex::new(Some(task)),
        })))
    }

    /// A hop continuing `parent`'s trace, or starting a new one; `None` when tracing is off.
    /// Its `context` is what to send on as `traceparent`.
    pub fn hop(&self, parent: Option<TraceParent>) -> Option<Hop> {
        let exporting = self.0.as_ref()?;
        let context = match parent {
            Some(p) => p.child(),
            None => {
                let fresh = TraceParent::random();
                TraceParent {
                    sampled: (fresh.trace_id as u64) < exporting.bound
                        || exporting.bound == u64::MAX,
                    ..fresh
                }
            }
        };
        Some(Hop {
            context,
            parent: parent.map(|p| p.span_id),
            start: SystemTime::now(),
            early: Vec::new(),
            exporting: exporting.clone(),
        })
    }

    /// A hop continuing the `traceparent` in `headers` (a new trace without one); `None`, with
    /// nothing parsed, when tracing is off.
    pub fn hop_from(&self, headers: &http::HeaderMap) -> Option<Hop> {
        self.0.as_ref()?;
        self.hop(
            headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(TraceParent::parse),
        )
    }

    /// Sends what is queued (waiting up to `timeout`) and stops exporting.
    pub async fn shutdown(&self, timeout: Duration) {
        let Some(exporting) = &self.0 else { return };
        let task = exporting.task.lock().expect("tracing task").take();
        if let Some(task) = task {
            // The loop ends after a final export once every sender is gone; ours may not be
            // the last (clones live in proxies), so ask it to flush and stop explicitly.
            let _ = exporting.queue.send(SpanData::stop_marker()).await;
            let _ = tokio::time::timeout(timeout, task).await;
        }
    }
}

/// One hop of a trace, from its start until `finish`.
pub struct Hop {
    /// This hop's trace context: the trace, this span's id, the sampling decision.
    pub context: TraceParent,
    parent: Option<u64>,
    start: SystemTime,
    /// Attributes gathered before `finish` (kept only when sampled).
    early: Vec<KeyValue>,
    exporting: Arc<Exporting>,
}

impl Hop {
    pub fn sampled(&self) -> bool {
        self.context.sampled
    }

    /// Adds an attribute known before the end (dropped unless sampled).
    pub fn add(&mut self, attribute: impl FnOnce() -> KeyValue) {
        if self.context.sampled {
            self.early.push(attribute());
        }
    }

    /// Ends the span now; `error` marks it failed with that description. Never waits: a full
    /// queue drops the span.
    pub fn finish(
        mut self,
        name: &'static str,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        error: Option<String>,
    ) {
        if !self.context.sampled {
            return;
        }
        let attributes = if self.early.is_empty() {
            attributes
        } else {
            self.early.extend(attributes);
            std::mem::take(&mut self.early)
        };
        let trace_id = TraceId::from(self.context.trace_id);
        let span = SpanData {
            span_context: SpanContext::new(
                trace_id,
                SpanId::from(self.context.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: self.parent.map_or(SpanId::INVALID, SpanId::from),
            parent_span_is_remote: self.parent.is_some(),
            span_kind: kind,
            name: Cow::Borrowed(name),
            start_time: self.start,
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match error {
                Some(e) => Status::error(e),
                None => Status::Unset,
            },
            instrumentation_scope: self.exporting.scope.clone(),
        };
        if self.exporting.queue.try_send(span).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

trait StopMarker {
    fn stop_marker() -> Self;
    fn is_stop_marker(&self) -> bool;
}

/// `shutdown` asks the export loop to flush and stop with a span no hop can make: an invalid
/// (all-zero) span context.
impl StopMarker for SpanData {
    fn stop_marker() -> Self {
        SpanData {
            span_context: SpanContext::NONE,
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed(""),
            start_time: SystemTime::UNIX_EPOCH,
            end_time: SystemTime::UNIX_EPOCH,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::default(),
        }
    }

    fn is_stop_marker(&self) -> bool {
        !self.span_context.is_valid()
    }
}

/// Collects up to `BATCH` spans (or what arrives within `BATCH_DELAY` of the first) and exports
/// them, one request at a time, until stopped.
async fn export_loop<E: SpanExporter>(exporter: E, mut rx: mpsc::Receiver<SpanData>) {
    let mut warned: Option<std::time::Instant> = None;
    loop {
        let Some(first) = rx.recv().await else { break };
        let mut stop = first.is_stop_marker();
        let mut batch = Vec::with_capacity(BATCH);
        if !stop {
            batch.push(first);
            let deadline = tokio::time::Instant::now() + BATCH_DELAY;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(s)) if s.is_stop_marker() => {
                        stop = true;
                        break;
                    }
                    Ok(Some(s)) => batch.push(s),
                    Ok(None) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(batch)).await {
                Ok(Ok(())) => {
                    EXPORTED.fetch_add(n, Ordering::Relaxed);
                }
                outcome => {
                    FAILED.fetch_add(n, Ordering::Relaxed);
                    // One line a minute, not one per batch, while the collector is away.
                    if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        warned = Some(std::time::Instant::now());
                        let why = match outcome {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".into(),
                        };
                        tracing::warn!("OTLP export of {n} spans failed: {why}");
                    }
                }
            }
        }
        if stop {
            break;
        }
    }
    let _ = exporter.shutdown();
}

/// `key=value` span attributes from label pairs, skipping empty and `unknown` values.
pub fn attributes<'a>(
    prefix: &'static str,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<KeyValue> {
    pairs
        .into_iter()
        .filter(|(_, v)| !v.is_empty() && *v != "unknown")
        .map(|(k, v)| KeyValue::new(format!("{prefix}{k}"), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests;

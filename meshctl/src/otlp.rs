//! `meshctl traces`: a small OTLP trace receiver (gRPC on 4317, HTTP/protobuf `/v1/traces` on
//! 4318, as a collector or Jaeger listens) that prints each span the mesh's proxies export, one
//! line each. For a quick look without Jaeger, and the receiver the suites export to.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

/// Spans kept for `spans()`; older ones are forgotten.
const KEPT: usize = 10_000;
/// Largest OTLP/HTTP request body accepted.
const MAX_BODY: usize = 16 << 20;

/// One received span, flattened: its resource's `service.name` and its attributes as text.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    /// `client`, `server`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: &'static str,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a trace's first span.
    pub parent_span_id: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: Vec<(String, String)>,
    /// The status message of a failed span.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `grpc` or `http`.
    pub received_over: &'static str,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// One line: time, service, span, kind, trace/span/parent ids, duration, status, attributes.
    pub fn line(&self) -> String {
        let secs = self.start_unix_nano / 1_000_000_000;
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        let ms = (self.start_unix_nano / 1_000_000) % 1000;
        let took = self.end_unix_nano.saturating_sub(self.start_unix_nano) as f64 / 1e6;
        let short = |id: &str| id.get(..8).unwrap_or("-").to_owned();
        let mut out = format!(
            "{h:02}:{m:02}:{s:02}.{ms:03} {} {:?} {} trace={} span={} parent={} {took:.1}ms",
            self.service,
            self.name,
            self.kind,
            short(&self.trace_id),
            short(&self.span_id),
            if self.parent_span_id.is_empty() {
                "-".into()
            } else {
                short(&self.parent_span_id)
            },
        );
        if let Some(e) = &self.error {
            let _ = write!(out, " ERROR {e:?}");
        }
        for (k, v) in &self.attributes {
            let _ = write!(out, " {k}={v}");
        }
        out
    }
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn pairs(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Every span of an export request, with its resource's service name.
pub fn flatten(req: &ExportTraceServiceRequest, over: &'static str) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
            let error = span
                .status
                .as_ref()
                .filter(|s| s.code == 2)
                .map(|s| s.message.clone());
            out.push(ReceivedSpan {
                service: service.clone(),
                name: span.name.clone(),
                kind: match span.kind {
                    1 => "internal",
                    2 => "server",
                    3 => "client",
                    4 => "producer",
                    5 => "consumer",
                    _ => "unspecified",
                },
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                start_unix_nano: span.start_time_unix_nano,
                end_unix_nano: span.end_time_unix_nano,
                attributes: pairs(&span.attributes),
                error,
                received_over: over,
            });
        }
    }
    out
}

/// Received spans: the last [`KEPT`], and a live feed.
pub struct Collector {
    kept: Mutex<VecDeque<ReceivedSpan>>,
    live: broadcast::Sender<ReceivedSpan>,
}

impl Default for Collector {
    fn default() -> Self {
        Self {
            kept: Mutex::new(VecDeque::new()),
            live: broadcast::channel(4096).0,
        }
    }
}

impl Collector {
    fn receive(&self, req: &ExportTraceServiceRequest, over: &'static str) {
        let spans = flatten(req, over);
        let mut kept = self.kept.lock().expect("spans");
        for span in spans {
            let _ = self.live.send(span.clone());
            if kept.len() == KEPT {
                kept.pop_front();
            }
            kept.push_back(span);
        }
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.kept.lock().expect("spans").iter().cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ReceivedSpan> {
        self.live.subscribe()
    }

    /// Waits until `pick` finds what it wants among the received spans, up to `limit`.
    pub async fn wait_for<T>(
        &self,
        limit: Duration,
        pick: impl Fn(&[ReceivedSpan]) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(t) = pick(&self.spans()) {
                return Ok(t);
            }
            if tokio::time::Instant::now() > deadline {
                let got: Vec<String> = self.spans().iter().map(ReceivedSpan::line).collect();
                return Err(format!(
                    "not received within {limit:?}; got {} spans:\n{}",
                    got.len(),
                    got.join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Serves OTLP/gRPC on `listener` until the runtime stops.
    pub fn serve_grpc(self: &Arc<Self>, listener: TcpListener) {
        let service = TraceServiceServer::new(Grpc(self.clone()));
        let incoming = futures_util::stream::unfold(listener, |l| async move {
            Some((l.accept().await.map(|(s, _)| s), l))
        });
        tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("OTLP gRPC receiver stopped: {e}");
            }
        });
    }

    /// Serves OTLP/HTTP (`POST /v1/traces`, protobuf) on `listener` until the runtime stops.
    pub fn serve_http(self: &Arc<Self>, listener: TcpListener) {
        let collector = self.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let collector = collector.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let collector = collector.clone();
                        async move { Ok::<_, Infallible>(collector.http(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
    }

    async fn http(&self, req: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
        let reply = |status: u16, body: String| {
            let mut r = http::Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
            r
        };
        if req.method() != http::Method::POST || req.uri().path() != "/v1/traces" {
            return reply(404, "OTLP/HTTP traces are POST /v1/traces\n".into());
        }
        let protobuf = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
        if !protobuf {
            return reply(415, "want Content-Type: application/x-protobuf\n".into());
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return reply(400, format!("reading the body: {e}\n")),
        };
        match ExportTraceServiceRequest::decode(body) {
            Ok(export) => {
                self.receive(&export, "http");
                let mut r = reply(200, String::new());
                *r.body_mut() =
                    Full::new(ExportTraceServiceResponse::default().encode_to_vec().into());
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-protobuf"),
                );
                r
            }
            Err(e) => reply(400, format!("not an ExportTraceServiceRequest: {e}\n")),
        }
    }
}

struct Grpc(Arc<Collector>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.receive(req.get_ref(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Binds both receivers; `None` leaves one off.
pub async fn start(
    grpc: Option<SocketAddr>,
    http: Option<SocketAddr>,
) -> Result<(Arc<Collector>, Option<SocketAddr>, Option<SocketAddr>), String> {
    let collector = Arc::new(Collector::default());
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| format!("listening on {addr}: {e}"))
    };
    let mut bound = (None, None);
    if let Some(addr) = grpc {
        let l = bind(addr).await?;
        bound.0 = l.local_addr().ok();
        collector.serve_grpc(l);
    }
    if let Some(addr) = http {
        let l = bind(addr).await?;
        bound.1 = l.local_addr().ok();
        collector.serve_http(l);
    }
    Ok((collector, bound.0, bound.1))
}

/// `meshctl traces`: prints spans as they arrive until interrupted (or `limit` spans).
pub fn run(
    grpc: SocketAddr,
    http: SocketAddr,
    json: bool,
    limit: Option<usize>,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (collector, g, h) = start(Some(grpc), Some(http)).await?;
        let mut live = collector.subscribe();
        eprintln!(
            "receiving OTLP traces: gRPC on {}, HTTP on http://{}/v1/traces",
            g.expect("bound"),
            h.expect("bound")
        );
        let mut printed = 0;
        while limit.is_none_or(|n| printed < n) {
            match live.recv().await {
                Ok(span) if json => println!("{}", serde_json::to_string(&span).expect("json")),
                Ok(span) => println!("{}", span.line()),
                Err(broadcast::error::RecvError::Lagged(n)) => eprintln!("({n} spans not shown)"),
                Err(broadcast::error::RecvError::Closed) => break,
            }
            printed += 1;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests;

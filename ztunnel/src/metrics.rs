//! Istio's TCP metrics (names and labels as Istio's ztunnel exports them, so existing
//! dashboards work), recorded through the `metrics` crate into a Prometheus recorder.
//!
//! Each ztunnel instance owns its recorder (not the process-global one), so several instances
//! in one process, as in tests, keep separate counts. Counters are registered once per
//! connection, never per byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use metrics::{Counter, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use crate::flows::{Event, Flow, FlowLog, Kind, Peer};
use crate::state::{ServiceEntry, WorkloadEntry};
use meshcore::otel::{Hop, KeyValue, SpanKind, Tracing};
use meshcore::prom_text::Family;

pub const OPENED: &str = "istio_tcp_connections_opened_total";
pub const CLOSED: &str = "istio_tcp_connections_closed_total";
pub const FAILED: &str = "istio_tcp_connections_failed_total";
pub const RECEIVED: &str = "istio_tcp_received_bytes_total";
pub const SENT: &str = "istio_tcp_sent_bytes_total";

/// Every counter family ztunnel exports, declared from the first scrape.
const FAMILIES: &[Family] = &[
    Family {
        name: OPENED,
        kind: "counter",
        help: "TCP connections opened",
    },
    Family {
        name: CLOSED,
        kind: "counter",
        help: "TCP connections closed",
    },
    Family {
        name: FAILED,
        kind: "counter",
        help: "TCP connections that failed (denied by policy, upstream unreachable)",
    },
    Family {
        name: RECEIVED,
        kind: "counter",
        help: "Bytes received by the destination (client to server)",
    },
    Family {
        name: SENT,
        kind: "counter",
        help: "Bytes sent by the destination (server to client)",
    },
    Family {
        name: crate::proxy::egress::DENIED,
        kind: "counter",
        help: "Outbound connections refused at the source by an egress policy (by source workload and deciding policy)",
    },
];

static META: Metadata<'static> = Metadata::new("ztunnel", Level::INFO, Some(module_path!()));

pub struct Metrics {
    recorder: PrometheusRecorder,
    /// Every connection's open, close, denial and failure, for `/flows`.
    pub flows: FlowLog,
    /// OTLP span export of connections (off unless configured).
    pub tracing: Tracing,
}

/// The process's span export, as its settings say.
pub fn start_tracing(settings: &crate::settings::Settings) -> Result<Tracing, String> {
    let mut resource = Vec::new();
    for (key, var) in [
        ("k8s.pod.name", "POD_NAME"),
        ("k8s.namespace.name", "POD_NAMESPACE"),
        ("k8s.node.name", "NODE_NAME"),
    ] {
        if let Ok(v) = std::env::var(var) {
            resource.push(KeyValue::new(key, v));
        }
    }
    Tracing::start(&settings.tracing, "ztunnel", resource)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        for f in FAMILIES {
            let unit = if f.name.ends_with("_bytes_total") {
                Unit::Bytes
            } else {
                Unit::Count
            };
            recorder.describe_counter(
                KeyName::from_const_str(f.name),
                Some(unit),
                SharedString::const_str(f.help),
            );
        }
        Self {
            recorder,
            flows: FlowLog::default(),
            tracing: Tracing::off(),
        }
    }

    /// The same metrics, exporting connection spans through `tracing`.
    pub fn traced(self, tracing: Tracing) -> Self {
        Self { tracing, ..self }
    }

    /// Prometheus text exposition of everything recorded so far.
    /// Families nothing was recorded in yet are declared too, as Istio's ztunnel does.
    pub fn render(&self) -> String {
        let mut text = self.recorder.handle().render();
        meshcore::prom_text::declare_unrecorded(&mut text, FAMILIES);
        text
    }

    fn counter(&self, name: &'static str, labels: &[Label]) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels.to_vec()), &META)
    }

    /// Counts an established connection as opened; the returned record counts its bytes and
    /// its close.
    pub fn opened(self: &Arc<Self>, labels: ConnectionLabels) -> ConnectionRecord {
        let flow = self.flows.enabled().then(|| Arc::new(labels.flow()));
        if let Some(flow) = &flow {
            self.flows.record(Event::new(Kind::Opened, flow.clone()));
        }
        let labels = labels.into_labels("-");
        self.counter(OPENED, &labels).increment(1);
        ConnectionRecord {
            metrics: self.clone(),
            labels,
            flow,
            started: Instant::now(),
            hop: None,
        }
    }

    /// Counts a connection that could not be established (`flag`: `DENY`, `CONNECT`, ...);
    /// `reason` goes to its flow record (the deciding policy, the error).
    pub fn failed(
        &self,
        labels: ConnectionLabels,
        flag: &'static str,
        reason: impl std::fmt::Display,
    ) {
        if self.flows.enabled() {
            let kind = if flag == "DENY" {
                Kind::Denied
            } else {
                Kind::Failed
            };
            self.flows.record(Event::refused(
                kind,
                Arc::new(labels.flow()),
                flag,
                reason.to_string(),
            ));
        }
        let labels = labels.into_labels(flag);
        self.counter(FAILED, &labels).increment(1);
    }
}

impl Metrics {
    /// Counts an outbound connection refused by egress policy `policy` (the deciding policy,
    /// or the default-deny policies, as the config names them).
    pub fn egress_denied(&self, namespace: &str, workload: &str, policy: &str) {
        let labels = [
            Label::new("source_workload", workload.to_owned()),
            Label::new("source_workload_namespace", namespace.to_owned()),
            Label::new("policy", policy.to_owned()),
        ];
        self.counter(crate::proxy::egress::DENIED, &labels)
            .increment(1);
    }
}

/// A connection between open and close.
pub struct ConnectionRecord {
    metrics: Arc<Metrics>,
    labels: Vec<Label>,
    /// `None` when flow records are off.
    flow: Option<Arc<Flow>>,
    started: Instant,
    /// The connection's span, ended with the close (`None` when tracing is off).
    hop: Option<(Hop, &'static str, SpanKind)>,
}

/// Span names: ztunnel's two hops of a connection.
pub const OUTBOUND_SPAN: &str = "ztunnel outbound";
pub const INBOUND_SPAN: &str = "ztunnel inbound";

/// Ends a connection's span that never opened: `flag` and `reason` say why.
pub fn hop_failed(
    hop: Option<Hop>,
    name: &'static str,
    kind: SpanKind,
    flag: &str,
    reason: String,
) {
    if let Some(hop) = hop {
        hop.finish(
            name,
            kind,
            vec![KeyValue::new("istio.response_flags", flag.to_owned())],
            Some(reason),
        );
    }
}

impl ConnectionRecord {
    /// Ends `hop` as `name` when the connection closes, with its labels and bytes.
    pub fn with_span(mut self, hop: Option<Hop>, name: &'static str, kind: SpanKind) -> Self {
        self.hop = hop.map(|h| (h, name, kind));
        self
    }

    /// `received`: client → server bytes; `sent`: server → client bytes.
    pub fn closed(self, received: u64, sent: u64) {
        if let Some((hop, name, kind)) = self.hop.filter(|(h, _, _)| h.sampled()) {
            let mut attributes = meshcore::otel::attributes(
                "istio.",
                self.labels.iter().map(|l| (l.key(), l.value())),
            );
            attributes.push(KeyValue::new("istio.received_bytes", received as i64));
            attributes.push(KeyValue::new("istio.sent_bytes", sent as i64));
            hop.finish(name, kind, attributes, None);
        }
        self.metrics
            .counter(RECEIVED, &self.labels)
            .increment(received);
        self.metrics.counter(SENT, &self.labels).increment(sent);
        self.metrics.counter(CLOSED, &self.labels).increment(1);
        if let Some(flow) = self.flow {
            self.metrics
                .flows
                .record(Event::closed(flow, received, sent, self.started.elapsed()));
        }
    }
}

/// Which side reports.
#[derive(Debug, Clone, Copy)]
pub enum Reporter {
    Source,
    Destination,
}

/// The label values of one connection.
pub struct ConnectionLabels<'a> {
    pub reporter: Reporter,
    pub cluster: &'a str,
    pub source: Option<&'a WorkloadEntry>,
    /// The source's proven (inbound) or own (outbound) identity, as `spiffe://...`.
    pub source_principal: Option<String>,
    pub destination: Option<&'a WorkloadEntry>,
    pub destination_service: Option<&'a ServiceEntry>,
    pub destination_principal: Option<String>,
    pub mutual_tls: bool,
    /// The client's and the destination's addresses, for flow records.
    pub source_addr: Option<SocketAddr>,
    pub destination_addr: Option<SocketAddr>,
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".into()
    } else {
        s.to_owned()
    }
}

impl ConnectionLabels<'_> {
    /// The flow record's view of the connection: pod names, principals, addresses.
    fn flow(&self) -> Flow {
        let peer = |w: Option<&WorkloadEntry>, principal: &Option<String>, addr| Peer {
            namespace: w.map(|w| w.workload.namespace.clone()).unwrap_or_default(),
            workload: w.map(|w| w.workload.name.clone()).unwrap_or_default(),
            principal: principal.clone().unwrap_or_default(),
            address: addr,
        };
        Flow {
            reporter: match self.reporter {
                Reporter::Source => "source",
                Reporter::Destination => "destination",
            },
            source: peer(self.source, &self.source_principal, self.source_addr),
            destination: peer(
                self.destination,
                &self.destination_principal,
                self.destination_addr,
            ),
            service: self
                .destination_service
                .map(|s| s.service.hostname.clone())
                .unwrap_or_default(),
            mtls: self.mutual_tls,
        }
    }

    fn into_labels(self, flag: &'static str) -> Vec<Label> {
        let mut out = Vec::with_capacity(22);
        let mut put = |k: &'static str, v: String| out.push(Label::new(k, v));
        put(
            "reporter",
            match self.reporter {
                Reporter::Source => "source",
                Reporter::Destination => "destination",
            }
            .into(),
        );
        let workload = |w: Option<&WorkloadEntry>, f: fn(&WorkloadEntry) -> &str| {
            w.map_or_else(|| "unknown".to_owned(), |w| or_unknown(f(w)))
        };
        put(
            "source_workload",
            workload(self.source, |w| w.workload.metrics_name()),
        );
        put(
            "source_workload_namespace",
            workload(self.source, |w| &w.workload.namespace),
        );
        put(
            "source_canonical_service",
            workload(self.source, |w| w.workload.canonical_service()),
        );
        put(
            "source_canonical_revision",
            workload(self.source, |w| &w.workload.canonical_revision),
        );
        put(
            "source_principal",
            self.source_principal.unwrap_or_else(|| "unknown".into()),
        );
        let cluster = |w: Option<&WorkloadEntry>| match w {
            None => "unknown".to_owned(),
            Some(w) if w.workload.cluster_id.is_empty() => self.cluster.to_owned(),
            Some(w) => w.workload.cluster_id.clone(),
        };
        put("source_cluster", cluster(self.source));
        put(
            "destination_workload",
            workload(self.destination, |w| w.workload.metrics_name()),
        );
        put(
            "destination_workload_namespace",
            workload(self.destination, |w| &w.workload.namespace),
        );
        put(
            "destination_canonical_service",
            workload(self.destination, |w| w.workload.canonical_service()),
        );
        put(
            "destination_canonical_revision",
            workload(self.destination, |w| &w.workload.canonical_revision),
        );
        put(
            "destination_principal",
            self.destination_principal
                .unwrap_or_else(|| "unknown".into()),
        );
        put("destination_cluster", cluster(self.destination));
        let svc = self.destination_service.map(|s| &s.service);
        put(
            "destination_service",
            svc.map_or_else(|| "unknown".into(), |s| s.hostname.clone()),
        );
        put(
            "destination_service_name",
            svc.map_or_else(|| "unknown".into(), |s| s.name.clone()),
        );
        put(
            "destination_service_namespace",
            svc.map_or_else(|| "unknown".into(), |s| s.namespace.clone()),
        );
        put("request_protocol", "tcp".into());
        put("response_flags", flag.into());
        put(
            "connection_security_policy",
            if self.mutual_tls {
                "mutual_tls"
            } else {
                "unknown"
            }
            .into(),
        );
        out
    }
}

//! Istio's request metrics, `reporter="waypoint"` (`"source"` at gateway listeners), with Istio's names, labels and Envoy's default
//! histogram buckets, so existing dashboards work; and the TCP metrics for opaque TCP through
//! the waypoint. Each waypoint instance owns its recorder, as each ztunnel does.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex};

use meshcore::prom_text::Family;
use metrics::{
    Counter, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

pub const REQUESTS: &str = "istio_requests_total";
pub const DURATION: &str = "istio_request_duration_milliseconds";
pub const REQUEST_BYTES: &str = "istio_request_bytes";
pub const RESPONSE_BYTES: &str = "istio_response_bytes";
pub const TCP_OPENED: &str = "istio_tcp_connections_opened_total";
pub const TCP_CLOSED: &str = "istio_tcp_connections_closed_total";
pub const TCP_RECEIVED: &str = "istio_tcp_received_bytes_total";
pub const TCP_SENT: &str = "istio_tcp_sent_bytes_total";
/// Per-route golden metrics (Linkerd's habit), next to Istio's: requests by route rule, backend
/// and success or failure, and their latency.
pub const ROUTE_REQUESTS: &str = "waypoint_route_requests_total";
pub const ROUTE_DURATION: &str = "waypoint_route_request_duration_milliseconds";

/// Envoy's default histogram buckets (milliseconds), which Istio's dashboards assume.
/// Every family the waypoint exports, declared from the first scrape.
const FAMILIES: &[Family] = &[
    Family {
        name: REQUESTS,
        kind: "counter",
        help: "Requests handled by the waypoint",
    },
    Family {
        name: ROUTE_REQUESTS,
        kind: "counter",
        help: "Requests by route rule, backend and classification (failure: 5xx, or a gRPC status other than OK)",
    },
    Family {
        name: TCP_OPENED,
        kind: "counter",
        help: "TCP connections opened",
    },
    Family {
        name: TCP_CLOSED,
        kind: "counter",
        help: "TCP connections closed",
    },
    Family {
        name: TCP_RECEIVED,
        kind: "counter",
        help: "Bytes received from clients over TCP",
    },
    Family {
        name: TCP_SENT,
        kind: "counter",
        help: "Bytes sent to clients over TCP",
    },
    Family {
        name: DURATION,
        kind: "histogram",
        help: "Request duration",
    },
    Family {
        name: ROUTE_DURATION,
        kind: "histogram",
        help: "Request duration by route rule and backend",
    },
    Family {
        name: REQUEST_BYTES,
        kind: "histogram",
        help: "Request body sizes",
    },
    Family {
        name: RESPONSE_BYTES,
        kind: "histogram",
        help: "Response body sizes",
    },
];

const DURATION_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
const BYTE_BUCKETS: &[f64] = &[
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
    1000000000.0,
];

static META: Metadata<'static> = Metadata::new("waypoint", Level::INFO, Some(module_path!()));

pub struct Metrics {
    recorder: PrometheusRecorder,
    /// The four request series per label set, registered once: building ~30 labels and looking
    /// the series up for every request was ~4% of a request's CPU. Keyed by a hash of the
    /// labels (SipHash with random keys).
    series: Mutex<HashMap<u64, Arc<RequestSeries>>>,
    hasher: std::collections::hash_map::RandomState,
}

struct RequestSeries {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// Label sets kept registered; past this the cache starts over (series stay in the exposition).
const MAX_CACHED_SERIES: usize = 10_000;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One peer of a request, as Istio labels it.
#[derive(Debug, Clone, Default, Hash)]
pub struct Peer {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
}

/// The route rule and backend a request took.
#[derive(Debug, Clone, Hash)]
pub struct RouteLabels {
    /// `namespace/name` of the HTTPRoute, GRPCRoute or VirtualService.
    pub route: Arc<str>,
    pub kind: &'static str,
    /// The rule's name, or its index.
    pub rule: Arc<str>,
    /// `namespace/name` of the backend Service (and subset, `#subset`).
    pub backend: Arc<str>,
}

/// Who reports a request's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// Mesh traffic through the waypoint: `reporter="waypoint"`, mutual TLS.
    #[default]
    Waypoint,
    /// A gateway listener: `reporter="source"` (as Istio's gateways report), and
    /// `connection_security_policy="unknown"` (the client is outside the mesh).
    Gateway,
}

/// Everything a request's metrics are labelled with.
#[derive(Debug, Clone, Default, Hash)]
pub struct RequestLabels {
    pub reporter: Reporter,
    pub source: Peer,
    pub destination: Peer,
    /// Service hostname; `unknown` when workload-addressed without a service.
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub cluster: String,
    /// `http`, `grpc`.
    pub request_protocol: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DURATION.into()), DURATION_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(ROUTE_DURATION.into()), DURATION_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(REQUEST_BYTES.into()), BYTE_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(RESPONSE_BYTES.into()), BYTE_BUCKETS)
            })
            .expect("static buckets are valid")
            .build_recorder();
        for f in FAMILIES {
            let unit = match f.name {
                DURATION | ROUTE_DURATION => Unit::Milliseconds,
                REQUEST_BYTES | RESPONSE_BYTES | TCP_RECEIVED | TCP_SENT => Unit::Bytes,
                _ => Unit::Count,
            };
            let (name, help) = (
                KeyName::from_const_str(f.name),
                SharedString::const_str(f.help),
            );
            if f.kind == "histogram" {
                recorder.describe_histogram(name, Some(unit), help);
            } else {
                recorder.describe_counter(name, Some(unit), help);
            }
        }
        Self {
            recorder,
            series: Mutex::new(HashMap::new()),
            hasher: Default::default(),
        }
    }

    /// Prometheus text exposition.
    /// Families nothing was recorded in yet are declared too, as Istio's proxies do.
    pub fn render(&self) -> String {
        let mut text = self.recorder.handle().render();
        meshcore::prom_text::declare_unrecorded(&mut text, FAMILIES);
        text
    }

    /// Records one finished request.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &self,
        labels: &RequestLabels,
        response_code: u16,
        grpc_status: Option<u32>,
        response_flags: &str,
        duration_ms: f64,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let key = self
            .hasher
            .hash_one((labels, response_code, grpc_status, response_flags));
        let cached = self.series.lock().expect("series lock").get(&key).cloned();
        let series = match cached {
            Some(s) => s,
            None => {
                let s = Arc::new(self.register(labels, response_code, grpc_status, response_flags));
                let mut map = self.series.lock().expect("series lock");
                if map.len() >= MAX_CACHED_SERIES {
                    map.clear();
                }
                map.insert(key, s.clone());
                s
            }
        };
        series.requests.increment(1);
        series.duration.record(duration_ms);
        series.request_bytes.record(request_bytes as f64);
        series.response_bytes.record(response_bytes as f64);
    }

    fn register(
        &self,
        labels: &RequestLabels,
        response_code: u16,
        grpc_status: Option<u32>,
        response_flags: &str,
    ) -> RequestSeries {
        let mut l = labels.base();
        l.push(Label::new("response_code", response_code.to_string()));
        l.push(Label::new(
            "grpc_response_status",
            grpc_status.map(|s| s.to_string()).unwrap_or_default(),
        ));
        l.push(Label::new("response_flags", response_flags.to_owned()));
        let key = |name: &'static str| Key::from_parts(name, l.clone());
        RequestSeries {
            requests: self.recorder.register_counter(&key(REQUESTS), &META),
            duration: self.recorder.register_histogram(&key(DURATION), &META),
            request_bytes: self.recorder.register_histogram(&key(REQUEST_BYTES), &META),
            response_bytes: self
                .recorder
                .register_histogram(&key(RESPONSE_BYTES), &META),
        }
    }

    /// Records one request a route rule handled (per-route golden metrics).
    pub fn route(&self, labels: &RouteLabels, success: bool, duration_ms: f64) {
        let key = self.hasher.hash_one((labels, success, "route"));
        let cached = self.series.lock().expect("series lock").get(&key).cloned();
        let series = match cached {
            Some(s) => s,
            None => {
                let l = vec![
                    Label::new("route", labels.route.to_string()),
                    Label::new("route_kind", labels.kind),
                    Label::new("rule", labels.rule.to_string()),
                    Label::new("backend", labels.backend.to_string()),
                    Label::new(
                        "classification",
                        if success { "success" } else { "failure" },
                    ),
                ];
                let duration_labels: Vec<Label> = l[..4].to_vec();
                let s = Arc::new(RequestSeries {
                    requests: self
                        .recorder
                        .register_counter(&Key::from_parts(ROUTE_REQUESTS, l), &META),
                    duration: self.recorder.register_histogram(
                        &Key::from_parts(ROUTE_DURATION, duration_labels),
                        &META,
                    ),
                    request_bytes: Histogram::noop(),
                    response_bytes: Histogram::noop(),
                });
                let mut map = self.series.lock().expect("series lock");
                if map.len() >= MAX_CACHED_SERIES {
                    map.clear();
                }
                map.insert(key, s.clone());
                s
            }
        };
        series.requests.increment(1);
        series.duration.record(duration_ms);
    }

    /// Records an opaque TCP connection through the waypoint when it ends.
    pub fn tcp(&self, labels: &RequestLabels, response_flags: &str, received: u64, sent: u64) {
        let mut l = labels.base();
        l.push(Label::new("response_flags", response_flags.to_owned()));
        let key = |name: &'static str| Key::from_parts(name, l.clone());
        self.recorder
            .register_counter(&key(TCP_OPENED), &META)
            .increment(1);
        self.recorder
            .register_counter(&key(TCP_CLOSED), &META)
            .increment(1);
        self.recorder
            .register_counter(&key(TCP_RECEIVED), &META)
            .increment(received);
        self.recorder
            .register_counter(&key(TCP_SENT), &META)
            .increment(sent);
    }
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".to_owned()
    } else {
        s.to_owned()
    }
}

/// Label names of one peer, static so a request allocates only the values.
struct PeerNames {
    workload: &'static str,
    namespace: &'static str,
    principal: &'static str,
    app: &'static str,
    version: &'static str,
    canonical_service: &'static str,
    canonical_revision: &'static str,
    cluster: &'static str,
}

const SOURCE: PeerNames = PeerNames {
    workload: "source_workload",
    namespace: "source_workload_namespace",
    principal: "source_principal",
    app: "source_app",
    version: "source_version",
    canonical_service: "source_canonical_service",
    canonical_revision: "source_canonical_revision",
    cluster: "source_cluster",
};

const DESTINATION: PeerNames = PeerNames {
    workload: "destination_workload",
    namespace: "destination_workload_namespace",
    principal: "destination_principal",
    app: "destination_app",
    version: "destination_version",
    canonical_service: "destination_canonical_service",
    canonical_revision: "destination_canonical_revision",
    cluster: "destination_cluster",
};

impl RequestLabels {
    fn base(&self) -> Vec<Label> {
        let peer = |n: &PeerNames, p: &Peer, out: &mut Vec<Label>| {
            out.push(Label::new(n.workload, or_unknown(&p.workload)));
            out.push(Label::new(n.namespace, or_unknown(&p.namespace)));
            out.push(Label::new(n.principal, or_unknown(&p.principal)));
            out.push(Label::new(n.app, or_unknown(&p.app)));
            out.push(Label::new(n.version, or_unknown(&p.version)));
            out.push(Label::new(n.canonical_service, or_unknown(&p.app)));
            out.push(Label::new(n.canonical_revision, or_unknown(&p.version)));
            out.push(Label::new(n.cluster, or_unknown(&self.cluster)));
        };
        let mut l = Vec::with_capacity(30);
        let (reporter, security) = match self.reporter {
            Reporter::Waypoint => ("waypoint", "mutual_tls"),
            Reporter::Gateway => ("source", "unknown"),
        };
        l.push(Label::new("reporter", reporter));
        peer(&SOURCE, &self.source, &mut l);
        peer(&DESTINATION, &self.destination, &mut l);
        l.push(Label::new(
            "destination_service",
            or_unknown(&self.destination_service),
        ));
        l.push(Label::new(
            "destination_service_name",
            or_unknown(&self.destination_service_name),
        ));
        l.push(Label::new(
            "destination_service_namespace",
            or_unknown(&self.destination_service_namespace),
        ));
        l.push(Label::new("request_protocol", self.request_protocol));
        l.push(Label::new("connection_security_policy", security));
        l
    }
}

//! What a request leaves behind when its response body ends: the Istio request metrics (and
//! per-route ones), the access log line, the span (with tracing on) and the flow record, all
//! from one `Outcome` filled in as the request goes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use meshcore::otel::{Hop, KeyValue, SpanKind};

use super::body::BodyDone;
use super::Proxy;
use crate::access_log::AccessEntry;
use crate::metrics::{RequestLabels, RouteLabels};

/// What one request's record and access log line carry, filled in as it goes.
pub(super) struct Outcome {
    pub(super) proxy: Arc<Proxy>,
    pub(super) entry: AccessEntry,
    pub(super) labels: RequestLabels,
    /// Set when a route rule chose the backend: per-route metrics.
    pub(super) route: Option<RouteLabels>,
    /// The rule's response classes (which answers count as failures).
    pub(super) classes: Option<Arc<crate::route::classes::ResponseClasses>>,
    pub(super) start: Instant,
    pub(super) request_bytes: Arc<AtomicU64>,
    /// For the request's flow record (`crate::flows`).
    pub(super) flow: FlowFacts,
    /// The request's span (`None` when tracing is off).
    pub(super) hop: Option<Hop>,
}

/// What a request's flow record needs beyond the metrics labels and the access log entry.
#[derive(Default)]
pub(super) struct FlowFacts {
    /// Refused by an AuthorizationPolicy or a RequestAuthentication.
    pub(super) denied: bool,
    /// The deciding policy and rule.
    pub(super) policy: Option<(Arc<str>, Option<usize>)>,
    /// The addressed Service: hostname and `namespace/name`.
    pub(super) service: String,
    pub(super) service_name: String,
    pub(super) service_port: u16,
    /// The waypoint answered with an error of its own.
    pub(super) local_error: bool,
    pub(super) upstream: Option<SocketAddr>,
}

impl Outcome {
    /// The request's flow record, built from what the metrics and access log used (moved out:
    /// they are written by now).
    fn record(&mut self, duration: std::time::Duration) -> crate::flows::RequestRecord {
        use crate::flows::{without_query, Peer as End, RequestRecord};
        let take = std::mem::take::<String>;
        let e = &mut self.entry;
        let (src, dst) = (&mut self.labels.source, &mut self.labels.destination);
        let flow = &mut self.flow;
        let (policy, policy_rule) = match flow.policy.take() {
            Some((p, r)) => (Some(p), r),
            None => (None, None),
        };
        let route = self.route.take();
        // At a gateway listener the metrics' source is the gateway itself; the record's source
        // is the client, which has only its address.
        let gateway = self.labels.reporter == crate::metrics::Reporter::Gateway;
        if gateway {
            *src = Default::default();
        }
        RequestRecord {
            time_ms: meshcore::flow_ring::now_ms(),
            kind: "request",
            reporter: "waypoint",
            verdict: crate::flows::verdict(flow.denied, e.flag, flow.local_error),
            source: End {
                namespace: take(&mut src.namespace),
                workload: take(&mut src.workload),
                principal: take(&mut src.principal),
                address: crate::flows::address(&e.source_address),
            },
            destination: End {
                namespace: take(&mut dst.namespace),
                workload: take(&mut dst.workload),
                principal: take(&mut dst.principal),
                address: flow.upstream.or(crate::flows::address(&e.destination)),
            },
            service: take(&mut flow.service),
            service_name: take(&mut flow.service_name),
            service_port: flow.service_port,
            mtls: !gateway,
            route: route
                .as_ref()
                .map(|r| r.route.clone())
                .or_else(|| (!e.route.is_empty()).then(|| Arc::from(take(&mut e.route)))),
            route_rule: route.as_ref().map(|r| r.rule.clone()),
            backend: route.map(|r| r.backend),
            policy,
            policy_rule,
            reason: if flow.denied {
                take(&mut e.policy)
            } else {
                String::new()
            },
            method: take(&mut e.method),
            path: without_query(take(&mut e.path)),
            protocol: e.protocol,
            status: e.status,
            grpc_status: e.grpc_status,
            flag: (e.flag != "-").then_some(e.flag),
            bytes_received: e.request_bytes,
            bytes_sent: e.response_bytes,
            duration_ms: duration.as_millis() as u64,
            duration_us: duration.as_micros() as u64,
            request_id: take(&mut e.request_id),
        }
    }
}

impl Outcome {
    /// Ends the request's span: what Envoy's spans carry (method, URL, status, response flags,
    /// route, upstream, request id, the peers) in OpenTelemetry's HTTP names where they exist.
    fn finish_span(&self, hop: Hop) {
        let e = &self.entry;
        let mut a = vec![
            KeyValue::new("http.request.method", e.method.clone()),
            KeyValue::new("url.path", e.path.clone()),
            KeyValue::new("server.address", e.authority.clone()),
            KeyValue::new("http.response.status_code", i64::from(e.status)),
            KeyValue::new("istio.response_flags", e.flag),
            KeyValue::new("istio.request_id", e.request_id.clone()),
            KeyValue::new("istio.source_principal", e.source_principal.clone()),
            KeyValue::new(
                "istio.destination_service",
                self.labels.destination_service.clone(),
            ),
        ];
        if let Some(g) = e.grpc_status {
            a.push(KeyValue::new("rpc.grpc.status_code", i64::from(g)));
        }
        if !e.source_address.is_empty() {
            a.push(KeyValue::new("client.address", e.source_address.clone()));
        }
        if !e.upstream.is_empty() {
            a.push(KeyValue::new("istio.upstream", e.upstream.clone()));
        }
        if let Some(r) = &self.route {
            a.push(KeyValue::new("http.route", r.route.to_string()));
            a.push(KeyValue::new("istio.route_backend", r.backend.to_string()));
        } else if !e.route.is_empty() {
            a.push(KeyValue::new("http.route", e.route.clone()));
        }
        // The deciding policy, when one refused the request.
        if !e.policy.is_empty() && !e.policy.starts_with("allowed") {
            a.push(KeyValue::new("istio.policy", e.policy.clone()));
        }
        // As Envoy marks them: 5xx and the waypoint's own refusals are errors, 4xx from the
        // application are not.
        let error = (e.status >= 500 || e.status == 0 || (e.flag != "-" && e.status >= 400))
            .then(|| format!("{} {}", e.status, e.flag));
        hop.finish(WAYPOINT_SPAN, SpanKind::Server, a, error);
    }
}

/// The waypoint's span for each request.
pub const WAYPOINT_SPAN: &str = "waypoint request";

impl BodyDone for Outcome {
    fn done(mut self, bytes: u64, grpc_status: Option<u32>, _complete: bool) {
        let duration = self.start.elapsed();
        self.entry.response_bytes = bytes;
        self.entry.request_bytes = self.request_bytes.load(Ordering::Relaxed);
        self.entry.duration_ms = duration.as_secs_f64() * 1000.0;
        if grpc_status.is_some() {
            self.entry.grpc_status = grpc_status;
        }
        self.proxy.metrics.request(
            &self.labels,
            self.entry.status,
            self.entry.grpc_status,
            self.entry.flag,
            self.entry.duration_ms,
            self.entry.request_bytes,
            bytes,
        );
        if let Some(route) = &self.route {
            let failed = self.entry.status == 0
                || self.entry.grpc_status.is_some_and(|g| g != 0)
                || match &self.classes {
                    Some(c) => c.is_failure(self.entry.status),
                    None => self.entry.status >= 500,
                };
            self.proxy
                .metrics
                .route(route, !failed, self.entry.duration_ms);
        }
        crate::access_log::write(self.proxy.settings.access_log, &self.entry);
        if let Some(hop) = self.hop.take().filter(Hop::sampled) {
            self.finish_span(hop);
        }
        if self.proxy.flows.enabled() {
            let record = self.record(duration);
            self.proxy.flows.record(record);
        }
    }
}

pub(super) struct CountInto(pub(super) Arc<AtomicU64>);

impl BodyDone for CountInto {
    fn done(self, bytes: u64, _: Option<u32>, _: bool) {
        self.0.store(bytes, Ordering::Relaxed);
    }
}

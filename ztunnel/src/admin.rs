//! The HTTP side doors: admin on 15000 (localhost: `/config_dump`, `/flows`, `/logging`,
//! `/quitquitquit`), Prometheus metrics on 15020 (`/metrics`, `/stats/prometheus`) and
//! readiness on 15021 (`/healthz/ready`). Plain HTTP/1.1 with hyper.
//!
//! Each port takes at most [`MAX_CONNECTIONS`] connections at once (more wait in the backlog),
//! drops a client that has not sent its request headers within [`HEADER_READ_TIMEOUT`]
//! (Istio's ztunnel: 2 s), and pauses after a failed accept (out of descriptors) instead of
//! retrying at once.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use meshcore::accept::Acceptor;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::certs::{rfc3339, CertManager};
use crate::config::watch::SourceStatus;
use crate::metrics::Metrics;
use crate::proxy::{Drain, Proxy};

/// Changes the log filter at run time (the process owns the subscriber).
pub trait LogControl: Send + Sync {
    fn current(&self) -> String;
    fn set(&self, filter: &str) -> Result<(), String>;
}

/// The most recent policy denials, shown by `/config_dump`.
#[derive(Default)]
pub struct DenialLog {
    recent: Mutex<VecDeque<Denial>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Denial {
    pub at: String,
    pub connection: String,
    pub reason: String,
}

const DENIALS_KEPT: usize = 64;

impl DenialLog {
    pub fn record(&self, connection: String, reason: String) {
        let mut recent = self.recent.lock().expect("denial log lock");
        if recent.len() == DENIALS_KEPT {
            recent.pop_front();
        }
        recent.push_back(Denial {
            at: rfc3339(std::time::SystemTime::now()),
            connection,
            reason,
        });
    }

    pub fn recent(&self) -> Vec<Denial> {
        self.recent
            .lock()
            .expect("denial log lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// Who this ztunnel serves.
pub enum Served {
    /// One workload (PROXY_MODE=dedicated).
    Workload(Arc<Proxy>),
    /// The pods the node agent handed over (PROXY_MODE=shared).
    Node {
        pods: Arc<crate::inpod::pods::Pods>,
        state: Arc<crate::state::StateStore>,
    },
}

/// How fresh the configuration in force is, for alerting on a ztunnel left on stale policy:
/// whether the xDS stream is up, seconds since the config was last changed or confirmed by the
/// control plane (absent before the first), and changes refused.
pub fn source_metrics(status: &SourceStatus, now_unix: u64) -> String {
    let mut out = String::new();
    if status.xds_address.is_some() {
        out.push_str("# HELP ztunnel_xds_connected Whether the xDS stream to the control plane is up and answering.\n# TYPE ztunnel_xds_connected gauge\n");
        out.push_str(&format!(
            "ztunnel_xds_connected {}\n",
            u8::from(status.connected)
        ));
    }
    if let Some(at) = status.last_update_unix {
        out.push_str("# HELP ztunnel_config_age_seconds Seconds since the configuration in force was last changed or confirmed by its source.\n# TYPE ztunnel_config_age_seconds gauge\n");
        out.push_str(&format!(
            "ztunnel_config_age_seconds {}\n",
            now_unix.saturating_sub(at)
        ));
    }
    out.push_str("# HELP ztunnel_connections_shed_total Connections refused on accept because the process was out of file descriptors.\n# TYPE ztunnel_connections_shed_total counter\n");
    out.push_str(&format!(
        "ztunnel_connections_shed_total {}\n",
        meshcore::accept::shed_total()
    ));
    out.push_str("# HELP ztunnel_hbone_handshake_failures_total HBONE connections refused in the TLS handshake (plain text, no, untrusted, expired or foreign-domain certificate, timeout).\n# TYPE ztunnel_hbone_handshake_failures_total counter\n");
    out.push_str(&format!(
        "ztunnel_hbone_handshake_failures_total {}\n",
        meshcore::hbone::server::handshake_failures_total()
    ));
    out.push_str(&meshcore::refusals::render("ztunnel"));
    out.push_str("# HELP ztunnel_config_rejected_total Configuration changes refused (invalid, or NACKed resources).\n# TYPE ztunnel_config_rejected_total counter\n");
    out.push_str(&format!(
        "ztunnel_config_rejected_total {}\n",
        status.rejected
    ));
    out
}

/// What the HTTP endpoints read and control.
pub struct AdminContext {
    pub served: Served,
    /// The process-wide drain (readiness turns 503 once it starts).
    pub drain: Drain,
    pub source: Arc<Mutex<SourceStatus>>,
    pub certs: Arc<CertManager>,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    pub logging: Option<Arc<dyn LogControl>>,
    /// Notified by `/quitquitquit`: the process drains and exits.
    pub quit: Arc<Notify>,
}

#[derive(Clone, Copy)]
pub enum Endpoints {
    Admin,
    Stats,
    Readiness,
}

/// Serves the admin, metrics and readiness listeners.
pub fn serve_all(
    admin: TcpListener,
    stats: TcpListener,
    readiness: TcpListener,
    ctx: &Arc<AdminContext>,
    drain: &Drain,
) {
    for (listener, which) in [
        (admin, Endpoints::Admin),
        (stats, Endpoints::Stats),
        (readiness, Endpoints::Readiness),
    ] {
        tokio::spawn(serve(listener, ctx.clone(), which, drain.clone()));
    }
}

/// A client must have sent its request headers this long after connecting (or after its
/// previous response), as Istio's ztunnel.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Connections open at once per port.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves one of the HTTP listeners until draining starts.
pub async fn serve(listener: TcpListener, ctx: Arc<AdminContext>, which: Endpoints, drain: Drain) {
    let what = match which {
        Endpoints::Admin => "admin",
        Endpoints::Stats => "metrics",
        Endpoints::Readiness => "readiness",
    };
    let mut acceptor = Acceptor::new(listener, MAX_CONNECTIONS, what);
    loop {
        let (tcp, _, permit) = tokio::select! {
            // Metrics stay scrapable while connections drain.
            _ = drain.started(), if !matches!(which, Endpoints::Stats) => return,
            _ = drain.closed() => return,
            accepted = acceptor.accept() => accepted,
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let ctx = ctx.clone();
                async move {
                    Ok::<_, Infallible>(
                        if matches!(which, Endpoints::Admin) && req.uri().path() == "/flows" {
                            flows(&ctx, req.uri().query())
                        } else {
                            route(&ctx, which, req).map(Either::Left)
                        },
                    )
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            if let Err(e) = served {
                // A client gone mid-request is not a refusal; a parse error or a header
                // timeout is.
                if e.is_parse() || e.is_timeout() {
                    meshcore::refusals::count(
                        what,
                        if e.is_timeout() {
                            "header_timeout"
                        } else {
                            "bad_request"
                        },
                    );
                }
            }
            drop(permit);
        });
    }
}

type AdminBody = Either<Full<Bytes>, meshcore::flow_ring::FlowBody>;

/// How often a following `/flows` reader's task drains the live stream.
pub const FLOW_POLL: std::time::Duration = meshcore::flow_ring::POLL;

/// `GET /flows[?follow=true&limit=N&namespace=&workload=&from=&to=&verdict=]`: the recent flow
/// events that match as newline-delimited JSON (the last `limit`, default all kept), then, with
/// `follow`, every new one as it happens. A reader that falls behind gets `{"dropped":N}` for
/// what it lost (also counted in `ztunnel_flow_events_dropped_total`).
fn flows(ctx: &AdminContext, query: Option<&str>) -> Response<AdminBody> {
    use crate::flows::Filter;
    let query = query.unwrap_or("");
    let parsed = Filter::from_query(query)
        .and_then(|f| Ok((f, meshcore::flow_ring::StreamRequest::from_query(query)?)));
    let (filter, request) = match parsed {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")).map(Either::Left),
    };
    let metrics = ctx.metrics.clone();
    let body = ctx.metrics.flows.serve(
        request,
        move |e| filter.matches(e),
        move |n| metrics.flows.lost(n),
    );
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Either::Right(body))
        .expect("static response")
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static response")
}

fn route(ctx: &AdminContext, which: Endpoints, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (which, req.method(), path) {
        (Endpoints::Readiness, _, "/healthz/ready") => {
            // Over xDS, ready once the first view arrived.
            let synced = {
                let s = ctx.source.lock().expect("status lock");
                s.xds_address.is_none() || s.applied_version > 0
            };
            if ctx.ready.load(Ordering::Acquire) && synced && !ctx.drain.is_draining() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (Endpoints::Stats, _, "/metrics" | "/stats/prometheus") => {
            let mut body = ctx.metrics.render();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            body.push_str(&source_metrics(
                &ctx.source.lock().expect("status lock"),
                now,
            ));
            body.push_str(&format!(
                "# HELP ztunnel_flow_events_dropped_total Flow events a slow /flows reader lost.\n# TYPE ztunnel_flow_events_dropped_total counter\nztunnel_flow_events_dropped_total {}\n",
                ctx.metrics.flows.dropped()
            ));
            body.push_str(&meshcore::process_metrics::render());
            Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(body.into()))
                .expect("static response")
        }
        (Endpoints::Admin, _, "/config_dump") => {
            let body = serde_json::to_vec_pretty(&config_dump(ctx)).expect("serializable dump");
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(body.into()))
                .expect("static response")
        }
        (Endpoints::Admin, _, "/authz") => authz(ctx, req.uri().query()),
        (Endpoints::Admin, _, "/logging") => logging(ctx, req.method(), req.uri().query()),
        (Endpoints::Admin, &Method::POST, "/quitquitquit") => {
            ctx.quit.notify_one();
            text(StatusCode::OK, "draining\n")
        }
        (Endpoints::Admin, _, "/quitquitquit") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
        }
        (Endpoints::Admin, _, "/") => text(
            StatusCode::OK,
            "GET /config_dump\nGET /authz?destination=IP:PORT&source=IP&principal=TD/ns/NS/sa/SA\nGET /flows?follow=true&namespace=&workload=&from=&to=&verdict=&limit=\nGET|POST /logging?level=<filter>\nPOST /quitquitquit\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `GET /authz?destination=IP:PORT&source=IP[&principal=TD/ns/NS/sa/SA]`: the L4 decision this
/// ztunnel's policy engine would take for such a connection, and why (each applicable policy
/// and rule, as `meshcore::policy::explain` traces it). No `principal`: a plaintext client.
fn authz(ctx: &AdminContext, query: Option<&str>) -> Response<Full<Bytes>> {
    let query = query.unwrap_or("");
    let param = |key: &str| crate::flows::query_param(query, key);
    let bad = |what: String| text(StatusCode::BAD_REQUEST, format!("{what}\n"));
    let Some(destination) =
        param("destination").and_then(|d| d.parse::<std::net::SocketAddr>().ok())
    else {
        return bad("destination=IP:PORT is required".into());
    };
    let Some(source) = param("source").and_then(|s| s.parse::<std::net::IpAddr>().ok()) else {
        return bad("source=IP is required".into());
    };
    let identity = match param("principal") {
        None => None,
        Some(p) => match meshcore::identity::SpiffeId::from_principal(&p) {
            Ok(id) => Some(id),
            Err(e) => return bad(format!("principal={p}: {e}")),
        },
    };
    let state = match &ctx.served {
        Served::Workload(proxy) => proxy.state.clone(),
        Served::Node { state, .. } => state.clone(),
    };
    let snap = state.load();
    let Some(workload) = snap.workload_by_ip("", destination.ip()) else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "no workload has {} in this ztunnel's view\n",
                destination.ip()
            ),
        );
    };
    let principal = identity
        .as_ref()
        .map(meshcore::identity::SpiffeId::principal);
    let conn = meshcore::policy::Connection {
        source_ip: source,
        destination,
        identity: identity.as_ref(),
        principal: principal.as_deref(),
    };
    let explanation = meshcore::policy::explain::explain(&snap.policies_for(workload), &conn);
    let body = serde_json::json!({
        "destination": format!("{}/{}", workload.workload.namespace, workload.workload.name),
        "inMesh": workload.workload.protocol == crate::state::Protocol::HBONE,
        "explanation": explanation,
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(
            serde_json::to_vec_pretty(&body).expect("json").into(),
        ))
        .expect("static response")
}

fn logging(ctx: &AdminContext, method: &Method, query: Option<&str>) -> Response<Full<Bytes>> {
    let Some(control) = &ctx.logging else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "log level is not adjustable in this process\n",
        );
    };
    let level = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("level="));
    match (method, level) {
        (&Method::POST, Some(level)) | (&Method::PUT, Some(level)) => match control.set(level) {
            Ok(()) => text(
                StatusCode::OK,
                format!("log level: {}\n", control.current()),
            ),
            Err(e) => text(
                StatusCode::BAD_REQUEST,
                format!("invalid level {level:?}: {e}\n"),
            ),
        },
        (&Method::GET, None) => text(
            StatusCode::OK,
            format!("log level: {}\n", control.current()),
        ),
        _ => text(
            StatusCode::BAD_REQUEST,
            "GET /logging shows the filter; POST /logging?level=<filter> changes it\n",
        ),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodDump {
    uid: String,
    workload: String,
    identity: String,
    netns: String,
    active_connections: usize,
    /// Egress policies selecting the pod as a source.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    egress_policies: Vec<String>,
    /// (name, address) pairs it resolved that FQDN peers may allow.
    #[serde(skip_serializing_if = "is_zero")]
    resolved_names: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The egress policies selecting a workload, in evaluation order.
fn egress_keys(
    snap: &crate::state::Snapshot,
    w: Option<&crate::state::WorkloadEntry>,
) -> Vec<String> {
    w.and_then(|w| snap.egress_for(w))
        .map(|c| c.policies().iter().map(|p| p.key()).collect())
        .unwrap_or_default()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigDump {
    /// Dedicated mode: the one workload served.
    #[serde(skip_serializing_if = "String::is_empty")]
    served_workload: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    identity: String,
    /// Node mode: the pods served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pods: Option<Vec<PodDump>>,
    config_version: u64,
    config_source: SourceStatus,
    workloads: Vec<crate::state::Workload>,
    services: Vec<ServiceDump>,
    policies: Vec<meshcore::policy::Authorization>,
    /// Policies that apply to the served workload, in evaluation order.
    served_policies: Vec<String>,
    /// Egress policies in force (every one the config holds).
    egress_policies: Vec<meshcore::policy::egress::EgressPolicy>,
    /// Dedicated mode: the egress policies selecting the served workload.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    served_egress_policies: Vec<String>,
    /// Dedicated mode: names it resolved through the DNS proxy, unexpired (name → addresses).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    resolved_names: std::collections::BTreeMap<String, Vec<std::net::IpAddr>>,
    certificates: Vec<crate::certs::CertStatus>,
    recent_denials: Vec<Denial>,
    active_connections: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceDump {
    #[serde(flatten)]
    service: crate::state::Service,
    endpoints: Vec<String>,
}

fn config_dump(ctx: &AdminContext) -> ConfigDump {
    let (state, proxies, pods) = match &ctx.served {
        Served::Workload(proxy) => (proxy.state.clone(), vec![proxy.clone()], None),
        Served::Node { pods, state } => {
            let snap = state.load();
            let list = pods.list();
            let dump = list
                .iter()
                .map(|(uid, proxy)| PodDump {
                    uid: uid.clone(),
                    workload: format!("{}/{}", proxy.workload.namespace, proxy.workload.name),
                    identity: proxy.identity.to_string(),
                    netns: proxy
                        .netns
                        .as_ref()
                        .map(|n| format!("{n:?}"))
                        .unwrap_or_default(),
                    active_connections: proxy.drain.active(),
                    egress_policies: egress_keys(&snap, proxy.served(&snap).as_deref()),
                    resolved_names: proxy.resolved.len(),
                })
                .collect();
            (
                state.clone(),
                list.into_iter().map(|(_, p)| p).collect(),
                Some(dump),
            )
        }
    };
    let snap = state.load();
    let dedicated = match &ctx.served {
        Served::Workload(proxy) => Some(proxy),
        Served::Node { .. } => None,
    };
    let served = dedicated.and_then(|p| p.served(&snap));
    ConfigDump {
        served_workload: dedicated
            .map(|p| format!("{}/{}", p.workload.namespace, p.workload.name))
            .unwrap_or_default(),
        identity: dedicated
            .map(|p| p.identity.to_string())
            .unwrap_or_default(),
        pods,
        config_version: snap.version,
        config_source: ctx.source.lock().expect("status lock").clone(),
        workloads: snap.config.workloads.clone(),
        services: snap
            .config
            .services
            .iter()
            .map(|s| ServiceDump {
                service: s.clone(),
                endpoints: snap
                    .services_by_host(&s.hostname)
                    .iter()
                    .filter(|e| e.service.namespace == s.namespace)
                    .flat_map(|e| {
                        e.endpoints
                            .iter()
                            .map(|ep| ep.workload.workload.uid.clone())
                    })
                    .collect(),
            })
            .collect(),
        policies: snap.config.policies.clone(),
        served_policies: served
            .as_ref()
            .map(|w| {
                snap.policies_for(w)
                    .policies()
                    .iter()
                    .map(|p| p.key())
                    .collect()
            })
            .unwrap_or_default(),
        egress_policies: snap.config.egress_policies.clone(),
        served_egress_policies: egress_keys(&snap, served.as_deref()),
        resolved_names: dedicated
            .map(|p| p.resolved.dump(std::time::Instant::now()))
            .unwrap_or_default(),
        certificates: ctx.certs.status(),
        recent_denials: proxies.iter().flat_map(|p| p.denials.recent()).collect(),
        active_connections: proxies.iter().map(|p| p.drain.active()).sum(),
    }
}

#[cfg(test)]
mod source_metrics_tests {
    use super::*;

    #[test]
    fn staleness_is_exported() {
        let mut status = SourceStatus {
            xds_address: Some("istiod:15012".into()),
            ..SourceStatus::default()
        };
        let text = source_metrics(&status, 1_000);
        assert!(text.contains("ztunnel_xds_connected 0\n"), "{text}");
        assert!(
            !text.contains("ztunnel_config_age_seconds"),
            "no config yet: {text}"
        );
        status.connected = true;
        status.last_update_unix = Some(880);
        status.rejected = 2;
        let text = source_metrics(&status, 1_000);
        assert!(text.contains("ztunnel_xds_connected 1\n"), "{text}");
        assert!(text.contains("ztunnel_config_age_seconds 120\n"), "{text}");
        assert!(text.contains("ztunnel_config_rejected_total 2\n"), "{text}");
    }
}

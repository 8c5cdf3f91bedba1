//! istiod-lite's plain HTTP port: `/ready`, `/metrics` (Prometheus text) and the debug
//! endpoints `/debug/clients` (connected ztunnels and waypoints, what each was last sent and
//! what it acknowledged or rejected, per type),
//! `/debug/resources` (what is being served; egress policies in full, as `egressPolicies`) and
//! `/debug/config` (the source's status: objects
//! honoured only in part, and why the latest change was refused, if it was).
//!
//! The debug endpoints show every workload, policy and client of the mesh: they answer
//! loopback clients (and those of `DEBUG_ALLOWED_NETWORKS`) only, 403 to others. Every
//! connection must send its request headers within [`HEADER_READ_TIMEOUT`]; at most
//! [`MAX_CONNECTIONS`] are open at once; a failed accept (out of descriptors) pauses the loop.

use std::convert::Infallible;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use meshcore::accept::Acceptor;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::sources::dir::DirStatus;
use crate::sources::kube::KubeStatus;
use crate::xds::server::Clients;
use crate::xds::ResourceSet;

pub struct HttpContext {
    pub clients: Arc<Clients>,
    pub resources: watch::Receiver<Arc<ResourceSet>>,
    pub source: SourceStatus,
    /// The certificate service's counters, when it runs.
    pub ca: Option<Arc<crate::ca::CaCounters>>,
    /// Clients outside loopback that may read `/debug/*` (DEBUG_ALLOWED_NETWORKS).
    pub debug_networks: Vec<IpNet>,
}

/// A client must have sent its request headers this long after connecting (or after its
/// previous response): Istio's ztunnel uses 2 s on its admin ports.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections open at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;

/// May a client at `peer` read `/debug/*`? Loopback (all of 127/8, ::1, and IPv4 loopback
/// mapped into IPv6) always; others only inside one of `allowed`.
pub fn debug_allowed(peer: IpAddr, allowed: &[IpNet]) -> bool {
    let peer = peer.to_canonical();
    peer.is_loopback() || allowed.iter().any(|net| net.contains(&peer))
}

/// The config source's own status, whichever it is.
#[derive(Clone)]
pub enum SourceStatus {
    Dir(Arc<Mutex<DirStatus>>),
    Kube(Arc<Mutex<KubeStatus>>),
}

impl SourceStatus {
    fn json(&self) -> serde_json::Value {
        match self {
            SourceStatus::Dir(s) => json!({"dir": *s.lock().expect("status lock")}),
            SourceStatus::Kube(s) => json!({"kubernetes": *s.lock().expect("status lock")}),
        }
    }

    fn refused(&self) -> usize {
        match self {
            SourceStatus::Dir(s) => s.lock().expect("status lock").refused.len(),
            SourceStatus::Kube(s) => s.lock().expect("status lock").refused.len(),
        }
    }
}

pub async fn serve(listener: TcpListener, ctx: Arc<HttpContext>) {
    let mut acceptor = Acceptor::new(listener, MAX_CONNECTIONS, "istiod-lite HTTP");
    loop {
        let (tcp, peer, permit) = acceptor.accept().await;
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let debug = debug_allowed(peer.ip(), &ctx.debug_networks);
            let service = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(route(&ctx, debug, req)) }
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
                        "http",
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

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response")
}

/// `debug`: whether this client may read `/debug/*`.
fn route(ctx: &HttpContext, debug: bool, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let set = ctx.resources.borrow().clone();
    if req.uri().path().starts_with("/debug/") && !debug {
        return reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            "/debug/* answers loopback clients only; DEBUG_ALLOWED_NETWORKS (--debug-allowed-networks) admits others\n"
                .into(),
        );
    }
    match req.uri().path() {
        "/ready" => {
            if set.generation > 0 {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no config yet\n".into(),
                )
            }
        }
        "/metrics" => {
            let refused = ctx.source.refused();
            let mut out = String::new();
            let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
                );
            };
            gauge(
                "istiod_lite_xds_clients",
                "Connected xDS clients",
                "gauge",
                ctx.clients.snapshot().len() as u64,
            );
            gauge(
                "istiod_lite_xds_nacks_total",
                "Responses clients rejected",
                "counter",
                ctx.clients.nacks_total.load(Ordering::Relaxed),
            );
            gauge(
                "istiod_lite_xds_refused_total",
                "xDS streams refused for a missing or invalid token",
                "counter",
                ctx.clients.refused_total.load(Ordering::Relaxed),
            );
            gauge(
                "istiod_lite_xds_unknown_type_requests_total",
                "xDS requests for a type URL not served (ignored)",
                "counter",
                ctx.clients.unknown_types_total.load(Ordering::Relaxed),
            );
            if let Some(ca) = &ctx.ca {
                gauge(
                    "istiod_lite_certificates_issued_total",
                    "Workload certificates signed",
                    "counter",
                    ca.issued.load(Ordering::Relaxed),
                );
                gauge(
                    "istiod_lite_certificates_refused_total",
                    "Certificate requests refused (authentication, authorization or CSR)",
                    "counter",
                    ca.refused.load(Ordering::Relaxed),
                );
            }
            out.push_str(&meshcore::refusals::render("istiod_lite"));
            out.push_str(&meshcore::process_metrics::render());
            let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
                );
            };
            gauge(
                "istiod_lite_config_generation",
                "Generation of the served config",
                "gauge",
                set.generation,
            );
            gauge(
                "istiod_lite_config_refused",
                "1 while a config change, or a policy in it, is refused (the last good version stays)",
                "gauge",
                u64::from(refused > 0),
            );
            for (t, n) in &set.by_type {
                let _ = writeln!(
                    out,
                    "istiod_lite_xds_resources{{type_url=\"{t}\"}} {}",
                    n.len()
                );
            }
            reply(StatusCode::OK, "text/plain; version=0.0.4", out)
        }
        "/debug/clients" => json_reply(json!(ctx.clients.snapshot())),
        "/debug/resources" => json_reply(json!({
            "generation": set.generation,
            "resources": set
                .by_type
                .iter()
                .map(|(t, m)| {
                    let list: Vec<_> = m.values().map(|r| json!({"name": r.name, "version": r.version})).collect();
                    (t.to_string(), json!(list))
                })
                .collect::<serde_json::Map<_, _>>(),
            "egressPolicies": egress_policies(&set),
        })),
        "/debug/config" => json_reply(ctx.source.json()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "/ready /metrics /debug/clients /debug/resources /debug/config\n".into(),
        ),
    }
}

/// The egress policies served, decoded from their resources (the JSON ztunnel gets).
fn egress_policies(set: &ResourceSet) -> Vec<serde_json::Value> {
    use meshcore::api::{discovery, egress};
    use prost::Message;
    let Some(resources) = set.by_type.get(meshcore::api::type_url::EGRESS_POLICY) else {
        return Vec::new();
    };
    resources
        .values()
        .filter_map(|r| {
            let wire = discovery::Resource::decode(r.encoded.as_ref()).ok()?;
            let policy = egress::EgressPolicy::decode(wire.resource?.value.as_slice()).ok()?;
            serde_json::from_str(&policy.policy_json).ok()
        })
        .collect()
}

fn json_reply(v: serde_json::Value) -> Response<Full<Bytes>> {
    reply(
        StatusCode::OK,
        "application/json",
        serde_json::to_string_pretty(&v).expect("serializable"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Loopback" is the peer's address: all of 127/8, ::1, and ::ffff:127.x (an IPv4 client
    /// of a dual-stack listener).
    #[test]
    fn debug_endpoints_are_for_loopback_peers_and_the_allowed_networks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for peer in ["127.0.0.1", "127.66.1.9", "::1", "::ffff:127.0.0.1"] {
            assert!(debug_allowed(ip(peer), &[]), "{peer}");
        }
        for peer in [
            "192.0.2.2",
            "10.0.0.1",
            "0.0.0.0",
            "fd00::2",
            "::ffff:10.0.0.1",
        ] {
            assert!(!debug_allowed(ip(peer), &[]), "{peer}");
        }
        let allowed: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/64".parse().unwrap()];
        for peer in ["10.1.2.3", "::ffff:10.0.0.1", "fd00::2"] {
            assert!(debug_allowed(ip(peer), &allowed), "{peer}");
        }
        assert!(!debug_allowed(ip("192.0.2.2"), &allowed));
    }

    /// `/debug/resources` shows the egress policies served, in full.
    #[test]
    fn egress_policies_are_shown_decoded() {
        use meshcore::policy::egress::{EgressPolicy, EgressRule, Entity, Peer};
        let policy = EgressPolicy {
            name: "cilium-egress-p".into(),
            namespace: "shop".into(),
            workloads: vec!["Kubernetes//Pod/shop/backend".into()],
            action: meshcore::policy::Action::Allow,
            default_deny: true,
            rules: vec![EgressRule {
                to: vec![Peer::Entity(Entity::World)],
                ports: vec![],
            }],
        };
        let t = crate::translate::Translation {
            egress_policies: vec![policy.clone()],
            ..Default::default()
        };
        let set = ResourceSet::from_translation(&t, 1);
        assert_eq!(
            egress_policies(&set),
            [serde_json::to_value(&policy).unwrap()]
        );
    }
}

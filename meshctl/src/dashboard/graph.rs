//! The service graph the web view draws, built from what the proxies report (pure: no sockets,
//! unit-tested): nodes are the workloads of the ztunnels' `/config_dump` (identity, node,
//! certificate expiry, the policies that apply to each) and the Services seen carrying
//! requests; edges are the ztunnels' flow records within the window (connections, bytes,
//! mutual TLS or not, denials with the deciding policy) and, for Services behind a waypoint, the
//! waypoint's request rate and error rate between two scrapes of its metrics.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::inspect::stat::{self, Sample};
use crate::inspect::ztunnel_config::{self as zc, Dump};

/// What the page receives from `/api/graph`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Graph {
    /// When it was built (Unix milliseconds).
    pub generated_ms: u64,
    /// The window flows are taken from.
    pub window_seconds: f64,
    /// Seconds between the two metric scrapes the request rates come from; `None` before the
    /// second scrape.
    pub rate_seconds: Option<f64>,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// What could not be read (a ztunnel or waypoint not answering).
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Node {
    /// `namespace/name` for a workload, `svc:namespace/name` for a Service, `outside/IP` for a
    /// peer outside the mesh.
    pub id: String,
    /// `workload`, `waypoint`, `service` or `outside`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// SPIFFE ID (workloads).
    pub identity: Option<String>,
    /// The cluster node it runs on.
    pub node: Option<String>,
    /// Captured by the mesh (HBONE); a waypoint counts as in the mesh.
    pub in_mesh: bool,
    pub addresses: Vec<String>,
    /// `namespace/name` of its waypoint.
    pub waypoint: Option<String>,
    /// Its identity's certificate, as its node's ztunnel holds it.
    pub certificate: Option<Cert>,
    /// The L4 policies that apply to it.
    pub policies: Vec<PolicyRef>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cert {
    pub state: String,
    pub not_after: String,
    pub expires_in_seconds: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyRef {
    /// `namespace/name`.
    pub name: String,
    pub action: String,
    pub scope: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Edge {
    /// `SOURCE->TARGET` (node ids).
    pub id: String,
    pub source: String,
    pub target: String,
    /// `tcp` (ztunnel flows only) or `http` (with a waypoint's requests: their rate and
    /// errors, and the connections to the Service when the client's ztunnel recorded them).
    pub kind: &'static str,
    /// Every allowed connection over mutual TLS (denied-only edges: the destination's view).
    pub mtls: bool,
    /// Connections opened in the window.
    pub connections: u64,
    /// Bytes both ways of the connections closed in the window.
    pub bytes: u64,
    pub denied: u64,
    pub failed: u64,
    /// The policy that denied the last denied connection (`namespace/name`, several
    /// comma-separated when no ALLOW policy matched).
    pub policy: Option<String>,
    /// The reason of the last denial or failure, as ztunnel gave it.
    pub reason: Option<String>,
    /// Services addressed (hostnames).
    pub services: Vec<String>,
    /// Requests per second (http edges).
    pub rps: Option<f64>,
    /// Share of requests answered 5xx (http edges with requests).
    pub error_rate: Option<f64>,
    /// Time of the newest record (Unix milliseconds).
    pub last_ms: u64,
}

/// A waypoint's request rate between two peers of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRate {
    pub source: String,
    pub target: String,
    pub rps: f64,
    pub error_rate: Option<f64>,
}

/// Everything the graph is built from.
#[derive(Debug, Default)]
pub struct Input<'a> {
    pub now_ms: u64,
    pub window_ms: u64,
    /// Flow records of every ztunnel (the JSON objects of `/flows`).
    pub flows: &'a [Value],
    /// `(node, dump)` of every ztunnel.
    pub dumps: &'a [(String, Dump)],
    /// Request rates and the seconds they were measured over.
    pub rates: Option<(f64, Vec<RequestRate>)>,
    pub errors: Vec<String>,
}

fn service_id(namespace: &str, name: &str) -> String {
    format!("svc:{namespace}/{name}")
}

/// Request rates between two scrapes of the waypoints' metrics (`seconds` apart): client
/// workload → Service, and Service → the workload that answered, with the share of 5xx.
pub fn request_rates(before: &[Sample], after: &[Sample], seconds: f64) -> Vec<RequestRate> {
    let known = |v: Option<&String>| v.filter(|s| !s.is_empty() && *s != "unknown").cloned();
    let peer = |l: &BTreeMap<String, String>, side: &str| -> String {
        match (
            known(l.get(&format!("{side}_workload_namespace"))),
            known(l.get(&format!("{side}_workload"))),
        ) {
            (Some(ns), Some(w)) => format!("{ns}/{w}"),
            _ => "outside/unknown".to_owned(),
        }
    };
    let service = |l: &BTreeMap<String, String>| -> Option<String> {
        if l.get("reporter").map(String::as_str) != Some("waypoint") {
            return None;
        }
        Some(service_id(
            &known(l.get("destination_service_namespace"))?,
            &known(l.get("destination_service_name"))?,
        ))
    };
    // One key per (source, target) pair of both kinds; "\n" never appears in an id.
    let key = |l: &BTreeMap<String, String>| -> Vec<String> {
        let Some(svc) = service(l) else {
            return Vec::new();
        };
        vec![
            format!("{}\n{svc}", peer(l, "source")),
            format!("{svc}\n{}", peer(l, "destination")),
        ]
    };
    let mut requests: BTreeMap<String, f64> = BTreeMap::new();
    let mut errors: BTreeMap<String, f64> = BTreeMap::new();
    for i in 0..2 {
        let all = stat::increase(before, after, "istio_requests_total", |l| {
            key(l).into_iter().nth(i)
        });
        let failed = stat::increase(before, after, "istio_requests_total", |l| {
            l.get("response_code")
                .filter(|c| c.starts_with('5'))
                .and_then(|_| key(l).into_iter().nth(i))
        });
        requests.extend(all);
        errors.extend(failed);
    }
    requests
        .into_iter()
        .filter(|(_, n)| *n > 0.0)
        .filter_map(|(k, n)| {
            let (source, target) = k.split_once('\n')?;
            let errors = errors.get(&k).copied().unwrap_or(0.0);
            Some(RequestRate {
                source: source.to_owned(),
                target: target.to_owned(),
                rps: if seconds > 0.0 { n / seconds } else { 0.0 },
                error_rate: (n > 0.0).then(|| errors / n),
            })
        })
        .collect()
}

/// The deciding policy named in ztunnel's reason: `denied by DENY policy ns/name` gives
/// `ns/name`; `denied: no ALLOW policy matched (a, b)` gives `a, b`.
pub fn deciding_policy(reason: &str) -> Option<String> {
    if let Some(p) = reason.split("DENY policy ").nth(1) {
        return Some(p.split_whitespace().next()?.to_owned());
    }
    let (_, rest) = reason.split_once("no ALLOW policy matched (")?;
    let list = rest.split(')').next()?.trim();
    (!list.is_empty()).then(|| list.to_owned())
}

/// A flow end's node id: `namespace/workload`; a Service's when its VIP was addressed (the
/// client's ztunnel records a call through a waypoint that way); else `outside/IP`.
fn peer_id(v: &Value, vips: &BTreeMap<String, String>) -> String {
    match (v["namespace"].as_str(), v["workload"].as_str()) {
        (Some(ns), Some(w)) if !ns.is_empty() && !w.is_empty() => format!("{ns}/{w}"),
        _ => {
            let addr = v["address"].as_str().unwrap_or("unknown");
            let ip = addr
                .rsplit_once(':')
                .map_or(addr, |(ip, _)| ip)
                .trim_matches(|c| c == '[' || c == ']');
            vips.get(ip)
                .cloned()
                .unwrap_or_else(|| format!("outside/{ip}"))
        }
    }
}

/// Counts of one edge as one reporter (source or destination ztunnel) saw them.
#[derive(Default)]
struct Seen {
    opened: u64,
    /// Closed within the window (a connection opened before it shows only its close).
    closed: u64,
    bytes: u64,
    denied: u64,
    failed: u64,
    /// Allowed records, and those over mutual TLS.
    allowed: u64,
    allowed_mtls: u64,
    /// The newest denial or failure: (time, reason, mtls).
    last_refusal: Option<(u64, String, bool)>,
}

/// Builds the graph.
pub fn build(input: Input<'_>) -> Graph {
    let since = input.now_ms.saturating_sub(input.window_ms);
    let mut nodes = workload_nodes(input.dumps, input.now_ms);
    let vips: BTreeMap<String, String> = input
        .dumps
        .iter()
        .flat_map(|(_, d)| &d.services)
        .flat_map(|s| {
            s.vips.iter().map(|v| {
                let ip = v.rsplit('/').next().unwrap_or(v).to_owned();
                (ip, service_id(&s.namespace, &s.name))
            })
        })
        .collect();
    // edge id → (source, target, per reporter counts, services, newest)
    type Acc = (
        String,
        String,
        BTreeMap<String, Seen>,
        BTreeSet<String>,
        u64,
    );
    let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
    for f in input.flows {
        let time = f["time_ms"].as_u64().unwrap_or(0);
        if time < since || f.get("dropped").is_some() {
            continue;
        }
        let (source, target) = (
            peer_id(&f["source"], &vips),
            peer_id(&f["destination"], &vips),
        );
        let id = format!("{source}->{target}");
        let entry = acc
            .entry(id)
            .or_insert_with(|| (source, target, BTreeMap::new(), BTreeSet::new(), 0));
        entry.4 = entry.4.max(time);
        if let Some(s) = f["service"].as_str() {
            entry.3.insert(s.to_owned());
        }
        let reporter = f["reporter"].as_str().unwrap_or("?").to_owned();
        let seen = entry.2.entry(reporter).or_default();
        let mtls = f["mtls"].as_bool() == Some(true);
        let mut refusal = || {
            let reason = f["reason"].as_str().unwrap_or_default().to_owned();
            if seen
                .last_refusal
                .as_ref()
                .is_none_or(|(t, _, _)| *t <= time)
            {
                seen.last_refusal = Some((time, reason, mtls));
            }
        };
        match f["event"].as_str() {
            Some("opened") | Some("closed") => {
                if f["event"] == "opened" {
                    seen.opened += 1;
                } else {
                    seen.closed += 1;
                    seen.bytes += f["bytes_received"].as_u64().unwrap_or(0)
                        + f["bytes_sent"].as_u64().unwrap_or(0);
                }
                seen.allowed += 1;
                seen.allowed_mtls += u64::from(mtls);
            }
            Some("denied") => {
                seen.denied += 1;
                refusal();
            }
            Some("failed") => {
                seen.failed += 1;
                refusal();
            }
            _ => {}
        }
    }
    let mut edges: Vec<Edge> = acc
        .into_iter()
        .map(|(id, (source, target, by, services, last_ms))| {
            // A connection between two nodes is reported by both ztunnels: take the larger
            // count, not the sum. The destination's view of a refusal names the policy.
            let max = |f: fn(&Seen) -> u64| by.values().map(f).max().unwrap_or(0);
            let allowed = by.values().map(|s| s.allowed).sum::<u64>();
            let allowed_mtls = by.values().map(|s| s.allowed_mtls).sum::<u64>();
            let refusal = by
                .get("destination")
                .and_then(|s| s.last_refusal.clone())
                .filter(|(_, r, _)| deciding_policy(r).is_some())
                .or_else(|| {
                    by.values()
                        .filter_map(|s| s.last_refusal.clone())
                        .max_by_key(|(t, _, _)| *t)
                });
            let mtls = if allowed > 0 {
                allowed_mtls == allowed
            } else {
                refusal.as_ref().is_some_and(|(_, _, m)| *m)
            };
            Edge {
                id,
                source,
                target,
                kind: "tcp",
                mtls,
                connections: max(|s| s.opened.max(s.closed)),
                bytes: max(|s| s.bytes),
                denied: max(|s| s.denied),
                failed: max(|s| s.failed),
                policy: refusal.as_ref().and_then(|(_, r, _)| deciding_policy(r)),
                reason: refusal.map(|(_, r, _)| r).filter(|r| !r.is_empty()),
                services: services.into_iter().collect(),
                last_ms,
                ..Edge::default()
            }
        })
        .collect();
    let mut rate_seconds = None;
    if let Some((seconds, rates)) = &input.rates {
        rate_seconds = Some(*seconds);
        for r in rates {
            let id = format!("{}->{}", r.source, r.target);
            // A client's connections to a Service and its requests there are one edge.
            if let Some(e) = edges.iter_mut().find(|e| e.id == id) {
                e.kind = "http";
                e.rps = Some(r.rps);
                e.error_rate = r.error_rate;
                continue;
            }
            edges.push(Edge {
                id,
                source: r.source.clone(),
                target: r.target.clone(),
                kind: "http",
                // The waypoint's requests arrive and leave over HBONE.
                mtls: true,
                rps: Some(r.rps),
                error_rate: r.error_rate,
                last_ms: input.now_ms,
                ..Edge::default()
            });
        }
    }
    // Every end of an edge is a node: Services and peers outside the mesh are added here.
    let services: BTreeMap<String, &zc::ServiceIn> = input
        .dumps
        .iter()
        .flat_map(|(_, d)| &d.services)
        .map(|s| (service_id(&s.namespace, &s.name), s))
        .collect();
    for id in edges.iter().flat_map(|e| [&e.source, &e.target]) {
        if nodes.contains_key(id) {
            continue;
        }
        let node = if let Some(rest) = id.strip_prefix("svc:") {
            let (ns, name) = rest.split_once('/').unwrap_or(("", rest));
            let s = services.get(id);
            Node {
                id: id.clone(),
                kind: "service",
                namespace: ns.to_owned(),
                name: name.to_owned(),
                in_mesh: true,
                addresses: s
                    .map(|s| {
                        s.vips
                            .iter()
                            .map(|v| v.trim_start_matches('/').to_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
                waypoint: s.and_then(|s| waypoint_name(&s.waypoint)),
                ..Node::default()
            }
        } else {
            let (ns, name) = id.split_once('/').unwrap_or(("", id));
            Node {
                id: id.clone(),
                kind: if ns == "outside" {
                    "outside"
                } else {
                    "workload"
                },
                namespace: ns.to_owned(),
                name: name.to_owned(),
                ..Node::default()
            }
        };
        nodes.insert(id.clone(), node);
    }
    edges.sort_by(|a, b| a.id.cmp(&b.id));
    Graph {
        generated_ms: input.now_ms,
        window_seconds: input.window_ms as f64 / 1000.0,
        rate_seconds,
        nodes: nodes.into_values().collect(),
        edges,
        errors: input.errors,
    }
}

/// A waypoint reference as `namespace/name` (see `ztunnel-config`'s WAYPOINT column).
fn waypoint_name(v: &Option<Value>) -> Option<String> {
    let dest = &v.as_ref()?["destination"];
    let h = dest.get("hostname")?;
    let host = h["hostname"].as_str()?;
    Some(format!(
        "{}/{}",
        h["namespace"].as_str().unwrap_or_default(),
        host.split('.').next().unwrap_or(host)
    ))
}

/// The workloads every ztunnel knows (first view wins), with their certificates (from the
/// ztunnel of their node) and the policies that apply to them.
fn workload_nodes(dumps: &[(String, Dump)], now_ms: u64) -> BTreeMap<String, Node> {
    let now = (now_ms / 1000) as i64;
    // Waypoints: the endpoints of the Services that Services or workloads name as waypoint.
    let waypoint_services: BTreeSet<String> = dumps
        .iter()
        .flat_map(|(_, d)| {
            d.services
                .iter()
                .filter_map(|s| waypoint_name(&s.waypoint))
                .chain(
                    d.workloads
                        .iter()
                        .filter_map(|w| waypoint_name(&w.waypoint)),
                )
        })
        .collect();
    let waypoint_uids: BTreeSet<&str> = dumps
        .iter()
        .flat_map(|(_, d)| &d.services)
        .filter(|s| waypoint_services.contains(&format!("{}/{}", s.namespace, s.name)))
        .flat_map(|s| s.endpoints.iter().map(String::as_str))
        .collect();
    // identity → (node, certificate) from every ztunnel.
    let mut certs: BTreeMap<String, Vec<(String, zc::CertRow)>> = BTreeMap::new();
    for (source, d) in dumps {
        for c in zc::certificates(source, d, now) {
            certs
                .entry(c.identity.clone())
                .or_default()
                .push((source.clone(), c));
        }
    }
    let mut policies: BTreeMap<String, BTreeSet<PolicyRef>> = BTreeMap::new();
    for (source, d) in dumps {
        for p in zc::policies(source, d) {
            for w in &p.applies_to {
                policies.entry(w.clone()).or_default().insert(PolicyRef {
                    name: format!("{}/{}", p.namespace, p.name),
                    action: p.action.clone(),
                    scope: p.scope.clone(),
                });
            }
        }
    }
    let mut nodes = BTreeMap::new();
    for (source, d) in dumps {
        for w in zc::workloads(source, d) {
            let id = format!("{}/{}", w.namespace, w.name);
            if nodes.contains_key(&id) {
                continue;
            }
            let waypoint = waypoint_uids.contains(w.uid.as_str());
            let certificate = certs.get(&w.identity).and_then(|list| {
                list.iter()
                    .find(|(n, _)| *n == w.node)
                    .or(list.first())
                    .map(|(_, c)| Cert {
                        state: c.state.clone(),
                        not_after: c.not_after.clone(),
                        expires_in_seconds: c.expires_in_seconds,
                    })
            });
            nodes.insert(
                id.clone(),
                Node {
                    id: id.clone(),
                    kind: if waypoint { "waypoint" } else { "workload" },
                    namespace: w.namespace.clone(),
                    name: w.name.clone(),
                    identity: Some(w.identity.clone()),
                    node: (!w.node.is_empty()).then(|| w.node.clone()),
                    in_mesh: waypoint || w.protocol == "HBONE",
                    addresses: w.addresses.clone(),
                    waypoint: (!w.waypoint.is_empty()).then(|| w.waypoint.clone()),
                    certificate,
                    policies: policies
                        .get(&id)
                        .map(|p| p.iter().cloned().collect())
                        .unwrap_or_default(),
                },
            );
        }
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEDICATED: &str = include_str!("../inspect/testdata/config_dump_dedicated.json");
    /// 2026-11-30T12:00:00Z, inside the test dump's certificate validity.
    const NOW: u64 = 1_796_040_000_000;

    fn flow(event: &str, reporter: &str, from: &str, to: &str, mtls: bool) -> Value {
        let end = |s: &str| {
            let (ns, w) = s.split_once('/').unwrap();
            json!({"namespace": ns, "workload": w, "address": "10.0.0.1:1234"})
        };
        json!({"time_ms": NOW - 1000, "event": event, "reporter": reporter,
               "verdict": if event == "denied" { "denied" } else { "allowed" },
               "source": end(from), "destination": end(to), "mtls": mtls})
    }

    fn dumps() -> Vec<(String, Dump)> {
        vec![("node-1".into(), serde_json::from_str(DEDICATED).unwrap())]
    }

    #[test]
    fn flows_become_edges_counted_once_across_both_reporters() {
        let mut closed = flow("closed", "source", "apps/client", "apps/server-1", true);
        closed["bytes_received"] = 40.into();
        closed["bytes_sent"] = 60.into();
        let mut closed_dst = closed.clone();
        closed_dst["reporter"] = "destination".into();
        closed_dst["service"] = "server.apps.svc.cluster.local".into();
        let mut old = flow("opened", "source", "apps/client", "apps/server-1", true);
        old["time_ms"] = (NOW - 120_000).into();
        // Through a waypoint, the client's ztunnel records the Service's VIP.
        let mut to_vip = flow("opened", "source", "apps/client", "apps/x", true);
        to_vip["destination"] = json!({"address": "127.0.77.100:80"});
        let flows = vec![
            to_vip,
            flow("opened", "source", "apps/client", "apps/server-1", true),
            flow(
                "opened",
                "destination",
                "apps/client",
                "apps/server-1",
                true,
            ),
            closed,
            closed_dst,
            old,
        ];
        let d = dumps();
        let g = build(Input {
            now_ms: NOW,
            window_ms: 60_000,
            flows: &flows,
            dumps: &d,
            rates: Some((
                2.0,
                vec![RequestRate {
                    source: "apps/client".into(),
                    target: "svc:apps/server".into(),
                    rps: 3.0,
                    error_rate: Some(0.0),
                }],
            )),
            ..Input::default()
        });
        assert_eq!(g.edges.len(), 2, "{:?}", g.edges);
        let svc = &g.edges[1];
        assert_eq!(svc.id, "apps/client->svc:apps/server");
        assert_eq!((svc.kind, svc.connections, svc.rps), ("http", 1, Some(3.0)));
        let e = &g.edges[0];
        assert_eq!(e.id, "apps/client->apps/server-1");
        assert_eq!((e.connections, e.bytes, e.mtls), (1, 100, true));
        assert_eq!(e.services, ["server.apps.svc.cluster.local"]);
        assert_eq!(e.kind, "tcp");
        assert!(e.policy.is_none());
        // Every workload of the dump is a node, with identity, certificate and policies.
        let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "apps/client",
                "apps/server-1",
                "apps/server-2",
                "svc:apps/server"
            ]
        );
        let server = &g.nodes[1];
        assert_eq!(
            server.identity.as_deref(),
            Some("spiffe://cluster.local/ns/apps/sa/server")
        );
        let cert = server.certificate.as_ref().expect("a certificate");
        assert_eq!(cert.state, "VALID");
        assert!(cert.expires_in_seconds.unwrap() > 0);
        let names: Vec<&str> = server.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["apps/allow-client", "apps/deny-outside"]);
        assert!(server.in_mesh && server.kind == "workload");
    }

    #[test]
    fn a_connection_opened_before_the_window_counts_by_its_close() {
        let mut closed = flow("closed", "source", "apps/client", "apps/server-1", true);
        closed["bytes_received"] = json!(10);
        let g = build(Input {
            now_ms: NOW,
            window_ms: 60_000,
            flows: &[closed],
            ..Input::default()
        });
        assert_eq!((g.edges[0].connections, g.edges[0].bytes), (1, 10));
    }

    #[test]
    fn denials_name_the_deciding_policy_from_the_destination() {
        let mut src = flow("denied", "source", "apps/other", "apps/server-2", false);
        src["reason"] = "denied by the destination's authorization policy (HBONE 401)".into();
        let mut dst = flow("denied", "destination", "apps/other", "apps/server-2", true);
        dst["reason"] = "denied by DENY policy apps/deny-other".into();
        let mut plain = flow("opened", "destination", "apps/x", "apps/server-2", false);
        plain["source"] = json!({"address": "10.244.9.9:4000"});
        let g = build(Input {
            now_ms: NOW,
            window_ms: 60_000,
            flows: &[src, dst, plain],
            ..Input::default()
        });
        let e = g
            .edges
            .iter()
            .find(|e| e.id == "apps/other->apps/server-2")
            .unwrap();
        assert_eq!(e.denied, 1);
        assert_eq!(e.policy.as_deref(), Some("apps/deny-other"));
        assert!(e.mtls, "the destination saw mutual TLS");
        let outside = g
            .edges
            .iter()
            .find(|e| e.source == "outside/10.244.9.9")
            .unwrap();
        assert!(!outside.mtls);
        let n = g
            .nodes
            .iter()
            .find(|n| n.id == "outside/10.244.9.9")
            .unwrap();
        assert_eq!(n.kind, "outside");
    }

    #[test]
    fn policies_are_read_from_reasons() {
        assert_eq!(
            deciding_policy("denied by DENY policy apps/deny-other").as_deref(),
            Some("apps/deny-other")
        );
        assert_eq!(
            deciding_policy("denied: no ALLOW policy matched (apps/a, apps/b)").as_deref(),
            Some("apps/a, apps/b")
        );
        assert_eq!(deciding_policy("connection refused"), None);
    }

    #[test]
    fn waypoint_requests_become_http_edges_with_rates() {
        let labels = |code: &str| {
            format!(
                "reporter=\"waypoint\",source_workload=\"client\",source_workload_namespace=\"gamma\",\
                 destination_workload=\"echo-v1-1\",destination_workload_namespace=\"gamma\",\
                 destination_service_name=\"echo\",destination_service_namespace=\"gamma\",response_code=\"{code}\""
            )
        };
        let before = stat::parse(&format!(
            "istio_requests_total{{{}}} 10\nistio_requests_total{{{}}} 0\n",
            labels("200"),
            labels("503")
        ));
        let after = stat::parse(&format!(
            "istio_requests_total{{{}}} 28\nistio_requests_total{{{}}} 2\n",
            labels("200"),
            labels("503")
        ));
        let rates = request_rates(&before, &after, 10.0);
        assert_eq!(rates.len(), 2, "{rates:?}");
        let to_svc = rates.iter().find(|r| r.source == "gamma/client").unwrap();
        assert_eq!(to_svc.target, "svc:gamma/echo");
        assert_eq!(to_svc.rps, 2.0);
        assert_eq!(to_svc.error_rate, Some(0.1));
        let from_svc = rates.iter().find(|r| r.source == "svc:gamma/echo").unwrap();
        assert_eq!(from_svc.target, "gamma/echo-v1-1");
        let g = build(Input {
            now_ms: NOW,
            window_ms: 60_000,
            rates: Some((10.0, rates)),
            ..Input::default()
        });
        let svc = g.nodes.iter().find(|n| n.id == "svc:gamma/echo").unwrap();
        assert_eq!((svc.kind, svc.name.as_str()), ("service", "echo"));
        assert!(g
            .edges
            .iter()
            .any(|e| e.id == "gamma/client->svc:gamma/echo" && e.kind == "http"));
        assert_eq!(g.rate_seconds, Some(10.0));
    }
}

//! `meshctl ztunnel-config`: what a ztunnel knows (workloads, services, policies,
//! certificates), shaped from its `/config_dump` into rows. Pure; fetching is in [`super`].
//!
//! The dump is read leniently (every field defaulted, unknown fields ignored), so a newer or
//! older ztunnel still shows what it has.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::clock;
use super::table;

/// The parts of ztunnel's `/config_dump` shown here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Dump {
    pub workloads: Vec<WorkloadIn>,
    pub services: Vec<ServiceIn>,
    pub policies: Vec<PolicyIn>,
    pub certificates: Vec<CertIn>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadIn {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub workload_ips: Vec<String>,
    pub protocol: String,
    pub node: String,
    pub service_account: String,
    pub trust_domain: String,
    pub status: String,
    pub waypoint: Option<Value>,
    pub authorization_policies: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceIn {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<String>,
    /// Service port → target port (JSON object keys are strings).
    pub ports: BTreeMap<String, u16>,
    pub waypoint: Option<Value>,
    /// Endpoint workload uids.
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyIn {
    pub name: String,
    pub namespace: String,
    pub scope: String,
    pub action: String,
    pub rules: Vec<Value>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CertIn {
    pub identity: String,
    pub not_before: String,
    pub not_after: String,
    pub renew_at: String,
    pub renewals: u64,
    pub last_error: Option<String>,
}

/// Which table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Workloads,
    Services,
    Policies,
    Certificates,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRow {
    /// Whose view: the node of the local cluster, or the `HOST:PORT` asked.
    pub ztunnel: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub addresses: Vec<String>,
    pub node: String,
    /// `HBONE` or `TCP`.
    pub protocol: String,
    /// `namespace/name` of the waypoint (or its address); empty when none.
    pub waypoint: String,
    pub identity: String,
    pub status: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRow {
    pub ztunnel: String,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    pub vips: Vec<String>,
    /// `port:targetPort`, or `port` when the target is the same port or named (resolved per
    /// endpoint, 0 in the dump).
    pub ports: Vec<String>,
    pub endpoints: usize,
    /// Endpoints whose workload is healthy.
    pub healthy_endpoints: usize,
    pub waypoint: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRow {
    pub ztunnel: String,
    pub namespace: String,
    pub name: String,
    /// `Global`, `Namespace` or `WorkloadSelector`.
    pub scope: String,
    /// `Allow` or `Deny`; `(dry run)` appended for dry-run policies.
    pub action: String,
    pub rules: usize,
    /// Workloads (`namespace/name`) it applies to.
    pub applies_to: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertRow {
    pub ztunnel: String,
    pub identity: String,
    /// `VALID`, `EXPIRED`, `NOT YET VALID`, `RENEWAL FAILING` (valid, last renewal failed) or
    /// `UNKNOWN` (unreadable times).
    pub state: String,
    pub not_before: String,
    pub not_after: String,
    /// Seconds until `not_after` (negative once expired).
    pub expires_in_seconds: Option<i64>,
    pub renew_at: String,
    pub renewals: u64,
    pub last_error: Option<String>,
}

/// A waypoint reference (`GatewayAddress`) as `namespace/name` (the Service's first DNS
/// label) or its address.
fn waypoint(v: &Option<Value>) -> String {
    let Some(dest) = v.as_ref().map(|w| &w["destination"]) else {
        return String::new();
    };
    if let Some(h) = dest.get("hostname") {
        let host = h["hostname"].as_str().unwrap_or_default();
        let name = host.split('.').next().unwrap_or(host);
        return format!("{}/{name}", h["namespace"].as_str().unwrap_or_default());
    }
    dest.get("address")
        .and_then(Value::as_str)
        .map(vip)
        .unwrap_or_default()
}

/// `network/ip` as `ip` on the default (empty) network.
fn vip(s: &str) -> String {
    s.strip_prefix('/').unwrap_or(s).to_owned()
}

pub fn workloads(source: &str, dump: &Dump) -> Vec<WorkloadRow> {
    let mut rows: Vec<WorkloadRow> = dump
        .workloads
        .iter()
        .map(|w| {
            let sa = if w.service_account.is_empty() {
                "default"
            } else {
                &w.service_account
            };
            let td = if w.trust_domain.is_empty() {
                "cluster.local"
            } else {
                &w.trust_domain
            };
            WorkloadRow {
                ztunnel: source.to_owned(),
                namespace: w.namespace.clone(),
                name: w.name.clone(),
                uid: w.uid.clone(),
                addresses: w.workload_ips.clone(),
                node: w.node.clone(),
                protocol: w.protocol.clone(),
                waypoint: waypoint(&w.waypoint),
                identity: format!("spiffe://{td}/ns/{}/sa/{sa}", w.namespace),
                status: w.status.clone(),
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name, &a.uid).cmp(&(&b.namespace, &b.name, &b.uid)));
    rows
}

pub fn services(source: &str, dump: &Dump) -> Vec<ServiceRow> {
    let healthy: BTreeMap<&str, bool> = dump
        .workloads
        .iter()
        .map(|w| (w.uid.as_str(), w.status.is_empty() || w.status == "Healthy"))
        .collect();
    let mut rows: Vec<ServiceRow> = dump
        .services
        .iter()
        .map(|s| {
            let mut ports: Vec<(u16, u16)> = s
                .ports
                .iter()
                .filter_map(|(p, t)| Some((p.parse().ok()?, *t)))
                .collect();
            ports.sort();
            ServiceRow {
                ztunnel: source.to_owned(),
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                hostname: s.hostname.clone(),
                vips: s.vips.iter().map(|v| vip(v)).collect(),
                ports: ports
                    .iter()
                    .map(|(p, t)| {
                        if *t == 0 || t == p {
                            p.to_string()
                        } else {
                            format!("{p}:{t}")
                        }
                    })
                    .collect(),
                endpoints: s.endpoints.len(),
                healthy_endpoints: s
                    .endpoints
                    .iter()
                    .filter(|uid| healthy.get(uid.as_str()).copied().unwrap_or(false))
                    .count(),
                waypoint: waypoint(&s.waypoint),
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

/// Policies, with the workloads each applies to: every workload for `Global`, the policy's
/// namespace for `Namespace`, those naming it for `WorkloadSelector`.
pub fn policies(source: &str, dump: &Dump) -> Vec<PolicyRow> {
    let mut rows: Vec<PolicyRow> = dump
        .policies
        .iter()
        .map(|p| {
            let key = format!("{}/{}", p.namespace, p.name);
            let mut applies_to: Vec<String> = dump
                .workloads
                .iter()
                .filter(|w| match p.scope.as_str() {
                    "Global" => true,
                    "Namespace" => w.namespace == p.namespace,
                    _ => w.authorization_policies.contains(&key),
                })
                .map(|w| format!("{}/{}", w.namespace, w.name))
                .collect();
            applies_to.sort();
            applies_to.dedup();
            PolicyRow {
                ztunnel: source.to_owned(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                scope: p.scope.clone(),
                action: if p.dry_run {
                    format!("{} (dry run)", p.action)
                } else {
                    p.action.clone()
                },
                rules: p.rules.len(),
                applies_to,
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

pub fn certificates(source: &str, dump: &Dump, now_secs: i64) -> Vec<CertRow> {
    let mut rows: Vec<CertRow> = dump
        .certificates
        .iter()
        .map(|c| {
            let before = clock::parse_rfc3339(&c.not_before);
            let after = clock::parse_rfc3339(&c.not_after);
            let state = match (before, after) {
                (Some(_), Some(a)) if a <= now_secs => "EXPIRED",
                (Some(b), Some(_)) if b > now_secs => "NOT YET VALID",
                (Some(_), Some(_)) if c.last_error.is_some() => "RENEWAL FAILING",
                (Some(_), Some(_)) => "VALID",
                _ => "UNKNOWN",
            };
            CertRow {
                ztunnel: source.to_owned(),
                identity: c.identity.clone(),
                state: state.to_owned(),
                not_before: c.not_before.clone(),
                not_after: c.not_after.clone(),
                expires_in_seconds: after.map(|a| a - now_secs),
                renew_at: c.renew_at.clone(),
                renewals: c.renewals,
                last_error: c.last_error.clone(),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.identity.cmp(&b.identity));
    rows
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// Headers with the source column first when several ztunnels are shown.
fn headers<'a>(with_source: bool, rest: &[&'a str]) -> Vec<&'a str> {
    let mut h = Vec::new();
    if with_source {
        h.push("ZTUNNEL");
    }
    h.extend_from_slice(rest);
    h
}

fn row(with_source: bool, source: &str, rest: Vec<String>) -> Vec<String> {
    let mut r = Vec::new();
    if with_source {
        r.push(source.to_owned());
    }
    r.extend(rest);
    r
}

pub fn workloads_table(rows: &[WorkloadRow], with_source: bool) -> String {
    let h = headers(
        with_source,
        &[
            "NAMESPACE",
            "NAME",
            "ADDRESS",
            "NODE",
            "PROTOCOL",
            "WAYPOINT",
        ],
    );
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|w| {
            row(
                with_source,
                &w.ztunnel,
                vec![
                    w.namespace.clone(),
                    w.name.clone(),
                    table::list(&w.addresses),
                    or_dash(&w.node),
                    w.protocol.clone(),
                    if w.waypoint.is_empty() {
                        "None".into()
                    } else {
                        w.waypoint.clone()
                    },
                ],
            )
        })
        .collect();
    table::render(&h, &cells)
}

pub fn services_table(rows: &[ServiceRow], with_source: bool) -> String {
    let h = headers(
        with_source,
        &[
            "NAMESPACE",
            "NAME",
            "VIPS",
            "PORTS",
            "ENDPOINTS",
            "WAYPOINT",
        ],
    );
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            row(
                with_source,
                &s.ztunnel,
                vec![
                    s.namespace.clone(),
                    s.name.clone(),
                    table::list(&s.vips),
                    table::list(&s.ports),
                    format!("{}/{}", s.healthy_endpoints, s.endpoints),
                    if s.waypoint.is_empty() {
                        "None".into()
                    } else {
                        s.waypoint.clone()
                    },
                ],
            )
        })
        .collect();
    table::render(&h, &cells)
}

pub fn policies_table(rows: &[PolicyRow], with_source: bool) -> String {
    let h = headers(
        with_source,
        &[
            "NAMESPACE",
            "NAME",
            "SCOPE",
            "ACTION",
            "RULES",
            "APPLIES TO",
        ],
    );
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|p| {
            row(
                with_source,
                &p.ztunnel,
                vec![
                    p.namespace.clone(),
                    p.name.clone(),
                    p.scope.clone(),
                    p.action.clone(),
                    p.rules.to_string(),
                    table::short_list(&p.applies_to, 4),
                ],
            )
        })
        .collect();
    table::render(&h, &cells)
}

pub fn certificates_table(rows: &[CertRow], with_source: bool) -> String {
    let h = headers(
        with_source,
        &[
            "IDENTITY",
            "STATE",
            "NOT AFTER",
            "EXPIRES IN",
            "RENEWALS",
            "LAST ERROR",
        ],
    );
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|c| {
            row(
                with_source,
                &c.ztunnel,
                vec![
                    c.identity.clone(),
                    c.state.clone(),
                    or_dash(&c.not_after),
                    c.expires_in_seconds
                        .map_or_else(|| "-".to_owned(), clock::span),
                    c.renewals.to_string(),
                    c.last_error
                        .as_deref()
                        .map_or_else(|| "-".to_owned(), |e| table::cut(e, 60)),
                ],
            )
        })
        .collect();
    table::render(&h, &cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `/config_dump` of a dedicated-mode ztunnel (pod apps/server-1) attached to
    /// istiod-lite: three pods, a Service with a named target port, a WorkloadSelector ALLOW
    /// and a namespace-wide DENY, its certificate.
    const DEDICATED: &str = include_str!("testdata/config_dump_dedicated.json");
    /// 2026-11-30T12:00:00Z, inside the certificate's validity.
    const NOW: i64 = 1_796_040_000;

    fn dump() -> Dump {
        serde_json::from_str(DEDICATED).unwrap()
    }

    #[test]
    fn workloads_as_istioctl_lists_them() {
        let rows = workloads("node-1", &dump());
        let names: Vec<(&str, &str, &str, &str)> = rows
            .iter()
            .map(|w| {
                (
                    w.name.as_str(),
                    w.node.as_str(),
                    w.protocol.as_str(),
                    w.waypoint.as_str(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("client", "node-1", "HBONE", ""),
                ("server-1", "node-1", "HBONE", ""),
                ("server-2", "node-2", "HBONE", ""),
            ]
        );
        assert_eq!(rows[1].addresses, vec!["127.0.77.3"]);
        assert_eq!(rows[1].identity, "spiffe://cluster.local/ns/apps/sa/server");
        let text = workloads_table(&rows, false);
        assert_eq!(
            text.lines().next().unwrap(),
            "NAMESPACE   NAME       ADDRESS      NODE     PROTOCOL   WAYPOINT"
        );
        assert_eq!(
            text.lines().nth(2).unwrap(),
            "apps        server-1   127.0.77.3   node-1   HBONE      None"
        );
        let wide = workloads_table(&rows, true);
        assert!(wide.starts_with("ZTUNNEL   NAMESPACE"), "{wide}");
        assert!(
            wide.lines().nth(1).unwrap().starts_with("node-1    apps"),
            "{wide}"
        );
    }

    #[test]
    fn services_with_ports_endpoints_and_health() {
        let mut d = dump();
        d.workloads[2].status = "Unhealthy".into();
        let rows = services("node-1", &d);
        assert_eq!(rows.len(), 1);
        let s = &rows[0];
        assert_eq!(s.vips, vec!["127.0.77.100"]);
        // A named target port is resolved per endpoint: 0 in the Service.
        assert_eq!(s.ports, vec!["80", "9090"]);
        assert_eq!((s.healthy_endpoints, s.endpoints), (1, 2));
        let text = services_table(&rows, false);
        assert_eq!(
            text,
            "NAMESPACE   NAME     VIPS           PORTS     ENDPOINTS   WAYPOINT\n\
             apps        server   127.0.77.100   80,9090   1/2         None\n"
        );
    }

    #[test]
    fn policies_with_the_workloads_they_apply_to() {
        let mut d = dump();
        d.policies.push(PolicyIn {
            name: "global-deny".into(),
            namespace: "istio-system".into(),
            scope: "Global".into(),
            action: "Deny".into(),
            rules: vec![Value::Null],
            dry_run: true,
        });
        let rows = policies("node-1", &d);
        let got: Vec<(&str, &str, &str, usize, Vec<&str>)> = rows
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.scope.as_str(),
                    p.action.as_str(),
                    p.rules,
                    p.applies_to.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "allow-client",
                    "WorkloadSelector",
                    "Allow",
                    1,
                    vec!["apps/server-1", "apps/server-2"]
                ),
                (
                    "deny-outside",
                    "Namespace",
                    "Deny",
                    1,
                    vec!["apps/client", "apps/server-1", "apps/server-2"]
                ),
                (
                    "global-deny",
                    "Global",
                    "Deny (dry run)",
                    1,
                    vec!["apps/client", "apps/server-1", "apps/server-2"]
                ),
            ]
        );
        let text = policies_table(&rows, false);
        assert!(
            text.contains("allow-client   WorkloadSelector   Allow            1       apps/server-1,apps/server-2\n"),
            "{text}"
        );
    }

    #[test]
    fn certificates_state_and_time_left() {
        let mut d = dump();
        let rows = certificates("node-1", &d, NOW);
        assert_eq!(rows.len(), 1);
        let c = &rows[0];
        assert_eq!(c.identity, "spiffe://cluster.local/ns/apps/sa/server");
        assert_eq!(c.state, "VALID");
        // notAfter 2026-12-01T09:58:03Z.
        assert_eq!(c.expires_in_seconds, Some(21 * 3600 + 58 * 60 + 3));
        let text = certificates_table(&rows, false);
        assert!(
            text.lines().nth(1).unwrap().starts_with(
                "spiffe://cluster.local/ns/apps/sa/server   VALID   2026-12-01T09:58:03Z   21h58m       0"
            ),
            "{text}"
        );
        assert_eq!(certificates("n", &d, NOW + 86_400)[0].state, "EXPIRED");
        assert_eq!(
            certificates("n", &d, NOW - 86_400)[0].state,
            "NOT YET VALID"
        );
        d.certificates[0].last_error = Some("CA unreachable".into());
        assert_eq!(certificates("n", &d, NOW)[0].state, "RENEWAL FAILING");
        d.certificates[0].not_after = "?".into();
        let rows = certificates("n", &d, NOW);
        assert_eq!(
            (rows[0].state.as_str(), rows[0].expires_in_seconds),
            ("UNKNOWN", None)
        );
    }

    /// Waypoints as ztunnel's `GatewayAddress` serializes them: a Service by hostname, or an
    /// address.
    #[test]
    fn waypoints_by_hostname_or_address() {
        let by_host = serde_json::json!({"destination": {"hostname": {"namespace": "apps", "hostname": "waypoint.apps.svc.cluster.local"}}, "hboneMtlsPort": 15008});
        assert_eq!(waypoint(&Some(by_host)), "apps/waypoint");
        let by_addr =
            serde_json::json!({"destination": {"address": "/10.244.1.9"}, "hboneMtlsPort": 15008});
        assert_eq!(waypoint(&Some(by_addr)), "10.244.1.9");
        assert_eq!(waypoint(&None), "");
    }

    /// A node-mode dump (`pods`, several certificates) and unknown fields parse too.
    #[test]
    fn a_node_mode_dump_parses() {
        let mut v: Value = serde_json::from_str(DEDICATED).unwrap();
        v["pods"] = serde_json::json!([{"uid": "Kubernetes//Pod/apps/client", "workload": "apps/client", "identity": "spiffe://cluster.local/ns/apps/sa/client", "netns": "x", "activeConnections": 0}]);
        v["somethingNew"] = serde_json::json!({"a": 1});
        let d: Dump = serde_json::from_value(v).unwrap();
        assert_eq!(d.workloads.len(), 3);
    }
}

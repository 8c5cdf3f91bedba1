//! `meshctl check`: is the mesh healthy? Each check says what it looked at and, when it fails,
//! a hint where to look next (as `linkerd check` does). The gathering reads the local cluster;
//! the judging ([`judge`]) is pure and unit-tested.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::proxy_status::{ClientRow, NOT_SENT, SYNCED};

/// The types every ztunnel subscribes to.
const ZTUNNEL_TYPES: [&str; 2] = ["Address", "Authorization"];
/// Groups, in the order they are shown.
const GROUPS: [&str; 5] = ["control plane", "ztunnels", "node agents", "pods", "clock"];

/// One check's outcome.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Outcome {
    /// The group it belongs to (`control plane`, `ztunnels`, `node agents`, `pods`).
    pub group: &'static str,
    pub check: String,
    pub ok: bool,
    /// What was seen (when ok) or what is wrong.
    pub detail: String,
    /// Where to look next, when it failed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

/// A node as `check` sees it.
#[derive(Debug, Clone, Default)]
pub struct NodeSeen {
    pub name: String,
    /// ztunnel's `/config_dump`, if it answered.
    pub dump: Option<Value>,
    pub ztunnel_ready: bool,
    pub agent_alive: bool,
    pub agent_socket: bool,
    /// Pod key (`namespace/name`) → whether its capture rules are in its network namespace.
    pub rules: BTreeMap<String, bool>,
    pub log_dir: String,
}

/// Everything `check` looked at.
#[derive(Debug, Clone)]
pub struct Seen {
    /// istiod-lite's `/ready` answer (status 200), or the error.
    pub control_ready: Result<(), String>,
    pub clients: Vec<ClientRow>,
    pub nodes: Vec<NodeSeen>,
    /// Now, in Unix seconds.
    pub now: i64,
}

/// Certificates expiring sooner than this are reported as failing.
const EXPIRY_MARGIN_SECS: i64 = 3600;

/// The checks, in order.
pub fn judge(seen: &Seen) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut add = |group, check: String, result: Result<String, (String, String)>| {
        let (ok, detail, hint) = match result {
            Ok(detail) => (true, detail, String::new()),
            Err((detail, hint)) => (false, detail, hint),
        };
        out.push(Outcome {
            group,
            check,
            ok,
            detail,
            hint,
        });
    };
    let logs = seen
        .nodes
        .first()
        .map(|n| n.log_dir.clone())
        .unwrap_or_default();
    add(
        "control plane",
        "istiod-lite is ready".into(),
        seen.control_ready
            .clone()
            .map(|()| "answers /ready".into())
            .map_err(|e| (e, format!("see {logs}/istiod-lite.log"))),
    );
    for node in &seen.nodes {
        let n = &node.name;
        let log = format!("see {}/{n}.ztunnel.log", node.log_dir);
        add(
            "ztunnels",
            format!("{n}: ztunnel is ready"),
            if node.ztunnel_ready {
                Ok("answers /healthz/ready".into())
            } else {
                Err((
                    "not ready (no config yet, no certificate, or not running)".into(),
                    log.clone(),
                ))
            },
        );
        let client = seen
            .clients
            .iter()
            .find(|c| c.kind == "ztunnel" && &c.node == n);
        add(
            "ztunnels",
            format!("{n}: ztunnel has the latest config"),
            match client {
                None => Err((
                    "not connected to istiod-lite".into(),
                    format!("{log}; meshctl proxy-status"),
                )),
                Some(c) => {
                    // A ztunnel subscribes to Address and Authorization; a type it never asked
                    // for is NOT SENT and not its concern.
                    let behind: Vec<String> = c
                        .types
                        .iter()
                        .filter(|t| {
                            t.status != SYNCED
                                && (t.status != NOT_SENT
                                    || ZTUNNEL_TYPES.contains(&t.short.as_str()))
                        })
                        .map(|t| format!("{} {}", t.short, t.status))
                        .collect();
                    if let Some(nack) = c.types.iter().find_map(|t| t.last_nack.as_ref()) {
                        Err((
                            format!("refused a config: {nack}"),
                            format!("{log}; meshctl proxy-status"),
                        ))
                    } else if behind.is_empty() {
                        let types: Vec<&str> = c
                            .types
                            .iter()
                            .filter(|t| t.status == SYNCED)
                            .map(|t| t.short.as_str())
                            .collect();
                        Ok(format!("{} synced", and_list(&types)))
                    } else {
                        Err((
                            behind.join(", "),
                            "meshctl proxy-status (STALE clears once it acknowledges)".into(),
                        ))
                    }
                }
            },
        );
        add(
            "ztunnels",
            format!("{n}: workload certificates are valid"),
            certificates(node.dump.as_ref(), seen.now).map_err(|e| {
                (
                    e,
                    format!("{log}; meshctl ztunnel-config certificates --node {n}"),
                )
            }),
        );
        add(
            "node agents",
            format!("{n}: node agent is serving"),
            match (node.agent_alive, node.agent_socket) {
                (true, true) => Ok("running, CNI socket present".into()),
                (false, _) => Err((
                    "not running".into(),
                    format!("see {}/{n}.agent.log", node.log_dir),
                )),
                (true, false) => Err((
                    "running, but its CNI socket is missing".into(),
                    format!("see {}/{n}.agent.log", node.log_dir),
                )),
            },
        );
        let expected = enrolled_here(node.dump.as_ref(), n);
        let served = served_pods(node.dump.as_ref());
        let missing: Vec<&String> = expected.iter().filter(|p| !served.contains(p)).collect();
        let unruled: Vec<&String> = served
            .iter()
            .filter(|p| node.rules.get(*p) != Some(&true))
            .collect();
        add(
            "pods",
            format!("{n}: every enrolled pod is served and captured"),
            if !missing.is_empty() {
                Err((
                    format!("not served by this node's ztunnel: {}", list(&missing)),
                    format!(
                        "see {}/{n}.agent.log (enrolment) and {}/{n}.ztunnel.log",
                        node.log_dir, node.log_dir
                    ),
                ))
            } else if !unruled.is_empty() {
                Err((
                    format!("no capture rules in: {}", list(&unruled)),
                    format!("see {}/{n}.agent.log; meshctl exec POD -- nft list table inet ztunnel-inpod", node.log_dir),
                ))
            } else {
                Ok(format!("{} pod(s), rules installed in each", served.len()))
            },
        );
    }
    add(
        "clock",
        "clocks agree".into(),
        Ok("one machine: the local cluster shares its clock".into()),
    );
    // Each group once, nodes in order within it.
    out.sort_by_key(|o| GROUPS.iter().position(|g| *g == o.group));
    out
}

fn list(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Pods the control plane says run on `node` in the mesh (HBONE workloads of that node).
fn enrolled_here(dump: Option<&Value>, node: &str) -> Vec<String> {
    dump.and_then(|d| d["workloads"].as_array())
        .into_iter()
        .flatten()
        .filter(|w| {
            w["protocol"] == "HBONE" && w["node"] == node && w["workloadType"] != "waypoint"
        })
        .filter_map(|w| {
            Some(format!(
                "{}/{}",
                w["namespace"].as_str()?,
                w["name"].as_str()?
            ))
        })
        .collect()
}

/// Pods the node's ztunnel serves (its `pods` list).
fn served_pods(dump: Option<&Value>) -> Vec<String> {
    dump.and_then(|d| d["pods"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p["workload"].as_str().map(str::to_owned))
        .collect()
}

/// Ok with the soonest expiry, or what is wrong.
fn certificates(dump: Option<&Value>, now: i64) -> Result<String, String> {
    let certs = dump
        .and_then(|d| d["certificates"].as_array())
        .ok_or("ztunnel's config dump did not answer")?;
    let mut soonest: Option<(i64, String)> = None;
    for c in certs {
        let id = c["identity"].as_str().unwrap_or("?").to_owned();
        if let Some(e) = c["lastError"].as_str() {
            return Err(format!("{id}: {e}"));
        }
        let until = c["notAfter"]
            .as_str()
            .and_then(super::clock::parse_rfc3339)
            .ok_or(format!("{id}: no certificate"))?;
        if until - now < EXPIRY_MARGIN_SECS {
            return Err(format!(
                "{id}: expires in {}",
                super::clock::span(until - now)
            ));
        }
        if soonest.as_ref().is_none_or(|(t, _)| until < *t) {
            soonest = Some((until, id));
        }
    }
    Ok(match soonest {
        Some((until, id)) => format!(
            "{} valid; the first to expire ({id}) in {}",
            certs.len(),
            super::clock::span(until - now)
        ),
        None => "none issued (no pod served)".into(),
    })
}

/// `linkerd check`-style text: groups, a line per check, hints under failures, and a summary.
pub fn text(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let mut group = "";
    for o in outcomes {
        if o.group != group {
            if !group.is_empty() {
                out.push('\n');
            }
            group = o.group;
            out.push_str(&format!("{group}\n{}\n", "-".repeat(group.len())));
        }
        let mark = if o.ok { "√" } else { "×" };
        out.push_str(&format!("{mark} {}: {}\n", o.check, o.detail));
        if !o.ok && !o.hint.is_empty() {
            out.push_str(&format!("    hint: {}\n", o.hint));
        }
    }
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    out.push_str(&format!(
        "\n{} checks: {} passed, {failed} failed\n",
        outcomes.len(),
        outcomes.len() - failed
    ));
    out
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::proxy_status::TypeRow;

    fn type_row(short: &str, status: &str, nack: Option<&str>) -> TypeRow {
        TypeRow {
            type_url: format!("type.googleapis.com/istio.x.{short}"),
            short: short.into(),
            status: status.into(),
            sent_nonce: String::new(),
            sent_version: String::new(),
            sent_at_ms: 0,
            acked_nonce: String::new(),
            acked_at_ms: 0,
            resources: 0,
            nacks: u64::from(nack.is_some()),
            last_nack: nack.map(str::to_owned),
            last_nack_at_ms: 0,
        }
    }

    fn client(node: &str, types: Vec<TypeRow>) -> ClientRow {
        ClientRow {
            name: format!("ztunnel.{node}"),
            kind: "ztunnel".into(),
            ip: String::new(),
            node: node.into(),
            node_id: String::new(),
            connected_at_ms: 0,
            types,
            nacks: 0,
            last_nack: None,
        }
    }

    fn healthy() -> Seen {
        let dump = serde_json::json!({
            "workloads": [
                {"name": "client", "namespace": "apps", "protocol": "HBONE", "node": "node-1", "workloadType": "pod"},
                {"name": "legacy", "namespace": "legacy", "protocol": "TCP", "node": "node-1", "workloadType": "pod"},
                {"name": "server", "namespace": "apps", "protocol": "HBONE", "node": "node-2", "workloadType": "pod"}
            ],
            "pods": [{"workload": "apps/client"}],
            "certificates": [{"identity": "spiffe://cluster.local/ns/apps/sa/client",
                              "notAfter": "2026-12-01T10:00:00Z", "lastError": null}]
        });
        Seen {
            control_ready: Ok(()),
            clients: vec![client(
                "node-1",
                vec![
                    type_row("Address", SYNCED, None),
                    type_row("Authorization", SYNCED, None),
                ],
            )],
            nodes: vec![NodeSeen {
                name: "node-1".into(),
                dump: Some(dump),
                ztunnel_ready: true,
                agent_alive: true,
                agent_socket: true,
                rules: [("apps/client".to_owned(), true)].into(),
                log_dir: "/run/meshctl/logs".into(),
            }],
            // 2026-11-30T10:00:00Z
            now: 1_796_032_800,
        }
    }

    #[test]
    fn a_healthy_mesh_passes_every_check() {
        let outcomes = judge(&healthy());
        assert!(outcomes.iter().all(|o| o.ok), "{}", text(&outcomes));
        let t = text(&outcomes);
        assert!(
            t.contains("√ node-1: ztunnel has the latest config: Address and Authorization synced"),
            "{t}"
        );
        assert!(t.contains("√ node-1: workload certificates are valid: 1 valid; the first to expire (spiffe://cluster.local/ns/apps/sa/client) in 1d0h"), "{t}");
        assert!(t.ends_with("7 checks: 7 passed, 0 failed\n"), "{t}");
    }

    #[test]
    fn each_failure_says_what_and_where_to_look() {
        let mut seen = healthy();
        seen.control_ready = Err("connection refused".into());
        seen.clients[0].types[1] = type_row("Authorization", "NACKED", Some("bad policy apps/x"));
        seen.nodes[0].agent_socket = false;
        seen.nodes[0].rules.insert("apps/client".into(), false);
        seen.now += 86_400 - 600; // ten minutes before the certificate expires
        let outcomes = judge(&seen);
        let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ok).collect();
        assert_eq!(failed.len(), 5, "{}", text(&outcomes));
        let t = text(&outcomes);
        for want in [
            "× istiod-lite is ready: connection refused\n    hint: see /run/meshctl/logs/istiod-lite.log",
            "× node-1: ztunnel has the latest config: refused a config: bad policy apps/x",
            "× node-1: workload certificates are valid: spiffe://cluster.local/ns/apps/sa/client: expires in 10m0s",
            "× node-1: node agent is serving: running, but its CNI socket is missing",
            "× node-1: every enrolled pod is served and captured: no capture rules in: apps/client",
        ] {
            assert!(t.contains(want), "missing {want:?} in:\n{t}");
        }
    }

    #[test]
    fn a_pod_the_control_plane_enrols_but_the_ztunnel_does_not_serve_fails() {
        let mut seen = healthy();
        seen.nodes[0].dump.as_mut().unwrap()["pods"] = serde_json::json!([]);
        seen.clients.clear();
        let t = text(&judge(&seen));
        assert!(t.contains("× node-1: every enrolled pod is served and captured: not served by this node's ztunnel: apps/client"), "{t}");
        assert!(
            t.contains("× node-1: ztunnel has the latest config: not connected to istiod-lite"),
            "{t}"
        );
    }
}

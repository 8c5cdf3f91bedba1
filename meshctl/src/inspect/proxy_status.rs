//! `meshctl proxy-status`: istiod-lite's xDS clients (ztunnels, node agents, waypoints) and,
//! per type, whether the last response sent was acknowledged, from `/debug/clients`. Pure
//! shaping here; fetching is in [`super`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::clock;
use super::table;

/// The type URLs istiod-lite serves, in column order.
pub const TYPES: [&str; 3] = [
    "type.googleapis.com/istio.workload.Address",
    "type.googleapis.com/istio.security.Authorization",
    "type.googleapis.com/mesh.waypoint.v1.WaypointConfig",
];

/// One client of `/debug/clients` (istiod-lite's `ClientStatus`); fields it lacks (an older
/// istiod-lite) are empty.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientIn {
    pub node_id: String,
    pub connected_at_ms: u64,
    pub acked: BTreeMap<String, String>,
    pub acked_at_ms: BTreeMap<String, u64>,
    pub sent: BTreeMap<String, SentIn>,
    pub nacked: BTreeMap<String, NackedIn>,
    pub resources: BTreeMap<String, u64>,
    pub nacks: u64,
    pub last_nack: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SentIn {
    pub nonce: String,
    pub version: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NackedIn {
    pub count: u64,
    pub nonce: String,
    pub at_ms: u64,
    pub message: String,
}

/// Where a client runs, as far as the local cluster can tell.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Node name → its address.
    pub nodes: Vec<(String, IpAddr)>,
    /// Pod address → (pod `namespace/name`, node name).
    pub pods: Vec<(IpAddr, String, String)>,
}

/// One row of `proxy-status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientRow {
    /// `name.namespace` of the node id (or the whole id when it has no such part).
    pub name: String,
    /// `ztunnel`, `node-agent`, `waypoint`, or the node id's first field.
    pub kind: String,
    /// The address the node id names (empty when it names none).
    pub ip: String,
    /// The local cluster's node it runs on, when known.
    pub node: String,
    pub node_id: String,
    pub connected_at_ms: u64,
    pub types: Vec<TypeRow>,
    /// NACKs of every type, and the last one's message.
    pub nacks: u64,
    pub last_nack: Option<String>,
}

/// One type of one client.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TypeRow {
    pub type_url: String,
    /// The type's short name (`Address`, `Authorization`, `WaypointConfig`).
    #[serde(rename = "type")]
    pub short: String,
    /// `SYNCED` (the last response sent is acknowledged), `STALE` (sent, not acknowledged
    /// yet), `NACKED` (the last response sent was rejected), `NOT SENT` (never sent).
    pub status: String,
    pub sent_nonce: String,
    pub sent_version: String,
    pub sent_at_ms: u64,
    pub acked_nonce: String,
    pub acked_at_ms: u64,
    pub resources: u64,
    pub nacks: u64,
    pub last_nack: Option<String>,
    pub last_nack_at_ms: u64,
}

pub const SYNCED: &str = "SYNCED";
pub const STALE: &str = "STALE";
pub const NACKED: &str = "NACKED";
pub const NOT_SENT: &str = "NOT SENT";

/// `istio.workload.Address` → `Address`.
pub fn short_type(type_url: &str) -> String {
    type_url
        .rsplit(['.', '/'])
        .next()
        .unwrap_or(type_url)
        .to_owned()
}

/// The status of one type: the last response sent compared with the last acknowledged and the
/// last rejected.
fn status(
    sent: Option<&SentIn>,
    acked: Option<&String>,
    nacked: Option<&NackedIn>,
) -> &'static str {
    let Some(sent) = sent.filter(|s| !s.nonce.is_empty()) else {
        return NOT_SENT;
    };
    if acked.is_some_and(|a| *a == sent.nonce) {
        SYNCED
    } else if nacked.is_some_and(|n| n.nonce == sent.nonce) {
        NACKED
    } else {
        STALE
    }
}

/// Istio's node id `type~ip~name.namespace~domain`: (kind, ip, name).
fn split_node_id(id: &str) -> (String, String, String) {
    let parts: Vec<&str> = id.split('~').collect();
    if parts.len() < 3 {
        return (String::new(), String::new(), id.to_owned());
    }
    let mut kind = parts[0].to_owned();
    let name = parts[2].to_owned();
    if kind == "ztunnel" && name.starts_with("node-agent.") {
        kind = "node-agent".into();
    }
    let ip = if parts[1] == "0.0.0.0" {
        String::new()
    } else {
        parts[1].to_owned()
    };
    (kind, ip, name)
}

/// Which node of the local cluster a client runs on: a ztunnel by its node's address, a
/// node agent by the node named in its id, a waypoint by its pod's address.
fn place(kind: &str, ip: &str, name: &str, placement: &Placement) -> String {
    if kind == "node-agent" {
        let node = name.trim_start_matches("node-agent.");
        if placement.nodes.iter().any(|(n, _)| n == node) || placement.nodes.is_empty() {
            return node.to_owned();
        }
    }
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return String::new();
    };
    if let Some((n, _)) = placement.nodes.iter().find(|(_, a)| *a == ip) {
        return n.clone();
    }
    placement
        .pods
        .iter()
        .find(|(a, _, _)| *a == ip)
        .map(|(_, _, node)| node.clone())
        .unwrap_or_default()
}

/// Rows from `/debug/clients`, sorted by kind, node and name. Every served type gets a
/// [`TypeRow`], plus any other type a client shows.
pub fn rows(clients: &[ClientIn], placement: &Placement) -> Vec<ClientRow> {
    let mut out: Vec<ClientRow> = clients
        .iter()
        .map(|c| {
            let (kind, ip, name) = split_node_id(&c.node_id);
            let node = place(&kind, &ip, &name, placement);
            let mut types: Vec<String> = TYPES.iter().map(|t| t.to_string()).collect();
            let extra: BTreeSet<&String> = c
                .sent
                .keys()
                .chain(c.acked.keys())
                .filter(|t| !TYPES.contains(&t.as_str()))
                .collect();
            types.extend(extra.into_iter().cloned());
            let types = types
                .into_iter()
                .map(|t| {
                    let sent = c.sent.get(&t);
                    let nacked = c.nacked.get(&t);
                    TypeRow {
                        short: short_type(&t),
                        status: status(sent, c.acked.get(&t), nacked).to_owned(),
                        sent_nonce: sent.map(|s| s.nonce.clone()).unwrap_or_default(),
                        sent_version: sent.map(|s| s.version.clone()).unwrap_or_default(),
                        sent_at_ms: sent.map_or(0, |s| s.at_ms),
                        acked_nonce: c.acked.get(&t).cloned().unwrap_or_default(),
                        acked_at_ms: c.acked_at_ms.get(&t).copied().unwrap_or_default(),
                        resources: c.resources.get(&t).copied().unwrap_or_default(),
                        nacks: nacked.map_or(0, |n| n.count),
                        last_nack: nacked.map(|n| n.message.clone()),
                        last_nack_at_ms: nacked.map_or(0, |n| n.at_ms),
                        type_url: t,
                    }
                })
                .collect();
            ClientRow {
                name,
                kind,
                ip,
                node,
                node_id: c.node_id.clone(),
                connected_at_ms: c.connected_at_ms,
                types,
                nacks: c.nacks,
                last_nack: c.last_nack.clone(),
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.kind, &a.node, &a.name, &a.ip).cmp(&(&b.kind, &b.node, &b.name, &b.ip)));
    out
}

/// One type's cell: `SYNCED 3-7 v12`, `STALE 3-8 v13 (acked 3-7)`, `NACKED 3-8 v13 (acked
/// 3-7)`, `NOT SENT`.
fn cell(t: &TypeRow) -> String {
    match t.status.as_str() {
        NOT_SENT => NOT_SENT.to_owned(),
        SYNCED => format!("{SYNCED} {} v{}", t.sent_nonce, t.sent_version),
        other => {
            let acked = if t.acked_nonce.is_empty() {
                "none".to_owned()
            } else {
                t.acked_nonce.clone()
            };
            format!(
                "{other} {} v{} (acked {acked})",
                t.sent_nonce, t.sent_version
            )
        }
    }
}

/// A client's latest NACK: `Type: message` from the per-type record, else the client-wide one.
fn last_nack(r: &ClientRow) -> String {
    let latest = r
        .types
        .iter()
        .filter(|t| t.nacks > 0)
        .max_by_key(|t| t.last_nack_at_ms);
    match (latest, &r.last_nack) {
        (Some(t), _) => format!(
            "{}: {}",
            t.short,
            t.last_nack.as_deref().unwrap_or_default()
        ),
        (None, Some(m)) => m.clone(),
        (None, None) => "-".into(),
    }
}

/// The table: one row per client, one column per type (the union over clients).
pub fn table(rows: &[ClientRow], now_ms: u64) -> String {
    let mut types: Vec<String> = Vec::new();
    for r in rows {
        for t in &r.types {
            if !types.contains(&t.type_url) {
                types.push(t.type_url.clone());
            }
        }
    }
    let shorts: Vec<String> = types.iter().map(|t| short_type(t).to_uppercase()).collect();
    let mut headers: Vec<&str> = vec!["NAME", "KIND", "NODE", "IP", "CONNECTED"];
    headers.extend(shorts.iter().map(String::as_str));
    headers.extend(["NACKS", "LAST NACK"]);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let dash = |s: &str| {
                if s.is_empty() {
                    "-".to_owned()
                } else {
                    s.to_owned()
                }
            };
            let mut row = vec![
                dash(&r.name),
                dash(&r.kind),
                dash(&r.node),
                dash(&r.ip),
                clock::age_ms(r.connected_at_ms, now_ms),
            ];
            for t in &types {
                row.push(
                    r.types
                        .iter()
                        .find(|x| x.type_url == *t)
                        .map_or_else(|| NOT_SENT.to_owned(), cell),
                );
            }
            row.push(r.nacks.to_string());
            row.push(table::cut(&last_nack(r).replace('\n', " "), 60));
            row
        })
        .collect();
    table::render(&headers, &cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/debug/clients` of the L4 suite's cluster, as istiod-lite serves it: two node ztunnels
    /// (one with an update in flight), two node agents, a waypoint that rejected its
    /// configuration once, and a client that has been sent nothing yet.
    const CLIENTS: &str = include_str!("testdata/debug_clients.json");

    fn placement() -> Placement {
        Placement {
            nodes: vec![
                ("node-1".into(), "172.30.0.11".parse().unwrap()),
                ("node-2".into(), "172.30.0.12".parse().unwrap()),
            ],
            pods: vec![(
                "10.244.2.7".parse().unwrap(),
                "apps/waypoint-abc".into(),
                "node-2".into(),
            )],
        }
    }

    fn parsed() -> Vec<ClientRow> {
        let clients: Vec<ClientIn> = serde_json::from_str(CLIENTS).unwrap();
        rows(&clients, &placement())
    }

    #[test]
    fn clients_are_placed_and_each_type_gets_a_status() {
        let rows = parsed();
        let summary: Vec<(&str, &str, &str, Vec<&str>)> = rows
            .iter()
            .map(|r| {
                (
                    r.kind.as_str(),
                    r.node.as_str(),
                    r.name.as_str(),
                    r.types.iter().map(|t| t.status.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("", "", "", vec![NOT_SENT, NOT_SENT, NOT_SENT]),
                (
                    "node-agent",
                    "node-1",
                    "node-agent.node-1",
                    vec![SYNCED, NOT_SENT, NOT_SENT]
                ),
                (
                    "node-agent",
                    "node-2",
                    "node-agent.node-2",
                    vec![SYNCED, NOT_SENT, NOT_SENT]
                ),
                (
                    "waypoint",
                    "node-2",
                    "waypoint-abc.apps",
                    vec![NOT_SENT, NOT_SENT, NACKED]
                ),
                (
                    "ztunnel",
                    "node-1",
                    "ztunnel.istio-system",
                    vec![SYNCED, SYNCED, NOT_SENT]
                ),
                (
                    "ztunnel",
                    "node-2",
                    "ztunnel.istio-system",
                    vec![SYNCED, STALE, NOT_SENT]
                ),
            ]
        );
        let zt2 = &rows[5];
        let authz = &zt2.types[1];
        assert_eq!(
            (
                authz.sent_nonce.as_str(),
                authz.acked_nonce.as_str(),
                authz.sent_version.as_str()
            ),
            ("1-5", "1-4", "7")
        );
        assert_eq!(authz.resources, 1);
        let waypoint = &rows[3].types[2];
        assert_eq!(waypoint.nacks, 1);
        assert_eq!(
            waypoint.last_nack.as_deref(),
            Some("route shop/r: no backend")
        );
        assert_eq!(rows[3].nacks, 1);
    }

    #[test]
    fn the_table_shows_sent_against_acked() {
        let text = table(&parsed(), 1_750_000_060_000);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("NAME")
                && lines[0].contains("ADDRESS")
                && lines[0].contains("AUTHORIZATION")
                && lines[0].contains("WAYPOINTCONFIG")
                && lines[0].ends_with("LAST NACK"),
            "{text}"
        );
        assert_eq!(lines.len(), 7, "{text}");
        let zt2 = lines
            .iter()
            .find(|l| l.contains("172.30.0.12"))
            .expect("node-2's ztunnel");
        assert!(zt2.contains("SYNCED 1-3 v7"), "{zt2}");
        assert!(zt2.contains("STALE 1-5 v7 (acked 1-4)"), "{zt2}");
        assert!(zt2.contains("1m0s"), "connected a minute ago: {zt2}");
        let waypoint = lines.iter().find(|l| l.contains("waypoint")).unwrap();
        assert!(waypoint.contains("NACKED 4-2 v7 (acked 4-1)"), "{waypoint}");
        assert!(
            waypoint.ends_with("WaypointConfig: route shop/r: no backend"),
            "{waypoint}"
        );
        // Aligned: every type column starts at the same offset on every line.
        let col = lines[0].find("AUTHORIZATION").unwrap();
        for l in &lines[1..] {
            assert_eq!(l.as_bytes().get(col - 1), Some(&b' '), "{text}");
        }
    }

    #[test]
    fn node_ids_are_split_as_istio_writes_them() {
        assert_eq!(
            split_node_id(
                "ztunnel~172.30.0.11~ztunnel.istio-system~istio-system.svc.cluster.local"
            ),
            (
                "ztunnel".into(),
                "172.30.0.11".into(),
                "ztunnel.istio-system".into()
            )
        );
        assert_eq!(
            split_node_id("ztunnel~0.0.0.0~node-agent.node-1~"),
            ("node-agent".into(), "".into(), "node-agent.node-1".into())
        );
        assert_eq!(split_node_id("odd"), ("".into(), "".into(), "odd".into()));
        assert_eq!(short_type(TYPES[2]), "WaypointConfig");
    }

    /// A real `/debug/clients` of istiod-lite with two dedicated-mode ztunnels attached.
    #[test]
    fn a_real_answer_shows_both_ztunnels_synced() {
        let real = include_str!("testdata/debug_clients_dedicated.json");
        let clients: Vec<ClientIn> = serde_json::from_str(real).unwrap();
        let rows = rows(&clients, &Placement::default());
        assert_eq!(rows.len(), 2);
        for r in &rows {
            assert_eq!(r.kind, "ztunnel");
            let status: Vec<&str> = r.types.iter().map(|t| t.status.as_str()).collect();
            assert_eq!(status, vec![SYNCED, SYNCED, NOT_SENT], "{r:?}");
            assert_eq!(r.types[0].sent_version, "1");
        }
        assert_eq!(
            (rows[0].name.as_str(), rows[0].ip.as_str()),
            ("client.apps", "127.0.77.2")
        );
    }

    /// An istiod-lite without the `sent` fields: nothing is SYNCED, everything NOT SENT.
    #[test]
    fn an_older_dump_parses() {
        let old = r#"[{"nodeId":"ztunnel~1.2.3.4~z.ns~","acked":{"type.googleapis.com/istio.workload.Address":"0-1"},"resources":{},"nacks":0,"lastNack":null}]"#;
        let clients: Vec<ClientIn> = serde_json::from_str(old).unwrap();
        let rows = rows(&clients, &Placement::default());
        assert_eq!(rows[0].types[0].status, NOT_SENT);
        assert_eq!(rows[0].types[0].acked_nonce, "0-1");
    }
}

//! `meshctl status`: nodes, pods, enrolment and certificates, as the running ztunnels see them.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use super::{netns, Cluster, FABRIC};

fn process_state(pid: u32) -> &'static str {
    if netns::alive(pid) {
        "running"
    } else {
        "stopped"
    }
}

/// The status report as text.
pub fn print_status(cluster: &Cluster) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "istiod-lite  {}  {}  (logs: {})",
        super::CONTROL_IP,
        process_state(cluster.control.pid),
        cluster.dir.join("logs").display()
    );
    // uid → (pod, identity) served, and identity → certificate expiry, per node.
    let mut served: BTreeMap<String, String> = BTreeMap::new();
    let mut certs: BTreeMap<String, String> = BTreeMap::new();
    let _ = writeln!(
        out,
        "\n{:<10} {:<14} {:<9} {:<9} PODS IN MESH",
        "NODE", "ADDRESS", "ZTUNNEL", "AGENT"
    );
    for node in &cluster.nodes {
        let dump = cluster.ztunnel_dump(&node.name).ok();
        let pods = dump
            .as_ref()
            .and_then(|d| d.get("pods"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for p in &pods {
            if let (Some(w), Some(id)) = (p["workload"].as_str(), p["identity"].as_str()) {
                served.insert(w.to_owned(), id.to_owned());
            }
        }
        for c in dump
            .as_ref()
            .and_then(|d| d.get("certificates"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(id), Some(until)) = (c["identity"].as_str(), c["notAfter"].as_str()) {
                certs.insert(id.to_owned(), until.to_owned());
            }
        }
        let zt = if dump.is_some() {
            "ready"
        } else {
            process_state(node.ztunnel.pid)
        };
        let _ = writeln!(
            out,
            "{:<10} {:<14} {:<9} {:<9} {}",
            node.name,
            node.ip,
            zt,
            process_state(node.agent.pid),
            pods.len()
        );
    }
    let _ = writeln!(
        out,
        "\n{:<24} {:<8} {:<13} {:<8} {:<44} CERTIFICATE UNTIL",
        "POD", "NODE", "IP", "MESH", "IDENTITY"
    );
    for pod in &cluster.pods {
        let key = pod.key();
        let (mesh, identity) = match served.get(&key) {
            Some(id) => ("HBONE", id.as_str()),
            None => ("-", ""),
        };
        let running = pod.processes.iter().all(|p| netns::alive(p.pid));
        let _ = writeln!(
            out,
            "{:<24} {:<8} {:<13} {:<8} {:<44} {}{}",
            key,
            pod.node,
            pod.ip,
            mesh,
            identity,
            certs.get(identity).map_or("", String::as_str),
            if running {
                ""
            } else {
                "  (a container exited)"
            }
        );
    }
    let waypoints: Vec<_> = cluster
        .pods
        .iter()
        .filter(|p| !cluster.is_ingress(p))
        .filter_map(|p| Some((p, p.waypoint()?)))
        .collect();
    if !waypoints.is_empty() {
        let _ = writeln!(out, "\n{:<24} {:<24} {:<13} READY", "WAYPOINT", "POD", "IP");
        for (pod, name) in waypoints {
            let ready = netns::http_get(
                &pod.netns,
                std::net::SocketAddr::from((pod.ip, 15021)),
                "/healthz/ready",
            )
            .is_ok_and(|(status, _)| status == 200);
            let _ = writeln!(
                out,
                "{:<24} {:<24} {:<13} {}",
                format!("{}/{name}", pod.namespace),
                pod.key(),
                pod.ip,
                if ready { "yes" } else { "no" }
            );
        }
    }
    if !cluster.ingress.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<24} {:<16} {:<13} {:<6} LISTENERS (from this machine)",
            "INGRESS GATEWAY", "HOST ADDRESS", "POD IP", "READY"
        );
        for g in &cluster.ingress {
            let ready = netns::http_get(
                FABRIC,
                std::net::SocketAddr::from((g.target, 15021)),
                "/healthz/ready",
            )
            .is_ok_and(|(status, _)| status == 200);
            let _ = writeln!(
                out,
                "{:<24} {:<16} {:<13} {:<6} {}",
                g.gateway,
                g.address,
                g.target,
                if ready { "yes" } else { "no" },
                g.urls().join("  ")
            );
        }
    }
    out
}

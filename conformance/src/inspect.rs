//! The L4 suite's cluster seen through the CLI: `meshctl proxy-status` and `meshctl
//! ztunnel-config`, run as the built binary with the suite's state directory, as a user would.
//! JSON output is parsed and compared with the cluster; the tables are spot-checked.

use std::process::Command;

use serde_json::Value;

use crate::l4::Suite;
use crate::support::{eventually, principal, CONVERGE};

/// A DENY no connection of the suite matches (source namespace `nowhere`), selecting the
/// servers: a policy to find in the dumps without changing any traffic.
const POLICY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: inspect-deny-nowhere, namespace: apps}\nspec:\n  selector: {matchLabels: {app: server}}\n  action: DENY\n  rules:\n  - from: [{source: {namespaces: [nowhere]}}]\n";
const POLICY_KEY: (&str, &str) = ("apps", "inspect-deny-nowhere");
/// The pods of the mesh's namespace, each (pod, service account).
const PODS: [(&str, &str); 4] = [
    ("client", "client"),
    ("other", "other"),
    ("server-1", "server"),
    ("server-2", "server"),
];

/// `meshctl ARGS` with the suite's state directory: stdout, or an error carrying stderr.
fn meshctl(s: &Suite, args: &[&str]) -> Result<String, String> {
    let bin = s.cluster.bin_dir.join("meshctl");
    let out = Command::new(&bin)
        .args(args)
        .env("MESHCTL_STATE_DIR", &s.cluster.dir)
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "meshctl {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `meshctl ARGS -o json`, parsed as an array of rows.
fn rows(s: &Suite, args: &[&str]) -> Result<Vec<Value>, String> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let text = meshctl(s, &all)?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("meshctl {}: {e}: {text}", all.join(" ")))?;
    v.as_array()
        .cloned()
        .ok_or_else(|| format!("meshctl {}: not an array: {text}", all.join(" ")))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// Removes the case's policy when dropped.
struct Applied<'a>(&'a meshctl::cluster::Cluster);

impl Drop for Applied<'_> {
    fn drop(&mut self) {
        let _ = self.0.delete("inspect");
    }
}

pub fn proxy_status_and_ztunnel_config(s: &mut Suite) -> Result<(), String> {
    let help = meshctl(s, &["--help"])?;
    for sub in ["proxy-status", "ztunnel-config"] {
        if !help.contains(sub) {
            return Err(format!("meshctl --help does not mention {sub}:\n{help}"));
        }
    }
    let help = meshctl(s, &["ztunnel-config", "--help"])?;
    for what in [
        "workloads",
        "services",
        "policies",
        "certificates",
        "--node",
        "--ztunnel",
    ] {
        if !help.contains(what) {
            return Err(format!(
                "ztunnel-config --help does not mention {what}:\n{help}"
            ));
        }
    }
    let help = meshctl(s, &["proxy-status", "--help"])?;
    if !help.contains("--istiod") || !help.contains("yaml") {
        return Err(format!("proxy-status --help: {help}"));
    }

    s.cluster.apply("inspect", POLICY)?;
    let _applied = Applied(&s.cluster);
    proxy_status(s)?;
    workloads(s)?;
    services(s)?;
    eventually(CONVERGE, || policies(s))?;
    certificates(s)
}

/// Every node's ztunnel is a client, with both of its types SYNCED (after the policy change
/// too: it was acknowledged).
fn proxy_status(s: &Suite) -> Result<(), String> {
    eventually(CONVERGE, || {
        let rows = rows(s, &["proxy-status"])?;
        for node in &s.cluster.nodes {
            let zt: Vec<&Value> = rows
                .iter()
                .filter(|r| str_of(r, "kind") == "ztunnel" && str_of(r, "node") == node.name)
                .collect();
            if zt.is_empty() {
                return Err(format!(
                    "no ztunnel of {} in proxy-status: {rows:?}",
                    node.name
                ));
            }
            for r in zt {
                for t in r["types"].as_array().into_iter().flatten() {
                    let short = str_of(t, "type");
                    if ["Address", "Authorization"].contains(&short)
                        && str_of(t, "status") != "SYNCED"
                    {
                        return Err(format!("{}'s ztunnel: {short} is {t}", node.name));
                    }
                }
            }
        }
        Ok(())
    })?;
    let table = meshctl(s, &["proxy-status"])?;
    let header = table.lines().next().unwrap_or_default();
    for col in ["NAME", "KIND", "NODE", "ADDRESS", "AUTHORIZATION", "NACKS"] {
        if !header.contains(col) {
            return Err(format!("proxy-status table has no {col} column:\n{table}"));
        }
    }
    let synced = table
        .lines()
        .filter(|l| l.contains("ztunnel") && l.matches("SYNCED").count() >= 2)
        .count();
    if synced < s.cluster.nodes.len() {
        return Err(format!("proxy-status table:\n{table}"));
    }
    let yaml = meshctl(s, &["proxy-status", "-o", "yaml"])?;
    if !yaml.contains("status: SYNCED") {
        return Err(format!("proxy-status -o yaml:\n{yaml}"));
    }
    Ok(())
}

/// Each node's ztunnel lists the mesh's pods: address, node, HBONE.
fn workloads(s: &Suite) -> Result<(), String> {
    let rows = rows(s, &["ztunnel-config", "workloads"])?;
    for node in &s.cluster.nodes {
        for (pod, _) in PODS {
            let p = s.cluster.pod(pod)?;
            let found = rows.iter().find(|r| {
                str_of(r, "ztunnel") == node.name
                    && str_of(r, "namespace") == p.namespace
                    && str_of(r, "name") == p.name
            });
            let Some(w) = found else {
                return Err(format!("{}'s ztunnel does not list {}", node.name, p.key()));
            };
            let ip = p.ip.to_string();
            let has_ip = w["addresses"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(&ip)));
            if !has_ip || str_of(w, "node") != p.node || str_of(w, "protocol") != "HBONE" {
                return Err(format!("{}'s ztunnel shows {}: {w}", node.name, p.key()));
            }
        }
    }
    // One node only: no ZTUNNEL column; every node: one.
    let one = meshctl(s, &["ztunnel-config", "workloads", "--node", "node-1"])?;
    let all = meshctl(s, &["ztunnel-config", "workloads"])?;
    let line = one
        .lines()
        .find(|l| l.contains("server-1"))
        .ok_or_else(|| format!("no server-1 in:\n{one}"))?;
    if !one.starts_with("NAMESPACE") || !line.contains("HBONE") || !all.starts_with("ZTUNNEL") {
        return Err(format!("workloads tables:\n{one}\n{all}"));
    }
    Ok(())
}

/// The suite's Service: its VIP, two endpoints, both healthy.
fn services(s: &Suite) -> Result<(), String> {
    let vip = s
        .cluster
        .service_ip("apps", "server")
        .ok_or("no VIP for apps/server")?
        .to_string();
    let rows = rows(s, &["ztunnel-config", "services"])?;
    for node in &s.cluster.nodes {
        let svc = rows
            .iter()
            .find(|r| {
                str_of(r, "ztunnel") == node.name
                    && str_of(r, "namespace") == "apps"
                    && str_of(r, "name") == "server"
            })
            .ok_or_else(|| format!("{}'s ztunnel does not list apps/server", node.name))?;
        let has_vip = svc["vips"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(&vip)));
        if !has_vip || svc["endpoints"] != 2 || svc["healthyEndpoints"] != 2 {
            return Err(format!("{}'s ztunnel shows apps/server: {svc}", node.name));
        }
    }
    let table = meshctl(s, &["ztunnel-config", "services", "--node", "node-2"])?;
    if !table.lines().any(|l| l.contains(&vip) && l.contains("2/2")) {
        return Err(format!("services table:\n{table}"));
    }
    Ok(())
}

/// The case's policy, on every node, applying to the two servers and nothing else.
fn policies(s: &Suite) -> Result<(), String> {
    let rows = rows(s, &["ztunnel-config", "policies"])?;
    for node in &s.cluster.nodes {
        let p = rows
            .iter()
            .find(|r| {
                str_of(r, "ztunnel") == node.name
                    && (str_of(r, "namespace"), str_of(r, "name")) == POLICY_KEY
            })
            .ok_or_else(|| format!("{}'s ztunnel does not list the policy", node.name))?;
        let applies: Vec<&str> = p["appliesTo"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if str_of(p, "action") != "Deny"
            || str_of(p, "scope") != "WorkloadSelector"
            || applies != ["apps/server-1", "apps/server-2"]
        {
            return Err(format!("{}'s ztunnel shows the policy: {p}", node.name));
        }
    }
    let table = meshctl(s, &["ztunnel-config", "policies"])?;
    if !table
        .lines()
        .any(|l| l.contains("inspect-deny-nowhere") && l.contains("apps/server-1"))
    {
        return Err(format!("policies table:\n{table}"));
    }
    Ok(())
}

/// Each node's ztunnel holds a valid certificate for the identity of each mesh pod it runs.
fn certificates(s: &Suite) -> Result<(), String> {
    let rows = rows(s, &["ztunnel-config", "certificates"])?;
    for (pod, sa) in PODS {
        let p = s.cluster.pod(pod)?;
        let identity = principal("apps", sa);
        let cert = rows
            .iter()
            .find(|r| str_of(r, "ztunnel") == p.node && str_of(r, "identity") == identity)
            .ok_or_else(|| format!("{}'s ztunnel has no certificate for {identity}", p.node))?;
        let left = cert["expiresInSeconds"].as_i64().unwrap_or_default();
        if str_of(cert, "state") != "VALID" || left <= 0 {
            return Err(format!("{}'s certificate for {identity}: {cert}", p.node));
        }
    }
    let table = meshctl(s, &["ztunnel-config", "certificates", "--node", "node-1"])?;
    if !table
        .lines()
        .any(|l| l.contains(&principal("apps", "client")) && l.contains("VALID"))
    {
        return Err(format!("certificates table:\n{table}"));
    }
    Ok(())
}

/// `meshctl check`: every check passes on the healthy cluster; with node-2's agent stopped, the
/// agent check fails with a hint and the command exits non-zero; restarted, all pass again.
pub fn check_passes_and_names_a_stopped_agent(s: &mut Suite) -> Result<(), String> {
    let healthy = eventually(CONVERGE, || {
        let text = meshctl(s, &["check"])?;
        if text.contains(", 0 failed") {
            Ok(text)
        } else {
            Err(text)
        }
    })?;
    for want in [
        "√ istiod-lite is ready",
        "√ node-1: ztunnel has the latest config: Address, Authorization and EgressPolicy synced",
        "√ node-2: workload certificates are valid",
        "√ node-1: every enrolled pod is served and captured",
    ] {
        if !healthy.contains(want) {
            return Err(format!("meshctl check: no {want:?} in:\n{healthy}"));
        }
    }
    let agent = s.cluster.node("node-2")?.agent.pid;
    meshctl::cluster::netns::stop(agent, std::time::Duration::from_secs(5));
    let broken = Command::new(s.cluster.bin_dir.join("meshctl"))
        .args(["check", "-o", "json"])
        .env("MESHCTL_STATE_DIR", &s.cluster.dir)
        .output();
    s.cluster.restart_agent("node-2")?;
    let broken = broken.map_err(|e| format!("meshctl check: {e}"))?;
    if broken.status.code() != Some(1) {
        return Err(format!(
            "meshctl check with node-2's agent stopped exited {}",
            broken.status
        ));
    }
    let outcomes: Vec<Value> = serde_json::from_slice(&broken.stdout)
        .map_err(|e| format!("meshctl check -o json: {e}"))?;
    let failed: Vec<&Value> = outcomes.iter().filter(|o| o["ok"] == false).collect();
    let agent_check = failed.iter().any(|o| {
        o["check"] == "node-2: node agent is serving"
            && o["detail"] == "not running"
            && o["hint"]
                .as_str()
                .is_some_and(|h| h.contains("node-2.agent.log"))
    });
    if failed.len() != 1 || !agent_check {
        return Err(format!(
            "with node-2's agent stopped, expected exactly its check to fail, with a hint: {failed:?}"
        ));
    }
    eventually(CONVERGE, || {
        let text = meshctl(s, &["check"])?;
        text.contains(", 0 failed").then_some(()).ok_or(text)
    })
}

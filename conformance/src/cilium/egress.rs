//! L4 cases for Cilium's egress rules (issue 19): the issue's policy applied as written, the
//! refusal made by the *source* pod's ztunnel before any connection leaves the node; `toFQDNs`
//! through ztunnel's DNS proxy; `toEntities` cluster and world; `toCIDRSet` with `except`; and
//! default deny appearing when the first egress policy selects a pod. The database is `db` in
//! namespace `database` (TCP echo on 5432).

use std::net::SocketAddr;
use std::process::Command;

use meshctl::cluster::{Cluster, CONTROL_IP};

use crate::l4::{with_config, Suite};
use crate::support::*;
use crate::Case;

/// The issue's policy as written (the backend is the suite's `app: server`, the frontend its
/// `app: client`): ingress from the frontend on 8080, egress to namespace `database` on 5432.
const BACKEND_POLICY: &str = r#"apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: backend-policy
  namespace: apps
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  egress:
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: database}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;

const FQDN_POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-by-name, namespace: apps}
spec:
  endpointSelector: {matchLabels: {app: server}}
  egress:
  - toFQDNs: [{matchName: db.database.svc.cluster.local}]
    toPorts: [{ports: [{port: "8080"}]}]
"#;

fn entities_policy(entity: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
         metadata: {{name: to-{entity}, namespace: apps}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  \
         egress: [{{toEntities: [{entity}]}}]\n"
    )
}

pub fn cases() -> Vec<Case<Suite>> {
    vec![
        Case {
            name: "Cilium egress as written: backend -> database:5432 only, refused at source",
            run: backend_policy,
        },
        Case {
            name: "Cilium toFQDNs: a Service hostname allowed, another refused",
            run: fqdn,
        },
        Case {
            name: "Cilium toEntities: cluster reaches pods, world the rest",
            run: entities,
        },
        Case {
            name: "Cilium toCIDRSet except, and default deny from the first egress policy",
            run: cidr_except,
        },
    ]
}

/// A TCP exchange from `from` to `to` that must be echoed.
fn echoed(c: &Cluster, from: &str, to: SocketAddr) -> Result<(), String> {
    let payload = format!("{from} to {to}");
    match c.tcp_exchange(from, to, payload.as_bytes()) {
        Ok(back) if back == payload.as_bytes() => Ok(()),
        Ok(back) => Err(format!("{from} -> {to}: echoed {back:?}")),
        Err(e) => Err(format!("{from} -> {to}: {e}")),
    }
}

/// A TCP exchange from `from` to `to` that must not be echoed (refused).
fn not_echoed(c: &Cluster, from: &str, to: SocketAddr) -> Result<(), String> {
    match c.tcp_exchange(from, to, b"should not pass") {
        Ok(back) if back == b"should not pass" => Err(format!("{from} -> {to} was echoed")),
        _ => Ok(()),
    }
}

/// `ztunnel_egress_denied_total` summed on a node's ztunnel.
fn egress_denied(c: &Cluster, node: &str) -> Result<u64, String> {
    let text = c.ztunnel_metrics(node)?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("ztunnel_egress_denied_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

fn service(c: &Cluster, namespace: &str, name: &str, port: u16) -> Result<SocketAddr, String> {
    c.service_ip(namespace, name)
        .map(|ip| SocketAddr::from((ip, port)))
        .ok_or(format!("no Service {namespace}/{name}"))
}

fn backend_policy(s: &mut Suite) -> Result<(), String> {
    // Before: the backend reaches the client (no egress policy selects it).
    get(&s.cluster, "server-1", pod_addr(&s.cluster, "client", 8080))?;
    with_config(s, BACKEND_POLICY, |c| {
        let before = egress_denied(c, "node-1")?;
        // The policy's egress section puts the backend in default deny...
        eventually(CONVERGE, || {
            refused(c, "server-1", pod_addr(c, "client", 8080))?;
            echoed(c, "server-1", pod_addr(c, "db", 5432))
        })?;
        // ...refused by the backend's own ztunnel (node-1), counted there.
        let after = egress_denied(c, "node-1")?;
        if after <= before {
            return Err(format!(
                "node-1's ztunnel_egress_denied_total went {before} -> {after}: not refused at the source"
            ));
        }
        // The database on 5432, by pod and by Service VIP, from both backends.
        echoed(c, "server-1", pod_addr(c, "db", 5432))?;
        echoed(c, "server-2", service(c, "database", "db", 5432)?)?;
        // Another port of the database is not in toPorts.
        not_echoed(c, "server-1", pod_addr(c, "db", 9090))?;
        // The ingress half still applies.
        get(c, "client", pod_addr(c, "server-1", 8080))?;
        refused(c, "other", pod_addr(c, "server-1", 8080))?;
        // Pods the policy does not select are untouched.
        get(c, "client", pod_addr(c, "other", 8080)).map(|_| ())
    })?;
    open_again(s)
}

/// `curl URL` run inside `pod` (its own resolv.conf: names go to ztunnel's DNS proxy): the
/// HTTP status, or `None` when the connection was reset or closed unanswered.
fn curl_in(c: &Cluster, pod: &str, url: &str) -> Result<Option<u16>, String> {
    let out = Command::new(c.bin_dir.join("meshctl"))
        .arg("exec")
        .arg("--state-dir")
        .arg(&c.dir)
        .arg(pod)
        .args([
            "--",
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-m",
            "5",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .map_err(|e| format!("meshctl exec {pod}: {e}"))?;
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).trim().parse().ok()),
        // 52: empty reply; 56: connection reset.
        Some(52 | 56) => Ok(None),
        other => Err(format!(
            "{pod}: curl {url}: exit {other:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

fn fqdn(s: &mut Suite) -> Result<(), String> {
    with_config(s, FQDN_POLICY, |c| {
        // Another Service's name, resolved the same way, is not in toFQDNs (this also waits
        // for the policy to be in force).
        let other = "http://server.apps.svc.cluster.local:80/";
        eventually(CONVERGE, || match curl_in(c, "server-2", other)? {
            None => Ok(()),
            Some(status) => Err(format!("{other}: HTTP {status}, want refused")),
        })?;
        let db = "http://db.database.svc.cluster.local:8080/";
        match curl_in(c, "server-1", db)? {
            Some(200) => {}
            other => return Err(format!("{db}: {other:?}, want HTTP 200")),
        }
        // And the allowed name's port only.
        match curl_in(c, "server-1", "http://db.database.svc.cluster.local:9090/")? {
            None => Ok(()),
            Some(status) => Err(format!("db:9090: HTTP {status}, want refused")),
        }
    })?;
    open_again(s)
}

fn entities(s: &mut Suite) -> Result<(), String> {
    // istiod-lite's HTTP port on the fabric: an address no pod or Service has (world).
    let world = SocketAddr::from((CONTROL_IP, 15014));
    with_config(s, &entities_policy("cluster"), |c| {
        // Both halves together: a refusal alone could be the previous case's policy.
        eventually(CONVERGE, || {
            refused(c, "server-1", world)?;
            get(c, "server-1", pod_addr(c, "client", 8080))
        })?;
        echoed(c, "server-2", pod_addr(c, "db", 5432))
    })?;
    open_again(s)?;
    with_config(s, &entities_policy("world"), |c| {
        eventually(CONVERGE, || {
            refused(c, "server-1", pod_addr(c, "client", 8080))?;
            match c.http_get("server-1", world, "/ready") {
                Ok((status, _)) if status < 500 => Ok(()),
                other => Err(format!("server-1 -> {world} (world): {other:?}")),
            }
        })
    })?;
    open_again(s)
}

fn cidr_except(s: &mut Suite) -> Result<(), String> {
    let server_2 = s.cluster.pod("server-2")?.ip;
    // Nothing selects the servers for egress yet: server-1 reaches server-2.
    get(
        &s.cluster,
        "server-1",
        pod_addr(&s.cluster, "server-2", 8080),
    )?;
    let policy = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
         metadata: {{name: pods-but-one, namespace: apps}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  \
         egress: [{{toCIDRSet: [{{cidr: 10.244.0.0/16, except: [{server_2}/32]}}]}}]\n"
    );
    with_config(s, &policy, |c| {
        eventually(CONVERGE, || {
            refused(c, "server-1", pod_addr(c, "server-2", 8080))?;
            get(c, "server-1", pod_addr(c, "client", 8080))
        })?;
        // Outside the CIDR: default deny.
        refused(c, "server-2", SocketAddr::from((CONTROL_IP, 15014)))
    })?;
    open_again(s)
}

/// After a case: no egress policy selects the servers any more (the next case starts clean).
fn open_again(s: &Suite) -> Result<(), String> {
    let c = &s.cluster;
    eventually(CONVERGE, || {
        get(c, "server-1", pod_addr(c, "client", 8080))?;
        get(c, "server-2", pod_addr(c, "other", 8080))
    })
    .map(|_| ())
}

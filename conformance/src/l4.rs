//! The L4 suite: HBONE between pods with the right identities, Service VIPs, pods outside the
//! mesh under PERMISSIVE and STRICT, AuthorizationPolicy, opting a namespace in and out, a
//! ztunnel restart, and no plaintext of enrolled pods on a node's link.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use meshctl::cluster::{self, Cluster, FABRIC};
use meshctl::demo::answered_by;

use crate::capture::{self, Capture};
use crate::support::*;
use crate::Case;

const BASE: &str = include_str!("../manifests/base.yaml");

pub struct Suite {
    pub cluster: Cluster,
}

fn namespace_optin(ambient: bool) -> String {
    let labels = if ambient {
        "\n  labels: {istio.io/dataplane-mode: ambient}"
    } else {
        ""
    };
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: optin{labels}\n")
}

/// Brings up the suite's cluster (replacing any local cluster) and waits until it serves.
pub fn start(state_dir: PathBuf, bin_dir: PathBuf) -> Result<Suite, String> {
    let cluster = up_from("base", BASE, state_dir, bin_dir)?;
    cluster.apply("ns-optin", &namespace_optin(false))?;
    cluster.wait_listening(8080, Duration::from_secs(15))?;
    cluster.wait_listening(9090, Duration::from_secs(15))?;
    for pod in ["client", "other", "server-1", "server-2"] {
        eventually(CONVERGE, || {
            served(&cluster, pod)?
                .then_some(())
                .ok_or(format!("{pod} not served"))
        })?;
    }
    Ok(Suite { cluster })
}

pub fn cases() -> Vec<Case<Suite>> {
    vec![
        Case {
            name: "pod to pod on one node over HBONE, both identities",
            run: same_node,
        },
        Case {
            name: "pod to pod across nodes over HBONE, both identities",
            run: cross_node,
        },
        Case {
            name: "the application sees the calling pod's own address",
            run: client_address,
        },
        Case {
            name: "pod to Service VIP, balanced over its endpoints",
            run: service_vip,
        },
        Case {
            name: "pod resolves a Service name through ztunnel's DNS proxy",
            run: dns,
        },
        Case {
            name: "pod outside the mesh calls in: allowed under PERMISSIVE",
            run: permissive,
        },
        Case {
            name: "pod outside the mesh calls in: refused under STRICT",
            run: strict,
        },
        Case {
            name: "pod in the mesh calls a pod outside: plain TCP",
            run: call_out,
        },
        Case {
            name: "AuthorizationPolicy ALLOW by principal",
            run: allow_principal,
        },
        Case {
            name: "AuthorizationPolicy DENY by principal",
            run: deny_principal,
        },
        Case {
            name: "AuthorizationPolicy ALLOW by namespace",
            run: allow_namespace,
        },
        Case {
            name: "AuthorizationPolicy ALLOW by port",
            run: allow_port,
        },
        Case {
            name: "AuthorizationPolicy DENY by ipBlock",
            run: deny_ip_block,
        },
        Case {
            name: "Linkerd Server + MeshTLSAuthentication + AuthorizationPolicy",
            run: linkerd_policy,
        },
        Case {
            name: "policy applied while connections run: denied closed, allowed kept",
            run: policy_churn,
        },
        Case {
            name: "namespace opt-in and opt-out, long-lived connection stays up",
            run: opt_in_out,
        },
        Case {
            name: "no plaintext of enrolled pods on the node's link",
            run: no_plaintext,
        },
        Case {
            name: "ztunnel restart on a node: new connections work, others unharmed",
            run: restart,
        },
        Case {
            name: "node agent restart: pods keep capture and their connections",
            run: agent_restart,
        },
        Case {
            name: "meshctl proxy-status and ztunnel-config show the cluster",
            run: crate::inspect::proxy_status_and_ztunnel_config,
        },
        Case {
            name: "meshctl check: healthy, then names a stopped node agent",
            run: crate::inspect::check_passes_and_names_a_stopped_agent,
        },
        Case {
            name: "meshctl authz explain agrees with the data path",
            run: crate::observe::authz_explain_agrees_with_the_data_path,
        },
        Case {
            name: "meshctl observe: who talked to whom, and the policy that denied",
            run: crate::observe::flows_show_who_talked_and_why_a_call_was_denied,
        },
    ]
    .into_iter()
    .chain(crate::cilium::cases()) // CiliumNetworkPolicy (issue 19)
    .collect()
}

fn same_node(s: &mut Suite) -> Result<(), String> {
    hbone_between(s, "server-1", "node-1", "node-1")
}

fn cross_node(s: &mut Suite) -> Result<(), String> {
    hbone_between(s, "server-2", "node-1", "node-2")
}

/// client → server over HBONE: the server answers, and both ztunnels count the connection as
/// mutual TLS between client's and server's identities.
fn hbone_between(
    s: &mut Suite,
    server: &str,
    src_node: &str,
    dst_node: &str,
) -> Result<(), String> {
    let c = &s.cluster;
    let (src, dst) = (principal("apps", "client"), principal("apps", "server"));
    let count = |node: &str, reporter: &str| {
        opened(
            c,
            node,
            &[
                ("reporter", reporter),
                ("source_principal", &src),
                ("destination_principal", &dst),
                ("connection_security_policy", "mutual_tls"),
            ],
        )
    };
    let sides = [(src_node, "source"), (dst_node, "destination")];
    let before: Vec<u64> = sides
        .iter()
        .map(|(n, r)| count(n, r))
        .collect::<Result<_, _>>()?;
    let body = get(c, "client", pod_addr(c, server, 8080))?;
    if answered_by(&body) != server {
        return Err(format!("answered by {}, not {server}", answered_by(&body)));
    }
    for ((node, reporter), was) in sides.iter().zip(before) {
        if count(node, reporter)? <= was {
            return Err(format!(
                "{node}'s ztunnel ({reporter}) counted no new mutual TLS connection {src} -> {dst}"
            ));
        }
    }
    Ok(())
}

/// Through HBONE (from the other node) and through 15006 (from outside the mesh), the server
/// application sees the caller's address, as with Istio's in-pod ztunnel.
fn client_address(s: &mut Suite) -> Result<(), String> {
    let c = &s.cluster;
    for from in ["other", "legacy"] {
        let body = get(c, from, pod_addr(c, "server-1", 8080))?;
        let seen = body
            .lines()
            .find_map(|l| l.strip_prefix("RemoteAddr="))
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .ok_or(format!("no RemoteAddr in the answer to {from}"))?;
        let want = c.pod(from)?.ip;
        if seen.ip() != std::net::IpAddr::V4(want) {
            return Err(format!(
                "server-1 saw {from}'s connection from {seen}, not {want}"
            ));
        }
    }
    Ok(())
}

fn service_vip(s: &mut Suite) -> Result<(), String> {
    let c = &s.cluster;
    let vip = c
        .service_ip("apps", "server")
        .ok_or("Service apps/server has no cluster IP")?;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let body = get(c, "client", SocketAddr::from((vip, 80)))?;
        seen.insert(answered_by(&body).to_owned());
    }
    let want: std::collections::BTreeSet<String> =
        ["server-1", "server-2"].map(String::from).into();
    if seen != want {
        return Err(format!("8 requests to {vip}:80 answered by {seen:?}"));
    }
    Ok(())
}

/// A query from inside a pod in the mesh, to whatever resolver it names, is captured and
/// answered by ztunnel with the Service's VIP.
fn dns(s: &mut Suite) -> Result<(), String> {
    use ztunnel::dns::message::{answer_ips, query, TYPE_A};
    let c = &s.cluster;
    let vip = c
        .service_ip("apps", "server")
        .ok_or("no VIP for apps/server")?;
    let pod = c.pod("client")?;
    let reply = meshctl::cluster::netns::run_in(&pod.netns, move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        socket.send_to(
            &query(0x5eed, "server.apps.svc.cluster.local", TYPE_A),
            "10.96.0.2:53",
        )?;
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf)?;
        Ok(buf[..n].to_vec())
    })
    .map_err(|e| format!("DNS query from client: {e}"))?;
    let (rcode, ips) = answer_ips(&reply).map_err(|e| format!("DNS answer: {e}"))?;
    if rcode != 0 || ips != [std::net::IpAddr::V4(vip)] {
        return Err(format!(
            "answer rcode {rcode}, addresses {ips:?}; want {vip}"
        ));
    }
    Ok(())
}

fn permissive(s: &mut Suite) -> Result<(), String> {
    let c = &s.cluster;
    let body = get(c, "legacy", pod_addr(c, "server-2", 8080))?;
    match answered_by(&body) {
        "server-2" => Ok(()),
        other => Err(format!("answered by {other}")),
    }
}

/// Policy YAML in namespace `apps`, selecting the servers.
pub(crate) fn server_policy(name: &str, action: &str, rule: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: apps}}\nspec:\n  selector: {{matchLabels: {{app: server}}}}\n  action: {action}\n  rules:\n{rule}"
    )
}

/// Removes the case's config when dropped, also when the check panicked.
struct Applied<'a>(&'a Cluster);

impl Drop for Applied<'_> {
    fn drop(&mut self) {
        let _ = self.0.delete("case");
    }
}

/// Applies `yaml`, runs `check`, removes it, and waits until the mesh is back to no policy.
pub(crate) fn with_config(
    s: &mut Suite,
    yaml: &str,
    check: impl FnOnce(&Cluster) -> Result<(), String>,
) -> Result<(), String> {
    s.cluster.apply("case", yaml)?;
    let result = {
        let _applied = Applied(&s.cluster);
        check(&s.cluster)
    };
    match (result, baseline(&s.cluster)) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(b)) => Err(format!("after removing the config: {b}")),
        (Err(e), Err(b)) => Err(format!("{e}; and after removing the config: {b}")),
    }
}

/// No policy in force: the other pod and the pod outside both reach server-1.
fn baseline(c: &Cluster) -> Result<(), String> {
    eventually(CONVERGE, || {
        get(c, "other", pod_addr(c, "server-1", 8080))?;
        get(c, "legacy", pod_addr(c, "server-1", 8080)).map(|_| ())
    })
}

fn strict(s: &mut Suite) -> Result<(), String> {
    let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: strict, namespace: apps}\nspec:\n  mtls: {mode: STRICT}\n";
    with_config(s, pa, |c| {
        eventually(CONVERGE, || {
            refused(c, "legacy", pod_addr(c, "server-2", 8080))
        })?;
        get(c, "client", pod_addr(c, "server-2", 8080)).map(|_| ())
    })
}

fn call_out(s: &mut Suite) -> Result<(), String> {
    let c = &s.cluster;
    let body = get(c, "client", pod_addr(c, "legacy", 8080))?;
    if answered_by(&body) != "legacy" {
        return Err(format!("answered by {}", answered_by(&body)));
    }
    // The pod outside has no ztunnel of its own: nothing on its node reports a destination.
    let n = opened(
        c,
        "node-2",
        &[
            ("reporter", "destination"),
            ("destination_workload", "legacy"),
        ],
    )?;
    if n != 0 {
        return Err(format!("node-2 reported {n} inbound connections to legacy"));
    }
    Ok(())
}

fn allow_principal(s: &mut Suite) -> Result<(), String> {
    let rule = "  - from: [{source: {principals: [cluster.local/ns/apps/sa/client]}}]\n";
    with_config(s, &server_policy("allow-client", "ALLOW", rule), |c| {
        eventually(CONVERGE, || {
            refused(c, "other", pod_addr(c, "server-1", 8080))
        })?;
        get(c, "client", pod_addr(c, "server-1", 8080)).map(|_| ())
    })
}

fn deny_principal(s: &mut Suite) -> Result<(), String> {
    let rule = "  - from: [{source: {principals: [cluster.local/ns/apps/sa/other]}}]\n";
    with_config(s, &server_policy("deny-other", "DENY", rule), |c| {
        eventually(CONVERGE, || {
            refused(c, "other", pod_addr(c, "server-2", 8080))
        })?;
        get(c, "client", pod_addr(c, "server-2", 8080))?;
        get(c, "legacy", pod_addr(c, "server-2", 8080)).map(|_| ())
    })
}

fn allow_namespace(s: &mut Suite) -> Result<(), String> {
    let rule = "  - from: [{source: {namespaces: [apps]}}]\n";
    with_config(s, &server_policy("allow-apps", "ALLOW", rule), |c| {
        // No identity, so no namespace: the pod outside is refused.
        eventually(CONVERGE, || {
            refused(c, "legacy", pod_addr(c, "server-1", 8080))
        })?;
        get(c, "other", pod_addr(c, "server-1", 8080)).map(|_| ())
    })
}

fn allow_port(s: &mut Suite) -> Result<(), String> {
    let rule = "  - to: [{operation: {ports: [\"9090\"]}}]\n";
    with_config(s, &server_policy("allow-9090", "ALLOW", rule), |c| {
        eventually(CONVERGE, || {
            refused(c, "client", pod_addr(c, "server-1", 8080))
        })?;
        let back = c
            .tcp_exchange(
                "client",
                pod_addr(c, "server-1", 9090),
                b"port 9090 allowed",
            )
            .map_err(|e| format!("client -> server-1:9090: {e}"))?;
        (back == b"port 9090 allowed")
            .then_some(())
            .ok_or(format!("9090 echoed {back:?}"))
    })
}

fn deny_ip_block(s: &mut Suite) -> Result<(), String> {
    let other = s.cluster.pod("other")?.ip;
    let rule = format!("  - from: [{{source: {{ipBlocks: [\"{other}/32\"]}}}}]\n");
    with_config(s, &server_policy("deny-other-ip", "DENY", &rule), |c| {
        // HBONE leaves from inside the source pod, so the server's ztunnel sees other's address.
        eventually(CONVERGE, || {
            refused(c, "other", pod_addr(c, "server-1", 8080))
        })?;
        get(c, "client", pod_addr(c, "server-1", 8080)).map(|_| ())
    })
}

/// Linkerd's documented policy shapes (its "restricting access" task: a Server, a
/// MeshTLSAuthentication naming one identity, an AuthorizationPolicy targeting the Server and
/// requiring it), applied unchanged to the suite's pods: only `client` may reach the servers'
/// port 8080; their port 9090 is no Server's and stays open.
const LINKERD_POLICY: &str = r#"apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {namespace: apps, name: server-http}
spec:
  podSelector:
    matchLabels: {app: server}
  port: 8080
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {namespace: apps, name: client-only}
spec:
  identities:
    - "client.apps.serviceaccount.identity.linkerd.cluster.local"
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {namespace: apps, name: server-http-from-client}
spec:
  targetRef:
    group: policy.linkerd.io
    kind: Server
    name: server-http
  requiredAuthenticationRefs:
    - name: client-only
      kind: MeshTLSAuthentication
      group: policy.linkerd.io
"#;

fn linkerd_policy(s: &mut Suite) -> Result<(), String> {
    with_config(s, LINKERD_POLICY, |c| {
        // Another identity, and no identity (the pod outside the mesh): refused on 8080.
        eventually(CONVERGE, || {
            refused(c, "other", pod_addr(c, "server-1", 8080))
        })?;
        eventually(CONVERGE, || {
            refused(c, "legacy", pod_addr(c, "server-2", 8080))
        })?;
        // The identity the MeshTLSAuthentication names: admitted, on both servers.
        get(c, "client", pod_addr(c, "server-1", 8080))?;
        get(c, "client", pod_addr(c, "server-2", 8080))?;
        // The pods' other port is no Server's: open to the other pod and to the one outside.
        for (from, server) in [("other", "server-1"), ("legacy", "server-2")] {
            let payload = format!("{from} to {server}:9090 stays open");
            let back = c
                .tcp_exchange(from, pod_addr(c, server, 9090), payload.as_bytes())
                .map_err(|e| format!("{from} -> {server}:9090: {e}"))?;
            if back != payload.as_bytes() {
                return Err(format!("{server}:9090 echoed {back:?} to {from}"));
            }
        }
        Ok(())
    })
}

fn policy_churn(s: &mut Suite) -> Result<(), String> {
    let server = pod_addr(&s.cluster, "server-1", 9090);
    let mut allowed = LongLived::open(&s.cluster, "client", server)?;
    let rule = "  - from: [{source: {principals: [cluster.local/ns/apps/sa/other]}}]\n";
    for round in 0..3 {
        // A connection the coming policy denies: closed when the policy lands, as in Istio.
        let mut denied = LongLived::open(&s.cluster, "other", server)?;
        with_config(s, &server_policy("deny-other", "DENY", rule), |c| {
            eventually(CONVERGE, || {
                refused(c, "other", pod_addr(c, "server-1", 8080))
            })?;
            eventually(Duration::from_secs(3), || denied.closed())
        })
        .map_err(|e| format!("round {round}: {e}"))?;
        allowed
            .ping()
            .map_err(|e| format!("round {round}, the allowed connection: {e}"))?;
    }
    Ok(())
}

fn opt_in_out(s: &mut Suite) -> Result<(), String> {
    let server = pod_addr(&s.cluster, "server-1", 9090);
    let mut before = LongLived::open(&s.cluster, "late", server)?;
    let c = &s.cluster;
    let late = principal("optin", "late");
    let from_late = |c: &Cluster| {
        opened(
            c,
            "node-1",
            &[("reporter", "destination"), ("source_principal", &late)],
        )
    };
    if served(c, "late")? {
        return Err("optin/late is served before its namespace opted in".into());
    }
    c.apply("ns-optin", &namespace_optin(true))?;
    eventually(CONVERGE, || {
        served(c, "late")?
            .then_some(())
            .ok_or("late not enrolled".to_string())
    })?;
    before
        .ping()
        .map_err(|e| format!("after opting in, the connection opened before: {e}"))?;
    let mtls_before = from_late(c)?;
    let mut during = LongLived::open(c, "late", server)?;
    if from_late(c)? <= mtls_before {
        return Err(
            "a new connection from the enrolled pod was not carried with its identity".into(),
        );
    }
    c.apply("ns-optin", &namespace_optin(false))?;
    eventually(CONVERGE, || {
        (!served(c, "late")?)
            .then_some(())
            .ok_or("late still enrolled".to_string())
    })?;
    before
        .ping()
        .map_err(|e| format!("after opting out, the connection opened before opting in: {e}"))?;
    during
        .ping()
        .map_err(|e| format!("after opting out, the connection opened while in the mesh: {e}"))?;
    let after = from_late(c)?;
    LongLived::open(c, "late", server)?;
    if from_late(c)? != after {
        return Err("a connection after opting out still went over HBONE".into());
    }
    Ok(())
}

fn no_plaintext(s: &mut Suite) -> Result<(), String> {
    let c = &s.cluster;
    let link = c.node("node-1")?.link.clone();
    let secret = format!("ENROLLED-PLAINTEXT-{}", std::process::id());
    let control = format!("CONTROL-IN-CLEAR-{}", std::process::id());
    let cap = Capture::start(FABRIC, &link).map_err(|e| format!("capture on {link}: {e}"))?;
    // Both cross node-1's link: client (node-1) to server-2 over HBONE, and to the pod outside
    // (node-2) in plain TCP, which shows the capture sees payloads.
    let to_mesh = c.tcp_exchange("client", pod_addr(c, "server-2", 9090), secret.as_bytes());
    let to_outside = c.tcp_exchange("client", pod_addr(c, "legacy", 9090), control.as_bytes());
    let seen = cap.finish().map_err(|e| e.to_string())?;
    to_mesh.map_err(|e| format!("client -> server-2: {e}"))?;
    to_outside.map_err(|e| format!("client -> legacy: {e}"))?;
    if !capture::contains(&seen, control.as_bytes()) {
        return Err(format!(
            "the capture on {link} ({} bytes) missed the plain TCP control payload",
            seen.len()
        ));
    }
    if capture::contains(&seen, secret.as_bytes()) {
        return Err(format!(
            "the enrolled pod's payload crossed {link} in clear"
        ));
    }
    Ok(())
}

fn restart(s: &mut Suite) -> Result<(), String> {
    let mut local = LongLived::open(&s.cluster, "client", pod_addr(&s.cluster, "server-1", 9090))?;
    s.cluster.restart_ztunnel("node-2")?;
    let c = &s.cluster;
    eventually(CONVERGE, || get(c, "client", pod_addr(c, "server-2", 8080)))?;
    eventually(CONVERGE, || get(c, "other", pod_addr(c, "server-1", 8080)))?;
    local.ping()
}

/// The node agent is not on the data path: restarting it leaves every pod's capture rules and
/// open connections as they were, its new instance takes the pods over from ztunnel's view
/// (no pod is re-enrolled or loses capture), and new connections keep going through ztunnel.
fn agent_restart(s: &mut Suite) -> Result<(), String> {
    let c = &s.cluster;
    let mut local = LongLived::open(c, "client", pod_addr(c, "server-1", 9090))?;
    let mtls = |c: &Cluster| {
        opened(
            c,
            "node-1",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", &principal("apps", "client")),
            ],
        )
    };
    let before = mtls(c)?;
    s.cluster.restart_agent("node-1")?;
    let c = &s.cluster;
    for pod in ["client", "server-1"] {
        if !served(c, pod)? {
            return Err(format!("{pod} lost capture when node-1's agent restarted"));
        }
    }
    local.ping()?;
    eventually(CONVERGE, || get(c, "client", pod_addr(c, "server-1", 8080)))?;
    let after = mtls(c)?;
    if after <= before {
        return Err(format!(
            "client -> server-1 after the agent restart was not over mutual TLS (count {before} -> {after})"
        ));
    }
    Ok(())
}

/// Brings the cluster up, runs every case, prints the logs' tails if a case failed, and takes
/// the cluster down (unless `keep`).
pub fn run(state_dir: PathBuf, bin_dir: PathBuf, keep: bool) -> Result<crate::Outcome, String> {
    println!("L4 conformance: starting a local cluster (2 nodes)");
    let mut suite = match start(state_dir.clone(), bin_dir) {
        Ok(s) => s,
        Err(e) => {
            let _ = cluster::down(&state_dir);
            return Err(e);
        }
    };
    let outcome = crate::run_cases(&mut suite, &cases());
    if !outcome.failed.is_empty() {
        let c = &suite.cluster;
        for (what, proc) in std::iter::once(("istiod-lite", &c.control)).chain(
            c.nodes
                .iter()
                .flat_map(|n| [("ztunnel", &n.ztunnel), ("agent", &n.agent)]),
        ) {
            eprintln!(
                "--- {what} ({}):\n{}",
                proc.log.display(),
                proc.log_tail(15)
            );
        }
    }
    if !keep {
        cluster::down(&state_dir)?;
    }
    Ok(outcome)
}

//! `meshctl demo`: brings up the example in `examples/local-cluster` (two nodes; `shop` in the
//! mesh with frontend, cart v1 (two replicas) and v2 behind a Service that uses the namespace's
//! waypoint, and reports; `legacy/batch` outside; an HTTPRoute splitting cart 90/10 with a
//! header match for the canary, an L7 policy letting only the frontend GET /items*, an L4 policy
//! admitting only the waypoint into cart, STRICT mTLS in `shop`), sends traffic between the pods
//! from inside their network namespaces, and reports who reached whom, with which identities,
//! which version answered, and which requests and connections the mesh refused and why; and
//! from this machine, HTTPS through the ingress gateway to the frontend.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cluster::{self, Cluster, UpOptions};

mod ingress;

const EXAMPLE: [(&str, &str); 5] = [
    (
        "namespaces.yaml",
        include_str!("../../../examples/local-cluster/namespaces.yaml"),
    ),
    (
        "workloads.yaml",
        include_str!("../../../examples/local-cluster/workloads.yaml"),
    ),
    (
        "policies.yaml",
        include_str!("../../../examples/local-cluster/policies.yaml"),
    ),
    (
        "waypoint.yaml",
        include_str!("../../../examples/local-cluster/waypoint.yaml"),
    ),
    (
        "ingress.yaml",
        include_str!("../../../examples/local-cluster/ingress.yaml"),
    ),
];

/// The value of `label` in a Prometheus sample line.
pub fn label<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    let start = line.find(&format!("{label}=\""))? + label.len() + 2;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// The destination ztunnel's view of connections from `src` to `dst` (workload names):
/// (source principal, destination principal, security policy) of the first matching sample.
pub fn seen_by_destination(
    cluster: &Cluster,
    src: &str,
    dst_pod: &str,
    dst_workload: &str,
) -> Option<(String, String, String)> {
    let node = &cluster.pod(dst_pod).ok()?.node;
    let metrics = cluster.ztunnel_metrics(node).ok()?;
    metrics
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .filter(|l| label(l, "reporter") == Some("destination"))
        .filter(|l| label(l, "source_workload") == Some(src))
        .find(|l| label(l, "destination_workload") == Some(dst_workload))
        .map(|l| {
            (
                label(l, "source_principal").unwrap_or("").to_owned(),
                label(l, "destination_principal").unwrap_or("").to_owned(),
                label(l, "connection_security_policy")
                    .unwrap_or("")
                    .to_owned(),
            )
        })
}

/// The latest denial a node's ztunnel recorded for connections from `src_ip`.
pub fn denial_for(cluster: &Cluster, node: &str, src_ip: &str) -> Option<String> {
    let dump = cluster.ztunnel_dump(node).ok()?;
    dump["recentDenials"]
        .as_array()?
        .iter()
        .rev()
        .find(|d| d["connection"].as_str().is_some_and(|c| c.contains(src_ip)))
        .and_then(|d| d["reason"].as_str().map(str::to_owned))
}

/// The `Hostname=` line of an echo answer.
pub fn answered_by(body: &str) -> &str {
    body.lines()
        .find_map(|l| l.strip_prefix("Hostname="))
        .unwrap_or("?")
}

fn call(cluster: &Cluster, out: &mut String, from: &str, to_pod: &str, to_workload: &str) {
    let (src, dst) = (
        cluster.pod(from).expect("pod"),
        cluster.pod(to_pod).expect("pod"),
    );
    let addr = SocketAddr::from((dst.ip, 8080));
    let head = format!(
        "{} ({}) -> {} {addr} ({})",
        src.key(),
        src.node,
        dst.key(),
        dst.node
    );
    match cluster.http_get(from, addr, "/") {
        Ok((status, body)) => {
            let _ = write!(out, "{head}: HTTP {status} from {}", answered_by(&body));
            match seen_by_destination(cluster, &src.name, to_pod, to_workload) {
                Some((sp, dp, sec)) if sec == "mutual_tls" => {
                    let _ = writeln!(out, ", over mutual TLS: {sp} -> {dp}");
                }
                _ => {
                    let _ = writeln!(out, ", plain TCP ({} is not in the mesh)", dst.key());
                }
            }
        }
        Err(e) => {
            let why = denial_for(cluster, &dst.node, &src.ip.to_string())
                .unwrap_or_else(|| "no denial recorded".into());
            let _ = writeln!(
                out,
                "{head}: refused ({e}); {}'s ztunnel says: {why}",
                dst.node
            );
        }
    }
}

/// Requests to cart's Service, which go through the waypoint: the 90/10 split, the canary
/// header, and L7 denials with the policy that decided.
fn l7_traffic(cluster: &Cluster, out: &mut String, vip: SocketAddr) {
    use crate::cluster::http::Request;
    let mut counts = std::collections::BTreeMap::new();
    let n = 50;
    for _ in 0..n {
        let who = match cluster.request("frontend", vip, &Request::get("/items")) {
            Ok(a) if a.status == 200 => version_of(answered_by(&a.body)),
            Ok(a) => format!("HTTP {}", a.status),
            Err(e) => format!("error: {e}"),
        };
        *counts.entry(who).or_insert(0) += 1;
    }
    let split: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        out,
        "shop/frontend -> Service cart {vip} via the waypoint, GET /items x{n} (route: 90/10): {}",
        split.join(", ")
    );
    let canary = Request {
        headers: &[("x-canary", "true")],
        ..Request::get("/items")
    };
    match cluster.request("frontend", vip, &canary) {
        Ok(a) => {
            let _ = writeln!(
                out,
                "shop/frontend -> cart with x-canary: true: HTTP {} from {}",
                a.status,
                answered_by(&a.body)
            );
        }
        Err(e) => {
            let _ = writeln!(out, "shop/frontend -> cart with x-canary: true: {e}");
        }
    }
    let post = Request {
        method: "POST",
        body: b"{}",
        ..Request::get("/items")
    };
    for (from, req, what) in [
        ("frontend", &post, "POST /items"),
        ("reports", &Request::get("/items"), "GET /items"),
    ] {
        let answer = match cluster.request(from, vip, req) {
            Ok(a) => format!("HTTP {} {:?}", a.status, a.body.trim()),
            Err(e) => format!("error: {e}"),
        };
        let why = waypoint_denial(cluster).unwrap_or_else(|| "no denial recorded".into());
        let _ = writeln!(
            out,
            "shop/{from} -> cart {what}: {answer}; the waypoint says: {why}"
        );
    }
}

/// `cart-v2-1` -> `cart v2`; `cart-1` -> `cart v1`.
fn version_of(pod: &str) -> String {
    if pod.starts_with("cart-v2") {
        "cart v2".into()
    } else if pod.starts_with("cart") {
        "cart v1".into()
    } else {
        pod.to_owned()
    }
}

/// The latest denial the waypoint recorded (its admin endpoint, on the pod's localhost).
fn waypoint_denial(cluster: &Cluster) -> Option<String> {
    let pod = cluster
        .pods
        .iter()
        .find(|p| p.waypoint().is_some() && !cluster.is_ingress(p))?;
    let (_, body) = cluster::netns::http_get(
        &pod.netns,
        SocketAddr::from(([127, 0, 0, 1], 15000)),
        "/config_dump",
    )
    .ok()?;
    let dump: serde_json::Value = serde_json::from_str(&body).ok()?;
    let last = dump["recentDenials"].as_array()?.last()?;
    Some(format!(
        "{} {} {}",
        last["source"].as_str()?,
        last["request"].as_str()?,
        last["reason"].as_str()?
    ))
}

/// Runs the demo; returns the report. The cluster is taken down unless `keep`.
pub fn run(state_dir: PathBuf, bin_dir: PathBuf, keep: bool) -> Result<String, String> {
    cluster::check_prerequisites()?;
    let manifests = std::env::temp_dir().join(format!("meshctl-demo-{}", std::process::id()));
    std::fs::create_dir_all(&manifests).map_err(|e| e.to_string())?;
    for (name, text) in EXAMPLE {
        std::fs::write(manifests.join(name), text).map_err(|e| e.to_string())?;
    }
    // The ingress listener's Secret, from a CA made for this run.
    let (ingress_ca, ingress_secret) = ingress::certificate()?;
    std::fs::write(manifests.join("ingress-secret.yaml"), ingress_secret)
        .map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let up = cluster::up(&UpOptions {
        manifests: manifests.clone(),
        nodes: 2,
        state_dir: state_dir.clone(),
        bin_dir,
        log_level: "info".into(),
        stand_in: None,
    });
    let _ = std::fs::remove_dir_all(&manifests);
    let cluster = up?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "local cluster up in {:.1}s: {} nodes, {} pods\n",
        started.elapsed().as_secs_f64(),
        cluster.nodes.len(),
        cluster.pods.len()
    );
    cluster.wait_listening(8080, std::time::Duration::from_secs(10))?;
    // Waypoints are ready once they hold their configuration from istiod-lite.
    cluster::up::wait_for(
        "the waypoint to be ready",
        std::time::Duration::from_secs(30),
        || {
            cluster
                .pods
                .iter()
                .filter(|p| p.waypoint().is_some())
                .all(|p| {
                    cluster::netns::http_get(
                        &p.netns,
                        SocketAddr::from((p.ip, 15021)),
                        "/healthz/ready",
                    )
                    .is_ok_and(|(status, _)| status == 200)
                })
        },
    )?;
    out.push_str(&cluster::print_status(&cluster));
    out.push_str(
        "\nTraffic (each connection made from inside the client pod, as its application would):\n",
    );
    call(&cluster, &mut out, "frontend", "cart-1", "cart");
    if let Some(vip) = cluster.service_ip("shop", "cart") {
        l7_traffic(&cluster, &mut out, SocketAddr::from((vip, 80)));
    }
    let pod = cluster.pod("frontend")?.clone();
    let dns = cluster::netns::run_in(&pod.netns, || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        // A minimal A query; whatever resolver the pod names, ztunnel's DNS proxy answers.
        let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["cart", "shop", "svc", "cluster", "local"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        socket.send_to(&q, "10.96.0.2:53")?;
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf)?;
        // The one A record's address ends the answer.
        Ok((n >= q.len() + 16)
            .then(|| std::net::Ipv4Addr::new(buf[n - 4], buf[n - 3], buf[n - 2], buf[n - 1])))
    });
    match dns {
        Ok(Some(ip)) => {
            let _ = writeln!(out, "shop/frontend resolves cart.shop.svc.cluster.local: {ip} (answered by {}'s ztunnel DNS proxy)", pod.node);
        }
        other => {
            let _ = writeln!(
                out,
                "shop/frontend resolves cart.shop.svc.cluster.local: failed ({other:?})"
            );
        }
    }
    let ca_file = cluster.dir.join("demo-ingress-ca.pem");
    std::fs::write(&ca_file, &ingress_ca).map_err(|e| e.to_string())?;
    ingress::traffic(&cluster, &mut out, &ca_file);
    call(&cluster, &mut out, "reports", "cart-1", "cart");
    call(&cluster, &mut out, "batch", "cart-2", "cart");
    call(&cluster, &mut out, "frontend", "batch", "batch");
    if keep {
        let _ = writeln!(
            out,
            "\nThe cluster is still up: `meshctl status`, `meshctl exec frontend -- CMD`, `meshctl down`."
        );
    } else {
        cluster::down(&state_dir)?;
        let _ = writeln!(out, "\nCluster removed (run with --keep to look around).");
    }
    Ok(out)
}

//! `meshctl demo`: brings up the example in `examples/local-cluster` (two nodes; `shop` in the
//! mesh with frontend, two cart replicas behind a Service, and reports; `legacy/batch` outside;
//! an ALLOW policy on cart and STRICT mTLS in `shop`), sends traffic between the pods from
//! inside their network namespaces, and reports who reached whom, with which identities, and
//! which connections the mesh refused and why.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::cluster::{self, Cluster, UpOptions};

const EXAMPLE: [(&str, &str); 3] = [
    (
        "namespaces.yaml",
        include_str!("../../examples/local-cluster/namespaces.yaml"),
    ),
    (
        "workloads.yaml",
        include_str!("../../examples/local-cluster/workloads.yaml"),
    ),
    (
        "policies.yaml",
        include_str!("../../examples/local-cluster/policies.yaml"),
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

/// Runs the demo; returns the report. The cluster is taken down unless `keep`.
pub fn run(state_dir: PathBuf, bin_dir: PathBuf, keep: bool) -> Result<String, String> {
    cluster::check_prerequisites()?;
    let manifests = std::env::temp_dir().join(format!("meshctl-demo-{}", std::process::id()));
    std::fs::create_dir_all(&manifests).map_err(|e| e.to_string())?;
    for (name, text) in EXAMPLE {
        std::fs::write(manifests.join(name), text).map_err(|e| e.to_string())?;
    }
    let started = std::time::Instant::now();
    let up = cluster::up(&UpOptions {
        manifests: manifests.clone(),
        nodes: 2,
        state_dir: state_dir.clone(),
        bin_dir,
        log_level: "info".into(),
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
    out.push_str(&cluster::print_status(&cluster));
    out.push_str(
        "\nTraffic (each connection made from inside the client pod, as its application would):\n",
    );
    call(&cluster, &mut out, "frontend", "cart-1", "cart");
    call(&cluster, &mut out, "frontend", "cart-2", "cart");
    let vip = cluster.service_ip("shop", "cart");
    if let Some(vip) = vip {
        let answers: Vec<String> = (0..4)
            .map(
                |_| match cluster.http_get("frontend", SocketAddr::from((vip, 80)), "/") {
                    Ok((_, body)) => answered_by(&body).to_owned(),
                    Err(e) => format!("error: {e}"),
                },
            )
            .collect();
        let _ = writeln!(
            out,
            "shop/frontend -> Service cart {vip}:80, 4 requests answered by: {}",
            answers.join(", ")
        );
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

//! Looking into a running mesh, as `istioctl proxy-status` and `istioctl ztunnel-config` do:
//! [`proxy_status`] (istiod-lite's xDS clients and whether each is in sync) and
//! [`ztunnel_config`] (what a ztunnel knows). By default both read the local cluster (its
//! state tells where istiod-lite and the nodes' ztunnels are); `--istiod` / `--ztunnel` point
//! them at any address instead. Shaping and rendering are pure functions; only
//! [`proxy_status_report`] and [`ztunnel_config_report`] touch sockets.

pub mod authz;
pub mod check;
pub mod clock;
pub mod fetch;
pub mod proxy_status;
pub mod stat;
pub mod table;
pub mod top;
pub mod ztunnel_config;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::Serialize;

use crate::cluster::{self, Cluster};
use fetch::From;
use proxy_status::{ClientIn, Placement};
use ztunnel_config::{Dump, Kind};

/// How results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    #[default]
    Table,
    /// The rows as a JSON array.
    Json,
    /// The rows as YAML.
    Yaml,
}

/// `rows` as JSON or YAML; `table` renders them otherwise.
pub fn render<T: Serialize>(
    rows: &[T],
    output: Output,
    table: impl FnOnce(&[T]) -> String,
) -> String {
    match output {
        Output::Table => table(rows),
        Output::Json => {
            let mut s = serde_json::to_string_pretty(rows).expect("rows serialize");
            s.push('\n');
            s
        }
        Output::Yaml => serde_yaml_ng::to_string(rows).expect("rows serialize"),
    }
}

/// istiod-lite's HTTP address in the local cluster: its `--http-address` argument.
fn cluster_istiod(cluster: &Cluster) -> SocketAddr {
    let argv = &cluster.control.argv;
    argv.iter()
        .position(|a| a == "--http-address")
        .and_then(|i| argv.get(i + 1))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| SocketAddr::from((cluster::CONTROL_IP, 15014)))
}

/// Where the cluster's clients run: nodes by address, pods (waypoints) by address.
fn placement(cluster: &Cluster) -> Placement {
    Placement {
        nodes: cluster
            .nodes
            .iter()
            .map(|n| (n.name.clone(), IpAddr::V4(n.ip)))
            .collect(),
        pods: cluster
            .pods
            .iter()
            .map(|p| (IpAddr::V4(p.ip), p.key(), p.node.clone()))
            .collect(),
    }
}

/// `meshctl proxy-status`: `/debug/clients` of `istiod` (`HOST:PORT`), else of the local
/// cluster's istiod-lite (read from inside the cluster's network, as a loopback client).
pub fn proxy_status_report(
    state_dir: &Path,
    istiod: Option<&str>,
    output: Output,
) -> Result<String, String> {
    let (from, addr, placement) = match istiod {
        Some(target) => (From::Here, fetch::resolve(target)?, Placement::default()),
        None => {
            let cluster =
                Cluster::load(state_dir).map_err(|e| format!("{e} (or use --istiod HOST:PORT)"))?;
            (
                From::Netns(cluster::FABRIC.to_owned()),
                cluster_istiod(&cluster),
                placement(&cluster),
            )
        }
    };
    let body = fetch::get(&from, addr, "/debug/clients")?;
    let clients: Vec<ClientIn> =
        serde_json::from_str(&body).map_err(|e| format!("{addr}/debug/clients: {e}"))?;
    let rows = proxy_status::rows(&clients, &placement);
    let now = clock::now_ms();
    Ok(render(&rows, output, |r| proxy_status::table(r, now)))
}

/// Which ztunnels `ztunnel-config` reads.
#[derive(Debug, Clone)]
pub enum Ztunnels {
    /// Every node of the local cluster.
    AllNodes,
    /// One node of the local cluster.
    Node(String),
    /// Any ztunnel's admin port, `HOST:PORT`.
    Address(String),
}

/// The dumps: (source name, dump), in node order.
fn dumps(state_dir: &Path, which: &Ztunnels) -> Result<Vec<(String, Dump)>, String> {
    let parse = |source: &str, v: serde_json::Value| {
        serde_json::from_value::<Dump>(v).map_err(|e| format!("{source} config_dump: {e}"))
    };
    match which {
        Ztunnels::Address(target) => {
            let addr = fetch::resolve(target)?;
            let body = fetch::get(&From::Here, addr, "/config_dump")?;
            let v =
                serde_json::from_str(&body).map_err(|e| format!("{target} config_dump: {e}"))?;
            Ok(vec![(target.clone(), parse(target, v)?)])
        }
        Ztunnels::Node(node) => {
            let cluster = Cluster::load(state_dir)
                .map_err(|e| format!("{e} (or use --ztunnel HOST:PORT)"))?;
            let v = cluster.ztunnel_dump(node)?;
            Ok(vec![(node.clone(), parse(node, v)?)])
        }
        Ztunnels::AllNodes => {
            let cluster = Cluster::load(state_dir)
                .map_err(|e| format!("{e} (or use --ztunnel HOST:PORT)"))?;
            cluster
                .nodes
                .iter()
                .map(|n| {
                    let v = cluster.ztunnel_dump(&n.name)?;
                    Ok((n.name.clone(), parse(&n.name, v)?))
                })
                .collect()
        }
    }
}

/// `meshctl ztunnel-config KIND`.
pub fn ztunnel_config_report(
    state_dir: &Path,
    which: &Ztunnels,
    kind: Kind,
    output: Output,
) -> Result<String, String> {
    let dumps = dumps(state_dir, which)?;
    Ok(shape(&dumps, kind, output, clock::now_ms() / 1000))
}

/// The report for already fetched dumps (pure; the source column appears with several).
pub fn shape(dumps: &[(String, Dump)], kind: Kind, output: Output, now_secs: u64) -> String {
    use ztunnel_config as z;
    let many = dumps.len() > 1;
    fn all<T>(dumps: &[(String, Dump)], f: impl Fn(&str, &Dump) -> Vec<T>) -> Vec<T> {
        dumps.iter().flat_map(|(s, d)| f(s, d)).collect()
    }
    match kind {
        Kind::Workloads => render(&all(dumps, z::workloads), output, |r| {
            z::workloads_table(r, many)
        }),
        Kind::Services => render(&all(dumps, z::services), output, |r| {
            z::services_table(r, many)
        }),
        Kind::Policies => render(&all(dumps, z::policies), output, |r| {
            z::policies_table(r, many)
        }),
        Kind::Certificates => render(
            &all(dumps, |s, d| z::certificates(s, d, now_secs as i64)),
            output,
            |r| z::certificates_table(r, many),
        ),
    }
}

/// `meshctl check` on the local cluster: the report, and whether every check passed.
pub fn check_report(state_dir: &Path, output: Output) -> Result<(String, bool), String> {
    use check::{NodeSeen, Seen};
    let cluster = Cluster::load(state_dir)?;
    let fabric = From::Netns(cluster::FABRIC.to_owned());
    let istiod = cluster_istiod(&cluster);
    let control_ready = fetch::get(&fabric, istiod, "/ready").map(|_| ());
    let fetch_clients = || {
        fetch::get(&fabric, istiod, "/debug/clients")
            .ok()
            .and_then(|body| serde_json::from_str::<Vec<ClientIn>>(&body).ok())
            .map(|c| proxy_status::rows(&c, &placement(&cluster)))
            .unwrap_or_default()
    };
    // A push in flight shows as STALE until the proxy acknowledges it, usually within
    // milliseconds: look again for up to 2 s before reporting a proxy as behind.
    let mut clients = fetch_clients();
    for _ in 0..10 {
        let in_flight = clients
            .iter()
            .any(|c| c.types.iter().any(|t| t.status == proxy_status::STALE));
        if !in_flight {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        clients = fetch_clients();
    }
    let log_dir = cluster.dir.join("logs").display().to_string();
    let nodes = cluster
        .nodes
        .iter()
        .map(|n| {
            let dump = cluster.ztunnel_dump(&n.name).ok();
            let rules = cluster
                .pods
                .iter()
                .filter(|p| p.node == n.name)
                .map(|p| (p.key(), capture_rules_installed(&p.netns)))
                .collect();
            NodeSeen {
                name: n.name.clone(),
                dump,
                ztunnel_ready: cluster.ztunnel_ready(n),
                agent_alive: cluster::netns::alive(n.agent.pid),
                agent_socket: cluster
                    .dir
                    .join("nodes")
                    .join(&n.name)
                    .join("cni.sock")
                    .exists(),
                rules,
                log_dir: log_dir.clone(),
            }
        })
        .collect();
    let seen = Seen {
        control_ready,
        clients,
        nodes,
        now: (clock::now_ms() / 1000) as i64,
    };
    let outcomes = check::judge(&seen);
    let ok = outcomes.iter().all(|o| o.ok);
    Ok((render(&outcomes, output, check::text), ok))
}

/// Whether the node agent's in-pod table is in the pod's network namespace (`nft` run inside
/// it: a thread that entered the namespace forks a child that inherits it).
fn capture_rules_installed(pod_netns: &str) -> bool {
    cluster::netns::run_in(pod_netns, || {
        let nft = ["/usr/sbin/nft", "/sbin/nft"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nft");
        std::process::Command::new(nft)
            .args(["list", "table", "inet", "ztunnel-inpod"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    })
    .is_ok_and(|s| s.success())
}

/// Every proxy's metrics in the local cluster: each node's ztunnel and each waypoint.
fn scrape_all(cluster: &Cluster) -> Result<Vec<stat::Sample>, String> {
    let mut samples = Vec::new();
    for node in &cluster.nodes {
        samples.extend(stat::parse(&cluster.ztunnel_metrics(&node.name)?));
    }
    for pod in cluster.pods.iter().filter(|p| p.waypoint().is_some()) {
        let body = fetch::get(
            &From::Netns(pod.netns.clone()),
            SocketAddr::from((pod.ip, 15020)),
            "/metrics",
        )?;
        samples.extend(stat::parse(&body));
    }
    Ok(samples)
}

/// `meshctl stat`: golden metrics over `window` from two scrapes of every proxy.
pub fn stat_report(
    state_dir: &Path,
    window: std::time::Duration,
    namespace: Option<&str>,
    output: Output,
) -> Result<String, String> {
    let cluster = Cluster::load(state_dir)?;
    let before = scrape_all(&cluster)?;
    let started = std::time::Instant::now();
    std::thread::sleep(window);
    let after = scrape_all(&cluster)?;
    let stat = stat::compute(&before, &after, started.elapsed().as_secs_f64(), namespace);
    Ok(match output {
        Output::Table => stat::table(&stat),
        Output::Json => format!("{}\n", serde_json::to_string_pretty(&stat).expect("json")),
        Output::Yaml => serde_yaml_ng::to_string(&stat).expect("yaml"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEDICATED: &str = include_str!("testdata/config_dump_dedicated.json");

    fn two_nodes() -> Vec<(String, Dump)> {
        let d: Dump = serde_json::from_str(DEDICATED).unwrap();
        vec![("node-1".into(), d.clone()), ("node-2".into(), d)]
    }

    #[test]
    fn json_and_yaml_carry_the_rows() {
        let dumps = two_nodes();
        let json = shape(&dumps, Kind::Workloads, Output::Json, 1_796_040_000);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let rows = v.as_array().unwrap();
        assert_eq!(rows.len(), 6, "three workloads from each of two ztunnels");
        assert_eq!(rows[0]["ztunnel"], "node-1");
        assert_eq!(rows[3]["ztunnel"], "node-2");
        assert_eq!(rows[1]["name"], "server-1");
        assert_eq!(rows[1]["addresses"][0], "127.0.77.3");
        assert_eq!(rows[1]["protocol"], "HBONE");

        let yaml = shape(&dumps, Kind::Certificates, Output::Yaml, 1_796_040_000);
        let v: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(v[0]["state"], "VALID", "{yaml}");
        assert_eq!(v[0]["identity"], "spiffe://cluster.local/ns/apps/sa/server");
        assert!(v[0]["expiresInSeconds"].as_i64().unwrap() > 0);
    }

    #[test]
    fn tables_name_the_ztunnel_only_when_there_are_several() {
        let dumps = two_nodes();
        let many = shape(&dumps, Kind::Policies, Output::Table, 0);
        assert!(many.starts_with("ZTUNNEL"), "{many}");
        assert_eq!(many.lines().count(), 5, "{many}");
        let one = shape(&dumps[..1], Kind::Services, Output::Table, 0);
        assert!(one.starts_with("NAMESPACE"), "{one}");
    }

    #[test]
    fn the_cluster_istiod_address_comes_from_its_arguments() {
        let proc_with = |argv: &[&str]| cluster::Proc {
            netns: cluster::FABRIC.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            log: "/dev/null".into(),
            pid: 0,
            resolv_conf: None,
        };
        let mut c = Cluster {
            dir: "/tmp".into(),
            bin_dir: "/tmp".into(),
            control: proc_with(&["istiod-lite", "--http-address", "172.30.0.1:15014"]),
            nodes: Vec::new(),
            pods: Vec::new(),
            ingress: Vec::new(),
        };
        assert_eq!(cluster_istiod(&c), "172.30.0.1:15014".parse().unwrap());
        c.control = proc_with(&["istiod-lite"]);
        assert_eq!(cluster_istiod(&c), "172.30.0.1:15014".parse().unwrap());
        c.control = proc_with(&["istiod-lite", "--http-address", "172.30.0.1:9999"]);
        assert_eq!(cluster_istiod(&c), "172.30.0.1:9999".parse().unwrap());
    }
}

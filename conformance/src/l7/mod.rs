//! The L7 suite: a waypoint in the path of a namespace's Services, checked as the Gateway API
//! mesh conformance tests check it (each case re-created here in our own code), plus L7
//! authorization, the waypoint-bypass refusal and the waypoint's request metrics. Requests are
//! made from inside the pods, so they take the real path: the client's ztunnel, HBONE to the
//! waypoint, the waypoint's routing and policy, HBONE to the chosen pod's ztunnel.

mod dashboards;
mod observe_l7;
mod policy;
mod resilience;
mod routing;
mod traffic;
mod web_view;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use meshctl::cluster::http::{Answer, Request};
use meshctl::cluster::{self, netns, Cluster};

use crate::support::*;
use crate::Case;

const MANIFESTS: &str = include_str!("../../manifests/l7.yaml");
pub const NS: &str = "gamma";

pub struct Suite {
    pub cluster: Cluster,
    /// Objects a case applied, removed before the next case.
    applied: Vec<String>,
}

impl Suite {
    /// Applies `yaml` as `name` (removed again after the case).
    pub fn apply(&mut self, name: &str, yaml: &str) -> Result<(), String> {
        self.cluster.apply(name, yaml)?;
        self.applied.push(name.to_owned());
        Ok(())
    }

    fn clean(&mut self) {
        for name in std::mem::take(&mut self.applied) {
            let _ = self.cluster.delete(&name);
        }
    }

    /// The cluster IP of a Service in `gamma`.
    pub fn vip(&self, service: &str, port: u16) -> Result<SocketAddr, String> {
        let ip: Ipv4Addr = self
            .cluster
            .service_ip(NS, service)
            .ok_or(format!("no Service {NS}/{service}"))?;
        Ok(SocketAddr::from((ip, port)))
    }

    /// A request from pod `from` to `dst`.
    pub fn ask(&self, from: &str, dst: SocketAddr, req: &Request<'_>) -> Result<Answer, String> {
        self.cluster
            .request(from, dst, req)
            .map_err(|e| format!("{from} -> {dst} {} {}: {e}", req.method, req.path))
    }

    /// `GET path` from the client to Service `echo` on `port`.
    pub fn get(&self, service: &str, port: u16, path: &str) -> Result<Answer, String> {
        self.ask("client", self.vip(service, port)?, &Request::get(path))
    }

    /// The waypoint's Prometheus metrics.
    pub fn waypoint_metrics(&self) -> Result<String, String> {
        let pod = self
            .cluster
            .pods
            .iter()
            .find(|p| p.waypoint().is_some())
            .ok_or("no waypoint pod")?;
        match netns::http_get(&pod.netns, SocketAddr::from((pod.ip, 15020)), "/metrics") {
            Ok((200, body)) => Ok(body),
            Ok((status, _)) => Err(format!("waypoint metrics: HTTP {status}")),
            Err(e) => Err(format!("waypoint metrics: {e}")),
        }
    }
}

/// Which echo version answered (`echo-v1` / `echo-v2`), from the pod name.
pub fn version(a: &Answer) -> Option<&'static str> {
    let host = a.echo("Hostname").unwrap_or_default();
    if host.starts_with("echo-v1") || a.body.contains("Hostname=echo-v1") {
        Some("echo-v1")
    } else if host.starts_with("echo-v2") || a.body.contains("Hostname=echo-v2") {
        Some("echo-v2")
    } else {
        None
    }
}

/// Brings up the suite's cluster and waits until the waypoint serves.
pub fn start(state_dir: PathBuf, bin_dir: PathBuf) -> Result<Suite, String> {
    let cluster = up_from("l7", MANIFESTS, state_dir, bin_dir)?;
    cluster.wait_listening(8080, Duration::from_secs(15))?;
    for pod in ["client", "consumer", "echo-v1-1", "echo-v2-1"] {
        eventually(CONVERGE, || {
            served(&cluster, pod)?
                .then_some(())
                .ok_or(format!("{pod} not served"))
        })?;
    }
    let suite = Suite {
        cluster,
        applied: Vec::new(),
    };
    // Ready when a request to the Service is answered through the waypoint (it adds a request id).
    eventually(Duration::from_secs(30), || {
        let a = suite.get("echo", 80, "/")?;
        a.request_header("x-request-id").map(|_| ()).ok_or(format!(
            "HTTP {} not through the waypoint: {}",
            a.status, a.body
        ))
    })?;
    Ok(suite)
}

pub fn cases() -> Vec<Case<Suite>> {
    let mut cases = routing::cases();
    cases.extend(traffic::cases());
    cases.extend(resilience::cases());
    cases.extend(policy::cases());
    cases.extend(observe_l7::cases());
    // Last: by now the suite has made requests, denials and refusals, so every series exists.
    cases.extend(dashboards::cases());
    cases.extend(web_view::cases());
    cases
}

/// Runs every case; routes and policies a case applied are removed after it.
pub fn run(state_dir: PathBuf, bin_dir: PathBuf, keep: bool) -> Result<crate::Outcome, String> {
    println!("L7 conformance: starting a local cluster (2 nodes) with a waypoint");
    let mut suite = match start(state_dir.clone(), bin_dir) {
        Ok(s) => s,
        Err(e) => {
            let logs = cluster::Cluster::load(&state_dir)
                .map(|c| waypoint_logs(&c))
                .unwrap_or_default();
            let _ = cluster::down(&state_dir);
            return Err(format!("{e}\n{logs}"));
        }
    };
    let outcome = crate::run_cases_with(&mut suite, &cases(), |s| s.clean());
    if !outcome.failed.is_empty() {
        eprintln!("{}", waypoint_logs(&suite.cluster));
    }
    if !keep {
        cluster::down(&state_dir)?;
    }
    Ok(outcome)
}

fn waypoint_logs(c: &Cluster) -> String {
    let mut out = format!(
        "--- istiod-lite ({}):\n{}\n",
        c.control.log.display(),
        c.control.log_tail(15)
    );
    for pod in c.pods.iter().filter(|p| p.waypoint().is_some()) {
        for proc in &pod.processes {
            out.push_str(&format!(
                "--- waypoint {} ({}):\n{}\n",
                pod.key(),
                proc.log.display(),
                proc.log_tail(25)
            ));
        }
    }
    for n in &c.nodes {
        out.push_str(&format!(
            "--- ztunnel {}:\n{}\n",
            n.name,
            n.ztunnel.log_tail(10)
        ));
    }
    out
}

//! The samples suite: Istio's own samples, as published, on the local cluster. Bookinfo and
//! the `curl` client come up unmodified (`--stand-in echo` serves the ports of images that
//! cannot run here; `curl`'s `/bin/sleep infinity` runs as written), plus a pod running as the
//! identity Istio's Bookinfo gateway has (`bookinfo-gateway-istio`). Calls are made the way a
//! user makes them: `meshctl exec POD -- curl http://<short name>:9080/`, so the pod's own
//! resolv.conf, its search list, the DNS capture and ztunnel's DNS proxy are all on the path.
//! Then the L4 policies of Istio's ambient security tutorial are applied and every
//! caller → callee verdict is checked.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use meshctl::cluster::stand_in::StandIn;
use meshctl::cluster::{self, Cluster};

use crate::support::*;
use crate::Case;

const BOOKINFO: &str = include_str!("../manifests/bookinfo.yaml");
const CURL: &str = include_str!("../manifests/curl.yaml");

/// `kubectl label namespace default istio.io/dataplane-mode=ambient`, and a pod running as the
/// service account Istio's Bookinfo gateway (`bookinfo-gateway` of class `istio`) gets.
const AMBIENT_DEFAULT: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bookinfo-gateway-istio}
---
apiVersion: v1
kind: Pod
metadata:
  name: bookinfo-gateway
  labels: {gateway.networking.k8s.io/gateway-name: bookinfo-gateway}
spec:
  serviceAccountName: bookinfo-gateway-istio
  containers: [{name: istio-proxy, image: docker.io/istio/proxyv2, command: ["sleep", "infinity"]}]
"#;

/// The ambient security tutorial's L4 policies: productpage only from the gateway's identity,
/// details and reviews only from productpage's.
const TUTORIAL_POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: productpage-ztunnel
  namespace: default
spec:
  selector:
    matchLabels:
      app: productpage
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/bookinfo-gateway-istio
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: details-ztunnel
  namespace: default
spec:
  selector:
    matchLabels:
      app: details
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/bookinfo-productpage
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: reviews-ztunnel
  namespace: default
spec:
  selector:
    matchLabels:
      app: reviews
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/bookinfo-productpage
"#;

pub struct Suite {
    pub cluster: Cluster,
    bin_dir: PathBuf,
}

/// What curl saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// HTTP 200, with the body.
    Allowed(String),
    /// The connection was reset or closed without an answer: what an L4 deny looks like.
    Denied,
}

impl Suite {
    /// `meshctl exec POD -- ARGV`, as a user runs it.
    fn exec(&self, pod: &str, argv: &[&str]) -> Result<std::process::Output, String> {
        Command::new(self.bin_dir.join("meshctl"))
            .arg("exec")
            .arg("--state-dir")
            .arg(&self.cluster.dir)
            .arg(pod)
            .arg("--")
            .args(argv)
            .output()
            .map_err(|e| format!("meshctl exec {pod}: {e}"))
    }

    /// `curl http://<host>:9080/` from `pod`. A resolution failure or a timeout is an error,
    /// never a verdict: only a reset or an empty reply counts as denied.
    pub fn curl(&self, pod: &str, host: &str) -> Result<Verdict, String> {
        let url = format!("http://{host}:9080/");
        let out = self.exec(
            pod,
            &["curl", "-sS", "-m", "5", "-w", "\n%{http_code}", &url],
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => {
                let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
                if code == "200" {
                    Ok(Verdict::Allowed(body.to_owned()))
                } else {
                    Err(format!("{pod} -> {url}: HTTP {code}: {body}"))
                }
            }
            // 52: empty reply; 56: connection reset.
            Some(52 | 56) => Ok(Verdict::Denied),
            other => Err(format!(
                "{pod} -> {url}: curl exited {other:?}: {}",
                stderr.trim()
            )),
        }
    }

    /// The verdict must become `want` (policies reach each node's ztunnel on their own).
    fn expect(&self, from: &str, to: &str, allow: bool) -> Result<(), String> {
        eventually(CONVERGE, || match self.curl(from, to)? {
            Verdict::Allowed(body) if allow => {
                let host = meshctl::echo::field(&body, "Hostname").unwrap_or_default();
                host.starts_with(&format!("{to}-"))
                    .then_some(())
                    .ok_or(format!("{from} -> {to}: answered by {host:?}"))
            }
            Verdict::Denied if !allow => Ok(()),
            v => Err(format!(
                "{from} -> {to}: {} where Istio {}",
                if matches!(v, Verdict::Denied) {
                    "denied"
                } else {
                    "allowed"
                },
                if allow { "allows" } else { "denies" }
            )),
        })
    }
}

/// Brings up Bookinfo, curl and the gateway's identity (replacing any local cluster).
pub fn start(state_dir: PathBuf, bin_dir: PathBuf) -> Result<Suite, String> {
    let yaml = format!("{AMBIENT_DEFAULT}---\n{BOOKINFO}---\n{CURL}");
    let cluster = up_with(
        "samples",
        &yaml,
        state_dir,
        bin_dir.clone(),
        Some(StandIn::Echo),
    )?;
    // Bookinfo's stand-ins listen on 9080 (curl and the gateway pod only sleep).
    for pod in cluster.pods.iter().filter(|p| p.name.contains("-v")) {
        eventually(Duration::from_secs(15), || {
            let local = std::net::SocketAddr::from(([127, 0, 0, 1], 9080));
            cluster
                .http_get(&pod.name, local, "/")
                .map_err(|e| format!("{} not listening on 9080: {e}", pod.name))
        })?;
    }
    for pod in &cluster.pods {
        eventually(CONVERGE, || {
            served(&cluster, &pod.name)?
                .then_some(())
                .ok_or(format!("{} not served", pod.name))
        })?;
    }
    Ok(Suite { cluster, bin_dir })
}

pub fn cases() -> Vec<Case<Suite>> {
    vec![
        Case {
            name: "Istio's Bookinfo comes up unmodified; each pod reports its version",
            run: bookinfo_versions,
        },
        Case {
            name: "pods resolve Service names in every Kubernetes form",
            run: short_names,
        },
        Case {
            name: "ambient tutorial's L4 policies: Istio's verdict for every caller",
            run: tutorial_policies,
        },
    ]
}

fn bookinfo_versions(s: &mut Suite) -> Result<(), String> {
    let pods = [
        ("details-v1-1", "v1"),
        ("ratings-v1-1", "v1"),
        ("reviews-v1-1", "v1"),
        ("reviews-v2-1", "v2"),
        ("reviews-v3-1", "v3"),
        ("productpage-v1-1", "v1"),
    ];
    for (pod, version) in pods {
        let p = s.cluster.pod(pod)?;
        let addr = std::net::SocketAddr::from((p.ip, 9080));
        let (status, body) = s
            .cluster
            .http_get("curl-1", addr, "/")
            .map_err(|e| format!("curl-1 -> {pod}: {e}"))?;
        let got = (
            meshctl::echo::field(&body, "Hostname"),
            meshctl::echo::field(&body, "Version"),
        );
        if status != 200 || got != (Some(pod), Some(version)) {
            return Err(format!("{pod}: HTTP {status}, answered as {got:?}"));
        }
    }
    Ok(())
}

fn short_names(s: &mut Suite) -> Result<(), String> {
    let vip = s
        .cluster
        .service_ip("default", "details")
        .ok_or("no Service default/details")?
        .to_string();
    for name in [
        "details",
        "details.default",
        "details.default.svc",
        "details.default.svc.cluster.local",
    ] {
        let out = s.exec("curl-1", &["getent", "hosts", name])?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.split_whitespace().next() != Some(vip.as_str()) {
            return Err(format!(
                "getent hosts {name} in curl-1: {text:?}, want {vip}"
            ));
        }
    }
    // And the way Bookinfo's productpage calls its backends: `http://details:9080`.
    s.expect("productpage-v1-1", "details", true)
}

fn tutorial_policies(s: &mut Suite) -> Result<(), String> {
    s.cluster.apply("tutorial-policies", TUTORIAL_POLICIES)?;
    let matrix = [
        ("bookinfo-gateway", "productpage", true),
        ("curl-1", "productpage", false),
        ("ratings-v1-1", "productpage", false),
        ("productpage-v1-1", "details", true),
        ("productpage-v1-1", "reviews", true),
        ("curl-1", "details", false),
        ("curl-1", "reviews", false),
        ("bookinfo-gateway", "reviews", false),
        ("details-v1-1", "reviews", false),
        // No policy selects ratings: everyone may call it.
        ("reviews-v2-1", "ratings", true),
        ("curl-1", "ratings", true),
    ];
    let mut wrong = Vec::new();
    for (from, to, allow) in matrix {
        if let Err(e) = s.expect(from, to, allow) {
            wrong.push(e);
        }
    }
    let _ = s.cluster.delete("tutorial-policies");
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

/// Runs every case against a fresh cluster, removed afterwards unless `keep`.
pub fn run(state_dir: PathBuf, bin_dir: PathBuf, keep: bool) -> Result<crate::Outcome, String> {
    println!("Samples conformance: Istio's Bookinfo and curl on a local cluster (2 nodes)");
    let mut suite = match start(state_dir.clone(), bin_dir) {
        Ok(s) => s,
        Err(e) => {
            let _ = cluster::down(&state_dir);
            return Err(e);
        }
    };
    let outcome = crate::run_cases(&mut suite, &cases());
    if !keep {
        cluster::down(&state_dir)?;
    }
    Ok(outcome)
}

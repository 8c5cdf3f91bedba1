//! The ingress suite: a Gateway API ingress gateway (a Gateway of class `istio`) in front of
//! the mesh, checked from outside the cluster with curl, as its users would check it. Each
//! case re-creates one of Gateway API's gateway conformance tests (named in the case) against
//! the local cluster: the gateway's listeners are open on a host loopback address
//! (`meshctl status` prints it), requests enter over plain HTTP or HTTPS, the gateway routes
//! them and forwards into the mesh over HBONE with its own identity.

mod routing;
mod status_check;
mod tls;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use meshctl::cluster::{self, netns, Cluster};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

use crate::support::*;
use crate::Case;

const MANIFESTS: &str = include_str!("../../manifests/ingress.yaml");
/// The gateway's namespace, name and identity (Istio's `<name>-istio` service account).
pub const GATEWAY_NS: &str = "infra";
pub const GATEWAY: &str = "gw";
pub const GATEWAY_SA: &str = "gw-istio";

/// A test CA for the listeners' certificates (nothing to do with the mesh's CA).
pub struct TestPki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestPki {
    fn new() -> Result<Self, String> {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "ingress suite test CA");
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(Self {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A serving certificate for `hosts` (DNS SANs): `(chain PEM, key PEM)`.
    pub fn leaf(&self, hosts: &[&str]) -> Result<(String, String), String> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = hosts
            .iter()
            .map(|h| {
                h.to_string()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e: rcgen::Error| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        params.distinguished_name.push(DnType::CommonName, hosts[0]);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| e.to_string())?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A Secret of type `kubernetes.io/tls`, as `kubectl create secret tls` writes it.
pub fn tls_secret(namespace: &str, name: &str, chain: &str, key: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         type: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(chain),
        b64(key)
    )
}

/// What curl got.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A field of the echo server's answer (`Hostname`, `URL`...).
    pub fn echo(&self, key: &str) -> Option<&str> {
        meshctl::echo::field(&self.body, key)
    }

    /// A request header as the backend saw it.
    pub fn request_header(&self, name: &str) -> Option<&str> {
        meshctl::echo::request_header(&self.body, name)
    }

    /// The backend pod that answered (its name, from the echo server).
    pub fn backend(&self) -> &str {
        self.echo("Hostname").unwrap_or("")
    }
}

pub struct Suite {
    pub cluster: Cluster,
    applied: Vec<String>,
    pub pki: TestPki,
    /// The test CA's certificate, for curl's --cacert.
    pub ca_file: PathBuf,
    /// The gateway's address on this machine.
    pub address: Ipv4Addr,
    /// `certs/secure-example`, as applied.
    secure_secret: String,
}

impl Suite {
    /// Applies `yaml` as `name` (removed again after the case).
    pub fn apply(&mut self, name: &str, yaml: &str) -> Result<(), String> {
        self.cluster.apply(name, yaml)?;
        self.applied.push(name.to_owned());
        Ok(())
    }

    /// Replaces `infra/wildcard-example` with a new key and certificate (as cert-manager
    /// renews a Secret).
    pub fn rotate_wildcard(&self) -> Result<(), String> {
        self.cluster
            .apply(SECRETS, &secrets(&self.pki, &self.secure_secret)?)
    }

    fn clean(&mut self) {
        for name in std::mem::take(&mut self.applied) {
            let _ = self.cluster.delete(&name);
        }
    }

    /// Runs curl on this machine with `args` (plus `-sS -i -m 5`) and parses the reply.
    pub fn curl(&self, args: &[&str]) -> Result<Reply, String> {
        let out = Command::new("curl")
            .args(["-sS", "-i", "-m", "5"])
            .args(args)
            .output()
            .map_err(|e| format!("curl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "curl {}: exit {:?}: {}",
                args.join(" "),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        parse_reply(&String::from_utf8_lossy(&out.stdout))
    }

    /// `GET http://<host><path>` on the gateway's `port` (the Host header says `host`).
    pub fn http(&self, port: u16, host: &str, path: &str, extra: &[&str]) -> Result<Reply, String> {
        let url = format!("http://{}:{port}{path}", self.address);
        let host_header = format!("Host: {host}");
        let mut args = vec!["-H", &host_header];
        args.extend_from_slice(extra);
        args.push(&url);
        self.curl(&args)
    }

    /// `GET https://<host><path>` on port 443, the name resolved to the gateway and the
    /// certificate verified against the test CA.
    pub fn https(&self, host: &str, path: &str) -> Result<Reply, String> {
        let url = format!("https://{host}{path}");
        let resolve = format!("{host}:443:{}", self.address);
        let ca = self.ca_file.display().to_string();
        self.curl(&["--resolve", &resolve, "--cacert", &ca, &url])
    }

    /// istiod-lite's `/debug/config` (asked from a loopback source in the fabric, as
    /// `meshctl proxy-status` asks).
    pub fn control_config(&self) -> Result<serde_json::Value, String> {
        let body = meshctl::inspect::fetch::get(
            &meshctl::inspect::fetch::From::Netns(cluster::FABRIC.to_owned()),
            std::net::SocketAddr::from((cluster::CONTROL_IP, 15014)),
            "/debug/config",
        )?;
        serde_json::from_str(&body).map_err(|e| format!("istiod-lite /debug/config: {e}"))
    }

    /// The gateway pod's Prometheus metrics.
    pub fn gateway_metrics(&self) -> Result<String, String> {
        let pod = self
            .cluster
            .pod(&format!("{GATEWAY_NS}/{GATEWAY}-istio-1"))?;
        match netns::http_get(
            &pod.netns,
            std::net::SocketAddr::from((pod.ip, 15020)),
            "/metrics",
        ) {
            Ok((200, body)) => Ok(body),
            Ok((status, _)) => Err(format!("gateway metrics: HTTP {status}")),
            Err(e) => Err(format!("gateway metrics: {e}")),
        }
    }
}

/// curl -i output: the last header block (after any `100 Continue`), then the body.
fn parse_reply(text: &str) -> Result<Reply, String> {
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP reply in {text:?}"))?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// An HTTPRoute `name` in `namespace`, from its spec in YAML flow or block form.
pub fn route(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )
}

/// The file holding the listeners' Secrets.
const SECRETS: &str = "ingress-secrets";

/// The listeners' Secrets: `infra/wildcard-example` (a new key and certificate each call) and
/// `certs/secure-example`, applied as one file (replaced whole on rotation).
fn secrets(pki: &TestPki, secure: &str) -> Result<String, String> {
    let (chain, key) = pki.leaf(&["*.example.com"])?;
    let wildcard = tls_secret(GATEWAY_NS, "wildcard-example", &chain, &key);
    Ok(format!("{wildcard}---\n{secure}"))
}

/// Brings up the suite's cluster and waits until the gateway routes a request into the mesh.
pub fn start(state_dir: PathBuf, bin_dir: PathBuf) -> Result<Suite, String> {
    let cluster = up_from("ingress", MANIFESTS, state_dir, bin_dir)?;
    let exposed = cluster
        .ingress
        .iter()
        .find(|g| g.gateway == format!("{GATEWAY_NS}/{GATEWAY}"))
        .ok_or("the gateway was not exposed on the host")?;
    let address = exposed.address;
    let pki = TestPki::new()?;
    let ca_file = cluster.dir.join("ingress-test-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).map_err(|e| e.to_string())?;
    let (chain, key) = pki.leaf(&["secure.example.org"])?;
    let secure_secret = tls_secret("certs", "secure-example", &chain, &key);
    cluster.apply(SECRETS, &secrets(&pki, &secure_secret)?)?;
    let mut suite = Suite {
        cluster,
        applied: Vec::new(),
        pki,
        ca_file,
        address,
        secure_secret,
    };
    for pod in [
        "infra-backend-v1-1",
        "infra-backend-v2-1",
        "web-1",
        "client",
    ] {
        eventually(CONVERGE, || {
            served(&suite.cluster, pod)?
                .then_some(())
                .ok_or(format!("{pod} not served"))
        })?;
    }
    // Ready when a route applied now carries a request through.
    suite.apply(
        "ready",
        &route(
            GATEWAY_NS,
            "ready",
            "  parentRefs: [{name: gw, sectionName: http}]\n  hostnames: [ready.test]\n  \
             rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]\n",
        ),
    )?;
    eventually(Duration::from_secs(30), || {
        let r = suite.http(80, "ready.test", "/", &[])?;
        (r.status == 200)
            .then_some(())
            .ok_or(format!("HTTP {}: {}", r.status, r.body))
    })?;
    suite.clean();
    Ok(suite)
}

pub fn cases() -> Vec<Case<Suite>> {
    let mut cases = routing::cases();
    cases.extend(tls::cases());
    cases
}

/// Runs every case; what a case applied is removed after it.
pub fn run(state_dir: PathBuf, bin_dir: PathBuf, keep: bool) -> Result<crate::Outcome, String> {
    println!("ingress conformance: starting a local cluster (2 nodes) with an ingress gateway");
    let mut suite = match start(state_dir.clone(), bin_dir) {
        Ok(s) => s,
        Err(e) => {
            let logs = Cluster::load(&state_dir)
                .map(|c| gateway_logs(&c))
                .unwrap_or_default();
            let _ = cluster::down(&state_dir);
            return Err(format!("{e}\n{logs}"));
        }
    };
    let outcome = crate::run_cases_with(&mut suite, &cases(), |s| s.clean());
    if !outcome.failed.is_empty() {
        eprintln!("{}", gateway_logs(&suite.cluster));
    }
    if !keep {
        cluster::down(&state_dir)?;
    }
    Ok(outcome)
}

fn gateway_logs(c: &Cluster) -> String {
    let mut out = format!("--- istiod-lite:\n{}\n", c.control.log_tail(15));
    for pod in c.pods.iter().filter(|p| p.waypoint().is_some()) {
        for proc in &pod.processes {
            out.push_str(&format!("--- {}:\n{}\n", pod.key(), proc.log_tail(25)));
        }
    }
    for g in &c.ingress {
        out.push_str(&format!(
            "--- forwarder {}:\n{}\n",
            g.gateway,
            g.forwarder.log_tail(5)
        ));
    }
    out
}

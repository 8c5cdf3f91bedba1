//! The demo's ingress: a certificate for `shop.example.com` from a CA made for the run (the
//! Secret the example's HTTPS listener names), then requests from this machine, outside the
//! cluster, through the ingress gateway's host address with curl.

use std::fmt::Write;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

use crate::cluster::Cluster;

pub const HOST: &str = "shop.example.com";
const GATEWAY: &str = "shop/shop-gateway";

/// `(CA certificate PEM, the Secret shop/shop-example-tls as YAML)`.
pub fn certificate() -> Result<(String, String), String> {
    let err = |e: rcgen::Error| format!("demo certificate: {e}");
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "meshctl demo CA");
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_pem = ca.self_signed(&ca_key).map_err(err)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::DnsName(HOST.try_into().map_err(err)?)];
    leaf.distinguished_name.push(DnType::CommonName, HOST);
    let key = KeyPair::generate().map_err(err)?;
    let cert = leaf.signed_by(&key, &issuer).map_err(err)?;
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: shop-example-tls, namespace: shop}}\n\
         type: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(cert.pem()),
        b64(key.serialize_pem())
    );
    Ok((ca_pem, secret))
}

/// curl from this machine: `(status, the echo's Hostname=, Location)` or curl's error.
fn curl(args: &[&str]) -> Result<(u16, String, String), String> {
    let out = Command::new("curl")
        .args(["-sS", "-i", "-m", "5"])
        .args(args)
        .output()
        .map_err(|e| format!("curl: {e} (scripts/install-test-deps installs it)"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once([':', '='])?;
                k.eq_ignore_ascii_case(prefix).then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    Ok((status, field("Hostname"), field("location")))
}

/// Requests from outside through the gateway, reported in `out`.
pub fn traffic(cluster: &Cluster, out: &mut String, ca_file: &Path) {
    let Some(gateway) = cluster.ingress.iter().find(|g| g.gateway == GATEWAY) else {
        return;
    };
    let address = gateway.address;
    let resolve = format!("{HOST}:443:{address}");
    let ca = ca_file.display().to_string();
    let _ = writeln!(
        out,
        "\nIngress (from this machine, outside the cluster, through gateway {GATEWAY} at {address}):"
    );
    let url = format!("https://{HOST}/");
    // The gateway's first configuration may take a moment after it reports ready.
    let mut result = curl(&["--resolve", &resolve, "--cacert", &ca, &url]);
    for _ in 0..20 {
        if matches!(result, Ok((200, _, _))) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        result = curl(&["--resolve", &resolve, "--cacert", &ca, &url]);
    }
    match result {
        Ok((status, pod, _)) => {
            let _ = writeln!(
                out,
                "  curl {url} -> HTTP {status}, answered by shop/{pod} (TLS verified against the demo CA; \
                 into the mesh over HBONE as spiffe://cluster.local/ns/shop/sa/shop-gateway-istio)"
            );
        }
        Err(e) => {
            let _ = writeln!(out, "  curl {url} -> failed: {e}");
        }
    }
    let plain = format!("http://{address}/cart");
    let host = format!("Host: {HOST}");
    match curl(&["-H", &host, &plain]) {
        Ok((status, _, location)) => {
            let _ = writeln!(
                out,
                "  curl http://{HOST}/cart -> HTTP {status} Location: {location} (the HTTP listener redirects)"
            );
        }
        Err(e) => {
            let _ = writeln!(out, "  curl http://{HOST}/cart -> failed: {e}");
        }
    }
    let _ = writeln!(
        out,
        "  try it: curl --resolve {resolve} --cacert {ca} https://{HOST}/"
    );
}

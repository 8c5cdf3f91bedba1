//! Services as the waypoint sees them: addresses, ports with their application protocol, and the
//! endpoints (pods) behind them with the identity each must prove.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(default = "super::default_namespace")]
    pub namespace: String,
    /// Defaults to `<name>.<namespace>.svc.cluster.local`.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Cluster IPs; CONNECTs addressed to one of them are service-addressed.
    #[serde(default)]
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Extra identities an endpoint may present (Istio's `subjectAltNames`), as principals.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

impl Service {
    pub fn hostname(&self) -> String {
        self.hostname
            .clone()
            .unwrap_or_else(|| format!("{}.{}.svc.cluster.local", self.name, self.namespace))
    }

    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    /// The endpoints' port; defaults to `port`.
    #[serde(default)]
    pub target_port: Option<u16>,
    /// The port's name; Istio reads the protocol from its prefix (`http-web`, `grpc`...).
    #[serde(default)]
    pub name: Option<String>,
    /// Kubernetes' `appProtocol`; wins over the name.
    #[serde(default)]
    pub app_protocol: Option<String>,
}

/// How the waypoint treats a port's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (or HTTP/2 if the client speaks it: detected per connection).
    Http,
    /// HTTP/2 (cleartext inside the tunnel); upstream too.
    Http2,
    /// gRPC: HTTP/2 with trailers.
    Grpc,
    /// Opaque TCP: forwarded as bytes, L4 policy only.
    Tcp,
    /// Unknown: detected from the first bytes (an HTTP/1 request line or the HTTP/2 preface).
    Auto,
}

impl ServicePort {
    pub fn target_port(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }

    /// `appProtocol` first, then the port name's prefix, as Istio's protocol selection does.
    pub fn protocol(&self) -> Protocol {
        if let Some(p) = self.app_protocol.as_deref() {
            if let Some(known) = protocol_name(p) {
                return known;
            }
        }
        if let Some(name) = self.name.as_deref() {
            let prefix = name.split('-').next().unwrap_or(name);
            if let Some(known) = protocol_name(prefix) {
                return known;
            }
        }
        Protocol::Auto
    }
}

fn protocol_name(name: &str) -> Option<Protocol> {
    Some(match name.to_ascii_lowercase().as_str() {
        "http" | "http1" | "kubernetes.io/http" => Protocol::Http,
        "http2" | "h2c" | "kubernetes.io/h2c" => Protocol::Http2,
        "grpc" | "grpc-web" => Protocol::Grpc,
        "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Protocol::Tcp,
        _ => return None,
    })
}

/// A pod behind a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    pub address: IpAddr,
    /// Pod name, for metrics and the echo of who answered.
    #[serde(default)]
    pub name: Option<String>,
    /// Defaults to the Service's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The identity it proves on HBONE: `spiffe://<td>/ns/<namespace>/sa/<serviceAccount>`.
    #[serde(default = "default_service_account")]
    pub service_account: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Unhealthy endpoints take no new requests.
    #[serde(default = "yes")]
    pub healthy: bool,
    /// Where its ztunnel accepts HBONE for it; defaults to the endpoint's own `address:15008`.
    #[serde(default)]
    pub hbone_port: Option<u16>,
    /// How it is reached: over HBONE (a pod in the mesh, the default) or plain TCP (a pod
    /// outside it, as Istio's waypoint reaches endpoints without a tunnel).
    #[serde(default)]
    pub protocol: TunnelProtocol,
}

/// How the waypoint reaches an endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TunnelProtocol {
    #[default]
    HBONE,
    TCP,
}

fn default_service_account() -> String {
    "default".to_owned()
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: Option<&str>, app: Option<&str>) -> ServicePort {
        ServicePort {
            port: 80,
            target_port: None,
            name: name.map(str::to_owned),
            app_protocol: app.map(str::to_owned),
        }
    }

    #[test]
    fn protocol_from_app_protocol_then_name() {
        assert_eq!(port(None, Some("grpc")).protocol(), Protocol::Grpc);
        assert_eq!(port(Some("tcp-x"), Some("http")).protocol(), Protocol::Http);
        assert_eq!(port(Some("http2-api"), None).protocol(), Protocol::Http2);
        assert_eq!(port(Some("grpc"), None).protocol(), Protocol::Grpc);
        assert_eq!(port(Some("redis"), None).protocol(), Protocol::Tcp);
        assert_eq!(port(Some("web"), None).protocol(), Protocol::Auto);
        assert_eq!(
            port(None, Some("kubernetes.io/h2c")).protocol(),
            Protocol::Http2
        );
        assert_eq!(port(None, None).protocol(), Protocol::Auto);
    }
}

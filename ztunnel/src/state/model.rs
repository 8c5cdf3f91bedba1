//! Workloads and services as ztunnel knows them: the fields of Istio's `istio.workload.Workload`
//! and `istio.workload.Service`, in the camelCase shape of Istio ztunnel's local config file.
//! The same types are read from that file, kept in the state store and shown by `/config_dump`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a workload receives traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// Plain TCP: the workload is outside the mesh (or not yet captured).
    #[default]
    TCP,
    /// HBONE on `<ip>:15008`.
    HBONE,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthStatus {
    #[default]
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    #[default]
    Standard,
    HostNetwork,
}

/// Service port → target port.
pub type PortMap = BTreeMap<u16, u16>;

/// One workload (a pod, or a VM entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    #[serde(default)]
    pub workload_ips: Vec<IpAddr>,
    /// Traffic addressed to this workload goes through this waypoint (unless a service
    /// waypoint already applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
    /// Accepted for compatibility; multi-network gateways are not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_gateway: Option<serde_json::Value>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub network_mode: NetworkMode,
    /// Unique key; `<namespace>/<name>` when not given.
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub name: String,
    pub namespace: String,
    /// The mesh's trust domain when empty.
    #[serde(default)]
    pub trust_domain: String,
    /// `default` when empty.
    #[serde(default)]
    pub service_account: String,
    #[serde(default)]
    pub network: String,
    /// Owning workload (deployment) name, for metrics.
    #[serde(default)]
    pub workload_name: String,
    #[serde(default)]
    pub workload_type: String,
    #[serde(default)]
    pub canonical_name: String,
    #[serde(default)]
    pub canonical_revision: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub native_tunnel: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_tunnel: Option<serde_json::Value>,
    /// WorkloadSelector policies bound to this workload, as `namespace/name`.
    #[serde(default)]
    pub authorization_policies: Vec<String>,
    #[serde(default)]
    pub status: HealthStatus,
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<serde_json::Value>,
    /// Services this workload backs: `"namespace/hostname": {servicePort: targetPort}`.
    #[serde(default)]
    pub services: BTreeMap<String, PortMap>,
    #[serde(default = "one")]
    pub capacity: u32,
}

fn one() -> u32 {
    1
}

impl Workload {
    /// The name metrics use: the owning workload's, else the pod's.
    pub fn metrics_name(&self) -> &str {
        if self.workload_name.is_empty() {
            &self.name
        } else {
            &self.workload_name
        }
    }

    pub fn canonical_service(&self) -> &str {
        if self.canonical_name.is_empty() {
            self.metrics_name()
        } else {
            &self.canonical_name
        }
    }
}

/// An address on a network: written `"network/ip"` (or just `ip` on the default network).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    pub network: String,
    pub ip: IpAddr,
}

impl FromStr for NetworkAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (network, ip) = match s.rsplit_once('/') {
            Some((n, ip)) => (n, ip),
            None => ("", s),
        };
        let ip = ip
            .parse()
            .map_err(|_| format!("{s:?} is not \"network/ip\" (e.g. \"/10.96.0.10\")"))?;
        Ok(Self {
            network: network.to_owned(),
            ip,
        })
    }
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.ip)
    }
}

impl Serialize for NetworkAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NetworkAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a waypoint is (Istio's `GatewayAddress`): a Service by namespace and hostname (load
/// balanced over its endpoints) or one address, and the port its HBONE listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAddress {
    pub destination: GatewayDestination,
    #[serde(default = "hbone_port")]
    pub hbone_mtls_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum GatewayDestination {
    Hostname(NamespacedHostname),
    Address(NetworkAddress),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespacedHostname {
    pub namespace: String,
    pub hostname: String,
}

fn hbone_port() -> u16 {
    meshcore::hbone::HBONE_PORT
}

/// A Kubernetes Service (or ServiceEntry): virtual IPs in front of workloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    #[serde(default)]
    pub vips: Vec<NetworkAddress>,
    #[serde(default)]
    pub ports: PortMap,
    /// Endpoints come from the workloads' `services` maps; an explicit map is accepted and
    /// ignored, as Istio's ztunnel does for local config.
    #[serde(default, skip_serializing)]
    pub endpoints: Option<serde_json::Value>,
    /// Identities the service's endpoints may present besides their own service account.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// Traffic addressed to this service goes through this waypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_families: Option<serde_json::Value>,
    #[serde(default)]
    pub canonical: bool,
}

impl Service {
    /// `namespace/hostname`, the key workloads use to name the services they back.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

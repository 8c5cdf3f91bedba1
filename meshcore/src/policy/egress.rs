//! Egress policy: what a source workload may connect to, checked by its own ztunnel before a
//! tunnel or plain connection is opened. Istio's ambient mesh binds authorization to the
//! destination only; this model carries Cilium's egress rules (`egress`, `egressDeny`,
//! `enableDefaultDeny.egress`), which istiod-lite resolves from label selectors, Services and
//! entities into what a source ztunnel can check against a connection:
//!
//! - the destination the application dialled (`ip:port`), and once resolved, the endpoint the
//!   connection goes to (a workload's address and port, whose identity the HBONE handshake then
//!   proves, so an allowed address cannot be impersonated by a pod without that identity);
//! - the Service whose VIP was dialled, if any;
//! - the names the source workload resolved through ztunnel's DNS proxy (for `toFQDNs`).
//!
//! Semantics (Cilium's): a workload selected by an ALLOW policy with `default_deny` is refused
//! every connection no ALLOW rule of a policy selecting it matches; any matching DENY rule
//! refuses, whatever allows it; a workload no policy selects (or selected only by DENY policies
//! or by ALLOW policies without `default_deny`) may connect anywhere a DENY rule does not
//! refuse. A rule's peers are ORed and its ports are ORed; both lists empty match everything.
//!
//! The wire form is [`crate::api::egress::EgressPolicy`] carrying this as JSON. [`engine`]
//! compiles the policies selecting one source workload and decides a connection.

pub mod engine;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use super::Action;
pub use engine::{
    CompiledEgress, EgressDecision, EgressLookup, EgressReason, EgressRequest, NameMatcher,
    NoLookup, ServiceRef,
};

/// One policy (one CiliumNetworkPolicy rule set's egress or egressDeny part).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressPolicy {
    /// `cilium-egress-<name>` / `cilium-egress-deny-<name>` (see docs/cilium.md).
    pub name: String,
    pub namespace: String,
    /// The source workloads it applies to, by workload uid (as in the Address resource).
    pub workloads: Vec<String>,
    pub action: Action,
    /// ALLOW only: selecting a workload makes its egress default-deny (Cilium's
    /// `enableDefaultDeny.egress`, true unless written false).
    #[serde(default = "yes")]
    pub default_deny: bool,
    /// ORed. An ALLOW policy without rules allows nothing (and still default-denies).
    #[serde(default)]
    pub rules: Vec<EgressRule>,
}

fn yes() -> bool {
    true
}

impl EgressPolicy {
    /// `namespace/name`, how logs, metrics and dumps name the policy.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Checks what serde cannot: names present, port ranges in order, `except` inside its
    /// CIDR, FQDN selectors that say something and parse. The error names the field
    /// (`rules[1].to[0]: ...`).
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.namespace.is_empty() {
            return Err("name and namespace must not be empty".into());
        }
        for (i, rule) in self.rules.iter().enumerate() {
            for (j, p) in rule.ports.iter().enumerate() {
                if p.end_port.is_some_and(|end| end < p.port) {
                    return Err(format!(
                        "rules[{i}].ports[{j}]: endPort {} is below port {}",
                        p.end_port.unwrap_or_default(),
                        p.port
                    ));
                }
            }
            for (j, peer) in rule.to.iter().enumerate() {
                peer.validate()
                    .map_err(|e| format!("rules[{i}].to[{j}]: {e}"))?;
            }
        }
        Ok(())
    }
}

impl Peer {
    fn validate(&self) -> Result<(), String> {
        match self {
            Peer::Cidr { cidr, except } => {
                for e in except {
                    if !cidr.contains(e) {
                        return Err(format!("cidr {cidr}: except {e} is not inside it"));
                    }
                }
                Ok(())
            }
            Peer::Fqdn {
                match_name,
                match_pattern,
            } => {
                if match_name.is_none() && match_pattern.is_none() {
                    return Err("fqdn: one of matchName or matchPattern is required".into());
                }
                if let Some(n) = match_name {
                    NameMatcher::name(n).map_err(|e| format!("fqdn: matchName {n:?}: {e}"))?;
                }
                if let Some(p) = match_pattern {
                    NameMatcher::pattern(p)
                        .map_err(|e| format!("fqdn: matchPattern {p:?}: {e}"))?;
                }
                Ok(())
            }
            Peer::Service { namespace, name } if namespace.is_empty() || name.is_empty() => {
                Err("service: namespace and name must not be empty".into())
            }
            Peer::Workloads(_) | Peer::Service { .. } | Peer::Entity(_) => Ok(()),
        }
    }
}

/// A rule: the destination must match one of `to` (any, when empty) and its port one of `ports`
/// (any, when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
}

/// A destination port or range (`port` to `end_port` inclusive). The port compared is the
/// endpoint's (the Service's target port when a VIP was dialled), as Cilium applies policy
/// after service translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRange {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        port >= self.port && port <= self.end_port.unwrap_or(self.port)
    }
}

/// Where a connection may (or may not) go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum Peer {
    /// Workloads (`toEndpoints` resolved by istiod-lite): the endpoint's address is one of
    /// these. Kept current by istiod-lite as pods come and go.
    Workloads(Vec<IpAddr>),
    /// `toCIDR` / `toCIDRSet`: the endpoint's address is in `cidr` and in none of `except`.
    Cidr {
        cidr: IpNet,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        except: Vec<IpNet>,
    },
    /// `toServices` (`k8sService`): the connection was addressed to this Service's VIP, or goes
    /// to one of its endpoints.
    Service { namespace: String, name: String },
    /// `toFQDNs`: the dialled address is one the source workload got, within its TTL, in an
    /// answer from ztunnel's DNS proxy for a name matching `match_name` (exact, case-insensitive,
    /// a trailing dot ignored) or `match_pattern` (`*` matches any run of characters within one
    /// label, `**.` one or more leading labels (not the bare suffix), `*` alone any name, as
    /// Cilium's patterns). Written `matchName` / `matchPattern` (camelCase, like every field).
    Fqdn {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        match_name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        match_pattern: Option<String>,
    },
    /// `toEntities`.
    Entity(Entity),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Entity {
    /// Anywhere.
    All,
    /// Any workload or Service of the mesh's view (an address ztunnel knows).
    Cluster,
    /// Anywhere else: an address ztunnel knows no workload or Service at.
    World,
}

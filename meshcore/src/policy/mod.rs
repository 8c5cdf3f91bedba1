//! L4 authorization: the policy model ztunnel receives (Istio's `istio.security.Authorization`,
//! in the camelCase shape of ztunnel's local config) and the engine that decides a connection.
//!
//! Semantics (AuthorizationPolicy as Istio's ztunnel enforces it):
//! - a policy's rules are ORed, a rule's clauses ANDed, a clause's matches ORed; inside one
//!   match every non-empty field must hold (values of one field ORed, `not` forms must all fail);
//! - a rule with no clauses matches everything; a match with no fields matches nothing;
//!   a policy with no rules matches nothing (so an ALLOW `spec: {}` allows nothing);
//! - any matching DENY denies; else no ALLOW policy means allow; else some ALLOW must match.
//!
//! Pure code: no sockets, no clocks. [`engine`] compiles the policies that apply to one workload
//! into an index so a decision is a few hash lookups however many policies exist.

pub mod egress;
pub mod engine;
pub mod explain;
mod rule_index;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::identity::SpiffeId;

pub use engine::{CompiledPolicies, Decision, Reason, Verdict};

/// Where a policy applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Every workload of the mesh (a policy in the root namespace).
    Global,
    /// Every workload of the policy's namespace.
    Namespace,
    /// Only workloads that list the policy (`authorizationPolicies: ["ns/name"]`).
    WorkloadSelector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
}

/// One AuthorizationPolicy in its L4 form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    /// rules → clauses → matches.
    #[serde(default)]
    pub rules: Vec<Vec<Vec<Match>>>,
    #[serde(default)]
    pub dry_run: bool,
}

impl Authorization {
    /// `namespace/name`, how logs, metrics and workloads refer to the policy.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One match: every non-empty field must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_source_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ports: Vec<u16>,
}

impl Match {
    pub fn is_empty(&self) -> bool {
        *self == Match::default()
    }

    /// Whether this match holds for the connection.
    pub fn matches(&self, conn: &Connection<'_>) -> bool {
        if self.is_empty() {
            return false;
        }
        // As Istio: without an identity the namespace is "" and no principal condition holds.
        let ns = conn.identity.map(SpiffeId::namespace).unwrap_or("");
        field(&self.destination_ips, &self.not_destination_ips, |n| {
            n.contains(&conn.destination.ip())
        }) && field(&self.source_ips, &self.not_source_ips, |n| {
            n.contains(&conn.source_ip)
        }) && field(&self.destination_ports, &self.not_destination_ports, |p| {
            *p == conn.destination.port()
        }) && field(&self.service_accounts, &self.not_service_accounts, |sa| {
            sa.matches(conn.identity)
        }) && field(&self.principals, &self.not_principals, |m| {
            conn.principal.is_some_and(|p| m.matches(p))
        }) && field(&self.namespaces, &self.not_namespaces, |m| m.matches(ns))
    }
}

/// A field with its `not` form: some positive value must hold (if any are listed) and no
/// negative value may hold.
fn field<T>(positive: &[T], negative: &[T], holds: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&holds)) && !negative.iter().any(&holds)
}

/// A string condition, written in YAML as a tag: `!Exact v`, `!Prefix v`, `!Suffix v`,
/// `!Presence []`. Principals are compared without `spiffe://`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Any non-empty value.
    Presence(),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(v) => value == v,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence() => !value.is_empty(),
        }
    }
}

/// A service account in a namespace; the trust domain is not compared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

impl ServiceAccountMatch {
    fn matches(&self, id: Option<&SpiffeId>) -> bool {
        id.is_some_and(|id| {
            id.namespace() == self.namespace && id.service_account() == self.service_account
        })
    }
}

/// What the engine sees of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    pub source_ip: IpAddr,
    /// The destination workload address and port the client asked for.
    pub destination: SocketAddr,
    /// The verified peer identity; `None` for plaintext.
    pub identity: Option<&'a SpiffeId>,
    /// The identity's principal form (`td/ns/x/sa/y`), computed once by the caller.
    pub principal: Option<&'a str>,
}

impl fmt::Display for Connection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}({})->{}",
            self.source_ip,
            self.principal.unwrap_or("no identity"),
            self.destination
        )
    }
}

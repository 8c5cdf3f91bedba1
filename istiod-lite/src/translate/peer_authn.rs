//! PeerAuthentication → the DENY policies through which ztunnel enforces STRICT mTLS.
//!
//! The effective mode of a workload follows Istio's precedence: a PeerAuthentication selecting
//! the workload, else its namespace's (no selector), else the mesh's (root namespace, no
//! selector), else PERMISSIVE. `DISABLE` means PERMISSIVE in ambient (ztunnel always offers
//! mTLS). `portLevelMtls` (with a selector only) overrides the mode per workload port.
//!
//! STRICT becomes "deny any connection without a peer identity" (plaintext on 15006): one
//! shared policy for plain STRICT workloads, and one per distinct port-level variant, all bound
//! to the workloads they apply to (WorkloadSelector scope), so a narrower PERMISSIVE can
//! override a broader STRICT, which DENY policies alone could not express.

use std::collections::BTreeMap;

use meshcore::policy::{Action, Authorization, Match, Scope, StringMatch};

use crate::crd::security::{MtlsMode, PeerAuthenticationSpec};

/// Name of the shared policy for STRICT workloads (in the root namespace).
pub const STATIC_STRICT: &str = "istio_converted_static_strict";

/// One PeerAuthentication as the sources hold it.
#[derive(Debug, Clone)]
pub struct PeerAuthn {
    pub namespace: String,
    pub name: String,
    pub spec: PeerAuthenticationSpec,
}

/// A workload's effective mode: a default and per-port exceptions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Effective {
    pub strict: bool,
    /// Ports whose mode differs from the default (true = STRICT).
    pub ports: BTreeMap<u16, bool>,
}

fn mode_of(pa: &PeerAuthn) -> MtlsMode {
    pa.spec.mtls.as_ref().map(|m| m.mode).unwrap_or_default()
}

fn selects(pa: &PeerAuthn, labels: &BTreeMap<String, String>) -> Option<bool> {
    let sel = pa
        .spec
        .selector
        .as_ref()
        .filter(|s| !s.match_labels.is_empty())?;
    Some(
        sel.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v)),
    )
}

/// The effective mode for a workload in `namespace` with `labels`. `all` is every
/// PeerAuthentication, sorted by (namespace, name) so ties resolve the same way each time.
pub fn effective(
    all: &[PeerAuthn],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    root: &str,
) -> Effective {
    let workload = all
        .iter()
        .find(|p| p.namespace == namespace && selects(p, labels) == Some(true));
    let ns_level = all
        .iter()
        .find(|p| p.namespace == namespace && selects(p, labels).is_none());
    let mesh = all
        .iter()
        .find(|p| p.namespace == root && selects(p, labels).is_none());
    let mode = [workload, ns_level, mesh]
        .into_iter()
        .flatten()
        .map(mode_of)
        .find(|m| *m != MtlsMode::Unset)
        .unwrap_or(MtlsMode::Permissive);
    let strict = mode == MtlsMode::Strict;
    let ports = workload
        .map(|w| {
            w.spec
                .port_level_mtls
                .iter()
                .filter_map(|(port, m)| {
                    let port = u16::try_from(*port).ok().filter(|&p| p != 0)?;
                    let s = match m.mode {
                        MtlsMode::Unset => return None,
                        MtlsMode::Strict => true,
                        MtlsMode::Permissive | MtlsMode::Disable => false,
                    };
                    (s != strict).then_some((port, s))
                })
                .collect()
        })
        .unwrap_or_default();
    Effective { strict, ports }
}

/// The DENY policy enforcing `e`, or `None` when nothing is STRICT.
pub fn policy_for(e: &Effective, root: &str) -> Option<Authorization> {
    let no_identity = Match {
        not_principals: vec![StringMatch::Presence()],
        ..Match::default()
    };
    let (name, ports) = if e.ports.is_empty() {
        if !e.strict {
            return None;
        }
        (STATIC_STRICT.to_owned(), None)
    } else {
        let listed: Vec<u16> = e.ports.keys().copied().collect();
        let tag = listed
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join("-");
        let (name, m) = if e.strict {
            // STRICT except the listed (PERMISSIVE) ports.
            (
                format!("{STATIC_STRICT}_except_{tag}"),
                Match {
                    not_destination_ports: listed,
                    ..Match::default()
                },
            )
        } else {
            // PERMISSIVE except the listed (STRICT) ports.
            (
                format!("{STATIC_STRICT}_ports_{tag}"),
                Match {
                    destination_ports: listed,
                    ..Match::default()
                },
            )
        };
        (name, Some(m))
    };
    let mut rule = vec![vec![no_identity]];
    rule.extend(ports.map(|m| vec![m]));
    Some(Authorization {
        name,
        namespace: root.to_owned(),
        scope: Scope::WorkloadSelector,
        action: Action::Deny,
        rules: vec![rule],
        dry_run: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use meshcore::identity::SpiffeId;
    use meshcore::policy::{CompiledPolicies, Connection};

    fn pa(ns: &str, name: &str, yaml: &str) -> PeerAuthn {
        PeerAuthn {
            namespace: ns.into(),
            name: name.into(),
            spec: serde_yaml_ng::from_str(yaml).unwrap(),
        }
    }

    fn labels(l: &[(&str, &str)]) -> BTreeMap<String, String> {
        l.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn precedence_mesh_namespace_workload() {
        let all = vec![
            pa("istio-system", "mesh", "mtls: {mode: STRICT}"),
            pa("legacy", "ns", "mtls: {mode: PERMISSIVE}"),
            pa("apps", "web", "selector: {matchLabels: {app: web}}\nmtls: {mode: DISABLE}"),
            pa("apps", "db", "selector: {matchLabels: {app: db}}\nmtls: {mode: UNSET}\nportLevelMtls: {5432: {mode: PERMISSIVE}}"),
        ];
        let e = |ns, l: &[(&str, &str)]| effective(&all, ns, &labels(l), "istio-system");
        assert!(e("apps", &[("app", "other")]).strict, "mesh STRICT");
        assert!(
            !e("legacy", &[]).strict,
            "namespace PERMISSIVE overrides mesh"
        );
        assert!(
            !e("apps", &[("app", "web")]).strict,
            "workload DISABLE = PERMISSIVE overrides mesh"
        );
        let db = e("apps", &[("app", "db")]);
        assert!(db.strict, "UNSET inherits mesh STRICT");
        assert_eq!(db.ports, BTreeMap::from([(5432, false)]));
        assert!(
            !effective(&[], "x", &labels(&[]), "istio-system").strict,
            "default PERMISSIVE"
        );
    }

    fn decide(p: &Authorization, identity: bool, port: u16) -> bool {
        let compiled = CompiledPolicies::new(vec![Arc::new(p.clone())]);
        let id = SpiffeId::new("cluster.local", "a", "b").unwrap();
        let principal = id.principal();
        compiled
            .decide(&Connection {
                source_ip: "10.0.0.1".parse().unwrap(),
                destination: SocketAddr::from(([10, 0, 0, 2], port)),
                identity: identity.then_some(&id),
                principal: identity.then_some(principal.as_str()),
            })
            .allowed()
    }

    #[test]
    fn policies_enforce_the_effective_mode() {
        assert_eq!(
            policy_for(
                &Effective {
                    strict: false,
                    ports: BTreeMap::new()
                },
                "istio-system"
            ),
            None
        );
        let strict = policy_for(
            &Effective {
                strict: true,
                ports: BTreeMap::new(),
            },
            "istio-system",
        )
        .unwrap();
        assert_eq!(strict.key(), "istio-system/istio_converted_static_strict");
        assert!(!decide(&strict, false, 80) && decide(&strict, true, 80));

        let except = policy_for(
            &Effective {
                strict: true,
                ports: BTreeMap::from([(5432, false)]),
            },
            "istio-system",
        )
        .unwrap();
        assert!(
            !decide(&except, false, 80),
            "plaintext refused on STRICT ports"
        );
        assert!(
            decide(&except, false, 5432),
            "plaintext allowed on the PERMISSIVE port"
        );
        assert!(decide(&except, true, 80));

        let only = policy_for(
            &Effective {
                strict: false,
                ports: BTreeMap::from([(9000, true)]),
            },
            "istio-system",
        )
        .unwrap();
        assert!(
            !decide(&only, false, 9000) && decide(&only, false, 80) && decide(&only, true, 9000)
        );
        assert_ne!(except.name, only.name);
    }
}

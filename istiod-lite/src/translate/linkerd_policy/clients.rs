//! Who Linkerd's authorizations admit, as Istio sources: identities, authentications,
//! ServerAuthorization clients, Server access policies.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{note, ClusterInfo, Note, LINKERD_TRUST_DOMAIN};
use crate::cluster::{Cluster, LinkerdAuthorizationPolicy, Server, ServerAuthorization};
use crate::crd::linkerd_policy::{
    canonical_kind, names_kind, MeshTlsAuthenticationSpec, Network, GROUP,
};
use crate::crd::security::Source;

/// Linkerd's default `clusterNetworks`: what its `cluster-*` access policies call the cluster.
const CLUSTER_NETWORKS: [&str; 5] = [
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fd00::/8",
];

/// Who may connect: `None` anyone; else any one of these sources (an empty list: nobody).
pub(super) type Clients = Option<Vec<Source>>;

/// Both conditions: each source of one with each of the other (their fields are disjoint:
/// identities on one side, networks on the other).
fn and(a: Clients, b: Clients) -> Clients {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => Some(
            a.iter()
                .flat_map(|x| {
                    b.iter().map(move |y| Source {
                        principals: x.principals.clone(),
                        namespaces: x.namespaces.clone(),
                        ip_blocks: y.ip_blocks.clone(),
                        not_ip_blocks: y.not_ip_blocks.clone(),
                        ..Source::default()
                    })
                })
                .collect(),
        ),
    }
}

/// One Linkerd identity: `*`, `<sa>.<ns>.serviceaccount.identity.linkerd.<td>` or
/// `*.<ns>.serviceaccount.identity.linkerd.<td>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Identity {
    Any,
    Principal(String),
    Namespace(String),
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub(super) fn identity(s: &str, info: &ClusterInfo) -> Option<Identity> {
    if s == "*" {
        return Some(Identity::Any);
    }
    let (left, td) = s.split_once(".serviceaccount.identity.linkerd.")?;
    if td.is_empty() || td.contains('*') {
        return None;
    }
    let td = if td == LINKERD_TRUST_DOMAIN {
        info.trust_domain.as_str()
    } else {
        td
    };
    let (sa, ns) = left.split_once('.')?;
    if !dns_label(ns) {
        return None;
    }
    match sa {
        // A namespace of another trust domain: pin the trust domain with a principal prefix.
        "*" if td == info.trust_domain => Some(Identity::Namespace(ns.to_owned())),
        "*" => Some(Identity::Principal(format!("{td}/ns/{ns}/sa/*"))),
        sa if sa.split('.').all(dns_label) => {
            Some(Identity::Principal(format!("{td}/ns/{ns}/sa/{sa}")))
        }
        _ => None,
    }
}

/// The sources admitting `ids` (ORed).
fn identity_sources(ids: &[Identity]) -> Vec<Source> {
    if ids.contains(&Identity::Any) {
        return vec![Source {
            principals: vec!["*".into()],
            ..Source::default()
        }];
    }
    let mut principals = BTreeSet::new();
    let mut namespaces = BTreeSet::new();
    for id in ids {
        match id {
            Identity::Principal(p) => principals.insert(p.clone()),
            Identity::Namespace(n) => namespaces.insert(n.clone()),
            Identity::Any => unreachable!(),
        };
    }
    let mut out = Vec::new();
    if !principals.is_empty() {
        out.push(Source {
            principals: principals.into_iter().collect(),
            ..Source::default()
        });
    }
    if !namespaces.is_empty() {
        out.push(Source {
            namespaces: namespaces.into_iter().collect(),
            ..Source::default()
        });
    }
    out
}

/// Identity strings (a MeshTLSAuthentication's, a ServerAuthorization's `meshTLS`): the ones
/// that map, and a message per one that does not (left out: it admits nobody here).
fn identities(strings: &[String], field: &str, info: &ClusterInfo) -> (Vec<Identity>, Vec<String>) {
    let mut out = Vec::new();
    let mut unmapped = Vec::new();
    for (i, s) in strings.iter().enumerate() {
        match identity(s, info) {
            Some(id) => out.push(id),
            None => unmapped.push(format!(
                "{field}[{i}] {s:?} is not a Linkerd workload identity (<sa>.<ns>.serviceaccount.identity.linkerd.<trust-domain>, *.<ns>.serviceaccount.identity.linkerd.<trust-domain> or *); left out, it admits nobody"
            )),
        }
    }
    (out, unmapped)
}

fn principal(info: &ClusterInfo, ns: &str, sa: &str) -> Identity {
    Identity::Principal(format!("{}/ns/{ns}/sa/{sa}", info.trust_domain))
}

/// A MeshTLSAuthentication's identities, or why Linkerd would not use it.
fn mesh_tls(
    spec: &MeshTlsAuthenticationSpec,
    namespace: &str,
    info: &ClusterInfo,
    notes: &mut Vec<String>,
) -> Result<Vec<Source>, String> {
    let (mut ids, unmapped) = identities(&spec.identities, "identities", info);
    notes.extend(unmapped);
    for (i, r) in spec.identity_refs.iter().enumerate() {
        let g = r.group.as_deref();
        match r.name.as_deref() {
            Some(name) if names_kind(g, &r.kind, "", "ServiceAccount") => {
                let ns = r.namespace.as_deref().unwrap_or(namespace);
                ids.push(principal(info, ns, name));
            }
            Some(name) if names_kind(g, &r.kind, "", "Namespace") => {
                ids.push(Identity::Namespace(name.to_owned()));
            }
            None => return Err(format!("identityRefs[{i}] has no name")),
            Some(_) => {
                return Err(format!(
                    "identityRefs[{i}]: kind {} is not ServiceAccount or Namespace",
                    canonical_kind(g, &r.kind)
                ))
            }
        }
    }
    if spec.identities.is_empty() && spec.identity_refs.is_empty() {
        return Err("no identities configured".into());
    }
    Ok(identity_sources(&ids))
}

/// An IP (a host route) or CIDR.
fn cidr(s: &str) -> Option<String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc().to_string());
    }
    s.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| IpNet::from(ip).to_string())
}

/// Networks as sources (ORed): those without exceptions together, each other one alone (its
/// exceptions must not cut into the others).
fn networks(nets: &[Network], field: &str) -> Result<Vec<Source>, String> {
    let mut plain = Vec::new();
    let mut out = Vec::new();
    for (i, n) in nets.iter().enumerate() {
        let parse = |s: &str| cidr(s).ok_or(format!("{field}[{i}]: {s:?} is not a CIDR"));
        let net = parse(&n.cidr)?;
        let except = n
            .except
            .iter()
            .map(|e| parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        if except.is_empty() {
            plain.push(net);
        } else {
            out.push(Source {
                ip_blocks: vec![net],
                not_ip_blocks: except,
                ..Source::default()
            });
        }
    }
    if !plain.is_empty() {
        out.insert(
            0,
            Source {
                ip_blocks: plain,
                ..Source::default()
            },
        );
    }
    Ok(out)
}

/// The authentications by `(namespace, name)`: their sources, or why they cannot be used.
#[derive(Default)]
pub(super) struct Authentications<'a> {
    mesh_tls: BTreeMap<(&'a str, &'a str), Result<Vec<Source>, String>>,
    networks: BTreeMap<(&'a str, &'a str), Result<Vec<Source>, String>>,
}

pub(super) fn authentications<'a>(
    cluster: &'a Cluster,
    info: &ClusterInfo,
    notes: &mut Vec<Note>,
) -> Authentications<'a> {
    let mut out = Authentications::default();
    let ns_name = |m: &'a ObjectMeta| {
        (
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
        )
    };
    for a in &cluster.mesh_tls_authentications {
        let (ns, _) = ns_name(&a.metadata);
        let mut dropped = Vec::new();
        let r = mesh_tls(&a.spec, ns, info, &mut dropped);
        notes.extend(
            dropped
                .into_iter()
                .map(|m| note("MeshTLSAuthentication", &a.metadata, m)),
        );
        match &r {
            Err(e) => notes.push(note(
                "MeshTLSAuthentication",
                &a.metadata,
                format!(
                    "{e}: not usable; authorizations requiring it are not applied (as in Linkerd)"
                ),
            )),
            Ok(s) if s.is_empty() => notes.push(note(
                "MeshTLSAuthentication",
                &a.metadata,
                "no identity left: authorizations requiring it admit nobody",
            )),
            Ok(_) => {}
        }
        out.mesh_tls.insert(ns_name(&a.metadata), r);
    }
    for a in &cluster.network_authentications {
        let r = networks(&a.spec.networks, "networks");
        if let Err(e) = &r {
            notes.push(note(
                "NetworkAuthentication",
                &a.metadata,
                format!(
                    "{e}: not usable; authorizations requiring it are not applied (as in Linkerd)"
                ),
            ));
        }
        out.networks.insert(ns_name(&a.metadata), r);
    }
    out
}

/// The clients a Linkerd AuthorizationPolicy admits; `Err`: not applied, and why.
pub(super) fn policy_clients(
    p: &LinkerdAuthorizationPolicy,
    authns: &Authentications<'_>,
    info: &ClusterInfo,
) -> Result<Clients, String> {
    let namespace = p.metadata.namespace.as_deref().unwrap_or_default();
    let mut identity: Clients = None;
    let mut network: Clients = None;
    for (i, r) in p.spec.required_authentication_refs.iter().enumerate() {
        let at = format!("requiredAuthenticationRefs[{i}]");
        let kind = canonical_kind(r.group.as_deref(), &r.kind);
        let name = r.name.as_deref().ok_or(format!("{at} has no name"))?;
        let ns = r.namespace.as_deref().unwrap_or(namespace);
        let g = r.group.as_deref();
        let (slot, found) = if names_kind(g, &r.kind, GROUP, "MeshTLSAuthentication") {
            (&mut identity, authns.mesh_tls.get(&(ns, name)))
        } else if names_kind(g, &r.kind, GROUP, "NetworkAuthentication") {
            (&mut network, authns.networks.get(&(ns, name)))
        } else if names_kind(g, &r.kind, "", "ServiceAccount") {
            if identity.is_some() {
                return Err(format!(
                    "{at}: a second identity requirement (Linkerd refuses the policy)"
                ));
            }
            identity = Some(identity_sources(&[principal(info, ns, name)]));
            continue;
        } else {
            return Err(format!(
                "{at}: kind {kind} is not MeshTLSAuthentication, NetworkAuthentication or ServiceAccount"
            ));
        };
        if slot.is_some() {
            return Err(format!(
                "{at}: a second {} requirement (Linkerd refuses the policy)",
                if kind.starts_with("Network") {
                    "network"
                } else {
                    "identity"
                }
            ));
        }
        match found {
            None => return Err(format!("{at}: {kind} {ns}/{name} does not exist")),
            Some(Err(_)) => {
                return Err(format!(
                    "{at}: {kind} {ns}/{name} is not usable (see its note)"
                ))
            }
            Some(Ok(sources)) => *slot = Some(sources.clone()),
        }
    }
    Ok(and(identity, network))
}

/// The clients a ServerAuthorization admits; `Err`: not applied, and why.
pub(super) fn server_authorization_clients(
    a: &ServerAuthorization,
    info: &ClusterInfo,
    notes: &mut Vec<String>,
) -> Result<Clients, String> {
    let namespace = a.metadata.namespace.as_deref().unwrap_or_default();
    let c = &a.spec.client;
    let identity = if c.unauthenticated {
        None
    } else if let Some(m) = &c.mesh_tls {
        if m.unauthenticated_tls {
            return Err("client.meshTLS.unauthenticatedTLS (TLS without a client identity) has no equivalent: ambient peers always have one".into());
        }
        let (mut ids, unmapped) = identities(&m.identities, "client.meshTLS.identities", info);
        notes.extend(unmapped);
        for sa in &m.service_accounts {
            ids.push(principal(
                info,
                sa.namespace.as_deref().unwrap_or(namespace),
                &sa.name,
            ));
        }
        if m.identities.is_empty() && m.service_accounts.is_empty() {
            return Err("client.meshTLS authorizes no clients (Linkerd refuses it)".into());
        }
        Some(identity_sources(&ids))
    } else {
        return Err("client has neither meshTLS nor unauthenticated (Linkerd refuses it)".into());
    };
    let network = if c.networks.is_empty() {
        None
    } else {
        Some(networks(&c.networks, "client.networks")?)
    };
    Ok(and(identity, network))
}

fn any_of(ips: &[&str]) -> Clients {
    Some(vec![Source {
        ip_blocks: ips.iter().map(|s| (*s).to_owned()).collect(),
        ..Source::default()
    }])
}

/// What a Server's `accessPolicy` admits (`None`: nobody), and a note if approximate.
pub(super) fn access_policy(s: &Server) -> (Option<Clients>, Option<String>) {
    let any_identity = || Some(identity_sources(&[Identity::Any]));
    let cluster = "\"cluster\" is taken as Linkerd's default clusterNetworks (10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12, 192.168.0.0/16, fd00::/8): approximate";
    match s.spec.access_policy.as_deref().unwrap_or("deny") {
        "deny" => (None, None),
        "all-unauthenticated" => (Some(None), None),
        "all-authenticated" => (Some(any_identity()), None),
        "cluster-unauthenticated" => (
            Some(any_of(&CLUSTER_NETWORKS)),
            Some(format!("accessPolicy cluster-unauthenticated: {cluster}")),
        ),
        "cluster-authenticated" => (
            Some(and(any_identity(), any_of(&CLUSTER_NETWORKS))),
            Some(format!("accessPolicy cluster-authenticated: {cluster}")),
        ),
        "audit" => (
            Some(None),
            Some("accessPolicy audit: ztunnel has no audit mode; every client is admitted and nothing is logged".into()),
        ),
        other => (
            None,
            Some(format!("accessPolicy {other:?} is not a Linkerd access policy; taken as deny")),
        ),
    }
}

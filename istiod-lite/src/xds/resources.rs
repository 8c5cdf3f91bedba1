//! The resources served over delta xDS: every translated object encoded once, with a content
//! version, so each client's update is a comparison of versions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use meshcore::api::{security, type_url, workload as wire};
use prost::Message;

use crate::translate::Translation;

/// One encoded resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    /// Content hash: equal versions mean equal bytes.
    pub version: String,
    pub any: prost_types::Any,
}

/// Resources by type URL, then by name.
#[derive(Debug, Clone, Default)]
pub struct ResourceSet {
    pub by_type: BTreeMap<&'static str, BTreeMap<String, Arc<Resource>>>,
    /// Bumped on every change, for the debug endpoint.
    pub generation: u64,
    /// Node name → SPIFFE IDs of the pods scheduled there: what the CA lets that node's
    /// ztunnel obtain certificates for.
    pub identities_by_node: BTreeMap<String, BTreeSet<String>>,
    /// What changed from the previous set, computed once when publishing, so a client that
    /// was up to date is updated without comparing every resource.
    pub delta: Option<Arc<SetDelta>>,
}

/// Names changed and removed, per type, since generation `from`.
#[derive(Debug, Default)]
pub struct SetDelta {
    pub from: u64,
    pub changed: BTreeMap<&'static str, (Vec<String>, Vec<String>)>,
}

/// FNV-1a: a cheap, stable content hash for versions (not for security).
fn content_version(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn resource(name: String, type_url: &str, value: Vec<u8>) -> Arc<Resource> {
    Arc::new(Resource {
        name,
        version: content_version(&value),
        any: prost_types::Any {
            type_url: type_url.to_owned(),
            value,
        },
    })
}

impl ResourceSet {
    /// Workloads are named by uid, services `namespace/hostname`, policies `namespace/name`,
    /// as Istio's ztunnel expects.
    pub fn from_translation(t: &Translation, generation: u64) -> Self {
        let mut addresses = BTreeMap::new();
        for w in &t.workloads {
            let value = wire::Address {
                r#type: Some(wire::address::Type::Workload(w.clone())),
            }
            .encode_to_vec();
            addresses.insert(
                w.uid.clone(),
                resource(w.uid.clone(), type_url::ADDRESS, value),
            );
        }
        for s in &t.services {
            let name = format!("{}/{}", s.namespace, s.hostname);
            let value = wire::Address {
                r#type: Some(wire::address::Type::Service(s.clone())),
            }
            .encode_to_vec();
            addresses.insert(name.clone(), resource(name, type_url::ADDRESS, value));
        }
        let mut authorizations = BTreeMap::new();
        for a in &t.authorizations {
            let value = security::Authorization::from(a).encode_to_vec();
            authorizations.insert(a.key(), resource(a.key(), type_url::AUTHORIZATION, value));
        }
        let mut by_type = BTreeMap::new();
        by_type.insert(type_url::ADDRESS, addresses);
        by_type.insert(type_url::AUTHORIZATION, authorizations);
        let mut identities_by_node: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for w in t.workloads.iter().filter(|w| !w.node.is_empty()) {
            identities_by_node
                .entry(w.node.clone())
                .or_default()
                .insert(format!(
                    "spiffe://{}/ns/{}/sa/{}",
                    w.trust_domain, w.namespace, w.service_account
                ));
        }
        Self {
            by_type,
            generation,
            identities_by_node,
            delta: None,
        }
    }

    /// Records what changed relative to `previous` (the set clients currently hold).
    pub fn with_delta_from(mut self, previous: &ResourceSet) -> Self {
        let empty = BTreeMap::new();
        let mut delta = SetDelta {
            from: previous.generation,
            changed: BTreeMap::new(),
        };
        for (t, current) in &self.by_type {
            let before = previous.by_type.get(t).unwrap_or(&empty);
            let updated = current
                .values()
                .filter(|r| before.get(&r.name).is_none_or(|b| b.version != r.version))
                .map(|r| r.name.clone())
                .collect();
            let removed = before
                .keys()
                .filter(|n| !current.contains_key(*n))
                .cloned()
                .collect();
            delta.changed.insert(t, (updated, removed));
        }
        self.delta = Some(Arc::new(delta));
        self
    }

    pub fn count(&self, type_url: &str) -> usize {
        self.by_type.get(type_url).map_or(0, BTreeMap::len)
    }
}

/// What changed for a client that holds `sent` (name → version) of one type.
pub fn diff(
    current: &BTreeMap<String, Arc<Resource>>,
    sent: &BTreeMap<String, String>,
) -> (Vec<Arc<Resource>>, Vec<String>) {
    let updated = current
        .values()
        .filter(|r| sent.get(&r.name) != Some(&r.version))
        .cloned()
        .collect();
    let removed = sent
        .keys()
        .filter(|name| !current.contains_key(*name))
        .cloned()
        .collect();
    (updated, removed)
}

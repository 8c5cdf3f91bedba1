//! The resources served over delta xDS: every translated object encoded once, with a content
//! version, so each client's update is a comparison of versions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use meshcore::api::discovery::Resource as WireResource;
use meshcore::api::{egress, security, type_url, waypoint, workload as wire};
use meshcore::l7::WaypointConfig;
use prost::Message;

use crate::translate::Translation;

/// One resource, encoded once as the `envoy.service.discovery.v3.Resource` every client is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    /// Content hash: equal versions mean equal bytes.
    pub version: String,
    pub encoded: Bytes,
}

impl Resource {
    /// Wraps an encoded message of `type_url`, versioned by its content.
    pub fn new(name: String, type_url: &str, value: Vec<u8>) -> Self {
        let version = content_version(&value);
        let encoded = WireResource {
            name: name.clone(),
            version: version.clone(),
            resource: Some(prost_types::Any {
                type_url: type_url.to_owned(),
                value,
            }),
            ..Default::default()
        }
        .encode_to_vec()
        .into();
        Self {
            name,
            version,
            encoded,
        }
    }
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
    /// Waypoint `namespace/name` → the SPIFFE ID allowed to read its configuration (the
    /// Gateway's service account).
    pub waypoint_identities: BTreeMap<String, String>,
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
    Arc::new(Resource::new(name, type_url, value))
}

/// A translation's resources, encoded: the unit the pipeline caches per namespace and merges
/// into a [`ResourceSet`].
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    pub addresses: BTreeMap<String, Arc<Resource>>,
    pub authorizations: BTreeMap<String, Arc<Resource>>,
    /// Egress policies, `namespace/name`.
    pub egress: BTreeMap<String, Arc<Resource>>,
    /// (node, SPIFFE ID) of each scheduled pod.
    pub identities: Vec<(String, String)>,
}

impl Encoded {
    /// Same resources (by name and version) and identities.
    pub fn same_as(&self, other: &Encoded) -> bool {
        fn same(a: &BTreeMap<String, Arc<Resource>>, b: &BTreeMap<String, Arc<Resource>>) -> bool {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((n1, r1), (n2, r2))| n1 == n2 && r1.version == r2.version)
        }
        same(&self.addresses, &other.addresses)
            && same(&self.authorizations, &other.authorizations)
            && same(&self.egress, &other.egress)
            && self.identities == other.identities
    }

    /// Workloads are named by uid, services `namespace/hostname`, policies `namespace/name`,
    /// as Istio's ztunnel expects; egress policies `namespace/name`, carrying the policy as
    /// JSON (`meshcore::policy::egress::EgressPolicy`).
    pub fn from_translation(t: &Translation) -> Self {
        let mut out = Self::default();
        for w in &t.workloads {
            let value = wire::Address {
                r#type: Some(wire::address::Type::Workload(w.clone())),
            }
            .encode_to_vec();
            out.addresses.insert(
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
            out.addresses
                .insert(name.clone(), resource(name, type_url::ADDRESS, value));
        }
        for a in &t.authorizations {
            let value = security::Authorization::from(a).encode_to_vec();
            out.authorizations
                .insert(a.key(), resource(a.key(), type_url::AUTHORIZATION, value));
        }
        for p in &t.egress_policies {
            let policy_json = match serde_json::to_string(p) {
                Ok(json) => json,
                Err(e) => {
                    tracing::error!(policy = %p.key(), "egress policy not encodable: {e}");
                    continue;
                }
            };
            let value = egress::EgressPolicy {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                policy_json,
            }
            .encode_to_vec();
            out.egress
                .insert(p.key(), resource(p.key(), type_url::EGRESS_POLICY, value));
        }
        out.identities = t
            .workloads
            .iter()
            .filter(|w| !w.node.is_empty())
            .map(|w| {
                (
                    w.node.clone(),
                    format!(
                        "spiffe://{}/ns/{}/sa/{}",
                        w.trust_domain, w.namespace, w.service_account
                    ),
                )
            })
            .collect();
        out
    }
}

/// Each waypoint's configuration as a `mesh.waypoint.v1.WaypointConfig` resource named
/// `namespace/name`, carrying the configuration as JSON (the local config file's schema).
pub fn waypoint_resources(
    configs: &[(String, String, WaypointConfig)],
) -> BTreeMap<String, Arc<Resource>> {
    let mut out = BTreeMap::new();
    for (namespace, name, config) in configs {
        let key = format!("{namespace}/{name}");
        let config_json = match serde_json::to_string(config) {
            Ok(json) => json,
            Err(e) => {
                tracing::error!(waypoint = %key, "waypoint configuration not encodable: {e}");
                continue;
            }
        };
        let value = waypoint::WaypointConfig {
            namespace: namespace.clone(),
            name: name.clone(),
            config_json,
        }
        .encode_to_vec();
        out.insert(key.clone(), resource(key, type_url::WAYPOINT_CONFIG, value));
    }
    out
}

impl ResourceSet {
    pub fn from_translation(t: &Translation, generation: u64) -> Self {
        Self::merge([&Encoded::from_translation(t)], generation)
    }

    /// One set from the encoded parts (resources with the same name are the same resource).
    pub fn merge<'a>(parts: impl IntoIterator<Item = &'a Encoded>, generation: u64) -> Self {
        let mut addresses = BTreeMap::new();
        let mut authorizations = BTreeMap::new();
        let mut egress = BTreeMap::new();
        let mut identities_by_node: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for part in parts {
            addresses.extend(part.addresses.iter().map(|(k, v)| (k.clone(), v.clone())));
            authorizations.extend(
                part.authorizations
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
            egress.extend(part.egress.iter().map(|(k, v)| (k.clone(), v.clone())));
            for (node, id) in &part.identities {
                identities_by_node
                    .entry(node.clone())
                    .or_default()
                    .insert(id.clone());
            }
        }
        let mut by_type = BTreeMap::new();
        by_type.insert(type_url::ADDRESS, addresses);
        by_type.insert(type_url::AUTHORIZATION, authorizations);
        by_type.insert(type_url::EGRESS_POLICY, egress);
        by_type.insert(type_url::WAYPOINT_CONFIG, BTreeMap::new());
        Self {
            by_type,
            generation,
            identities_by_node,
            waypoint_identities: BTreeMap::new(),
            delta: None,
        }
    }

    /// Adds the waypoints' configurations and who may read them.
    pub fn with_waypoints(
        mut self,
        resources: BTreeMap<String, Arc<Resource>>,
        identities: BTreeMap<String, String>,
    ) -> Self {
        self.by_type.insert(type_url::WAYPOINT_CONFIG, resources);
        self.waypoint_identities = identities;
        self
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

/// What changed from `held` to `current` (one type's resources of two sets): a merge of the
/// two sorted maps, comparing versions.
pub fn diff(
    held: &BTreeMap<String, Arc<Resource>>,
    current: &BTreeMap<String, Arc<Resource>>,
) -> (Vec<Arc<Resource>>, Vec<String>) {
    let updated = current
        .values()
        .filter(|r| held.get(&r.name).is_none_or(|h| h.version != r.version))
        .cloned()
        .collect();
    let removed = held
        .keys()
        .filter(|name| !current.contains_key(*name))
        .cloned()
        .collect();
    (updated, removed)
}

/// What a client announcing `versions` (name → version) lacks of `current`, and holds in excess.
pub fn diff_versions(
    versions: &std::collections::HashMap<String, String>,
    current: &BTreeMap<String, Arc<Resource>>,
) -> (Vec<Arc<Resource>>, Vec<String>) {
    let updated = current
        .values()
        .filter(|r| versions.get(&r.name) != Some(&r.version))
        .cloned()
        .collect();
    let mut removed: Vec<String> = versions
        .keys()
        .filter(|name| !current.contains_key(*name))
        .cloned()
        .collect();
    removed.sort();
    (updated, removed)
}

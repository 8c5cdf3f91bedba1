//! The delta xDS client: subscribes to `istio.workload.Address` and `istio.security.Authorization`
//! on istiod(-lite), and to this mesh's egress policies (`mesh.egress.v1.EgressPolicy`, which
//! Istio's istiod never answers: nothing waits for them), keeps the resources it was sent, and
//! hands the store a complete view after each response. A response that cannot be decoded or applied is NACKed with the reason and
//! nothing of it is applied; the last good view stays. Lost connections are retried with capped
//! backoff (starting over after a session that stayed up 30 s), resubscribing with the versions held, so the server sends only what changed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshcore::api::discovery::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, Node, Status as WireStatus,
};
use meshcore::api::type_url;
use meshcore::policy::egress::EgressPolicy;
use meshcore::policy::Authorization;
use tokio::sync::mpsc;

use super::watch::SourceStatus;
use super::xds_convert::{self, Address};
use crate::control::ControlPlane;
use crate::state::{MeshConfig, Service, StateStore, Workload};

/// Where and how to reach the control plane.
#[derive(Clone)]
pub struct XdsConfig {
    pub control: ControlPlane,
    /// `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
    pub node_id: String,
    /// The token presented as `authorization: Bearer` (the same one the CA gets; Istio's ztunnel
    /// authenticates its xDS stream the same way). Re-read on every connection.
    pub token_file: Option<std::path::PathBuf>,
}

/// Resources received so far, by type then name, with their versions.
#[derive(Default)]
struct Held {
    addresses: BTreeMap<String, (String, Address)>,
    authorizations: BTreeMap<String, (String, Authorization)>,
    egress: BTreeMap<String, (String, EgressPolicy)>,
}

impl Held {
    fn config(&self) -> MeshConfig {
        let mut config = MeshConfig::default();
        for (_, a) in self.addresses.values() {
            match a {
                Address::Workload(w) => config.workloads.push(Workload::clone(w)),
                Address::Service(s) => config.services.push(Service::clone(s)),
            }
        }
        config.policies = self
            .authorizations
            .values()
            .map(|(_, a)| a.clone())
            .collect();
        config.egress_policies = self.egress.values().map(|(_, p)| p.clone()).collect();
        config
    }

    fn versions(&self, type_url: &str) -> BTreeMap<String, String> {
        match type_url {
            type_url::ADDRESS => self
                .addresses
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect(),
            type_url::EGRESS_POLICY => self
                .egress
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect(),
            _ => self
                .authorizations
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

pub struct XdsClient {
    config: XdsConfig,
    view: View,
}

/// What the client holds between responses, and where it applies them.
struct View {
    store: Arc<StateStore>,
    status: Arc<Mutex<SourceStatus>>,
    held: Held,
    /// Types whose first response arrived. Until Address and Authorization have, nothing
    /// reaches the store: serving workloads before their policies arrived would run them
    /// without DENY or STRICT. Egress policies are not waited for: Istio's istiod never
    /// answers for them, and a ztunnel must become ready against it.
    initial: std::collections::BTreeSet<String>,
}

impl XdsClient {
    pub fn new(
        config: XdsConfig,
        store: Arc<StateStore>,
        status: Arc<Mutex<SourceStatus>>,
    ) -> Self {
        status.lock().expect("status lock").xds_address = Some(config.control.address.clone());
        Self {
            config,
            view: View {
                store,
                status,
                held: Held::default(),
                initial: Default::default(),
            },
        }
    }

    /// Runs until `shutdown` completes, reconnecting as [`meshcore::control::next_backoff`] says:
    /// every 0.5 s while nothing answers, else 1 s doubling to 30 s, back to 1 s after a session
    /// that stayed up 30 s.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_secs(1);
        let mut unanswered_before = false;
        loop {
            let started = std::time::Instant::now();
            // Only a call tonic reports as Unavailable (nothing answered) clears it.
            let mut answered = true;
            let session = self.session(&mut answered);
            let result = tokio::select! {
                result = session => result,
                _ = &mut shutdown => return,
            };
            self.view.status.lock().expect("status lock").connected = false;
            let (wait, next) =
                meshcore::control::next_backoff(backoff, started.elapsed(), answered);
            let address = &self.config.control.address;
            match result {
                Ok(()) => tracing::info!(%address, "xDS stream closed by the server; reconnecting"),
                // While nothing answers, retries come every 0.5 s: say so once, not each time.
                Err(e) if !answered && unanswered_before => {
                    tracing::debug!(%address, retry_in = ?wait, "xDS: {e}")
                }
                Err(e) => tracing::warn!(%address, retry_in = ?wait, "xDS: {e}"),
            }
            unanswered_before = !answered;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut shutdown => return,
            }
            backoff = next;
        }
    }

    fn connect(
        &self,
    ) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, String> {
        // Messages up to Istio's 200 MiB: a large mesh's first response is far above tonic's
        // default 4 MiB.
        Ok(meshcore::control::ads_client(
            self.config.control.channel()?,
        ))
    }

    /// One stream; `answered` is set once the control plane answered anything (the stream
    /// opened, or a status of its own).
    async fn session(&mut self, answered: &mut bool) -> Result<(), String> {
        let mut client = self.connect()?;
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        let node = Node {
            id: self.config.node_id.clone(),
            ..Default::default()
        };
        for t in [
            type_url::ADDRESS,
            type_url::AUTHORIZATION,
            type_url::EGRESS_POLICY,
        ] {
            let request = DeltaDiscoveryRequest {
                node: Some(node.clone()),
                type_url: t.to_owned(),
                initial_resource_versions: self.view.held.versions(t).into_iter().collect(),
                ..Default::default()
            };
            tx.send(request)
                .await
                .map_err(|_| "request queue closed".to_owned())?;
        }
        let request = meshcore::control::ads_request(rx, self.config.token_file.as_deref())?;
        let mut responses = client
            .delta_aggregated_resources(request)
            .await
            .map_err(|e| {
                *answered = meshcore::control::answered(&e);
                format!("opening the xDS stream: {e}")
            })?
            .into_inner();
        *answered = true;
        tracing::info!(address = %self.config.control.address, "xDS connected");
        while let Some(response) = responses
            .message()
            .await
            .map_err(|e| format!("xDS stream: {e}"))?
        {
            let ack = self.view.apply(&response).await;
            let error_detail = ack.err().map(|message| {
                tracing::error!(type_url = %response.type_url, "xDS update refused, keeping the last good view: {message}");
                WireStatus {
                    code: tonic::Code::InvalidArgument as i32,
                    message,
                    details: Vec::new(),
                }
            });
            let reply = DeltaDiscoveryRequest {
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                error_detail,
                ..Default::default()
            };
            if tx.send(reply).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

impl View {
    /// Decodes the response onto the view held; applies the resources that decode (when the
    /// resulting view is accepted by the store) and refuses, by name, those that do not, as
    /// Istio's ztunnel does: one bad resource does not hold back the others (a first
    /// subscription still becomes ready).
    async fn apply(&mut self, response: &DeltaDiscoveryResponse) -> Result<(), String> {
        let (next, bad) = decode(&self.held, response)?;
        let refused = (!bad.is_empty())
            .then(|| format!("refused {} resource(s): {}", bad.len(), bad.join("; ")));
        // Nothing usable in a later response: the view in force stays as it is (no new
        // version). A first response is applied whatever it holds, so the view can start.
        let unchanged = self.initial.contains(&response.type_url)
            && !bad.is_empty()
            && response.removed_resources.is_empty()
            && bad.len() == response.resources.len();
        if unchanged {
            return Err(refused.unwrap_or_default());
        }
        self.initial.insert(response.type_url.clone());
        if !(self.initial.contains(type_url::ADDRESS)
            && self.initial.contains(type_url::AUTHORIZATION))
        {
            self.held = next;
            return refused.map_or(Ok(()), Err);
        }
        let config = next.config();
        let store = self.store.clone();
        let applied = tokio::task::spawn_blocking(move || store.replace(config))
            .await
            .map_err(|e| format!("applying: {e}"))?;
        let mut status = self.status.lock().expect("status lock");
        match applied {
            Ok(version) => {
                status.applied_version = version;
                status.loads += 1;
                status.last_error = None;
                status.connected = true;
                status.last_update_unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs());
                self.held = next;
                match refused {
                    Some(e) => {
                        status.rejected += 1;
                        status.last_error = Some(e.clone());
                        Err(e)
                    }
                    None => Ok(()),
                }
            }
            Err(e) => {
                status.rejected += 1;
                status.last_error = Some(e.clone());
                Err(e)
            }
        }
    }
}

/// The view after `response`, and the resources it carried that could not be used
/// (`name: reason`), which keep their previous version, if any.
fn decode(held: &Held, response: &DeltaDiscoveryResponse) -> Result<(Held, Vec<String>), String> {
    let mut next = Held {
        addresses: held.addresses.clone(),
        authorizations: held.authorizations.clone(),
        egress: held.egress.clone(),
    };
    let mut bad = Vec::new();
    fn body(r: &meshcore::api::discovery::Resource) -> Result<&[u8], String> {
        r.resource
            .as_ref()
            .map(|any| any.value.as_slice())
            .ok_or_else(|| "no body".to_owned())
    }
    match response.type_url.as_str() {
        type_url::ADDRESS => {
            for r in &response.resources {
                match body(r).and_then(|b| xds_convert::address(&r.name, b)) {
                    Ok(a) => {
                        next.addresses
                            .insert(r.name.clone(), (r.version.clone(), a));
                    }
                    Err(e) => bad.push(format!("{}: {e}", r.name)),
                }
            }
            for name in &response.removed_resources {
                next.addresses.remove(name);
            }
        }
        type_url::AUTHORIZATION => {
            for r in &response.resources {
                match body(r).and_then(|b| xds_convert::authorization(&r.name, b)) {
                    Ok(a) => {
                        next.authorizations
                            .insert(r.name.clone(), (r.version.clone(), a));
                    }
                    Err(e) => bad.push(format!("{}: {e}", r.name)),
                }
            }
            for name in &response.removed_resources {
                next.authorizations.remove(name);
            }
        }
        type_url::EGRESS_POLICY => {
            for r in &response.resources {
                match body(r).and_then(|b| xds_convert::egress_policy(&r.name, b)) {
                    Ok(p) => {
                        next.egress.insert(r.name.clone(), (r.version.clone(), p));
                    }
                    Err(e) => bad.push(format!("{}: {e}", r.name)),
                }
            }
            for name in &response.removed_resources {
                next.egress.remove(name);
            }
        }
        other => return Err(format!("unexpected type {other}")),
    }
    Ok((next, bad))
}

#[cfg(test)]
mod decode_tests {
    use super::*;
    use meshcore::api::discovery::Resource;

    fn resource(name: &str, value: Vec<u8>) -> Resource {
        Resource {
            name: name.into(),
            version: "1".into(),
            resource: Some(prost_types::Any {
                type_url: type_url::ADDRESS.into(),
                value,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn good_resources_are_kept_and_bad_ones_named() {
        let good = meshcore::api::workload::Address {
            r#type: Some(meshcore::api::workload::address::Type::Workload(
                meshcore::api::workload::Workload {
                    uid: "Kubernetes//Pod/shop/a".into(),
                    name: "a".into(),
                    namespace: "shop".into(),
                    addresses: vec![vec![10, 0, 0, 1].into()],
                    ..Default::default()
                },
            )),
        };
        let response = DeltaDiscoveryResponse {
            type_url: type_url::ADDRESS.into(),
            resources: vec![
                resource(
                    "Kubernetes//Pod/shop/a",
                    prost::Message::encode_to_vec(&good),
                ),
                resource("Kubernetes//Pod/shop/broken", vec![0x0a, 0x05, 0xff, 0xff]),
            ],
            ..Default::default()
        };
        let held = Held::default();
        let (next, bad) = decode(&held, &response).unwrap();
        assert_eq!(next.addresses.len(), 1, "the good one is kept");
        assert_eq!(bad.len(), 1);
        assert!(
            bad[0].starts_with("Kubernetes//Pod/shop/broken: "),
            "{bad:?}"
        );
    }
}

#[cfg(test)]
mod egress_tests {
    use super::*;
    use meshcore::api::discovery::Resource;

    fn response(type_url: &str, resources: Vec<(&str, Vec<u8>)>) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: type_url.into(),
            resources: resources
                .into_iter()
                .map(|(name, value)| Resource {
                    name: name.into(),
                    version: "1".into(),
                    resource: Some(prost_types::Any {
                        type_url: type_url.into(),
                        value,
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn egress(ns: &str, name: &str, json: &str) -> Vec<u8> {
        prost::Message::encode_to_vec(&meshcore::api::egress::EgressPolicy {
            namespace: ns.into(),
            name: name.into(),
            policy_json: json.into(),
        })
    }

    fn view() -> View {
        View {
            store: Arc::new(StateStore::new("cluster.local")),
            status: Default::default(),
            held: Held::default(),
            initial: Default::default(),
        }
    }

    const GOOD: &str = r#"{"name": "deny-ssh", "namespace": "shop", "workloads": ["shop/a"], "action": "Deny", "rules": [{"ports": [{"port": 22}]}]}"#;

    #[tokio::test]
    async fn the_view_starts_without_egress_policies() {
        // Istio's istiod never answers for egress policies: Address and Authorization suffice.
        let mut v = view();
        v.apply(&response(type_url::ADDRESS, vec![])).await.unwrap();
        assert_eq!(v.store.load().version, 0, "not before Authorization");
        v.apply(&response(type_url::AUTHORIZATION, vec![]))
            .await
            .unwrap();
        assert_eq!(v.store.load().version, 1, "applied with no egress answer");
        v.apply(&response(
            type_url::EGRESS_POLICY,
            vec![("shop/deny-ssh", egress("shop", "deny-ssh", GOOD))],
        ))
        .await
        .unwrap();
        let snap = v.store.load();
        assert_eq!(snap.config.egress_policies.len(), 1);
        assert_eq!(snap.config.egress_policies[0].key(), "shop/deny-ssh");
    }

    #[tokio::test]
    async fn a_bad_egress_policy_is_nacked_by_name_and_the_last_good_kept() {
        let mut v = view();
        v.apply(&response(type_url::ADDRESS, vec![])).await.unwrap();
        v.apply(&response(type_url::AUTHORIZATION, vec![]))
            .await
            .unwrap();
        v.apply(&response(
            type_url::EGRESS_POLICY,
            vec![("shop/deny-ssh", egress("shop", "deny-ssh", GOOD))],
        ))
        .await
        .unwrap();
        let bad_json = GOOD.replace("\"port\": 22", "\"port\": 22, \"endPort\": 1");
        let cases = [
            (
                egress("shop", "deny-ssh", &bad_json),
                "shop/deny-ssh: egress policy shop/deny-ssh: rules[0].ports[0]: endPort 1 is below port 22",
            ),
            (
                egress("shop", "deny-ssh", "{not json"),
                "shop/deny-ssh: egress policy shop/deny-ssh: policy_json: ",
            ),
            (
                egress("shop", "other", GOOD),
                "the resource names shop/other but its policy_json is shop/deny-ssh",
            ),
        ];
        for (body, want) in cases {
            let e = v
                .apply(&response(
                    type_url::EGRESS_POLICY,
                    vec![("shop/deny-ssh", body)],
                ))
                .await
                .unwrap_err();
            assert!(e.contains(want), "{e}\nwanted: {want}");
            let snap = v.store.load();
            assert_eq!(snap.config.egress_policies.len(), 1, "last good kept");
            assert_eq!(snap.config.egress_policies[0].rules[0].ports[0].port, 22);
        }
    }
}

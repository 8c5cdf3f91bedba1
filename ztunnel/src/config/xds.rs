//! The delta xDS client: subscribes to `istio.workload.Address` and `istio.security.Authorization`
//! on istiod(-lite), keeps the resources it was sent, and hands the store a complete view after
//! each response. A response that cannot be decoded or applied is NACKed with the reason and
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
        config
    }

    fn versions(&self, type_url: &str) -> BTreeMap<String, String> {
        match type_url {
            type_url::ADDRESS => self
                .addresses
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
    store: Arc<StateStore>,
    status: Arc<Mutex<SourceStatus>>,
    held: Held,
    /// Types whose first response arrived. Until both have, nothing reaches the store: serving
    /// workloads before their policies arrived would run them without DENY or STRICT.
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
            store,
            status,
            held: Held::default(),
            initial: Default::default(),
        }
    }

    /// Runs until `shutdown` completes, reconnecting with backoff (1 s doubling to 30 s, back to
    /// 1 s after a session that stayed up 30 s).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_secs(1);
        loop {
            let started = std::time::Instant::now();
            let session = self.session();
            let result = tokio::select! {
                result = session => result,
                _ = &mut shutdown => return,
            };
            self.status.lock().expect("status lock").connected = false;
            match result {
                Ok(()) => {
                    tracing::info!(address = %self.config.control.address, "xDS stream closed by the server; reconnecting")
                }
                Err(e) => {
                    tracing::warn!(address = %self.config.control.address, retry_in = ?backoff, "xDS: {e}")
                }
            }
            let (wait, next) = meshcore::control::next_backoff(backoff, started.elapsed());
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

    async fn session(&mut self) -> Result<(), String> {
        let mut client = self.connect()?;
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        let node = Node {
            id: self.config.node_id.clone(),
            ..Default::default()
        };
        for t in [type_url::ADDRESS, type_url::AUTHORIZATION] {
            let request = DeltaDiscoveryRequest {
                node: Some(node.clone()),
                type_url: t.to_owned(),
                initial_resource_versions: self.held.versions(t).into_iter().collect(),
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
            .map_err(|e| format!("opening the xDS stream: {e}"))?
            .into_inner();
        tracing::info!(address = %self.config.control.address, "xDS connected");
        while let Some(response) = responses
            .message()
            .await
            .map_err(|e| format!("xDS stream: {e}"))?
        {
            let ack = self.apply(&response).await;
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

    /// Decodes the whole response first; applies it only if everything decodes and the
    /// resulting view is accepted by the store.
    async fn apply(&mut self, response: &DeltaDiscoveryResponse) -> Result<(), String> {
        let mut addresses = self.held.addresses.clone();
        let mut authorizations = self.held.authorizations.clone();
        match response.type_url.as_str() {
            type_url::ADDRESS => {
                for r in &response.resources {
                    let any = r
                        .resource
                        .as_ref()
                        .ok_or_else(|| format!("resource {} has no body", r.name))?;
                    addresses.insert(
                        r.name.clone(),
                        (
                            r.version.clone(),
                            xds_convert::address(&r.name, &any.value)?,
                        ),
                    );
                }
                for name in &response.removed_resources {
                    addresses.remove(name);
                }
            }
            type_url::AUTHORIZATION => {
                for r in &response.resources {
                    let any = r
                        .resource
                        .as_ref()
                        .ok_or_else(|| format!("resource {} has no body", r.name))?;
                    authorizations.insert(
                        r.name.clone(),
                        (
                            r.version.clone(),
                            xds_convert::authorization(&r.name, &any.value)?,
                        ),
                    );
                }
                for name in &response.removed_resources {
                    authorizations.remove(name);
                }
            }
            other => return Err(format!("unexpected type {other}")),
        }
        let next = Held {
            addresses,
            authorizations,
        };
        self.initial.insert(response.type_url.clone());
        if self.initial.len() < 2 {
            self.held = next;
            return Ok(());
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
                Ok(())
            }
            Err(e) => {
                status.rejected += 1;
                status.last_error = Some(e.clone());
                Err(e)
            }
        }
    }
}

//! The delta ADS server (`DeltaAggregatedResources`).
//!
//! Each client stream runs in its own task with its own bounded send queue, so a slow ztunnel
//! only ever delays itself. A client's first request for a type subscribes it (wildcard) and
//! gets every resource it does not already hold (`initial_resource_versions`); afterwards each
//! new resource set (the watch channel coalesces bursts, so pushes are naturally debounced)
//! sends only what changed and what was removed. Responses carry nonces; a NACK is logged with
//! the client's error, counted, and does not hold anything up.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::Stream;
use meshcore::api::discovery::{
    aggregated_discovery_service_server::AggregatedDiscoveryService, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, Resource as WireResource,
};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::resources::{diff, ResourceSet};

/// What the debug endpoint shows about one connected client.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientStatus {
    pub node_id: String,
    /// Per type URL: the nonce of the last response the client acknowledged.
    pub acked: BTreeMap<String, String>,
    /// Per type URL: resources it holds.
    pub resources: BTreeMap<String, usize>,
    pub nacks: u64,
    pub last_nack: Option<String>,
}

#[derive(Default)]
pub struct Clients {
    next: AtomicU64,
    connected: Mutex<BTreeMap<u64, ClientStatus>>,
    pub nacks_total: AtomicU64,
}

impl Clients {
    pub fn snapshot(&self) -> Vec<ClientStatus> {
        self.connected
            .lock()
            .expect("clients lock")
            .values()
            .cloned()
            .collect()
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut ClientStatus)) {
        if let Some(c) = self.connected.lock().expect("clients lock").get_mut(&id) {
            f(c);
        }
    }
}

#[derive(Clone)]
pub struct XdsServer {
    resources: watch::Receiver<Arc<ResourceSet>>,
    pub clients: Arc<Clients>,
}

impl XdsServer {
    pub fn new(resources: watch::Receiver<Arc<ResourceSet>>) -> Self {
        Self {
            resources,
            clients: Arc::default(),
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

/// Per-client send queue depth; a client this far behind waits on its own.
const QUEUE: usize = 2;
/// Resources per update response: a large change reaching many clients at once is sent in
/// pieces, so memory holds a few pieces per client rather than every client's whole copy. The
/// first response of a subscription is never split: a client (Istio's ztunnel included) takes
/// it as the complete initial state.
const CHUNK: usize = 500;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.clients.next.fetch_add(1, Ordering::Relaxed);
        self.clients
            .connected
            .lock()
            .expect("clients lock")
            .insert(id, ClientStatus::default());
        let session = Session {
            id,
            clients: self.clients.clone(),
            resources: self.resources.clone(),
            tx,
            subscriptions: BTreeMap::new(),
            generation: 0,
            nonce: 0,
        };
        tokio::spawn(session.run(request.into_inner()));
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

struct Session {
    id: u64,
    clients: Arc<Clients>,
    resources: watch::Receiver<Arc<ResourceSet>>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    /// Type URL → what the client holds (name → version).
    subscriptions: BTreeMap<String, BTreeMap<String, String>>,
    /// Generation of the set this client was last brought up to date with.
    generation: u64,
    nonce: u64,
}

impl Session {
    async fn run(mut self, mut requests: Streaming<DeltaDiscoveryRequest>) {
        loop {
            tokio::select! {
                message = requests.message() => match message {
                    Ok(Some(req)) => {
                        if self.on_request(req).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(client = self.id, "xDS stream ended: {e}");
                        break;
                    }
                },
                changed = self.resources.changed() => {
                    if changed.is_err() || self.push_all().await.is_err() {
                        break;
                    }
                }
            }
        }
        self.clients
            .connected
            .lock()
            .expect("clients lock")
            .remove(&self.id);
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), ()> {
        if let Some(node) = &req.node {
            let node_id = node.id.clone();
            self.clients.update(self.id, |c| c.node_id = node_id);
        }
        let type_url = req.type_url.clone();
        if !req.response_nonce.is_empty() {
            match &req.error_detail {
                Some(err) => {
                    self.clients.nacks_total.fetch_add(1, Ordering::Relaxed);
                    let msg = format!("{type_url}: {}", err.message);
                    tracing::warn!(client = self.id, nonce = %req.response_nonce, "xDS NACK: {msg}");
                    self.clients.update(self.id, |c| {
                        c.nacks += 1;
                        c.last_nack = Some(msg);
                    });
                }
                None => {
                    let nonce = req.response_nonce.clone();
                    self.clients.update(self.id, |c| {
                        c.acked.insert(type_url.clone(), nonce);
                    });
                }
            }
            return Ok(());
        }
        if !self.subscriptions.contains_key(&type_url) {
            // A new (wildcard) subscription; skip what the client already holds.
            self.subscriptions.insert(
                type_url.clone(),
                req.initial_resource_versions.into_iter().collect(),
            );
            // Only the first subscription sets the baseline and marks the set seen. A later one
            // for another type must not: if a newer set arrived in between, `changed()` still
            // has to fire so the earlier type catches up (through a full comparison, since the
            // generations differ).
            let set = if self.subscriptions.len() == 1 {
                let set = self.resources.borrow_and_update().clone();
                self.generation = set.generation;
                set
            } else {
                self.resources.borrow().clone()
            };
            return self.push(&type_url, &set, true).await;
        }
        Ok(())
    }

    async fn push_all(&mut self) -> Result<(), ()> {
        let set = self.resources.borrow_and_update().clone();
        let types: Vec<String> = self.subscriptions.keys().cloned().collect();
        for t in types {
            self.push(&t, &set, false).await?;
        }
        self.generation = set.generation;
        Ok(())
    }

    async fn push(&mut self, type_url: &str, set: &ResourceSet, first: bool) -> Result<(), ()> {
        let empty = BTreeMap::new();
        let current = set.by_type.get(type_url).unwrap_or(&empty);
        let sent = self.subscriptions.get_mut(type_url).expect("subscribed");
        // Up to date with the previous set: the shared delta says what to send. Otherwise
        // (first push, a skipped generation) compare everything.
        let shared = set
            .delta
            .as_ref()
            .filter(|d| !first && d.from == self.generation)
            .and_then(|d| d.changed.get(type_url));
        let (updated, removed) = match shared {
            Some((changed, gone)) => (
                changed
                    .iter()
                    .filter_map(|n| current.get(n).cloned())
                    .collect(),
                gone.iter()
                    .filter(|n| sent.contains_key(*n))
                    .cloned()
                    .collect(),
            ),
            None => diff(current, sent),
        };
        if updated.is_empty() && removed.is_empty() && !first {
            return Ok(());
        }
        for r in &updated {
            sent.insert(r.name.clone(), r.version.clone());
        }
        for name in &removed {
            sent.remove(name);
        }
        let held = sent.len();
        let type_name = type_url.to_owned();
        self.clients.update(self.id, |c| {
            c.resources.insert(type_name, held);
        });
        let size = if first { updated.len().max(1) } else { CHUNK };
        let mut chunks: Vec<&[Arc<super::resources::Resource>]> = updated.chunks(size).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        let mut removed = Some(removed);
        for (i, chunk) in chunks.into_iter().enumerate() {
            self.nonce += 1;
            let response = DeltaDiscoveryResponse {
                system_version_info: set.generation.to_string(),
                type_url: type_url.to_owned(),
                nonce: format!("{}-{}", self.id, self.nonce),
                removed_resources: if i == last {
                    removed.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
                resources: chunk
                    .iter()
                    .map(|r| WireResource {
                        name: r.name.clone(),
                        version: r.version.clone(),
                        resource: Some(r.any.clone()),
                        ..Default::default()
                    })
                    .collect(),
            };
            // Waits only for this client's own queue.
            self.tx.send(Ok(response)).await.map_err(|_| ())?;
        }
        Ok(())
    }
}

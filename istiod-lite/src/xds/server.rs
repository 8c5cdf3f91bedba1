//! The delta ADS server (`DeltaAggregatedResources`).
//!
//! Each client stream runs in its own task with its own bounded send queue, so a slow ztunnel
//! only ever delays itself. A client's first request for a type subscribes it (wildcard) and
//! gets every resource it does not already hold (`initial_resource_versions`); afterwards each
//! new resource set (the watch channel coalesces bursts, so pushes are naturally debounced)
//! sends only what changed and what was removed. Responses carry nonces; a NACK is logged with
//! the client's error, counted, and does not hold anything up; what was NACKed is not sent again
//! until it changes.
//!
//! Egress policies (`mesh.egress.v1.EgressPolicy`) are served like authorizations: wildcard,
//! to any authenticated caller; a client that never subscribes to them (Istio's ztunnel) is
//! never sent one.
//!
//! A waypoint's configuration (`mesh.waypoint.v1.WaypointConfig`) is the one type served by
//! name only: the client names `<namespace>/<gateway>`, the name is checked against its
//! authenticated identity ([`super::access`]) when subscribed and again whenever the resource
//! changes, and only the names subscribed are sent. A refusal ends the stream with its status.
//!
//! Memory: what a client holds is remembered as the (shared) set it was last brought up to date
//! with, not as a per-client list of names and versions; resources are encoded once for all
//! clients ([`super::encoded`]), and responses are written out in pieces as the transport takes
//! them ([`super::ads_service`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use meshcore::api::discovery::DeltaDiscoveryRequest;
use meshcore::api::type_url;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::access;
use super::encoded::EncodedDeltaResponse;
use super::resources::{diff, diff_versions, Resource, ResourceSet};
use crate::ca::{bearer, Authenticator, Caller};

/// What a session hands the transport: a response, or the status ending the stream.
pub type Outgoing = Result<EncodedDeltaResponse, Status>;

/// What the debug endpoint shows about one connected client. Every map is keyed by a type URL
/// this server serves (requests for others are ignored), so a client's entry stays small
/// whatever it sends.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientStatus {
    pub node_id: String,
    /// When the stream was opened (unix ms).
    pub connected_at_ms: u64,
    /// Per type URL: the nonce of the last response the client acknowledged.
    pub acked: BTreeMap<String, String>,
    /// Per type URL: when that acknowledgement arrived (unix ms).
    pub acked_at_ms: BTreeMap<String, u64>,
    /// Per type URL: the last response queued for the client. It is in sync when `acked`
    /// holds this nonce.
    pub sent: BTreeMap<String, Sent>,
    /// Per type URL: the NACKs of that type.
    pub nacked: BTreeMap<String, Nacked>,
    /// Per type URL: resources it holds.
    pub resources: BTreeMap<String, usize>,
    pub nacks: u64,
    pub last_nack: Option<String>,
}

/// The last response of one type sent to a client.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    pub nonce: String,
    /// The `system_version_info` it carried: the generation of the served configuration.
    pub version: String,
    /// When it was queued for the client (unix ms).
    pub at_ms: u64,
}

/// The NACKs of one type from a client.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nacked {
    pub count: u64,
    /// The nonce the last NACK named, and when it came (unix ms).
    pub nonce: String,
    pub at_ms: u64,
    /// The client's error message (cut to [`MAX_NACK_MESSAGE_BYTES`]).
    pub message: String,
}

/// Now, in milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Default)]
pub struct Clients {
    next: AtomicU64,
    connected: Mutex<BTreeMap<u64, ClientStatus>>,
    pub nacks_total: AtomicU64,
    /// Streams refused for a missing or invalid token, or a subscription the caller may not
    /// have.
    pub refused_total: AtomicU64,
    /// Requests for a type URL this server does not serve (ignored).
    pub unknown_types_total: AtomicU64,
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
    /// When set, a stream must present `authorization: Bearer <token>` the authenticator
    /// accepts (a node's bootstrap token, or a service-account token): the mesh's addresses
    /// and policies are not for anyone who can reach the port.
    auth: Option<Authenticator>,
}

impl XdsServer {
    pub fn new(resources: watch::Receiver<Arc<ResourceSet>>) -> Self {
        Self {
            resources,
            clients: Arc::default(),
            auth: None,
        }
    }

    pub fn with_auth(mut self, auth: Authenticator) -> Self {
        self.auth = Some(auth);
        self
    }
}

/// Per-client send queue depth; a client this far behind waits on its own.
const QUEUE: usize = 2;
/// Resources per update response: a large change reaching many clients at once is sent in
/// pieces, so memory holds a few pieces per client rather than every client's whole copy. The
/// first response of a subscription is never split: a client (Istio's ztunnel included) takes
/// it as the complete initial state.
const CHUNK: usize = 500;
/// Longest resource name or version a request may carry (a Kubernetes name is at most 253
/// bytes, a namespace 63); node ids are cut to it.
pub const MAX_NAME_BYTES: usize = 1024;
/// Most names one client may subscribe to, per by-name type (a waypoint names one).
pub const MAX_NAMES_PER_TYPE: usize = 128;
/// What is kept of a NACK's message.
const MAX_NACK_MESSAGE_BYTES: usize = 1024;
/// What is kept of an acknowledged nonce (ours are `<client>-<n>`).
const MAX_NONCE_BYTES: usize = 64;
/// The type URLs served; requests for any other are ignored.
const SERVED_TYPES: [&str; 4] = [
    type_url::ADDRESS,
    type_url::AUTHORIZATION,
    type_url::WAYPOINT_CONFIG,
    type_url::EGRESS_POLICY,
];

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Refuses a request naming a resource (subscribed, unsubscribed, or held with a version)
/// longer than [`MAX_NAME_BYTES`].
fn check_names(req: &DeltaDiscoveryRequest) -> Result<(), Status> {
    let names = req
        .resource_names_subscribe
        .iter()
        .chain(&req.resource_names_unsubscribe)
        .chain(req.initial_resource_versions.keys())
        .chain(req.initial_resource_versions.values());
    for name in names {
        if name.len() > MAX_NAME_BYTES {
            return Err(Status::invalid_argument(format!(
                "{}: a resource name or version of {} bytes (at most {MAX_NAME_BYTES} bytes)",
                req.type_url,
                name.len()
            )));
        }
    }
    Ok(())
}

impl XdsServer {
    /// Opens a client's delta ADS session: checks its token (when required), then runs the
    /// session in its own task. The receiver yields the responses to send.
    pub async fn open(
        &self,
        headers: &http::HeaderMap,
        requests: Streaming<DeltaDiscoveryRequest>,
    ) -> Result<mpsc::Receiver<Outgoing>, Status> {
        let mut caller = None;
        if let Some(auth) = &self.auth {
            let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
            let checked = match bearer(&metadata) {
                Ok(token) => auth.authenticate(token).await,
                Err(e) => Err(e),
            };
            match checked {
                Ok(c) => caller = Some(c),
                Err(e) => {
                    self.clients.refused_total.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("xDS stream refused: {}", e.message());
                    return Err(e);
                }
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = self.clients.next.fetch_add(1, Ordering::Relaxed);
        self.clients.connected.lock().expect("clients lock").insert(
            id,
            ClientStatus {
                connected_at_ms: unix_ms(),
                ..Default::default()
            },
        );
        let session = Session {
            id,
            clients: self.clients.clone(),
            resources: self.resources.clone(),
            tx,
            subscriptions: BTreeMap::new(),
            names: BTreeMap::new(),
            caller,
            nonce: 0,
        };
        tokio::spawn(session.run(requests));
        Ok(rx)
    }
}

struct Session {
    id: u64,
    clients: Arc<Clients>,
    resources: watch::Receiver<Arc<ResourceSet>>,
    tx: mpsc::Sender<Outgoing>,
    /// Type URL → the set whose resources of that type the client holds (a NACKed update
    /// counts as held: it is not resent until it changes).
    subscriptions: BTreeMap<String, Arc<ResourceSet>>,
    /// By-name types: the names subscribed to.
    names: BTreeMap<String, BTreeSet<String>>,
    /// Who the token says the client is (`None`: xDS without authentication).
    caller: Option<Caller>,
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
        // Only the types served are looked at: anything else would be state kept per client
        // (and shown by /debug/clients) for as many type URLs as a client cares to invent.
        if !SERVED_TYPES.contains(&req.type_url.as_str()) {
            self.clients
                .unknown_types_total
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                client = self.id,
                type_url = %truncated(&req.type_url, 256),
                "xDS request for a type not served: ignored"
            );
            return Ok(());
        }
        if let Err(status) = check_names(&req) {
            return self.refuse(status).await;
        }
        if let Some(node) = &req.node {
            let node_id = truncated(&node.id, MAX_NAME_BYTES);
            self.clients.update(self.id, |c| c.node_id = node_id);
        }
        let type_url = req.type_url.clone();
        if !req.response_nonce.is_empty() {
            match &req.error_detail {
                Some(err) => {
                    self.clients.nacks_total.fetch_add(1, Ordering::Relaxed);
                    let msg = format!(
                        "{type_url}: {}",
                        truncated(&err.message, MAX_NACK_MESSAGE_BYTES)
                    );
                    let nonce = truncated(&req.response_nonce, MAX_NONCE_BYTES);
                    tracing::warn!(client = self.id, %nonce, "xDS NACK: {msg}");
                    let message = truncated(&err.message, MAX_NACK_MESSAGE_BYTES);
                    self.clients.update(self.id, |c| {
                        c.nacks += 1;
                        c.last_nack = Some(msg);
                        let nacked = c.nacked.entry(type_url.clone()).or_default();
                        nacked.count += 1;
                        nacked.nonce = nonce;
                        nacked.at_ms = unix_ms();
                        nacked.message = message;
                    });
                }
                None => {
                    let nonce = truncated(&req.response_nonce, MAX_NONCE_BYTES);
                    self.clients.update(self.id, |c| {
                        c.acked.insert(type_url.clone(), nonce);
                        c.acked_at_ms.insert(type_url.clone(), unix_ms());
                    });
                }
            }
            if !access::by_name_only(&type_url) {
                return Ok(());
            }
        }
        if access::by_name_only(&type_url) {
            return self.on_names(&req).await;
        }
        if self.subscriptions.contains_key(&type_url) {
            return Ok(());
        }
        // A new (wildcard) subscription: everything the client does not already hold.
        let set = self.resources.borrow_and_update().clone();
        let empty = BTreeMap::new();
        let current = set.by_type.get(type_url.as_str()).unwrap_or(&empty);
        let (updated, removed) = diff_versions(&req.initial_resource_versions, current);
        self.subscribe(&type_url, set, updated, removed).await
    }

    /// Records a new subscription (its first response carries `updated` and `removed`) and
    /// brings the client's other types up to the same set.
    async fn subscribe(
        &mut self,
        type_url: &str,
        set: Arc<ResourceSet>,
        updated: Vec<Arc<Resource>>,
        removed: Vec<String>,
    ) -> Result<(), ()> {
        // Another type subscribed earlier may hold an older set than this: `changed()` was
        // just consumed, so bring the others up to date now.
        let others: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, held)| held.generation != set.generation)
            .map(|(t, _)| t.clone())
            .collect();
        self.subscriptions.insert(type_url.to_owned(), set.clone());
        self.send(type_url, &set, updated, removed, true).await?;
        for t in others {
            self.push(&t, &set).await?;
        }
        Ok(())
    }

    /// A request for a by-name type: names subscribed (each checked against the caller) and
    /// unsubscribed. The first request must name something.
    async fn on_names(&mut self, req: &DeltaDiscoveryRequest) -> Result<(), ()> {
        let type_url = req.type_url.as_str();
        let first = !self.subscriptions.contains_key(type_url);
        let held = self.names.entry(type_url.to_owned()).or_default();
        for n in &req.resource_names_unsubscribe {
            held.remove(n);
        }
        let added: Vec<String> = req
            .resource_names_subscribe
            .iter()
            .filter(|n| !held.contains(*n))
            .cloned()
            .collect();
        if first && added.is_empty() {
            return self.refuse(access::wildcard_refused(type_url)).await;
        }
        if held.len() + added.len() > MAX_NAMES_PER_TYPE {
            let status = Status::invalid_argument(format!(
                "{type_url}: at most {MAX_NAMES_PER_TYPE} names per subscription ({} asked)",
                held.len() + added.len()
            ));
            return self.refuse(status).await;
        }
        // A first subscription takes the newest set; later ones the set the client holds.
        let set = match self.subscriptions.get(type_url) {
            Some(held) => held.clone(),
            None => self.resources.borrow_and_update().clone(),
        };
        for name in &added {
            if let Err(status) = access::may_read_waypoint(self.caller.as_ref(), name, &set) {
                return self.refuse(status).await;
            }
        }
        let names = self.names.entry(type_url.to_owned()).or_default();
        names.extend(added.iter().cloned());
        let empty = BTreeMap::new();
        let current = set.by_type.get(type_url).unwrap_or(&empty);
        if first {
            let wanted: BTreeMap<String, Arc<Resource>> = names
                .iter()
                .filter_map(|n| Some((n.clone(), current.get(n)?.clone())))
                .collect();
            let (updated, removed) = diff_versions(&req.initial_resource_versions, &wanted);
            return self.subscribe(type_url, set, updated, removed).await;
        }
        let updated: Vec<Arc<Resource>> = added
            .iter()
            .filter_map(|n| current.get(n).cloned())
            .collect();
        if updated.is_empty() {
            return Ok(());
        }
        self.send(type_url, &set, updated, Vec::new(), false).await
    }

    /// Ends the stream with `status`.
    async fn refuse(&mut self, status: Status) -> Result<(), ()> {
        self.clients.refused_total.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            client = self.id,
            "xDS subscription refused: {}",
            status.message()
        );
        let _ = self.tx.send(Err(status)).await;
        Err(())
    }

    async fn push_all(&mut self) -> Result<(), ()> {
        let set = self.resources.borrow_and_update().clone();
        let types: Vec<String> = self.subscriptions.keys().cloned().collect();
        for t in types {
            self.push(&t, &set).await?;
        }
        Ok(())
    }

    /// Brings one type from the set the client holds to `set`.
    async fn push(&mut self, type_url: &str, set: &Arc<ResourceSet>) -> Result<(), ()> {
        let held = self.subscriptions[type_url].clone();
        if held.generation == set.generation {
            return Ok(());
        }
        let empty = BTreeMap::new();
        let current = set.by_type.get(type_url).unwrap_or(&empty);
        // Up to date with the previous set: the shared delta says what to send. Otherwise
        // (a skipped generation) compare the two sets.
        let shared = set
            .delta
            .as_ref()
            .filter(|d| d.from == held.generation)
            .and_then(|d| d.changed.get(type_url));
        let (mut updated, mut removed): (Vec<Arc<Resource>>, Vec<String>) = match shared {
            Some((changed, gone)) => (
                changed
                    .iter()
                    .filter_map(|n| current.get(n).cloned())
                    .collect(),
                gone.clone(),
            ),
            None => diff(held.by_type.get(type_url).unwrap_or(&empty), current),
        };
        if let Some(names) = self.names.get(type_url) {
            updated.retain(|r| names.contains(&r.name));
            removed.retain(|n| names.contains(n));
            // Who may read a waypoint's configuration can change with it (its Gateway's
            // service-account annotation).
            let refused = updated
                .iter()
                .find_map(|r| access::may_read_waypoint(self.caller.as_ref(), &r.name, set).err());
            if let Some(status) = refused {
                return self.refuse(status).await;
            }
        }
        self.subscriptions.insert(type_url.to_owned(), set.clone());
        if updated.is_empty() && removed.is_empty() {
            return Ok(());
        }
        self.send(type_url, set, updated, removed, false).await
    }

    /// Queues the responses carrying `updated` and `removed`. A subscription's first response
    /// is never split: a client (Istio's ztunnel included) takes it as the complete state.
    async fn send(
        &mut self,
        type_url: &str,
        set: &ResourceSet,
        updated: Vec<Arc<Resource>>,
        removed: Vec<String>,
        first: bool,
    ) -> Result<(), ()> {
        let held = match self.names.get(type_url) {
            Some(names) => names
                .iter()
                .filter(|n| {
                    set.by_type
                        .get(type_url)
                        .is_some_and(|m| m.contains_key(*n))
                })
                .count(),
            None => set.count(type_url),
        };
        let type_name = type_url.to_owned();
        self.clients.update(self.id, |c| {
            c.resources.insert(type_name, held);
        });
        let size = if first { updated.len().max(1) } else { CHUNK };
        let mut chunks: Vec<&[Arc<Resource>]> = updated.chunks(size).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        let mut removed = Some(removed);
        for (i, chunk) in chunks.into_iter().enumerate() {
            self.nonce += 1;
            let response = EncodedDeltaResponse {
                system_version_info: set.generation.to_string(),
                type_url: type_url.to_owned(),
                nonce: format!("{}-{}", self.id, self.nonce),
                removed_resources: if i == last {
                    removed.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
                resources: chunk.iter().map(|r| r.encoded.clone()).collect(),
            };
            let sent = Sent {
                nonce: response.nonce.clone(),
                version: response.system_version_info.clone(),
                at_ms: 0,
            };
            // Waits only for this client's own queue.
            self.tx.send(Ok(response)).await.map_err(|_| ())?;
            // Recorded once queued: the client's ACK of it is read by this same task, so it
            // cannot be seen before this.
            let type_name = type_url.to_owned();
            self.clients.update(self.id, |c| {
                c.sent.insert(
                    type_name,
                    Sent {
                        at_ms: unix_ms(),
                        ..sent
                    },
                );
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

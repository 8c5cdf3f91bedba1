//! The Kubernetes source: kube-rs watchers on Namespaces, Pods, Services, EndpointSlices,
//! Istio's AuthorizationPolicy, PeerAuthentication and RequestAuthentication, and Gateway API's
//! Gateway, HTTPRoute and GRPCRoute, Istio's VirtualService and DestinationRule, SMI's
//! TrafficSplit, Linkerd's ServiceProfile, Linkerd's policy (Server, ServerAuthorization,
//! AuthorizationPolicy, MeshTLSAuthentication, NetworkAuthentication), Cilium's policies,
//! Secrets of type `kubernetes.io/tls` (field selector `type=kubernetes.io/tls`) and Gateway
//! API's ReferenceGrant (`v1beta1`) feed the [`Pipeline`].
//!
//! - Each kind has its own watcher (list, then watch from the list's resourceVersion, resumed
//!   after timeouts, relisted after `410 Gone`, with backoff on errors). A relist replaces that
//!   kind's objects whole, so deletions missed while disconnected are caught.
//! - Nothing is published until every kind has been listed once: a ztunnel takes the first
//!   push as the complete state. An optional kind ([`Kind::is_optional`]: Gateway API's,
//!   Linkerd's and SMI's, and those only waypoints read) whose CRD is not installed (the list answers 404), or that
//!   istiod-lite's RBAC does not let it list (403), counts as listed and empty, so a cluster
//!   without Gateway API (or with a `base` older than RequestAuthentication) still gets its
//!   ztunnels served; its watcher keeps retrying with backoff and picks the kind up once it
//!   can.
//! - Changes are debounced (a burst is collected for up to [`DEBOUNCE`], never longer than
//!   [`MAX_DELAY`]) and translated incrementally.
//! - Objects are normalised before they are compared (no managedFields, resourceVersion or
//!   policy status), so our own status writes and no-op updates cost nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::cluster::{
    AuthorizationPolicy, CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy, DestinationRule,
    Gateway, GrpcRoute, HttpRoute, LinkerdAuthorizationPolicy, MeshTlsAuthentication,
    NetworkAuthentication, PeerAuthentication, ReferenceGrant, RequestAuthentication, Server,
    ServerAuthorization, ServiceProfile, TlsSecret, TrafficSplit, VirtualService,
};
use crate::controller::run::{Controller, ControllerStatus, Inputs};
use crate::controller::DeploySettings;
use crate::crd::gateway::RouteStatusSeen;
use crate::crd::secret::TLS_TYPE;
use crate::pipeline::{Kind, Object, Pipeline};
use crate::sources::status::StatusWriter;
use crate::translate::ClusterInfo;
use crate::xds::ResourceSet;

/// Quiet time that ends a burst of changes.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// A burst is cut after this long, so a steady stream of changes still gets pushed.
pub const MAX_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeStatus {
    /// Generation of the published set.
    pub generation: u64,
    /// Kinds listed at least once.
    pub synced: Vec<String>,
    /// Relists after the first (410 Gone, or a restarted watch).
    pub relists: u64,
    /// The latest watch error per kind, if the watch is failing.
    pub watch_errors: BTreeMap<String, String>,
    /// Objects honoured only in part.
    pub notes: Vec<String>,
    /// AuthorizationPolicies refused for invalid values (their last good version stays).
    pub refused: Vec<String>,
    /// The waypoints' deployment controller and Gateway API status writer.
    pub waypoint_controller: ControllerStatus,
    /// The status each route is owed towards its parents of ours (see `docs/istiod-lite.md`,
    /// "Ingress gateways"); the Gateways' own are `waypointController.gateways`.
    pub routes: Vec<serde_json::Value>,
}

/// What cluster mode does besides serving.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// Write status: policies' `ZtunnelAccepted`, waypoint Gateways', routes'.
    pub write_status: bool,
    /// Deploy waypoints (ServiceAccount, Deployment, Service per Gateway of class
    /// `istio-waypoint`, and the `istio-ca-root-cert` ConfigMaps).
    pub deploy: Option<DeploySettings>,
}

#[allow(clippy::large_enum_variant)] // see `Object`
enum Update {
    Event(Kind, Event<Object>),
    Error(Kind, String),
    /// The kind is not there for us: its API is not served (a Gateway API CRD not installed)
    /// or we may not list it.
    Missing(Kind, String),
}

/// The API server does not serve this kind, or not to us.
fn not_served(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            if s.code == 404 || s.code == 403
    )
}

/// Drops what changes without meaning anything to the translation.
fn normalise(mut object: Object) -> Object {
    match &mut object {
        Object::AuthorizationPolicy(o) => o.status = None,
        Object::PeerAuthentication(o) => o.status = None,
        Object::RequestAuthentication(o) => o.status = None,
        Object::Gateway(o) => o.status = None,
        // Whether we have entries in a route's status is kept (stale ones must be removed).
        Object::HttpRoute(o) => o.status = RouteStatusSeen::reduce(o.status.take()),
        Object::GrpcRoute(o) => o.status = RouteStatusSeen::reduce(o.status.take()),
        Object::VirtualService(o) => o.status = None,
        Object::DestinationRule(o) => o.status = None,
        Object::TrafficSplit(o) => o.status = None,
        Object::ServiceProfile(o) => o.status = None,
        Object::Server(o) => o.status = None,
        Object::ServerAuthorization(o) => o.status = None,
        Object::LinkerdAuthorizationPolicy(o) => o.status = None,
        Object::MeshTlsAuthentication(o) => o.status = None,
        Object::NetworkAuthentication(o) => o.status = None,
        Object::CiliumNetworkPolicy(o) => o.status = None,
        Object::CiliumClusterwideNetworkPolicy(o) => o.status = None,
        _ => {}
    }
    let meta = object.meta_mut();
    meta.managed_fields = None;
    meta.resource_version = None;
    object
}

fn spawn_watcher<K>(api: Api<K>, kind: Kind, wrap: fn(K) -> Object, tx: mpsc::Sender<Update>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    spawn_watcher_with(api, watcher::Config::default(), kind, wrap, tx)
}

fn spawn_watcher_with<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    wrap: fn(K) -> Object,
    tx: mpsc::Sender<Update>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    tokio::spawn(async move {
        let stream = watcher::watcher(api, config).default_backoff();
        futures_util::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            let update = match event {
                Ok(Event::Apply(o)) => Update::Event(kind, Event::Apply(normalise(wrap(o)))),
                Ok(Event::Delete(o)) => Update::Event(kind, Event::Delete(normalise(wrap(o)))),
                Ok(Event::Init) => Update::Event(kind, Event::Init),
                Ok(Event::InitApply(o)) => {
                    Update::Event(kind, Event::InitApply(normalise(wrap(o))))
                }
                Ok(Event::InitDone) => Update::Event(kind, Event::InitDone),
                Err(e) if kind.is_optional() && not_served(&e) => {
                    Update::Missing(kind, e.to_string())
                }
                Err(e) => Update::Error(kind, e.to_string()),
            };
            if tx.send(update).await.is_err() {
                return;
            }
        }
    });
}

/// A Secret as the pipeline keeps it (a Secret of another type, which the field selector
/// keeps away, is kept as one without certificate data).
fn tls_secret(s: Secret) -> Object {
    let metadata = s.metadata.clone();
    Object::Secret(TlsSecret::from_secret(s).unwrap_or(TlsSecret {
        metadata,
        ..Default::default()
    }))
}

pub struct KubeSource {
    pipeline: Pipeline,
    updates: mpsc::Receiver<Update>,
    /// Objects of a relist in progress, per kind.
    listing: BTreeMap<Kind, Vec<Object>>,
    synced: BTreeSet<Kind>,
    status_writer: Option<StatusWriter>,
    controller: Option<Controller>,
    /// The pipeline's waypoint epoch the controller was last given.
    controller_epoch: u64,
    pub status: Arc<Mutex<KubeStatus>>,
}

impl KubeSource {
    /// Starts the watchers. `write_status`: report on each policy's, waypoint Gateway's and
    /// route's `status` how it was honoured; no waypoint deployment.
    pub fn start(client: Client, info: ClusterInfo, write_status: bool) -> Self {
        let options = KubeOptions {
            write_status,
            deploy: None,
        };
        Self::start_with(client, info, options)
    }

    /// Starts the watchers, and the waypoint controller if it has anything to do.
    pub fn start_with(client: Client, info: ClusterInfo, options: KubeOptions) -> Self {
        let (tx, updates) = mpsc::channel(1024);
        spawn_watcher(
            Api::<Namespace>::all(client.clone()),
            Kind::Namespace,
            Object::Namespace,
            tx.clone(),
        );
        spawn_watcher(
            Api::<Pod>::all(client.clone()),
            Kind::Pod,
            Object::Pod,
            tx.clone(),
        );
        spawn_watcher(
            Api::<Service>::all(client.clone()),
            Kind::Service,
            Object::Service,
            tx.clone(),
        );
        spawn_watcher(
            Api::<EndpointSlice>::all(client.clone()),
            Kind::EndpointSlice,
            Object::EndpointSlice,
            tx.clone(),
        );
        spawn_watcher(
            Api::<AuthorizationPolicy>::all(client.clone()),
            Kind::AuthorizationPolicy,
            Object::AuthorizationPolicy,
            tx.clone(),
        );
        spawn_watcher(
            Api::<PeerAuthentication>::all(client.clone()),
            Kind::PeerAuthentication,
            Object::PeerAuthentication,
            tx.clone(),
        );
        spawn_watcher(
            Api::<RequestAuthentication>::all(client.clone()),
            Kind::RequestAuthentication,
            Object::RequestAuthentication,
            tx.clone(),
        );
        spawn_watcher(
            Api::<Gateway>::all(client.clone()),
            Kind::Gateway,
            Object::Gateway,
            tx.clone(),
        );
        spawn_watcher(
            Api::<HttpRoute>::all(client.clone()),
            Kind::HttpRoute,
            Object::HttpRoute,
            tx.clone(),
        );
        spawn_watcher(
            Api::<GrpcRoute>::all(client.clone()),
            Kind::GrpcRoute,
            Object::GrpcRoute,
            tx.clone(),
        );
        spawn_watcher(
            Api::<VirtualService>::all(client.clone()),
            Kind::VirtualService,
            Object::VirtualService,
            tx.clone(),
        );
        spawn_watcher(
            Api::<DestinationRule>::all(client.clone()),
            Kind::DestinationRule,
            Object::DestinationRule,
            tx.clone(),
        );
        spawn_watcher(
            Api::<TrafficSplit>::all(client.clone()),
            Kind::TrafficSplit,
            Object::TrafficSplit,
            tx.clone(),
        );
        spawn_watcher(
            Api::<ServiceProfile>::all(client.clone()),
            Kind::ServiceProfile,
            Object::ServiceProfile,
            tx.clone(),
        );
        spawn_watcher(
            Api::<Server>::all(client.clone()),
            Kind::Server,
            Object::Server,
            tx.clone(),
        );
        spawn_watcher(
            Api::<ServerAuthorization>::all(client.clone()),
            Kind::ServerAuthorization,
            Object::ServerAuthorization,
            tx.clone(),
        );
        spawn_watcher(
            Api::<LinkerdAuthorizationPolicy>::all(client.clone()),
            Kind::LinkerdAuthorizationPolicy,
            Object::LinkerdAuthorizationPolicy,
            tx.clone(),
        );
        spawn_watcher(
            Api::<MeshTlsAuthentication>::all(client.clone()),
            Kind::MeshTlsAuthentication,
            Object::MeshTlsAuthentication,
            tx.clone(),
        );
        spawn_watcher(
            Api::<NetworkAuthentication>::all(client.clone()),
            Kind::NetworkAuthentication,
            Object::NetworkAuthentication,
            tx.clone(),
        );
        spawn_watcher(
            Api::<CiliumNetworkPolicy>::all(client.clone()),
            Kind::CiliumNetworkPolicy,
            Object::CiliumNetworkPolicy,
            tx.clone(),
        );
        spawn_watcher(
            Api::<CiliumClusterwideNetworkPolicy>::all(client.clone()),
            Kind::CiliumClusterwideNetworkPolicy,
            Object::CiliumClusterwideNetworkPolicy,
            tx.clone(),
        );
        // Only TLS Secrets are listed (the API server filters by type); the key never leaves
        // the pipeline but for the gateway configurations that use it.
        spawn_watcher_with(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().fields(&format!("type={TLS_TYPE}")),
            Kind::Secret,
            tls_secret,
            tx.clone(),
        );
        spawn_watcher(
            Api::<ReferenceGrant>::all(client.clone()),
            Kind::ReferenceGrant,
            Object::ReferenceGrant,
            tx,
        );
        let status: Arc<Mutex<KubeStatus>> = Arc::default();
        let controller = (options.write_status || options.deploy.is_some()).then(|| {
            Controller::start(
                client.clone(),
                options.deploy,
                options.write_status,
                info.domain.clone(),
                status.clone(),
            )
        });
        Self {
            pipeline: Pipeline::new(info),
            updates,
            listing: BTreeMap::new(),
            synced: BTreeSet::new(),
            status_writer: options.write_status.then(|| StatusWriter::start(client)),
            controller,
            controller_epoch: 0,
            status,
        }
    }

    /// Hands the waypoint controller what changed for it.
    fn update_controller(&mut self) {
        let Some(controller) = &self.controller else {
            return;
        };
        if self.pipeline.waypoint_epoch() == self.controller_epoch {
            return;
        }
        self.controller_epoch = self.pipeline.waypoint_epoch();
        let statuses = self.pipeline.ingress_statuses();
        let ingress = self
            .pipeline
            .ingress_gateways()
            .filter_map(|gw| {
                let (ns, name) = (
                    gw.metadata.namespace.as_deref(),
                    gw.metadata.name.as_deref(),
                );
                let status = statuses
                    .iter()
                    .find(|s| Some(s.namespace.as_str()) == ns && Some(s.name.as_str()) == name)?;
                Some((gw.clone(), status.clone()))
            })
            .collect();
        controller.update(Inputs {
            gateways: self.pipeline.waypoint_gateways().cloned().collect(),
            ingress,
            routes: self.pipeline.route_statuses().to_vec(),
        });
    }

    fn handle(&mut self, update: Update) {
        let (kind, event) = match update {
            Update::Event(kind, event) => (kind, event),
            Update::Error(kind, e) => {
                tracing::warn!(
                    ?kind,
                    "Kubernetes watch failing (retrying with backoff): {e}"
                );
                self.status
                    .lock()
                    .expect("status lock")
                    .watch_errors
                    .insert(format!("{kind:?}"), e);
                return;
            }
            Update::Missing(kind, e) => {
                // Nothing of a kind the cluster does not have: listed, and empty.
                self.pipeline.replace_kind(kind, Vec::new());
                let mut status = self.status.lock().expect("status lock");
                let reason = match kind {
                    Kind::Gateway | Kind::HttpRoute | Kind::GrpcRoute => format!(
                        "{e} (Gateway API CRDs not installed, or not readable by istiod-lite? \
                         no waypoints until they are)"
                    ),
                    Kind::ReferenceGrant => format!(
                        "{e} (Gateway API's ReferenceGrant v1beta1 not installed, or not readable \
                         by istiod-lite? cross-namespace references from ingress gateways' \
                         listeners and routes are refused until it is)"
                    ),
                    Kind::Secret => format!(
                        "{e} (Secrets not readable by istiod-lite: its RBAC needs secrets \
                         get/list/watch; ingress gateways' HTTPS listeners have no certificate \
                         until it is)"
                    ),
                    Kind::Server
                    | Kind::ServerAuthorization
                    | Kind::LinkerdAuthorizationPolicy
                    | Kind::MeshTlsAuthentication
                    | Kind::NetworkAuthentication
                    | Kind::CiliumNetworkPolicy
                    | Kind::CiliumClusterwideNetworkPolicy => format!(
                        "{e} ({kind:?} CRD not installed, or not readable by istiod-lite? \
                         none translated until it is)"
                    ),
                    _ => format!(
                        "{e} ({kind:?} CRD not installed, or not readable by istiod-lite? \
                         none sent to waypoints until it is)"
                    ),
                };
                if status.watch_errors.get(&format!("{kind:?}")) != Some(&reason) {
                    tracing::warn!(?kind, "{reason}");
                }
                status.watch_errors.insert(format!("{kind:?}"), reason);
                if self.synced.insert(kind) {
                    status.synced = self.synced.iter().map(|k| format!("{k:?}")).collect();
                }
                return;
            }
        };
        if let Some(writer) = &self.status_writer {
            if let Event::Apply(o) | Event::InitApply(o) = &event {
                writer.observe(o);
            }
        }
        match event {
            Event::Apply(o) => self.pipeline.apply(o),
            Event::Delete(o) => {
                let meta = o.meta();
                let name = meta.name.clone().unwrap_or_default();
                let namespace = match kind {
                    Kind::Namespace => name.clone(),
                    _ => meta.namespace.clone().unwrap_or_default(),
                };
                self.pipeline.delete(kind, &namespace, &name);
            }
            Event::Init => {
                self.listing.insert(kind, Vec::new());
            }
            Event::InitApply(o) => self.listing.entry(kind).or_default().push(o),
            Event::InitDone => {
                let objects = self.listing.remove(&kind).unwrap_or_default();
                self.pipeline.replace_kind(kind, objects);
                let mut status = self.status.lock().expect("status lock");
                status.watch_errors.remove(&format!("{kind:?}"));
                if !self.synced.insert(kind) {
                    status.relists += 1;
                    tracing::info!(?kind, "relisted");
                }
                status.synced = self.synced.iter().map(|k| format!("{k:?}")).collect();
            }
        }
    }

    /// Waits for the next change worth publishing (the first: once every kind is listed) and
    /// returns the new set. `None` when the watchers are gone.
    pub async fn next_set(&mut self) -> Option<ResourceSet> {
        loop {
            let first = self.updates.recv().await?;
            self.handle(first);
            let started = tokio::time::Instant::now();
            while started.elapsed() < MAX_DELAY {
                match tokio::time::timeout(DEBOUNCE, self.updates.recv()).await {
                    Ok(Some(u)) => self.handle(u),
                    Ok(None) => return None,
                    Err(_) => break,
                }
            }
            if self.synced.len() < Kind::ALL.len() {
                continue;
            }
            let built = self.pipeline.build();
            self.update_controller();
            let Some(set) = built else {
                continue;
            };
            let notes = self.pipeline.notes();
            let rejected = self.pipeline.rejected();
            {
                let mut status = self.status.lock().expect("status lock");
                status.routes = crate::sources::dir::routes_json(self.pipeline.route_statuses());
                if self.controller.is_none() {
                    // No controller observes deployments: what the translation knows.
                    status.waypoint_controller.gateways =
                        crate::sources::dir::gateways_json(self.pipeline.ingress_statuses())
                            .into_iter()
                            .map(|g| (g["gateway"].as_str().unwrap_or_default().to_owned(), g))
                            .collect();
                }
                status.generation = set.generation;
                status.notes = notes.iter().map(ToString::to_string).collect();
                status.refused = rejected.iter().map(ToString::to_string).collect();
            }
            if let Some(writer) = &self.status_writer {
                writer.report(&self.pipeline, &notes, &rejected);
            }
            return Some(set);
        }
    }

    /// Publishes every change until the watchers end or `shutdown` completes.
    pub async fn run(
        mut self,
        publish: watch::Sender<Arc<ResourceSet>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let set = tokio::select! {
                set = self.next_set() => set,
                _ = &mut shutdown => return,
            };
            let Some(set) = set else { return };
            tracing::info!(generation = set.generation, "cluster changed; pushing");
            let set = set.with_delta_from(&publish.borrow());
            publish.send_replace(Arc::new(set));
        }
    }
}

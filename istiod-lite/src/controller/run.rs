//! The controller's task: watches what it deploys, applies what is missing or has drifted, and
//! writes Gateway and route status.
//!
//! - Inputs come from the Kubernetes source after each change ([`Controller::update`]): the
//!   waypoint Gateways and the route statuses the translation computed.
//! - It watches its own objects (Deployments, Services and ServiceAccounts labelled
//!   `gateway.networking.k8s.io/gateway-name`, ConfigMaps named `istio-ca-root-cert`) and, after
//!   every change, compares each desired object with the observed one ([`super::subset`]): only a
//!   missing or drifted object is applied (server-side apply, field manager `istiod-lite`,
//!   forced). A restart with nothing changed writes nothing.
//! - A ServiceAccount that exists and is not the Gateway's own (no controller reference to it:
//!   one the user made for the `gateway.istio.io/service-account` annotation, or another
//!   Gateway's) is used as it is, never taken over: an owner reference would have Kubernetes
//!   delete it with the Gateway.
//! - Statuses are written when what we computed changes (and read first, so a restart with
//!   nothing changed writes nothing either).
//! - Failures are logged, shown in `/debug/config`, and retried with backoff (1 s to 30 s).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{ApiResource, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::gateway_status::{gateway_status, GatewayStatus};
use super::ingress_status::ingress_gateway_status;
use super::render::{self, NotDeployable, Rendered, ROOT_CERT_CONFIGMAP};
use super::writes::{now, route_status_json, update_status};
use super::{subset, DeploySettings, FIELD_MANAGER};
use crate::cluster::{Gateway, GrpcRoute, HttpRoute};
use crate::sources::kube::KubeStatus;
use crate::translate::ingress::IngressStatus;
use crate::translate::route_status::{ParentStatus, RouteStatus};
use crate::translate::use_waypoint::GATEWAY_NAME_LABEL;

/// Quiet time that ends a burst of watch events.
const DEBOUNCE: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the controller works from: handed over by the Kubernetes source after each change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    /// The Gateways of class `istio-waypoint`.
    pub gateways: Vec<Gateway>,
    /// The Gateways of class `istio`, with the status the translation computed.
    pub ingress: Vec<(Gateway, IngressStatus)>,
    /// The status each route is owed.
    pub routes: Vec<RouteStatus>,
}

/// What `/debug/config` shows of the controller.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerStatus {
    pub deploys: bool,
    pub writes_status: bool,
    /// Server-side applies and status writes made so far.
    pub applies: u64,
    pub status_writes: u64,
    /// ServiceAccounts Gateways name that exist and are not theirs: used as they are.
    pub foreign_service_accounts: Vec<String>,
    /// Objects whose latest apply or status write failed, and failing watches, with the error
    /// (retried).
    pub errors: BTreeMap<String, String>,
    /// Each Gateway's status as computed (and written, with status writes on), by
    /// `namespace/name`.
    pub gateways: BTreeMap<String, Value>,
}

/// The kinds of objects the controller watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Owned {
    Deployment,
    Service,
    ServiceAccount,
    ConfigMap,
}

type Key = (Owned, String, String);

enum Msg {
    Event(Owned, Event<Value>),
    Error(Owned, String),
}

/// The handle the Kubernetes source keeps.
pub struct Controller {
    inputs: watch::Sender<Option<Arc<Inputs>>>,
}

fn spawn_watcher<K>(api: Api<K>, config: watcher::Config, kind: Owned, tx: mpsc::Sender<Msg>)
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static,
{
    tokio::spawn(async move {
        let stream = watcher::watcher(api, config).default_backoff();
        futures_util::pin_mut!(stream);
        let value = |o: K| serde_json::to_value(o).unwrap_or_default();
        while let Some(event) = stream.next().await {
            let msg = match event {
                Ok(Event::Apply(o)) => Msg::Event(kind, Event::Apply(value(o))),
                Ok(Event::Delete(o)) => Msg::Event(kind, Event::Delete(value(o))),
                Ok(Event::Init) => Msg::Event(kind, Event::Init),
                Ok(Event::InitApply(o)) => Msg::Event(kind, Event::InitApply(value(o))),
                Ok(Event::InitDone) => Msg::Event(kind, Event::InitDone),
                Err(e) => Msg::Error(kind, e.to_string()),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
}

impl Controller {
    /// Starts the watchers and the task. `deploy`: create the waypoints' objects (else only
    /// observe them for status); `write_status`: write Gateway and route status.
    pub fn start(
        client: Client,
        deploy: Option<DeploySettings>,
        write_status: bool,
        domain: String,
        status: Arc<Mutex<KubeStatus>>,
    ) -> Self {
        let (tx, events) = mpsc::channel(1024);
        let labelled = || watcher::Config::default().labels(GATEWAY_NAME_LABEL);
        let mut watched = BTreeSet::from([Owned::Deployment, Owned::Service]);
        spawn_watcher(
            Api::<Deployment>::all(client.clone()),
            labelled(),
            Owned::Deployment,
            tx.clone(),
        );
        spawn_watcher(
            Api::<Service>::all(client.clone()),
            labelled(),
            Owned::Service,
            tx.clone(),
        );
        if deploy.is_some() {
            watched.extend([Owned::ServiceAccount, Owned::ConfigMap]);
            spawn_watcher(
                Api::<ServiceAccount>::all(client.clone()),
                labelled(),
                Owned::ServiceAccount,
                tx.clone(),
            );
            spawn_watcher(
                Api::<ConfigMap>::all(client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={ROOT_CERT_CONFIGMAP}")),
                Owned::ConfigMap,
                tx,
            );
        }
        {
            let mut s = status.lock().expect("status lock");
            s.waypoint_controller.deploys = deploy.is_some();
            s.waypoint_controller.writes_status = write_status;
        }
        let (inputs, inputs_rx) = watch::channel(None);
        let state = State {
            client,
            deploy,
            write_status,
            domain,
            watched,
            inputs: None,
            observed: BTreeMap::new(),
            listing: BTreeMap::new(),
            synced: BTreeSet::new(),
            foreign: BTreeSet::new(),
            gateways_written: HashMap::new(),
            routes_written: HashMap::new(),
            status,
        };
        tokio::spawn(state.run(inputs_rx, events));
        Self { inputs }
    }

    /// Hands over the latest inputs (only when they changed).
    pub fn update(&self, inputs: Inputs) {
        self.inputs.send_if_modified(|current| {
            if current.as_deref() == Some(&inputs) {
                return false;
            }
            *current = Some(Arc::new(inputs));
            true
        });
    }
}

/// A Gateway, and what it is deployed as (`None`: deployment is off).
struct Deployed<'a> {
    gateway: &'a Gateway,
    /// An ingress Gateway's status from the translation.
    ingress: Option<&'a IngressStatus>,
    rendered: Option<Result<Rendered, NotDeployable>>,
}

struct State {
    client: Client,
    deploy: Option<DeploySettings>,
    write_status: bool,
    domain: String,
    watched: BTreeSet<Owned>,
    inputs: Option<Arc<Inputs>>,
    /// What the API server holds of our objects, as it returned them.
    observed: BTreeMap<Key, Value>,
    /// Objects of a relist in progress.
    listing: BTreeMap<Owned, Vec<Value>>,
    synced: BTreeSet<Owned>,
    /// ServiceAccounts that exist and are not their Gateway's (checked again when Gateways
    /// change).
    foreign: BTreeSet<(String, String)>,
    /// What was last written (or found) per Gateway and route.
    gateways_written: HashMap<String, GatewayStatus>,
    routes_written: HashMap<String, (Option<i64>, Vec<ParentStatus>)>,
    status: Arc<Mutex<KubeStatus>>,
}

fn key_of(kind: Owned, v: &Value) -> Key {
    let meta = &v["metadata"];
    let s = |f: &str| meta[f].as_str().unwrap_or_default().to_owned();
    (kind, s("namespace"), s("name"))
}

/// The uid of an object's controller (its owner reference with `controller: true`).
fn controller_uid(v: &Value) -> Option<&str> {
    v["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)?["uid"]
        .as_str()
}

impl State {
    async fn run(
        mut self,
        mut inputs: watch::Receiver<Option<Arc<Inputs>>>,
        mut events: mpsc::Receiver<Msg>,
    ) {
        let mut backoff = Duration::from_secs(1);
        let mut retry: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                changed = inputs.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                msg = events.recv() => match msg {
                    Some(m) => self.handle(m),
                    None => return,
                },
                _ = tokio::time::sleep_until(retry.unwrap_or_else(tokio::time::Instant::now)),
                    if retry.is_some() => retry = None,
            }
            loop {
                match tokio::time::timeout(DEBOUNCE, events.recv()).await {
                    Ok(Some(m)) => self.handle(m),
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let latest = inputs.borrow_and_update().clone();
            let gateways = |i: &Arc<Inputs>| {
                (
                    i.gateways.clone(),
                    i.ingress.iter().map(|(g, _)| g.clone()).collect::<Vec<_>>(),
                )
            };
            if latest.as_ref().map(gateways) != self.inputs.as_ref().map(gateways) {
                self.foreign.clear();
            }
            self.inputs = latest;
            if self.inputs.is_none() || !self.watched.is_subset(&self.synced) {
                continue;
            }
            if self.reconcile().await {
                backoff = Duration::from_secs(1);
                retry = None;
            } else {
                retry = Some(tokio::time::Instant::now() + backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        let (kind, event) = match msg {
            Msg::Event(kind, event) => (kind, event),
            Msg::Error(kind, e) => {
                tracing::warn!(?kind, "waypoint controller: watch failing (retrying): {e}");
                self.record(format!("watch {kind:?}"), Err(e));
                return;
            }
        };
        match event {
            Event::Apply(v) => {
                self.observed.insert(key_of(kind, &v), v);
            }
            Event::Delete(v) => {
                self.observed.remove(&key_of(kind, &v));
            }
            Event::Init => {
                self.listing.insert(kind, Vec::new());
            }
            Event::InitApply(v) => self.listing.entry(kind).or_default().push(v),
            Event::InitDone => {
                let listed = self.listing.remove(&kind).unwrap_or_default();
                self.observed.retain(|k, _| k.0 != kind);
                for v in listed {
                    self.observed.insert(key_of(kind, &v), v);
                }
                self.synced.insert(kind);
                self.record(format!("watch {kind:?}"), Ok(()));
            }
        }
    }

    fn record(&self, object: String, result: Result<(), String>) {
        let mut s = self.status.lock().expect("status lock");
        let c = &mut s.waypoint_controller;
        match result {
            Ok(()) => {
                c.errors.remove(&object);
            }
            Err(e) => {
                c.errors.insert(object, e);
            }
        }
    }

    /// Brings everything in step; whether every call succeeded.
    async fn reconcile(&mut self) -> bool {
        let Some(inputs) = self.inputs.clone() else {
            return true;
        };
        // Without deployment nothing is rendered: the status reads what someone else deployed.
        let rendered: Vec<Deployed<'_>> = inputs
            .gateways
            .iter()
            .map(|gw| Deployed {
                gateway: gw,
                ingress: None,
                rendered: self.deploy.as_ref().map(|s| render::render(gw, s)),
            })
            .chain(inputs.ingress.iter().map(|(gw, status)| {
                Deployed {
                    gateway: gw,
                    ingress: Some(status),
                    rendered: self
                        .deploy
                        .as_ref()
                        .map(|s| render::ingress::render_ingress(gw, s)),
                }
            }))
            .collect();
        let mut ok = true;
        if let Some(settings) = self.deploy.clone() {
            // The root in every namespace with a waypoint, and in the root namespace, where the
            // node DaemonSets (ztunnel, the node agent) mount it to verify istiod-lite.
            let mut namespaces: BTreeSet<&str> = rendered
                .iter()
                .filter(|d| matches!(d.rendered, Some(Ok(_))))
                .filter_map(|d| d.gateway.metadata.namespace.as_deref())
                .collect();
            namespaces.insert(settings.info.root_namespace.as_str());
            for ns in namespaces {
                let cm = render::root_cert_config_map(ns, &settings.root_pem);
                ok &= self.ensure(Owned::ConfigMap, &cm).await;
            }
            for d in &rendered {
                let (gw, Some(Ok(r))) = (d.gateway, &d.rendered) else {
                    continue;
                };
                ok &= self.ensure_service_account(gw, &r.service_account).await;
                ok &= self.ensure(Owned::Service, &r.service).await;
                ok &= self.ensure(Owned::Deployment, &r.deployment).await;
            }
            let foreign = self
                .foreign
                .iter()
                .map(|(ns, name)| format!("{ns}/{name}"))
                .collect();
            self.status
                .lock()
                .expect("status lock")
                .waypoint_controller
                .foreign_service_accounts = foreign;
        }
        ok &= self.gateway_statuses(&rendered).await;
        if self.write_status {
            ok &= self.route_statuses(&inputs.routes).await;
        }
        ok
    }

    /// Applies `desired` unless the API server already holds it.
    async fn ensure<K>(&mut self, kind: Owned, desired: &K) -> bool
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug,
    {
        let want = serde_json::to_value(desired).unwrap_or_default();
        let key = key_of(kind, &want);
        if self.observed.get(&key).is_some_and(|o| subset(&want, o)) {
            return true;
        }
        let (_, ns, name) = &key;
        let object = format!("{kind:?} {ns}/{name}");
        let api = Api::<K>::namespaced(self.client.clone(), ns);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(name, &params, &Patch::Apply(desired)).await {
            Ok(applied) => {
                tracing::info!("applied {object}");
                let applied = serde_json::to_value(applied).unwrap_or_default();
                self.observed.insert(key, applied);
                self.status
                    .lock()
                    .expect("status lock")
                    .waypoint_controller
                    .applies += 1;
                self.record(object, Ok(()));
                true
            }
            Err(e) => {
                tracing::warn!("applying {object}: {e}");
                self.record(object, Err(e.to_string()));
                false
            }
        }
    }

    /// The Gateway's ServiceAccount, unless one by that name exists that is not its own.
    async fn ensure_service_account(&mut self, gw: &Gateway, desired: &ServiceAccount) -> bool {
        let uid = gw.metadata.uid.as_deref();
        let ns = desired.metadata.namespace.clone().unwrap_or_default();
        let name = desired.metadata.name.clone().unwrap_or_default();
        let key = (Owned::ServiceAccount, ns.clone(), name.clone());
        let theirs = |v: &Value| controller_uid(v) != uid;
        if let Some(observed) = self.observed.get(&key) {
            if theirs(observed) {
                self.foreign.insert((ns, name));
                return true;
            }
            return self.ensure(Owned::ServiceAccount, desired).await;
        }
        if self.foreign.contains(&(ns.clone(), name.clone())) {
            return true;
        }
        // Not one of ours (those carry the label we watch): does it exist at all?
        let api = Api::<ServiceAccount>::namespaced(self.client.clone(), &ns);
        match api.get_opt(&name).await {
            Ok(Some(existing)) => {
                let existing = serde_json::to_value(existing).unwrap_or_default();
                if theirs(&existing) {
                    tracing::info!(
                        "ServiceAccount {ns}/{name} exists and is not Gateway {ns}/{}'s: used as it is",
                        gw.metadata.name.as_deref().unwrap_or_default()
                    );
                    self.foreign.insert((ns, name));
                    return true;
                }
                self.observed.insert(key, existing);
                self.ensure(Owned::ServiceAccount, desired).await
            }
            Ok(None) => self.ensure(Owned::ServiceAccount, desired).await,
            Err(e) => {
                self.record(format!("ServiceAccount {ns}/{name}"), Err(e.to_string()));
                false
            }
        }
    }

    /// Computes each Gateway's status (shown in `/debug/config`) and, with status writes on,
    /// writes those that changed.
    async fn gateway_statuses(&mut self, rendered: &[Deployed<'_>]) -> bool {
        let resource = ApiResource::erase::<Gateway>(&());
        let mut ok = true;
        let mut current = BTreeSet::new();
        let mut shown = BTreeMap::new();
        let mut statuses = Vec::new();
        for d in rendered {
            let gw = d.gateway;
            let ns = gw.metadata.namespace.clone().unwrap_or_default();
            let name = gw.metadata.name.clone().unwrap_or_default();
            let not_deployable = match &d.rendered {
                Some(Err(e)) => Some(e),
                _ => None,
            };
            let status = match d.ingress {
                None => {
                    let observed = |kind| self.observed.get(&(kind, ns.clone(), name.clone()));
                    gateway_status(
                        gw,
                        not_deployable,
                        observed(Owned::Service),
                        observed(Owned::Deployment),
                        &self.domain,
                    )
                }
                Some(pure) => {
                    let object = render::ingress::object_name(gw);
                    let observed = |kind| self.observed.get(&(kind, ns.clone(), object.clone()));
                    ingress_gateway_status(
                        pure,
                        not_deployable,
                        observed(Owned::Service),
                        observed(Owned::Deployment),
                    )
                }
            };
            shown.insert(
                format!("{ns}/{name}"),
                status.debug_json(&format!("{ns}/{name}")),
            );
            statuses.push((ns, name, status));
        }
        self.status
            .lock()
            .expect("status lock")
            .waypoint_controller
            .gateways = shown;
        if !self.write_status {
            return true;
        }
        for (ns, name, status) in statuses {
            let object = format!("Gateway {ns}/{name}");
            current.insert(object.clone());
            if self.gateways_written.get(&object) == Some(&status) {
                continue;
            }
            let now = now();
            let result = update_status(&self.client, &resource, &ns, &name, |current| {
                status.merge_into(current, &now)
            })
            .await;
            let written = self.written(object.clone(), result);
            if written {
                self.gateways_written.insert(object, status);
            }
            ok &= written;
        }
        self.gateways_written.retain(|k, _| current.contains(k));
        ok
    }

    async fn route_statuses(&mut self, routes: &[RouteStatus]) -> bool {
        let http = ApiResource::erase::<HttpRoute>(&());
        let grpc = ApiResource::erase::<GrpcRoute>(&());
        let mut ok = true;
        let mut current = BTreeSet::new();
        for route in routes {
            let object = route.object();
            let wanted = (route.generation, route.parents.clone());
            let before = self.routes_written.get(&object);
            current.insert(object.clone());
            if before == Some(&wanted)
                || (before.is_none() && route.parents.is_empty() && !route.has_ours)
            {
                continue;
            }
            let resource = if route.kind == "GRPCRoute" {
                &grpc
            } else {
                &http
            };
            let now = now();
            let result = update_status(
                &self.client,
                resource,
                &route.namespace,
                &route.name,
                |current| route_status_json(route, current, &now),
            )
            .await;
            let written = self.written(object.clone(), result);
            if written {
                self.routes_written.insert(object, wanted);
            }
            ok &= written;
        }
        self.routes_written.retain(|k, _| current.contains(k));
        ok
    }

    /// Records a status write's outcome; whether it succeeded.
    fn written(&self, object: String, result: Result<bool, kube::Error>) -> bool {
        match result {
            Ok(wrote) => {
                if wrote {
                    tracing::debug!("wrote the status of {object}");
                    self.status
                        .lock()
                        .expect("status lock")
                        .waypoint_controller
                        .status_writes += 1;
                }
                self.record(object, Ok(()));
                true
            }
            Err(e) => {
                tracing::warn!("writing the status of {object}: {e}");
                self.record(object, Err(e.to_string()));
                false
            }
        }
    }
}

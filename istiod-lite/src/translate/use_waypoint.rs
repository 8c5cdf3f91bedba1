//! Which Services and pods use which waypoint, by Istio's rules.
//!
//! - A waypoint is a Gateway of class `istio-waypoint`; its label `istio.io/waypoint-for`
//!   (`service`, the default; `workload`; `all`; `none`) says what it serves.
//! - `istio.io/use-waypoint: <name>` (with `istio.io/use-waypoint-namespace: <ns>`, default the
//!   labelled object's namespace) on a Service or Pod, else on its Namespace, names the
//!   waypoint; the object's own label wins over its namespace's, and `none` opts out.
//! - A Service binding needs a waypoint for `service` or `all`, a pod binding `workload` or
//!   `all`; a namespace-wide label simply does not bind what its waypoint does not serve. A
//!   waypoint takes objects from its own namespace, or from those its listeners'
//!   `allowedRoutes.namespaces` admit.
//! - A waypoint's own pods (label `gateway.networking.k8s.io/gateway-name`) and Service (named
//!   like the Gateway, or carrying that label) never use a waypoint.
//!
//! A label naming a waypoint that does not exist or cannot serve the object binds nothing and
//! yields a [`Note`] naming the labelled object and the label.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use meshcore::api::workload as wire;

use super::{ClusterInfo, Note};
use crate::cluster::Gateway;
use crate::crd::gateway::WAYPOINT_CLASS;

pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// On a waypoint's pods (and Service): the Gateway they implement.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// On a Gateway: the service account its pods run as (default: the Gateway's name).
pub const SERVICE_ACCOUNT_ANNOTATION: &str = "gateway.istio.io/service-account";
/// Where a waypoint takes HBONE.
pub const HBONE_MTLS_PORT: u32 = 15008;

/// What a waypoint serves (`istio.io/waypoint-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaypointFor {
    Service,
    Workload,
    All,
    None,
}

impl WaypointFor {
    fn serves(self, kind: Kind) -> bool {
        matches!(
            (self, kind),
            (WaypointFor::All, _)
                | (WaypointFor::Service, Kind::Service)
                | (WaypointFor::Workload, Kind::Workload)
        )
    }

    fn as_str(self) -> &'static str {
        match self {
            WaypointFor::Service => "service",
            WaypointFor::Workload => "workload",
            WaypointFor::All => "all",
            WaypointFor::None => "none",
        }
    }
}

/// What is being bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Service,
    Workload,
}

/// A waypoint Gateway.
#[derive(Debug, Clone)]
pub struct Waypoint<'a> {
    pub gateway: &'a Gateway,
    pub namespace: &'a str,
    pub name: &'a str,
    pub waypoint_for: WaypointFor,
}

impl Waypoint<'_> {
    /// `namespace/name`: the waypoint's resource name.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The service account its pods run as: the annotation, else the Gateway's name.
    pub fn service_account(&self) -> &str {
        self.gateway
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SERVICE_ACCOUNT_ANNOTATION))
            .map_or(self.name, String::as_str)
    }

    /// The SPIFFE ID a waypoint must prove to be sent this waypoint's configuration.
    pub fn identity(&self, info: &ClusterInfo) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            info.trust_domain,
            self.namespace,
            self.service_account()
        )
    }

    /// Its Service's hostname: `<name>.<namespace>.svc.<domain>`.
    pub fn hostname(&self, info: &ClusterInfo) -> String {
        format!("{}.{}.svc.{}", self.name, self.namespace, info.domain)
    }

    /// What a Service or Workload resource says about its waypoint.
    pub fn address(&self, info: &ClusterInfo) -> wire::GatewayAddress {
        wire::GatewayAddress {
            destination: Some(wire::gateway_address::Destination::Hostname(
                wire::NamespacedHostname {
                    namespace: self.namespace.to_owned(),
                    hostname: self.hostname(info),
                },
            )),
            hbone_mtls_port: HBONE_MTLS_PORT,
        }
    }

    /// Whether objects of `namespace` may use it (any listener's `allowedRoutes.namespaces`;
    /// without listeners, its own namespace only).
    fn admits(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        namespace == self.namespace
            || self
                .gateway
                .spec
                .listeners
                .iter()
                .any(|l| l.allows_namespace(self.namespace, namespace, labels))
    }
}

/// The cluster's waypoints, by namespace and name.
#[derive(Debug, Default)]
pub struct Waypoints<'a> {
    by_key: BTreeMap<&'a str, BTreeMap<&'a str, Waypoint<'a>>>,
    /// Gateways of other classes (their class), named in notes when a label points at one.
    others: BTreeMap<&'a str, BTreeMap<&'a str, &'a str>>,
}

impl<'a> Waypoints<'a> {
    pub fn new(gateways: impl IntoIterator<Item = &'a Gateway>) -> Self {
        let mut out = Self::default();
        for gw in gateways {
            let (Some(namespace), Some(name)) = (
                gw.metadata.namespace.as_deref(),
                gw.metadata.name.as_deref(),
            ) else {
                continue;
            };
            if gw.spec.gateway_class_name != WAYPOINT_CLASS {
                out.others
                    .entry(namespace)
                    .or_default()
                    .insert(name, gw.spec.gateway_class_name.as_str());
                continue;
            }
            let label = gw
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(WAYPOINT_FOR));
            let waypoint_for = match label.map(String::as_str) {
                Some("workload") => WaypointFor::Workload,
                Some("all") => WaypointFor::All,
                Some("none") => WaypointFor::None,
                _ => WaypointFor::Service,
            };
            out.by_key.entry(namespace).or_default().insert(
                name,
                Waypoint {
                    gateway: gw,
                    namespace,
                    name,
                    waypoint_for,
                },
            );
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Waypoint<'a>> {
        self.by_key.values().flat_map(BTreeMap::values)
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&Waypoint<'a>> {
        self.by_key.get(namespace)?.get(name)
    }

    /// A waypoint's own Service: named like a waypoint in its namespace, or labelled with the
    /// Gateway it implements.
    pub fn is_own_service(&self, svc: &Service) -> bool {
        let meta = &svc.metadata;
        let named = self.get(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        );
        named.is_some() || is_waypoint_object(meta.labels.as_ref())
    }

    /// The waypoint an object asks for, or `None`; `Err` when a label names one that cannot
    /// serve it. `own` are the object's labels, `namespace` its Namespace.
    pub fn resolve(
        &self,
        kind: Kind,
        object: &str,
        object_namespace: &str,
        own: Option<&BTreeMap<String, String>>,
        namespace: Option<&Namespace>,
    ) -> Result<Option<&Waypoint<'a>>, Note> {
        let ns_labels = namespace.and_then(|n| n.metadata.labels.as_ref());
        let (labels, from_namespace) = match (own, ns_labels) {
            (Some(l), _) if l.contains_key(USE_WAYPOINT) => (l, false),
            (_, Some(l)) if l.contains_key(USE_WAYPOINT) => (l, true),
            _ => return Ok(None),
        };
        let name = labels[USE_WAYPOINT].as_str();
        if name == "none" {
            return Ok(None);
        }
        let wp_namespace = labels
            .get(USE_WAYPOINT_NAMESPACE)
            .map_or(object_namespace, String::as_str);
        let note = |message: String| Note {
            object: if from_namespace {
                format!("Namespace {object_namespace}")
            } else {
                object.to_owned()
            },
            message: format!("{USE_WAYPOINT}: {message}; no waypoint used"),
        };
        let Some(waypoint) = self.get(wp_namespace, name) else {
            let other = self.others.get(wp_namespace).and_then(|o| o.get(name));
            return Err(note(match other {
                Some(class) => format!(
                    "Gateway {wp_namespace}/{name} is of class {class}, not {WAYPOINT_CLASS}"
                ),
                None => format!(
                    "waypoint {wp_namespace}/{name} does not exist (no Gateway of class \
                     {WAYPOINT_CLASS} by that name)"
                ),
            }));
        };
        let empty = BTreeMap::new();
        if !waypoint.admits(object_namespace, ns_labels.unwrap_or(&empty)) {
            return Err(note(format!(
                "waypoint {} does not admit namespace {object_namespace} (its listeners' \
                 allowedRoutes.namespaces)",
                waypoint.key()
            )));
        }
        if !waypoint.waypoint_for.serves(kind) {
            // A namespace-wide label meets both kinds; it binds the kind its waypoint serves.
            if from_namespace {
                return Ok(None);
            }
            let what = match kind {
                Kind::Service => "Services",
                Kind::Workload => "workloads",
            };
            return Err(note(format!(
                "waypoint {} is {WAYPOINT_FOR}={} and does not serve {what}",
                waypoint.key(),
                waypoint.waypoint_for.as_str()
            )));
        }
        Ok(Some(waypoint))
    }
}

fn is_waypoint_object(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.is_some_and(|l| l.contains_key(GATEWAY_NAME_LABEL))
}

/// `(namespace, name)` of a Service or pod.
pub type ObjectKey = (String, String);

/// Who uses which waypoint: objects to the waypoint's `(namespace, name)`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Bindings {
    pub services: BTreeMap<ObjectKey, ObjectKey>,
    pub pods: BTreeMap<ObjectKey, ObjectKey>,
    pub notes: Vec<Note>,
}

impl Bindings {
    /// The Services bound to a waypoint.
    pub fn services_of(&self, waypoint: &ObjectKey) -> BTreeSet<&ObjectKey> {
        self.services
            .iter()
            .filter(|(_, w)| *w == waypoint)
            .map(|(s, _)| s)
            .collect()
    }

    /// The pods bound to a waypoint.
    pub fn pods_of(&self, waypoint: &ObjectKey) -> BTreeSet<&ObjectKey> {
        self.pods
            .iter()
            .filter(|(_, w)| *w == waypoint)
            .map(|(p, _)| p)
            .collect()
    }
}

/// Binds Services and pods to waypoints.
pub fn bind<'a>(
    waypoints: &Waypoints<'_>,
    namespaces: &BTreeMap<&str, &Namespace>,
    services: impl IntoIterator<Item = &'a Service>,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Bindings {
    let mut out = Bindings::default();
    let record = |kind: Kind,
                  meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
                  out: &mut Bindings| {
        let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
            return;
        };
        let object = match kind {
            Kind::Service => format!("Service {ns}/{name}"),
            Kind::Workload => format!("Pod {ns}/{name}"),
        };
        let namespace = namespaces.get(ns).copied();
        match waypoints.resolve(kind, &object, ns, meta.labels.as_ref(), namespace) {
            Ok(Some(w)) => {
                let key = (ns.to_owned(), name.to_owned());
                let target = (w.namespace.to_owned(), w.name.to_owned());
                match kind {
                    Kind::Service => out.services.insert(key, target),
                    Kind::Workload => out.pods.insert(key, target),
                };
            }
            Ok(None) => {}
            Err(note) => out.notes.push(note),
        }
    };
    for svc in services {
        if !waypoints.is_own_service(svc) {
            record(Kind::Service, &svc.metadata, &mut out);
        }
    }
    for pod in pods {
        if !is_waypoint_object(pod.metadata.labels.as_ref()) {
            record(Kind::Workload, &pod.metadata, &mut out);
        }
    }
    out.notes
        .sort_by(|a, b| (&a.object, &a.message).cmp(&(&b.object, &b.message)));
    out.notes.dedup();
    out
}

/// Sets `waypoint` on the Service and Workload resources bound to one.
pub fn fill(
    bindings: &Bindings,
    waypoints: &Waypoints<'_>,
    info: &ClusterInfo,
    services: &mut [wire::Service],
    workloads: &mut [wire::Workload],
) {
    let address = |(ns, name): &ObjectKey| waypoints.get(ns, name).map(|w| w.address(info));
    for s in services {
        let key = (s.namespace.clone(), s.name.clone());
        s.waypoint = bindings.services.get(&key).and_then(address);
    }
    for w in workloads {
        let key = (w.namespace.clone(), w.name.clone());
        w.waypoint = bindings.pods.get(&key).and_then(address);
    }
}

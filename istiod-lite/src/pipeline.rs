//! The config pipeline between the sources and the xDS server: the cluster's objects, kept per
//! namespace, translated incrementally.
//!
//! Nothing a pod's Workload depends on crosses namespaces except the root namespace's
//! AuthorizationPolicies and PeerAuthentications, and Linkerd's MeshTLSAuthentications and
//! NetworkAuthentications (a Linkerd AuthorizationPolicy may require one of another
//! namespace), so the cluster is cut into one slice per namespace and each slice is translated
//! by [`translate`] on its own (with the root namespace's policies and every Linkerd
//! authentication added). A change re-translates and re-encodes only the slices it touched
//! (every slice when it is a root-namespace policy; for a Linkerd authentication, its own and
//! those whose Linkerd AuthorizationPolicies require it), then the encoded parts are merged
//! into the next [`ResourceSet`]. A one-pod change costs one namespace, not the cluster.
//!
//! Waypoints are the exception: a waypoint's configuration gathers Services, routes and
//! policies from any namespace, so it is computed from the whole view (borrowed, not copied)
//! after any change, with the status each route is owed, which costs nothing while there is no
//! waypoint and no route. A Gateway change re-translates every slice, since Services and pods
//! anywhere may name it. Ingress gateways (class `istio`) are computed with the waypoints; the
//! TLS Secrets and ReferenceGrants they read reach no ztunnel, so a change to one re-translates
//! no slice, only the gateway configurations.
//!
//! An object with invalid values (an AuthorizationPolicy's, or a port out of range anywhere:
//! [`validate`]) is rejected on its own: its last good version (or nothing, if it never had
//! one) stays in force, as when the API server's validation refuses an update, and the reason
//! is kept for the source to report. Everything else still flows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::cluster::{
    AuthorizationPolicy, CiliumClusterwideNetworkPolicy, Cluster, Gateway, MeshTlsAuthentication,
    NetworkAuthentication, PeerAuthentication, PodIdentity, ServiceIdentity,
};
use crate::crd::linkerd_policy::{names_kind, GROUP as LINKERD_POLICY};
use crate::translate::ingress::IngressStatus;
use crate::translate::peer_authn::STATIC_STRICT;
use crate::translate::route_status::RouteStatus;
use crate::translate::waypoints::{self, View};
use crate::translate::{translate, ClusterInfo, Note};
use crate::xds::resources::{waypoint_resources, Encoded, Resource};
use crate::xds::ResourceSet;

pub struct Pipeline {
    info: ClusterInfo,
    slices: BTreeMap<String, Slice>,
    /// Slices removed since the last build (their resources must go).
    removed: bool,
    /// Objects refused for invalid values (kind, namespace, name → reason).
    rejected: BTreeMap<(Kind, String, String), Note>,
    generation: u64,
    /// Something changed since the waypoints' configurations were last computed.
    waypoints_dirty: bool,
    /// Each waypoint's configuration resource, by `namespace/name`.
    waypoints: BTreeMap<String, Arc<Resource>>,
    /// `namespace/name` → the identity that may read it.
    waypoint_identities: BTreeMap<String, String>,
    waypoint_notes: Vec<Note>,
    /// The status each route is owed, as of the last computation.
    route_statuses: Vec<RouteStatus>,
    /// Each ingress Gateway's status (pure part), as of the last computation.
    ingress_statuses: Vec<IngressStatus>,
    /// Bumped each time the waypoints (and route statuses) are recomputed.
    waypoint_epoch: u64,
}

impl Pipeline {
    pub fn new(info: ClusterInfo) -> Self {
        Self {
            info,
            slices: BTreeMap::new(),
            removed: false,
            rejected: BTreeMap::new(),
            generation: 0,
            waypoints_dirty: true,
            waypoints: BTreeMap::new(),
            waypoint_identities: BTreeMap::new(),
            waypoint_notes: Vec::new(),
            route_statuses: Vec::new(),
            ingress_statuses: Vec::new(),
            waypoint_epoch: 0,
        }
    }

    pub fn info(&self) -> &ClusterInfo {
        &self.info
    }

    fn mark(&mut self, namespace: &str, kind: Kind) {
        // Any change may concern a waypoint: its Services, their pods, routes, policies.
        self.waypoints_dirty = true;
        let cross = (namespace == self.info.root_namespace
            && matches!(kind, Kind::AuthorizationPolicy | Kind::PeerAuthentication))
            || matches!(kind, Kind::Gateway | Kind::CiliumClusterwideNetworkPolicy);
        if kind.waypoint_only() {
            // Routes and traffic rules reach waypoints only, never ztunnels.
        } else if cross {
            self.slices.values_mut().for_each(|s| s.dirty = true);
        } else if let Some(s) = self.slices.get_mut(namespace) {
            s.dirty = true;
        }
    }

    /// A Linkerd authentication changed: the namespaces whose Linkerd AuthorizationPolicies
    /// require it are translated again (as its own, by [`Self::mark`]).
    fn mark_referrers(&mut self, kind: Kind, namespace: &str, name: &str) {
        let wanted = match kind {
            Kind::MeshTlsAuthentication => "MeshTLSAuthentication",
            Kind::NetworkAuthentication => "NetworkAuthentication",
            _ => return,
        };
        for (ns, slice) in &mut self.slices {
            let requires = slice.linkerd_policies.values().any(|p| {
                p.spec.required_authentication_refs.iter().any(|r| {
                    names_kind(r.group.as_deref(), &r.kind, LINKERD_POLICY, wanted)
                        && r.name.as_deref() == Some(name)
                        && r.namespace.as_deref().unwrap_or(ns) == namespace
                })
            });
            if requires {
                slice.dirty = true;
            }
        }
    }

    /// Adds or updates an object.
    pub fn apply(&mut self, object: Object) {
        let kind = object.kind();
        let (namespace, name) = object.slice_key();
        let rejected = (kind, namespace.clone(), name.clone());
        if let Err(note) = validate::check(&object, &self.info.root_namespace) {
            tracing::warn!("refused, its last good version (if any) stays: {note}");
            self.rejected.insert(rejected, note);
            return;
        }
        self.rejected.remove(&rejected);
        let slice = self.slices.entry(namespace.clone()).or_default();
        let key = name.clone();
        let peer_before = match &object {
            Object::Pod(_) => Some(slice.pods.get(&name).and_then(PodIdentity::of)),
            _ => None,
        };
        let service_before = match &object {
            Object::Service(_) => Some(slice.services.get(&name).and_then(ServiceIdentity::of)),
            _ => None,
        };
        let changed = match object {
            Object::Namespace(o) => {
                let changed = slice.namespace.as_ref() != Some(&o);
                slice.namespace = Some(o);
                changed
            }
            Object::Pod(o) => put(&mut slice.pods, name, o),
            Object::Service(o) => put(&mut slice.services, name, o),
            Object::EndpointSlice(o) => put(&mut slice.endpoint_slices, name, o),
            Object::AuthorizationPolicy(o) => put(&mut slice.policies, name, o),
            Object::PeerAuthentication(o) => put(&mut slice.peer_authns, name, o),
            Object::RequestAuthentication(o) => put(&mut slice.request_authns, name, o),
            Object::Gateway(o) => put(&mut slice.gateways, name, o),
            Object::HttpRoute(o) => put(&mut slice.http_routes, name, o),
            Object::GrpcRoute(o) => put(&mut slice.grpc_routes, name, o),
            Object::VirtualService(o) => put(&mut slice.virtual_services, name, o),
            Object::DestinationRule(o) => put(&mut slice.destination_rules, name, o),
            Object::TrafficSplit(o) => put(&mut slice.traffic_splits, name, o),
            Object::ServiceProfile(o) => put(&mut slice.service_profiles, name, o),
            Object::Server(o) => put(&mut slice.servers, name, o),
            Object::ServerAuthorization(o) => put(&mut slice.server_authorizations, name, o),
            Object::LinkerdAuthorizationPolicy(o) => put(&mut slice.linkerd_policies, name, o),
            Object::MeshTlsAuthentication(o) => put(&mut slice.mesh_tls_authns, name, o),
            Object::NetworkAuthentication(o) => put(&mut slice.network_authns, name, o),
            Object::CiliumNetworkPolicy(o) => put(&mut slice.cilium_policies, name, o),
            Object::CiliumClusterwideNetworkPolicy(o) => {
                put(&mut slice.cilium_clusterwide, name, o)
            }
            Object::Secret(o) => put(&mut slice.secrets, name, o),
            Object::ReferenceGrant(o) => put(&mut slice.reference_grants, name, o),
        };
        if let Some(before) = peer_before {
            let after = self.slices[&namespace]
                .pods
                .get(&key)
                .and_then(PodIdentity::of);
            if before != after {
                self.mark_cilium_selectors();
            }
        }
        if let Some(before) = service_before {
            let after = self.slices[&namespace]
                .services
                .get(&key)
                .and_then(ServiceIdentity::of);
            if before != after {
                self.mark_cilium_services();
            }
        }
        if changed {
            self.mark(&namespace, kind);
            self.mark_referrers(kind, &namespace, &key);
        }
    }

    /// Removes an object (a Namespace: only the Namespace object; its contents go one by one,
    /// as Kubernetes deletes them).
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) {
        self.rejected
            .remove(&(kind, namespace.to_owned(), name.to_owned()));
        let Some(slice) = self.slices.get_mut(namespace) else {
            return;
        };
        let peer_before = (kind == Kind::Pod)
            .then(|| slice.pods.get(name).and_then(PodIdentity::of))
            .flatten();
        let removed = match kind {
            Kind::Namespace => slice.namespace.take().is_some(),
            Kind::Pod => slice.pods.remove(name).is_some(),
            Kind::Service => slice.services.remove(name).is_some(),
            Kind::EndpointSlice => slice.endpoint_slices.remove(name).is_some(),
            Kind::AuthorizationPolicy => slice.policies.remove(name).is_some(),
            Kind::PeerAuthentication => slice.peer_authns.remove(name).is_some(),
            Kind::RequestAuthentication => slice.request_authns.remove(name).is_some(),
            Kind::Gateway => slice.gateways.remove(name).is_some(),
            Kind::HttpRoute => slice.http_routes.remove(name).is_some(),
            Kind::GrpcRoute => slice.grpc_routes.remove(name).is_some(),
            Kind::VirtualService => slice.virtual_services.remove(name).is_some(),
            Kind::DestinationRule => slice.destination_rules.remove(name).is_some(),
            Kind::TrafficSplit => slice.traffic_splits.remove(name).is_some(),
            Kind::ServiceProfile => slice.service_profiles.remove(name).is_some(),
            Kind::Server => slice.servers.remove(name).is_some(),
            Kind::ServerAuthorization => slice.server_authorizations.remove(name).is_some(),
            Kind::LinkerdAuthorizationPolicy => slice.linkerd_policies.remove(name).is_some(),
            Kind::MeshTlsAuthentication => slice.mesh_tls_authns.remove(name).is_some(),
            Kind::NetworkAuthentication => slice.network_authns.remove(name).is_some(),
            Kind::CiliumNetworkPolicy => slice.cilium_policies.remove(name).is_some(),
            Kind::CiliumClusterwideNetworkPolicy => slice.cilium_clusterwide.remove(name).is_some(),
            Kind::Secret => slice.secrets.remove(name).is_some(),
            Kind::ReferenceGrant => slice.reference_grants.remove(name).is_some(),
        };
        if !removed {
            return;
        }
        if peer_before.is_some() {
            self.mark_cilium_selectors();
        }
        if kind == Kind::Service {
            self.mark_cilium_services();
        }
        let Some(slice) = self.slices.get_mut(namespace) else {
            return;
        };
        if slice.is_empty() {
            self.slices.remove(namespace);
            self.removed = true;
        }
        self.mark(namespace, kind);
        self.mark_referrers(kind, namespace, name);
    }

    /// Replaces every object of `kind` (a relist): those not in `objects` are deleted.
    pub fn replace_kind(&mut self, kind: Kind, objects: Vec<Object>) {
        let listed: BTreeSet<(String, String)> = objects.iter().map(Object::slice_key).collect();
        let stale: Vec<(String, String)> = self
            .slices
            .iter()
            .flat_map(|(ns, s)| s.names(kind).into_iter().map(|n| (ns.clone(), n)))
            .filter(|k| !listed.contains(k))
            .collect();
        for (ns, name) in stale {
            self.delete(kind, &ns, &name);
        }
        // A refused object that never had a good version is in no slice.
        self.rejected
            .retain(|(k, ns, name), _| *k != kind || listed.contains(&(ns.clone(), name.clone())));
        for o in objects {
            self.apply(o);
        }
    }

    /// Replaces the whole view (the manifest directory was read again).
    pub fn replace_all(&mut self, cluster: Cluster) {
        let Cluster {
            namespaces,
            pods,
            services,
            endpoint_slices,
            authorization_policies,
            peer_authentications,
            request_authentications,
            gateways,
            http_routes,
            grpc_routes,
            virtual_services,
            destination_rules,
            traffic_splits,
            service_profiles,
            servers,
            server_authorizations,
            linkerd_authorization_policies,
            mesh_tls_authentications,
            network_authentications,
            cilium_network_policies,
            cilium_clusterwide_network_policies,
            secrets,
            reference_grants,
            peer_pods: _,
            peer_services: _,
        } = cluster;
        self.replace_kind(
            Kind::Namespace,
            namespaces.into_iter().map(Object::Namespace).collect(),
        );
        self.replace_kind(Kind::Pod, pods.into_iter().map(Object::Pod).collect());
        self.replace_kind(
            Kind::Service,
            services.into_iter().map(Object::Service).collect(),
        );
        self.replace_kind(
            Kind::EndpointSlice,
            endpoint_slices
                .into_iter()
                .map(Object::EndpointSlice)
                .collect(),
        );
        self.replace_kind(
            Kind::AuthorizationPolicy,
            authorization_policies
                .into_iter()
                .map(Object::AuthorizationPolicy)
                .collect(),
        );
        self.replace_kind(
            Kind::PeerAuthentication,
            peer_authentications
                .into_iter()
                .map(Object::PeerAuthentication)
                .collect(),
        );
        self.replace_kind(
            Kind::RequestAuthentication,
            request_authentications
                .into_iter()
                .map(Object::RequestAuthentication)
                .collect(),
        );
        self.replace_kind(
            Kind::Gateway,
            gateways.into_iter().map(Object::Gateway).collect(),
        );
        self.replace_kind(
            Kind::HttpRoute,
            http_routes.into_iter().map(Object::HttpRoute).collect(),
        );
        self.replace_kind(
            Kind::GrpcRoute,
            grpc_routes.into_iter().map(Object::GrpcRoute).collect(),
        );
        self.replace_kind(
            Kind::VirtualService,
            virtual_services
                .into_iter()
                .map(Object::VirtualService)
                .collect(),
        );
        self.replace_kind(
            Kind::DestinationRule,
            destination_rules
                .into_iter()
                .map(Object::DestinationRule)
                .collect(),
        );
        self.replace_kind(
            Kind::TrafficSplit,
            traffic_splits
                .into_iter()
                .map(Object::TrafficSplit)
                .collect(),
        );
        self.replace_kind(
            Kind::ServiceProfile,
            service_profiles
                .into_iter()
                .map(Object::ServiceProfile)
                .collect(),
        );
        self.replace_kind(
            Kind::Server,
            servers.into_iter().map(Object::Server).collect(),
        );
        self.replace_kind(
            Kind::ServerAuthorization,
            server_authorizations
                .into_iter()
                .map(Object::ServerAuthorization)
                .collect(),
        );
        self.replace_kind(
            Kind::LinkerdAuthorizationPolicy,
            linkerd_authorization_policies
                .into_iter()
                .map(Object::LinkerdAuthorizationPolicy)
                .collect(),
        );
        self.replace_kind(
            Kind::MeshTlsAuthentication,
            mesh_tls_authentications
                .into_iter()
                .map(Object::MeshTlsAuthentication)
                .collect(),
        );
        self.replace_kind(
            Kind::NetworkAuthentication,
            network_authentications
                .into_iter()
                .map(Object::NetworkAuthentication)
                .collect(),
        );
        self.replace_kind(
            Kind::CiliumNetworkPolicy,
            cilium_network_policies
                .into_iter()
                .map(Object::CiliumNetworkPolicy)
                .collect(),
        );
        self.replace_kind(
            Kind::CiliumClusterwideNetworkPolicy,
            cilium_clusterwide_network_policies
                .into_iter()
                .map(Object::CiliumClusterwideNetworkPolicy)
                .collect(),
        );
        self.replace_kind(
            Kind::Secret,
            secrets.into_iter().map(Object::Secret).collect(),
        );
        self.replace_kind(
            Kind::ReferenceGrant,
            reference_grants
                .into_iter()
                .map(Object::ReferenceGrant)
                .collect(),
        );
    }

    /// Translates what changed since the last build. `None` when nothing did (after the first).
    pub fn build(&mut self) -> Option<ResourceSet> {
        let dirty: Vec<String> = self
            .slices
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(ns, _)| ns.clone())
            .collect();
        // The first build always yields a set, if an empty one.
        if dirty.is_empty() && !self.removed && !self.waypoints_dirty && self.generation > 0 {
            return None;
        }
        let root = self.slices.get(&self.info.root_namespace);
        let gateways: Vec<Gateway> = self
            .slices
            .values()
            .flat_map(|s| s.gateways.values().cloned())
            .collect();
        // Linkerd's authentications: AuthorizationPolicies of any namespace may require them.
        let authns = Authentications {
            mesh_tls: self
                .slices
                .values()
                .flat_map(|s| s.mesh_tls_authns.values().cloned())
                .collect(),
            network: self
                .slices
                .values()
                .flat_map(|s| s.network_authns.values().cloned())
                .collect(),
            cilium_clusterwide: self
                .slices
                .get("")
                .map(|s| s.cilium_clusterwide.values().cloned().collect())
                .unwrap_or_default(),
            peers: Vec::new(),
            services: Vec::new(),
        };
        let mut authns = authns;
        // Cilium's selectors pick pods of any namespace.
        let cilium = !authns.cilium_clusterwide.is_empty()
            || self.slices.values().any(|s| !s.cilium_policies.is_empty());
        if cilium {
            authns.peers = self
                .slices
                .values()
                .flat_map(|s| s.pods.values().filter_map(PodIdentity::of))
                .collect();
            authns.services = self
                .slices
                .values()
                .flat_map(|s| s.services.values().filter_map(ServiceIdentity::of))
                .collect();
        }
        let results: Vec<(String, Encoded, Vec<Note>)> = dirty
            .into_iter()
            .map(|ns| {
                let slice = &self.slices[&ns];
                let root = root.filter(|_| ns != self.info.root_namespace);
                let (encoded, notes) =
                    translate_slice(&ns, slice, root, &gateways, &authns, &self.info);
                (ns, encoded, notes)
            })
            .collect();
        let mut changed = self.removed || self.generation == 0;
        if self.waypoints_dirty {
            changed |= self.build_waypoints();
        }
        for (ns, output, notes) in results {
            let slice = self.slices.get_mut(&ns).expect("dirty slice exists");
            changed |= !output.same_as(&slice.output);
            slice.output = output;
            slice.notes = notes;
            slice.dirty = false;
        }
        self.removed = false;
        // A change that translates to the same resources (a pod's container restarted, our own
        // status write) publishes nothing.
        if !changed {
            return None;
        }
        self.generation += 1;
        Some(
            ResourceSet::merge(self.slices.values().map(|s| &s.output), self.generation)
                .with_waypoints(self.waypoints.clone(), self.waypoint_identities.clone()),
        )
    }

    /// Computes every waypoint's configuration from the whole view; whether any changed.
    fn build_waypoints(&mut self) -> bool {
        self.waypoints_dirty = false;
        self.waypoint_epoch += 1;
        let nothing = self
            .slices
            .values()
            .all(|s| s.gateways.is_empty() && s.http_routes.is_empty() && s.grpc_routes.is_empty());
        let t = if nothing {
            waypoints::WaypointTranslation::default()
        } else {
            let mut view = View::default();
            for s in self.slices.values() {
                s.namespace.iter().for_each(|n| view.add_namespace(n));
                s.services.values().for_each(|o| view.add_service(o));
                s.pods.values().for_each(|o| view.add_pod(o));
                s.endpoint_slices
                    .values()
                    .for_each(|o| view.add_endpoint_slice(o));
                view.gateways.extend(s.gateways.values());
                view.http_routes.extend(s.http_routes.values());
                view.grpc_routes.extend(s.grpc_routes.values());
                view.virtual_services.extend(s.virtual_services.values());
                view.destination_rules.extend(s.destination_rules.values());
                view.traffic_splits.extend(s.traffic_splits.values());
                view.service_profiles.extend(s.service_profiles.values());
                view.policies.extend(s.policies.values());
                view.request_authentications
                    .extend(s.request_authns.values());
                s.secrets.values().for_each(|o| view.add_secret(o));
                view.reference_grants.extend(s.reference_grants.values());
            }
            waypoints::waypoints(&view, &self.info)
        };
        let resources = waypoint_resources(&t.configs);
        let same = resources.len() == self.waypoints.len()
            && resources
                .iter()
                .zip(&self.waypoints)
                .all(|((n1, r1), (n2, r2))| n1 == n2 && r1.version == r2.version)
            && t.identities == self.waypoint_identities;
        self.waypoints = resources;
        self.waypoint_identities = t.identities;
        self.waypoint_notes = t.notes;
        self.route_statuses = t.routes;
        self.ingress_statuses = t.ingress;
        !same
    }

    /// Bumped whenever the waypoints and route statuses are recomputed (after any change).
    pub fn waypoint_epoch(&self) -> u64 {
        self.waypoint_epoch
    }

    /// The status each route is owed, as of the last build.
    pub fn route_statuses(&self) -> &[RouteStatus] {
        &self.route_statuses
    }

    /// Each ingress Gateway's status (pure part), as of the last build.
    pub fn ingress_statuses(&self) -> &[IngressStatus] {
        &self.ingress_statuses
    }

    /// The Gateways of class `istio`.
    pub fn ingress_gateways(&self) -> impl Iterator<Item = &Gateway> {
        self.slices
            .values()
            .flat_map(|s| s.gateways.values())
            .filter(|g| g.spec.gateway_class_name == crate::crd::gateway::INGRESS_CLASS)
    }

    /// The Gateways of class `istio-waypoint`.
    pub fn waypoint_gateways(&self) -> impl Iterator<Item = &Gateway> {
        self.slices
            .values()
            .flat_map(|s| s.gateways.values())
            .filter(|g| g.spec.gateway_class_name == crate::crd::gateway::WAYPOINT_CLASS)
    }

    /// Objects honoured only in part, as of the last build.
    pub fn notes(&self) -> Vec<Note> {
        self.slices
            .values()
            .flat_map(|s| s.notes.iter().cloned())
            .chain(self.waypoint_notes.iter().cloned())
            .collect()
    }

    /// Objects refused for invalid values ([`validate`]).
    pub fn rejected(&self) -> Vec<Note> {
        self.rejected.values().cloned().collect()
    }

    /// The objects of one kind, for status reporting.
    pub fn policies(&self) -> impl Iterator<Item = &AuthorizationPolicy> {
        self.slices.values().flat_map(|s| s.policies.values())
    }

    pub fn peer_authentications(&self) -> impl Iterator<Item = &PeerAuthentication> {
        self.slices.values().flat_map(|s| s.peer_authns.values())
    }

    /// The whole view, as one cluster (for debugging and equivalence tests).
    pub fn cluster(&self) -> Cluster {
        let mut c = Cluster::default();
        for s in self.slices.values() {
            c.namespaces.extend(s.namespace.iter().cloned());
            c.pods.extend(s.pods.values().cloned());
            c.services.extend(s.services.values().cloned());
            c.endpoint_slices
                .extend(s.endpoint_slices.values().cloned());
            c.authorization_policies
                .extend(s.policies.values().cloned());
            c.peer_authentications
                .extend(s.peer_authns.values().cloned());
            c.request_authentications
                .extend(s.request_authns.values().cloned());
            c.gateways.extend(s.gateways.values().cloned());
            c.http_routes.extend(s.http_routes.values().cloned());
            c.grpc_routes.extend(s.grpc_routes.values().cloned());
            c.virtual_services
                .extend(s.virtual_services.values().cloned());
            c.destination_rules
                .extend(s.destination_rules.values().cloned());
            c.traffic_splits.extend(s.traffic_splits.values().cloned());
            c.service_profiles
                .extend(s.service_profiles.values().cloned());
            c.servers.extend(s.servers.values().cloned());
            c.server_authorizations
                .extend(s.server_authorizations.values().cloned());
            c.linkerd_authorization_policies
                .extend(s.linkerd_policies.values().cloned());
            c.mesh_tls_authentications
                .extend(s.mesh_tls_authns.values().cloned());
            c.network_authentications
                .extend(s.network_authns.values().cloned());
            c.cilium_network_policies
                .extend(s.cilium_policies.values().cloned());
            c.cilium_clusterwide_network_policies
                .extend(s.cilium_clusterwide.values().cloned());
            c.secrets.extend(s.secrets.values().cloned());
            c.reference_grants
                .extend(s.reference_grants.values().cloned());
        }
        c
    }
}

/// Every namespace's Linkerd authentications.
struct Authentications {
    mesh_tls: Vec<MeshTlsAuthentication>,
    network: Vec<NetworkAuthentication>,
    /// And what Cilium's policies read across namespaces: the cluster-wide policies, and every
    /// pod (only while some Cilium policy exists).
    cilium_clusterwide: Vec<CiliumClusterwideNetworkPolicy>,
    peers: Vec<PodIdentity>,
    /// Every Service (`toServices[].k8sServiceSelector`), likewise.
    services: Vec<ServiceIdentity>,
}

/// Translates one namespace's slice; `root` is the root namespace's slice (its policies apply
/// here too) unless this is the root namespace; `gateways` are every namespace's (the slice's
/// Services and pods may use a waypoint elsewhere), and so are `authns` (the slice's Linkerd
/// AuthorizationPolicies may require those of other namespaces).
fn translate_slice(
    namespace: &str,
    slice: &Slice,
    root: Option<&Slice>,
    gateways: &[Gateway],
    authns: &Authentications,
    info: &ClusterInfo,
) -> (Encoded, Vec<Note>) {
    let mut cluster = Cluster {
        namespaces: slice.namespace.iter().cloned().collect(),
        pods: slice.pods.values().cloned().collect(),
        services: slice.services.values().cloned().collect(),
        endpoint_slices: slice.endpoint_slices.values().cloned().collect(),
        authorization_policies: slice.policies.values().cloned().collect(),
        peer_authentications: slice.peer_authns.values().cloned().collect(),
        // Waypoints' only: ztunnels never see them.
        request_authentications: Vec::new(),
        gateways: gateways.to_vec(),
        http_routes: Vec::new(),
        grpc_routes: Vec::new(),
        virtual_services: Vec::new(),
        destination_rules: Vec::new(),
        traffic_splits: Vec::new(),
        service_profiles: Vec::new(),
        servers: slice.servers.values().cloned().collect(),
        server_authorizations: slice.server_authorizations.values().cloned().collect(),
        linkerd_authorization_policies: slice.linkerd_policies.values().cloned().collect(),
        mesh_tls_authentications: authns.mesh_tls.clone(),
        network_authentications: authns.network.clone(),
        cilium_network_policies: slice.cilium_policies.values().cloned().collect(),
        cilium_clusterwide_network_policies: authns.cilium_clusterwide.clone(),
        // Ingress gateways' only.
        secrets: Vec::new(),
        reference_grants: Vec::new(),
        peer_pods: Vec::new(),
        peer_services: Vec::new(),
    };
    let has_cilium = !cluster.cilium_network_policies.is_empty()
        || !cluster.cilium_clusterwide_network_policies.is_empty();
    if has_cilium {
        cluster.peer_pods = authns
            .peers
            .iter()
            .filter(|p| p.namespace != namespace)
            .cloned()
            .collect();
        cluster.peer_services = authns
            .services
            .iter()
            .filter(|s| s.namespace != namespace)
            .cloned()
            .collect();
    }
    if let Some(root) = root {
        cluster
            .authorization_policies
            .extend(root.policies.values().cloned());
        cluster
            .peer_authentications
            .extend(root.peer_authns.values().cloned());
    }
    let mut t = translate(&cluster, info);
    // The root namespace's own policies belong to its slice; the PeerAuthentication policies
    // derived for this slice's workloads are kept (equal ones merge into one resource).
    t.authorizations
        .retain(|a| a.namespace == namespace || a.name.starts_with(STATIC_STRICT));
    t.egress_policies.retain(|p| p.namespace == namespace);
    t.notes.retain(|n| n.namespace() == Some(namespace));
    (Encoded::from_translation(&t), t.notes)
}

mod cilium;
mod object;
mod slice;
#[cfg(test)]
mod tests;
mod validate;

use slice::{put, Slice};

pub use object::{Kind, Object};

//! What a waypoint Gateway is deployed as (pure): its ServiceAccount, Deployment and Service,
//! each owned by the Gateway (so Kubernetes deletes them with it), and the namespace's
//! `istio-ca-root-cert` ConfigMap. The shapes follow Istio's waypoint deployment: the
//! `gateway.networking.k8s.io/gateway-name` label everywhere, `istio.io/dataplane-mode: none` on
//! the pods (a waypoint speaks HBONE itself; ztunnel does not capture it), a projected
//! service-account token for audience `istio-ca`, and the mesh root from the ConfigMap.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, SecurityContext, Service, ServiceAccount, ServiceAccountTokenProjection,
    ServicePort, ServiceSpec, Sysctl, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::DeploySettings;
use crate::cluster::Gateway;
use crate::crd::gateway::{GROUP, VERSION};
use crate::translate::use_waypoint::{GATEWAY_NAME_LABEL, SERVICE_ACCOUNT_ANNOTATION};

pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// The ConfigMap holding the mesh root in every namespace with a waypoint (Istio's name).
pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// The label Istio puts on the ConfigMaps it publishes.
pub const ISTIO_CONFIG_LABEL: &str = "istio.io/config";
/// Where the pod finds its token and the mesh root (Istio's paths).
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
pub const TOKEN_FILE: &str = "istio-token";
pub const ROOT_CERT_DIR: &str = "/var/run/secrets/istio";
/// The audience of the token the waypoint presents to the CA and xDS.
pub const TOKEN_AUDIENCE: &str = "istio-ca";
const TOKEN_EXPIRATION_SECONDS: i64 = 43200;
/// The waypoint's ports: HBONE, metrics, readiness.
pub const MESH_PORT: i32 = 15008;
pub const METRICS_PORT: i32 = 15020;
pub const STATUS_PORT: i32 = 15021;
pub const CONTAINER_NAME: &str = "waypoint";
/// The uid and gid the waypoint runs as (Istio's proxies').
const PROXY_UID: i64 = 1337;

/// The objects one waypoint Gateway is deployed as.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub service_account: ServiceAccount,
    pub deployment: Deployment,
    pub service: Service,
}

/// Why a Gateway cannot be deployed; the Gateway's `Accepted` condition says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotDeployable {
    /// Gateway API reason: `InvalidParameters` or `UnsupportedValue`.
    pub reason: &'static str,
    pub message: String,
}

/// The service account a waypoint's pods run as: the annotation, else the Gateway's name.
pub fn service_account_name(gw: &Gateway) -> &str {
    gw.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERVICE_ACCOUNT_ANNOTATION))
        .map(String::as_str)
        .unwrap_or_else(|| gw.metadata.name.as_deref().unwrap_or_default())
}

/// A DNS-1123 subdomain (the names of most objects, ServiceAccounts and Deployments included).
fn dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// A DNS-1035 label (the names of Services).
fn dns_label(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `spec.infrastructure.labels` and `.annotations`: Gateway API asks implementations to put them
/// on what they deploy.
fn infrastructure(gw: &Gateway, field: &str) -> BTreeMap<String, String> {
    gw.spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.get(field))
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn non_empty(map: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then_some(map)
}

/// The owner reference every deployed object carries: the Gateway, as its controller.
pub fn owner_reference(gw: &Gateway) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: format!("{GROUP}/{VERSION}"),
        kind: "Gateway".into(),
        name: gw.metadata.name.clone()?,
        uid: gw.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: None,
    })
}

/// The ServiceAccount, Deployment and Service of a waypoint Gateway.
pub fn render(gw: &Gateway, settings: &DeploySettings) -> Result<Rendered, NotDeployable> {
    let name = gw.metadata.name.as_deref().unwrap_or_default();
    let shape = Shape {
        object_name: name.to_owned(),
        service_account: service_account_name(gw).to_owned(),
        service_type: "ClusterIP".into(),
        service_ports: vec![
            service_port("mesh", MESH_PORT),
            service_port("status-port", STATUS_PORT),
            service_port("metrics", METRICS_PORT),
        ],
        container_ports: vec![
            container_port("mesh", MESH_PORT),
            container_port("metrics", METRICS_PORT),
            container_port("status-port", STATUS_PORT),
        ],
        extra_env: Vec::new(),
        low_ports: false,
        what: "waypoint",
    };
    render_shape(gw, &shape, settings)
}

/// How a Gateway of one class is deployed.
pub(super) struct Shape {
    /// The Deployment's and Service's name.
    pub object_name: String,
    pub service_account: String,
    pub service_type: String,
    pub service_ports: Vec<ServicePort>,
    pub container_ports: Vec<ContainerPort>,
    /// Besides the waypoints' environment.
    pub extra_env: Vec<EnvVar>,
    /// Ports below 1024: the pod lets unprivileged processes bind them
    /// (`net.ipv4.ip_unprivileged_port_start=0`, as Istio's gateways).
    pub low_ports: bool,
    /// `waypoint` or `gateway`, for messages.
    pub what: &'static str,
}

pub(super) fn render_shape(
    gw: &Gateway,
    shape: &Shape,
    settings: &DeploySettings,
) -> Result<Rendered, NotDeployable> {
    let name = gw.metadata.name.as_deref().unwrap_or_default();
    let namespace = gw.metadata.namespace.as_deref().unwrap_or_default();
    let service_account = shape.service_account.as_str();
    let object_name = shape.object_name.as_str();
    if !dns_subdomain(service_account) {
        return Err(NotDeployable {
            reason: "InvalidParameters",
            message: format!(
                "annotation {SERVICE_ACCOUNT_ANNOTATION}: {service_account:?} is not a valid \
                 service account name (a DNS-1123 subdomain); nothing deployed"
            ),
        });
    }
    if !dns_label(object_name) {
        return Err(NotDeployable {
            reason: "UnsupportedValue",
            message: format!(
                "the {}'s Service would be named {object_name:?}, which is not a valid Service \
                 name (a DNS-1035 label); nothing deployed",
                shape.what
            ),
        });
    }
    let Some(owner) = owner_reference(gw) else {
        return Err(NotDeployable {
            reason: "InvalidParameters",
            message: "the Gateway has no uid to own its objects; nothing deployed".into(),
        });
    };
    let mut labels = infrastructure(gw, "labels");
    labels.insert(GATEWAY_NAME_LABEL.into(), name.into());
    let mut pod_labels = labels.clone();
    pod_labels.insert(DATAPLANE_MODE_LABEL.into(), "none".into());
    let annotations = non_empty(infrastructure(gw, "annotations"));
    let meta = |name: &str, labels: &BTreeMap<String, String>| ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(labels.clone()),
        annotations: annotations.clone(),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };
    let selector = BTreeMap::from([(GATEWAY_NAME_LABEL.to_owned(), name.to_owned())]);
    Ok(Rendered {
        service_account: ServiceAccount {
            metadata: meta(service_account, &labels),
            ..Default::default()
        },
        deployment: Deployment {
            metadata: meta(object_name, &pod_labels),
            spec: DeploymentSpec {
                replicas: Some(1),
                selector: LabelSelector {
                    match_labels: Some(selector.clone()),
                    match_expressions: None,
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels.clone()),
                        annotations: annotations.clone(),
                        ..Default::default()
                    }),
                    spec: Some(pod_spec(name, shape, settings)),
                },
                ..Default::default()
            },
            status: None,
        },
        service: Service {
            metadata: meta(object_name, &labels),
            spec: Some(ServiceSpec {
                type_: Some(shape.service_type.clone()),
                selector: Some(selector),
                ports: Some(shape.service_ports.clone()),
                ..Default::default()
            }),
            status: None,
        },
    })
}

pub(super) fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

pub(super) fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

pub(super) fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// An environment variable from the downward API.
pub(super) fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: field_path.into(),
            }),
            ..Default::default()
        }),
    }
}

fn pod_spec(gateway: &str, shape: &Shape, s: &DeploySettings) -> PodSpec {
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(s.image.clone()),
        ports: Some(shape.container_ports.clone()),
        env: Some(
            vec![
                field_env("POD_NAMESPACE", "metadata.namespace"),
                field_env("POD_NAME", "metadata.name"),
                field_env("INSTANCE_IP", "status.podIP"),
                field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
                env("WAYPOINT_NAME", gateway),
                env("TRUST_DOMAIN", &s.info.trust_domain),
                env("CLUSTER_ID", &s.info.cluster_id),
                env("ROOT_NAMESPACE", &s.info.root_namespace),
                env("XDS_ADDRESS", &s.discovery_address),
                env("CA_ADDRESS", &s.discovery_address),
                env("CA_TOKEN_FILE", &format!("{TOKEN_DIR}/{TOKEN_FILE}")),
                env("XDS_ROOT_CA", &format!("{ROOT_CERT_DIR}/{ROOT_CERT_KEY}")),
            ]
            .into_iter()
            .chain(shape.extra_env.iter().cloned())
            .chain(s.tracing.iter().map(|(name, value)| env(name, value)))
            .collect(),
        ),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz/ready".into()),
                port: IntOrString::Int(STATUS_PORT),
                ..Default::default()
            }),
            period_seconds: Some(5),
            failure_threshold: Some(4),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "istio-token".into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "istiod-ca-cert".into(),
                mount_path: ROOT_CERT_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    PodSpec {
        service_account_name: Some(shape.service_account.clone()),
        security_context: shape.low_ports.then(|| PodSecurityContext {
            sysctls: Some(vec![Sysctl {
                name: "net.ipv4.ip_unprivileged_port_start".into(),
                value: "0".into(),
            }]),
            ..Default::default()
        }),
        containers: vec![container],
        volumes: Some(vec![
            Volume {
                name: "istio-token".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some(TOKEN_AUDIENCE.into()),
                            expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                            path: TOKEN_FILE.into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "istiod-ca-cert".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: ROOT_CERT_CONFIGMAP.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

/// The namespace's `istio-ca-root-cert` ConfigMap (not owned by any Gateway: every waypoint of
/// the namespace mounts it).
pub fn root_cert_config_map(namespace: &str, root_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CERT_CONFIGMAP.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                ISTIO_CONFIG_LABEL.to_owned(),
                "true".to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_CERT_KEY.to_owned(),
            root_pem.to_owned(),
        )])),
        ..Default::default()
    }
}

pub mod ingress;
#[cfg(test)]
mod tests;

//! What an ingress Gateway (class `istio`) is deployed as (pure), the shapes of Istio's
//! gateway deployment: a ServiceAccount (`gateway.istio.io/service-account`, else
//! `<name>-istio`), a Deployment `<name>-istio` running the waypoint image (which serves the
//! `ingress` part of its configuration) with the waypoints' environment plus `BIND_ADDRESS`
//! (the pod IP) and a container port per listener port, and a Service `<name>-istio` of type
//! `LoadBalancer` (the annotation `networking.istio.io/service-type` overrides it) with the
//! listener ports and `status-port` 15021. Everything carries
//! `gateway.networking.k8s.io/gateway-name: <name>` and is owned by the Gateway.

use std::collections::BTreeSet;

use super::{
    container_port, field_env, render_shape, service_port, NotDeployable, Rendered, Shape,
    METRICS_PORT, STATUS_PORT,
};
use crate::cluster::Gateway;
use crate::controller::DeploySettings;
use crate::translate::ingress::{service_account, NAME_SUFFIX};

/// On an ingress Gateway: the type of its Service (Istio's annotation).
pub const SERVICE_TYPE_ANNOTATION: &str = "networking.istio.io/service-type";
pub const DEFAULT_SERVICE_TYPE: &str = "LoadBalancer";

/// The name of an ingress Gateway's Deployment and Service: `<name>-istio`.
pub fn object_name(gw: &Gateway) -> String {
    format!(
        "{}{NAME_SUFFIX}",
        gw.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The ports the gateway serves: those of its HTTP and HTTPS (`Terminate`) listeners, once
/// each, in order, with the protocol of the first listener on it.
pub fn listener_ports(gw: &Gateway) -> Vec<(u16, &'static str)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for l in &gw.spec.listeners {
        let mode = l.tls.as_ref().and_then(|t| t.mode.as_deref());
        let protocol = match (l.protocol.as_str(), mode.unwrap_or("Terminate")) {
            ("HTTP", _) => "http",
            ("HTTPS", "Terminate") => "https",
            _ => continue,
        };
        if i32::from(l.port) == STATUS_PORT || i32::from(l.port) == METRICS_PORT {
            continue; // the gateway's own; reported as a conflict by the data path
        }
        if seen.insert(l.port) {
            out.push((l.port, protocol));
        }
    }
    out
}

/// The ServiceAccount, Deployment and Service of an ingress Gateway.
pub fn render_ingress(gw: &Gateway, settings: &DeploySettings) -> Result<Rendered, NotDeployable> {
    let ports = listener_ports(gw);
    let named = |(port, protocol): &(u16, &str)| (format!("{protocol}-{port}"), i32::from(*port));
    let service_type = gw
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERVICE_TYPE_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| DEFAULT_SERVICE_TYPE.into());
    let shape = Shape {
        object_name: object_name(gw),
        service_account: service_account(gw),
        service_type,
        service_ports: ports
            .iter()
            .map(named)
            .map(|(name, port)| service_port(&name, port))
            .chain([service_port("status-port", STATUS_PORT)])
            .collect(),
        container_ports: ports
            .iter()
            .map(named)
            .map(|(name, port)| container_port(&name, port))
            .chain([
                container_port("metrics", METRICS_PORT),
                container_port("status-port", STATUS_PORT),
            ])
            .collect(),
        extra_env: vec![field_env("BIND_ADDRESS", "status.podIP")],
        low_ports: ports.iter().any(|(p, _)| *p < 1024),
        what: "gateway",
    };
    render_shape(gw, &shape, settings)
}

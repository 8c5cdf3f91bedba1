//! An ingress Gateway's status (pure): the translation's part ([`IngressStatus`]: `Accepted`,
//! listeners with `supportedKinds`, `attachedRoutes`, `Accepted`, `ResolvedRefs`,
//! `Conflicted`) completed with what only deployment tells:
//!
//! - `addresses`: the Service `<name>-istio`'s `status.loadBalancer.ingress` IPs and hostnames,
//!   else its cluster IPs;
//! - `Programmed`: in cluster mode, `True` once the Deployment `<name>-istio` has a ready
//!   replica (`False`/`Pending` before, `False`/`Invalid` when nothing could be deployed or no
//!   listener is served); with a manifest directory, `True` once the configuration is published
//!   ([`published`]: nothing else can be known there);
//! - each listener's `Programmed`: the Gateway's, for a listener that is served; else
//!   `False`/`Invalid` with the reason.

use serde_json::Value;

use super::gateway_status::GatewayStatus;
use super::render::NotDeployable;
use crate::translate::ingress::IngressStatus;
use crate::translate::route_status::Cond;

fn cond(status: bool, reason: &str, message: impl Into<String>) -> Cond {
    Cond {
        status,
        reason: reason.into(),
        message: message.into(),
    }
}

fn with_listeners(
    pure: &IngressStatus,
    addresses: Vec<(&'static str, String)>,
    accepted: Cond,
    programmed: Cond,
) -> GatewayStatus {
    let listeners = pure
        .listeners
        .iter()
        .map(|l| {
            let programmed = match &l.served {
                Ok(()) => programmed.clone(),
                Err(why) => cond(false, "Invalid", format!("not served: {why}")),
            };
            (l.clone(), programmed)
        })
        .collect();
    GatewayStatus {
        addresses,
        accepted,
        programmed,
        generation: pure.generation,
        listeners: Some(listeners),
    }
}

/// Cluster mode: from the observed Service and Deployment (`<name>-istio`), as the API server
/// returns them, if they exist.
pub fn ingress_gateway_status(
    pure: &IngressStatus,
    not_deployable: Option<&NotDeployable>,
    service: Option<&Value>,
    deployment: Option<&Value>,
) -> GatewayStatus {
    let object = format!(
        "{}/{}{}",
        pure.namespace,
        pure.name,
        crate::translate::ingress::NAME_SUFFIX
    );
    let mut addresses = Vec::new();
    if let Some(svc) = service {
        for ingress in svc["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(ip) = ingress["ip"].as_str().filter(|s| !s.is_empty()) {
                addresses.push(("IPAddress", ip.to_owned()));
            } else if let Some(host) = ingress["hostname"].as_str().filter(|s| !s.is_empty()) {
                addresses.push(("Hostname", host.to_owned()));
            }
        }
        if addresses.is_empty() {
            let spec = &svc["spec"];
            let ips: Vec<&str> = match spec["clusterIPs"].as_array() {
                Some(ips) => ips.iter().filter_map(Value::as_str).collect(),
                None => spec["clusterIP"].as_str().into_iter().collect(),
            };
            for ip in ips.into_iter().filter(|ip| !ip.is_empty() && *ip != "None") {
                addresses.push(("IPAddress", ip.to_owned()));
            }
        }
    }
    let accepted = match not_deployable {
        Some(e) => cond(false, e.reason, e.message.clone()),
        None => pure.accepted.clone(),
    };
    let programmed = match (not_deployable, deployment) {
        (Some(e), _) => cond(false, "Invalid", format!("not deployed: {}", e.message)),
        (None, _) if !pure.serves() => cond(false, "Invalid", "no listener is served"),
        (None, None) => cond(
            false,
            "Pending",
            format!("Deployment {object} does not exist yet"),
        ),
        (None, Some(d)) => {
            let ready = d["status"]["readyReplicas"].as_i64().unwrap_or(0);
            let wanted = d["spec"]["replicas"].as_i64().unwrap_or(1);
            if ready > 0 {
                cond(
                    true,
                    "Programmed",
                    format!("{ready} of {wanted} replicas of Deployment {object} ready"),
                )
            } else {
                cond(
                    false,
                    "Pending",
                    format!(
                        "waiting for a ready replica of Deployment {object} (0 of {wanted} ready)"
                    ),
                )
            }
        }
    };
    with_listeners(pure, addresses, accepted, programmed)
}

/// Manifest-directory mode: nothing is deployed by istiod-lite, so `Programmed` says that the
/// configuration is published (to whichever gateway reads it), and there are no addresses.
pub fn published(pure: &IngressStatus) -> GatewayStatus {
    let programmed = if pure.serves() {
        cond(
            true,
            "Programmed",
            "the configuration is published over xDS (no deployment is observed here)",
        )
    } else {
        cond(false, "Invalid", "no listener is served")
    };
    with_listeners(pure, Vec::new(), pure.accepted.clone(), programmed)
}

#[cfg(test)]
mod tests;

//! A waypoint Gateway's status (pure), from the Gateway and what was observed of its Service and
//! Deployment:
//!
//! - `addresses`: the Service's hostname `<gw>.<ns>.svc.<domain>` (type `Hostname`) and its
//!   cluster IPs (type `IPAddress`), once the Service exists;
//! - `Accepted`: `True`, or `False` when the Gateway asks for what a waypoint does not do (a
//!   listener other than `{port: 15008, protocol: HBONE}`: `UnsupportedValue`; `spec.addresses`:
//!   `UnsupportedAddress`; `infrastructure.parametersRef` or an invalid service-account
//!   annotation: `InvalidParameters`);
//! - `Programmed`: `True` once the Deployment has a ready replica, else `False` (`Pending`;
//!   `Invalid` when nothing could be deployed).
//!
//! Conditions carry the Gateway's `observedGeneration`; [`condition_json`] keeps a condition's
//! `lastTransitionTime` while its status stays the same.

use serde_json::{json, Value};

use super::render::NotDeployable;
use crate::cluster::Gateway;
use crate::crd::gateway::GROUP;
use crate::translate::ingress::ListenerState;
use crate::translate::route_status::Cond;

/// What istiod-lite writes in a waypoint Gateway's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayStatus {
    /// `(type, value)`.
    pub addresses: Vec<(&'static str, String)>,
    pub accepted: Cond,
    pub programmed: Cond,
    pub generation: Option<i64>,
    /// An ingress Gateway's listeners (`None` for a waypoint: `status.listeners` is left as it
    /// is).
    pub listeners: Option<Vec<(ListenerState, Cond)>>,
}

fn cond(status: bool, reason: &str, message: impl Into<String>) -> Cond {
    Cond {
        status,
        reason: reason.into(),
        message: message.into(),
    }
}

/// The Gateway's `Accepted` condition.
fn accepted(gw: &Gateway, not_deployable: Option<&NotDeployable>) -> Cond {
    if let Some(e) = not_deployable {
        return cond(false, e.reason, e.message.clone());
    }
    let mut problems: Vec<(&str, String)> = Vec::new();
    let parameters = gw
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.get("parametersRef"));
    if parameters.is_some() {
        problems.push((
            "InvalidParameters",
            "spec.infrastructure.parametersRef is not supported: a waypoint takes no parameters"
                .into(),
        ));
    }
    if !gw.spec.addresses.is_empty() {
        problems.push((
            "UnsupportedAddress",
            "spec.addresses is not supported: a waypoint's address is its Service's".into(),
        ));
    }
    if gw.spec.listeners.is_empty() {
        problems.push((
            "UnsupportedValue",
            "no listener: a waypoint needs {name: mesh, port: 15008, protocol: HBONE}".into(),
        ));
    }
    for l in &gw.spec.listeners {
        if (l.port, l.protocol.as_str()) != (15008, "HBONE") {
            problems.push((
                "UnsupportedValue",
                format!(
                    "listener {:?} (port {}, protocol {}): a waypoint listens only on \
                     {{port: 15008, protocol: HBONE}}",
                    l.name, l.port, l.protocol
                ),
            ));
        }
    }
    match problems.first() {
        None => cond(true, "Accepted", "accepted as a waypoint"),
        Some((reason, _)) => cond(
            false,
            reason,
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

/// The status of a waypoint Gateway. `service` and `deployment` are the objects observed (as
/// the API server returns them), if they exist.
pub fn gateway_status(
    gw: &Gateway,
    not_deployable: Option<&NotDeployable>,
    service: Option<&Value>,
    deployment: Option<&Value>,
    domain: &str,
) -> GatewayStatus {
    let name = gw.metadata.name.as_deref().unwrap_or_default();
    let namespace = gw.metadata.namespace.as_deref().unwrap_or_default();
    let mut addresses = Vec::new();
    if let Some(svc) = service {
        addresses.push(("Hostname", format!("{name}.{namespace}.svc.{domain}")));
        let spec = &svc["spec"];
        let ips: Vec<&str> = match spec["clusterIPs"].as_array() {
            Some(ips) => ips.iter().filter_map(Value::as_str).collect(),
            None => spec["clusterIP"].as_str().into_iter().collect(),
        };
        for ip in ips.into_iter().filter(|ip| !ip.is_empty() && *ip != "None") {
            addresses.push(("IPAddress", ip.to_owned()));
        }
    }
    let programmed = match (not_deployable, deployment) {
        (Some(e), _) => cond(false, "Invalid", format!("not deployed: {}", e.message)),
        (None, None) => cond(
            false,
            "Pending",
            format!("Deployment {namespace}/{name} does not exist yet"),
        ),
        (None, Some(d)) => {
            let ready = d["status"]["readyReplicas"].as_i64().unwrap_or(0);
            let wanted = d["spec"]["replicas"].as_i64().unwrap_or(1);
            if ready > 0 {
                cond(
                    true,
                    "Programmed",
                    format!("{ready} of {wanted} replicas of Deployment {namespace}/{name} ready"),
                )
            } else {
                cond(
                    false,
                    "Pending",
                    format!(
                        "waiting for a ready replica of Deployment {namespace}/{name} \
                         (0 of {wanted} ready)"
                    ),
                )
            }
        }
    };
    GatewayStatus {
        addresses,
        accepted: accepted(gw, not_deployable),
        programmed,
        generation: gw.metadata.generation,
        listeners: None,
    }
}

/// A Gateway API condition (metav1.Condition) as JSON. Its `lastTransitionTime` is kept from the
/// condition of the same type in `previous` while the status stays the same, else `now`.
pub fn condition_json(
    type_: &str,
    c: &Cond,
    generation: Option<i64>,
    previous: Option<&Value>,
    now: &str,
) -> Value {
    let status = if c.status { "True" } else { "False" };
    let since = previous
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| p["type"] == type_ && p["status"] == status)
        .and_then(|p| p["lastTransitionTime"].as_str())
        .unwrap_or(now);
    let mut out = json!({
        "type": type_,
        "status": status,
        "reason": c.reason,
        "message": c.message,
        "lastTransitionTime": since,
    });
    if let Some(g) = generation {
        out["observedGeneration"] = json!(g);
    }
    out
}

impl GatewayStatus {
    /// `status` with our fields set (`addresses`, `conditions`); other fields of `current` (such
    /// as `listeners`) are kept.
    pub fn merge_into(&self, current: &Value, now: &str) -> Value {
        let mut out = match current {
            Value::Object(_) => current.clone(),
            _ => json!({}),
        };
        let previous = current.get("conditions");
        out["addresses"] = self
            .addresses
            .iter()
            .map(|(t, v)| json!({"type": t, "value": v}))
            .collect();
        out["conditions"] = json!([
            condition_json("Accepted", &self.accepted, self.generation, previous, now),
            condition_json(
                "Programmed",
                &self.programmed,
                self.generation,
                previous,
                now
            ),
        ]);
        if let Some(listeners) = &self.listeners {
            let before = current["listeners"].as_array();
            out["listeners"] = listeners
                .iter()
                .map(|(l, programmed)| {
                    let previous = before
                        .into_iter()
                        .flatten()
                        .find(|p| p["name"] == l.name.as_str())
                        .map(|p| &p["conditions"]);
                    let c =
                        |t: &str, c: &Cond| condition_json(t, c, self.generation, previous, now);
                    json!({
                        "name": l.name,
                        "supportedKinds": l.supported_kinds.iter()
                            .map(|k| json!({"group": GROUP, "kind": k}))
                            .collect::<Vec<_>>(),
                        "attachedRoutes": l.attached_routes,
                        "conditions": [
                            c("Accepted", &l.accepted),
                            c("ResolvedRefs", &l.resolved_refs),
                            c("Conflicted", &l.conflicted),
                            c("Programmed", programmed),
                        ],
                    })
                })
                .collect();
        }
        out
    }

    /// The status as `/debug/config` shows it: `gateway`, `addresses`, `conditions`,
    /// `listeners` (ingress Gateways), without transition times.
    pub fn debug_json(&self, gateway: &str) -> Value {
        let mut out = self.merge_into(&Value::Null, "");
        strip_times(&mut out);
        out["gateway"] = json!(gateway);
        out
    }
}

/// Removes every `lastTransitionTime` (debug output: there is no transition to speak of).
pub fn strip_times(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("lastTransitionTime");
            m.values_mut().for_each(strip_times);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_times),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(yaml: &str) -> Gateway {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const WP: &str = "metadata: {name: wp, namespace: shop, uid: u1, generation: 3}\n\
                      spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}";

    #[test]
    fn pending_until_a_replica_is_ready_with_the_service_addresses() {
        let gw = gateway(WP);
        let s = gateway_status(&gw, None, None, None, "cluster.local");
        assert_eq!(s.addresses, []);
        assert!(s.accepted.status);
        assert_eq!(s.accepted.reason, "Accepted");
        assert_eq!(
            (s.programmed.status, s.programmed.reason.as_str()),
            (false, "Pending")
        );
        assert_eq!(s.generation, Some(3));

        let svc =
            json!({"spec": {"clusterIP": "10.96.0.7", "clusterIPs": ["10.96.0.7", "fd00::7"]}});
        let starting = json!({"spec": {"replicas": 1}, "status": {"replicas": 1}});
        let s = gateway_status(&gw, None, Some(&svc), Some(&starting), "cluster.local");
        assert_eq!(
            s.addresses,
            [
                ("Hostname", "wp.shop.svc.cluster.local".to_owned()),
                ("IPAddress", "10.96.0.7".to_owned()),
                ("IPAddress", "fd00::7".to_owned()),
            ]
        );
        assert_eq!(
            (s.programmed.status, s.programmed.reason.as_str()),
            (false, "Pending")
        );
        assert!(s.programmed.message.contains("0 of 1 ready"), "{s:?}");

        let ready = json!({"spec": {"replicas": 1}, "status": {"readyReplicas": 1}});
        let headless = json!({"spec": {"clusterIP": "None"}});
        let s = gateway_status(&gw, None, Some(&headless), Some(&ready), "example.org");
        assert_eq!(
            s.addresses,
            [("Hostname", "wp.shop.svc.example.org".to_owned())]
        );
        assert_eq!(
            (s.programmed.status, s.programmed.reason.as_str()),
            (true, "Programmed")
        );
    }

    #[test]
    fn listeners_other_than_hbone_15008_are_not_accepted() {
        let gw = gateway(
            "metadata: {name: wp, namespace: shop}\n\
             spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}, \
             {name: web, port: 80, protocol: HTTP}]}",
        );
        let s = gateway_status(&gw, None, None, None, "cluster.local");
        assert!(!s.accepted.status);
        assert_eq!(s.accepted.reason, "UnsupportedValue");
        assert!(
            s.accepted
                .message
                .contains("\"web\" (port 80, protocol HTTP)"),
            "{s:?}"
        );

        let none = gateway(
            "metadata: {name: wp, namespace: shop}\nspec: {gatewayClassName: istio-waypoint}",
        );
        let s = gateway_status(&none, None, None, None, "cluster.local");
        assert_eq!(s.accepted.reason, "UnsupportedValue");
        assert!(s.accepted.message.starts_with("no listener"));

        let params = gateway(
            "metadata: {name: wp, namespace: shop}\n\
             spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}], \
             infrastructure: {parametersRef: {group: \"\", kind: ConfigMap, name: x}}}",
        );
        let s = gateway_status(&params, None, None, None, "cluster.local");
        assert_eq!(s.accepted.reason, "InvalidParameters");
    }

    #[test]
    fn an_undeployable_gateway_is_neither_accepted_nor_programmed() {
        let gw = gateway(WP);
        let e = NotDeployable {
            reason: "InvalidParameters",
            message: "bad service account".into(),
        };
        let s = gateway_status(&gw, Some(&e), None, None, "cluster.local");
        assert_eq!(
            (s.accepted.status, s.accepted.reason.as_str()),
            (false, "InvalidParameters")
        );
        assert_eq!(
            (s.programmed.status, s.programmed.reason.as_str()),
            (false, "Invalid")
        );
    }

    #[test]
    fn transition_times_survive_unchanged_statuses_and_other_fields_stay() {
        let gw = gateway(WP);
        let pending = gateway_status(&gw, None, None, None, "cluster.local");
        let current = json!({"listeners": [{"name": "mesh"}]});
        let first = pending.merge_into(&current, "T1");
        assert_eq!(first["listeners"], current["listeners"]);
        assert_eq!(first["addresses"], json!([]));
        assert_eq!(
            first["conditions"][1],
            json!({"type": "Programmed", "status": "False", "reason": "Pending",
                   "message": "Deployment shop/wp does not exist yet",
                   "lastTransitionTime": "T1", "observedGeneration": 3})
        );
        let ready = json!({"status": {"readyReplicas": 1}});
        let programmed = gateway_status(&gw, None, None, Some(&ready), "cluster.local");
        let second = programmed.merge_into(&first, "T2");
        assert_eq!(
            second["conditions"][0]["lastTransitionTime"], "T1",
            "Accepted unchanged"
        );
        assert_eq!(
            second["conditions"][1]["lastTransitionTime"], "T2",
            "Programmed flipped"
        );
        assert_eq!(second["conditions"][1]["status"], "True");
    }
}

//! Values the API server's validation would refuse, checked before an object enters the
//! pipeline: an object holding one is refused on its own (its last good version stays), never
//! translated with the value cut into something else (a port of 70000 taken `as u16` is 4464).
//!
//! - AuthorizationPolicy: everything [`authz::authorization_policy`] refuses (addresses, ports).
//! - Service: `spec.ports[].port` 1-65535, a numeric `targetPort` 0-65535 (0: the port, as
//!   Kubernetes defaults it).
//! - Pod: `containerPort` 1-65535 (containers and init containers; named target ports resolve
//!   to them).
//! - EndpointSlice: `ports[].port` 1-65535.
//! - PeerAuthentication: `portLevelMtls` keys 1-65535.
//! - VirtualService: `http[].match[].port`, destination ports (`route`, `mirror`, `mirrors`),
//!   `redirect.port`; DestinationRule: `portLevelSettings[].port.number` (also in subsets).
//!   All 1-65535 (they are carried as 32-bit numbers, and a waypoint routes by 16-bit ports).
//! - CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy: what [`cilium::check`] refuses (ports
//!   written as `toPorts[].port` instead of `toPorts[].ports[].port`, with the fix; CIDRs;
//!   ports; protocols; selector operators).

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshcore::l7::networking::{
    DestinationRuleSpec, PortSelector, TrafficPolicy, VirtualServiceSpec,
};

use super::Object;
use crate::cluster::key;
use crate::translate::{authz, cilium, Note};

/// `Ok`, or the refusal naming the object and the field.
pub(super) fn check(object: &Object, root_namespace: &str) -> Result<(), Note> {
    let refuse = |kind: &str, message: String| Note {
        object: format!("{kind} {}", key(object.meta())),
        message,
    };
    match object {
        Object::AuthorizationPolicy(ap) => {
            let annotations = ap.metadata.annotations.clone().unwrap_or_default();
            authz::authorization_policy(
                ap.metadata.namespace.as_deref().unwrap_or_default(),
                ap.metadata.name.as_deref().unwrap_or_default(),
                &annotations,
                &ap.spec,
                root_namespace,
            )
            .map(drop)
            .map_err(|e| refuse("AuthorizationPolicy", e.0))
        }
        Object::Service(svc) => {
            let ports = svc.spec.iter().flat_map(|s| s.ports.iter().flatten());
            for (i, p) in ports.enumerate() {
                port(i64::from(p.port), 1, &format!("spec.ports[{i}].port"))
                    .map_err(|m| refuse("Service", m))?;
                if let Some(IntOrString::Int(t)) = p.target_port {
                    port(i64::from(t), 0, &format!("spec.ports[{i}].targetPort"))
                        .map_err(|m| refuse("Service", m))?;
                }
            }
            Ok(())
        }
        Object::Pod(pod) => {
            let Some(spec) = &pod.spec else {
                return Ok(());
            };
            let containers = |list: &'static str, c: &[Container]| {
                c.iter().enumerate().try_for_each(|(i, c)| {
                    c.ports.iter().flatten().enumerate().try_for_each(|(j, p)| {
                        let field = format!("spec.{list}[{i}].ports[{j}].containerPort");
                        port(i64::from(p.container_port), 1, &field)
                    })
                })
            };
            containers("containers", &spec.containers)
                .and_then(|()| {
                    containers(
                        "initContainers",
                        spec.init_containers.as_deref().unwrap_or_default(),
                    )
                })
                .map_err(|m| refuse("Pod", m))
        }
        Object::EndpointSlice(slice) => slice
            .ports
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p.port?)))
            .try_for_each(|(i, p)| port(i64::from(p), 1, &format!("ports[{i}].port")))
            .map_err(|m| refuse("EndpointSlice", m)),
        Object::PeerAuthentication(pa) => pa
            .spec
            .port_level_mtls
            .keys()
            .try_for_each(|&p| port(i64::from(p), 1, "spec.portLevelMtls"))
            .map_err(|m| refuse("PeerAuthentication", m)),
        Object::VirtualService(vs) => {
            virtual_service(&vs.spec).map_err(|m| refuse("VirtualService", m))
        }
        Object::DestinationRule(dr) => {
            destination_rule(&dr.spec).map_err(|m| refuse("DestinationRule", m))
        }
        Object::CiliumNetworkPolicy(p) => {
            cilium::check(&p.spec, &p.specs).map_err(|message| Note {
                object: cilium::object("CiliumNetworkPolicy", &p.metadata),
                message,
            })
        }
        Object::CiliumClusterwideNetworkPolicy(p) => {
            cilium::check(&p.spec, &p.specs).map_err(|message| Note {
                object: cilium::object("CiliumClusterwideNetworkPolicy", &p.metadata),
                message,
            })
        }
        _ => Ok(()),
    }
}

/// The ports a waypoint routes by or to (it takes them as 16-bit numbers).
fn virtual_service(spec: &VirtualServiceSpec) -> Result<(), String> {
    let selector = |p: &Option<PortSelector>, field: String| match p {
        Some(p) => port(i64::from(p.number), 1, &format!("{field}.port.number")),
        None => Ok(()),
    };
    for (i, route) in spec.http.iter().enumerate() {
        let at = format!("spec.http[{i}]");
        for (j, m) in route.matches.iter().enumerate() {
            if let Some(p) = m.port {
                port(i64::from(p), 1, &format!("{at}.match[{j}].port"))?;
            }
        }
        for (j, r) in route.route.iter().enumerate() {
            selector(&r.destination.port, format!("{at}.route[{j}].destination"))?;
        }
        if let Some(mirror) = &route.mirror {
            selector(&mirror.port, format!("{at}.mirror"))?;
        }
        for (j, m) in route.mirrors.iter().enumerate() {
            selector(
                &m.destination.port,
                format!("{at}.mirrors[{j}].destination"),
            )?;
        }
        if let Some(p) = route.redirect.as_ref().and_then(|r| r.port) {
            port(i64::from(p), 1, &format!("{at}.redirect.port"))?;
        }
    }
    Ok(())
}

fn destination_rule(spec: &DestinationRuleSpec) -> Result<(), String> {
    let policy = |p: &Option<TrafficPolicy>, at: &str| {
        let settings = p.iter().flat_map(|p| p.port_level_settings.iter());
        settings.enumerate().try_for_each(|(i, s)| match s.port {
            Some(p) => port(
                i64::from(p.number),
                1,
                &format!("{at}.portLevelSettings[{i}].port.number"),
            ),
            None => Ok(()),
        })
    };
    policy(&spec.traffic_policy, "spec.trafficPolicy")?;
    for (i, subset) in spec.subsets.iter().enumerate() {
        policy(
            &subset.traffic_policy,
            &format!("spec.subsets[{i}].trafficPolicy"),
        )?;
    }
    Ok(())
}

/// A port number from `min` (1, or 0 where 0 means "unset") to 65535.
fn port(p: i64, min: i64, field: &str) -> Result<(), String> {
    if (min..=65535).contains(&p) {
        Ok(())
    } else {
        Err(format!("{field}: {p} is not a port number ({min}-65535)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_yaml(kind: &str, yaml: &str) -> Result<(), String> {
        let object = match kind {
            "Service" => Object::Service(serde_yaml_ng::from_str(yaml).unwrap()),
            "Pod" => Object::Pod(serde_yaml_ng::from_str(yaml).unwrap()),
            "EndpointSlice" => Object::EndpointSlice(serde_yaml_ng::from_str(yaml).unwrap()),
            "PeerAuthentication" => {
                Object::PeerAuthentication(serde_yaml_ng::from_str(yaml).unwrap())
            }
            "VirtualService" => Object::VirtualService(serde_yaml_ng::from_str(yaml).unwrap()),
            "DestinationRule" => Object::DestinationRule(serde_yaml_ng::from_str(yaml).unwrap()),
            _ => unreachable!(),
        };
        check(&object, "istio-system").map_err(|n| n.to_string())
    }

    #[test]
    fn every_port_field_is_checked_and_named() {
        let meta = "metadata: {name: x, namespace: ns}";
        let svc = |ports: &str| format!("{meta}\nspec: {{ports: [{ports}]}}");
        let pod = |containers: &str| format!("{meta}\nspec: {{containers: [{containers}]}}");
        let cases = [
            ("Service", svc("{port: 80}, {port: 70000}"), Some("Service ns/x: spec.ports[1].port: 70000 is not a port number (1-65535)")),
            ("Service", svc("{port: 0}"), Some("spec.ports[0].port: 0 ")),
            ("Service", svc("{port: -1}"), Some("spec.ports[0].port: -1 ")),
            ("Service", svc("{port: 80, targetPort: 65536}"), Some("spec.ports[0].targetPort: 65536 is not a port number (0-65535)")),
            ("Service", svc("{port: 80, targetPort: -5}"), Some("targetPort: -5 ")),
            ("Service", svc("{port: 80, targetPort: 0}"), None),
            ("Service", svc("{port: 65535, targetPort: http}"), None),
            ("Pod", pod("{name: c, ports: [{containerPort: 8080}, {containerPort: 99999}]}"), Some("Pod ns/x: spec.containers[0].ports[1].containerPort: 99999 ")),
            ("Pod", format!("{meta}\nspec: {{containers: [{{name: c}}], initContainers: [{{name: i, ports: [{{containerPort: 0}}]}}]}}"), Some("spec.initContainers[0].ports[0].containerPort: 0 ")),
            ("Pod", pod("{name: c, ports: [{containerPort: 1}]}"), None),
            ("EndpointSlice", format!("{meta}\naddressType: IPv4\nendpoints: []\nports: [{{port: 80}}, {{port: 65536}}]"), Some("EndpointSlice ns/x: ports[1].port: 65536 ")),
            ("EndpointSlice", format!("{meta}\naddressType: IPv4\nendpoints: []\nports: [{{name: any}}]"), None),
            ("PeerAuthentication", format!("{meta}\nspec: {{portLevelMtls: {{8080: {{mode: STRICT}}, 70000: {{mode: DISABLE}}}}}}"), Some("PeerAuthentication ns/x: spec.portLevelMtls: 70000 ")),
            ("PeerAuthentication", format!("{meta}\nspec: {{portLevelMtls: {{0: {{mode: STRICT}}}}}}"), Some("spec.portLevelMtls: 0 ")),
            ("VirtualService", format!("{meta}\nspec: {{hosts: [a], http: [{{match: [{{port: 70000}}], route: [{{destination: {{host: a}}}}]}}]}}"), Some("VirtualService ns/x: spec.http[0].match[0].port: 70000 ")),
            ("VirtualService", format!("{meta}\nspec: {{hosts: [a], http: [{{route: [{{destination: {{host: a, port: {{number: 80}}}}}}, {{destination: {{host: b, port: {{number: 65536}}}}}}]}}]}}"), Some("spec.http[0].route[1].destination.port.number: 65536 ")),
            ("VirtualService", format!("{meta}\nspec: {{hosts: [a], http: [{{mirrors: [{{destination: {{host: a, port: {{number: 0}}}}}}], redirect: {{port: 99999}}}}]}}"), Some("spec.http[0].mirrors[0].destination.port.number: 0 ")),
            ("VirtualService", format!("{meta}\nspec: {{hosts: [a], http: [{{redirect: {{port: 99999}}}}]}}"), Some("spec.http[0].redirect.port: 99999 ")),
            ("VirtualService", format!("{meta}\nspec: {{hosts: [a], http: [{{match: [{{port: 8080}}], route: [{{destination: {{host: a, port: {{number: 8080}}}}}}]}}]}}"), None),
            ("DestinationRule", format!("{meta}\nspec: {{host: a, subsets: [{{name: v1, trafficPolicy: {{portLevelSettings: [{{port: {{number: 70000}}}}]}}}}]}}"), Some("DestinationRule ns/x: spec.subsets[0].trafficPolicy.portLevelSettings[0].port.number: 70000 ")),
            ("DestinationRule", format!("{meta}\nspec: {{host: a, trafficPolicy: {{portLevelSettings: [{{port: {{number: 9080}}}}]}}}}"), None),
        ];
        for (kind, yaml, want) in cases {
            let got = check_yaml(kind, &yaml);
            match want {
                None => assert_eq!(got, Ok(()), "{yaml}"),
                Some(want) => {
                    let got = got.expect_err(&yaml);
                    assert!(got.contains(want), "{yaml}: {got}");
                }
            }
        }
    }
}

//! Linkerd's and SMI's traffic objects as VirtualServices for the waypoint (pure), so a Linkerd
//! user's manifests work as applied:
//!
//! - a `TrafficSplit` shares requests to its apex Service among its backends by weight
//!   (integers, or v1alpha1 quantities such as `500m`);
//! - a `ServiceProfile` (named `<svc>.<ns>.svc.<domain>`) gives the Service one entry per route,
//!   in order: `condition` (`method`, `pathRegex` matching the whole path, `all`, `any`) as the
//!   match, `timeout`, and for `isRetryable` routes retries on 5xx, connect failures and resets
//!   (3 attempts, held by the waypoint's retry budget, as Linkerd's budget holds them); other
//!   routes and requests matching no route are not retried, as in Linkerd;
//! - both on one Service: the profile's routes send to the split's backends.
//!
//! `responseClasses` travel as the VirtualService annotation `waypoint/response-classes` (rule
//! name → classes), which the waypoint's per-route metrics classify answers by.
//!
//! What does not map is reported by name: `not` conditions (the route is dropped),
//! `retryBudget` (the waypoint's
//! `RETRY_BUDGET_*` settings apply), `dstOverrides`, TrafficSplit `matches`.
//!
//! The VirtualServices carry their source's name, prefixed (`trafficsplit-`,
//! `serviceprofile-`), and its creation time, so a VirtualService written for the same Service
//! by a user wins only when it is older, as between VirtualServices.

use std::collections::BTreeMap;

use meshcore::l7::networking::{
    Destination, HttpMatchRequest, HttpRetry, HttpRoute, HttpRouteDestination, StringMatch,
    VirtualService, VirtualServiceSpec, RESPONSE_CLASSES_ANNOTATION,
};

use super::Note;
use crate::cluster::{key, ServiceProfile, TrafficSplit};
use crate::crd::gateway::l7_meta;
use crate::crd::linkerd::RequestMatch;

/// What one Service has: a TrafficSplit for it as apex, a ServiceProfile.
type SplitAndProfile<'a> = (Option<&'a TrafficSplit>, Option<&'a ServiceProfile>);

/// The VirtualServices standing for `splits` and `profiles`, and notes on what does not map.
pub fn virtual_services(
    splits: &[&TrafficSplit],
    profiles: &[&ServiceProfile],
    domain: &str,
) -> (Vec<VirtualService>, Vec<Note>) {
    let mut notes = Vec::new();
    // (namespace, service) → the split's weighted backends.
    let mut by_service: BTreeMap<(String, String), SplitAndProfile<'_>> = BTreeMap::new();
    for split in splits {
        let ns = split.metadata.namespace.clone().unwrap_or_default();
        let entry = by_service
            .entry((ns, split.spec.service.clone()))
            .or_default();
        if entry.0.is_some() {
            notes.push(note(
                "TrafficSplit",
                *split,
                "another TrafficSplit has the same apex Service; only one applies".into(),
            ));
            continue;
        }
        entry.0 = Some(split);
    }
    for profile in profiles {
        let name = profile.metadata.name.clone().unwrap_or_default();
        let ns = profile.metadata.namespace.clone().unwrap_or_default();
        let service = name
            .strip_suffix(&format!(".{ns}.svc.{domain}"))
            .filter(|s| !s.contains('.'));
        let Some(service) = service else {
            notes.push(note(
                "ServiceProfile",
                *profile,
                format!("its name must be <service>.{ns}.svc.{domain} (a Service of its own namespace); not applied"),
            ));
            continue;
        };
        by_service.entry((ns, service.to_owned())).or_default().1 = Some(profile);
    }
    let mut out = Vec::new();
    for ((ns, service), (split, profile)) in by_service {
        let destinations = match split {
            Some(s) => split_destinations(s, &mut notes),
            None => vec![HttpRouteDestination {
                destination: Destination {
                    host: service.clone(),
                    ..Default::default()
                },
                ..Default::default()
            }],
        };
        let no_retries = || {
            Some(HttpRetry {
                attempts: 0,
                ..Default::default()
            })
        };
        let mut http = Vec::new();
        let mut classes = serde_json::Map::new();
        if let Some(p) = profile {
            for (field, set) in [
                (
                    "retryBudget (the waypoint's RETRY_BUDGET_* settings apply)",
                    p.spec.retry_budget.is_some(),
                ),
                ("dstOverrides", p.spec.dst_overrides.is_some()),
                ("opaquePorts", p.spec.opaque_ports.is_some()),
            ] {
                if set {
                    notes.push(note("ServiceProfile", p, format!("{field} is not mapped")));
                }
            }
            for route in &p.spec.routes {
                if let Some(rc) = &route.response_classes {
                    classes.insert(route.name.clone(), rc.clone());
                }
                let Some(matches) = conditions(&route.condition) else {
                    notes.push(note("ServiceProfile", p, format!("route {:?}: its condition uses `not` or conflicting `all` parts; route dropped", route.name)));
                    continue;
                };
                http.push(HttpRoute {
                    name: Some(route.name.clone()),
                    matches,
                    route: destinations.clone(),
                    timeout: route.timeout.clone(),
                    retries: if route.is_retryable {
                        Some(HttpRetry {
                            attempts: 3,
                            retry_on: Some("5xx,connect-failure,reset".into()),
                            ..Default::default()
                        })
                    } else {
                        no_retries()
                    },
                    ..Default::default()
                });
            }
        }
        if let Some(s) = split {
            if s.spec.matches.is_some() {
                notes.push(note(
                    "TrafficSplit",
                    s,
                    "matches are not mapped: the split applies to every request".into(),
                ));
            }
        }
        http.push(HttpRoute {
            name: Some("default".into()),
            route: destinations,
            retries: no_retries(),
            ..Default::default()
        });
        let (source, meta) = match (profile, split) {
            (Some(p), _) => ("serviceprofile", &p.metadata),
            (None, Some(s)) => ("trafficsplit", &s.metadata),
            (None, None) => continue,
        };
        let mut metadata = l7_meta(meta);
        metadata.name = format!("{source}-{}", metadata.name);
        metadata.namespace = ns.clone();
        if !classes.is_empty() {
            // The waypoint's per-route metrics classify answers by them.
            metadata.annotations.insert(
                RESPONSE_CLASSES_ANNOTATION.to_owned(),
                serde_json::Value::Object(classes).to_string(),
            );
        }
        out.push(VirtualService {
            api_version: "networking.istio.io/v1".into(),
            kind: "VirtualService".into(),
            metadata,
            spec: VirtualServiceSpec {
                hosts: vec![service],
                http,
                ..Default::default()
            },
            status: None,
        });
    }
    (out, notes)
}

fn note<T: kube::Resource>(kind: &str, o: &T, message: String) -> Note {
    Note {
        object: format!("{kind} {}", key(o.meta())),
        message,
    }
}

fn split_destinations(s: &TrafficSplit, notes: &mut Vec<Note>) -> Vec<HttpRouteDestination> {
    s.spec
        .backends
        .iter()
        .filter_map(|b| {
            let weight = match weight(&b.weight) {
                Some(w) => w,
                None => {
                    notes.push(note(
                        "TrafficSplit",
                        s,
                        format!(
                            "backend {}: weight {} is not a number or quantity; backend dropped",
                            b.service, b.weight
                        ),
                    ));
                    return None;
                }
            };
            Some(HttpRouteDestination {
                destination: Destination {
                    host: b.service.clone(),
                    ..Default::default()
                },
                weight: Some(weight),
                headers: None,
            })
        })
        .collect()
}

/// A TrafficSplit weight in thousandths: `1`, `500m`, `0.5`.
fn weight(v: &serde_json::Value) -> Option<i32> {
    let milli = match v {
        serde_json::Value::Number(n) => n.as_f64()? * 1000.0,
        serde_json::Value::String(s) => match s.strip_suffix('m') {
            Some(m) => m.parse::<f64>().ok()?,
            None => s.parse::<f64>().ok()? * 1000.0,
        },
        _ => return None,
    };
    (0.0..2e9).contains(&milli).then_some(milli.round() as i32)
}

/// A Linkerd condition as VirtualService matches (any one fits); `None` when it cannot be said.
fn conditions(c: &RequestMatch) -> Option<Vec<HttpMatchRequest>> {
    if c.not.is_some() {
        return None;
    }
    let mut base = HttpMatchRequest::default();
    if let Some(m) = &c.method {
        base.method = Some(StringMatch {
            exact: Some(m.clone()),
            ..Default::default()
        });
    }
    if let Some(p) = &c.path_regex {
        base.uri = Some(StringMatch {
            regex: Some(p.clone()),
            ..Default::default()
        });
    }
    for part in &c.all {
        let [one] = conditions(part)?.try_into().ok()?;
        base.method = merge(base.method.take(), one.method)?;
        base.uri = merge(base.uri.take(), one.uri)?;
    }
    if c.any.is_empty() {
        return Some(vec![base]);
    }
    let mut out = Vec::new();
    for part in &c.any {
        for mut m in conditions(part)? {
            m.method = merge(m.method, base.method.clone())?;
            m.uri = merge(m.uri, base.uri.clone())?;
            out.push(m);
        }
    }
    Some(out)
}

/// Two conditions on one field must agree.
fn merge(a: Option<StringMatch>, b: Option<StringMatch>) -> Option<Option<StringMatch>> {
    match (a, b) {
        (Some(a), Some(b)) if a != b => None,
        (a, b) => Some(a.or(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> crate::cluster::Cluster {
        let mut c = crate::cluster::Cluster::default();
        let mut errors = Vec::new();
        crate::manifests::load_text(yaml, "linkerd.yaml", &mut c, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        c
    }

    #[test]
    fn linkerds_documented_split_and_profile_become_virtual_services() {
        let c = load(
            r#"
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: backend-split, namespace: test}
spec:
  service: backend-svc
  backends:
  - {service: backend-svc, weight: 500}
  - {service: failing-svc, weight: 500}
---
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {name: old-style, namespace: test}
spec:
  service: web
  backends: [{service: web-v1, weight: 900m}, {service: web-v2, weight: 100m}]
---
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: webapp.default.svc.cluster.local, namespace: default}
spec:
  routes:
  - condition: {method: GET, pathRegex: "/books/[^/]*"}
    name: GET /books/{id}
    isRetryable: true
    timeout: 300ms
  - condition:
      any:
      - {method: POST, pathRegex: /books}
      - {method: PUT, pathRegex: "/books/[^/]*"}
    name: write
    responseClasses: [{condition: {status: {min: 500, max: 599}}, isFailure: true}]
  - condition: {not: {method: GET}}
    name: not-get
  retryBudget: {retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s}
"#,
        );
        let splits: Vec<&TrafficSplit> = c.traffic_splits.iter().collect();
        let profiles: Vec<&ServiceProfile> = c.service_profiles.iter().collect();
        let (vs, notes) = virtual_services(&splits, &profiles, "cluster.local");
        let names: Vec<String> = vs.iter().map(|v| v.metadata.key()).collect();
        assert_eq!(
            names,
            [
                "default/serviceprofile-webapp.default.svc.cluster.local",
                "test/trafficsplit-backend-split",
                "test/trafficsplit-old-style"
            ]
        );
        let split = &vs[1].spec;
        assert_eq!(split.hosts, ["backend-svc"]);
        let weights: Vec<(String, Option<i32>)> = split.http[0]
            .route
            .iter()
            .map(|d| (d.destination.host.clone(), d.weight))
            .collect();
        assert_eq!(
            weights,
            [
                ("backend-svc".into(), Some(500_000)),
                ("failing-svc".into(), Some(500_000))
            ]
        );
        assert_eq!(vs[2].spec.http[0].route[0].weight, Some(900));
        let web = &vs[0].spec;
        assert_eq!(web.hosts, ["webapp"]);
        let get = &web.http[0];
        assert_eq!(get.name.as_deref(), Some("GET /books/{id}"));
        assert_eq!(
            get.matches[0].uri.as_ref().unwrap().regex.as_deref(),
            Some("/books/[^/]*")
        );
        assert_eq!(get.timeout.as_deref(), Some("300ms"));
        assert_eq!(get.retries.as_ref().unwrap().attempts, 3);
        assert_eq!(web.http[1].matches.len(), 2, "any: two matches");
        assert_eq!(web.http[1].retries.as_ref().unwrap().attempts, 0);
        assert_eq!(web.http.last().unwrap().name.as_deref(), Some("default"));
        assert_eq!(web.http.len(), 3, "the `not` route is dropped");
        let messages: Vec<&str> = notes.iter().map(|n| n.message.as_str()).collect();
        assert!(
            messages.iter().any(|m| m.contains("not-get")),
            "{messages:?}"
        );
        let classes: serde_json::Value =
            serde_json::from_str(&vs[0].metadata.annotations[RESPONSE_CLASSES_ANNOTATION]).unwrap();
        assert_eq!(classes["write"][0]["isFailure"], true, "{classes}");
        assert!(
            messages.iter().any(|m| m.contains("retryBudget")),
            "{messages:?}"
        );
    }

    #[test]
    fn weights_and_conditions() {
        assert_eq!(weight(&serde_json::json!(1)), Some(1000));
        assert_eq!(weight(&serde_json::json!("250m")), Some(250));
        assert_eq!(weight(&serde_json::json!("x")), None);
        let all = RequestMatch {
            all: vec![
                RequestMatch {
                    method: Some("GET".into()),
                    ..Default::default()
                },
                RequestMatch {
                    path_regex: Some("/a".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let m = conditions(&all).unwrap();
        assert_eq!(m.len(), 1);
        assert!(m[0].method.is_some() && m[0].uri.is_some());
        let conflicting = RequestMatch {
            method: Some("GET".into()),
            all: vec![RequestMatch {
                method: Some("POST".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(conditions(&conflicting).is_none());
    }
}

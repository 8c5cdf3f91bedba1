//! Status writes through the `/status` subresource: read the object, compute the new status from
//! the current one (keeping other controllers' route entries and unchanged conditions'
//! transition times), and replace it only when it differs, with the read's resourceVersion (a
//! concurrent writer makes the API server answer 409, and we read again).

use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};

use super::gateway_status::condition_json;
use crate::crd::gateway::CONTROLLER_NAME;
use crate::translate::route_status::RouteStatus;

/// Attempts before giving up on a status that keeps changing under us.
const CONFLICT_RETRIES: usize = 5;

/// Now, as Kubernetes writes times.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Replaces the object's `status` with `next(current status)` unless that is what it already
/// is. Whether a write was made; an object that no longer exists needs none.
pub async fn update_status(
    client: &Client,
    resource: &ApiResource,
    namespace: &str,
    name: &str,
    next: impl Fn(&Value) -> Value,
) -> Result<bool, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    let mut last = None;
    for _ in 0..CONFLICT_RETRIES {
        let mut obj = match api.get_status(name).await {
            Ok(o) => o,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(false),
            Err(e) => return Err(e),
        };
        let current = obj.data.get("status").cloned().unwrap_or(Value::Null);
        let status = next(&current);
        if status == current {
            return Ok(false);
        }
        obj.data["status"] = status;
        match api.replace_status(name, &PostParams::default(), &obj).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(false),
            Err(kube::Error::Api(s)) if s.code == 409 => last = Some(kube::Error::Api(s)),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("a conflict"))
}

/// A route's `status` with our `parents` entries replaced by `route`'s (other controllers'
/// entries kept, first, in their order).
pub fn route_status_json(route: &RouteStatus, current: &Value, now: &str) -> Value {
    let mut out = match current {
        Value::Object(_) => current.clone(),
        _ => json!({}),
    };
    let previous: Vec<&Value> = current["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut parents: Vec<Value> = previous
        .iter()
        .filter(|p| p["controllerName"] != CONTROLLER_NAME)
        .map(|p| (*p).clone())
        .collect();
    for p in &route.parents {
        let parent_ref = serde_json::to_value(&p.parent_ref).unwrap_or_default();
        let before = previous
            .iter()
            .find(|e| e["controllerName"] == CONTROLLER_NAME && e["parentRef"] == parent_ref)
            .map(|e| &e["conditions"]);
        parents.push(json!({
            "parentRef": parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": [
                condition_json("Accepted", &p.accepted, route.generation, before, now),
                condition_json("ResolvedRefs", &p.resolved_refs, route.generation, before, now),
            ],
        }));
    }
    out["parents"] = Value::Array(parents);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::route_status::{Cond, ParentStatus};

    fn parent(name: &str, accepted: bool) -> ParentStatus {
        ParentStatus {
            parent_ref: serde_json::from_value(
                json!({"group": "", "kind": "Service", "name": name}),
            )
            .unwrap(),
            accepted: Cond {
                status: accepted,
                reason: if accepted {
                    "Accepted"
                } else {
                    "NoMatchingParent"
                }
                .into(),
                message: "m".into(),
            },
            resolved_refs: Cond {
                status: true,
                reason: "ResolvedRefs".into(),
                message: "all references resolved".into(),
            },
        }
    }

    #[test]
    fn route_status_keeps_other_controllers_and_unchanged_transition_times() {
        let route = RouteStatus {
            kind: "HTTPRoute",
            namespace: "shop".into(),
            name: "r".into(),
            generation: Some(2),
            parents: vec![parent("cart", true), parent("legacy", false)],
            has_ours: true,
        };
        let theirs = json!({"parentRef": {"name": "ingress"}, "controllerName": "example.com/other",
                            "conditions": [{"type": "Accepted", "status": "True"}]});
        let current = json!({"parents": [
            {"parentRef": {"group": "", "kind": "Service", "name": "cart"},
             "controllerName": CONTROLLER_NAME,
             "conditions": [{"type": "Accepted", "status": "True", "lastTransitionTime": "T0"}]},
            theirs.clone(),
            {"parentRef": {"group": "", "kind": "Service", "name": "gone"},
             "controllerName": CONTROLLER_NAME, "conditions": []},
        ]});
        let out = route_status_json(&route, &current, "T1");
        let parents = out["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 3, "{out:#}");
        assert_eq!(parents[0], theirs);
        assert_eq!(parents[1]["parentRef"]["name"], "cart");
        assert_eq!(parents[1]["controllerName"], CONTROLLER_NAME);
        let accepted = &parents[1]["conditions"][0];
        assert_eq!(
            (
                &accepted["type"],
                &accepted["status"],
                &accepted["lastTransitionTime"]
            ),
            (&json!("Accepted"), &json!("True"), &json!("T0"))
        );
        assert_eq!(accepted["observedGeneration"], 2);
        assert_eq!(parents[1]["conditions"][1]["lastTransitionTime"], "T1");
        assert_eq!(parents[2]["parentRef"]["name"], "legacy");
        assert_eq!(parents[2]["conditions"][0]["reason"], "NoMatchingParent");
        // Written again with nothing changed: identical, so no write.
        assert_eq!(route_status_json(&route, &out, "T2"), out);
        // No parents of ours any more: only theirs stay.
        let gone = RouteStatus {
            parents: Vec::new(),
            ..route
        };
        assert_eq!(
            route_status_json(&gone, &out, "T3")["parents"],
            json!([theirs])
        );
    }
}

//! An ingress Gateway's status from the translation's part and what is deployed.

use serde_json::json;

use super::*;
use crate::controller::render::NotDeployable;
use crate::translate::ingress::ListenerState;

fn cond(status: bool, reason: &str) -> Cond {
    Cond {
        status,
        reason: reason.into(),
        message: "m".into(),
    }
}

fn pure() -> IngressStatus {
    let listener = |name: &str, served: Result<(), String>, attached| ListenerState {
        name: name.into(),
        port: 80,
        supported_kinds: vec!["HTTPRoute".into(), "GRPCRoute".into()],
        accepted: cond(true, "Accepted"),
        resolved_refs: cond(true, "ResolvedRefs"),
        conflicted: cond(false, "NoConflicts"),
        served,
        attached_routes: attached,
    };
    IngressStatus {
        namespace: "gw".into(),
        name: "web".into(),
        generation: Some(5),
        accepted: cond(true, "Accepted"),
        listeners: vec![
            listener("http", Ok(()), 3),
            listener("tcp", Err("protocol TCP is not supported".into()), 0),
        ],
        service_account: "web-istio".into(),
    }
}

#[test]
fn programmed_once_the_deployment_is_ready_with_load_balancer_addresses() {
    let p = pure();
    let s = ingress_gateway_status(&p, None, None, None);
    assert_eq!(s.addresses, []);
    assert_eq!(
        (s.programmed.status, s.programmed.reason.as_str()),
        (false, "Pending")
    );
    assert_eq!(
        s.programmed.message,
        "Deployment gw/web-istio does not exist yet"
    );

    let pending_lb = json!({"spec": {"clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"]},
                            "status": {"loadBalancer": {}}});
    let ready = json!({"spec": {"replicas": 1}, "status": {"readyReplicas": 1}});
    let s = ingress_gateway_status(&p, None, Some(&pending_lb), Some(&ready));
    assert_eq!(
        s.addresses,
        [("IPAddress", "10.96.0.9".to_owned())],
        "the cluster IP until the LB has one"
    );
    assert_eq!(
        (s.programmed.status, s.programmed.reason.as_str()),
        (true, "Programmed")
    );

    let lb = json!({"spec": {"clusterIP": "10.96.0.9"},
                    "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}, {"hostname": "lb.example.com"}]}}});
    let s = ingress_gateway_status(&p, None, Some(&lb), Some(&ready));
    assert_eq!(
        s.addresses,
        [
            ("IPAddress", "203.0.113.7".to_owned()),
            ("Hostname", "lb.example.com".to_owned())
        ]
    );
    let listeners = s.listeners.as_ref().unwrap();
    assert_eq!(listeners[0].1.reason, "Programmed");
    assert_eq!(
        (
            listeners[1].1.status,
            listeners[1].1.reason.as_str(),
            listeners[1].1.message.as_str()
        ),
        (
            false,
            "Invalid",
            "not served: protocol TCP is not supported"
        )
    );

    let json = s.merge_into(&json!({}), "T1");
    assert_eq!(json["listeners"][0]["name"], "http");
    assert_eq!(json["listeners"][0]["attachedRoutes"], 3);
    assert_eq!(
        json["listeners"][0]["supportedKinds"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
               {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}])
    );
    let types: Vec<&str> = json["listeners"][0]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["Accepted", "ResolvedRefs", "Conflicted", "Programmed"]
    );
    assert_eq!(
        json["listeners"][0]["conditions"][0]["observedGeneration"],
        5
    );
    // Unchanged: the listener conditions keep their transition times.
    let again = s.merge_into(&json, "T2");
    assert_eq!(
        again["listeners"][0]["conditions"][0]["lastTransitionTime"],
        "T1"
    );
}

#[test]
fn undeployable_and_unserved_gateways_are_not_programmed() {
    let p = pure();
    let e = NotDeployable {
        reason: "UnsupportedValue",
        message: "bad name".into(),
    };
    let s = ingress_gateway_status(&p, Some(&e), None, None);
    assert_eq!(
        (s.accepted.status, s.accepted.reason.as_str()),
        (false, "UnsupportedValue")
    );
    assert_eq!(
        (s.programmed.status, s.programmed.reason.as_str()),
        (false, "Invalid")
    );

    let mut nothing = pure();
    nothing.listeners.remove(0);
    let s = ingress_gateway_status(&nothing, None, None, None);
    assert_eq!(s.programmed.message, "no listener is served");
}

#[test]
fn published_in_manifest_mode_and_shown_without_transition_times() {
    let s = published(&pure());
    assert_eq!(
        (s.programmed.status, s.programmed.reason.as_str()),
        (true, "Programmed")
    );
    let shown = s.debug_json("gw/web");
    assert_eq!(shown["gateway"], "gw/web");
    assert_eq!(shown["addresses"], json!([]));
    assert_eq!(shown["conditions"][1]["type"], "Programmed");
    assert!(!shown.to_string().contains("lastTransitionTime"), "{shown}");
    assert_eq!(shown["listeners"][1]["conditions"][3]["reason"], "Invalid");
}

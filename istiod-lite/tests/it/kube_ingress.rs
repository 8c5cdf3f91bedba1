//! Cluster mode with an ingress Gateway (class `istio`) against the Kubernetes API stand-in:
//! TLS Secrets read through the `type` field selector, a cross-namespace certificate allowed
//! by a ReferenceGrant, the gateway deployed (`<name>-istio`, a LoadBalancer Service with the
//! listener ports), and the Gateway's and the route's status written.

use serde_json::{json, Value};

use crate::kube::{eventually, example_objects, start_controller, GATEWAYS};
use crate::kube_api::FakeApi;

const CERT: &str =
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUIKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=";
const KEY: &str =
    "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCk1JSUUKLS0tLS1FTkQgUFJJVkFURSBLRVktLS0tLQo=";

fn tls_secret(namespace: &str, name: &str, type_: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": type_,
           "metadata": {"name": name, "namespace": namespace},
           "data": {"tls.crt": CERT, "tls.key": KEY}})
}

/// `(type, status, reason)` of each condition.
fn conditions(v: &Value) -> Vec<(String, String, String)> {
    v["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("type"), s("status"), s("reason"))
        })
        .collect()
}

fn c(t: &str, s: &str, r: &str) -> (String, String, String) {
    (t.into(), s.into(), r.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_gateway_is_deployed_served_and_gets_status() {
    let api = FakeApi::start().await;
    for o in example_objects() {
        api.apply(o);
    }
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "certs"}}));
    api.apply(tls_secret("shop", "web-cert", "kubernetes.io/tls"));
    api.apply(tls_secret("certs", "shared", "kubernetes.io/tls"));
    // Not of type kubernetes.io/tls: never listed.
    api.apply(tls_secret("shop", "opaque", "Opaque"));
    api.apply(json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "shop-gateways", "namespace": "certs"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "shop"}],
                 "to": [{"group": "", "kind": "Secret"}]}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "cart", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.30", "selector": {"app": "cart"}, "ports": [{"name": "http", "port": 80}]}}));
    api.apply(json!({"apiVersion": GATEWAYS, "kind": "Gateway",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"gatewayClassName": "istio", "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP"},
            {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "shop.example.com",
             "tls": {"certificateRefs": [{"name": "web-cert"}]}},
            {"name": "shared", "port": 8443, "protocol": "HTTPS",
             "tls": {"certificateRefs": [{"name": "shared", "namespace": "certs"}]}},
            {"name": "opaque", "port": 9443, "protocol": "HTTPS",
             "tls": {"certificateRefs": [{"name": "opaque"}]}}]}}));
    api.apply(json!({"apiVersion": GATEWAYS, "kind": "HTTPRoute",
        "metadata": {"name": "shop", "namespace": "shop"},
        "spec": {"parentRefs": [{"name": "web"}],
                 "rules": [{"backendRefs": [{"name": "cart", "port": 80}]}]}}));
    let status = start_controller(&api);

    let get = |api_version: &str, kind: &str, name: &str| api.get(api_version, kind, "shop", name);
    let deployment = eventually("the Deployment", || {
        get("apps/v1", "Deployment", "web-istio")
    })
    .await;
    let service = eventually("the Service", || get("v1", "Service", "web-istio")).await;
    let account = eventually("the ServiceAccount", || {
        get("v1", "ServiceAccount", "web-istio")
    })
    .await;
    for o in [&deployment, &service, &account] {
        assert_eq!(
            o["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
            "web"
        );
    }
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    let ports: Vec<i64> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [80, 443, 8443, 9443, 15021]);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "web-istio");
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let bind = env.iter().find(|e| e["name"] == "BIND_ADDRESS").unwrap();
    assert_eq!(bind["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    let name = env.iter().find(|e| e["name"] == "WAYPOINT_NAME").unwrap();
    assert_eq!(name["value"], "web");
    let cluster_ip = service["spec"]["clusterIP"].as_str().unwrap().to_owned();

    // Status: the listeners resolved, the Service's cluster IP until the load balancer has one,
    // not programmed until a replica is ready.
    let listeners = |gw: &Value| gw["status"]["listeners"].as_array().cloned();
    let gw = eventually("the Gateway's listeners", || {
        get(GATEWAYS, "Gateway", "web").filter(|g| listeners(g).is_some_and(|l| l.len() == 4))
    })
    .await;
    let ls = listeners(&gw).unwrap();
    assert_eq!(
        conditions(&ls[0]),
        [
            c("Accepted", "True", "Accepted"),
            c("ResolvedRefs", "True", "ResolvedRefs"),
            c("Conflicted", "False", "NoConflicts"),
            c("Programmed", "False", "Pending"),
        ]
    );
    assert_eq!(ls[0]["attachedRoutes"], 1);
    assert_eq!(
        ls[1]["attachedRoutes"], 1,
        "a route without hostnames takes the listener's"
    );
    assert_eq!(
        conditions(&ls[2])[1],
        c("ResolvedRefs", "True", "ResolvedRefs")
    );
    assert_eq!(
        conditions(&ls[3])[1],
        c("ResolvedRefs", "False", "InvalidCertificateRef")
    );
    assert_eq!(conditions(&ls[3])[3], c("Programmed", "False", "Invalid"));
    assert_eq!(
        gw["status"]["addresses"],
        json!([{"type": "IPAddress", "value": cluster_ip}])
    );
    assert_eq!(
        conditions(&gw["status"])[0],
        c("Accepted", "True", "Accepted")
    );

    api.set_status(
        "v1",
        "Service",
        "shop",
        "web-istio",
        json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}),
    );
    api.set_status(
        "apps/v1",
        "Deployment",
        "shop",
        "web-istio",
        json!({"replicas": 1, "readyReplicas": 1}),
    );
    let gw = eventually("Programmed with the load balancer's address", || {
        get(GATEWAYS, "Gateway", "web").filter(|g| {
            g["status"]["addresses"] == json!([{"type": "IPAddress", "value": "203.0.113.9"}])
                && conditions(&g["status"]).contains(&c("Programmed", "True", "Programmed"))
        })
    })
    .await;
    let ls = listeners(&gw).unwrap();
    assert_eq!(conditions(&ls[0])[3], c("Programmed", "True", "Programmed"));

    // The route's status towards the Gateway.
    let route = eventually("the route's status", || {
        get(GATEWAYS, "HTTPRoute", "shop").filter(|r| r["status"]["parents"].is_array())
    })
    .await;
    let parent = &route["status"]["parents"][0];
    assert_eq!(parent["parentRef"]["name"], "web");
    assert_eq!(parent["controllerName"], "istio.io/gateway-controller");
    assert_eq!(
        conditions(parent),
        [
            c("Accepted", "True", "Accepted"),
            c("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    let secrets: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|(_, p, _)| p.ends_with("/secrets"))
        .map(|(_, _, q)| q)
        .collect();
    assert!(!secrets.is_empty());
    assert!(
        secrets
            .iter()
            .all(|q| q.contains("fieldSelector=type%3Dkubernetes.io%2Ftls")),
        "Secrets are only listed and watched by type: {secrets:?}"
    );
    let shown = status.lock().unwrap().waypoint_controller.gateways["shop/web"].clone();
    assert_eq!(shown["gateway"], "shop/web");
    assert!(
        !shown.to_string().contains("PRIVATE"),
        "no key material in /debug/config"
    );
}

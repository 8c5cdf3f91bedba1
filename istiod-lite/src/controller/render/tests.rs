//! The objects a waypoint Gateway is deployed as, exactly.

use serde_json::{json, Value};

use super::*;
use crate::translate::ClusterInfo;

fn settings() -> DeploySettings {
    DeploySettings {
        image: "registry.example/waypoint:1.2".into(),
        discovery_address: "istiod.istio-system.svc:15012".into(),
        info: ClusterInfo {
            trust_domain: "td.example".into(),
            ..ClusterInfo::default()
        },
        root_pem: "ROOT".into(),
        tracing: Vec::new(),
    }
}

fn gateway(yaml: &str) -> Gateway {
    serde_yaml_ng::from_str(yaml).unwrap()
}

const WP: &str = "metadata: {name: wp, namespace: shop, uid: 9f1c}\n\
                  spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}";

fn owner() -> Value {
    json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "wp",
            "uid": "9f1c", "controller": true}])
}

#[test]
fn service_account_and_service() {
    let r = render(&gateway(WP), &settings()).unwrap();
    assert_eq!(
        serde_json::to_value(&r.service_account).unwrap(),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "wp", "namespace": "shop",
                            "labels": {"gateway.networking.k8s.io/gateway-name": "wp"},
                            "ownerReferences": owner()}})
    );
    assert_eq!(
        serde_json::to_value(&r.service).unwrap(),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "wp", "namespace": "shop",
                            "labels": {"gateway.networking.k8s.io/gateway-name": "wp"},
                            "ownerReferences": owner()},
               "spec": {"type": "ClusterIP",
                        "selector": {"gateway.networking.k8s.io/gateway-name": "wp"},
                        "ports": [{"name": "mesh", "port": 15008, "protocol": "TCP"},
                                  {"name": "status-port", "port": 15021, "protocol": "TCP"},
                                  {"name": "metrics", "port": 15020, "protocol": "TCP"}]}})
    );
}

#[test]
fn deployment() {
    let r = render(&gateway(WP), &settings()).unwrap();
    let labels = json!({"gateway.networking.k8s.io/gateway-name": "wp",
                        "istio.io/dataplane-mode": "none"});
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let env = |name: &str, value: &str| json!({"name": name, "value": value});
    assert_eq!(
        serde_json::to_value(&r.deployment).unwrap(),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "wp", "namespace": "shop", "labels": labels,
                     "ownerReferences": owner()},
        "spec": {
          "replicas": 1,
          "selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": "wp"}},
          "template": {
            "metadata": {"labels": labels},
            "spec": {
              "serviceAccountName": "wp",
              "containers": [{
                "name": "waypoint",
                "image": "registry.example/waypoint:1.2",
                "ports": [{"name": "mesh", "containerPort": 15008, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 15020, "protocol": "TCP"},
                          {"name": "status-port", "containerPort": 15021, "protocol": "TCP"}],
                "env": [
                  field("POD_NAMESPACE", "metadata.namespace"),
                  field("POD_NAME", "metadata.name"),
                  field("INSTANCE_IP", "status.podIP"),
                  field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
                  env("WAYPOINT_NAME", "wp"),
                  env("TRUST_DOMAIN", "td.example"),
                  env("CLUSTER_ID", "Kubernetes"),
                  env("ROOT_NAMESPACE", "istio-system"),
                  env("XDS_ADDRESS", "istiod.istio-system.svc:15012"),
                  env("CA_ADDRESS", "istiod.istio-system.svc:15012"),
                  env("CA_TOKEN_FILE", "/var/run/secrets/tokens/istio-token"),
                  env("XDS_ROOT_CA", "/var/run/secrets/istio/root-cert.pem"),
                ],
                "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021},
                                   "periodSeconds": 5, "failureThreshold": 4},
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "readOnlyRootFilesystem": true,
                                    "runAsNonRoot": true, "runAsUser": 1337,
                                    "runAsGroup": 1337,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [
                  {"name": "istio-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
                  {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio", "readOnly": true},
                ],
              }],
              "volumes": [
                {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken":
                  {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}},
                {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}},
              ],
            }}}})
    );
}

#[test]
fn tracing_settings_reach_the_waypoint_environment() {
    let s = DeploySettings {
        tracing: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317".into()),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5".into()),
        ],
        ..settings()
    };
    let r = render(&gateway(WP), &s).unwrap();
    let pod = r.deployment.spec.template.spec.unwrap();
    let env: Vec<_> = pod.containers[0]
        .env
        .iter()
        .flatten()
        .filter(|e| e.name.starts_with("OTEL_"))
        .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        env,
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5")
        ]
    );
}

#[test]
fn the_service_account_annotation_names_the_account() {
    let gw = gateway(
        "metadata: {name: wp, namespace: shop, uid: 9f1c, annotations: {gateway.istio.io/service-account: cart-waypoint}}\n\
         spec: {gatewayClassName: istio-waypoint}",
    );
    let r = render(&gw, &settings()).unwrap();
    assert_eq!(
        r.service_account.metadata.name.as_deref(),
        Some("cart-waypoint")
    );
    let pod = r.deployment.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("cart-waypoint"));
    // Deployment and Service keep the Gateway's name.
    assert_eq!(r.deployment.metadata.name.as_deref(), Some("wp"));
    assert_eq!(r.service.metadata.name.as_deref(), Some("wp"));
}

#[test]
fn infrastructure_labels_and_annotations_are_propagated_but_ours_win() {
    let gw = gateway(
        "metadata: {name: wp, namespace: shop, uid: 9f1c}\n\
         spec: {gatewayClassName: istio-waypoint, infrastructure: {labels: {team: a, \
         gateway.networking.k8s.io/gateway-name: other}, annotations: {note: x}}}",
    );
    let r = render(&gw, &settings()).unwrap();
    let labels = r.service.metadata.labels.unwrap();
    assert_eq!(labels["team"], "a");
    assert_eq!(labels[GATEWAY_NAME_LABEL], "wp");
    let template = r.deployment.spec.template.metadata.unwrap();
    assert_eq!(template.labels.unwrap()["team"], "a");
    assert_eq!(template.annotations.unwrap()["note"], "x");
    assert_eq!(r.service_account.metadata.annotations.unwrap()["note"], "x");
}

#[test]
fn what_cannot_be_deployed_says_why() {
    let bad_sa = gateway(
        "metadata: {name: wp, namespace: shop, uid: u, annotations: {gateway.istio.io/service-account: Not_Valid}}\n\
         spec: {gatewayClassName: istio-waypoint}",
    );
    let e = render(&bad_sa, &settings()).unwrap_err();
    assert_eq!(e.reason, "InvalidParameters");
    assert!(e.message.contains("\"Not_Valid\""), "{e:?}");
    let dotted = gateway(
        "metadata: {name: w.p, namespace: shop, uid: u}\nspec: {gatewayClassName: istio-waypoint}",
    );
    assert_eq!(
        render(&dotted, &settings()).unwrap_err().reason,
        "UnsupportedValue"
    );
    let no_uid =
        gateway("metadata: {name: wp, namespace: shop}\nspec: {gatewayClassName: istio-waypoint}");
    assert!(render(&no_uid, &settings()).is_err());
}

#[test]
fn the_root_cert_config_map() {
    assert_eq!(
        serde_json::to_value(root_cert_config_map("shop", "ROOT")).unwrap(),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "istio-ca-root-cert", "namespace": "shop",
                            "labels": {"istio.io/config": "true"}},
               "data": {"root-cert.pem": "ROOT"}})
    );
}

const INGRESS: &str = "metadata: {name: web, namespace: gw, uid: 7a2b}\n\
    spec:\n  gatewayClassName: istio\n  listeners:\n\
    \x20 - {name: http, port: 80, protocol: HTTP}\n\
    \x20 - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: c}]}}\n\
    \x20 - {name: https-b, port: 443, protocol: HTTPS, hostname: b.example, tls: {certificateRefs: [{name: c}]}}\n\
    \x20 - {name: tcp, port: 9000, protocol: TCP}\n\
    \x20 - {name: alt, port: 8080, protocol: HTTP}";

#[test]
fn an_ingress_gateway_is_a_load_balancer_service_and_a_gateway_deployment() {
    let r = ingress::render_ingress(&gateway(INGRESS), &settings()).unwrap();
    let labels = json!({"gateway.networking.k8s.io/gateway-name": "web"});
    let owner = json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                        "name": "web", "uid": "7a2b", "controller": true}]);
    assert_eq!(
        serde_json::to_value(&r.service_account).unwrap(),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "web-istio", "namespace": "gw", "labels": labels,
                            "ownerReferences": owner}})
    );
    assert_eq!(
        serde_json::to_value(&r.service).unwrap(),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web-istio", "namespace": "gw", "labels": labels,
                            "ownerReferences": owner},
               "spec": {"type": "LoadBalancer",
                        "selector": {"gateway.networking.k8s.io/gateway-name": "web"},
                        "ports": [{"name": "http-80", "port": 80, "protocol": "TCP"},
                                  {"name": "https-443", "port": 443, "protocol": "TCP"},
                                  {"name": "http-8080", "port": 8080, "protocol": "TCP"},
                                  {"name": "status-port", "port": 15021, "protocol": "TCP"}]}})
    );
    let d = serde_json::to_value(&r.deployment).unwrap();
    assert_eq!(d["metadata"]["name"], "web-istio");
    assert_eq!(d["metadata"]["labels"]["istio.io/dataplane-mode"], "none");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "web-istio");
    assert_eq!(
        pod["securityContext"],
        json!({"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]}),
        "uid 1337 binds ports 80 and 443"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example/waypoint:1.2");
    assert_eq!(
        c["ports"],
        json!([{"name": "http-80", "containerPort": 80, "protocol": "TCP"},
               {"name": "https-443", "containerPort": 443, "protocol": "TCP"},
               {"name": "http-8080", "containerPort": 8080, "protocol": "TCP"},
               {"name": "metrics", "containerPort": 15020, "protocol": "TCP"},
               {"name": "status-port", "containerPort": 15021, "protocol": "TCP"}])
    );
    let env: Vec<(String, String)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let v = e["value"].as_str().map(str::to_owned).unwrap_or_else(|| {
                format!(
                    "<{}>",
                    e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap()
                )
            });
            (e["name"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("WAYPOINT_NAME"), Some("web"));
    assert_eq!(get("POD_NAMESPACE"), Some("<metadata.namespace>"));
    assert_eq!(get("SERVICE_ACCOUNT"), Some("<spec.serviceAccountName>"));
    assert_eq!(get("BIND_ADDRESS"), Some("<status.podIP>"));
    assert_eq!(get("XDS_ADDRESS"), Some("istiod.istio-system.svc:15012"));
    assert_eq!(get("CA_ADDRESS"), Some("istiod.istio-system.svc:15012"));
    assert_eq!(get("TRUST_DOMAIN"), Some("td.example"));
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 15021);
}

#[test]
fn an_ingress_gateways_service_type_and_account_follow_its_annotations() {
    let gw = gateway(
        "metadata: {name: web, namespace: gw, uid: u, annotations: \
         {networking.istio.io/service-type: ClusterIP, gateway.istio.io/service-account: edge}}\n\
         spec: {gatewayClassName: istio, listeners: [{name: http, port: 8080, protocol: HTTP}]}",
    );
    let mut s = settings();
    s.tracing = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4317".into())];
    let r = ingress::render_ingress(&gw, &s).unwrap();
    assert_eq!(
        r.service.spec.as_ref().unwrap().type_.as_deref(),
        Some("ClusterIP")
    );
    assert_eq!(r.service_account.metadata.name.as_deref(), Some("edge"));
    let pod = r.deployment.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("edge"));
    assert_eq!(pod.security_context, None, "no port below 1024");
    let env = pod.containers[0].env.clone().unwrap();
    assert!(env.iter().any(|e| e.name == "OTEL_EXPORTER_OTLP_ENDPOINT"));

    let long = gateway(&format!(
        "metadata: {{name: {}, namespace: gw, uid: u}}\nspec: {{gatewayClassName: istio}}",
        "a".repeat(60)
    ));
    let e = ingress::render_ingress(&long, &settings()).unwrap_err();
    assert_eq!(e.reason, "UnsupportedValue");
    assert!(
        e.message
            .starts_with("the gateway's Service would be named"),
        "{e:?}"
    );
}

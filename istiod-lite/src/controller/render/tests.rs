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

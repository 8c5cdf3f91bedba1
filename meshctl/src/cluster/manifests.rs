//! Reading the user's manifests for the local cluster, doing what the API server, the
//! scheduler and the Deployment controller would: Deployments become Pods, Pods get a node,
//! Services get a cluster IP. Everything else passes through to istiod-lite untouched.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

/// The built-in image: the echo server (`meshctl echo`).
pub const ECHO_IMAGE: &str = "meshctl/echo";
/// The built-in image of a waypoint's pod (the `waypoint` binary).
pub const WAYPOINT_IMAGE: &str = "meshctl/waypoint";
/// The Gateway class of waypoints.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// The Gateway class of ingress gateways (also served by the `waypoint` binary).
pub const INGRESS_CLASS: &str = "istio";

/// A pod to create.
#[derive(Debug, Clone)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    /// Asked for by `spec.nodeName`; otherwise chosen round robin.
    pub node: Option<String>,
    pub service_account: String,
    pub containers: Vec<Container>,
    /// The Pod object as written (metadata and spec), completed at `up`.
    pub object: Value,
}

#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `ports[].containerPort` with the port's name, if any.
    pub ports: Vec<(u16, Option<String>)>,
}

/// What the manifests ask for.
#[derive(Debug, Default)]
pub struct Plan {
    pub pods: Vec<PodPlan>,
    /// Objects passed through to the control plane (Services with their cluster IP filled).
    pub objects: Vec<Value>,
    /// Node names the pods ask for.
    pub named_nodes: Vec<String>,
    /// Ingress gateways, to expose on the host once their pods run.
    pub ingress: Vec<IngressPlan>,
}

/// An ingress gateway: its Gateway, its pod, and its listeners `(name, port, protocol)`.
#[derive(Debug, Clone)]
pub struct IngressPlan {
    pub namespace: String,
    pub name: String,
    pub pod: String,
    pub listeners: Vec<(String, u16, String)>,
}

/// Every YAML document of every `.yaml`/`.yml` file in `dir` (or the one file `dir` names).
pub fn load(path: &Path) -> Result<Vec<Value>, String> {
    let mut files = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))? {
            let p = entry.map_err(|e| e.to_string())?.path();
            if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_owned());
    }
    let mut docs = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        docs.extend(parse(&text).map_err(|e| format!("{}: {e}", file.display()))?);
    }
    Ok(docs)
}

/// The documents of one YAML text (empty ones skipped).
pub fn parse(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|s| match s {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pod_plan(namespace: &str, name: &str, object: Value) -> Result<PodPlan, String> {
    let spec = object.get("spec").cloned().unwrap_or(Value::Null);
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("Pod {namespace}/{name}: spec.containers is empty"))?
        .iter()
        .map(|c| Container {
            name: str_at(c, &["name"]).unwrap_or("app").to_owned(),
            image: str_at(c, &["image"]).unwrap_or_default().to_owned(),
            command: strings(c.get("command")),
            args: strings(c.get("args")),
            env: c
                .get("env")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    Some((
                        str_at(e, &["name"])?.to_owned(),
                        str_at(e, &["value"]).unwrap_or_default().to_owned(),
                    ))
                })
                .collect(),
            ports: c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let port = u16::try_from(p.get("containerPort")?.as_u64()?).ok()?;
                    Some((port, str_at(p, &["name"]).map(str::to_owned)))
                })
                .collect(),
        })
        .collect();
    Ok(PodPlan {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        node: str_at(&spec, &["nodeName"]).map(str::to_owned),
        service_account: str_at(&spec, &["serviceAccountName"])
            .unwrap_or("default")
            .to_owned(),
        containers,
        object,
    })
}

/// Most replicas one workload may ask for in a local cluster.
const MAX_REPLICAS: u64 = 100;

/// `v[key]` must be an object (or absent, then made one) before it is written into.
fn object_at<'a>(v: &'a mut Value, key: &str, what: &str) -> Result<&'a mut Value, String> {
    let slot = &mut v[key];
    if slot.is_null() {
        *slot = json!({});
    }
    if !slot.is_object() {
        return Err(format!("{what}: {key} is not a mapping"));
    }
    Ok(slot)
}

/// Turns documents into a plan. `first_vip` is the first cluster IP handed out.
pub fn plan(docs: Vec<Value>, first_vip: Ipv4Addr) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let mut next_vip = u32::from(first_vip);
    for mut doc in docs {
        if !doc.is_object() {
            return Err(format!("a document is not a mapping: {doc}"));
        }
        let kind = str_at(&doc, &["kind"]).unwrap_or_default().to_owned();
        let name = str_at(&doc, &["metadata", "name"])
            .ok_or_else(|| format!("a {kind} without metadata.name"))?
            .to_owned();
        let namespace = str_at(&doc, &["metadata", "namespace"])
            .unwrap_or("default")
            .to_owned();
        match kind.as_str() {
            "Pod" => {
                object_at(&mut doc, "spec", &format!("Pod {namespace}/{name}"))?;
                doc["metadata"]["namespace"] = json!(namespace);
                plan.pods.push(pod_plan(&namespace, &name, doc)?);
            }
            "Deployment" | "StatefulSet" | "ReplicaSet" => {
                let what = format!("{kind} {namespace}/{name}");
                let replicas = doc["spec"]["replicas"].as_u64().unwrap_or(1);
                if replicas > MAX_REPLICAS {
                    return Err(format!(
                        "{what}: {replicas} replicas; a local cluster takes at most {MAX_REPLICAS}"
                    ));
                }
                let template = &doc["spec"]["template"];
                if !template.is_object() {
                    return Err(format!("{what}: spec.template is missing or not a mapping"));
                }
                for i in 0..replicas {
                    let pod_name = if kind == "StatefulSet" {
                        format!("{name}-{i}")
                    } else {
                        format!("{name}-{}", i + 1)
                    };
                    let mut metadata = template.get("metadata").cloned().unwrap_or(json!({}));
                    if !metadata.is_object() {
                        return Err(format!("{what}: spec.template.metadata is not a mapping"));
                    }
                    object_at(&mut metadata, "labels", &what)?;
                    metadata["name"] = json!(pod_name);
                    metadata["namespace"] = json!(namespace);
                    // Owned as the controllers would own it, so the workload is named for the
                    // Deployment (or StatefulSet) in metrics, not for the pod.
                    let (owner_kind, owner_name) = if kind == "Deployment" {
                        let hash = "7c9d5f6b8";
                        metadata["labels"]["pod-template-hash"] = json!(hash);
                        ("ReplicaSet", format!("{name}-{hash}"))
                    } else {
                        (kind.as_str(), name.clone())
                    };
                    metadata["ownerReferences"] = json!([{
                        "apiVersion": "apps/v1",
                        "kind": owner_kind,
                        "name": owner_name,
                        "uid": format!("{namespace}-{owner_name}"),
                        "controller": true,
                    }]);
                    let object = json!({
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": metadata,
                        "spec": template.get("spec").cloned().unwrap_or(json!({})),
                    });
                    plan.pods.push(pod_plan(&namespace, &pod_name, object)?);
                }
            }
            "Service" => {
                // As the API server stores it: in the default namespace unless it says otherwise.
                doc["metadata"]["namespace"] = json!(namespace);
                let spec = object_at(&mut doc, "spec", &format!("Service {namespace}/{name}"))?;
                let has_ip = spec
                    .get("clusterIP")
                    .and_then(Value::as_str)
                    .is_some_and(|ip| !ip.is_empty());
                if !has_ip {
                    spec["clusterIP"] = json!(Ipv4Addr::from(next_vip).to_string());
                    next_vip += 1;
                }
                plan.objects.push(doc);
            }
            "Gateway" if str_at(&doc, &["spec", "gatewayClassName"]) == Some(WAYPOINT_CLASS) => {
                // What Istio's gateway deployment controller does: a Deployment (here its one
                // pod) and a Service for the waypoint, owned by the Gateway.
                let (pod, mut service) = gateway_objects(&namespace, &name, &doc, false);
                service["spec"]["clusterIP"] = json!(Ipv4Addr::from(next_vip).to_string());
                next_vip += 1;
                plan.pods
                    .push(pod_plan(&namespace, &format!("{name}-1"), pod)?);
                plan.objects.push(service);
                plan.objects.push(doc);
            }
            "Gateway" if str_at(&doc, &["spec", "gatewayClassName"]) == Some(INGRESS_CLASS) => {
                // Istio's deployment controller for class `istio`: Deployment and Service
                // `<name>-istio` (the Service a LoadBalancer: here a host address, see
                // `expose`).
                let (pod, mut service) = gateway_objects(&namespace, &name, &doc, true);
                service["spec"]["clusterIP"] = json!(Ipv4Addr::from(next_vip).to_string());
                next_vip += 1;
                let pod_name = format!("{name}-istio-1");
                plan.pods.push(pod_plan(&namespace, &pod_name, pod)?);
                plan.ingress.push(IngressPlan {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    pod: pod_name,
                    listeners: listeners(&doc),
                });
                plan.objects.push(service);
                plan.objects.push(doc);
            }
            _ => plan.objects.push(doc),
        }
    }
    let mut named: BTreeMap<String, ()> = BTreeMap::new();
    for p in &plan.pods {
        if let Some(n) = &p.node {
            named.insert(n.clone(), ());
        }
    }
    plan.named_nodes = named.into_keys().collect();
    Ok(plan)
}

/// A Gateway's listeners: `(name, port, protocol)`.
fn listeners(gateway: &Value) -> Vec<(String, u16, String)> {
    gateway["spec"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            Some((
                l["name"].as_str()?.to_owned(),
                u16::try_from(l["port"].as_u64()?).ok()?,
                l["protocol"].as_str().unwrap_or("HTTP").to_owned(),
            ))
        })
        .collect()
}

/// The pod and Service of the Gateway `name`, run by the `waypoint` binary and never captured
/// itself (`dataplane-mode: none`). A waypoint: its own service account (the Gateway's name
/// unless the annotation names another), HBONE on 15008 and readiness on 15021 behind a Service
/// named like the Gateway. An ingress gateway (`ingress`): Istio's names, `<name>-istio` for
/// the service account (unless annotated), pod and Service, whose ports are the listeners'.
fn gateway_objects(namespace: &str, name: &str, gateway: &Value, ingress: bool) -> (Value, Value) {
    let base = if ingress {
        format!("{name}-istio")
    } else {
        name.to_owned()
    };
    let service_account = str_at(
        gateway,
        &[
            "metadata",
            "annotations",
            "gateway.istio.io/service-account",
        ],
    )
    .map_or_else(|| base.clone(), str::to_owned);
    let labels = json!({
        "gateway.networking.k8s.io/gateway-name": name,
        "istio.io/dataplane-mode": "none",
        "app": base,
    });
    let owner = json!([{
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "name": name,
        "uid": format!("{namespace}-{name}"),
        "controller": true,
    }]);
    let (container_ports, mut service_ports) = if ingress {
        let mut ports: Vec<(String, u16)> = listeners(gateway)
            .into_iter()
            .map(|(n, p, _)| (n, p))
            .collect();
        ports.sort_by_key(|p| p.1);
        ports.dedup_by_key(|p| p.1);
        (
            ports
                .iter()
                .map(|(n, p)| json!({"name": n, "containerPort": p}))
                .collect::<Vec<_>>(),
            ports
                .iter()
                .map(|(n, p)| json!({"name": n, "port": p, "targetPort": p}))
                .collect::<Vec<_>>(),
        )
    } else {
        (
            vec![json!({"name": "mesh", "containerPort": 15008})],
            vec![json!({"name": "mesh", "port": 15008, "targetPort": 15008})],
        )
    };
    service_ports.push(json!({"name": "status-port", "port": 15021, "targetPort": 15021}));
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("{base}-1"), "namespace": namespace, "labels": labels, "ownerReferences": owner},
        "spec": {
            "serviceAccountName": service_account,
            "containers": [{
                "name": if ingress { "istio-proxy" } else { "waypoint" },
                "image": WAYPOINT_IMAGE,
                "env": [{"name": "WAYPOINT_NAME", "value": name}],
                "ports": container_ports,
            }],
        },
    });
    let mut service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": base, "namespace": namespace, "labels": {"gateway.networking.k8s.io/gateway-name": name}, "ownerReferences": owner},
        "spec": {
            "selector": {"gateway.networking.k8s.io/gateway-name": name},
            "ports": service_ports,
        },
    });
    if ingress {
        service["spec"]["type"] = json!("LoadBalancer");
    }
    (pod, service)
}

/// The Pod object as the cluster would show it once running: node, IP, Ready.
pub fn running_pod(plan: &PodPlan, node: &str, ip: Ipv4Addr) -> Value {
    let mut pod = plan.object.clone();
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod["spec"]["nodeName"] = json!(node);
    pod["status"] = json!({
        "phase": "Running",
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "conditions": [{"type": "Ready", "status": "True"}],
    });
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_become_pods_and_services_get_cluster_ips() {
        let docs = parse(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: cart, namespace: shop}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: cart}}
    spec:
      serviceAccountName: cart
      containers: [{name: app, image: meshctl/echo, env: [{name: A, value: "1"}]}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {selector: {app: cart}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: solo}
spec: {nodeName: node-3, containers: [{name: c, image: x, command: [sleep, "1000"]}]}
"#,
        )
        .unwrap();
        let plan = plan(docs, Ipv4Addr::new(10, 96, 0, 10)).unwrap();
        let names: Vec<_> = plan.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["cart-1", "cart-2", "solo"]);
        assert_eq!(plan.pods[0].service_account, "cart");
        assert_eq!(plan.pods[0].object["metadata"]["labels"]["app"], "cart");
        let owner = &plan.pods[0].object["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ReplicaSet");
        assert_eq!(owner["name"], "cart-7c9d5f6b8");
        assert_eq!(plan.pods[0].containers[0].env, [("A".into(), "1".into())]);
        assert_eq!(plan.pods[2].namespace, "default");
        assert_eq!(plan.pods[2].containers[0].command, ["sleep", "1000"]);
        assert_eq!(plan.named_nodes, ["node-3"]);
        assert_eq!(plan.objects[0]["spec"]["clusterIP"], "10.96.0.10");
        let running = running_pod(&plan.pods[0], "node-1", Ipv4Addr::new(10, 244, 1, 10));
        assert_eq!(running["status"]["podIP"], "10.244.1.10");
        assert_eq!(running["spec"]["nodeName"], "node-1");
    }

    #[test]
    fn an_ingress_gateway_gets_istios_deployment_names_and_its_listener_ports() {
        let docs = parse(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {name: gw, namespace: infra}\n\
             spec:\n  gatewayClassName: istio\n  listeners:\n\
             \x20 - {name: http, port: 80, protocol: HTTP}\n\
             \x20 - {name: https, port: 443, protocol: HTTPS, hostname: '*.example.com'}\n\
             \x20 - {name: other, port: 443, protocol: HTTPS}\n",
        )
        .unwrap();
        let plan = plan(docs, Ipv4Addr::new(10, 96, 0, 10)).unwrap();
        let pod = &plan.pods[0];
        assert_eq!(pod.name, "gw-istio-1");
        assert_eq!(pod.service_account, "gw-istio");
        assert_eq!(
            pod.object["metadata"]["labels"]["istio.io/dataplane-mode"],
            "none"
        );
        let ports: Vec<u16> = pod.containers[0].ports.iter().map(|p| p.0).collect();
        assert_eq!(ports, [80, 443]);
        let service = plan
            .objects
            .iter()
            .find(|o| o["kind"] == "Service")
            .unwrap();
        assert_eq!(service["metadata"]["name"], "gw-istio");
        assert_eq!(service["spec"]["type"], "LoadBalancer");
        assert_eq!(service["spec"]["ports"].as_array().unwrap().len(), 3);
        assert_eq!(plan.ingress.len(), 1);
        assert_eq!(plan.ingress[0].pod, "gw-istio-1");
        assert_eq!(plan.ingress[0].listeners.len(), 3);
    }

    #[test]
    fn malformed_objects_are_refused_by_name_without_panicking() {
        let vip = Ipv4Addr::new(10, 96, 0, 10);
        for (yaml, want) in [
            ("kind: Pod\nmetadata: {name: p, namespace: n}\nspec: {}\n", "Pod n/p"),
            ("kind: Pod\nmetadata: {name: p, namespace: n}\nspec: [1]\n", "Pod n/p: spec"),
            ("kind: Service\nmetadata: {name: s, namespace: n}\nspec: 3\n", "Service n/s"),
            ("kind: Deployment\nmetadata: {name: d}\nspec: {replicas: 100000}\n", "100000 replicas"),
            ("kind: Deployment\nmetadata: {name: d}\nspec: {template: 1}\n", "spec.template"),
            ("kind: Deployment\nmetadata: {name: d}\nspec: {template: {metadata: {labels: 1}, spec: {}}}\n", "labels"),
            ("- a list\n", "not a mapping"),
        ] {
            let err = plan(parse(yaml).unwrap(), vip).unwrap_err();
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }
}

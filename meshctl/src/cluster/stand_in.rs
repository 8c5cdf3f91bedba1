//! `meshctl up --stand-in echo`: manifests written for a real cluster (Istio's Bookinfo,
//! httpbin, the `curl` client) name images that cannot run here. With a stand-in, a container
//! whose image has no built-in program and whose command does not exist on this machine runs
//! the echo server instead, listening on each of its declared `containerPort`s: HTTP (HTTP/1.1,
//! h2c, gRPC) where the port, or a Service port targeting it, is named or declared HTTP-like
//! (Istio's `<protocol>[-<suffix>]` names, `appProtocol`), raw TCP echo otherwise. It reports
//! the pod's name and `version` label, so a test can tell v1 from v2. A container with a
//! command that exists here (`/bin/sleep infinity`) runs that command as written.

use std::path::Path;

use serde_json::Value;

use super::manifests::{Container, PodPlan};

/// What a container stands in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StandIn {
    /// The built-in echo server (`meshctl echo`).
    Echo,
}

/// A port the stand-in listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub port: u16,
    pub http: bool,
}

/// Istio's protocol selection for a port name or `appProtocol`: HTTP-like ones are served
/// as HTTP by the echo server.
fn http_like(protocol: &str) -> bool {
    let p = protocol.to_ascii_lowercase();
    let prefix = p.split('-').next().unwrap_or_default();
    matches!(prefix, "http" | "http2" | "grpc" | "h2c")
        || matches!(p.as_str(), "kubernetes.io/h2c" | "grpc-web")
}

/// Whether `svc` (a Service object) selects a pod with `labels` in `namespace`.
fn selects(svc: &Value, namespace: &str, labels: &serde_json::Map<String, Value>) -> bool {
    let svc_ns = svc["metadata"]["namespace"].as_str().unwrap_or("default");
    let Some(selector) = svc["spec"]["selector"].as_object() else {
        return false;
    };
    svc_ns == namespace
        && !selector.is_empty()
        && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The ports the stand-in of `container` listens on, and how, given the cluster's Services.
pub fn ports(pod: &PodPlan, container: &Container, objects: &[Value]) -> Vec<Port> {
    let empty = serde_json::Map::new();
    let labels = pod.object["metadata"]["labels"]
        .as_object()
        .unwrap_or(&empty);
    let services: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Service" && selects(o, &pod.namespace, labels))
        .collect();
    container
        .ports
        .iter()
        .map(|(port, name)| {
            let by_service = services
                .iter()
                .flat_map(|s| s["spec"]["ports"].as_array().into_iter().flatten())
                .filter(|sp| {
                    match &sp["targetPort"] {
                        Value::Number(n) => n.as_u64() == Some(u64::from(*port)),
                        Value::String(t) => name.as_deref() == Some(t.as_str()),
                        // No targetPort: the same as port.
                        _ => sp["port"].as_u64() == Some(u64::from(*port)),
                    }
                })
                .any(|sp| {
                    ["appProtocol", "name"]
                        .iter()
                        .filter_map(|k| sp[*k].as_str())
                        .any(http_like)
                });
            Port {
                port: *port,
                http: by_service || name.as_deref().is_some_and(http_like),
            }
        })
        .collect()
}

/// Whether `program` can be run here: an existing path, or a name found on `PATH`.
pub fn runnable(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The echo server's command line standing in for `container` (without the program itself).
pub fn echo_args(pod: &PodPlan, container: &Container, objects: &[Value]) -> Vec<String> {
    let mut args = vec!["echo".to_owned()];
    for p in ports(pod, container, objects) {
        args.push(if p.http { "--http" } else { "--tcp" }.to_owned());
        args.push(format!("0.0.0.0:{}", p.port));
    }
    if let Some(version) = pod.object["metadata"]["labels"]["version"].as_str() {
        args.extend(["--app-version".to_owned(), version.to_owned()]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::manifests::{parse, plan};
    use std::net::Ipv4Addr;

    /// The shape of Istio's Bookinfo: unnamed container ports, Service ports named `http`.
    const BOOKINFO_LIKE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, labels: {app: reviews}}
spec:
  ports: [{port: 9080, name: http}]
  selector: {app: reviews}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v2}
spec:
  template:
    metadata: {labels: {app: reviews, version: v2}}
    spec:
      containers:
      - name: reviews
        image: docker.io/istio/examples-bookinfo-reviews-v2:1.20.3
        ports: [{containerPort: 9080}, {containerPort: 9443, name: metrics}, {containerPort: 7070, name: grpc-admin}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: data}
spec:
  ports: [{port: 5432, targetPort: pg, appProtocol: postgresql}, {port: 80, targetPort: web, appProtocol: kubernetes.io/h2c}]
  selector: {app: db}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: data, labels: {app: db}}
spec:
  containers:
  - {name: db, image: postgres:16, ports: [{containerPort: 5432, name: pg}, {containerPort: 8080, name: web}]}
"#;

    #[test]
    fn ports_are_http_when_the_port_or_a_service_port_says_so() {
        let plan = plan(parse(BOOKINFO_LIKE).unwrap(), Ipv4Addr::new(10, 96, 0, 10)).unwrap();
        let reviews = &plan.pods[0];
        assert_eq!(
            ports(reviews, &reviews.containers[0], &plan.objects),
            vec![
                Port {
                    port: 9080,
                    http: true
                },
                Port {
                    port: 9443,
                    http: false
                },
                Port {
                    port: 7070,
                    http: true
                },
            ]
        );
        assert_eq!(
            echo_args(reviews, &reviews.containers[0], &plan.objects),
            [
                "echo",
                "--http",
                "0.0.0.0:9080",
                "--tcp",
                "0.0.0.0:9443",
                "--http",
                "0.0.0.0:7070",
                "--app-version",
                "v2"
            ]
        );
        let db = &plan.pods[1];
        assert_eq!(
            ports(db, &db.containers[0], &plan.objects),
            vec![
                Port {
                    port: 5432,
                    http: false
                },
                Port {
                    port: 8080,
                    http: true
                }
            ]
        );
    }

    #[test]
    fn commands_run_when_they_exist_here() {
        assert!(runnable("sleep"));
        assert!(runnable("/bin/sh"));
        assert!(!runnable("/usr/local/bin/productpage-server"));
        assert!(!runnable("no-such-program-here"));
    }
}

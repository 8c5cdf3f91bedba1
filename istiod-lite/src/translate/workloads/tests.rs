//! Manifests in, Workload and Service resources out: enrolment rules, ports, owners, health,
//! selector policies.

use super::*;

fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> Vec<T> {
    yaml.split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml_ng::from_str(d).unwrap_or_else(|e| panic!("bad manifest: {e}\n{d}")))
        .collect()
}

const NAMESPACES: &str = r#"
metadata: {name: apps, labels: {istio.io/dataplane-mode: ambient}}
---
metadata: {name: legacy}
"#;

fn pod(ns: &str, name: &str, labels: &str, ip: &str, extra_spec: &str) -> String {
    format!(
        r#"metadata:
  name: {name}
  namespace: {ns}
  labels: {labels}
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d9f8, uid: x, controller: true}}]
spec:
  serviceAccountName: web-sa
  nodeName: node-1
  containers: [{{name: c, image: i, ports: [{{name: http, containerPort: 8080}}]}}]
  {extra_spec}
status:
  phase: Running
  podIP: {ip}
  podIPs: [{{ip: {ip}}}]
  conditions: [{{type: Ready, status: "True"}}]
"#
    )
}

fn translate(
    pods: &[String],
    services: &str,
    policies: &[SelectorPolicy],
) -> (Vec<wire::Workload>, Vec<wire::Service>) {
    let namespaces: Vec<Namespace> = parse(NAMESPACES);
    let pods: Vec<Pod> = pods
        .iter()
        .map(|p| serde_yaml_ng::from_str(p).unwrap())
        .collect();
    let services: Vec<Service> = parse(services);
    let info = ClusterInfo::default();
    (
        workloads(&pods, &namespaces, &services, &[], policies, &info),
        self::services(&services, &info),
    )
}

fn protocol(w: &wire::Workload) -> wire::TunnelProtocol {
    wire::TunnelProtocol::try_from(w.tunnel_protocol).unwrap()
}

#[test]
fn enrolment_by_namespace_label_with_pod_opt_out() {
    let (w, _) = translate(
        &[
            pod(
                "apps",
                "in-mesh",
                "{app: web, pod-template-hash: 7d9f8}",
                "10.0.0.1",
                "",
            ),
            pod(
                "apps",
                "opted-out",
                "{app: web, istio.io/dataplane-mode: none}",
                "10.0.0.2",
                "",
            ),
            pod("legacy", "outside", "{app: old}", "10.0.0.3", ""),
            pod(
                "legacy",
                "opted-in",
                "{istio.io/dataplane-mode: ambient}",
                "10.0.0.4",
                "",
            ),
            pod("apps", "host-net", "{}", "10.0.0.5", "hostNetwork: true"),
        ],
        "",
        &[],
    );
    let by_name: BTreeMap<&str, &wire::Workload> = w.iter().map(|w| (w.name.as_str(), w)).collect();
    assert_eq!(protocol(by_name["in-mesh"]), wire::TunnelProtocol::Hbone);
    assert_eq!(protocol(by_name["opted-out"]), wire::TunnelProtocol::None);
    assert_eq!(
        protocol(by_name["outside"]),
        wire::TunnelProtocol::None,
        "outside pods are plain-TCP workloads"
    );
    assert_eq!(protocol(by_name["opted-in"]), wire::TunnelProtocol::Hbone);
    assert_eq!(protocol(by_name["host-net"]), wire::TunnelProtocol::None);
    let web = by_name["in-mesh"];
    assert_eq!(web.uid, "Kubernetes//Pod/apps/in-mesh");
    assert_eq!(
        web.addresses,
        vec![bytes::Bytes::from_static(&[10, 0, 0, 1])]
    );
    assert_eq!(
        (web.service_account.as_str(), web.node.as_str()),
        ("web-sa", "node-1")
    );
    assert_eq!(
        (web.workload_name.as_str(), web.canonical_name.as_str()),
        ("web", "web")
    );
    assert_eq!(web.canonical_revision, "latest");
    assert_eq!(web.workload_type, wire::WorkloadType::Deployment as i32);
    assert_eq!(web.status, wire::WorkloadStatus::Healthy as i32);
}

#[test]
fn finished_pods_are_left_out_and_pending_or_unready_are_unhealthy() {
    let pending = pod("apps", "pending", "{}", "10.0.0.9", "")
        .replace("  podIP: 10.0.0.9\n  podIPs: [{ip: 10.0.0.9}]\n", "");
    let done =
        pod("apps", "done", "{}", "10.0.0.8", "").replace("phase: Running", "phase: Succeeded");
    let unready = pod("apps", "unready", "{}", "10.0.0.7", "")
        .replace("status: \"True\"", "status: \"False\"");
    let (w, _) = translate(&[pending, done, unready], "", &[]);
    let names: Vec<&str> = w.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["pending", "unready"]);
    // Scheduled but not started: published (the node agent needs it), without an address.
    assert!(w[0].addresses.is_empty());
    assert!(w
        .iter()
        .all(|w| w.status == wire::WorkloadStatus::Unhealthy as i32));
}

#[test]
fn services_with_numeric_and_named_target_ports() {
    let (w, s) = translate(
        &[
            pod("apps", "web-1", "{app: web}", "10.0.0.1", ""),
            pod("apps", "db", "{app: db}", "10.0.0.2", ""),
        ],
        r#"
metadata: {name: web, namespace: apps}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}, {name: admin, port: 9000, targetPort: 9001}, {name: plain, port: 7000}, {name: dns, port: 53, protocol: UDP}]
---
metadata: {name: headless, namespace: apps}
spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}
---
metadata: {name: elsewhere, namespace: apps}
spec: {type: ExternalName, externalName: example.com}
"#,
        &[],
    );
    // A headless Service is sent without addresses (ztunnel's DNS proxy answers its name with
    // its endpoints); an ExternalName one is the cluster DNS's business.
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[1].hostname, "headless.apps.svc.cluster.local");
    assert!(s[1].addresses.is_empty());
    assert!(w[0]
        .services
        .contains_key("apps/headless.apps.svc.cluster.local"));
    let svc = &s[0];
    assert_eq!(svc.hostname, "web.apps.svc.cluster.local");
    assert_eq!(
        svc.addresses,
        vec![wire::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 10]
        }]
    );
    let ports: Vec<(u32, u32)> = svc
        .ports
        .iter()
        .map(|p| (p.service_port, p.target_port))
        .collect();
    assert_eq!(
        ports,
        vec![(80, 0), (9000, 9001), (7000, 7000)],
        "UDP ports are not for ztunnel"
    );
    let web = w.iter().find(|w| w.name == "web-1").unwrap();
    let mapped: Vec<(u32, u32)> = web.services["apps/web.apps.svc.cluster.local"]
        .ports
        .iter()
        .map(|p| (p.service_port, p.target_port))
        .collect();
    assert_eq!(
        mapped,
        vec![(80, 8080), (9000, 9001), (7000, 7000), (53, 53)],
        "named port http -> containerPort 8080"
    );
    assert!(w
        .iter()
        .find(|w| w.name == "db")
        .unwrap()
        .services
        .is_empty());
}

#[test]
fn selector_policies_bind_to_matching_pods() {
    let policies = [
        SelectorPolicy {
            key: "apps/web-only".into(),
            namespace: "apps".into(),
            match_labels: [("app".into(), "web".into())].into(),
        },
        SelectorPolicy {
            key: "other/web-elsewhere".into(),
            namespace: "other".into(),
            match_labels: [("app".into(), "web".into())].into(),
        },
        SelectorPolicy {
            key: "istio-system/mesh-web".into(),
            namespace: "istio-system".into(),
            match_labels: [("app".into(), "web".into())].into(),
        },
    ];
    let (w, _) = translate(
        &[
            pod("apps", "web-1", "{app: web}", "10.0.0.1", ""),
            pod("apps", "db", "{app: db}", "10.0.0.2", ""),
        ],
        "",
        &policies,
    );
    let web = w.iter().find(|w| w.name == "web-1").unwrap();
    assert_eq!(
        web.authorization_policies,
        vec!["apps/web-only", "istio-system/mesh-web"]
    );
    assert!(w
        .iter()
        .find(|w| w.name == "db")
        .unwrap()
        .authorization_policies
        .is_empty());
}

#[test]
fn services_without_selector_take_endpoints_from_their_endpoint_slices() {
    let namespaces: Vec<Namespace> = parse(NAMESPACES);
    let pods: Vec<Pod> = [
        pod("apps", "db-1", "{app: db}", "10.0.0.7", ""),
        pod("apps", "db-2", "{app: db}", "10.0.0.8", ""),
    ]
    .iter()
    .map(|p| serde_yaml_ng::from_str(p).unwrap())
    .collect();
    let services: Vec<Service> = parse(
        "metadata: {name: db, namespace: apps}\n\
         spec: {clusterIP: 10.96.0.9, ports: [{name: sql, port: 5432}, {name: admin, port: 9000}]}",
    );
    let slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice> = parse(
        "metadata: {name: db-abc, namespace: apps, labels: {kubernetes.io/service-name: db}}\n\
         addressType: IPv4\n\
         ports: [{name: sql, port: 15432, protocol: TCP}]\n\
         endpoints: [{addresses: [10.0.0.7], targetRef: {kind: Pod, name: db-1, namespace: apps}}]",
    );
    let info = ClusterInfo::default();
    let w = workloads(&pods, &namespaces, &services, &slices, &[], &info);
    let db1 = w.iter().find(|w| w.name == "db-1").unwrap();
    let ports = &db1.services["apps/db.apps.svc.cluster.local"].ports;
    // The slice maps sql to 15432; admin has no port in the slice, so it is not reachable.
    assert_eq!(
        ports
            .iter()
            .map(|p| (p.service_port, p.target_port))
            .collect::<Vec<_>>(),
        [(5432, 15432)]
    );
    let db2 = w.iter().find(|w| w.name == "db-2").unwrap();
    assert!(db2.services.is_empty(), "not listed in any slice");
}

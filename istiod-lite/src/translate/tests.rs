//! The whole translation from manifests: the example mesh in `examples/mesh`, and how problems
//! are reported.

use std::path::Path;

use super::*;
use crate::manifests;

fn example() -> Cluster {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh");
    manifests::load_dir(&dir).unwrap_or_else(|e| panic!("examples/mesh: {e:?}"))
}

#[test]
fn example_mesh_translates() {
    let t = translate(&example(), &ClusterInfo::default());
    assert!(
        t.errors.is_empty() && t.notes.is_empty(),
        "{:?} {:?}",
        t.errors,
        t.notes
    );
    let uids: Vec<&str> = t.workloads.iter().map(|w| w.uid.as_str()).collect();
    assert_eq!(
        uids,
        [
            "Kubernetes//Pod/legacy/batch",
            "Kubernetes//Pod/shop/cart-1",
            "Kubernetes//Pod/shop/cart-2",
            "Kubernetes//Pod/shop/frontend"
        ]
    );
    let cart = &t.workloads[1];
    assert_eq!(cart.tunnel_protocol, wire::TunnelProtocol::Hbone as i32);
    assert_eq!(
        cart.authorization_policies,
        [
            "shop/cart-from-frontend",
            "istio-system/istio_converted_static_strict"
        ]
    );
    assert_eq!(
        cart.services["shop/cart.shop.svc.cluster.local"].ports[0].target_port,
        8080
    );
    let batch = &t.workloads[0];
    assert_eq!(batch.tunnel_protocol, wire::TunnelProtocol::None as i32);
    assert!(
        batch.authorization_policies.is_empty(),
        "legacy is PERMISSIVE"
    );
    let keys: Vec<String> = t.authorizations.iter().map(Authorization::key).collect();
    assert_eq!(
        keys,
        [
            "istio-system/istio_converted_static_strict",
            "shop/cart-from-frontend"
        ]
    );
    assert_eq!(t.services.len(), 1);
}

#[test]
fn scheduled_pods_are_published_before_they_have_an_address() {
    let mut cluster = example();
    let mut errors = Vec::new();
    manifests::load_text(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: starting, namespace: shop, labels: {app: cart}}
spec: {nodeName: node-1, serviceAccountName: cart, containers: [{name: c, image: x}]}
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: unscheduled, namespace: shop}
spec: {containers: [{name: c, image: x}]}
status: {phase: Pending}
"#,
        "pending.yaml",
        &mut cluster,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let t = translate(&cluster, &ClusterInfo::default());
    let starting = t
        .workloads
        .iter()
        .find(|w| w.name == "starting")
        .expect("the scheduled pod is published");
    assert!(starting.addresses.is_empty());
    assert_eq!(starting.node, "node-1");
    assert_eq!(starting.tunnel_protocol, wire::TunnelProtocol::Hbone as i32);
    assert_eq!(starting.status, wire::WorkloadStatus::Unhealthy as i32);
    assert!(!t.workloads.iter().any(|w| w.name == "unscheduled"));
}

#[test]
fn partly_honoured_and_invalid_objects_are_reported_by_name() {
    let mut cluster = example();
    let mut errors = Vec::new();
    manifests::load_text(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-ip, namespace: shop}
spec:
  rules: [{from: [{source: {ipBlocks: [not-an-ip]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ports-without-selector, namespace: legacy}
spec: {portLevelMtls: {8080: {mode: STRICT}}}
"#,
        "extra.yaml",
        &mut cluster,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let t = translate(&cluster, &ClusterInfo::default());
    let notes: Vec<String> = t.notes.iter().map(ToString::to_string).collect();
    assert!(notes[0].starts_with("AuthorizationPolicy shop/no-delete: rules[0]: rules[0].to[0].operation.methods cannot be checked by ztunnel"), "{notes:?}");
    assert!(notes[0].contains("denies every connection to the workload"));
    assert_eq!(notes[1], "PeerAuthentication legacy/ports-without-selector: portLevelMtls: only honoured with a selector (as in Istio); ignored");
    assert_eq!(t.errors.len(), 1);
    assert_eq!(
        t.errors[0].to_string(),
        "AuthorizationPolicy shop/bad-ip: rules[0].from[0].source.ipBlocks: \"not-an-ip\" is not an IP address or CIDR"
    );
    assert!(!t.authorizations.iter().any(|a| a.name == "bad-ip"));
}

#[test]
fn malformed_manifests_name_file_document_object_and_field() {
    let mut cluster = Cluster::default();
    let mut errors = Vec::new();
    manifests::load_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: typo, namespace: shop}\nspec: {rules: [{form: []}]}\n---\nkind: Pod\nmetadata: {name: x}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ignored}\n",
        "bad.yaml",
        &mut cluster,
        &mut errors,
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("bad.yaml document 2 (AuthorizationPolicy shop/typo): "),
        "{errors:?}"
    );
    assert!(errors[0].contains("unknown field `form`"), "{errors:?}");
    assert_eq!(
        errors[1],
        "bad.yaml document 3 (Pod x): not a Kubernetes object (apiVersion and kind are required)"
    );
    assert_eq!(cluster.namespaces.len(), 1);
}

//! Table tests: Cilium policies in (the issue's policy as written, then field by field), the
//! authorizations and notes out, and end to end through [`translate`] the verdicts ztunnel's
//! engine gives with them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use meshcore::identity::SpiffeId;
use meshcore::policy::{CompiledPolicies, Connection, StringMatch};

use super::*;
use crate::translate::{translate, Translation};

/// Namespace shop in the mesh: `frontend` (sa frontend), `backend` (sa backend, container port
/// `http` 8080), `admin` (sa admin, `app: frontend-admin`); namespace ops: `probe` (sa probe).
const SHOP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: shop, labels: {app: frontend}}
spec: {serviceAccountName: frontend, nodeName: node-1, containers: [{name: app, image: x}]}
status: {phase: Running, podIP: 10.244.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: shop, labels: {app: backend}}
spec:
  serviceAccountName: backend
  nodeName: node-1
  containers: [{name: app, image: x, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 10.244.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: admin, namespace: shop, labels: {app: frontend-admin}}
spec: {serviceAccountName: admin, nodeName: node-1, containers: [{name: app, image: x}]}
status: {phase: Running, podIP: 10.244.0.12}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: probe, namespace: ops, labels: {app: frontend}}
spec: {serviceAccountName: probe, nodeName: node-1, containers: [{name: app, image: x}]}
status: {phase: Running, podIP: 10.244.1.10}
"#;

/// The issue's policy, as written.
const ISSUE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: backend-policy
  namespace: shop
spec:
  endpointSelector:
    matchLabels:
      app: backend
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: frontend
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
"#;

fn load(yaml: &str) -> Cluster {
    let mut c = Cluster::default();
    let mut errors = Vec::new();
    crate::manifests::load_text(SHOP, "shop.yaml", &mut c, &mut errors);
    crate::manifests::load_text(yaml, "cilium.yaml", &mut c, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    c
}

/// A policy with `spec` as given (indented YAML under `spec:`).
fn cnp(spec: &str) -> String {
    format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n{spec}")
}

fn run(yaml: &str) -> (Translation, Vec<String>) {
    let t = translate(&load(yaml), &ClusterInfo::default());
    let notes = t.notes.iter().map(ToString::to_string).collect();
    (t, notes)
}

fn allowed(t: &Translation, pod: &str, principal: Option<&str>, src: &str, port: u16) -> bool {
    let w = t.workloads.iter().find(|w| w.name == pod).unwrap();
    let applicable: Vec<Arc<Authorization>> = t
        .authorizations
        .iter()
        .filter(|a| match a.scope {
            Scope::Global => true,
            Scope::Namespace => a.namespace == w.namespace,
            Scope::WorkloadSelector => w.authorization_policies.contains(&a.key()),
        })
        .cloned()
        .map(Arc::new)
        .collect();
    let id = principal.map(|p| SpiffeId::from_principal(p).unwrap());
    let conn = Connection {
        source_ip: src.parse().unwrap(),
        destination: SocketAddr::new(IpAddr::from([10, 244, 0, 11]), port),
        identity: id.as_ref(),
        principal,
    };
    CompiledPolicies::new(applicable).decide(&conn).allowed()
}

const FRONTEND: Option<&str> = Some("cluster.local/ns/shop/sa/frontend");
const ADMIN: Option<&str> = Some("cluster.local/ns/shop/sa/admin");
const PROBE: Option<&str> = Some("cluster.local/ns/ops/sa/probe");

#[test]
fn the_issues_policy_as_written() {
    let (t, notes) = run(ISSUE);
    assert!(notes.is_empty(), "{notes:?}");
    let a = t
        .authorizations
        .iter()
        .find(|a| a.name == "cilium-backend-policy")
        .unwrap();
    assert_eq!(a.namespace, "shop");
    assert_eq!(a.scope, Scope::WorkloadSelector);
    assert_eq!(a.action, Action::Allow);
    assert_eq!(
        a.rules,
        vec![vec![
            vec![Match {
                principals: vec![StringMatch::Exact(FRONTEND.unwrap().into())],
                ..Match::default()
            }],
            vec![Match {
                destination_ports: vec![8080],
                ..Match::default()
            }],
        ]]
    );
    let backend = t.workloads.iter().find(|w| w.name == "backend").unwrap();
    assert_eq!(
        backend.authorization_policies,
        ["shop/cilium-backend-policy"]
    );
    assert!(allowed(&t, "backend", FRONTEND, "10.244.0.10", 8080));
    assert!(!allowed(&t, "backend", FRONTEND, "10.244.0.10", 9090));
    assert!(!allowed(&t, "backend", ADMIN, "10.244.0.12", 8080));
    // Same labels in another namespace: not picked by a namespaced policy.
    assert!(!allowed(&t, "backend", PROBE, "10.244.1.10", 8080));
    assert!(!allowed(&t, "backend", None, "10.9.9.9", 8080));
    // Pods the policy does not select keep the default.
    assert!(t
        .workloads
        .iter()
        .find(|w| w.name == "frontend")
        .unwrap()
        .authorization_policies
        .is_empty());
}

#[test]
fn the_articles_malformed_to_ports_is_refused_with_the_fix() {
    let bad = ISSUE.replace(
        "    - ports:\n      - port: \"8080\"\n        protocol: TCP\n",
        "    - port: \"8080\"\n      protocol: TCP\n",
    );
    let c = load(&bad);
    let p = &c.cilium_network_policies[0];
    let err = check(&p.spec, &p.specs).unwrap_err();
    assert_eq!(
        format!("{}: {err}", object("CiliumNetworkPolicy", &p.metadata)),
        "CiliumNetworkPolicy shop/backend-policy: spec.ingress[0].toPorts[0]: unknown field \"port\": \
         Cilium's schema nests ports under toPorts[].ports: write toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]"
    );
    // Through the pipeline: refused on its own, the last good version stays.
    let mut pipe = crate::pipeline::Pipeline::new(ClusterInfo::default());
    pipe.replace_all(load(ISSUE));
    pipe.build();
    pipe.replace_all(load(&bad));
    let rejected: Vec<String> = pipe.rejected().iter().map(ToString::to_string).collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].contains("toPorts[].ports"), "{rejected:?}");
    let view = pipe.cluster();
    assert_eq!(view.cilium_network_policies.len(), 1);
    assert!(view.cilium_network_policies[0]
        .spec
        .as_ref()
        .unwrap()
        .ingress
        .as_ref()
        .unwrap()[0]
        .to_ports
        .as_ref()
        .unwrap()[0]
        .port
        .is_none());
}

#[test]
fn default_deny_empty_rule_and_empty_ingress() {
    let sel = "  endpointSelector: {matchLabels: {app: backend}}\n";
    // `ingress: [{}]`: Cilium's default-deny form, nobody (everyone is `fromEntities: [all]`).
    let (t, notes) = run(&cnp(&format!("{sel}  ingress: [{{}}]\n")));
    assert!(!allowed(&t, "backend", None, "10.9.9.9", 1234));
    assert!(!allowed(&t, "backend", FRONTEND, "10.244.0.10", 8080));
    assert!(notes.iter().any(|n| n.contains("empty rule")), "{notes:?}");
    let (t, _) = run(&cnp(&format!(
        "{sel}  ingress: [{{fromEntities: [all]}}]\n"
    )));
    assert!(allowed(&t, "backend", None, "10.9.9.9", 1234));
    // `ingress: []`: selected, nothing allowed.
    let (t, _) = run(&cnp(&format!("{sel}  ingress: []\n")));
    assert!(!allowed(&t, "backend", FRONTEND, "10.244.0.10", 8080));
    // Egress only: ingress untouched; the egress part is an egress policy.
    let (t, notes) = run(&cnp(&format!("{sel}  egress: [{{toEntities: [world]}}]\n")));
    assert!(allowed(&t, "backend", None, "10.9.9.9", 8080));
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(t.egress_policies.len(), 1);
}

#[test]
fn deny_wins_over_allow_and_ingress_deny_alone_is_default_deny() {
    let spec = "  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{fromEntities: [all]}]
  ingressDeny: [{fromEndpoints: [{matchLabels: {app: frontend-admin}}]}]
";
    let (t, notes) = run(&cnp(spec));
    assert!(notes.is_empty(), "{notes:?}");
    assert!(t
        .authorizations
        .iter()
        .any(|a| a.name == "cilium-deny-p" && a.action == Action::Deny));
    assert!(allowed(&t, "backend", FRONTEND, "10.244.0.10", 8080));
    assert!(!allowed(&t, "backend", ADMIN, "10.244.0.12", 8080));
    let spec = "  endpointSelector: {matchLabels: {app: backend}}
  ingressDeny: [{fromEndpoints: [{matchLabels: {app: frontend-admin}}]}]
";
    let (t, _) = run(&cnp(spec));
    assert!(!allowed(&t, "backend", FRONTEND, "10.244.0.10", 8080));
}

#[test]
fn cidr_and_except() {
    let spec = "  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromCIDR: [192.168.0.0/16]
  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]
";
    let (t, notes) = run(&cnp(spec));
    assert!(notes.is_empty(), "{notes:?}");
    assert!(allowed(&t, "backend", None, "192.168.3.4", 80));
    assert!(allowed(&t, "backend", None, "10.1.2.3", 80));
    assert!(!allowed(&t, "backend", None, "10.100.0.1", 80));
    assert!(!allowed(&t, "backend", None, "172.16.0.1", 80));
}

#[test]
fn entities() {
    let run_entity = |e: &str| {
        run(&cnp(&format!(
        "  endpointSelector: {{matchLabels: {{app: backend}}}}\n  ingress: [{{fromEntities: [{e}]}}]\n"
    )))
    };
    let (t, _) = run_entity("all");
    assert!(allowed(&t, "backend", None, "1.2.3.4", 80));
    let (t, _) = run_entity("cluster");
    assert!(allowed(&t, "backend", PROBE, "10.244.1.10", 80));
    assert!(!allowed(&t, "backend", None, "1.2.3.4", 80));
    let (t, _) = run_entity("world");
    assert!(allowed(&t, "backend", None, "1.2.3.4", 80));
    assert!(!allowed(&t, "backend", None, "10.244.0.10", 80)); // a pod's address
    assert!(!allowed(&t, "backend", PROBE, "1.2.3.4", 80)); // a mesh identity
    assert!(!allowed(&t, "backend", None, HOST_ADDRESS, 80));
    let (t, _) = run_entity("host");
    assert!(allowed(&t, "backend", None, HOST_ADDRESS, 80));
    assert!(!allowed(&t, "backend", None, "1.2.3.4", 80));
    let (t, notes) = run_entity("remote-node");
    assert!(!allowed(&t, "backend", None, "1.2.3.4", 80));
    assert!(
        notes
            .iter()
            .any(|n| n.contains("entity \"remote-node\" is not supported")),
        "{notes:?}"
    );
}

#[test]
fn selectors_namespaces_service_accounts_and_prefixes() {
    let from = |f: &str| {
        run(&cnp(&format!(
        "  endpointSelector: {{matchLabels: {{k8s:app: backend}}}}\n  ingress: [{{fromEndpoints: [{f}]}}]\n"
    )))
    };
    // Another namespace by Cilium's namespace label.
    let (t, _) = from("{matchLabels: {k8s:io.kubernetes.pod.namespace: ops, app: frontend}}");
    assert!(allowed(&t, "backend", PROBE, "10.244.1.10", 80));
    assert!(!allowed(&t, "backend", FRONTEND, "10.244.0.10", 80));
    // `{}`: the policy's namespace.
    let (t, _) = from("{}");
    assert!(allowed(&t, "backend", ADMIN, "10.244.0.12", 80));
    assert!(!allowed(&t, "backend", PROBE, "10.244.1.10", 80));
    // By service account; matchExpressions.
    let (t, _) = from("{matchLabels: {io.cilium.k8s.policy.serviceaccount: admin}}");
    assert!(allowed(&t, "backend", ADMIN, "10.244.0.12", 80));
    assert!(!allowed(&t, "backend", FRONTEND, "10.244.0.10", 80));
    let (t, _) = from("{matchExpressions: [{key: app, operator: In, values: [frontend-admin]}]}");
    assert!(allowed(&t, "backend", ADMIN, "10.244.0.12", 80));
    assert!(!allowed(&t, "backend", FRONTEND, "10.244.0.10", 80));
    // Reserved labels: reported, select nobody.
    let (t, notes) = from("{matchLabels: {reserved:host: ''}}");
    assert!(!allowed(&t, "backend", FRONTEND, "10.244.0.10", 80));
    assert!(
        notes
            .iter()
            .any(|n| n.contains("source \"reserved\" is not supported")),
        "{notes:?}"
    );
}

#[test]
fn ports_ranges_named_and_protocols() {
    let ports = |p: &str| {
        run(&cnp(&format!(
        "  endpointSelector: {{matchLabels: {{app: backend}}}}\n  ingress: [{{toPorts: [{{ports: [{p}]}}]}}]\n"
    )))
    };
    let (t, _) = ports("{port: '8000', endPort: 8010, protocol: TCP}");
    assert!(allowed(&t, "backend", None, "1.2.3.4", 8005));
    assert!(!allowed(&t, "backend", None, "1.2.3.4", 8011));
    let (t, notes) = ports("{port: http}");
    assert!(notes.is_empty(), "{notes:?}");
    assert!(allowed(&t, "backend", None, "1.2.3.4", 8080));
    assert!(!allowed(&t, "backend", None, "1.2.3.4", 8081));
    let (t, notes) = ports("{port: '53', protocol: UDP}");
    assert!(!allowed(&t, "backend", None, "1.2.3.4", 53));
    assert!(
        notes
            .iter()
            .any(|n| n.contains("UDP is not carried by ztunnel")),
        "{notes:?}"
    );
    let (t, _) = ports("{port: '80', protocol: ANY}");
    assert!(allowed(&t, "backend", None, "1.2.3.4", 80));
}

#[test]
fn l7_rules_drop_an_allow_rule_and_unsupported_fields_are_named() {
    let spec = "  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: '8080'}], rules: {http: [{method: GET}]}}]
  - fromRequires: [{matchLabels: {env: prod}}]
  - icmps: [{fields: [{type: 8}]}]
  egressDeny: [{toEntities: [world]}]
";
    let (t, notes) = run(&cnp(spec));
    assert!(!allowed(&t, "backend", FRONTEND, "10.244.0.10", 8080));
    let all = notes.join("\n");
    for want in [
        "spec.ingress[0]: spec.ingress[0].toPorts[0].rules cannot be enforced by ztunnel; rule dropped",
        "spec.ingress[1]: spec.ingress[1].fromRequires cannot be enforced",
        "spec.ingress[2].icmps: ICMP is not carried by ztunnel",
    ] {
        assert!(all.contains(want), "missing {want:?} in\n{all}");
    }
    assert!(!all.contains("issue 19"), "{all}");
}

#[test]
fn clusterwide_policies_apply_in_every_namespace() {
    let yaml = "apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: frontends-only}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  ingress: [{fromEndpoints: [{matchLabels: {app: backend}}]}]
";
    let (t, notes) = run(yaml);
    assert!(notes.is_empty(), "{notes:?}");
    let keys: Vec<String> = t.authorizations.iter().map(Authorization::key).collect();
    assert_eq!(
        keys,
        [
            "ops/cilium-ccnp-frontends-only",
            "shop/cilium-ccnp-frontends-only"
        ]
    );
    let probe = t.workloads.iter().find(|w| w.name == "probe").unwrap();
    assert_eq!(
        probe.authorization_policies,
        ["ops/cilium-ccnp-frontends-only"]
    );
}

#[test]
fn the_pipeline_follows_pods_of_other_namespaces() {
    // A namespaced policy admitting pods of another namespace: that namespace's pods change.
    let policy = cnp("  endpointSelector: {matchLabels: {app: backend}}
  ingress: [{fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: ops, app: frontend}}]}]
  egress: [{toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: ops}}]}]
");
    let mut full = load(&policy);
    let mut pipe = crate::pipeline::Pipeline::new(ClusterInfo::default());
    pipe.replace_all(full.clone());
    pipe.build();
    // The ops pod changes service account: shop's authorization must follow.
    let probe = full
        .pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some("probe"))
        .unwrap();
    probe.spec.as_mut().unwrap().service_account_name = Some("probe-2".into());
    // ... and address: shop's egress policy must follow too.
    probe.status.as_mut().unwrap().pod_ip = Some("10.244.1.11".into());
    pipe.replace_all(full.clone());
    let set = pipe.build().expect("a push");
    let whole = translate(&full, &ClusterInfo::default());
    let a = whole
        .authorizations
        .iter()
        .find(|a| a.name == "cilium-p")
        .unwrap();
    assert_eq!(
        a.rules[0][0][0].principals,
        [StringMatch::Exact("cluster.local/ns/ops/sa/probe-2".into())]
    );
    assert_eq!(
        whole.egress_policies[0].rules[0].to,
        [meshcore::policy::egress::Peer::Workloads(vec![
            "10.244.1.11".parse().unwrap()
        ])]
    );
    // The incremental result equals a whole translation.
    let whole = crate::xds::ResourceSet::from_translation(&whole, 0);
    assert_eq!(whole.count(meshcore::api::type_url::EGRESS_POLICY), 1);
    let versions = |s: &crate::xds::ResourceSet| -> Vec<(String, String)> {
        s.by_type
            .values()
            .flat_map(|m| m.values().map(|r| (r.name.clone(), r.version.clone())))
            .collect()
    };
    assert_eq!(versions(&set), versions(&whole));
}

#[test]
fn allow_rules_without_default_deny_add_to_another_policys_default_deny() {
    // Alone, `enableDefaultDeny.ingress: false` leaves the pod open: its allow rules have
    // nothing to add to.
    let extra = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
                 metadata: {name: admin-extra, namespace: shop}\n\
                 spec:\n  endpointSelector: {matchLabels: {app: backend}}\n  \
                 enableDefaultDeny: {ingress: false}\n  \
                 ingress: [{fromEndpoints: [{matchLabels: {app: frontend-admin}}]}]\n";
    let (t, notes) = run(extra);
    assert!(allowed(&t, "backend", PROBE, "10.244.1.10", 9090));
    assert!(allowed(&t, "backend", ADMIN, "10.244.0.12", 9090));
    assert!(
        notes.iter().any(|n| n.contains("0 of 1 selected pods")),
        "{notes:?}"
    );
    // With the issue's policy putting the backend in default deny, they add the admin.
    let (t, notes) = run(&format!("{ISSUE}---\n{extra}"));
    assert!(allowed(&t, "backend", FRONTEND, "10.244.0.10", 8080));
    assert!(allowed(&t, "backend", ADMIN, "10.244.0.12", 9090));
    assert!(!allowed(&t, "backend", PROBE, "10.244.1.10", 8080));
    assert!(
        notes.iter().any(|n| n.contains("1 of 1 selected pods")),
        "{notes:?}"
    );
    // Its ingressDeny applies either way.
    let deny_only = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
                     metadata: {name: no-probe, namespace: shop}\n\
                     spec:\n  endpointSelector: {matchLabels: {app: backend}}\n  \
                     enableDefaultDeny: {ingress: false}\n  \
                     ingressDeny: [{fromEndpoints: [{matchLabels: {app: frontend, k8s:io.kubernetes.pod.namespace: ops}}]}]\n";
    let (t, _) = run(deny_only);
    assert!(!allowed(&t, "backend", PROBE, "10.244.1.10", 8080));
    assert!(allowed(&t, "backend", ADMIN, "10.244.0.12", 8080));
}

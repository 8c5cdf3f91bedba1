//! Table tests: Linkerd's policy objects in (the shapes of Linkerd's own documentation), the
//! Istio AuthorizationPolicies they stand for out, and end to end through [`translate`] the
//! ztunnel Authorizations and the verdicts ztunnel's engine gives with them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use meshcore::identity::SpiffeId;
use meshcore::policy::{Authorization, CompiledPolicies, Connection, Scope};

use super::clients::{identity, Identity};
use super::*;
use crate::translate::{translate, Translation};

/// Namespace emojivoto in the mesh with Linkerd's demo pods: `voting` (`app: voting-svc`),
/// `emoji` (`app: emoji-svc`) each with container ports `grpc` 8080 and `prom` 8801, and `web`
/// (`app: web-svc`, port `http` 8080).
const EMOJIVOTO: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: emojivoto, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: voting, namespace: emojivoto, labels: {app: voting-svc}}
spec:
  serviceAccountName: voting
  nodeName: node-1
  containers: [{name: voting-svc, image: x, ports: [{name: grpc, containerPort: 8080}, {name: prom, containerPort: 8801}]}]
status: {phase: Running, podIP: 10.244.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: emoji, namespace: emojivoto, labels: {app: emoji-svc}}
spec:
  serviceAccountName: emoji
  nodeName: node-1
  containers: [{name: emoji-svc, image: x, ports: [{name: grpc, containerPort: 8080}, {name: prom, containerPort: 8801}]}]
status: {phase: Running, podIP: 10.244.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: emojivoto, labels: {app: web-svc}}
spec:
  serviceAccountName: web
  nodeName: node-1
  containers: [{name: web-svc, image: x, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 10.244.0.12}
"#;

/// Linkerd's "restricting access" task: the voting Server, web's identity, the policy.
const VOTING: &str = r#"
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {namespace: emojivoto, name: voting-grpc, labels: {app: voting-svc}}
spec:
  podSelector: {matchLabels: {app: voting-svc}}
  port: grpc
  proxyProtocol: gRPC
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: voting-authn, namespace: emojivoto}
spec:
  identities: ["web.emojivoto.serviceaccount.identity.linkerd.cluster.local"]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: voting-policy, namespace: emojivoto}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: voting-grpc}
  requiredAuthenticationRefs:
  - {name: voting-authn, kind: MeshTLSAuthentication, group: policy.linkerd.io}
"#;

const WEB: &str = "cluster.local/ns/emojivoto/sa/web";
const EMOJI: &str = "cluster.local/ns/emojivoto/sa/emoji";

fn load(yaml: &str) -> Cluster {
    let mut c = Cluster::default();
    let mut errors = Vec::new();
    crate::manifests::load_text(EMOJIVOTO, "emojivoto.yaml", &mut c, &mut errors);
    crate::manifests::load_text(yaml, "linkerd.yaml", &mut c, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    c
}

/// The Istio policies and the notes (`object: message`).
fn istio(yaml: &str) -> (Vec<AuthorizationPolicy>, Vec<String>) {
    let t = policies(&load(yaml), &ClusterInfo::default());
    (
        t.policies,
        t.notes.iter().map(ToString::to_string).collect(),
    )
}

fn spec(yaml: &str) -> AuthorizationPolicySpec {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("bad expectation: {e}\n{yaml}"))
}

/// Whether ztunnel, with the translation's policies for `pod`, lets a connection from
/// `principal` (none: plaintext) at `src` reach `port`.
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
        destination: SocketAddr::new(IpAddr::from([10, 244, 0, 99]), port),
        identity: id.as_ref(),
        principal,
    };
    CompiledPolicies::new(applicable).decide(&conn).allowed()
}

#[test]
fn linkerds_emojivoto_voting_policy_becomes_an_istio_allow_policy() {
    let (policies, notes) = istio(VOTING);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(policies.len(), 1);
    let p = &policies[0];
    assert_eq!(key(&p.metadata), "emojivoto/linkerd-server-voting-grpc");
    assert_eq!(
        p.spec,
        spec(
            "selector: {matchLabels: {app: voting-svc}}
action: ALLOW
rules:
- from: [{source: {principals: [cluster.local/ns/emojivoto/sa/web]}}]
  to: [{operation: {ports: ['8080']}}]
- to: [{operation: {notPorts: ['8080']}}]"
        )
    );

    // End to end: the Authorization ztunnel gets, bound to the voting pod only.
    let t = translate(&load(VOTING), &ClusterInfo::default());
    assert!(t.errors.is_empty() && t.notes.is_empty(), "{t:?}");
    let a = t
        .authorizations
        .iter()
        .find(|a| a.key() == "emojivoto/linkerd-server-voting-grpc")
        .unwrap();
    let want: Authorization = serde_yaml_ng::from_str(
        "name: linkerd-server-voting-grpc
namespace: emojivoto
scope: WorkloadSelector
action: Allow
rules:
- [[{principals: [!Exact cluster.local/ns/emojivoto/sa/web]}], [{destinationPorts: [8080]}]]
- [[{notDestinationPorts: [8080]}]]",
    )
    .unwrap();
    assert_eq!(*a, want);
    let bound = |pod: &str| {
        t.workloads
            .iter()
            .find(|w| w.name == pod)
            .unwrap()
            .authorization_policies
            .clone()
    };
    assert_eq!(bound("voting"), ["emojivoto/linkerd-server-voting-grpc"]);
    assert!(bound("web").is_empty() && bound("emoji").is_empty());
    // web may call voting's gRPC port; emoji and plaintext clients may not; voting's other
    // port stays open to anyone; other pods are untouched.
    let src = "10.244.0.12";
    assert!(allowed(&t, "voting", Some(WEB), src, 8080));
    assert!(!allowed(&t, "voting", Some(EMOJI), src, 8080));
    assert!(!allowed(&t, "voting", None, src, 8080));
    assert!(allowed(&t, "voting", Some(EMOJI), src, 8801));
    assert!(allowed(&t, "voting", None, src, 8801));
    assert!(allowed(&t, "emoji", Some(EMOJI), src, 8080));
}

#[test]
fn required_authentications_are_anded_in_one_source() {
    let yaml = r#"
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {namespace: emojivoto, name: emoji-grpc}
spec: {podSelector: {matchLabels: {app: emoji-svc}}, port: 8080}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: web-and-team, namespace: emojivoto}
spec:
  identityRefs:
  - {kind: ServiceAccount, name: web}
  - {kind: Namespace, name: team}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: pods, namespace: emojivoto}
spec:
  networks:
  - {cidr: 10.244.0.0/16, except: [10.244.9.0/24]}
  - {cidr: 192.168.0.0/16}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: both, namespace: emojivoto}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: emoji-grpc}
  requiredAuthenticationRefs:
  - {name: web-and-team, kind: MeshTLSAuthentication, group: policy.linkerd.io}
  - {name: pods, kind: NetworkAuthentication, group: policy.linkerd.io}
"#;
    let (policies, notes) = istio(yaml);
    assert!(notes.is_empty(), "{notes:?}");
    // (identity alternative) × (network alternative), each one source.
    assert_eq!(
        policies[0].spec.rules[0],
        spec(
            "rules:
- from:
  - {source: {principals: [cluster.local/ns/emojivoto/sa/web], ipBlocks: [192.168.0.0/16]}}
  - {source: {principals: [cluster.local/ns/emojivoto/sa/web], ipBlocks: [10.244.0.0/16], notIpBlocks: [10.244.9.0/24]}}
  - {source: {namespaces: [team], ipBlocks: [192.168.0.0/16]}}
  - {source: {namespaces: [team], ipBlocks: [10.244.0.0/16], notIpBlocks: [10.244.9.0/24]}}
  to: [{operation: {ports: ['8080']}}]"
        )
        .rules[0]
    );
    let t = translate(&load(yaml), &ClusterInfo::default());
    let team = "cluster.local/ns/team/sa/anyone";
    for (principal, src, want) in [
        (Some(WEB), "10.244.0.12", true),
        (Some(team), "192.168.3.4", true),
        (Some(WEB), "10.244.9.1", false), // an excepted network
        (Some(WEB), "172.16.0.1", false), // no network of the authentication
        (Some(EMOJI), "10.244.0.12", false),
        (None, "10.244.0.12", false),
    ] {
        assert_eq!(
            allowed(&t, "emoji", principal, src, 8080),
            want,
            "{principal:?} from {src}"
        );
    }

    // A ServiceAccount as the requirement, and no requirement at all (anyone, as Linkerd).
    let yaml = r#"
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {namespace: emojivoto, name: emoji-grpc}
spec: {podSelector: {matchLabels: {app: emoji-svc}}, port: 8080}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-sa, namespace: emojivoto}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: emoji-grpc}
  requiredAuthenticationRefs: [{kind: ServiceAccount, name: web}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: anyone-on-8080, namespace: emojivoto}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: emoji-grpc}
  requiredAuthenticationRefs: []
"#;
    let (policies, notes) = istio(yaml);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(
        policies[0].spec.rules[..2],
        spec(
            "rules:
- to: [{operation: {ports: ['8080']}}]
- from: [{source: {principals: [cluster.local/ns/emojivoto/sa/web]}}]
  to: [{operation: {ports: ['8080']}}]"
        )
        .rules[..]
    );
}

#[test]
fn access_policies_table() {
    let any_identity = "from: [{source: {principals: ['*']}}]\n  ";
    let cluster = "ipBlocks: [10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12, 192.168.0.0/16, fd00::/8]";
    // (accessPolicy, the rule it adds before the other-ports one, a note it gives)
    let cases: &[(&str, Option<String>, Option<&str>)] = &[
        ("deny", None, None),
        ("all-unauthenticated", Some(String::new()), None),
        ("all-authenticated", Some(any_identity.into()), None),
        (
            "cluster-unauthenticated",
            Some(format!("from: [{{source: {{{cluster}}}}}]\n  ")),
            Some("accessPolicy cluster-unauthenticated: \"cluster\" is taken as Linkerd's default clusterNetworks"),
        ),
        (
            "cluster-authenticated",
            Some(format!("from: [{{source: {{principals: ['*'], {cluster}}}}}]\n  ")),
            Some("accessPolicy cluster-authenticated:"),
        ),
        ("audit", Some(String::new()), Some("accessPolicy audit: ztunnel has no audit mode")),
        ("allow-please", None, Some("accessPolicy \"allow-please\" is not a Linkerd access policy; taken as deny")),
    ];
    for (access, rule, want_note) in cases {
        let yaml = format!(
            "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {{namespace: emojivoto, name: voting-grpc}}\nspec: {{podSelector: {{matchLabels: {{app: voting-svc}}}}, port: grpc, accessPolicy: {access}}}\n"
        );
        let (policies, notes) = istio(&yaml);
        let mut want = String::from("selector: {matchLabels: {app: voting-svc}}\nrules:\n");
        if let Some(rule) = rule {
            want += &format!("- {rule}to: [{{operation: {{ports: ['8080']}}}}]\n");
        }
        want += "- to: [{operation: {notPorts: ['8080']}}]\n";
        assert_eq!(policies[0].spec, spec(&want), "{access}");
        match want_note {
            None => assert!(notes.is_empty(), "{access}: {notes:?}"),
            Some(n) => {
                assert_eq!(notes.len(), 1, "{access}: {notes:?}");
                assert!(
                    notes[0].starts_with("Server emojivoto/voting-grpc: ") && notes[0].contains(n),
                    "{access}: {notes:?}"
                );
            }
        }
    }
}

#[test]
fn linkerds_documented_server_authorizations() {
    let yaml = r#"
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {namespace: emojivoto, name: emoji-grpc, labels: {app: emoji-svc}}
spec: {podSelector: {matchLabels: {app: emoji-svc}}, port: grpc, proxyProtocol: gRPC}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {namespace: emojivoto, name: prom, labels: {app: emoji-svc}}
spec: {podSelector: {matchLabels: {app: emoji-svc}}, port: prom}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {namespace: emojivoto, name: web-http}
spec: {podSelector: {matchLabels: {app: web-svc}}, port: http}
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {namespace: emojivoto, name: emoji-grpc}
spec:
  # Allow all authenticated clients to access the (read-only) emoji service.
  server: {selector: {matchLabels: {app: emoji-svc}}}
  client:
    meshTLS:
      identities: ["*.emojivoto.serviceaccount.identity.linkerd.cluster.local"]
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {namespace: emojivoto, name: web-public}
spec:
  server: {name: web-http}
  client:
    unauthenticated: true
    networks:
      - cidr: 0.0.0.0/0
      - cidr: ::/0
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {namespace: emojivoto, name: prom-prometheus}
spec:
  server: {name: prom}
  client:
    meshTLS:
      serviceAccounts: [{namespace: linkerd-viz, name: prometheus}]
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {namespace: emojivoto, name: identity-bootstrap}
spec:
  server: {name: web-http}
  client: {meshTLS: {unauthenticatedTLS: true}}
"#;
    let (policies, notes) = istio(yaml);
    assert_eq!(
        notes,
        ["ServerAuthorization emojivoto/identity-bootstrap: client.meshTLS.unauthenticatedTLS (TLS without a client identity) has no equivalent: ambient peers always have one; not applied"]
    );
    let names: Vec<String> = policies.iter().map(|p| key(&p.metadata)).collect();
    // One policy per podSelector: both emoji Servers share one.
    assert_eq!(
        names,
        [
            "emojivoto/linkerd-server-emoji-grpc",
            "emojivoto/linkerd-server-web-http"
        ]
    );
    assert_eq!(
        policies[0].spec,
        spec(
            "selector: {matchLabels: {app: emoji-svc}}
rules:
- from: [{source: {namespaces: [emojivoto]}}]
  to: [{operation: {ports: ['8080']}}]
- from: [{source: {namespaces: [emojivoto]}}]
  to: [{operation: {ports: ['8801']}}]
- from: [{source: {principals: [cluster.local/ns/linkerd-viz/sa/prometheus]}}]
  to: [{operation: {ports: ['8801']}}]
- to: [{operation: {notPorts: ['8080', '8801']}}]"
        )
    );
    assert_eq!(
        policies[1].spec,
        spec(
            "selector: {matchLabels: {app: web-svc}}
rules:
- from: [{source: {ipBlocks: [0.0.0.0/0, '::/0']}}]
  to: [{operation: {ports: ['8080']}}]
- to: [{operation: {notPorts: ['8080']}}]"
        )
    );
    let t = translate(&load(yaml), &ClusterInfo::default());
    let prometheus = "cluster.local/ns/linkerd-viz/sa/prometheus";
    assert!(allowed(&t, "emoji", Some(WEB), "10.244.0.12", 8080));
    assert!(!allowed(&t, "emoji", Some(prometheus), "10.244.0.12", 8080));
    assert!(allowed(&t, "emoji", Some(prometheus), "10.244.0.12", 8801));
    assert!(!allowed(&t, "emoji", None, "10.244.0.12", 8801));
    assert!(allowed(&t, "web", None, "192.0.2.1", 8080));
}

#[test]
fn what_does_not_map_is_reported_by_kind_and_name() {
    let yaml = r#"
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {namespace: emojivoto, name: voting-grpc}
spec: {podSelector: {matchLabels: {app: voting-svc}}, port: grpc}
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {namespace: emojivoto, name: voting-grpc-again}
spec: {podSelector: {matchLabels: {app: voting-svc}}, port: 8080}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {namespace: emojivoto, name: backend-services}
spec:
  podSelector:
    matchExpressions:
    - {key: app, operator: In, values: [voting-svc, emoji-svc]}
  port: 8080
  proxyProtocol: "HTTP/2"
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {namespace: emojivoto, name: vm}
spec: {externalWorkloadSelector: {matchLabels: {app: vm}}, port: 80}
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {namespace: emojivoto, name: no-such-port}
spec: {podSelector: {matchLabels: {app: web-svc}}, port: admin-http}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: odd, namespace: emojivoto}
spec:
  identities: [web.emojivoto.serviceaccount.identity.linkerd.cluster.local, "spiffe://x/y", "*.linkerd.cluster.local"]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: broken, namespace: emojivoto}
spec:
  identityRefs: [{kind: Deployment, group: apps, name: web}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: bad-net, namespace: emojivoto}
spec: {networks: [{cidr: 10.0.0.0/8, except: [not-a-net]}]}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: authors-get-policy, namespace: emojivoto}
spec:
  targetRef: {group: policy.linkerd.io, kind: HTTPRoute, name: authors-get-route}
  requiredAuthenticationRefs: [{name: odd, kind: MeshTLSAuthentication, group: policy.linkerd.io}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: two-identities, namespace: emojivoto}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: voting-grpc}
  requiredAuthenticationRefs:
  - {name: odd, kind: MeshTLSAuthentication, group: policy.linkerd.io}
  - {name: web, kind: ServiceAccount}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: uses-broken, namespace: emojivoto}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: voting-grpc}
  requiredAuthenticationRefs: [{name: broken, kind: MeshTLSAuthentication, group: policy.linkerd.io}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: uses-missing, namespace: emojivoto}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: voting-grpc}
  requiredAuthenticationRefs: [{name: nowhere, kind: NetworkAuthentication, group: policy.linkerd.io, namespace: other}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: other-namespace, namespace: emojivoto}
spec:
  targetRef: {kind: Namespace, name: default}
  requiredAuthenticationRefs: []
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: odd-auth, namespace: emojivoto}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: voting-grpc}
  requiredAuthenticationRefs: [{name: x, kind: Secret}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: odd-target, namespace: emojivoto}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: gw}
  requiredAuthenticationRefs: []
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ghost, namespace: emojivoto}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: ghost}
  requiredAuthenticationRefs: []
"#;
    let (policies, notes) = istio(yaml);
    // (object, part of the message)
    let want: &[(&str, &str)] = &[
        ("MeshTLSAuthentication emojivoto/odd", "identities[1] \"spiffe://x/y\" is not a Linkerd workload identity"),
        ("MeshTLSAuthentication emojivoto/odd", "identities[2] \"*.linkerd.cluster.local\" is not a Linkerd workload identity"),
        ("MeshTLSAuthentication emojivoto/broken", "identityRefs[0]: kind Deployment.apps is not ServiceAccount or Namespace: not usable"),
        ("NetworkAuthentication emojivoto/bad-net", "networks[0]: \"not-a-net\" is not a CIDR: not usable"),
        ("Server emojivoto/backend-services", "podSelector.matchExpressions are not mapped (Istio selects by matchLabels only); not applied: its port keeps the default policy"),
        ("Server emojivoto/no-such-port", "port \"admin-http\": no pod it selects has a container port of that name; not applied"),
        ("Server emojivoto/vm", "externalWorkloadSelector: ExternalWorkloads are not part of this mesh"),
        ("Server emojivoto/voting-grpc-again", "selects the same pods and port as Server emojivoto/voting-grpc (Linkerd's admission refuses this); not applied"),
        ("AuthorizationPolicy.policy.linkerd.io emojivoto/authors-get-policy", "targetRef HTTPRoute.policy.linkerd.io authors-get-route: per-route (L7) authorization is not translated"),
        ("AuthorizationPolicy.policy.linkerd.io emojivoto/ghost", "targetRef: Server emojivoto/ghost does not exist"),
        ("AuthorizationPolicy.policy.linkerd.io emojivoto/odd-auth", "requiredAuthenticationRefs[0]: kind Secret is not MeshTLSAuthentication, NetworkAuthentication or ServiceAccount; not applied"),
        ("AuthorizationPolicy.policy.linkerd.io emojivoto/odd-target", "targetRef kind Gateway.gateway.networking.k8s.io is not a Server, Namespace or route; not applied"),
        ("AuthorizationPolicy.policy.linkerd.io emojivoto/other-namespace", "targetRef: Namespace default is not the policy's own"),
        ("AuthorizationPolicy.policy.linkerd.io emojivoto/two-identities", "requiredAuthenticationRefs[1]: a second identity requirement (Linkerd refuses the policy); not applied"),
        ("AuthorizationPolicy.policy.linkerd.io emojivoto/uses-broken", "requiredAuthenticationRefs[0]: MeshTLSAuthentication.policy.linkerd.io emojivoto/broken is not usable (see its note); not applied"),
        ("AuthorizationPolicy.policy.linkerd.io emojivoto/uses-missing", "requiredAuthenticationRefs[0]: NetworkAuthentication.policy.linkerd.io other/nowhere does not exist; not applied"),
    ];
    let mut unexpected: Vec<&String> = notes.iter().collect();
    for (object, part) in want {
        let found = notes
            .iter()
            .position(|n| n.starts_with(&format!("{object}: ")) && n.contains(part));
        assert!(
            found.is_some(),
            "no note {object}: ...{part}... in {notes:#?}"
        );
        unexpected.retain(|n| !(n.starts_with(&format!("{object}: ")) && n.contains(part)));
    }
    assert!(unexpected.is_empty(), "unexpected notes {unexpected:#?}");
    // What maps still applies, and nothing is widened: voting's port admits nobody.
    assert_eq!(policies.len(), 1);
    assert_eq!(
        policies[0].spec,
        spec(
            "selector: {matchLabels: {app: voting-svc}}\nrules: [{to: [{operation: {notPorts: ['8080']}}]}]"
        )
    );
}

#[test]
fn a_namespace_target_overlapping_selectors_and_istio_allow_policies() {
    let yaml = r#"
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {namespace: emojivoto, name: all-grpc}
spec: {podSelector: {matchLabels: {}}, port: 8080}
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {namespace: emojivoto, name: voting-prom}
spec: {podSelector: {matchLabels: {app: voting-svc}}, port: prom}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-everywhere, namespace: emojivoto}
spec:
  targetRef: {kind: Namespace, name: emojivoto}
  requiredAuthenticationRefs: [{kind: ServiceAccount, name: web}]
"#;
    let (policies, notes) = istio(yaml);
    assert!(notes.is_empty(), "{notes:?}");
    let names: Vec<String> = policies.iter().map(|p| key(&p.metadata)).collect();
    assert_eq!(
        names,
        [
            "emojivoto/linkerd-server-all-grpc",
            "emojivoto/linkerd-server-voting-prom"
        ]
    );
    // The namespace target reaches both Servers. The voting pod is picked by both groups, so
    // neither policy opens the other ports: each pod is bound to an opening of its own.
    let from_web = "- from: [{source: {principals: [cluster.local/ns/emojivoto/sa/web]}}]\n";
    assert_eq!(
        policies[0].spec,
        spec(&format!(
            "rules:\n{from_web}  to: [{{operation: {{ports: ['8080']}}}}]"
        ))
    );
    assert_eq!(
        policies[1].spec,
        spec(&format!("selector: {{matchLabels: {{app: voting-svc}}}}\nrules:\n{from_web}  to: [{{operation: {{ports: ['8801']}}}}]"))
    );
    let t = translate(&load(yaml), &ClusterInfo::default());
    assert!(t.errors.is_empty() && t.notes.is_empty(), "{t:?}");
    let bound = |pod: &str| {
        t.workloads
            .iter()
            .find(|w| w.name == pod)
            .unwrap()
            .authorization_policies
            .clone()
    };
    assert_eq!(
        bound("voting"),
        [
            "emojivoto/linkerd-open-except-8080-8801",
            "emojivoto/linkerd-server-voting-prom"
        ]
    );
    assert_eq!(bound("emoji"), ["emojivoto/linkerd-open-except-8080"]);
    let opening = t
        .authorizations
        .iter()
        .find(|a| a.name == "linkerd-open-except-8080-8801")
        .unwrap();
    let want: Authorization = serde_yaml_ng::from_str(
        "{name: linkerd-open-except-8080-8801, namespace: emojivoto, scope: WorkloadSelector, action: Allow, rules: [[[{notDestinationPorts: [8080, 8801]}]]]}",
    )
    .unwrap();
    assert_eq!(*opening, want);
    for (pod, principal, port, want) in [
        ("voting", WEB, 8080, true),
        ("voting", EMOJI, 8080, false),
        ("voting", WEB, 8801, true),
        ("voting", EMOJI, 8801, false),
        ("voting", EMOJI, 9000, true),
        ("emoji", WEB, 8080, true),
        ("emoji", EMOJI, 8080, false),
        // emoji's prom port is no Server's: open, exactly as in Linkerd.
        ("emoji", EMOJI, 8801, true),
        ("emoji", EMOJI, 9000, true),
    ] {
        assert_eq!(
            allowed(&t, pod, Some(principal), "10.244.0.12", port),
            want,
            "{principal} to {pod}:{port}"
        );
    }

    // An Istio ALLOW policy on voting: its other ports are that policy's business.
    let mut c = load(yaml);
    let mut errors = Vec::new();
    crate::manifests::load_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-emoji, namespace: emojivoto}\nspec:\n  selector: {matchLabels: {app: voting-svc}}\n  rules: [{from: [{source: {principals: [cluster.local/ns/emojivoto/sa/emoji]}}], to: [{operation: {ports: ['9000']}}]}]\n",
        "istio.yaml",
        &mut c,
        &mut errors,
    );
    assert!(errors.is_empty());
    let notes: Vec<String> = policies_of(&c).1;
    assert_eq!(notes.len(), 2, "{notes:?}");
    for (n, server) in notes.iter().zip(["all-grpc", "voting-prom"]) {
        assert!(n.starts_with(&format!("Server emojivoto/{server}: Istio AuthorizationPolicy emojivoto/only-emoji (ALLOW) also applies to pod voting: its ports other than")), "{n}");
    }
    let t = translate(&c, &ClusterInfo::default());
    assert!(allowed(&t, "voting", Some(EMOJI), "10.244.0.12", 9000));
    assert!(!allowed(&t, "voting", Some(WEB), "10.244.0.12", 9000));
    assert!(!allowed(&t, "voting", Some(EMOJI), "10.244.0.12", 9001));
    assert!(allowed(&t, "voting", Some(WEB), "10.244.0.12", 8080));
    assert!(allowed(&t, "emoji", Some(EMOJI), "10.244.0.12", 9001));

    // Two podSelectors taking the same port of one pod: both Servers' clients are admitted
    // there (Linkerd's admission refuses that), reported as approximate.
    let yaml = r#"
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {namespace: emojivoto, name: all-grpc}
spec: {podSelector: {matchLabels: {}}, port: 8080, accessPolicy: all-authenticated}
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {namespace: emojivoto, name: voting-grpc}
spec: {podSelector: {matchLabels: {app: voting-svc}}, port: grpc}
"#;
    let (_, notes) = istio(yaml);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].starts_with("Server emojivoto/all-grpc: selects pod voting together with Server(s) voting-grpc (another podSelector) on port(s) {8080}: the clients either admits are admitted there (approximate"), "{notes:?}");
}

fn policies_of(c: &Cluster) -> (Vec<AuthorizationPolicy>, Vec<String>) {
    let t = policies(c, &ClusterInfo::default());
    (
        t.policies,
        t.notes.iter().map(ToString::to_string).collect(),
    )
}

#[test]
fn linkerd_identity_strings() {
    let mine = ClusterInfo {
        trust_domain: "corp.example".into(),
        ..ClusterInfo::default()
    };
    let p = |s: &str| Some(Identity::Principal(s.into()));
    let cases: &[(&str, Option<Identity>)] = &[
        ("*", Some(Identity::Any)),
        // Linkerd's default trust domain is the mesh's own.
        (
            "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
            p("corp.example/ns/emojivoto/sa/web"),
        ),
        (
            "*.emojivoto.serviceaccount.identity.linkerd.cluster.local",
            Some(Identity::Namespace("emojivoto".into())),
        ),
        (
            "*.emojivoto.serviceaccount.identity.linkerd.corp.example",
            Some(Identity::Namespace("emojivoto".into())),
        ),
        // Another trust domain stays pinned.
        (
            "web.ns.serviceaccount.identity.linkerd.east.example",
            p("east.example/ns/ns/sa/web"),
        ),
        (
            "*.ns.serviceaccount.identity.linkerd.east.example",
            p("east.example/ns/ns/sa/*"),
        ),
        ("*.serviceaccount.identity.linkerd.cluster.local", None),
        ("a.b.c.serviceaccount.identity.linkerd.cluster.local", None),
        ("web.emojivoto.serviceaccount.identity.linkerd.", None),
        (
            "we*b.ns.serviceaccount.identity.linkerd.cluster.local",
            None,
        ),
        (
            "web.Emojivoto.serviceaccount.identity.linkerd.cluster.local",
            None,
        ),
        ("spiffe://cluster.local/ns/a/sa/b", None),
    ];
    for (s, want) in cases {
        assert_eq!(identity(s, &mine), *want, "{s}");
    }
}

#[test]
fn manifests_keep_linkerds_authorization_policy_apart_and_refuse_unknown_fields() {
    let c = load(VOTING);
    assert_eq!(c.linkerd_authorization_policies.len(), 1);
    assert!(c.authorization_policies.is_empty());
    assert_eq!(c.servers.len(), 1);
    assert_eq!(c.mesh_tls_authentications.len(), 1);
    let mut c = Cluster::default();
    let mut errors = Vec::new();
    crate::manifests::load_text(
        "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {name: s, namespace: a}\nspec: {podSelector: {matchLabels: {app: a}}, port: 80, portz: 81}\n",
        "typo.yaml",
        &mut c,
        &mut errors,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("(Server a/s)") && errors[0].contains("portz"),
        "{errors:?}"
    );
    assert!(c.servers.is_empty());
}

//! Table tests of the egress translation: Cilium policies in (the issue's policy as written,
//! then field by field), the [`EgressPolicy`]s and notes out; and through the pipeline, the
//! incremental result against a whole translation as pods and Services change.

use std::net::IpAddr;

use meshcore::policy::egress::{EgressPolicy, EgressRule as Rule, Entity, Peer, PortRange};
use meshcore::policy::Action;

use super::*;
use crate::translate::{translate, Translation};

/// shop: `frontend`, `backend` (app=backend); database: `postgres` (app=postgres, container
/// port `pg` 5432), Service `db` (tier=data); ops: `probe` (app=backend), Service `metrics`
/// (tier=data).
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
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
spec: {serviceAccountName: backend, nodeName: node-1, containers: [{name: app, image: x}]}
status: {phase: Running, podIP: 10.244.0.11}
---
apiVersion: v1
kind: Namespace
metadata: {name: database}
---
apiVersion: v1
kind: Pod
metadata: {name: postgres, namespace: database, labels: {app: postgres}}
spec:
  serviceAccountName: postgres
  nodeName: node-1
  containers: [{name: db, image: x, ports: [{name: pg, containerPort: 5432}]}]
status: {phase: Running, podIP: 10.244.2.10}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: database, labels: {tier: data}}
spec: {selector: {app: postgres}, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops}
---
apiVersion: v1
kind: Pod
metadata: {name: probe, namespace: ops, labels: {app: backend}}
spec: {serviceAccountName: probe, nodeName: node-1, containers: [{name: app, image: x}]}
status: {phase: Running, podIP: 10.244.1.10}
---
apiVersion: v1
kind: Service
metadata: {name: metrics, namespace: ops, labels: {tier: data}}
spec: {selector: {app: backend}, ports: [{port: 9090}]}
"#;

/// The issue's policy, as written (in namespace shop).
const ISSUE: &str = r#"
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata: {name: backend-policy, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  egress:
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: database}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;

fn load(yaml: &str) -> Cluster {
    let mut c = Cluster::default();
    let mut errors = Vec::new();
    crate::manifests::load_text(CLUSTER, "cluster.yaml", &mut c, &mut errors);
    crate::manifests::load_text(yaml, "cilium.yaml", &mut c, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    c
}

fn run(yaml: &str) -> (Translation, Vec<String>) {
    let t = translate(&load(yaml), &ClusterInfo::default());
    let notes = t.notes.iter().map(ToString::to_string).collect();
    (t, notes)
}

/// A policy `p` in shop selecting the backend, with `egress` as given (flow YAML).
fn egress(rules: &str) -> (Translation, Vec<String>) {
    run(&format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: backend}}}}\n  egress: {rules}\n"
    ))
}

fn policy<'a>(t: &'a Translation, key: &str) -> &'a EgressPolicy {
    t.egress_policies
        .iter()
        .find(|p| p.key() == key)
        .unwrap_or_else(|| panic!("no {key} in {:?}", t.egress_policies))
}

fn rules(t: &Translation) -> Vec<Rule> {
    policy(t, "shop/cilium-egress-p").rules.clone()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn port(p: u16) -> PortRange {
    PortRange {
        port: p,
        end_port: None,
    }
}

const BACKEND_UID: &str = "Kubernetes//Pod/shop/backend";

#[test]
fn the_issues_policy_as_written() {
    let (t, notes) = run(ISSUE);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(
        t.egress_policies,
        [EgressPolicy {
            name: "cilium-egress-backend-policy".into(),
            namespace: "shop".into(),
            workloads: vec![BACKEND_UID.into()],
            action: Action::Allow,
            default_deny: true,
            rules: vec![Rule {
                to: vec![Peer::Workloads(vec![ip("10.244.2.10")])],
                ports: vec![port(5432)],
            }],
        }]
    );
    // The ingress part, as before.
    assert!(t
        .authorizations
        .iter()
        .any(|a| a.key() == "shop/cilium-backend-policy"));
    // What ztunnel is sent (the JSON inside the EgressPolicy resource).
    assert_eq!(
        serde_json::to_string(&t.egress_policies[0]).unwrap(),
        r#"{"name":"cilium-egress-backend-policy","namespace":"shop","workloads":["Kubernetes//Pod/shop/backend"],"action":"Allow","defaultDeny":true,"rules":[{"to":[{"workloads":["10.244.2.10"]}],"ports":[{"port":5432}]}]}"#
    );
}

#[test]
fn each_peer_kind() {
    let cases: Vec<(&str, Vec<Peer>)> = vec![
        (
            "[{toEndpoints: [{matchLabels: {app: frontend}}]}]",
            vec![Peer::Workloads(vec![ip("10.244.0.10")])],
        ),
        (
            "[{toCIDR: [192.168.0.0/16, 1.2.3.4]}]",
            vec![
                Peer::Cidr {
                    cidr: "192.168.0.0/16".parse().unwrap(),
                    except: vec![],
                },
                Peer::Cidr {
                    cidr: "1.2.3.4/32".parse().unwrap(),
                    except: vec![],
                },
            ],
        ),
        (
            "[{toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]}]",
            vec![Peer::Cidr {
                cidr: "10.0.0.0/8".parse().unwrap(),
                except: vec!["10.96.0.0/12".parse().unwrap()],
            }],
        ),
        (
            "[{toEntities: [all, cluster, world]}]",
            vec![
                Peer::Entity(Entity::All),
                Peer::Entity(Entity::Cluster),
                Peer::Entity(Entity::World),
            ],
        ),
        (
            "[{toServices: [{k8sService: {serviceName: cache}}, {k8sService: {serviceName: db, namespace: database}}]}]",
            vec![
                Peer::Service {
                    namespace: "shop".into(),
                    name: "cache".into(),
                },
                Peer::Service {
                    namespace: "database".into(),
                    name: "db".into(),
                },
            ],
        ),
        (
            "[{toServices: [{k8sServiceSelector: {selector: {matchLabels: {tier: data}}, namespace: database}}]}]",
            vec![Peer::Service {
                namespace: "database".into(),
                name: "db".into(),
            }],
        ),
        (
            "[{toFQDNs: [{matchName: api.example.com}, {matchPattern: '*.example.org'}]}]",
            vec![
                Peer::Fqdn {
                    match_name: Some("api.example.com".into()),
                    match_pattern: None,
                },
                Peer::Fqdn {
                    match_name: None,
                    match_pattern: Some("*.example.org".into()),
                },
            ],
        ),
    ];
    for (written, want) in cases {
        let (t, notes) = egress(written);
        assert!(notes.is_empty(), "{written}: {notes:?}");
        assert_eq!(
            rules(&t),
            [Rule {
                to: want,
                ports: vec![]
            }],
            "{written}"
        );
    }
}

#[test]
fn selector_namespaces_namespaced_and_clusterwide() {
    // Namespaced: a selector without a namespace picks the policy's namespace only.
    let (t, _) = egress("[{toEndpoints: [{matchLabels: {app: backend}}]}]");
    assert_eq!(rules(&t)[0].to, [Peer::Workloads(vec![ip("10.244.0.11")])]);
    // `{}`: every pod of the policy's namespace.
    let (t, _) = egress("[{toEndpoints: [{}]}]");
    assert_eq!(
        rules(&t)[0].to,
        [Peer::Workloads(vec![ip("10.244.0.10"), ip("10.244.0.11")])]
    );
    // Cluster-wide: every namespace, for the source pods (one policy per namespace) and the
    // destinations alike.
    let yaml = "apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: backends}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress: [{toEndpoints: [{matchLabels: {app: backend}}]}]
  egressDeny: [{toEntities: [world]}]
";
    let (t, notes) = run(yaml);
    assert!(notes.is_empty(), "{notes:?}");
    let keys: Vec<String> = t.egress_policies.iter().map(EgressPolicy::key).collect();
    assert_eq!(
        keys,
        [
            "ops/cilium-ccnp-egress-backends",
            "ops/cilium-ccnp-egress-deny-backends",
            "shop/cilium-ccnp-egress-backends",
            "shop/cilium-ccnp-egress-deny-backends",
        ]
    );
    let ops = policy(&t, "ops/cilium-ccnp-egress-backends");
    assert_eq!(ops.workloads, ["Kubernetes//Pod/ops/probe"]);
    assert_eq!(
        ops.rules[0].to,
        [Peer::Workloads(vec![ip("10.244.0.11"), ip("10.244.1.10")])]
    );
    // A cluster-wide k8sServiceSelector without a namespace: every namespace's Services.
    let yaml = yaml.replace(
        "egress: [{toEndpoints: [{matchLabels: {app: backend}}]}]",
        "egress: [{toServices: [{k8sServiceSelector: {selector: {matchLabels: {tier: data}}}}]}]",
    );
    let (t, _) = run(&yaml);
    let svc = |ns: &str, name: &str| Peer::Service {
        namespace: ns.into(),
        name: name.into(),
    };
    assert_eq!(
        policy(&t, "shop/cilium-ccnp-egress-backends").rules[0].to,
        [svc("database", "db"), svc("ops", "metrics")]
    );
}

#[test]
fn ports_ranges_named_ports_and_protocols() {
    let to_db = "toEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: database}}]";
    let cases: Vec<(String, Vec<PortRange>, &str)> = vec![
        (
            format!("[{{{to_db}, toPorts: [{{ports: [{{port: '8000', endPort: 8010, protocol: TCP}}, {{port: '443'}}]}}]}}]"),
            vec![
                port(443),
                PortRange {
                    port: 8000,
                    end_port: Some(8010),
                },
            ],
            "",
        ),
        // A named port: the destination pods' container port.
        (
            format!("[{{{to_db}, toPorts: [{{ports: [{{port: pg}}]}}]}}]"),
            vec![port(5432)],
            "",
        ),
        // ANY is TCP too; UDP is left out.
        (
            format!("[{{{to_db}, toPorts: [{{ports: [{{port: '53', protocol: UDP}}, {{port: '53', protocol: ANY}}]}}]}}]"),
            vec![port(53)],
            "spec.egress[0].toPorts[0].ports[0].protocol: UDP is not carried by ztunnel (TCP only); ignored",
        ),
    ];
    for (written, want, note) in cases {
        let (t, notes) = egress(&written);
        assert_eq!(rules(&t)[0].ports, want, "{written}");
        assert_eq!(notes.len(), usize::from(!note.is_empty()), "{notes:?}");
        assert!(notes.iter().all(|n| n.ends_with(note)), "{notes:?}");
    }
    // Port 0 (or none): every port.
    let (t, _) = egress(&format!(
        "[{{{to_db}, toPorts: [{{ports: [{{port: '0'}}]}}]}}]"
    ));
    assert!(rules(&t)[0].ports.is_empty());
    // Nothing left (UDP only, a name no destination pod has, a name without toEndpoints):
    // the rule matches nothing and is dropped; the policy stays (default deny).
    for (written, want) in [
        (format!("[{{{to_db}, toPorts: [{{ports: [{{port: '53', protocol: UDP}}]}}]}}]"), "no TCP port left"),
        (format!("[{{{to_db}, toPorts: [{{ports: [{{port: http}}]}}]}}]"), "no destination pod picked by toEndpoints has a container port named \"http\"; left out"),
        ("[{toCIDR: [10.0.0.0/8], toPorts: [{ports: [{port: pg}]}]}]".into(), "a named port needs toEndpoints to resolve against; left out"),
    ] {
        let (t, notes) = egress(&written);
        assert!(rules(&t).is_empty(), "{written}");
        assert!(policy(&t, "shop/cilium-egress-p").default_deny);
        assert!(notes.iter().any(|n| n.contains(want)), "{written}: {notes:?}");
    }
    // toPorts alone: every destination on those ports (Cilium's wildcard).
    let (t, _) = egress("[{toPorts: [{ports: [{port: '443'}]}]}]");
    assert_eq!(
        rules(&t),
        [Rule {
            to: vec![],
            ports: vec![port(443)]
        }]
    );
}

#[test]
fn l7_rules_dns_kept_others_drop_an_allow_rule() {
    let (t, notes) = egress(
        "[{toEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}], \
         toPorts: [{ports: [{port: '53', protocol: ANY}], rules: {dns: [{matchPattern: '*'}]}}]}, \
         {toFQDNs: [{matchName: api.example.com}], toPorts: [{ports: [{port: '443'}], rules: {http: [{method: GET}]}}]}]",
    );
    // No kube-dns pod here: the first rule selects nothing at present; the second is dropped.
    assert!(rules(&t).is_empty());
    let all = notes.join("\n");
    for want in [
        "spec.egress[0].toPorts[0].rules: DNS queries are answered by ztunnel's DNS proxy and are not subject to egress policy; the rule's L4 part is kept",
        "spec.egress[0]: selects no destination at present; this ALLOW rule matches nothing",
        "spec.egress[1]: spec.egress[1].toPorts[0].rules cannot be enforced by ztunnel; rule dropped",
    ] {
        assert!(all.contains(want), "missing {want:?} in\n{all}");
    }
    let (t, _) = egress("[{toCIDR: [10.0.0.0/8], toPorts: [{ports: [{port: '53'}], rules: {dns: [{matchPattern: '*'}]}}]}]");
    assert_eq!(rules(&t)[0].ports, [port(53)]);
    // In a deny rule, L7 is taken as satisfied: the deny applies at L4.
    let (t, notes) = run(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: backend}}\n  egressDeny: [{toCIDR: [10.0.0.0/8], toPorts: [{ports: [{port: '80'}], rules: {http: [{method: GET}]}}]}]\n",
    );
    assert_eq!(
        policy(&t, "shop/cilium-egress-deny-p").rules[0].ports,
        [port(80)]
    );
    assert!(
        notes.iter().any(|n| n.contains("taken as satisfied")),
        "{notes:?}"
    );
}

#[test]
fn deny_and_default_deny() {
    let spec = |s: &str| {
        run(&format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: backend}}}}\n{s}"
        ))
    };
    // egressDeny alone: default deny (Cilium's enableDefaultDeny reference: on for a direction
    // with rules), nothing allowed, the deny rule on top.
    let (t, notes) = spec("  egressDeny: [{toCIDR: [169.254.169.254/32]}]\n");
    assert!(notes.is_empty(), "{notes:?}");
    let allow = policy(&t, "shop/cilium-egress-p");
    assert!(allow.default_deny && allow.rules.is_empty() && allow.action == Action::Allow);
    let deny = policy(&t, "shop/cilium-egress-deny-p");
    assert_eq!(deny.action, Action::Deny);
    assert_eq!(deny.workloads, [BACKEND_UID]);
    assert_eq!(
        deny.rules[0].to,
        [Peer::Cidr {
            cidr: "169.254.169.254/32".parse().unwrap(),
            except: vec![]
        }]
    );
    // ...unless default deny is switched off: the deny alone.
    let (t, _) = spec(
        "  enableDefaultDeny: {egress: false}\n  egressDeny: [{toCIDR: [169.254.169.254/32]}]\n",
    );
    let keys: Vec<String> = t.egress_policies.iter().map(EgressPolicy::key).collect();
    assert_eq!(keys, ["shop/cilium-egress-deny-p"]);
    // Allow rules without default deny: they only add to what other policies allow.
    let (t, _) = spec("  enableDefaultDeny: {egress: false}\n  egress: [{toEntities: [world]}]\n");
    let allow = policy(&t, "shop/cilium-egress-p");
    assert!(!allow.default_deny);
    assert_eq!(allow.rules[0].to, [Peer::Entity(Entity::World)]);
    // Ingress only: no egress policy.
    let (t, _) = spec("  ingress: [{fromEntities: [all]}]\n");
    assert!(t.egress_policies.is_empty());
}

#[test]
fn empty_section_empty_rule_and_allow_all() {
    // `egress: []`: default deny, nothing allowed.
    let (t, notes) = egress("[]");
    assert!(notes.is_empty(), "{notes:?}");
    let p = policy(&t, "shop/cilium-egress-p");
    assert!(p.default_deny && p.rules.is_empty());
    // `egress: [{}]`: Cilium's documented egress default-deny policy: an empty rule selects
    // nothing, so nothing is allowed either (never more than written).
    let (t, notes) = egress("[{}]");
    assert!(rules(&t).is_empty());
    assert_eq!(
        notes,
        ["CiliumNetworkPolicy shop/p: spec.egress[0]: a rule without a destination or port selects nothing (Cilium's egress default-deny pattern; write toEntities: [all] to allow everything); this ALLOW rule matches nothing"]
    );
    // Everything: `toEntities: [all]`.
    let (t, _) = egress("[{toEntities: [all]}]");
    assert_eq!(rules(&t)[0].to, [Peer::Entity(Entity::All)]);
    // An explicit empty peer list selects nothing (Cilium >= 1.15).
    let (t, _) = egress("[{toEndpoints: [], toPorts: [{ports: [{port: '80'}]}]}]");
    assert!(rules(&t).is_empty());
}

#[test]
fn specs_are_named_by_index() {
    let (t, _) = run("apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: shop}
specs:
- endpointSelector: {matchLabels: {app: backend}}
  egress: [{toEntities: [cluster]}]
- endpointSelector: {matchLabels: {app: frontend}}
  egressDeny: [{toEntities: [world]}]
");
    let keys: Vec<String> = t.egress_policies.iter().map(EgressPolicy::key).collect();
    assert_eq!(
        keys,
        [
            "shop/cilium-egress-deny-p-1",
            "shop/cilium-egress-p-0",
            "shop/cilium-egress-p-1"
        ]
    );
}

#[test]
fn unsupported_fields_are_reported_by_name() {
    let (t, notes) = egress(
        "[{toEndpoints: [{matchLabels: {app: frontend}}], toRequires: [{matchLabels: {env: prod}}]}, \
         {toGroups: [{aws: {securityGroupsIds: [sg-1]}}]}, {toNodes: [{}]}, \
         {toEntities: [host, kube-apiserver, remote-node]}, \
         {toCIDRSet: [{cidrGroupRef: corp}]}, {icmps: [{fields: [{type: 8}]}]}, \
         {toCIDR: [10.0.0.0/8], authentication: {mode: required}}, \
         {toEndpoints: [{matchLabels: {reserved:host: ''}}]}]",
    );
    // Only the rule with authentication (accepted) is left.
    assert_eq!(rules(&t).len(), 1);
    let all = notes.join("\n");
    for want in [
        "spec.egress[0]: spec.egress[0].toRequires cannot be enforced by ztunnel; rule dropped",
        "spec.egress[1].toGroups: not supported; selects no destination",
        "spec.egress[2].toNodes: not supported; selects no destination",
        "spec.egress[3].toEntities[0]: entity \"host\" is not supported by ztunnel",
        "spec.egress[3].toEntities[1]: entity \"kube-apiserver\" is not supported by ztunnel",
        "spec.egress[3].toEntities[2]: entity \"remote-node\" is not supported by ztunnel",
        "spec.egress[4].toCIDRSet[0]: CiliumCIDRGroup references are not supported",
        "spec.egress[5].icmps: ICMP is not carried by ztunnel (TCP only); ignored",
        "spec.egress[5].toPorts: no TCP port left",
        "spec.egress[6].authentication: not needed",
        "spec.egress[7].toEndpoints[0]: label \"reserved:host\": source \"reserved\" is not supported",
    ] {
        assert!(all.contains(want), "missing {want:?} in\n{all}");
    }
}

#[test]
fn invalid_values_are_refused_naming_the_field() {
    let refused = |rules: &str| {
        let yaml = format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  endpointSelector: {{}}\n{rules}"
        );
        let c = load(&yaml);
        let p = &c.cilium_network_policies[0];
        check(&p.spec, &p.specs).unwrap_err()
    };
    assert_eq!(
        refused("  egress: [{toCIDR: [0.0.0.0/0], toPorts: [{port: '443', protocol: TCP}]}]\n"),
        "spec.egress[0].toPorts[0]: unknown field \"port\": Cilium's schema nests ports under \
         toPorts[].ports: write toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]"
    );
    for (rules, want) in [
        ("  egressDeny: [{toFQDNs: [{matchName: a.example}]}]\n", "spec.egressDeny[0]: unknown field \"toFQDNs\": Cilium's egressDeny rules have no toFQDNs"),
        ("  egress: [{toFQDNs: [{matchName: 'a b'}]}]\n", "spec.egress[0].toFQDNs[0].matchName: \"a b\" is not a DNS name"),
        ("  egress: [{toFQDNs: [{}]}]\n", "spec.egress[0].toFQDNs[0]: exactly one of matchName, matchPattern is required"),
        ("  egress: [{toServices: [{k8sService: {namespace: x}}]}]\n", "spec.egress[0].toServices[0].k8sService.serviceName: required"),
        ("  egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [nope]}]}]\n", "spec.egress[0].toCIDRSet[0].except[0]: \"nope\" is not a CIDR"),
        ("  egress: [{toEndpoints: [{matchExpressions: [{key: a, operator: Is}]}]}]\n", "spec.egress[0].toEndpoints[0].matchExpressions[0].operator"),
        ("  egress: [{toPorts: [{ports: [{port: '70000'}]}]}]\n", "spec.egress[0].toPorts[0].ports[0].port: 70000 is not a port number"),
    ] {
        let err = refused(rules);
        assert!(err.starts_with(want), "{rules}: {err}");
    }
    // An unknown field (a typo) is refused by the reader, named.
    let mut c = Cluster::default();
    let mut errors = Vec::new();
    crate::manifests::load_text(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  endpointSelector: {}\n  egress: [{toEndpoint: [{}]}]\n",
        "typo.yaml",
        &mut c,
        &mut errors,
    );
    let errors = format!("{errors:?}");
    assert!(errors.contains("toEndpoint"), "{errors}");
}

/// Resource names and versions of a set, for comparing an incremental build with a whole one.
fn versions(s: &crate::xds::ResourceSet) -> Vec<(String, String)> {
    s.by_type
        .values()
        .flat_map(|m| m.values().map(|r| (r.name.clone(), r.version.clone())))
        .collect()
}

#[test]
fn the_pipeline_follows_destination_pods_and_services() {
    let issue_plus_selector = format!(
        "{ISSUE}  - toServices: [{{k8sServiceSelector: {{selector: {{matchLabels: {{tier: cache}}}}, namespace: ops}}}}]\n"
    );
    let mut full = load(&issue_plus_selector);
    let mut pipe = crate::pipeline::Pipeline::new(ClusterInfo::default());
    pipe.replace_all(full.clone());
    let first = pipe.build().expect("a first set");
    assert_eq!(
        first.count(meshcore::api::type_url::EGRESS_POLICY),
        1,
        "{:?}",
        versions(&first)
    );
    // A second database pod (with its named port), and a Service labelled tier=cache in ops:
    // shop's egress policy must follow both.
    let extra = r#"
apiVersion: v1
kind: Pod
metadata: {name: replica, namespace: database, labels: {app: postgres}}
spec: {serviceAccountName: postgres, nodeName: node-1, containers: [{name: db, image: x}]}
status: {phase: Running, podIP: 10.244.2.11}
---
apiVersion: v1
kind: Service
metadata: {name: redis, namespace: ops, labels: {tier: cache}}
spec: {selector: {app: redis}, ports: [{port: 6379}]}
"#;
    let mut errors = Vec::new();
    crate::manifests::load_text(extra, "extra.yaml", &mut full, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    pipe.replace_all(full.clone());
    let set = pipe.build().expect("a push");
    let whole = translate(&full, &ClusterInfo::default());
    let p = policy(&whole, "shop/cilium-egress-backend-policy");
    assert_eq!(
        p.rules[0].to,
        [Peer::Workloads(vec![ip("10.244.2.10"), ip("10.244.2.11")])]
    );
    assert_eq!(
        p.rules[1].to,
        [Peer::Service {
            namespace: "ops".into(),
            name: "redis".into()
        }]
    );
    // The incremental result equals a whole translation.
    let whole = crate::xds::ResourceSet::from_translation(&whole, 0);
    assert_eq!(versions(&set), versions(&whole));
}

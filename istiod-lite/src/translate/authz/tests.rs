//! Table tests: AuthorizationPolicy specs in, L4 Authorizations out (written in ztunnel's local
//! config form), with the notes that explain every change.

use std::collections::BTreeMap;

use super::*;

fn translate_with(
    spec: &str,
    namespace: &str,
    annotations: &[(&str, &str)],
) -> Result<Translated, Invalid> {
    let spec: AuthorizationPolicySpec =
        serde_yaml_ng::from_str(spec).unwrap_or_else(|e| panic!("bad test spec: {e}\n{spec}"));
    let annotations: BTreeMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    authorization_policy(namespace, "p", &annotations, &spec, "istio-system")
}

fn translate(spec: &str) -> Translated {
    translate_with(spec, "default", &[]).unwrap()
}

/// The expected policy in ztunnel's local-config YAML.
fn expect(yaml: &str) -> Authorization {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("bad expectation: {e}\n{yaml}"))
}

const BASE: &str = "name: p\nnamespace: default\n";

#[test]
fn fields_and_structure_table() {
    // (AuthorizationPolicy spec, expected Authorization after BASE)
    let cases: &[(&str, &str)] = &[
        // spec: {} with ALLOW: no rules, denies everything.
        ("{}", "scope: Namespace\naction: Allow\nrules: []"),
        // rules: [{}]: one rule without clauses, allows everything.
        ("rules: [{}]", "scope: Namespace\naction: Allow\nrules: [[]]"),
        // Principals with Istio's wildcard forms; list values ORed within one match.
        (
            "rules: [{from: [{source: {principals: [cluster.local/ns/a/sa/b, 'cluster.local/ns/c/*', '*/sa/d', '*']}}]}]",
            "scope: Namespace\naction: Allow\nrules: [[[{principals: [!Exact cluster.local/ns/a/sa/b, !Prefix cluster.local/ns/c/, !Suffix /sa/d, !Presence []]}]]]",
        ),
        // Several sources: one clause, one match each (ORed); fields of one source ANDed.
        (
            "rules: [{from: [{source: {namespaces: [a], notPrincipals: [x]}}, {source: {ipBlocks: [10.0.0.1, 10.1.0.0/16], notIpBlocks: [10.1.2.0/24]}}]}]",
            "scope: Namespace\naction: Allow\nrules: [[[{namespaces: [!Exact a], notPrincipals: [!Exact x]}, {sourceIps: [10.0.0.1/32, 10.1.0.0/16], notSourceIps: [10.1.2.0/24]}]]]",
        ),
        (
            "rules: [{from: [{source: {serviceAccounts: [ns1/sa1], notServiceAccounts: [ns2/sa2], notNamespaces: [kube-system]}}]}]",
            "scope: Namespace\naction: Allow\nrules: [[[{serviceAccounts: [{namespace: ns1, serviceAccount: sa1}], notServiceAccounts: [{namespace: ns2, serviceAccount: sa2}], notNamespaces: [!Exact kube-system]}]]]",
        ),
        // from and to: two clauses (ANDed); ports as strings or numbers.
        (
            "rules: [{from: [{source: {namespaces: [a]}}], to: [{operation: {ports: ['80', 443], notPorts: ['8080']}}]}]",
            "scope: Namespace\naction: Allow\nrules: [[[{namespaces: [!Exact a]}], [{destinationPorts: [80, 443], notDestinationPorts: [8080]}]]]",
        ),
        // when: one clause per condition, with the L4 keys.
        (
            "rules: [{when: [{key: source.ip, values: [10.0.0.0/8], notValues: [10.9.0.0/16]}, {key: source.namespace, values: [a]}, {key: source.principal, notValues: ['*/sa/evil']}, {key: destination.ip, values: ['fd00::1']}, {key: destination.port, values: ['9090']}]}]",
            "scope: Namespace\naction: Allow\nrules: [[[{sourceIps: [10.0.0.0/8], notSourceIps: [10.9.0.0/16]}], [{namespaces: [!Exact a]}], [{notPrincipals: [!Suffix /sa/evil]}], [{destinationIps: ['fd00::1/128']}], [{destinationPorts: [9090]}]]]",
        ),
        // Several rules ORed.
        (
            "action: DENY\nrules: [{to: [{operation: {ports: ['1']}}]}, {from: [{source: {namespaces: [x]}}]}]",
            "scope: Namespace\naction: Deny\nrules: [[[{destinationPorts: [1]}]], [[{namespaces: [!Exact x]}]]]",
        ),
        // An empty source matches any source: its clause disappears.
        ("rules: [{from: [{source: {}}], to: [{operation: {ports: ['80']}}]}]", "scope: Namespace\naction: Allow\nrules: [[[{destinationPorts: [80]}]]]"),
        // A selector makes it a WorkloadSelector policy.
        (
            "selector: {matchLabels: {app: web}}\nrules: [{}]",
            "scope: WorkloadSelector\naction: Allow\nrules: [[]]",
        ),
        // An empty selector is no selector.
        ("selector: {}\nrules: [{}]", "scope: Namespace\naction: Allow\nrules: [[]]"),
    ];
    for (spec, want) in cases {
        let got = translate(spec);
        assert_eq!(
            got.authorization,
            Some(expect(&format!("{BASE}{want}"))),
            "spec: {spec}"
        );
        assert!(got.notes.is_empty(), "spec {spec} noted {:?}", got.notes);
    }
}

#[test]
fn root_namespace_policies_are_global() {
    let t = translate_with("rules: [{}]", "istio-system", &[]).unwrap();
    assert_eq!(t.authorization.unwrap().scope, Scope::Global);
    let t = translate_with("selector: {matchLabels: {a: b}}", "istio-system", &[]).unwrap();
    assert_eq!(t.authorization.unwrap().scope, Scope::WorkloadSelector);
}

#[test]
fn l7_rules_are_dropped_from_allow() {
    let t = translate(
        "rules: [{to: [{operation: {methods: [GET], ports: ['80']}}]}, {from: [{source: {namespaces: [a]}}]}]",
    );
    // The first rule is gone; the policy still allows namespace a, and nothing else.
    assert_eq!(
        t.authorization,
        Some(expect(&format!(
            "{BASE}scope: Namespace\naction: Allow\nrules: [[[{{namespaces: [!Exact a]}}]]]"
        )))
    );
    assert_eq!(t.notes.len(), 1);
    assert!(t.notes[0].starts_with("rules[0]: rules[0].to[0].operation.methods cannot be checked by ztunnel; rule dropped from this ALLOW policy"), "{:?}", t.notes);
    // Only L7 rules: an ALLOW policy with no rules, which denies everything (fails closed).
    let t = translate("rules: [{from: [{source: {requestPrincipals: ['*']}}]}, {when: [{key: 'request.headers[x]', values: [y]}]}]");
    assert_eq!(
        t.authorization.unwrap().rules,
        Vec::<Vec<Vec<Match>>>::new()
    );
    assert_eq!(t.notes.len(), 2);
    assert!(
        t.notes[1].contains("rules[1].when[0] (key request.headers[x])"),
        "{:?}",
        t.notes
    );
}

#[test]
fn l7_conditions_are_stripped_from_deny() {
    // Ports stay; the method is taken as satisfied.
    let t = translate("action: DENY\nrules: [{from: [{source: {namespaces: [a]}}], to: [{operation: {methods: [POST], ports: ['80']}}]}]");
    assert_eq!(
        t.authorization,
        Some(expect(&format!("{BASE}scope: Namespace\naction: Deny\nrules: [[[{{namespaces: [!Exact a]}}], [{{destinationPorts: [80]}}]]]")))
    );
    assert!(t.notes[0].contains("rules[0].to[0].operation.methods cannot be checked by ztunnel; taken as satisfied in this DENY rule"));
    // A `to` entry with only L7 makes the whole `to` clause true: the rule denies namespace a
    // whatever the operation.
    let t = translate("action: DENY\nrules: [{from: [{source: {namespaces: [a]}}], to: [{operation: {paths: [/admin]}}, {operation: {ports: ['22']}}]}]");
    assert_eq!(
        t.authorization.unwrap().rules,
        expect(&format!(
            "{BASE}scope: Namespace\naction: Deny\nrules: [[[{{namespaces: [!Exact a]}}]]]"
        ))
        .rules
    );
    // Nothing left at L4: the rule denies everything (fail closed), and the note says so.
    let t = translate("action: DENY\nrules: [{to: [{operation: {methods: [DELETE]}}], when: [{key: 'request.auth.claims[iss]', values: [x]}]}]");
    assert_eq!(
        t.authorization.unwrap().rules,
        vec![Vec::<Vec<Match>>::new()]
    );
    assert!(
        t.notes[0].contains("denies every connection to the workload"),
        "{:?}",
        t.notes
    );
}

#[test]
fn waypoint_audit_and_custom_policies_are_not_sent() {
    for (spec, note) in [
        (
            "targetRefs: [{kind: Service, group: '', name: web}]\nrules: [{}]",
            "targetRefs: enforced by the waypoint",
        ),
        (
            "targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: wp}",
            "targetRefs: enforced by the waypoint",
        ),
        (
            "action: AUDIT\nrules: [{}]",
            "action: AUDIT is not enforced by ztunnel",
        ),
        (
            "action: CUSTOM\nprovider: {name: ext-authz}\nrules: [{}]",
            "action: CUSTOM",
        ),
    ] {
        let t = translate(spec);
        assert_eq!(t.authorization, None, "{spec}");
        assert!(t.notes[0].starts_with(note), "{spec}: {:?}", t.notes);
    }
}

#[test]
fn dry_run_annotation() {
    let t = translate_with("rules: [{}]", "default", &[("istio.io/dry-run", "true")]).unwrap();
    assert!(t.authorization.unwrap().dry_run);
    let t = translate_with("rules: [{}]", "default", &[("istio.io/dry-run", "false")]).unwrap();
    assert!(!t.authorization.unwrap().dry_run);
}

#[test]
fn invalid_values_refuse_the_policy_by_field() {
    for (spec, want) in [
        ("rules: [{from: [{source: {ipBlocks: [10.0.0.300]}}]}]", "rules[0].from[0].source.ipBlocks: \"10.0.0.300\" is not an IP address or CIDR"),
        ("rules: [{to: [{operation: {ports: [http]}}]}]", "rules[0].to[0].operation.ports: \"http\" is not a port number (1-65535)"),
        ("rules: [{to: [{operation: {notPorts: ['70000']}}]}]", "rules[0].to[0].operation.notPorts: \"70000\" is not a port number (1-65535)"),
        ("rules: [{from: [{source: {serviceAccounts: [justaname]}}]}]", "rules[0].from[0].source.serviceAccounts: \"justaname\" is not namespace/serviceaccount"),
        ("rules: [{when: [{key: destination.port, values: []}]}]", "rules[0].when[0]: condition on destination.port has no values"),
        ("rules: [{when: [{key: source.ip, notValues: [nope]}]}]", "rules[0].when[0].notValues: \"nope\" is not an IP address or CIDR"),
    ] {
        assert_eq!(translate_with(spec, "default", &[]).unwrap_err().0, want, "{spec}");
    }
    // Misspelt keys are refused when the manifest is read.
    let e = serde_yaml_ng::from_str::<AuthorizationPolicySpec>(
        "rules: [{from: [{source: {principal: [x]}}]}]",
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `principal`"), "{e}");
}

#[test]
fn translated_policies_decide_as_istio_documents() {
    // End to end through the engine: allow namespace `foo` to port 8080 only.
    let t = translate(
        "rules: [{from: [{source: {namespaces: [foo]}}], to: [{operation: {ports: ['8080']}}]}]",
    );
    let compiled =
        policy::CompiledPolicies::new(vec![std::sync::Arc::new(t.authorization.unwrap())]);
    let decide = |ns: &str, port: u16| {
        let id = meshcore::identity::SpiffeId::new("cluster.local", ns, "sa").unwrap();
        let p = id.principal();
        compiled
            .decide(&policy::Connection {
                source_ip: "10.0.0.1".parse().unwrap(),
                destination: std::net::SocketAddr::from(([10, 0, 0, 2], port)),
                identity: Some(&id),
                principal: Some(&p),
            })
            .allowed()
    };
    assert!(decide("foo", 8080));
    assert!(!decide("foo", 9090));
    assert!(!decide("bar", 8080));
}

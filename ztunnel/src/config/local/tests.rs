use super::*;

/// The shape of Istio ztunnel's own example local config (`examples/localhost.yaml`).
const ISTIO_STYLE: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/local
  name: local
  namespace: default
  serviceAccount: default
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
  node: local
  network: ""
  services:
    "default/example.com":
      80: 8080
policies:
- action: Allow
  rules:
  - - - notDestinationPorts:
        - 9999
  name: deny-9999
  namespace: default
  scope: Namespace
services:
- name: local
  namespace: default
  hostname: example.com
  vips:
  - /127.10.0.1
  ports:
    80: 8080
"#;

#[test]
fn istio_shaped_file_parses() {
    let c = parse(ISTIO_STYLE, "cluster.local").unwrap();
    assert_eq!(c.workloads.len(), 1);
    let w = &c.workloads[0];
    assert_eq!(
        w.workload_ips,
        vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(w.services["default/example.com"][&80], 8080);
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(c.services[0].vips[0].ip.to_string(), "127.10.0.1");
    assert_eq!(
        c.policies[0].rules[0][0][0].not_destination_ports,
        vec![9999]
    );
}

#[test]
fn defaults_fill_uid_and_service_account() {
    let c = parse(
        "workloads: [{name: a, namespace: ns, workloadIps: [10.0.0.1]}]",
        "td.example",
    )
    .unwrap();
    assert_eq!(c.workloads[0].uid, "ns/a");
    assert_eq!(c.workloads[0].service_account, "default");
    assert_eq!(c.workloads[0].trust_domain, "td.example");
}

/// Each broken file is refused with a message naming what is wrong.
#[test]
fn errors_name_the_entry_and_field() {
    let cases: &[(&str, &str)] = &[
        ("workloads: [{name: a, namespace: ns, workloadIP: [10.0.0.1]}]", "unknown field `workloadIP`"),
        ("workloads: [{name: a, namespace: ns, protocol: QUIC}]", "unknown variant `QUIC`"),
        ("workloads: [{name: a, namespace: ns, workloadIps: [10.0.0.300]}]", "workloads[0]"),
        ("workloads: [{name: a}]", "missing field `namespace`"),
        (
            "workloads: [{name: a, namespace: ns, workloadIps: [10.0.0.1]}, {name: b, namespace: ns, workloadIps: [10.0.0.1]}]",
            "workloads[1] (ns/b): workloadIps: 10.0.0.1 is also used by workloads[0]",
        ),
        (
            "workloads: [{name: a, namespace: ns, services: {ns/missing: {80: 80}}}]",
            "workloads[0] (ns/a): services: \"ns/missing\" names no entry of services",
        ),
        (
            "workloads: [{name: a, namespace: ns, authorizationPolicies: [ns/nope]}]",
            "workloads[0] (ns/a): authorizationPolicies: \"ns/nope\" names no policy",
        ),
        ("workloads: [{name: a, namespace: 'b c'}]", "workloads[0] (b c/a): trustDomain/namespace/serviceAccount"),
        ("services: [{name: s, namespace: ns, hostname: h, vips: [/not-an-ip]}]", "services[0].vips: \"/not-an-ip\" is not \"network/ip\""),
        (
            "services: [{name: s, namespace: ns, hostname: h, subjectAltNames: [nonsense]}]",
            "services[0] (ns/s): subjectAltNames",
        ),
        (
            "policies: [{name: p, namespace: ns, scope: Namespace, action: Allow, rules: [[[{principal: [!Exact x]}]]]}]",
            "unknown field `principal`",
        ),
        ("policies: [{name: p, namespace: ns, scope: Cluster, action: Allow}]", "unknown variant `Cluster`"),
        ("policies: [{name: p, namespace: ns, scope: Namespace, action: Allow, rules: [[[{sourceIps: [10.0.0.0/33]}]]]}]", "policies[0]"),
        ("workload: []", "unknown field `workload`"),
    ];
    for (yaml, want) in cases {
        let err = parse(yaml, "cluster.local").expect_err(yaml);
        assert!(
            err.contains(want),
            "for {yaml}\n  got:  {err}\n  want: {want}"
        );
    }
}

#[test]
fn empty_file_is_an_empty_mesh() {
    let c = parse("  \n", "cluster.local").unwrap();
    assert!(c.workloads.is_empty() && c.services.is_empty() && c.policies.is_empty());
}

const EGRESS: &str = r#"
workloads:
- {name: client, namespace: shop, workloadIps: ["10.1.0.2"]}
egressPolicies:
- name: cilium-egress-client
  namespace: shop
  workloads: [shop/client]
  action: Allow
  rules:
  - to:
    - workloads: ["10.1.0.5"]
    - cidr: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}
    - service: {namespace: shop, name: cart}
    - fqdn: {matchPattern: "*.example.com"}
    - entity: world
    ports: [{port: 80}, {port: 9000, endPort: 9010}]
- {name: no-ssh, namespace: shop, workloads: [shop/client], action: Deny, rules: [{ports: [{port: 22}]}]}
"#;

#[test]
fn egress_policies_parse_in_the_local_file() {
    let c = parse(EGRESS, "cluster.local").unwrap();
    assert_eq!(c.egress_policies.len(), 2);
    assert!(
        c.egress_policies[0].default_deny,
        "true unless written false"
    );
    assert_eq!(c.egress_policies[0].rules[0].to.len(), 5);
}

#[test]
fn bad_egress_policies_are_refused_by_entry_and_field() {
    let err = |yaml: &str| parse(yaml, "cluster.local").unwrap_err();
    let e = err(&EGRESS.replace("endPort: 9010", "endPort: 8000"));
    assert!(
        e.contains("egressPolicies[0] (shop/cilium-egress-client): rules[0].ports[1]: endPort 8000 is below port 9000"),
        "{e}"
    );
    let e = err(&EGRESS.replace(
        "workloads: [shop/client], action: Deny",
        "workloads: [shop/gone], action: Deny",
    ));
    assert!(
        e.contains(
            "egressPolicies[1] (shop/no-ssh): workloads: \"shop/gone\" is no workload's uid"
        ),
        "{e}"
    );
    let e = err(&EGRESS.replace("matchPattern", "matchPatern"));
    assert!(e.contains("matchPatern"), "{e}");
    let e = err(&EGRESS.replace(
        "action: Deny, rules",
        "action: Deny, defaultDeny: false, rulez",
    ));
    assert!(e.contains("rulez"), "{e}");
    let e = err(&EGRESS.replace("name: no-ssh", "name: cilium-egress-client"));
    assert!(e.contains("also defined by egressPolicies[0]"), "{e}");
}

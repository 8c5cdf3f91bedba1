//! Table tests for the egress engine: every peer kind, ports and ranges, DENY over ALLOW,
//! default deny on and off, rules and policies without rules, FQDN names and patterns, and
//! validation messages.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::*;

fn compile(json: &str) -> CompiledEgress {
    let list: Vec<EgressPolicy> =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("bad test policy: {e}\n{json}"));
    for p in &list {
        p.validate().unwrap();
    }
    CompiledEgress::new(list.into_iter().map(Arc::new).collect())
}

fn allow(rules: &str) -> String {
    format!(
        r#"[{{"name": "a", "namespace": "shop", "workloads": ["shop/client"], "action": "Allow", "rules": {rules}}}]"#
    )
}

/// What the fake lookup knows: names resolved (name -> ips) and the Services the endpoint
/// backs.
#[derive(Default)]
struct Known {
    names: HashMap<&'static str, Vec<IpAddr>>,
    backs: Vec<(&'static str, &'static str)>,
}

impl EgressLookup for Known {
    fn resolved(&self, ip: IpAddr, matches: &dyn Fn(&str) -> bool) -> bool {
        self.names
            .iter()
            .any(|(n, ips)| ips.contains(&ip) && matches(n))
    }
    fn endpoint_services(&self, each: &mut dyn FnMut(&str, &str)) {
        for (ns, n) in &self.backs {
            each(ns, n)
        }
    }
}

/// A connection: dialled address, VIP service, endpoint ip:port, known to the mesh.
struct Conn {
    dialled: &'static str,
    service: Option<(&'static str, &'static str)>,
    endpoint: Option<&'static str>,
    known: bool,
}

fn to(dialled: &'static str) -> Conn {
    Conn {
        dialled,
        service: None,
        endpoint: None,
        known: false,
    }
}

fn pod(addr: &'static str) -> Conn {
    Conn {
        dialled: addr,
        service: None,
        endpoint: Some(addr),
        known: true,
    }
}

fn vip(dialled: &'static str, svc: &'static str, endpoint: &'static str) -> Conn {
    Conn {
        dialled,
        service: Some(("shop", svc)),
        endpoint: Some(endpoint),
        known: true,
    }
}

fn decide_with(c: &CompiledEgress, conn: &Conn, lookup: &Known) -> EgressDecision {
    let ep = conn.endpoint.map(|e| e.parse::<SocketAddr>().unwrap());
    c.decide(&EgressRequest {
        dialled: conn.dialled.parse().unwrap(),
        service: conn
            .service
            .map(|(namespace, name)| ServiceRef { namespace, name }),
        endpoint: ep.map(|e| e.ip()),
        target_port: ep.map(|e| e.port()),
        known: conn.known,
        lookup,
    })
}

fn allowed(c: &CompiledEgress, conn: &Conn) -> bool {
    decide_with(c, conn, &Known::default()).allowed()
}

#[test]
fn every_peer_kind_against_matching_and_other_destinations() {
    // (rules, connection, allowed?)
    let cases: Vec<(&str, Conn, bool)> = vec![
        (
            r#"[{"to": [{"workloads": ["10.1.0.5"]}]}]"#,
            pod("10.1.0.5:80"),
            true,
        ),
        (
            r#"[{"to": [{"workloads": ["10.1.0.5"]}]}]"#,
            pod("10.1.0.6:80"),
            false,
        ),
        // Through a Service VIP, the endpoint chosen is what a workload peer compares.
        (
            r#"[{"to": [{"workloads": ["10.1.0.5"]}]}]"#,
            vip("10.96.0.1:80", "cart", "10.1.0.5:8080"),
            true,
        ),
        (
            r#"[{"to": [{"cidr": {"cidr": "192.0.2.0/24"}}]}]"#,
            to("192.0.2.9:443"),
            true,
        ),
        (
            r#"[{"to": [{"cidr": {"cidr": "192.0.2.0/24"}}]}]"#,
            to("198.51.100.1:443"),
            false,
        ),
        (
            r#"[{"to": [{"cidr": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}]}]"#,
            to("192.0.2.9:443"),
            true,
        ),
        (
            r#"[{"to": [{"cidr": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}]}]"#,
            to("192.0.2.200:443"),
            false,
        ),
        (
            r#"[{"to": [{"cidr": {"cidr": "2001:db8::/32"}}]}]"#,
            to("[2001:db8::1]:443"),
            true,
        ),
        (
            r#"[{"to": [{"cidr": {"cidr": "2001:db8::/32"}}]}]"#,
            to("192.0.2.1:443"),
            false,
        ),
        (
            r#"[{"to": [{"cidr": {"cidr": "0.0.0.0/0"}}]}]"#,
            to("8.8.8.8:53"),
            true,
        ),
        (
            r#"[{"to": [{"service": {"namespace": "shop", "name": "cart"}}]}]"#,
            vip("10.96.0.1:80", "cart", "10.1.0.5:8080"),
            true,
        ),
        (
            r#"[{"to": [{"service": {"namespace": "shop", "name": "cart"}}]}]"#,
            vip("10.96.0.2:80", "db", "10.1.0.7:5432"),
            false,
        ),
        (
            r#"[{"to": [{"service": {"namespace": "other", "name": "cart"}}]}]"#,
            vip("10.96.0.1:80", "cart", "10.1.0.5:8080"),
            false,
        ),
        (r#"[{"to": [{"entity": "all"}]}]"#, to("8.8.8.8:53"), true),
        (
            r#"[{"to": [{"entity": "cluster"}]}]"#,
            pod("10.1.0.5:80"),
            true,
        ),
        (
            r#"[{"to": [{"entity": "cluster"}]}]"#,
            to("8.8.8.8:53"),
            false,
        ),
        (r#"[{"to": [{"entity": "world"}]}]"#, to("8.8.8.8:53"), true),
        (
            r#"[{"to": [{"entity": "world"}]}]"#,
            pod("10.1.0.5:80"),
            false,
        ),
        // A rule with no peers and no ports matches everything.
        (r#"[{}]"#, to("8.8.8.8:53"), true),
        // Peers are ORed.
        (
            r#"[{"to": [{"workloads": ["10.1.0.5"]}, {"entity": "world"}]}]"#,
            to("8.8.8.8:53"),
            true,
        ),
        (
            r#"[{"to": [{"workloads": ["10.1.0.5"]}, {"cidr": {"cidr": "8.8.8.0/24"}}]}]"#,
            to("8.8.8.8:53"),
            true,
        ),
        (
            r#"[{"to": [{"workloads": ["10.1.0.5"]}, {"cidr": {"cidr": "8.8.8.0/24"}}]}]"#,
            to("9.9.9.9:53"),
            false,
        ),
    ];
    for (i, (rules, conn, want)) in cases.iter().enumerate() {
        let c = compile(&allow(rules));
        assert_eq!(
            allowed(&c, conn),
            *want,
            "case {i}: {rules} to {}",
            conn.dialled
        );
    }
}

#[test]
fn a_service_peer_also_matches_its_endpoints_dialled_directly() {
    let c = compile(&allow(
        r#"[{"to": [{"service": {"namespace": "shop", "name": "cart"}}]}]"#,
    ));
    let backs = Known {
        backs: vec![("shop", "cart")],
        ..Known::default()
    };
    assert!(decide_with(&c, &pod("10.1.0.5:8080"), &backs).allowed());
    assert!(!decide_with(&c, &pod("10.1.0.5:8080"), &Known::default()).allowed());
}

#[test]
fn ports_and_ranges_compare_the_endpoint_port_when_resolved() {
    let c = compile(&allow(
        r#"[{"ports": [{"port": 8080}, {"port": 9000, "endPort": 9010}]}]"#,
    ));
    // (connection, allowed?)
    let cases = [
        (pod("10.1.0.5:8080"), true),
        (pod("10.1.0.5:8081"), false),
        (pod("10.1.0.5:9000"), true),
        (pod("10.1.0.5:9005"), true),
        (pod("10.1.0.5:9010"), true),
        (pod("10.1.0.5:9011"), false),
        // VIP port 80 maps to 8080 on the endpoint: the target port counts.
        (vip("10.96.0.1:80", "cart", "10.1.0.5:8080"), true),
        (vip("10.96.0.1:8080", "cart", "10.1.0.5:80"), false),
        // Passthrough: the dialled port.
        (to("192.0.2.1:8080"), true),
        (to("192.0.2.1:443"), false),
    ];
    for (conn, want) in cases {
        assert_eq!(allowed(&c, &conn), want, "{}", conn.dialled);
    }
    // Peers and ports are ANDed.
    let c = compile(&allow(
        r#"[{"to": [{"workloads": ["10.1.0.5"]}], "ports": [{"port": 80}]}]"#,
    ));
    assert!(allowed(&c, &pod("10.1.0.5:80")));
    assert!(!allowed(&c, &pod("10.1.0.5:81")));
    assert!(!allowed(&c, &pod("10.1.0.6:80")));
}

#[test]
fn deny_wins_over_allow_and_names_policy_and_rule() {
    let c = compile(
        r#"[
        {"name": "a", "namespace": "shop", "workloads": ["shop/client"], "action": "Allow", "rules": [{}]},
        {"name": "no-metadata", "namespace": "shop", "workloads": ["shop/client"], "action": "Deny",
         "rules": [{"ports": [{"port": 22}]}, {"to": [{"cidr": {"cidr": "169.254.169.254/32"}}]}]}
    ]"#,
    );
    let d = decide_with(&c, &to("169.254.169.254:80"), &Known::default());
    assert!(!d.allowed());
    assert_eq!(
        d.reason,
        EgressReason::DeniedBy {
            policy: "shop/no-metadata".into(),
            rule: 1
        }
    );
    assert_eq!(
        d.reason.to_string(),
        "denied by egress DENY policy shop/no-metadata rule 1"
    );
    assert_eq!(d.policy(), "shop/no-metadata");
    let d = decide_with(&c, &to("192.0.2.1:80"), &Known::default());
    assert_eq!(
        d.reason,
        EgressReason::AllowedBy {
            policy: "shop/a".into(),
            rule: 0
        }
    );
}

#[test]
fn default_deny_off_and_deny_only_policies_leave_the_rest_allowed() {
    let no_default = r#"[{"name": "a", "namespace": "shop", "workloads": ["w"], "action": "Allow", "defaultDeny": false,
        "rules": [{"to": [{"workloads": ["10.1.0.5"]}]}]}]"#;
    let c = compile(no_default);
    let d = decide_with(&c, &to("192.0.2.1:80"), &Known::default());
    assert!(d.allowed());
    assert_eq!(d.reason, EgressReason::Unrestricted);
    let deny_only = r#"[{"name": "d", "namespace": "shop", "workloads": ["w"], "action": "Deny",
        "rules": [{"to": [{"entity": "world"}]}]}]"#;
    let c = compile(deny_only);
    assert!(allowed(&c, &pod("10.1.0.5:80")));
    assert!(!allowed(&c, &to("192.0.2.1:80")));
    // With a default-deny policy beside it, the non-default-deny policy's rules do allow.
    let both = r#"[
        {"name": "a", "namespace": "shop", "workloads": ["w"], "action": "Allow", "defaultDeny": false,
         "rules": [{"to": [{"workloads": ["10.1.0.5"]}]}]},
        {"name": "b", "namespace": "shop", "workloads": ["w"], "action": "Allow", "rules": [{"ports": [{"port": 53}]}]}
    ]"#;
    let c = compile(both);
    assert!(allowed(&c, &pod("10.1.0.5:80")));
    assert!(allowed(&c, &to("192.0.2.1:53")));
    let d = decide_with(&c, &to("192.0.2.1:80"), &Known::default());
    assert_eq!(d.reason, EgressReason::DefaultDeny("shop/b".into()));
    assert_eq!(d.reason.to_string(), "default deny by shop/b");
}

#[test]
fn policies_without_rules() {
    // An ALLOW policy without rules allows nothing, and default-denies.
    let c =
        compile(r#"[{"name": "a", "namespace": "shop", "workloads": ["w"], "action": "Allow"}]"#);
    let d = decide_with(&c, &pod("10.1.0.5:80"), &Known::default());
    assert_eq!(d.reason, EgressReason::DefaultDeny("shop/a".into()));
    // A DENY policy without rules denies nothing.
    let c =
        compile(r#"[{"name": "d", "namespace": "shop", "workloads": ["w"], "action": "Deny"}]"#);
    assert!(allowed(&c, &pod("10.1.0.5:80")));
    // Nothing at all.
    let c = CompiledEgress::new(Vec::new());
    assert!(allowed(&c, &to("192.0.2.1:1")));
    // Two default-deny policies are both named.
    let c = compile(
        r#"[{"name": "a", "namespace": "shop", "workloads": ["w"], "action": "Allow"},
            {"name": "b", "namespace": "shop", "workloads": ["w"], "action": "Allow"}]"#,
    );
    let d = decide_with(&c, &pod("10.1.0.5:80"), &Known::default());
    assert_eq!(d.reason.to_string(), "default deny by shop/a,shop/b");
}

#[test]
fn fqdn_peers_ask_which_names_the_source_resolved_to_the_dialled_address() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let lookup = Known {
        names: HashMap::from([
            ("api.example.com", vec![ip("192.0.2.10")]),
            ("a.b.example.com", vec![ip("192.0.2.11")]),
            ("example.com", vec![ip("192.0.2.12")]),
            ("www.other.org", vec![ip("192.0.2.13")]),
        ]),
        ..Known::default()
    };
    // (selector, dialled, allowed?)
    let cases = [
        (
            r#"{"matchName": "api.example.com"}"#,
            "192.0.2.10:443",
            true,
        ),
        (
            r#"{"matchName": "API.Example.com."}"#,
            "192.0.2.10:443",
            true,
        ),
        (
            r#"{"matchName": "api.example.com"}"#,
            "192.0.2.11:443",
            false,
        ),
        (
            r#"{"matchName": "api.example.com"}"#,
            "192.0.2.99:443",
            false,
        ),
        (
            r#"{"matchPattern": "*.example.com"}"#,
            "192.0.2.10:443",
            true,
        ),
        (
            r#"{"matchPattern": "*.example.com"}"#,
            "192.0.2.11:443",
            false,
        ),
        (
            r#"{"matchPattern": "*.example.com"}"#,
            "192.0.2.12:443",
            false,
        ),
        (
            r#"{"matchPattern": "**.example.com"}"#,
            "192.0.2.10:443",
            true,
        ),
        (
            r#"{"matchPattern": "**.example.com"}"#,
            "192.0.2.11:443",
            true,
        ),
        (
            r#"{"matchPattern": "**.example.com"}"#,
            "192.0.2.12:443",
            false,
        ),
        (
            r#"{"matchPattern": "a*.example.com"}"#,
            "192.0.2.10:443",
            true,
        ),
        (
            r#"{"matchPattern": "*i.example.com"}"#,
            "192.0.2.10:443",
            true,
        ),
        (
            r#"{"matchPattern": "b*.example.com"}"#,
            "192.0.2.10:443",
            false,
        ),
        (r#"{"matchPattern": "*"}"#, "192.0.2.13:443", true),
        (r#"{"matchPattern": "*"}"#, "192.0.2.99:443", false),
        (r#"{"matchPattern": "www.*.org"}"#, "192.0.2.13:443", true),
        (
            r#"{"matchName": "nothing.example", "matchPattern": "*.other.org"}"#,
            "192.0.2.13:443",
            true,
        ),
    ];
    for (selector, dialled, want) in cases {
        let c = compile(&allow(&format!(r#"[{{"to": [{{"fqdn": {selector}}}]}}]"#)));
        assert!(c.has_fqdn());
        assert_eq!(
            decide_with(&c, &to(dialled), &lookup).allowed(),
            want,
            "{selector} {dialled}"
        );
    }
    let c = compile(&allow(r#"[{"to": [{"workloads": ["10.0.0.1"]}]}]"#));
    assert!(!c.has_fqdn());
}

#[test]
fn name_patterns_match_as_cilium_documents() {
    let p = |s: &str| NameMatcher::pattern(s).unwrap();
    assert!(p("*.example.com").matches("a.example.com"));
    assert!(!p("*.example.com").matches("a.b.example.com"));
    assert!(p("**.example.com").matches("a.b.c.example.com"));
    assert!(p("*.EXAMPLE.com").matches("x.example.com."));
    assert!(p("s*b*.example.com").matches("sub.example.com"));
    assert!(p("*ub*.example.com").matches("sub.example.com"));
    assert!(!p("a*").matches("ba"));
    // Many stars on a long label stay quick (no exponential backtracking).
    let long = "a".repeat(63);
    let many = format!("{}b", "*a".repeat(20));
    assert!(!NameMatcher::pattern(&many).unwrap().matches(&long));
}

#[test]
fn invalid_policies_are_refused_by_field() {
    let bad = |json: &str| -> String {
        let p: EgressPolicy = serde_json::from_str(json).unwrap();
        p.validate().unwrap_err()
    };
    let base = |rules: &str| {
        format!(
            r#"{{"name": "a", "namespace": "shop", "workloads": [], "action": "Allow", "rules": {rules}}}"#
        )
    };
    assert_eq!(
        bad(&base(r#"[{"ports": [{"port": 90, "endPort": 80}]}]"#)),
        "rules[0].ports[0]: endPort 80 is below port 90"
    );
    assert_eq!(
        bad(&base(r#"[{}, {"to": [{"fqdn": {}}]}]"#)),
        "rules[1].to[0]: fqdn: one of matchName or matchPattern is required"
    );
    assert!(bad(&base(
        r#"[{"to": [{"fqdn": {"matchPattern": "a.**.com"}}]}]"#
    ))
    .contains("`**`"));
    assert!(bad(&base(r#"[{"to": [{"fqdn": {"matchName": "a b.com"}}]}]"#)).contains("matchName"));
    assert!(bad(&base(r#"[{"to": [{"fqdn": {"matchName": "a..com"}}]}]"#)).contains("empty label"));
    assert_eq!(
        bad(&base(
            r#"[{"to": [{"cidr": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]}]"#
        )),
        "rules[0].to[0]: cidr 10.0.0.0/8: except 11.0.0.0/8 is not inside it"
    );
    assert!(bad(&base(
        r#"[{"to": [{"service": {"namespace": "", "name": "x"}}]}]"#
    ))
    .contains("service"));
    assert!(
        bad(r#"{"name": "", "namespace": "shop", "workloads": [], "action": "Deny"}"#)
            .contains("name")
    );
    // Unknown fields are refused by serde, naming them.
    let e = serde_json::from_str::<EgressPolicy>(
        r#"{"name": "a", "namespace": "s", "workloads": [], "action": "Deny", "rulez": []}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("rulez"), "{e}");
}

#[test]
fn the_model_round_trips_through_json() {
    let json = r#"{"name":"a","namespace":"shop","workloads":["shop/client"],"action":"Allow","defaultDeny":true,"rules":[{"to":[{"workloads":["10.1.0.5"]},{"cidr":{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}},{"service":{"namespace":"shop","name":"cart"}},{"fqdn":{"matchPattern":"*.example.com"}},{"entity":"world"}],"ports":[{"port":80},{"port":9000,"endPort":9010}]}]}"#;
    let p: EgressPolicy = serde_json::from_str(json).unwrap();
    assert_eq!(serde_json::to_string(&p).unwrap(), json);
}

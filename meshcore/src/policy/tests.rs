//! Table tests for the L4 policy engine: every match field, its `not` form, the structural
//! rules (empty rules, clauses, matches) and the DENY → ALLOW ordering.

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;

const SLEEP: &str = "cluster.local/ns/default/sa/sleep";
const OTHER: &str = "cluster.local/ns/other/sa/client";

fn policies(yaml: &str) -> CompiledPolicies {
    let parsed: Vec<Authorization> =
        serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("bad test policy: {e}\n{yaml}"));
    CompiledPolicies::new(parsed.into_iter().map(Arc::new).collect())
}

/// Decides a connection from `src` (with identity `principal`, if any) to `dst`.
fn decide(p: &CompiledPolicies, principal: Option<&str>, src: &str, dst: &str) -> Decision {
    let id = principal.map(|p| SpiffeId::from_principal(p).unwrap());
    let conn = Connection {
        source_ip: src.parse().unwrap(),
        destination: dst.parse::<SocketAddr>().unwrap(),
        identity: id.as_ref(),
        principal,
    };
    // Every case also checks that `authz explain`'s trace agrees with the engine.
    let explained = super::explain::explain(p, &conn);
    let decision = p.decide(&conn);
    assert_eq!(
        explained.verdict,
        if decision.allowed() { "ALLOW" } else { "DENY" }
    );
    assert_eq!(
        super::explain::implied(&explained.policies),
        explained.verdict
    );
    decision
}

fn allow(yaml_match: &str) -> String {
    format!("- {{name: p, namespace: default, scope: Namespace, action: Allow, rules: [[[{yaml_match}]]]}}")
}

#[test]
fn every_match_field_and_its_not_form() {
    // (match, principal, source, destination, allowed?)
    let cases: &[(&str, Option<&str>, &str, &str, bool)] = &[
        (
            "{principals: [!Exact cluster.local/ns/default/sa/sleep]}",
            Some(SLEEP),
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        (
            "{principals: [!Exact cluster.local/ns/default/sa/sleep]}",
            Some(OTHER),
            "10.0.0.1",
            "10.0.0.2:80",
            false,
        ),
        (
            "{principals: [!Exact cluster.local/ns/default/sa/sleep]}",
            None,
            "10.0.0.1",
            "10.0.0.2:80",
            false,
        ),
        (
            "{principals: [!Prefix cluster.local/ns/default/]}",
            Some(SLEEP),
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        (
            "{principals: [!Prefix cluster.local/ns/default/]}",
            Some(OTHER),
            "10.0.0.1",
            "10.0.0.2:80",
            false,
        ),
        (
            "{principals: [!Suffix /sa/sleep]}",
            Some(SLEEP),
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        (
            "{principals: [!Suffix /sa/sleep]}",
            Some(OTHER),
            "10.0.0.1",
            "10.0.0.2:80",
            false,
        ),
        (
            "{principals: [!Presence []]}",
            Some(OTHER),
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        (
            "{principals: [!Presence []]}",
            None,
            "10.0.0.1",
            "10.0.0.2:80",
            false,
        ),
        (
            "{notPrincipals: [!Exact cluster.local/ns/default/sa/sleep]}",
            Some(SLEEP),
            "10.0.0.1",
            "10.0.0.2:80",
            false,
        ),
        (
            "{notPrincipals: [!Exact cluster.local/ns/default/sa/sleep]}",
            Some(OTHER),
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        (
            "{notPrincipals: [!Exact cluster.local/ns/default/sa/sleep]}",
            None,
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        (
            "{namespaces: [!Exact default]}",
            Some(SLEEP),
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        (
            "{namespaces: [!Exact default]}",
            Some(OTHER),
            "10.0.0.1",
            "10.0.0.2:80",
            false,
        ),
        (
            "{namespaces: [!Exact default]}",
            None,
            "10.0.0.1",
            "10.0.0.2:80",
            false,
        ),
        (
            "{namespaces: [!Prefix oth]}",
            Some(OTHER),
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        (
            "{notNamespaces: [!Exact default]}",
            Some(SLEEP),
            "10.0.0.1",
            "10.0.0.2:80",
            false,
        ),
        (
            "{notNamespaces: [!Exact default]}",
            Some(OTHER),
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        (
            "{serviceAccounts: [{namespace: default, serviceAccount: sleep}]}",
            Some(SLEEP),
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        (
            "{serviceAccounts: [{namespace: other, serviceAccount: sleep}]}",
            Some(SLEEP),
            "10.0.0.1",
            "10.0.0.2:80",
            false,
        ),
        (
            "{serviceAccounts: [{namespace: default, serviceAccount: sleep}]}",
            None,
            "10.0.0.1",
            "10.0.0.2:80",
            false,
        ),
        (
            "{notServiceAccounts: [{namespace: default, serviceAccount: sleep}]}",
            Some(SLEEP),
            "10.0.0.1",
            "10.0.0.2:80",
            false,
        ),
        (
            "{notServiceAccounts: [{namespace: default, serviceAccount: sleep}]}",
            Some(OTHER),
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        (
            "{sourceIps: [10.0.0.0/24]}",
            None,
            "10.0.0.9",
            "10.0.0.2:80",
            true,
        ),
        (
            "{sourceIps: [10.0.0.0/24]}",
            None,
            "10.0.1.9",
            "10.0.0.2:80",
            false,
        ),
        (
            "{sourceIps: ['fd00::/64']}",
            None,
            "fd00::7",
            "[fd00::2]:80",
            true,
        ),
        (
            "{notSourceIps: [10.0.0.9/32]}",
            None,
            "10.0.0.9",
            "10.0.0.2:80",
            false,
        ),
        (
            "{notSourceIps: [10.0.0.9/32]}",
            None,
            "10.0.0.8",
            "10.0.0.2:80",
            true,
        ),
        (
            "{destinationIps: [10.0.0.2/32]}",
            None,
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        (
            "{destinationIps: [10.0.0.2/32]}",
            None,
            "10.0.0.1",
            "10.0.0.3:80",
            false,
        ),
        (
            "{notDestinationIps: [10.0.0.0/8]}",
            None,
            "10.0.0.1",
            "10.0.0.3:80",
            false,
        ),
        (
            "{destinationPorts: [80, 8080]}",
            None,
            "10.0.0.1",
            "10.0.0.2:8080",
            true,
        ),
        (
            "{destinationPorts: [80, 8080]}",
            None,
            "10.0.0.1",
            "10.0.0.2:9090",
            false,
        ),
        (
            "{notDestinationPorts: [9999]}",
            None,
            "10.0.0.1",
            "10.0.0.2:9999",
            false,
        ),
        (
            "{notDestinationPorts: [9999]}",
            None,
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        // Fields inside one match are ANDed.
        (
            "{namespaces: [!Exact default], destinationPorts: [80]}",
            Some(SLEEP),
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        (
            "{namespaces: [!Exact default], destinationPorts: [80]}",
            Some(SLEEP),
            "10.0.0.1",
            "10.0.0.2:81",
            false,
        ),
        (
            "{principals: [!Exact cluster.local/ns/default/sa/sleep], notSourceIps: [10.0.0.1/32]}",
            Some(SLEEP),
            "10.0.0.1",
            "10.0.0.2:80",
            false,
        ),
        // Positive and negative of the same field.
        (
            "{namespaces: [!Prefix d], notNamespaces: [!Exact default]}",
            Some(SLEEP),
            "10.0.0.1",
            "10.0.0.2:80",
            false,
        ),
        // Without an identity no principal condition holds, even an empty prefix (as Istio);
        // the namespace is "" then.
        (
            "{principals: [!Prefix '']}",
            None,
            "10.0.0.1",
            "10.0.0.2:80",
            false,
        ),
        (
            "{principals: [!Prefix '']}",
            Some(SLEEP),
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        (
            "{namespaces: [!Exact '']}",
            None,
            "10.0.0.1",
            "10.0.0.2:80",
            true,
        ),
        // An empty match matches nothing.
        ("{}", Some(SLEEP), "10.0.0.1", "10.0.0.2:80", false),
    ];
    for (m, principal, src, dst, want) in cases {
        let p = policies(&allow(m));
        let d = decide(&p, *principal, src, dst);
        assert_eq!(
            d.allowed(),
            *want,
            "match {m} for {principal:?} {src} -> {dst}: {:?}",
            d.reason
        );
    }
}

#[test]
fn structure_rules_clauses_matches() {
    let base = "name: p, namespace: default, scope: Namespace, action: Allow";
    let cases: &[(&str, Option<&str>, &str, bool)] = &[
        // ALLOW with no rules (`spec: {}`) allows nothing.
        ("rules: []", Some(SLEEP), "10.0.0.2:80", false),
        // One rule with no clauses (`rules: [{}]`) allows everything.
        ("rules: [[]]", None, "10.0.0.2:80", true),
        // An empty clause is no condition.
        (
            "rules: [[[], [{destinationPorts: [80]}]]]",
            None,
            "10.0.0.2:80",
            true,
        ),
        // Clauses are ANDed (from + to).
        (
            "rules: [[[{namespaces: [!Exact default]}], [{destinationPorts: [80]}]]]",
            Some(SLEEP),
            "10.0.0.2:80",
            true,
        ),
        (
            "rules: [[[{namespaces: [!Exact default]}], [{destinationPorts: [80]}]]]",
            Some(OTHER),
            "10.0.0.2:80",
            false,
        ),
        (
            "rules: [[[{namespaces: [!Exact default]}], [{destinationPorts: [80]}]]]",
            Some(SLEEP),
            "10.0.0.2:81",
            false,
        ),
        // Matches of a clause are ORed.
        (
            "rules: [[[{namespaces: [!Exact default]}, {namespaces: [!Exact other]}]]]",
            Some(OTHER),
            "10.0.0.2:80",
            true,
        ),
        // Rules are ORed.
        (
            "rules: [[[{destinationPorts: [81]}]], [[{destinationPorts: [80]}]]]",
            None,
            "10.0.0.2:80",
            true,
        ),
        (
            "rules: [[[{destinationPorts: [81]}]], [[{destinationPorts: [82]}]]]",
            None,
            "10.0.0.2:80",
            false,
        ),
    ];
    for (rules, principal, dst, want) in cases {
        let p = policies(&format!("- {{{base}, {rules}}}"));
        let d = decide(&p, *principal, "10.0.0.1", dst);
        assert_eq!(
            d.allowed(),
            *want,
            "{rules} for {principal:?} -> {dst}: {:?}",
            d.reason
        );
    }
}

#[test]
fn deny_before_allow_and_naming_the_policy() {
    let p = policies(
        r#"
- {name: allow-all, namespace: default, scope: Namespace, action: Allow, rules: [[]]}
- {name: deny-other, namespace: default, scope: Namespace, action: Deny,
   rules: [[[{namespaces: [!Exact other]}]]]}
- {name: deny-9999, namespace: istio-system, scope: Global, action: Deny,
   rules: [[[{destinationPorts: [9999]}]]]}
"#,
    );
    let d = decide(&p, Some(SLEEP), "10.0.0.1", "10.0.0.2:80");
    assert_eq!(
        (d.verdict, d.reason),
        (
            Verdict::Allow,
            Reason::AllowedBy("default/allow-all".into())
        )
    );
    let d = decide(&p, Some(OTHER), "10.0.0.1", "10.0.0.2:80");
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Deny, Reason::DeniedBy("default/deny-other".into()))
    );
    let d = decide(&p, Some(SLEEP), "10.0.0.1", "10.0.0.2:9999");
    assert_eq!(d.reason, Reason::DeniedBy("istio-system/deny-9999".into()));
    // Both DENYs match: the first in order is named.
    let d = decide(&p, Some(OTHER), "10.0.0.1", "10.0.0.2:9999");
    assert_eq!(d.reason, Reason::DeniedBy("default/deny-other".into()));
}

#[test]
fn no_policies_allow_and_unmatched_allow_denies() {
    let none = CompiledPolicies::new(Vec::new());
    assert_eq!(
        decide(&none, None, "10.0.0.1", "10.0.0.2:80").reason,
        Reason::NoAllowPolicies
    );
    // Only DENY policies, none matching: allowed.
    let p = policies("- {name: d, namespace: default, scope: Namespace, action: Deny, rules: [[[{destinationPorts: [1]}]]]}");
    assert_eq!(
        decide(&p, None, "10.0.0.1", "10.0.0.2:80").reason,
        Reason::NoAllowPolicies
    );
    let p = policies(&allow("{destinationPorts: [1]}"));
    let reason = decide(&p, None, "10.0.0.1", "10.0.0.2:80").reason;
    assert_eq!(
        reason,
        Reason::NoAllowMatched(vec![Arc::from("default/p")].into())
    );
    assert_eq!(
        reason.to_string(),
        "denied: no ALLOW policy matched (default/p)"
    );
}

#[test]
fn strict_peer_authentication_form_refuses_plaintext() {
    // How STRICT PeerAuthentication reaches ztunnel: DENY whatever has no principal.
    let p = policies(
        "- {name: istio_converted_static_strict, namespace: istio-system, scope: Global, action: Deny, rules: [[[{notPrincipals: [!Presence []]}]]]}",
    );
    assert!(!decide(&p, None, "10.0.0.1", "10.0.0.2:80").allowed());
    assert!(decide(&p, Some(SLEEP), "10.0.0.1", "10.0.0.2:80").allowed());
}

#[test]
fn dry_run_policies_are_reported_not_enforced() {
    let p = policies(
        "- {name: would-deny, namespace: default, scope: Namespace, action: Deny, dryRun: true, rules: [[[{namespaces: [!Exact other]}]]]}",
    );
    let d = decide(&p, Some(OTHER), "10.0.0.1", "10.0.0.2:80");
    assert!(d.allowed());
    assert_eq!(
        d.dry_run,
        Some((Verdict::Deny, Reason::DeniedBy("default/would-deny".into())))
    );
    // Same verdict either way: nothing to report.
    assert_eq!(
        decide(&p, Some(SLEEP), "10.0.0.1", "10.0.0.2:80").dry_run,
        None
    );
    // A dry-run ALLOW does not turn the workload into allow-list mode.
    let p = policies(
        "- {name: a, namespace: default, scope: Namespace, action: Allow, dryRun: true, rules: [[[{destinationPorts: [1]}]]]}",
    );
    let d = decide(&p, None, "10.0.0.1", "10.0.0.2:80");
    assert!(d.allowed());
    assert_eq!(d.dry_run.map(|x| x.0), Some(Verdict::Deny));
}

#[test]
fn index_agrees_with_linear_evaluation() {
    // Many policies filed under different keys; compare against evaluating every rule.
    let mut yaml = String::new();
    for i in 0..200 {
        let m = match i % 8 {
            0 => format!("{{principals: [!Exact cluster.local/ns/ns{i}/sa/sa]}}"),
            1 => format!("{{namespaces: [!Exact ns{i}]}}"),
            2 => format!("{{destinationPorts: [{}]}}", 1000 + i),
            3 => format!("{{principals: [!Prefix cluster.local/ns/ns{i}/]}}"),
            4 => format!("{{serviceAccounts: [{{namespace: ns{i}, serviceAccount: sa}}]}}"),
            5 => format!(
                "{{principals: [!Exact x/ns/y/sa/z]}}, {{sourceIps: [10.{}.1.0/24]}}",
                i % 256
            ),
            6 => format!("{{principals: [!Suffix /ns{i}/sa/sa]}}"),
            _ => format!("{{sourceIps: [10.{}.0.0/16]}}", i % 256),
        };
        let action = if i % 7 == 0 { "Deny" } else { "Allow" };
        yaml.push_str(&format!(
            "- {{name: p{i}, namespace: default, scope: Namespace, action: {action}, rules: [[[{m}]]]}}\n"
        ));
    }
    let compiled = policies(&yaml);
    for i in 0..200 {
        let principal = format!("cluster.local/ns/ns{i}/sa/sa");
        let src = format!("10.{}.1.1", i % 256);
        let dst = format!("10.0.0.2:{}", 1000 + i);
        let got = decide(&compiled, Some(&principal), &src, &dst);
        let id = SpiffeId::from_principal(&principal).unwrap();
        let conn = Connection {
            source_ip: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
            identity: Some(&id),
            principal: Some(&principal),
        };
        let linear = |action: Action| {
            compiled.policies().iter().find(|p| {
                p.action == action
                    && p.rules.iter().any(|r| {
                        r.iter()
                            .all(|c| c.is_empty() || c.iter().any(|m| m.matches(&conn)))
                    })
            })
        };
        let want = match (linear(Action::Deny), linear(Action::Allow)) {
            (Some(d), _) => Reason::DeniedBy(d.key().into()),
            (None, Some(a)) => Reason::AllowedBy(a.key().into()),
            (None, None) => Reason::NoAllowMatched(
                compiled
                    .policies()
                    .iter()
                    .filter(|p| p.action == Action::Allow)
                    .map(|p| Arc::from(p.key()))
                    .collect(),
            ),
        };
        assert_eq!(got.reason, want, "connection {conn}");
    }
}

#[test]
fn unknown_keys_inside_a_match_are_refused() {
    let err = serde_yaml_ng::from_str::<Vec<Authorization>>(
        "- {name: p, namespace: d, scope: Namespace, action: Allow, rules: [[[{principal: [!Exact x]}]]]}",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `principal`"), "{err}");
}

#[test]
fn deny_rule_stripped_of_all_conditions_denies_everything() {
    // A DENY rule whose conditions were all L7 reaches L4 as a rule with no clauses: it matches
    // every connection, so the workload fails closed (docs/ztunnel.md).
    let p = policies(
        "- {name: no-post, namespace: default, scope: Namespace, action: Deny, rules: [[]]}",
    );
    let d = decide(&p, Some(SLEEP), "10.0.0.1", "10.0.0.2:80");
    assert_eq!(d.reason, Reason::DeniedBy("default/no-post".into()));
    assert!(!decide(&p, None, "10.0.0.1", "10.0.0.2:443").allowed());
}

//! Which policies attach to the waypoint, and what becomes of refused ones.

use http::Method;

use super::*;

#[test]
fn service_targeted_policies_apply_only_to_their_service() {
    let p = compile_clean(&[service_policy("svc-post-only", "svc")]);
    // To svc: the ALLOW applies and GET is not allowed.
    assert!(matches!(
        req().decide(&p).reason,
        Reason::NoAllowMatched { .. }
    ));
    // To another Service, or not service-addressed: no ALLOW applies.
    let mut other = req();
    other.service = Some(("ns", "other"));
    assert_eq!(other.decide(&p).reason, Reason::NoAllowPolicies);
    other.service = Some(("other-ns", "svc"));
    assert_eq!(other.decide(&p).reason, Reason::NoAllowPolicies);
    other.service = None;
    assert_eq!(other.decide(&p).reason, Reason::NoAllowPolicies);

    // A waypoint-wide ALLOW applies to every request, alongside the Service's.
    let p = compile_clean(&[
        service_policy("svc-post-only", "svc"),
        gw("gw-get", "ALLOW", "[{to: [{operation: {methods: [GET]}}]}]"),
    ]);
    assert_eq!(req().decide(&p).policy(), Some("ns/gw-get"));
    let mut put = req();
    put.method = Method::PUT;
    assert!(matches!(
        put.decide(&p).reason,
        Reason::NoAllowMatched { .. }
    ));
    put.service = None;
    assert!(matches!(
        put.decide(&p).reason,
        Reason::NoAllowMatched { .. }
    ));

    // The core group may be written "core"; targetRef (singular) works too.
    let p = compile_clean(&[
        "metadata: {name: a, namespace: ns}\nspec: {targetRef: {kind: Service, group: core, name: svc}, action: DENY, rules: [{}]}\n".into(),
    ]);
    assert_eq!(req().decide(&p).policy(), Some("ns/a"));
    let mut other = req();
    other.service = Some(("ns", "other"));
    assert_eq!(other.decide(&p).verdict, Verdict::Allow);
}

#[test]
fn attachment() {
    let class = |ns: &str| {
        format!(
            "metadata: {{name: class, namespace: {ns}}}\nspec: {{targetRefs: [{{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}}], action: DENY, rules: [{{}}]}}\n"
        )
    };
    // GatewayClass istio-waypoint from the root namespace: every waypoint.
    let (p, notes) = compile(&[class("istio-system")]);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(req().decide(&p).policy(), Some("istio-system/class"));
    // From another namespace: ignored, with a note.
    let (p, notes) = compile(&[class("ns")]);
    assert!(p.is_empty());
    assert_eq!(notes.len(), 1);
    assert!(notes[0].message.contains("root namespace"), "{}", notes[0]);
    // An ingress gateway (no GatewayClass of its own for policies): not reached by it.
    let gateway = WaypointRef {
        class: None,
        ..WAYPOINT
    };
    let policies = [parse(&class("istio-system"))];
    let (p, notes) = L7Policies::compile(&policies, &gateway, "istio-system", "cluster.local");
    assert!(p.is_empty() && notes.is_empty(), "{notes:?}");

    // Another waypoint's Gateway, or the same name in another namespace: silently not ours.
    let other = |ns: &str, name: &str| {
        format!(
            "metadata: {{name: p, namespace: {ns}}}\nspec: {{targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: {name}}}], action: DENY, rules: [{{}}]}}\n"
        )
    };
    for (ns, name) in [("ns", "other-waypoint"), ("other", "waypoint")] {
        let (p, notes) = compile(&[other(ns, name)]);
        assert!(p.is_empty() && notes.is_empty(), "{ns}/{name}: {notes:?}");
    }
    // Explicitly in its own namespace is fine.
    let (p, notes) = compile(&[
        "metadata: {name: p, namespace: ns}\nspec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint, namespace: ns}], action: DENY, rules: [{}]}\n".into(),
    ]);
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(p.len(), 1);

    // selector policies are ztunnel's: noted; namespace-wide ones silently ztunnel's.
    let (p, notes) = compile(&[
        "metadata: {name: sel, namespace: ns}\nspec: {selector: {matchLabels: {app: svc}}, action: DENY, rules: [{}]}\n".into(),
        "metadata: {name: ns-wide, namespace: ns}\nspec: {action: DENY, rules: [{}]}\n".into(),
    ]);
    assert!(p.is_empty());
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].policy, "ns/sel");
    assert!(notes[0].message.contains("selector"), "{}", notes[0]);
    assert!(!notes[0].refused);
    assert_eq!(req().decide(&p).verdict, Verdict::Allow);
}

#[test]
fn cross_namespace_target_refs_are_refused_and_not_enforced() {
    let (p, notes) = compile(&[
        "metadata: {name: sneaky, namespace: other}\nspec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint, namespace: ns}], action: DENY, rules: [{}]}\n".into(),
    ]);
    assert!(p.is_empty());
    assert_eq!(notes.len(), 1);
    assert!(notes[0].refused);
    assert!(notes[0].message.contains("targetRefs[0]"), "{}", notes[0]);
    assert!(notes[0].message.contains("namespace"), "{}", notes[0]);
    assert_eq!(req().decide(&p).verdict, Verdict::Allow);
}

#[test]
fn custom_is_refused_and_denies_what_its_rules_select() {
    let custom = format!(
        "metadata: {{name: ext, namespace: ns}}\nspec:\n  {GATEWAY_REF}\n  action: CUSTOM\n  provider: {{name: my-ext-authz}}\n  rules: [{{to: [{{operation: {{paths: ['/admin*']}}}}]}}]\n"
    );
    let (p, notes) = compile(&[custom]);
    assert_eq!(notes.len(), 1);
    assert!(notes[0].refused);
    assert!(notes[0].message.contains("CUSTOM"), "{}", notes[0]);
    assert!(notes[0].message.contains("my-ext-authz"), "{}", notes[0]);
    assert_eq!(req().decide(&p).verdict, Verdict::Allow);
    let mut admin = req();
    admin.path = "/admin/users";
    let d = admin.decide(&p);
    assert_eq!(
        d.reason,
        Reason::FailClosed {
            policy: "ns/ext".into()
        }
    );
    assert_eq!(d.policy(), Some("ns/ext"));
    assert!(d.describe().contains("fail-closed"), "{}", d.describe());
}

#[test]
fn invalid_policies_are_refused_and_fail_closed() {
    // An unknown `when` key, named in the note.
    let (p, notes) = compile(&[gw(
        "bad-allow",
        "ALLOW",
        "[{when: [{key: request.regex.path, values: [x]}]}]",
    )]);
    assert_eq!(notes.len(), 1);
    assert!(notes[0].refused);
    assert!(
        notes[0].message.contains("request.regex.path"),
        "{}",
        notes[0]
    );
    assert!(
        notes[0].message.contains("rules[0].when[0]"),
        "{}",
        notes[0]
    );
    assert!(notes[0].message.contains("matches nothing"), "{}", notes[0]);
    // A refused ALLOW still applies: nothing is allowed.
    assert!(matches!(
        req().decide(&p).reason,
        Reason::NoAllowMatched { .. }
    ));

    // A refused DENY denies everything to its targets, TCP included.
    let (p, notes) = compile(&[gw(
        "bad-deny",
        "DENY",
        "[{from: [{source: {ipBlocks: [10.0.0.x]}}]}]",
    )]);
    assert!(notes[0].message.contains("10.0.0.x"), "{}", notes[0]);
    assert!(notes[0].message.contains("ipBlocks"), "{}", notes[0]);
    assert_eq!(
        tcp(req()).decide(&p).reason,
        Reason::FailClosed {
            policy: "ns/bad-deny".into()
        }
    );

    // A refused AUDIT is dropped.
    let (p, notes) = compile(&[gw(
        "bad-audit",
        "AUDIT",
        "[{to: [{operation: {ports: [http]}}]}]",
    )]);
    assert!(p.is_empty());
    assert!(
        notes[0].refused && notes[0].message.contains("\"http\""),
        "{}",
        notes[0]
    );

    for (rules, expected) in [
        ("[{from: [{source: {}}]}]", "must not be empty"),
        ("[{to: [{}]}]", "must not be empty"),
        ("[{when: [{key: source.ip}]}]", "needs values or notValues"),
        (
            "[{when: [{key: destination.port, values: ['99999']}]}]",
            "not a port number",
        ),
        (
            "[{when: [{key: 'request.headers[bad header]', values: [x]}]}]",
            "header name",
        ),
        (
            "[{when: [{key: 'request.headers[]', values: [x]}]}]",
            "unknown condition key",
        ),
        (
            "[{from: [{source: {serviceAccounts: ['ns/*']}}]}]",
            "no wildcards",
        ),
        (
            "[{from: [{source: {serviceAccounts: [a/b/c]}}]}]",
            "<namespace>/<serviceaccount>",
        ),
        (
            "[{from: [{source: {serviceAccounts: [a/b], principals: [x]}}]}]",
            "cannot be set with principals",
        ),
        (
            "[{to: [{operation: {paths: ['/a/{**}/b/{*}']}}]}]",
            "last operator",
        ),
        ("[{to: [{operation: {paths: ['/a/{*}.txt']}}]}]", "outside"),
    ] {
        let (_, notes) = compile(&[gw("bad", "ALLOW", rules)]);
        assert_eq!(notes.len(), 1, "{rules}: {notes:?}");
        assert!(notes[0].refused, "{rules}");
        assert!(notes[0].message.contains(expected), "{rules}: {}", notes[0]);
    }

    // Spec-level validation.
    for (spec, expected) in [
        (
            format!("{{{GATEWAY_REF}, selector: {{matchLabels: {{a: b}}}}, rules: [{{}}]}}"),
            "selector and targetRefs",
        ),
        (
            format!("{{{GATEWAY_REF}, targetRef: {{kind: Service, name: svc}}, rules: [{{}}]}}"),
            "targetRef and targetRefs",
        ),
        (format!("{{{GATEWAY_REF}, action: CUSTOM, rules: [{{}}]}}"), "provider.name"),
        (
            format!("{{{GATEWAY_REF}, action: DENY, provider: {{name: x}}, rules: [{{}}]}}"),
            "only valid with action CUSTOM",
        ),
        (
            "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}, {kind: Pod, name: x}], rules: [{}]}".into(),
            "Pod",
        ),
    ] {
        let (_, notes) =
            compile(&[format!("metadata: {{name: bad, namespace: ns}}\nspec: {spec}\n")]);
        assert_eq!(notes.len(), 1, "{spec}: {notes:?}");
        assert!(notes[0].refused && notes[0].message.contains(expected), "{spec}: {}", notes[0]);
    }
}

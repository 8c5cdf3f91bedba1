//! Route status: reasons for each parentRef, dropped rules, refused routes.

use super::*;

fn statuses(http: &str, grpc: &str) -> Vec<RouteStatus> {
    compile(http, grpc, &services()).1
}

fn one(http: &str) -> RouteStatus {
    let mut all = statuses(http, "");
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

fn with_parent(parent: &str) -> String {
    format!("metadata: {{name: r, namespace: mesh}}\nspec:\n  parentRefs: [{parent}]\n  rules:\n  - backendRefs: [{{name: echo-v1, port: 80}}]\n")
}

fn with_rules(rules: &str) -> String {
    format!("metadata: {{name: r, namespace: mesh}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo}}]\n  rules:\n{rules}")
}

#[test]
fn accepted() {
    let s = one(&with_parent(
        "{group: \"\", kind: Service, name: echo, port: 80}",
    ));
    assert_eq!(
        (
            s.route.as_str(),
            s.kind,
            s.parent.as_str(),
            s.accepted,
            s.resolved_refs,
            s.partially_invalid,
            s.reason.as_str()
        ),
        (
            "mesh/r",
            RouteKind::Http,
            "Service/mesh/echo:80",
            true,
            true,
            false,
            reason::ACCEPTED
        )
    );
    assert!(
        s.message.contains("port 80 of Service mesh/echo"),
        "{}",
        s.message
    );
}

#[test]
fn no_matching_parent() {
    let cases = [
        (
            "{group: \"\", kind: Service, name: unknown}",
            "not served by this waypoint",
        ),
        ("{kind: Service, name: echo}", "is not supported"),
        (
            "{group: \"\", kind: Service, name: echo, port: 9999}",
            "has no port 9999",
        ),
        (
            "{group: \"\", kind: Service, name: echo, sectionName: nope}",
            "no port named \"nope\"",
        ),
        (
            "{group: \"\", kind: Service, name: echo, sectionName: http, port: 8080}",
            "is not named",
        ),
        (
            "{group: \"\", kind: Service, name: echo, namespace: elsewhere}",
            "elsewhere/echo",
        ),
        ("{name: other-gateway}", "is not this waypoint"),
        (
            "{group: networking.istio.io, kind: ServiceEntry, name: echo}",
            "is not supported",
        ),
    ];
    for (parent, message) in cases {
        let s = one(&with_parent(parent));
        assert!(!s.accepted, "{parent}");
        assert_eq!(s.reason, reason::NO_MATCHING_PARENT, "{parent}");
        assert!(s.message.contains(message), "{parent}: {}", s.message);
    }
    let s = one("metadata: {name: orphan, namespace: mesh}\nspec: {}\n");
    assert_eq!(
        (s.accepted, s.reason.as_str(), s.parent.as_str()),
        (false, reason::NO_MATCHING_PARENT, "")
    );
}

#[test]
fn gateway_parent_from_another_namespace() {
    let yaml = "metadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{name: waypoint, namespace: mesh}]\n";
    let (table, all) = compile(yaml, "", &services());
    assert_eq!(
        summary(&all),
        [(
            "shop/r".into(),
            "Gateway/mesh/waypoint".into(),
            false,
            true,
            reason::NOT_ALLOWED_BY_LISTENERS.into()
        )]
    );
    assert_eq!(hit(&table, "echo", 80, &req("/")), "no routes");
}

#[test]
fn one_status_per_parent() {
    let yaml = "metadata: {name: r, namespace: mesh}\nspec:\n  parentRefs:\n  - {group: \"\", kind: Service, name: echo-v1}\n  - {group: \"\", kind: Service, name: nope}\n  - {name: waypoint}\n";
    let got: Vec<(String, bool, String)> = statuses(yaml, "")
        .into_iter()
        .map(|s| (s.parent, s.accepted, s.reason))
        .collect();
    let want = [
        ("Service/mesh/echo-v1", true, reason::ACCEPTED),
        ("Service/mesh/nope", false, reason::NO_MATCHING_PARENT),
        ("Gateway/mesh/waypoint", true, reason::ACCEPTED),
    ];
    assert_eq!(got, want.map(|(p, a, r)| (p.to_owned(), a, r.to_owned())));
}

#[test]
fn unresolved_backends() {
    let cases = [
        (
            "{name: missing, port: 80}",
            reason::BACKEND_NOT_FOUND,
            "Service mesh/missing is not known",
        ),
        (
            "{name: echo-v1, port: 9999}",
            reason::BACKEND_NOT_FOUND,
            "has no port 9999",
        ),
        (
            "{name: echo-v1, namespace: other, port: 80}",
            reason::BACKEND_NOT_FOUND,
            "other/echo-v1",
        ),
        (
            "{group: multicluster.x-k8s.io, kind: ServiceImport, name: echo-v1, port: 80}",
            reason::INVALID_KIND,
            "not a core Service",
        ),
        (
            "{group: \"\", kind: Pod, name: echo-v1, port: 80}",
            reason::INVALID_KIND,
            "not a core Service",
        ),
    ];
    for (backend, why, message) in cases {
        let (table, all) = compile(
            &with_rules(&format!("  - backendRefs: [{backend}]\n")),
            "",
            &services(),
        );
        let s = &all[0];
        assert!(s.accepted && !s.resolved_refs, "{backend}: {s:?}");
        assert_eq!(s.reason, why, "{backend}");
        assert!(s.message.contains(message), "{backend}: {}", s.message);
        let picked = matched(&table, "echo", 80, &req("/"))
            .rule
            .pick_backend(0)
            .unwrap();
        assert!(!picked.resolved, "{backend}");
    }
}

#[test]
fn invalid_rules_are_dropped() {
    let yaml = with_rules(
        r#"  - name: good
    matches: [{path: {value: /good}}]
  - name: bad-regex
    matches: [{path: {type: RegularExpression, value: '/(unclosed'}}]
  - matches: [{path: {type: Glob, value: /x}}]
"#,
    );
    let (table, all) = compile(&yaml, "", &services());
    let s = &all[0];
    assert!(
        s.accepted && s.resolved_refs && s.partially_invalid,
        "{s:?}"
    );
    assert_eq!(s.reason, reason::ACCEPTED);
    assert!(
        s.message.contains(
            "Dropped Rule rules[1] (bad-regex): matches[0]: invalid path regular expression"
        ),
        "{}",
        s.message
    );
    assert!(
        s.message
            .contains("rules[2]: matches[0]: path match type \"Glob\""),
        "{}",
        s.message
    );
    assert_eq!(hit(&table, "echo", 80, &req("/good")), "good");
    assert_eq!(hit(&table, "echo", 80, &req("/(unclosed")), "404");
}

#[test]
fn unsupported_values() {
    let cases = [
        ("matches: [{method: FETCH}]", reason::UNSUPPORTED_VALUE, "method \"FETCH\""),
        ("matches: [{path: {type: Exact, value: relative}}]", reason::UNSUPPORTED_VALUE, "must start with '/'"),
        ("matches: [{headers: [{name: 'bad header', value: x}]}]", reason::UNSUPPORTED_VALUE, "invalid header name"),
        ("matches: [{headers: [{type: Prefix, name: x, value: y}]}]", reason::UNSUPPORTED_VALUE, "header match type \"Prefix\""),
        ("matches: [{queryParams: [{type: RegularExpression, name: q, value: '['}]}]", reason::UNSUPPORTED_VALUE, "query parameter regular expression"),
        ("filters: [{type: RateLimit}]", reason::UNSUPPORTED_VALUE, "unknown filter type \"RateLimit\""),
        ("filters: [{type: CORS, cors: {allowOrigins: ['*']}}]", reason::UNSUPPORTED_VALUE, "CORS filters are not supported"),
        ("filters: [{type: RequestHeaderModifier}]", reason::UNSUPPORTED_VALUE, "needs exactly its own field"),
        ("filters: [{type: RequestHeaderModifier, responseHeaderModifier: {}}]", reason::UNSUPPORTED_VALUE, "needs exactly its own field"),
        ("filters: [{type: RequestRedirect, requestRedirect: {statusCode: 304}}]", reason::UNSUPPORTED_VALUE, "statusCode 304"),
        ("filters: [{type: RequestRedirect, requestRedirect: {scheme: ftp}}]", reason::UNSUPPORTED_VALUE, "scheme \"ftp\""),
        ("filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replacePrefixMatch: /x}}}]", reason::UNSUPPORTED_VALUE, "needs its own field"),
        ("filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: '1'}], remove: [A]}}]", reason::UNSUPPORTED_VALUE, "modified twice"),
        ("filters: [{type: RequestHeaderModifier, requestHeaderModifier: {}}, {type: RequestHeaderModifier, requestHeaderModifier: {}}]", reason::UNSUPPORTED_VALUE, "appears twice"),
        ("timeouts: {request: 1.5s}", reason::UNSUPPORTED_VALUE, "timeouts.request: invalid duration \"1.5s\""),
        ("timeouts: {request: 1s, backendRequest: 2s}", reason::UNSUPPORTED_VALUE, "longer than timeouts.request"),
        ("retry: {codes: [200]}", reason::UNSUPPORTED_VALUE, "retry.codes: 200"),
        ("backendRefs: [{name: echo-v1, port: 80, filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2}}}]}]", reason::UNSUPPORTED_VALUE, "not supported on a backendRef"),
        (
            "filters: [{type: URLRewrite, urlRewrite: {hostname: a}}, {type: RequestRedirect, requestRedirect: {hostname: b}}]",
            reason::INCOMPATIBLE_FILTERS,
            "cannot be combined",
        ),
        ("filters: [{type: RequestRedirect, requestRedirect: {hostname: b}}]\n    backendRefs: [{name: echo-v1, port: 80}]", reason::INCOMPATIBLE_FILTERS, "together with backendRefs"),
        (
            "matches: [{path: {type: Exact, value: /x}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /y}}}]",
            reason::UNSUPPORTED_VALUE,
            "ReplacePrefixMatch needs exactly one match",
        ),
        (
            "matches: [{path: {value: /a}}, {path: {value: /b}}]\n    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /y}}}]",
            reason::UNSUPPORTED_VALUE,
            "ReplacePrefixMatch needs exactly one match",
        ),
    ];
    for (rule, why, message) in cases {
        let s = one(&with_rules(&format!("  - {rule}\n")));
        assert!(!s.accepted && !s.partially_invalid, "{rule}: {s:?}");
        assert_eq!(s.reason, why, "{rule}");
        assert!(s.message.contains(message), "{rule}: {}", s.message);
        assert!(
            s.message
                .starts_with("no valid rule: Dropped Rule rules[0]"),
            "{rule}: {}",
            s.message
        );
    }
}

#[test]
fn grpc_route_problems() {
    let grpc = r#"
metadata: {name: g, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{method: {}}]
  - matches: [{method: {service: a/b}}]
  - filters: [{type: RequestRedirect}]
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}}}]
    backendRefs: [{name: echo-v1, port: 7070}]
  - backendRefs: [{name: echo, port: 7070}]
"#;
    let (table, all) = compile("", grpc, &services());
    let s = &all[0];
    assert_eq!(
        (s.kind, s.accepted, s.resolved_refs, s.partially_invalid),
        (RouteKind::Grpc, true, false, true),
        "{s:?}"
    );
    assert_eq!(s.reason, reason::BACKEND_NOT_FOUND);
    for part in [
        "rules[0]: matches[0]: a gRPC method match needs",
        "rules[1]: matches[0]: gRPC service \"a/b\" contains '/'",
        "rules[2]: filters[0]: RequestRedirect is not a GRPCRoute filter",
        "Service mesh/echo-v1 has no port 7070",
    ] {
        assert!(s.message.contains(part), "{part}: {}", s.message);
    }
    let rule = matched(&table, "echo", 7070, &call("/a.B/C")).rule;
    assert_eq!(rule.filters.mirrors.len(), 1);
    assert_eq!(rule.kind, RouteKind::Grpc);
}

#[test]
fn wrong_kind_or_api_version() {
    let s = one("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: mesh}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n");
    assert_eq!(
        (s.accepted, s.reason.as_str()),
        (false, reason::UNSUPPORTED_VALUE)
    );
    assert!(s.message.contains("expected a HTTPRoute"), "{}", s.message);
    let all = statuses("", "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  parentRefs: [{name: waypoint, namespace: mesh}]\n");
    assert_eq!(summary(&all)[0].4, reason::NOT_ALLOWED_BY_LISTENERS);
}

#[test]
fn notes_for_ignored_fields() {
    let s = one(&with_rules(
        "  - sessionPersistence: {sessionName: s}\n  - sessionPersistence: {type: Header}\n",
    ));
    assert!(s.accepted && s.resolved_refs, "{s:?}");
    assert_eq!(
        s.message
            .matches("sessionPersistence is not supported")
            .count(),
        1,
        "{}",
        s.message
    );
}

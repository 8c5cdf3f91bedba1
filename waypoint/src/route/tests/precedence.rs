//! The precedence rules, one by one: each case puts the rule that must win last.

use super::*;

fn one_route(rules: &str) -> RouteTable {
    http_table(&format!(
        "metadata: {{name: r, namespace: mesh}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo}}]\n  rules:\n{rules}"
    ))
}

#[test]
fn exact_beats_any_prefix() {
    let table = one_route(
        "  - name: long-prefix\n    matches: [{path: {value: /foo/bar/baz}}]\n  - name: exact\n    matches: [{path: {type: Exact, value: /foo/bar/baz}}]\n",
    );
    assert_eq!(hit(&table, "echo", 80, &req("/foo/bar/baz")), "exact");
    assert_eq!(
        hit(&table, "echo", 80, &req("/foo/bar/baz/x")),
        "long-prefix"
    );
}

#[test]
fn longest_prefix_wins() {
    let table = one_route(
        "  - name: root\n  - name: foo\n    matches: [{path: {value: /foo}}]\n  - name: foo-bar\n    matches: [{path: {value: /foo/bar/}}]\n",
    );
    let cases = [
        ("/foo/bar/x", "foo-bar"),
        ("/foo/bar", "foo-bar"),
        ("/foo/baz", "foo"),
        ("/other", "root"),
    ];
    for (path, want) in cases {
        assert_eq!(hit(&table, "echo", 80, &req(path)), want, "{path}");
    }
}

#[test]
fn prefix_beats_regex_and_longer_regex_wins() {
    let table = one_route(
        r#"  - name: short-re
    matches: [{path: {type: RegularExpression, value: '/.*'}}]
  - name: long-re
    matches: [{path: {type: RegularExpression, value: '/api/.*'}}]
  - name: prefix
    matches: [{path: {value: /api/v1}}]
"#,
    );
    assert_eq!(hit(&table, "echo", 80, &req("/api/v1/x")), "prefix");
    assert_eq!(hit(&table, "echo", 80, &req("/api/v2")), "long-re");
    assert_eq!(hit(&table, "echo", 80, &req("/web")), "short-re");
}

#[test]
fn method_beats_headers() {
    let table = one_route(
        r#"  - name: headers
    matches: [{headers: [{name: a, value: "1"}, {name: b, value: "2"}]}]
  - name: method
    matches: [{method: GET}]
"#,
    );
    assert_eq!(
        hit(
            &table,
            "echo",
            80,
            &req("/").header("a", "1").header("b", "2")
        ),
        "method"
    );
    assert_eq!(
        hit(
            &table,
            "echo",
            80,
            &req("/").method("PUT").header("a", "1").header("b", "2")
        ),
        "headers"
    );
}

#[test]
fn more_headers_win() {
    let table = one_route(
        r#"  - name: one
    matches: [{headers: [{name: a, value: "1"}], queryParams: [{name: q, value: "1"}, {name: r, value: "1"}]}]
  - name: two
    matches: [{headers: [{name: a, value: "1"}, {name: b, value: "2"}]}]
"#,
    );
    let r = req("/?q=1&r=1").header("a", "1").header("b", "2");
    assert_eq!(hit(&table, "echo", 80, &r), "two");
}

#[test]
fn more_query_params_win() {
    let table = one_route(
        r#"  - name: one
    matches: [{queryParams: [{name: q, value: "1"}]}]
  - name: two
    matches: [{queryParams: [{name: q, value: "1"}, {name: r, value: "1"}]}]
"#,
    );
    assert_eq!(hit(&table, "echo", 80, &req("/?q=1&r=1")), "two");
    assert_eq!(hit(&table, "echo", 80, &req("/?q=1")), "one");
}

#[test]
fn path_outranks_everything_else() {
    let table = one_route(
        r#"  - name: specific-but-short
    matches: [{path: {value: /a}, method: GET, headers: [{name: x, value: "1"}], queryParams: [{name: q, value: "1"}]}]
  - name: long
    matches: [{path: {value: /a/b}}]
"#,
    );
    assert_eq!(
        hit(&table, "echo", 80, &req("/a/b?q=1").header("x", "1")),
        "long"
    );
}

fn two_routes(first: (&str, Option<&str>), second: (&str, Option<&str>)) -> RouteTable {
    let route = |(name, created): (&str, Option<&str>)| {
        let created = created
            .map(|c| format!(", creationTimestamp: \"{c}\""))
            .unwrap_or_default();
        format!(
            "metadata: {{name: {name}, namespace: mesh{created}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo}}]\n  rules:\n  - name: {name}\n"
        )
    };
    http_table(&format!("{}---\n{}", route(first), route(second)))
}

#[test]
fn oldest_route_wins_ties() {
    let table = two_routes(
        ("new", Some("2024-06-01T00:00:00Z")),
        ("old", Some("2023-01-01T00:00:00Z")),
    );
    assert_eq!(hit(&table, "echo", 80, &req("/")), "old");
    // Offsets are compared as instants: 01:00+02:00 is before 00:00Z.
    let table = two_routes(
        ("b", Some("2024-01-01T00:00:00Z")),
        ("a", Some("2024-01-01T01:00:00+02:00")),
    );
    assert_eq!(hit(&table, "echo", 80, &req("/")), "a");
    // A route without a timestamp counts as the newest.
    let table = two_routes(
        ("a-undated", None),
        ("z-dated", Some("2030-01-01T00:00:00Z")),
    );
    assert_eq!(hit(&table, "echo", 80, &req("/")), "z-dated");
}

#[test]
fn then_alphabetical_namespace_and_name() {
    let t = Some("2024-01-01T00:00:00Z");
    let table = two_routes(("beta", t), ("alpha", t));
    assert_eq!(hit(&table, "echo", 80, &req("/")), "alpha");
    let table = two_routes(("beta", None), ("alpha", None));
    assert_eq!(hit(&table, "echo", 80, &req("/")), "alpha");
}

#[test]
fn then_first_rule_in_the_route() {
    let table = one_route(
        "  - name: first\n  - name: second\n  - name: third\n    matches: [{path: {value: /}}]\n",
    );
    assert_eq!(hit(&table, "echo", 80, &req("/x")), "first");
}

#[test]
fn specificity_beats_route_age() {
    let old = "metadata: {name: old, namespace: mesh, creationTimestamp: \"2020-01-01T00:00:00Z\"}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n  rules:\n  - name: old-root\n";
    let new = "metadata: {name: new, namespace: mesh, creationTimestamp: \"2024-01-01T00:00:00Z\"}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n  rules:\n  - name: new-foo\n    matches: [{path: {value: /foo}}]\n";
    let table = http_table(&format!("{old}---\n{new}"));
    assert_eq!(hit(&table, "echo", 80, &req("/foo/x")), "new-foo");
    assert_eq!(hit(&table, "echo", 80, &req("/bar")), "old-root");
}

#[test]
fn grpc_precedence() {
    let grpc = r#"
metadata: {name: old, namespace: mesh, creationTimestamp: "2020-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - name: any
  - name: method-only
    matches: [{method: {method: Check}}]
  - name: headers-only
    matches: [{headers: [{name: a, value: "1"}, {name: b, value: "1"}]}]
---
metadata: {name: new, namespace: mesh, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - name: service
    matches: [{method: {service: grpc.health.v1.Health}}]
  - name: service-method
    matches: [{method: {service: grpc.health.v1.Health, method: Check}}]
  - name: service-method-header
    matches: [{method: {service: grpc.health.v1.Health, method: Check}, headers: [{name: a, value: "1"}]}]
"#;
    let table = compile("", grpc, &services()).0;
    let cases = [
        (
            call("/grpc.health.v1.Health/Check").header("a", "1"),
            "service-method-header",
        ),
        (call("/grpc.health.v1.Health/Check"), "service-method"),
        (
            call("/grpc.health.v1.Health/Watch")
                .header("a", "1")
                .header("b", "1"),
            "service",
        ),
        (
            call("/x.Y/Check").header("a", "1").header("b", "1"),
            "method-only",
        ),
        (
            call("/x.Y/Z").header("a", "1").header("b", "1"),
            "headers-only",
        ),
        (call("/x.Y/Z"), "any"),
    ];
    for (r, want) in cases {
        assert_eq!(hit(&table, "echo", 7070, &r), want, "{}", r.path);
    }
}

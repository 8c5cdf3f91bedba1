//! Each match kind on its own.

use super::*;

/// One route on `mesh/echo` with the given rules (YAML list items, indented by two).
fn on_echo(rules: &str) -> RouteTable {
    http_table(&echo_route_yaml(rules))
}

fn echo_route_yaml(rules: &str) -> String {
    format!(
        "metadata: {{name: r, namespace: mesh}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo}}]\n  rules:\n{rules}"
    )
}

#[test]
fn exact_path() {
    let table = on_echo("  - name: exact\n    matches: [{path: {type: Exact, value: /foo}}]\n");
    for (path, want) in [
        ("/foo", "exact"),
        ("/foo/", "404"),
        ("/Foo", "404"),
        ("/foobar", "404"),
        ("/", "404"),
    ] {
        assert_eq!(hit(&table, "echo", 80, &req(path)), want, "{path}");
    }
}

#[test]
fn path_prefix_is_element_wise() {
    let table = on_echo(
        "  - name: foo\n    matches: [{path: {type: PathPrefix, value: /foo}}]\n  - name: bar-slash\n    matches: [{path: {value: /bar/}}]\n",
    );
    let cases = [
        ("/foo", "foo"),
        ("/foo/", "foo"),
        ("/foo/bar", "foo"),
        ("/foobar", "404"),
        ("/fo", "404"),
        ("/bar", "bar-slash"),
        ("/bar/", "bar-slash"),
        ("/bar/baz", "bar-slash"),
        ("/barbaz", "404"),
    ];
    for (path, want) in cases {
        assert_eq!(hit(&table, "echo", 80, &req(path)), want, "{path}");
    }
    assert_eq!(
        matched(&table, "echo", 80, &req("/bar/x")).matched_prefix,
        Some("/bar")
    );
}

#[test]
fn implicit_and_root_prefix_match_everything() {
    let table = on_echo("  - name: all\n");
    for path in ["/", "/x", "/x/y/z"] {
        assert_eq!(hit(&table, "echo", 80, &req(path)), "all", "{path}");
        assert_eq!(
            matched(&table, "echo", 80, &req(path)).matched_prefix,
            Some("/")
        );
    }
}

#[test]
fn regular_expression_path_must_match_whole_path() {
    let table = on_echo(
        "  - name: re\n    matches: [{path: {type: RegularExpression, value: '/api/v[0-9]+'}}]\n",
    );
    for (path, want) in [
        ("/api/v1", "re"),
        ("/api/v10", "re"),
        ("/api/v1/x", "404"),
        ("/x/api/v1", "404"),
        ("/api/v", "404"),
    ] {
        assert_eq!(hit(&table, "echo", 80, &req(path)), want, "{path}");
    }
    assert_eq!(
        matched(&table, "echo", 80, &req("/api/v1")).matched_prefix,
        None
    );
    // An unbalanced pattern cannot escape the anchors: it is refused.
    let unbalanced = "  - matches: [{path: {type: RegularExpression, value: 'x)|(.*'}}]\n";
    let (_, statuses) = compile(&echo_route_yaml(unbalanced), "", &services());
    assert_eq!(
        (statuses[0].accepted, statuses[0].reason.as_str()),
        (false, reason::UNSUPPORTED_VALUE)
    );
}

#[test]
fn headers_exact_and_regex() {
    let table = on_echo(
        r#"  - name: both
    matches:
    - headers:
      - {name: X-Version, value: two}
      - {type: RegularExpression, name: user-agent, value: 'curl/[0-9.]+'}
"#,
    );
    let ok = req("/")
        .header("x-version", "two")
        .header("User-Agent", "curl/8.1");
    assert_eq!(hit(&table, "echo", 80, &ok), "both");
    let cases = [
        req("/")
            .header("x-version", "Two")
            .header("user-agent", "curl/8.1"),
        req("/")
            .header("x-version", "two")
            .header("user-agent", "xcurl/8.1"),
        req("/")
            .header("x-version", "two")
            .header("user-agent", "curl/8.1 extra"),
        req("/").header("x-version", "two"),
        req("/").header("user-agent", "curl/8"),
    ];
    for (i, r) in cases.iter().enumerate() {
        assert_eq!(hit(&table, "echo", 80, r), "404", "case {i}");
    }
}

#[test]
fn repeated_header_is_matched_joined_and_first_entry_wins() {
    let table = on_echo(
        "  - name: joined\n    matches: [{headers: [{name: x-a, value: '1,2'}, {name: X-A, value: ignored}]}]\n",
    );
    assert_eq!(
        hit(
            &table,
            "echo",
            80,
            &req("/").header("x-a", "1").header("x-a", "2")
        ),
        "joined"
    );
    assert_eq!(
        hit(&table, "echo", 80, &req("/").header("x-a", "1,2")),
        "joined"
    );
    assert_eq!(hit(&table, "echo", 80, &req("/").header("x-a", "1")), "404");
    assert_eq!(
        hit(&table, "echo", 80, &req("/").header("x-a", "ignored")),
        "404"
    );
    let regex = on_echo("  - name: re\n    matches: [{headers: [{type: RegularExpression, name: x-a, value: '1,.*'}]}]\n");
    assert_eq!(
        hit(
            &regex,
            "echo",
            80,
            &req("/").header("x-a", "1").header("x-a", "3")
        ),
        "re"
    );
}

#[test]
fn query_params() {
    let table = on_echo(
        r#"  - name: q
    matches:
    - queryParams:
      - {name: animal, value: whale}
      - {type: RegularExpression, name: color, value: 'bl(ue|ack)'}
"#,
    );
    let cases = [
        ("/?animal=whale&color=blue", "q"),
        ("/?color=black&animal=whale", "q"),
        ("/?animal=whale&color=blue&animal=dolphin", "q"),
        ("/?animal=dolphin&animal=whale&color=blue", "404"),
        ("/?Animal=whale&color=blue", "404"),
        ("/?animal=whale&color=bluegreen", "404"),
        ("/?animal=whale", "404"),
        ("/?anim%61l=wh%61le&color=blue", "q"),
        ("/", "404"),
    ];
    for (target, want) in cases {
        assert_eq!(hit(&table, "echo", 80, &req(target)), want, "{target}");
    }
    let flag =
        on_echo("  - name: empty\n    matches: [{queryParams: [{name: debug, value: ''}]}]\n");
    assert_eq!(hit(&flag, "echo", 80, &req("/?debug")), "empty");
}

#[test]
fn method() {
    let table = on_echo("  - name: post\n    matches: [{method: POST}]\n");
    assert_eq!(hit(&table, "echo", 80, &req("/").method("POST")), "post");
    assert_eq!(hit(&table, "echo", 80, &req("/").method("GET")), "404");
}

#[test]
fn conditions_are_anded_and_matches_ored() {
    let table = on_echo(
        r#"  - name: either
    matches:
    - path: {value: /foo}
      headers: [{name: version, value: v2}]
    - path: {value: /v2/foo}
"#,
    );
    let cases = [
        (req("/foo").header("version", "v2"), "either"),
        (req("/foo"), "404"),
        (req("/bar").header("version", "v2"), "404"),
        (req("/v2/foo"), "either"),
    ];
    for (r, want) in cases {
        assert_eq!(hit(&table, "echo", 80, &r), want, "{}", r.path);
    }
}

/// MeshHTTPRouteMatching: path and header matches choosing between two backends.
#[test]
fn mesh_conformance_matching() {
    let table = on_echo(
        r#"  - matches:
    - path: {type: PathPrefix, value: /}
    - headers: [{name: version, value: one}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches:
    - path: {type: PathPrefix, value: /v2}
    - headers: [{name: version, value: two}]
    backendRefs: [{name: echo-v2, port: 80}]
"#,
    );
    let cases = [
        (req("/"), "echo-v1"),
        (req("/example"), "echo-v1"),
        (req("/").header("version", "one"), "echo-v1"),
        (req("/v2"), "echo-v2"),
        (req("/v2/example"), "echo-v2"),
        (req("/").header("version", "two"), "echo-v2"),
        (req("/v2/"), "echo-v2"),
        (req("/v2example"), "echo-v1"),
        (req("/foo/v2/example"), "echo-v1"),
    ];
    for (r, want) in cases {
        let rule = matched(&table, "echo", 80, &r).rule;
        assert_eq!(
            rule.pick_backend(0).unwrap().service.name,
            want,
            "{}",
            r.path
        );
    }
}

fn grpc_table() -> RouteTable {
    compile(
        r#"
metadata: {name: web, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - name: http-api
    matches: [{path: {value: /api}}]
"#,
        r#"
metadata: {name: calls, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - name: check
    matches: [{method: {service: grpc.health.v1.Health, method: Check}}]
  - name: health
    matches: [{method: {service: grpc.health.v1.Health}}]
  - name: any-echo
    matches: [{method: {method: Echo}}]
  - name: reflection
    matches: [{method: {type: RegularExpression, service: 'grpc\.reflection\.v1(alpha)?\.ServerReflection', method: 'Server.*'}}]
  - name: tenant
    matches: [{headers: [{name: x-tenant, value: blue}]}]
"#,
        &services(),
    )
    .0
}

#[test]
fn grpc_method_matches() {
    let table = grpc_table();
    let cases = [
        (call("/grpc.health.v1.Health/Check"), "check"),
        (call("/grpc.health.v1.Health/Watch"), "health"),
        (call("/echo.Echo/Echo"), "any-echo"),
        (call("/other.Service/Echo"), "any-echo"),
        (
            call("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            "reflection",
        ),
        (
            call("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "reflection",
        ),
        (
            call("/grpc.reflection.v2.ServerReflection/ServerReflectionInfo"),
            "404",
        ),
        (call("/x.Y/Z").header("x-tenant", "blue"), "tenant"),
        (call("/x.Y/Z"), "404"),
        // Not a gRPC method path: only rules without a method match apply, then HTTPRoutes.
        (
            call("/grpc.health.v1.Health/Check/extra").header("x-tenant", "blue"),
            "tenant",
        ),
    ];
    for (r, want) in cases {
        assert_eq!(hit(&table, "echo", 7070, &r), want, "{}", r.path);
    }
}

#[test]
fn grpc_routes_first_for_grpc_then_http_routes() {
    let table = grpc_table();
    // A gRPC call no GRPCRoute rule matches falls through to the HTTPRoute rules.
    assert_eq!(hit(&table, "echo", 80, &call("/api/Method")), "http-api");
    // Plain HTTP never uses GRPCRoute rules.
    assert_eq!(
        hit(&table, "echo", 80, &req("/grpc.health.v1.Health/Check")),
        "404"
    );
    assert_eq!(hit(&table, "echo", 80, &req("/api/x")), "http-api");
    // gRPC rules come first even when an HTTPRoute rule would match.
    assert_eq!(hit(&table, "echo", 80, &call("/api/Echo")), "any-echo");
}

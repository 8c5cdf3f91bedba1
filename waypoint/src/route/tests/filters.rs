//! Filters, redirects and rewrites, with the cases the Gateway API mesh conformance tests check.

use super::*;
use crate::route::filters::replace_prefix;
use std::time::Duration;

/// A route on `mesh/echo:80` with these rules (conformance manifests' shape).
fn echo_route(rules: &str) -> RouteTable {
    let yaml = format!(
        "metadata: {{name: r, namespace: mesh}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 80}}]\n  rules:\n{rules}"
    );
    let (table, statuses) = compile(&yaml, "", &services());
    assert!(
        statuses.iter().all(|s| s.accepted && !s.partially_invalid),
        "{statuses:?}"
    );
    table
}

/// A redirect rule on `prefix` with the given `requestRedirect` body (flow mapping content).
fn redirect_rule(prefix: &str, body: &str) -> String {
    format!(
        "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {{{body}}}}}]\n"
    )
}

/// `(status, Location)` for `http://echo<path>` on port 80, as the conformance client sends it.
fn redirect(table: &RouteTable, target: &str) -> (u16, String) {
    let r = req(target);
    let m = matched(table, "echo", 80, &r);
    let redirect = m.rule.filters.redirect.as_ref().expect("a redirect");
    let (status, location) = redirect.location(
        "http",
        "echo",
        Some(80),
        &r.path,
        r.query.as_deref(),
        m.matched_prefix,
    );
    (status.as_u16(), location)
}

#[test]
fn redirect_hostname_and_status() {
    let rules = [
        redirect_rule("/hostname-redirect", "hostname: example.org"),
        redirect_rule("/host-and-status", "statusCode: 301, hostname: example.org"),
        redirect_rule(
            "/host-and-see-other",
            "statusCode: 303, hostname: example.org",
        ),
        redirect_rule(
            "/host-and-temporary",
            "statusCode: 307, hostname: example.org",
        ),
        redirect_rule(
            "/host-and-permanent",
            "statusCode: 308, hostname: example.org",
        ),
    ];
    let table = echo_route(&rules.concat());
    let cases = [
        (
            "/hostname-redirect",
            302,
            "http://example.org/hostname-redirect",
        ),
        (
            "/host-and-status",
            301,
            "http://example.org/host-and-status",
        ),
        (
            "/host-and-see-other",
            303,
            "http://example.org/host-and-see-other",
        ),
        (
            "/host-and-temporary",
            307,
            "http://example.org/host-and-temporary",
        ),
        (
            "/host-and-permanent",
            308,
            "http://example.org/host-and-permanent",
        ),
    ];
    for (path, status, location) in cases {
        assert_eq!(
            redirect(&table, path),
            (status, location.to_owned()),
            "{path}"
        );
    }
}

#[test]
fn redirect_path_prefix_and_full_path() {
    let prefix = "path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}";
    let full = "path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}";
    let rules = [
        redirect_rule("/original-prefix", prefix),
        redirect_rule(
            "/full",
            "path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}",
        ),
        redirect_rule(
            "/path-and-host",
            &format!("hostname: example.org, {prefix}"),
        ),
        redirect_rule("/path-and-status", &format!("{prefix}, statusCode: 301")),
        redirect_rule("/path-and-temporary", &format!("{prefix}, statusCode: 307")),
        redirect_rule(
            "/full-path-and-host",
            &format!("hostname: example.org, {full}"),
        ),
        redirect_rule("/full-path-and-status", &format!("{full}, statusCode: 301")),
        redirect_rule(
            "/full-path-and-permanent",
            &format!("{full}, statusCode: 308"),
        ),
        redirect_rule(
            "/to-root",
            "path: {type: ReplacePrefixMatch, replacePrefixMatch: /}",
        ),
    ];
    let table = echo_route(&rules.concat());
    let cases = [
        (
            "/original-prefix/lemon",
            302,
            "http://echo/replacement-prefix/lemon",
        ),
        (
            "/full/path/original",
            302,
            "http://echo/full-path-replacement",
        ),
        (
            "/path-and-host",
            302,
            "http://example.org/replacement-prefix",
        ),
        ("/path-and-status", 301, "http://echo/replacement-prefix"),
        (
            "/path-and-temporary/x",
            307,
            "http://echo/replacement-prefix/x",
        ),
        (
            "/full-path-and-host",
            302,
            "http://example.org/replacement-full",
        ),
        ("/full-path-and-status", 301, "http://echo/replacement-full"),
        (
            "/full-path-and-permanent/a/b",
            308,
            "http://echo/replacement-full",
        ),
        ("/to-root/one", 302, "http://echo/one"),
        ("/to-root", 302, "http://echo/"),
        (
            "/original-prefix/lemon?a=1&b=2",
            302,
            "http://echo/replacement-prefix/lemon?a=1&b=2",
        ),
    ];
    for (target, status, location) in cases {
        assert_eq!(
            redirect(&table, target),
            (status, location.to_owned()),
            "{target}"
        );
    }
}

#[test]
fn redirect_port() {
    let rules = [
        redirect_rule("/port", "port: 8083"),
        redirect_rule("/port-and-host", "hostname: example.org, port: 8083"),
        redirect_rule("/port-and-status", "port: 8083, statusCode: 301"),
        redirect_rule(
            "/port-and-host-and-status",
            "port: 8083, hostname: example.org, statusCode: 302",
        ),
        redirect_rule("/port-80", "port: 80"),
    ];
    let table = echo_route(&rules.concat());
    let cases = [
        ("/port", 302, "http://echo:8083/port"),
        (
            "/port-and-host",
            302,
            "http://example.org:8083/port-and-host",
        ),
        ("/port-and-status", 301, "http://echo:8083/port-and-status"),
        (
            "/port-and-host-and-status",
            302,
            "http://example.org:8083/port-and-host-and-status",
        ),
        ("/port-80", 302, "http://echo/port-80"),
    ];
    for (path, status, location) in cases {
        assert_eq!(
            redirect(&table, path),
            (status, location.to_owned()),
            "{path}"
        );
    }
}

#[test]
fn redirect_scheme() {
    let rules = [
        redirect_rule("/scheme", "scheme: https"),
        redirect_rule("/scheme-and-host", "hostname: example.org, scheme: https"),
        redirect_rule("/scheme-and-status", "scheme: https, statusCode: 301"),
        redirect_rule(
            "/scheme-and-host-and-status",
            "scheme: https, statusCode: 302, hostname: example.org",
        ),
        redirect_rule("/scheme-and-port", "scheme: https, port: 8443"),
        redirect_rule("/https-443", "scheme: https, port: 443"),
    ];
    let table = echo_route(&rules.concat());
    let cases = [
        ("/scheme", 302, "https://echo/scheme"),
        (
            "/scheme-and-host",
            302,
            "https://example.org/scheme-and-host",
        ),
        ("/scheme-and-status", 301, "https://echo/scheme-and-status"),
        (
            "/scheme-and-host-and-status",
            302,
            "https://example.org/scheme-and-host-and-status",
        ),
        ("/scheme-and-port", 302, "https://echo:8443/scheme-and-port"),
        ("/https-443", 302, "https://echo/https-443"),
    ];
    for (path, status, location) in cases {
        assert_eq!(
            redirect(&table, path),
            (status, location.to_owned()),
            "{path}"
        );
    }
}

#[test]
fn redirect_port_from_the_request() {
    let table = echo_route(
        &[
            redirect_rule("/keep", "hostname: example.org"),
            redirect_rule("/scheme", "scheme: http"),
        ]
        .concat(),
    );
    let m = matched(&table, "echo", 80, &req("/keep"));
    let r = m.rule.filters.redirect.as_ref().unwrap();
    // No scheme in the filter: the request's port stays (left out when well known).
    assert_eq!(
        r.location("http", "echo", Some(8080), "/keep", None, m.matched_prefix)
            .1,
        "http://example.org:8080/keep"
    );
    assert_eq!(
        r.location("https", "echo", Some(443), "/keep", None, m.matched_prefix)
            .1,
        "https://example.org/keep"
    );
    assert_eq!(
        r.location("http", "echo", None, "/keep", None, m.matched_prefix)
            .1,
        "http://example.org/keep"
    );
    assert_eq!(
        r.location("http", "::1", Some(8080), "/keep", None, None).1,
        "http://example.org:8080/keep"
    );
    // A scheme in the filter: that scheme's well-known port (GEP: "MUST be the well-known port").
    let m = matched(&table, "echo", 80, &req("/scheme"));
    let r = m.rule.filters.redirect.as_ref().unwrap();
    assert_eq!(
        r.location("http", "echo", Some(8080), "/scheme", None, None)
            .1,
        "http://echo/scheme"
    );
    let ipv6 = Redirect {
        scheme: None,
        hostname: None,
        path: None,
        port: None,
        status: http::StatusCode::FOUND,
    };
    assert_eq!(
        ipv6.location("http", "fd00::1", Some(8080), "/", None, None)
            .1,
        "http://[fd00::1]:8080/"
    );
}

/// The ReplacePrefixMatch table of the HTTPPathModifier spec, and the conformance rewrites.
#[test]
fn replace_prefix_match() {
    let cases = [
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
        ("/prefix/one", "/prefix", "/", "/one"),
        ("/prefix/one", "/prefix", "/xyz", "/xyz/one"),
        ("/one", "/", "/xyz", "/xyz/one"),
        ("/", "/", "/xyz", "/xyz/"),
        ("/one", "/", "/", "/one"),
    ];
    for (path, prefix, replacement, want) in cases {
        assert_eq!(
            replace_prefix(path, Some(prefix), replacement),
            want,
            "{path} {prefix} {replacement}"
        );
    }
}

/// MeshHTTPRouteRewritePath.
#[test]
fn url_rewrite() {
    let table = echo_route(
        r#"  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}]
  - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
  - matches: [{path: {type: PathPrefix, value: /full/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}]
  - matches: [{path: {type: PathPrefix, value: /host}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: one.example.org}}]
"#,
    );
    let cases = [
        ("/prefix/one/two", Some("/one/two")),
        ("/strip-prefix/three", Some("/three")),
        ("/strip-prefix", Some("/")),
        ("/full/one/two", Some("/one")),
        ("/host/x", None),
    ];
    for (path, want) in cases {
        let m = matched(&table, "echo", 80, &req(path));
        let rewrite = m.rule.filters.rewrite.as_ref().unwrap();
        assert_eq!(
            rewrite.path(path, m.matched_prefix).as_deref(),
            want,
            "{path}"
        );
    }
    let m = matched(&table, "echo", 80, &req("/host"));
    assert_eq!(
        m.rule.filters.rewrite.as_ref().unwrap().hostname(),
        Some("one.example.org")
    );
}

/// MeshHTTPRouteRewritePath's header case and the header modifier semantics.
#[test]
fn header_modifiers() {
    let table = echo_route(
        r#"  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]
        remove: [X-Header-Remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: x-served-by, value: waypoint}]
    backendRefs:
    - name: echo-v1
      port: 80
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {add: [{name: x-backend, value: v1}]}
"#,
    );
    let rule = matched(&table, "echo", 80, &req("/")).rule;
    let mut headers = HeaderMap::new();
    headers.insert("x-header-remove", HeaderValue::from_static("remove-val"));
    headers.insert(
        "x-header-add-append",
        HeaderValue::from_static("append-val-1"),
    );
    headers.append("x-header-set", HeaderValue::from_static("set-val"));
    headers.append("x-header-set", HeaderValue::from_static("set-val-2"));
    rule.filters
        .request_headers
        .as_ref()
        .unwrap()
        .apply(&mut headers);
    let values = |name: &str| -> Vec<&str> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    };
    assert_eq!(values("x-header-set"), ["set-overwrites-values"]);
    assert_eq!(values("x-header-add"), ["header-val-1"]);
    assert_eq!(
        values("x-header-add-append"),
        ["append-val-1", "header-val-2"]
    );
    assert!(values("x-header-remove").is_empty());
    let mut response = HeaderMap::new();
    rule.filters
        .response_headers
        .as_ref()
        .unwrap()
        .apply(&mut response);
    assert_eq!(response["x-served-by"], "waypoint");
    let backend = rule.pick_backend(0).unwrap();
    assert_eq!(
        backend.filters.request_headers.as_ref().unwrap().add[0].0,
        "x-backend"
    );
    assert!(backend.filters.response_headers.is_none() && backend.filters.redirect.is_none());
}

#[test]
fn mirrors() {
    let (table, statuses) = compile(
        r#"
metadata: {name: r, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v1}, percent: 25}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: api, namespace: other, port: 80}, fraction: {numerator: 1, denominator: 8}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: gone, port: 80}}}
    backendRefs: [{name: echo-v1, port: 80}]
"#,
        "",
        &services(),
    );
    let rule = matched(&table, "echo", 80, &req("/")).rule;
    let got: Vec<_> = rule
        .filters
        .mirrors
        .iter()
        .map(|m| (m.service.to_string(), m.port, m.percent))
        .collect();
    let want = [
        ("mesh/echo-v2".to_owned(), Some(80), 100.0),
        ("mesh/echo-v1".to_owned(), None, 25.0),
        ("other/api".to_owned(), Some(80), 12.5),
    ];
    assert_eq!(got, want);
    assert_eq!(summary(&statuses)[0].4, reason::BACKEND_NOT_FOUND);
    assert!(
        statuses[0].message.contains("mesh/gone"),
        "{}",
        statuses[0].message
    );
}

#[test]
fn extension_ref_is_not_skipped() {
    let (table, statuses) = compile(
        "metadata: {name: r, namespace: mesh}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n  rules:\n  - filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Auth, name: strict}}]\n    backendRefs: [{name: echo-v1, port: 80}]\n",
        "",
        &services(),
    );
    let rule = matched(&table, "echo", 80, &req("/")).rule;
    assert_eq!(
        rule.filters.unresolved_extension.as_deref(),
        Some("example.com/Auth/strict")
    );
    let s = &statuses[0];
    assert!(s.accepted && !s.resolved_refs, "{s:?}");
    assert_eq!(s.reason, reason::INVALID_KIND);
}

#[test]
fn timeouts_and_retries() {
    let table = echo_route(
        r#"  - name: both
    matches: [{path: {value: /both}}]
    timeouts: {request: 10s, backendRequest: 2s500ms}
    retry: {codes: [503, 504], attempts: 3, backoff: 100ms}
  - name: zero
    matches: [{path: {value: /zero}}]
    timeouts: {request: 0s, backendRequest: 1m}
    retry: {attempts: 0}
  - name: defaults
    matches: [{path: {value: /defaults}}]
    retry: {}
"#,
    );
    let rule = |path| matched(&table, "echo", 80, &req(path)).rule;
    let both = rule("/both");
    assert_eq!(
        both.timeouts,
        Timeouts {
            request: Some(Duration::from_secs(10)),
            backend_request: Some(Duration::from_millis(2500))
        }
    );
    assert_eq!(
        both.retry,
        Some(Retry {
            attempts: 3,
            codes: vec![503, 504],
            backoff: Some(Duration::from_millis(100)),
            on: None,
        })
    );
    let zero = rule("/zero");
    assert_eq!(
        zero.timeouts,
        Timeouts {
            request: None,
            backend_request: Some(Duration::from_secs(60))
        }
    );
    assert_eq!(zero.retry, None);
    let defaults = rule("/defaults");
    assert_eq!(defaults.timeouts, Timeouts::default());
    assert_eq!(
        defaults.retry,
        Some(Retry {
            attempts: 2,
            codes: Vec::new(),
            backoff: None,
            on: None,
        })
    );
}

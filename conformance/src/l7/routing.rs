//! Gateway API mesh conformance, re-created: each case applies the routes its upstream test
//! uses (in this suite's namespace), waits for the mesh to converge, and checks what the
//! upstream test checks, from inside the client pod.

use meshctl::cluster::http::{Answer, Request};

use super::{version, Suite, NS};
use crate::support::{eventually, CONVERGE};
use crate::Case;

pub fn cases() -> Vec<Case<Suite>> {
    vec![
        Case {
            name: "MeshBasic: a Service answers through its waypoint",
            run: basic,
        },
        Case {
            name: "MeshFrontend: a route on a Service skips its pods' own addresses",
            run: frontend,
        },
        Case {
            name: "MeshPorts: a parentRef port narrows the route to that port",
            run: ports,
        },
        Case {
            name: "MeshConsumerRoute: a consumer's route applies to its clients only",
            run: consumer,
        },
        Case {
            name: "MeshTrafficSplit: /v1 and /v2 to their versions",
            run: traffic_split,
        },
        Case {
            name: "MeshHTTPRouteSimpleSameNamespace",
            run: simple_same_namespace,
        },
        Case {
            name: "MeshHTTPRouteMatching: path prefix and headers",
            run: matching,
        },
        Case {
            name: "MeshHTTPRouteQueryParamMatching",
            run: query_params,
        },
        Case {
            name: "MeshHTTPRouteWeight: 70/30 over 500 requests within 5%",
            run: weight,
        },
        Case {
            name: "MeshHTTPRouteRequestHeaderModifier (rule and backendRef)",
            run: header_modifier,
        },
        Case {
            name: "MeshHTTPRouteRewritePath: prefix and full path",
            run: rewrite,
        },
        Case {
            name: "MeshHTTPRouteRedirectHostAndStatus",
            run: redirect_host_status,
        },
        Case {
            name: "MeshHTTPRouteRedirectPath",
            run: redirect_path,
        },
        Case {
            name: "MeshHTTPRouteRedirectPort",
            run: redirect_port,
        },
        Case {
            name: "MeshHTTPRouteSchemeRedirect",
            run: redirect_scheme,
        },
        Case {
            name: "MeshHTTPRoute303/307/308Redirect",
            run: redirect_codes,
        },
        Case {
            name: "MeshHTTPRouteNamedRule",
            run: named_rule,
        },
        Case {
            name: "MeshGRPCRouteWeight: 70/30/0 over gRPC",
            run: grpc_weight,
        },
        Case {
            name: "MeshGRPCRouteRequestHeaderModifier",
            run: grpc_header_modifier,
        },
    ]
}

/// An HTTPRoute in `gamma` on Service `parent` (optionally one port) with `rules` (YAML, indented
/// as a list under `rules:`).
fn http_route(name: &str, parent: &str, port: Option<u16>, rules: &str) -> String {
    let port = port.map(|p| format!(", port: {p}")).unwrap_or_default();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: {parent}{port}}}]\n  rules:\n{rules}"
    )
}

fn expect(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn answered_by(a: &Answer, want: &str) -> Result<(), String> {
    expect(a.status == 200 && version(a) == Some(want), || {
        format!(
            "wanted 200 from {want}, got HTTP {} from {:?}",
            a.status,
            version(a)
        )
    })
}

fn basic(s: &mut Suite) -> Result<(), String> {
    let a = s.get("echo", 80, "/")?;
    expect(a.status == 200 && version(&a).is_some(), || {
        format!("HTTP {}: {}", a.status, a.body)
    })?;
    expect(
        a.request_header("x-forwarded-proto") == Some("http"),
        || "no x-forwarded-proto: the waypoint was not in the path".into(),
    )?;
    expect(a.request_header("traceparent").is_some(), || {
        "no traceparent".into()
    })
}

fn frontend(s: &mut Suite) -> Result<(), String> {
    let rules = "  - filters:\n    - type: ResponseHeaderModifier\n      responseHeaderModifier: {set: [{name: x-frontend, value: echo-v2}]}\n    backendRefs: [{name: echo-v2, port: 80}]\n";
    s.apply(
        "mesh-frontend",
        &http_route("mesh-frontend", "echo-v2", None, rules),
    )?;
    eventually(CONVERGE, || {
        let a = s.get("echo-v2", 80, "/")?;
        expect(a.header("x-frontend") == Some("echo-v2"), || {
            format!("through the Service: headers {:?}", a.headers)
        })
    })?;
    let pod = s.cluster.pod("echo-v2-1")?.ip;
    let a = s.ask("client", (pod, 8080).into(), &Request::get("/"))?;
    expect(a.status == 200 && a.header("x-frontend").is_none(), || {
        format!(
            "to the pod's own address: HTTP {}, headers {:?}",
            a.status, a.headers
        )
    })
}

fn ports(s: &mut Suite) -> Result<(), String> {
    let rules = "  - filters:\n    - type: ResponseHeaderModifier\n      responseHeaderModifier: {set: [{name: x-port, value: \"80\"}]}\n    backendRefs: [{name: echo, port: 80}]\n";
    s.apply(
        "mesh-ports",
        &http_route("mesh-ports", "echo", Some(80), rules),
    )?;
    eventually(CONVERGE, || {
        let a = s.get("echo", 80, "/")?;
        expect(a.header("x-port") == Some("80"), || {
            format!("port 80: headers {:?}", a.headers)
        })
    })?;
    let a = s.get("echo", 81, "/")?;
    expect(a.status == 200 && a.header("x-port").is_none(), || {
        format!("port 81 got the port-80 route: {:?}", a.headers)
    })?;
    // Without a port the route covers every port.
    s.apply("mesh-ports", &http_route("mesh-ports", "echo", None, rules))?;
    eventually(CONVERGE, || {
        let a = s.get("echo", 81, "/")?;
        expect(a.header("x-port") == Some("80"), || {
            format!("port 81 without parentRef port: {:?}", a.headers)
        })
    })
}

fn consumer(s: &mut Suite) -> Result<(), String> {
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: consumer-route, namespace: gamma-consumer}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, namespace: {NS}, port: 80}}]\n  rules:\n  - filters:\n    - type: ResponseHeaderModifier\n      responseHeaderModifier: {{set: [{{name: x-consumer, value: \"yes\"}}]}}\n    backendRefs: [{{name: echo, namespace: {NS}, port: 80}}]\n"
    );
    s.apply("mesh-consumer", &route)?;
    let vip = s.vip("echo", 80)?;
    eventually(CONVERGE, || {
        let a = s.ask("consumer", vip, &Request::get("/"))?;
        expect(a.header("x-consumer") == Some("yes"), || {
            format!("the consumer's client: {:?}", a.headers)
        })
    })?;
    let a = s.ask("client", vip, &Request::get("/"))?;
    expect(a.status == 200 && a.header("x-consumer").is_none(), || {
        format!(
            "a client of another namespace got the consumer route: {:?}",
            a.headers
        )
    })
}

fn traffic_split(s: &mut Suite) -> Result<(), String> {
    let rules = "  - matches: [{path: {type: PathPrefix, value: /v1}}]\n    backendRefs: [{name: echo-v1, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /v2}}]\n    backendRefs: [{name: echo-v2, port: 80}]\n";
    s.apply(
        "mesh-split",
        &http_route("mesh-split", "echo", Some(80), rules),
    )?;
    eventually(CONVERGE, || {
        for _ in 0..4 {
            answered_by(&s.get("echo", 80, "/v1")?, "echo-v1")?;
            answered_by(&s.get("echo", 80, "/v2")?, "echo-v2")?;
        }
        Ok(())
    })
}

fn simple_same_namespace(s: &mut Suite) -> Result<(), String> {
    let rules = "  - backendRefs: [{name: echo-v1, port: 80}]\n";
    s.apply(
        "mesh-simple",
        &http_route("mesh-simple", "echo", Some(80), rules),
    )?;
    eventually(CONVERGE, || {
        for _ in 0..6 {
            answered_by(&s.get("echo", 80, "/")?, "echo-v1")?;
        }
        Ok(())
    })
}

fn matching(s: &mut Suite) -> Result<(), String> {
    let rules = "  - matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]\n    backendRefs: [{name: echo-v1, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]\n    backendRefs: [{name: echo-v2, port: 80}]\n";
    s.apply(
        "mesh-matching",
        &http_route("mesh-matching", "echo", Some(80), rules),
    )?;
    let vip = s.vip("echo", 80)?;
    let with = |path: &'static str, h: &'static [(&'static str, &'static str)]| Request {
        headers: h,
        ..Request::get(path)
    };
    eventually(CONVERGE, || {
        answered_by(&s.ask("client", vip, &with("/", &[]))?, "echo-v1")?;
        answered_by(&s.ask("client", vip, &with("/example", &[]))?, "echo-v1")?;
        answered_by(
            &s.ask("client", vip, &with("/", &[("version", "one")]))?,
            "echo-v1",
        )?;
        answered_by(&s.ask("client", vip, &with("/v2", &[]))?, "echo-v2")?;
        answered_by(&s.ask("client", vip, &with("/v2/example", &[]))?, "echo-v2")?;
        answered_by(
            &s.ask("client", vip, &with("/", &[("version", "two")]))?,
            "echo-v2",
        )?;
        // Element-wise prefix: /v2example is not under /v2.
        answered_by(&s.ask("client", vip, &with("/v2example", &[]))?, "echo-v1")
    })
}

fn query_params(s: &mut Suite) -> Result<(), String> {
    let rules = "  - matches: [{queryParams: [{name: animal, value: whale}]}]\n    backendRefs: [{name: echo-v1, port: 80}]\n  - matches: [{queryParams: [{name: animal, value: dolphin}]}]\n    backendRefs: [{name: echo-v2, port: 80}]\n  - matches: [{queryParams: [{name: animal, value: dolphin}, {name: color, value: blue}]}, {queryParams: [{name: ANIMAL, value: Whale}]}]\n    backendRefs: [{name: echo, port: 80}]\n    filters:\n    - type: ResponseHeaderModifier\n      responseHeaderModifier: {set: [{name: x-rule, value: three}]}\n";
    s.apply(
        "mesh-query",
        &http_route("mesh-query", "echo", Some(80), rules),
    )?;
    eventually(CONVERGE, || {
        answered_by(&s.get("echo", 80, "/?animal=whale")?, "echo-v1")?;
        answered_by(&s.get("echo", 80, "/?animal=dolphin")?, "echo-v2")?;
        // More query matches win: dolphin + blue goes to the third rule.
        let a = s.get("echo", 80, "/?animal=dolphin&color=blue")?;
        expect(a.header("x-rule") == Some("three"), || {
            format!("dolphin+blue: {:?}", a.headers)
        })?;
        let a = s.get("echo", 80, "/?ANIMAL=Whale")?;
        expect(a.header("x-rule") == Some("three"), || {
            "names are case-sensitive".into()
        })?;
        let a = s.get("echo", 80, "/?animal=shark")?;
        expect(a.status == 404, || {
            format!("no match should be 404, got {}", a.status)
        })
    })
}

fn weight(s: &mut Suite) -> Result<(), String> {
    let rules = "  - backendRefs:\n    - {name: echo-v1, port: 80, weight: 70}\n    - {name: echo-v2, port: 80, weight: 30}\n";
    s.apply(
        "mesh-weight",
        &http_route("mesh-weight", "echo", Some(80), rules),
    )?;
    eventually(CONVERGE, || {
        let mut v1 = 0;
        let n = 500;
        for _ in 0..n {
            let a = s.get("echo", 80, "/weight")?;
            match version(&a) {
                Some("echo-v1") => v1 += 1,
                Some(_) => {}
                None => return Err(format!("HTTP {}", a.status)),
            }
        }
        let share = v1 as f64 / n as f64;
        expect((share - 0.70).abs() <= 0.05, || {
            format!("echo-v1 took {:.1}% (want 70% ± 5)", share * 100.0)
        })
    })
}

fn header_modifier(s: &mut Suite) -> Result<(), String> {
    let rules = "  - matches: [{path: {type: PathPrefix, value: /rule}}]\n    filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier:\n        set: [{name: x-set, value: set}]\n        add: [{name: x-add, value: added}]\n        remove: [x-remove]\n    backendRefs: [{name: echo, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /backend}}]\n    backendRefs:\n    - name: echo-v1\n      port: 80\n      filters:\n      - type: RequestHeaderModifier\n        requestHeaderModifier: {set: [{name: x-backend, value: v1}]}\n";
    s.apply(
        "mesh-headers",
        &http_route("mesh-headers", "echo", Some(80), rules),
    )?;
    let vip = s.vip("echo", 80)?;
    eventually(CONVERGE, || {
        let req = Request {
            headers: &[
                ("x-set", "original"),
                ("x-add", "first"),
                ("x-remove", "gone"),
            ],
            ..Request::get("/rule")
        };
        let a = s.ask("client", vip, &req)?;
        expect(a.request_header("x-set") == Some("set"), || {
            format!("set: {}", a.body)
        })?;
        let adds = a
            .body
            .lines()
            .filter(|l| l.starts_with("RequestHeader=x-add:"))
            .count();
        expect(adds == 2, || {
            format!("add keeps the original and adds one: {}", a.body)
        })?;
        expect(a.request_header("x-remove").is_none(), || "remove".into())?;
        let a = s.get("echo", 80, "/backend")?;
        expect(
            a.request_header("x-backend") == Some("v1") && version(&a) == Some("echo-v1"),
            || format!("backendRef-level filter: {}", a.body),
        )
    })
}

fn rewrite(s: &mut Suite) -> Result<(), String> {
    let rules = "  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}\n    backendRefs: [{name: echo, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}\n    backendRefs: [{name: echo, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /full/path}}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}\n    backendRefs: [{name: echo, port: 80}]\n";
    s.apply(
        "mesh-rewrite",
        &http_route("mesh-rewrite", "echo", Some(80), rules),
    )?;
    eventually(CONVERGE, || {
        for (from, to) in [
            ("/prefix/one/two", "/one/two"),
            ("/strip-prefix/three", "/three"),
            ("/strip-prefix", "/"),
            ("/full/path/original", "/one"),
            ("/full/path/original?q=1", "/one?q=1"),
        ] {
            let a = s.get("echo", 80, from)?;
            expect(a.echo("URL") == Some(to), || {
                format!("{from}: the backend saw {:?}, want {to}", a.echo("URL"))
            })?;
        }
        Ok(())
    })
}

/// Applies one redirect route per `(path, filter)` and checks status and Location.
fn redirects(s: &mut Suite, name: &str, cases: &[(&str, &str, u16, &str)]) -> Result<(), String> {
    let mut rules = String::new();
    for (path, filter, _, _) in cases {
        rules.push_str(&format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    filters:\n    - type: RequestRedirect\n      requestRedirect: {filter}\n"
        ));
    }
    s.apply(name, &http_route(name, "echo", Some(80), &rules))?;
    let vip = s.vip("echo", 80)?;
    eventually(CONVERGE, || {
        for (path, _, status, location) in cases {
            let req = Request {
                host: Some("echo"),
                ..Request::get(path)
            };
            let a = s.ask("client", vip, &req)?;
            expect(
                a.status == *status && a.header("location") == Some(location),
                || {
                    format!(
                        "{path}: got {} {:?}, want {status} {location}",
                        a.status,
                        a.header("location")
                    )
                },
            )?;
        }
        Ok(())
    })
}

fn redirect_host_status(s: &mut Suite) -> Result<(), String> {
    redirects(
        s,
        "mesh-redirect-host",
        &[
            (
                "/hostname-redirect",
                "{hostname: example.org}",
                302,
                "http://example.org/hostname-redirect",
            ),
            (
                "/host-and-status",
                "{hostname: example.org, statusCode: 301}",
                301,
                "http://example.org/host-and-status",
            ),
        ],
    )
}

fn redirect_path(s: &mut Suite) -> Result<(), String> {
    redirects(s, "mesh-redirect-path", &[
        ("/original-prefix", "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}", 302, "http://echo/replacement-prefix"),
        ("/full", "{path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}", 302, "http://echo/full-path-replacement"),
        ("/path-and-host", "{hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}", 302, "http://example.org/replacement-prefix"),
        ("/path-and-status", "{path: {type: ReplaceFullPath, replaceFullPath: /path-and-status-replacement}, statusCode: 301}", 301, "http://echo/path-and-status-replacement"),
    ])
    .and_then(|_| {
        // The prefix case is asked with a longer path, as upstream does.
        let vip = s.vip("echo", 80)?;
        let a = s.ask("client", vip, &Request { host: Some("echo"), ..Request::get("/original-prefix/lemon") })?;
        expect(a.header("location") == Some("http://echo/replacement-prefix/lemon"), || format!("{:?}", a.header("location")))
    })
}

fn redirect_port(s: &mut Suite) -> Result<(), String> {
    redirects(
        s,
        "mesh-redirect-port",
        &[
            ("/port", "{port: 8083}", 302, "http://echo:8083/port"),
            (
                "/port-and-host",
                "{hostname: example.org, port: 8083}",
                302,
                "http://example.org:8083/port-and-host",
            ),
            (
                "/port-and-status",
                "{port: 8083, statusCode: 301}",
                301,
                "http://echo:8083/port-and-status",
            ),
        ],
    )
}

fn redirect_scheme(s: &mut Suite) -> Result<(), String> {
    redirects(
        s,
        "mesh-redirect-scheme",
        &[
            ("/scheme", "{scheme: https}", 302, "https://echo/scheme"),
            (
                "/scheme-and-host",
                "{scheme: https, hostname: example.org}",
                302,
                "https://example.org/scheme-and-host",
            ),
            (
                "/scheme-and-status",
                "{scheme: https, statusCode: 301}",
                301,
                "https://echo/scheme-and-status",
            ),
        ],
    )
}

fn redirect_codes(s: &mut Suite) -> Result<(), String> {
    redirects(
        s,
        "mesh-redirect-codes",
        &[
            ("/303", "{statusCode: 303}", 303, "http://echo/303"),
            ("/307", "{statusCode: 307}", 307, "http://echo/307"),
            ("/308", "{statusCode: 308}", 308, "http://echo/308"),
        ],
    )
}

fn named_rule(s: &mut Suite) -> Result<(), String> {
    let rules = "  - name: to-v2\n    matches: [{path: {type: PathPrefix, value: /named}}]\n    backendRefs: [{name: echo-v2, port: 80}]\n  - name: the-rest\n    backendRefs: [{name: echo-v1, port: 80}]\n";
    s.apply(
        "mesh-named",
        &http_route("mesh-named", "echo", Some(80), rules),
    )?;
    eventually(CONVERGE, || {
        answered_by(&s.get("echo", 80, "/named")?, "echo-v2")?;
        answered_by(&s.get("echo", 80, "/other")?, "echo-v1")
    })
}

fn grpc_route(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 7070}}]\n  rules:\n{rules}"
    )
}

fn grpc_call<'a>(headers: &'a [(&'a str, &'a str)]) -> Request<'a> {
    Request {
        method: "POST",
        path: "/grpc.echo.Echo/Call",
        host: None,
        headers,
        body: b"\x00\x00\x00\x00\x00",
        http2: true,
    }
}

const GRPC_HEADERS: &[(&str, &str)] = &[("content-type", "application/grpc"), ("te", "trailers")];

fn grpc_weight(s: &mut Suite) -> Result<(), String> {
    let rules = "  - backendRefs:\n    - {name: echo-v1, port: 7070, weight: 70}\n    - {name: echo-v2, port: 7070, weight: 30}\n    - {name: echo, port: 7070, weight: 0}\n";
    s.apply("mesh-grpc-weight", &grpc_route("mesh-grpc-weight", rules))?;
    let vip = s.vip("echo", 7070)?;
    eventually(CONVERGE, || {
        let (mut v1, n) = (0, 300);
        for _ in 0..n {
            let a = s.ask("client", vip, &grpc_call(GRPC_HEADERS))?;
            expect(
                a.status == 200 && a.trailer("grpc-status") == Some("0"),
                || format!("HTTP {} trailers {:?}", a.status, a.trailers),
            )?;
            if version(&a) == Some("echo-v1") {
                v1 += 1;
            }
        }
        let share = v1 as f64 / n as f64;
        expect((share - 0.70).abs() <= 0.06, || {
            format!(
                "echo-v1 took {:.1}% of gRPC calls (want 70%)",
                share * 100.0
            )
        })
    })
}

fn grpc_header_modifier(s: &mut Suite) -> Result<(), String> {
    let rules = "  - matches: [{headers: [{name: x-test-case, value: set}]}]\n    filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {set: [{name: x-grpc, value: set}], remove: [x-drop]}\n    backendRefs: [{name: echo-v1, port: 7070}]\n";
    s.apply("mesh-grpc-headers", &grpc_route("mesh-grpc-headers", rules))?;
    let vip = s.vip("echo", 7070)?;
    eventually(CONVERGE, || {
        let headers = [
            GRPC_HEADERS[0],
            GRPC_HEADERS[1],
            ("x-test-case", "set"),
            ("x-drop", "1"),
        ];
        let a = s.ask("client", vip, &grpc_call(&headers))?;
        expect(
            a.body.contains("RequestHeader=x-grpc:set") && !a.body.contains("RequestHeader=x-drop"),
            || format!("the backend saw: {}", a.body),
        )
    })
}

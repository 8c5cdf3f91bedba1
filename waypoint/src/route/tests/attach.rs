//! Which routes apply to which Service port and client; backend weights.

use super::*;

fn route(name: &str, ns: &str, parent: &str, rule: &str) -> String {
    format!("metadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: [{parent}]\n  rules:\n  - name: {rule}\n")
}

#[test]
fn services_without_routes_and_unknown_services() {
    let table = http_table(&route(
        "r",
        NS,
        "{group: \"\", kind: Service, name: echo}",
        "echo-rule",
    ));
    assert_eq!(hit(&table, "echo", 80, &req("/")), "echo-rule");
    assert_eq!(hit(&table, "echo-v1", 80, &req("/")), "no routes");
    assert_eq!(hit(&table, "unknown", 80, &req("/")), "no routes");
    // A port the Service does not declare still gets whole-Service routes.
    assert_eq!(hit(&table, "echo", 9999, &req("/")), "echo-rule");
}

/// MeshPorts: a parentRef with a port applies to that port only.
#[test]
fn port_narrowed_parents() {
    let yaml = format!(
        "{}---\n{}",
        route(
            "v1",
            NS,
            "{group: \"\", kind: Service, name: echo-v1, port: 80}",
            "v1-on-80"
        ),
        route(
            "v2",
            NS,
            "{group: \"\", kind: Service, name: echo-v2}",
            "v2-all-ports"
        ),
    );
    let table = http_table(&yaml);
    assert_eq!(hit(&table, "echo-v1", 80, &req("/")), "v1-on-80");
    assert_eq!(hit(&table, "echo-v1", 8080, &req("/")), "no routes");
    assert_eq!(hit(&table, "echo-v1", 9999, &req("/")), "no routes");
    assert_eq!(hit(&table, "echo-v2", 80, &req("/")), "v2-all-ports");
    assert_eq!(hit(&table, "echo-v2", 8080, &req("/")), "v2-all-ports");
}

#[test]
fn section_name_selects_a_port_by_name() {
    let yaml = format!(
        "{}---\n{}",
        route(
            "by-name",
            NS,
            "{group: \"\", kind: Service, name: echo, sectionName: http-alt}",
            "alt"
        ),
        route(
            "both",
            NS,
            "{group: core, kind: Service, name: echo, sectionName: http, port: 80}",
            "main"
        ),
    );
    let (table, statuses) = compile(&yaml, "", &services());
    assert!(statuses.iter().all(|s| s.accepted), "{statuses:?}");
    assert_eq!(hit(&table, "echo", 8080, &req("/")), "alt");
    assert_eq!(hit(&table, "echo", 80, &req("/")), "main");
    assert_eq!(hit(&table, "echo", 7070, &req("/")), "no routes");
}

/// MeshConsumerRoute: a route in the client's namespace replaces the producer's for it.
#[test]
fn consumer_routes_replace_producer_routes_for_their_namespace() {
    let producer = "metadata: {name: producer, namespace: mesh}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n  rules:\n  - name: producer-api\n    matches: [{path: {value: /api}}]\n  - name: producer-root\n";
    let consumer = "metadata: {name: consumer, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, namespace: mesh}]\n  rules:\n  - name: consumer-web\n    matches: [{path: {value: /web}}]\n";
    let (table, statuses) = compile(&format!("{producer}---\n{consumer}"), "", &services());
    assert!(
        statuses.iter().all(|s| s.accepted && s.resolved_refs),
        "{statuses:?}"
    );
    assert!(
        statuses[1].message.contains("consumer route"),
        "{}",
        statuses[1].message
    );
    assert_eq!(
        hit(&table, "echo", 80, &req("/web").from("shop")),
        "consumer-web"
    );
    // The producer's rules do not apply to the consumer's namespace at all.
    assert_eq!(hit(&table, "echo", 80, &req("/api").from("shop")), "404");
    // Everyone else gets the producer's.
    assert_eq!(
        hit(&table, "echo", 80, &req("/api").from("mesh")),
        "producer-api"
    );
    assert_eq!(
        hit(&table, "echo", 80, &req("/web").from("other")),
        "producer-root"
    );
    assert_eq!(hit(&table, "echo", 80, &req("/web")), "producer-root");
}

#[test]
fn consumer_routes_alone_and_per_port() {
    let consumer = route(
        "consumer",
        "shop",
        "{group: \"\", kind: Service, name: echo-v1, namespace: mesh, port: 80}",
        "shop-80",
    );
    let table = http_table(&consumer);
    assert_eq!(
        hit(&table, "echo-v1", 80, &req("/").from("shop")),
        "shop-80"
    );
    assert_eq!(
        hit(&table, "echo-v1", 80, &req("/").from("mesh")),
        "no routes"
    );
    assert_eq!(
        hit(&table, "echo-v1", 8080, &req("/").from("shop")),
        "no routes"
    );
    let producer = route(
        "producer",
        NS,
        "{group: \"\", kind: Service, name: echo-v1}",
        "producer",
    );
    let table = http_table(&format!("{consumer}---\n{producer}"));
    assert_eq!(
        hit(&table, "echo-v1", 80, &req("/").from("shop")),
        "shop-80"
    );
    assert_eq!(
        hit(&table, "echo-v1", 8080, &req("/").from("shop")),
        "producer"
    );
}

#[test]
fn waypoint_gateway_routes_apply_where_no_service_route_does() {
    let yaml = format!(
        "{}---\n{}---\n{}",
        route("everything", NS, "{name: waypoint}", "gateway-rule"),
        route(
            "echo",
            NS,
            "{group: \"\", kind: Service, name: echo, port: 80}",
            "echo-rule"
        ),
        route(
            "shop",
            "shop",
            "{group: \"\", kind: Service, name: echo-v1, namespace: mesh}",
            "shop-rule"
        ),
    );
    let (table, statuses) = compile(&yaml, "", &services());
    assert!(statuses.iter().all(|s| s.accepted), "{statuses:?}");
    assert_eq!(statuses[0].parent, "Gateway/mesh/waypoint");
    assert_eq!(hit(&table, "echo", 80, &req("/")), "echo-rule");
    assert_eq!(hit(&table, "echo", 8080, &req("/")), "gateway-rule");
    assert_eq!(hit(&table, "echo-v2", 80, &req("/")), "gateway-rule");
    assert_eq!(
        hit_in(&table, "other", "api", 80, &req("/")),
        "gateway-rule"
    );
    assert_eq!(
        hit(&table, "echo-v1", 80, &req("/").from("shop")),
        "shop-rule"
    );
    assert_eq!(
        hit(&table, "echo-v1", 80, &req("/").from("mesh")),
        "gateway-rule"
    );
    // Services the waypoint does not serve are not covered.
    assert_eq!(hit(&table, "unknown", 80, &req("/")), "no routes");
}

#[test]
fn hostnames_are_ignored() {
    let yaml = "metadata: {name: r, namespace: mesh}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n  hostnames: [not-echo.example.com]\n  rules:\n  - name: any-host\n";
    let (table, statuses) = compile(yaml, "", &services());
    assert_eq!(
        hit(&table, "echo", 80, &req("/").header("host", "echo-v2")),
        "any-host"
    );
    assert!(
        statuses[0].message.contains("hostnames are ignored"),
        "{}",
        statuses[0].message
    );
}

fn split(weights: &[(&str, u32)]) -> RouteTable {
    let backends: Vec<String> = weights
        .iter()
        .map(|(name, weight)| format!("{{name: {name}, port: 80, weight: {weight}}}"))
        .collect();
    http_table(&format!(
        "metadata: {{name: split, namespace: mesh}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo}}]\n  rules:\n  - backendRefs: [{}]\n",
        backends.join(", ")
    ))
}

fn shares(rule: &CompiledRule, randoms: impl Iterator<Item = u64>) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for random in randoms {
        let name = rule
            .pick_backend(random)
            .map_or("none".to_owned(), |b| b.service.name.clone());
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    counts.sort();
    counts
}

/// MeshHTTPRouteWeight-like split: exact over a full cycle of a counter, close for random values.
#[test]
fn weighted_backends() {
    let table = split(&[("echo-v1", 70), ("echo-v2", 30), ("echo", 0)]);
    let rule = matched(&table, "echo", 80, &req("/")).rule;
    assert_eq!(rule.total_weight(), 100);
    let exact = shares(rule, 0..10_000);
    assert_eq!(
        exact,
        [("echo-v1".to_owned(), 7_000), ("echo-v2".to_owned(), 3_000)]
    );
    // Pseudo-random values (SplitMix64).
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let random = std::iter::repeat_with(move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    });
    let counts = shares(rule, random.take(100_000));
    assert_eq!(counts.len(), 2, "weight 0 chosen: {counts:?}");
    let v1 = counts[0].1 as f64 / 100_000.0;
    assert!((0.69..0.71).contains(&v1), "{counts:?}");
}

#[test]
fn no_backend_to_pick() {
    let table = split(&[("echo-v1", 0), ("echo-v2", 0)]);
    let rule = matched(&table, "echo", 80, &req("/")).rule;
    assert!(rule.pick_backend(0).is_none() && rule.pick_backend(u64::MAX).is_none());
    let table = http_table(&route(
        "r",
        NS,
        "{group: \"\", kind: Service, name: echo}",
        "no-backends",
    ));
    let rule = matched(&table, "echo", 80, &req("/")).rule;
    assert!(rule.backends.is_empty() && rule.pick_backend(7).is_none());
}

#[test]
fn unresolved_backends_keep_their_share() {
    let table = split(&[("echo-v1", 1), ("missing", 1)]);
    let rule = matched(&table, "echo", 80, &req("/")).rule;
    let picked: Vec<(String, bool)> = (0..4)
        .map(|r| {
            rule.pick_backend(r)
                .map(|b| (b.service.name.clone(), b.resolved))
                .unwrap()
        })
        .collect();
    let want = [
        ("echo-v1", true),
        ("missing", false),
        ("echo-v1", true),
        ("missing", false),
    ];
    assert_eq!(picked, want.map(|(n, r)| (n.to_owned(), r)));
    let missing = &rule.backends[1];
    assert_eq!(
        (missing.service.to_string(), missing.port),
        ("mesh/missing".to_owned(), Some(80))
    );
}

#[test]
fn backend_defaults() {
    let table = http_table(
        "metadata: {name: r, namespace: mesh}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo}]\n  rules:\n  - backendRefs: [{name: echo-v1}, {name: api, namespace: other, port: 80}]\n",
    );
    let rule = matched(&table, "echo", 80, &req("/")).rule;
    let got: Vec<_> = rule
        .backends
        .iter()
        .map(|b| (b.service.to_string(), b.port, b.weight, b.resolved))
        .collect();
    assert_eq!(
        got,
        [
            ("mesh/echo-v1".to_owned(), None, 1, true),
            ("other/api".to_owned(), Some(80), 1, true)
        ]
    );
    assert_eq!(&*rule.route, "mesh/r");
    assert_eq!(rule.kind, RouteKind::Http);
}

use super::*;
use crate::l7::duration::parse_duration;
use std::time::Duration;

fn http(yaml: &str) -> HttpRoute {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn grpc(yaml: &str) -> GrpcRoute {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
}

/// The shape of the Gateway API mesh conformance manifests (MeshHTTPRouteRedirectPort).
#[test]
fn mesh_conformance_redirect_manifest() {
    let route = http(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-redirect-port
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /port
    filters:
    - type: RequestRedirect
      requestRedirect:
        port: 8083
  - matches:
    - path:
        type: PathPrefix
        value: /port-and-host-and-status
    filters:
    - type: RequestRedirect
      requestRedirect:
        port: 8083
        hostname: example.org
        statusCode: 301
"#,
    );
    assert_eq!(
        route.metadata.key(),
        "gateway-conformance-mesh/mesh-redirect-port"
    );
    let parent = &route.spec.parent_refs[0];
    assert_eq!(
        (parent.group.as_str(), parent.kind.as_str()),
        ("", "Service")
    );
    assert_eq!(
        (
            parent.name.as_str(),
            parent.port,
            parent.namespace.as_deref()
        ),
        ("echo", Some(80), None)
    );
    let first = &route.spec.rules[0];
    let path = first.matches[0].path.as_ref().unwrap();
    assert_eq!(
        (&path.match_type, path.value.as_str()),
        (&PathMatchType::PathPrefix, "/port")
    );
    assert_eq!(first.filters[0].filter_type, FilterType::RequestRedirect);
    let redirect = first.filters[0].request_redirect.as_ref().unwrap();
    assert_eq!(
        (
            redirect.port,
            redirect.status_code,
            redirect.hostname.as_deref()
        ),
        (Some(8083), 302, None)
    );
    let second = route.spec.rules[1].filters[0]
        .request_redirect
        .as_ref()
        .unwrap();
    assert_eq!(
        (second.status_code, second.hostname.as_deref()),
        (301, Some("example.org"))
    );
}

/// As `kubectl get httproute -o yaml` prints it: server-side metadata and status included.
#[test]
fn route_copied_from_a_cluster() {
    let route = http(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  creationTimestamp: "2024-05-01T10:00:00Z"
  generation: 3
  name: reviews
  namespace: bookinfo
  resourceVersion: "123456"
  uid: 0b8f2d1c-9a4e-4b8e-bb57-1d2c3e4f5a6b
  labels:
    app: reviews
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: "{}"
  managedFields:
  - apiVersion: gateway.networking.k8s.io/v1
    manager: kubectl
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    sectionName: http
  hostnames: ["reviews.bookinfo.svc.cluster.local"]
  rules:
  - name: canary
    matches:
    - headers:
      - name: x-canary
        value: "true"
      - type: RegularExpression
        name: user-agent
        value: ".*Firefox.*"
      queryParams:
      - name: debug
        value: "1"
      method: GET
    backendRefs:
    - name: reviews-v2
      port: 9080
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier:
          add:
          - name: x-version
            value: v2
    timeouts:
      request: 10s
      backendRequest: 2s
    retry:
      codes: [503, 504]
      attempts: 3
      backoff: 100ms
  - backendRefs:
    - name: reviews-v1
      port: 9080
      weight: 90
    - group: ""
      kind: Service
      name: reviews-v3
      namespace: bookinfo
      port: 9080
      weight: 10
status:
  parents:
  - conditions:
    - lastTransitionTime: "2024-05-01T10:00:01Z"
      message: Route was valid
      observedGeneration: 3
      reason: Accepted
      status: "True"
      type: Accepted
    controllerName: istio.io/gateway-controller
    parentRef:
      group: ""
      kind: Service
      name: reviews
"#,
    );
    assert_eq!(
        route.metadata.creation_timestamp.as_deref(),
        Some("2024-05-01T10:00:00Z")
    );
    assert!(route.status.is_some());
    assert_eq!(
        route.spec.parent_refs[0].section_name.as_deref(),
        Some("http")
    );
    assert_eq!(route.spec.hostnames, ["reviews.bookinfo.svc.cluster.local"]);
    let canary = &route.spec.rules[0];
    assert_eq!(canary.name.as_deref(), Some("canary"));
    let m = &canary.matches[0];
    assert_eq!(m.path, None);
    assert_eq!(m.method.as_deref(), Some("GET"));
    assert_eq!(m.headers[0].match_type, ValueMatchType::Exact);
    assert_eq!(m.headers[1].match_type, ValueMatchType::RegularExpression);
    assert_eq!(
        (
            m.query_params[0].name.as_str(),
            m.query_params[0].value.as_str()
        ),
        ("debug", "1")
    );
    let v2 = &canary.backend_refs[0];
    assert_eq!(
        (v2.group.as_str(), v2.kind.as_str(), v2.weight),
        ("", "Service", 1)
    );
    let add = &v2.filters[0].request_header_modifier.as_ref().unwrap().add[0];
    assert_eq!((add.name.as_str(), add.value.as_str()), ("x-version", "v2"));
    let timeouts = canary.timeouts.as_ref().unwrap();
    assert_eq!(
        parse_duration(timeouts.request.as_deref().unwrap()),
        Ok(Duration::from_secs(10))
    );
    let retry = canary.retry.as_ref().unwrap();
    assert_eq!(
        (retry.codes.as_slice(), retry.attempts),
        (&[503, 504][..], Some(3))
    );
    let split: Vec<_> = route.spec.rules[1]
        .backend_refs
        .iter()
        .map(|b| (b.name.as_str(), b.weight))
        .collect();
    assert_eq!(split, [("reviews-v1", 90), ("reviews-v3", 10)]);
}

/// URLRewrite and header modifiers, as in MeshHTTPRouteRewritePath; a Gateway parent.
#[test]
fn rewrite_and_header_filters() {
    let route = http(
        r#"
metadata: {name: rewrite}
spec:
  parentRefs:
  - name: waypoint
  rules:
  - matches:
    - path: {type: PathPrefix, value: /prefix/rewrite-path-and-modify-headers}
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: one.example.org
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /prefix}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: header-val-1}]
        remove: [X-Header-Remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: X-Header-Set, value: v1}]
    - type: RequestMirror
      requestMirror:
        backendRef: {name: echo-v2, port: 80}
        fraction: {numerator: 1}
  - matches:
    - path: {type: Exact, value: /full}
    filters:
    - type: URLRewrite
      urlRewrite:
        path: {type: ReplaceFullPath, replaceFullPath: /one}
    - type: ExtensionRef
      extensionRef: {group: example.com, kind: Filter, name: f}
"#,
    );
    assert_eq!(
        (route.api_version.as_str(), route.kind.as_str()),
        (API_VERSION, "HTTPRoute")
    );
    assert_eq!(route.metadata.namespace, "default");
    let parent = &route.spec.parent_refs[0];
    assert_eq!(
        (parent.group.as_str(), parent.kind.as_str()),
        (GROUP, "Gateway")
    );
    let filters = &route.spec.rules[0].filters;
    let rewrite = filters[0].url_rewrite.as_ref().unwrap();
    let path = rewrite.path.as_ref().unwrap();
    assert_eq!(path.modifier_type, PathModifierType::ReplacePrefixMatch);
    assert_eq!(path.replace_prefix_match.as_deref(), Some("/prefix"));
    assert_eq!(filters[0].filter_type, FilterType::UrlRewrite);
    let headers = filters[1].request_header_modifier.as_ref().unwrap();
    assert_eq!(headers.remove, ["X-Header-Remove"]);
    let mirror = filters[3].request_mirror.as_ref().unwrap();
    assert_eq!(
        mirror.fraction,
        Some(Fraction {
            numerator: 1,
            denominator: 100
        })
    );
    assert_eq!(
        (
            mirror.backend_ref.kind.as_str(),
            mirror.backend_ref.group.as_str()
        ),
        ("Service", "")
    );
    let second = &route.spec.rules[1];
    assert_eq!(
        second.matches[0].path.as_ref().unwrap().match_type,
        PathMatchType::Exact
    );
    assert_eq!(
        second.filters[1].extension_ref.as_ref().unwrap().kind,
        "Filter"
    );
}

#[test]
fn grpc_route() {
    let route = grpc(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc-split, namespace: gateway-conformance-mesh}
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, port: 7070}
  rules:
  - matches:
    - method: {service: grpc.health.v1.Health, method: Check}
      headers:
      - {name: x-tenant, value: blue}
    - method: {type: RegularExpression, service: "grpc\\.reflection\\..*"}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-routed, value: "yes"}]
    backendRefs:
    - {name: echo-v1, port: 7070, weight: 70}
    - {name: echo-v2, port: 7070, weight: 30}
  - backendRefs:
    - name: echo-v1
      port: 7070
"#,
    );
    assert_eq!(route.kind, "GRPCRoute");
    let rule = &route.spec.rules[0];
    let exact = rule.matches[0].method.as_ref().unwrap();
    assert_eq!(exact.match_type, ValueMatchType::Exact);
    assert_eq!(
        (exact.service.as_deref(), exact.method.as_deref()),
        (Some("grpc.health.v1.Health"), Some("Check"))
    );
    assert_eq!(rule.matches[0].headers[0].value, "blue");
    let regex = rule.matches[1].method.as_ref().unwrap();
    assert_eq!(regex.match_type, ValueMatchType::RegularExpression);
    assert_eq!(regex.method, None);
    let weights: Vec<u32> = rule.backend_refs.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [70, 30]);
    assert!(route.spec.rules[1].matches.is_empty());
}

#[test]
fn defaults_follow_the_api_server() {
    let route = http("metadata: {name: r}\nspec:\n  parentRefs: [{name: gw}]\n");
    assert_eq!(route.spec.rules, vec![HttpRouteRule::default()]);
    let rule = http(
            "metadata: {name: r}\nspec:\n  rules:\n  - matches: [{path: {}}]\n    filters:\n    - type: RequestRedirect\n      requestRedirect: {}\n",
        );
    let rule = &rule.spec.rules[0];
    assert_eq!(rule.matches[0].path, Some(HttpPathMatch::default()));
    assert_eq!(rule.matches[0].path.as_ref().unwrap().value, "/");
    assert_eq!(
        rule.filters[0]
            .request_redirect
            .as_ref()
            .unwrap()
            .status_code,
        302
    );
    let grpc_route = grpc("metadata: {name: g}\nspec: {}\n");
    assert!(grpc_route.spec.rules.is_empty());
    assert_eq!(grpc_route.api_version, API_VERSION);
}

#[test]
fn unknown_fields_are_refused_by_name() {
    let err = serde_yaml_ng::from_str::<HttpRoute>(
        "metadata: {name: r}\nspec:\n  rules:\n  - backendRefs:\n    - name: a\n      weigth: 3\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `weigth`"), "{err}");
    let err = serde_yaml_ng::from_str::<HttpRoute>("metadata: {name: r}\nspec:\n  parentRef: []\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `parentRef`"), "{err}");
    let err = serde_yaml_ng::from_str::<GrpcRoute>(
        "metadata: {name: g}\nspec:\n  rules:\n  - timeouts: {request: 1s}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `timeouts`"), "{err}");
}

#[test]
fn unknown_enum_values_parse_and_are_kept() {
    let route = http(
            "metadata: {name: r}\nspec:\n  rules:\n  - matches: [{path: {type: Glob, value: '/a*'}}]\n    filters: [{type: RateLimit}]\n",
        );
    let rule = &route.spec.rules[0];
    let path = rule.matches[0].path.as_ref().unwrap();
    assert_eq!(path.match_type, PathMatchType::Other("Glob".into()));
    assert_eq!(rule.filters[0].filter_type.as_str(), "RateLimit");
    let text = serde_yaml_ng::to_string(&route).unwrap();
    assert!(text.contains("type: Glob"), "{text}");
}

#[test]
fn serializes_back_to_the_same_route_without_status() {
    let yaml = r#"
metadata: {name: r, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: cart, port: 8080}]
  rules:
  - matches: [{path: {type: Exact, value: /checkout}, method: POST}]
    filters:
    - type: CORS
      cors: {allowOrigins: ["https://shop.example"]}
    backendRefs: [{name: cart-v2, port: 8080, weight: 0}]
    timeouts: {request: 1m30s}
status: {parents: []}
"#;
    let route = http(yaml);
    assert!(route.spec.rules[0].filters[0].cors.is_some());
    let text = serde_yaml_ng::to_string(&route).unwrap();
    assert!(!text.contains("status"), "{text}");
    assert!(text.contains("parentRefs"), "{text}");
    let mut again: HttpRoute = serde_yaml_ng::from_str(&text).unwrap();
    again.status = route.status;
    again.spec.rules[0].filters[0].cors = route.spec.rules[0].filters[0].cors;
    assert_eq!(again, route);
}

//! RequestAuthentications: which waypoints they reach, and what survives translation.

use super::*;

/// RequestAuthentications next to [`MESH`]: attached to a waypoint's Gateway (Istio's
/// documented example, and a `v1beta1` one with every field), to a Service a waypoint serves,
/// to the waypoint GatewayClass from the root namespace; and some that attach to no waypoint.
const JWT: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt-example, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: shop-wp}]
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwksUri: "https://raw.githubusercontent.com/istio/istio/release-1.24/security/tools/jwt/samples/jwks.json"
---
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: all-fields, namespace: shop}
spec:
  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: shop-wp}
  jwtRules:
  - issuer: issuer-foo
    audiences: [foo-api]
    jwks: '{"keys": []}'
    fromHeaders: [{name: x-jwt-assertion, prefix: "Bearer "}, {name: x-token}]
    fromParams: [token]
    fromCookies: [session]
    outputPayloadToHeader: x-jwt-payload
    forwardOriginalToken: true
    outputClaimToHeaders: [{header: x-sub, claim: sub}]
    timeout: 3s
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: reviews-jwt, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  jwtRules: [{issuer: reviews-issuer, jwksUri: "https://example.com/jwks.json"}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: class-jwt, namespace: istio-system}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}]
  jwtRules: [{issuer: mesh-issuer}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: class-not-root, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: istio-waypoint}]
  jwtRules: [{issuer: nobody}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: cross, namespace: other}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: shop-wp, namespace: shop}]
  jwtRules: [{issuer: nobody}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: same-name-other-namespace, namespace: other}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: shop-wp}]
  jwtRules: [{issuer: nobody}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: unbound-service, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: payments}]
  jwtRules: [{issuer: nobody}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: selector-jwt, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  jwtRules: [{issuer: nobody}]
"#;

fn jwt_mesh() -> Cluster {
    let mut cluster = mesh();
    let mut errors = Vec::new();
    manifests::load_text(JWT, "jwt.yaml", &mut cluster, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(cluster.request_authentications.len(), 9);
    cluster
}

fn request_authn_keys(c: &WaypointConfig) -> Vec<String> {
    c.request_authentications.iter().map(|r| r.key()).collect()
}

#[test]
fn request_authentications_reach_the_waypoints_they_target() {
    let cluster = jwt_mesh();
    let t = waypoints(&View::from_cluster(&cluster), &ClusterInfo::default());
    // The waypoint's own Gateway (targetRefs, and the singular targetRef), and the GatewayClass
    // from the root namespace; sorted by key.
    assert_eq!(
        request_authn_keys(config(&t, "shop/shop-wp")),
        [
            "istio-system/class-jwt",
            "shop/all-fields",
            "shop/jwt-example"
        ]
    );
    // A Service the waypoint serves.
    assert_eq!(
        request_authn_keys(config(&t, "shop/svc-only")),
        ["istio-system/class-jwt", "shop/reviews-jwt"]
    );
    // Another namespace's Gateway, a Service bound to no waypoint (payments opts out), the
    // GatewayClass from outside the root namespace, a selector: none of these.
    for key in ["shop/wl-wp", "infra/shared"] {
        assert_eq!(
            request_authn_keys(config(&t, key)),
            ["istio-system/class-jwt"],
            "{key}"
        );
    }
    // Nothing said about those that attach nowhere (as for AuthorizationPolicies).
    assert!(
        !t.notes
            .iter()
            .any(|n| n.object.starts_with("RequestAuthentication")),
        "{:?}",
        t.notes
    );
    // Without them, the configurations are the ones before.
    let before = configs();
    for ((_, _, with), (_, _, without)) in t.configs.iter().zip(&before.configs) {
        let mut with = with.clone();
        with.request_authentications.clear();
        assert_eq!(&with, without);
    }
}

#[test]
fn request_authentications_keep_their_shape() {
    let cluster = jwt_mesh();
    let t = waypoints(&View::from_cluster(&cluster), &ClusterInfo::default());
    let shop = config(&t, "shop/shop-wp");
    // As meshcore parses the same YAML (v1beta1 included).
    for (sent, doc) in shop.request_authentications[1..].iter().zip([1, 0]) {
        let text = JWT.split("\n---\n").nth(doc).unwrap();
        let written: l7::authn::RequestAuthentication = serde_yaml_ng::from_str(text).unwrap();
        assert_eq!(sent.spec, written.spec, "{}", sent.key());
        assert_eq!(sent.metadata, written.metadata);
    }
    let example = &shop.request_authentications[2].spec.jwt_rules[0];
    assert_eq!(example.issuer, "testing@secure.istio.io");
    assert_eq!(
        example.jwks_uri.as_deref(),
        Some("https://raw.githubusercontent.com/istio/istio/release-1.24/security/tools/jwt/samples/jwks.json")
    );
    let all = &shop.request_authentications[1].spec.jwt_rules[0];
    assert_eq!(
        all,
        &l7::authn::JwtRule {
            issuer: "issuer-foo".into(),
            audiences: vec!["foo-api".into()],
            jwks_uri: None,
            jwks: Some(r#"{"keys": []}"#.into()),
            from_headers: vec![
                l7::authn::JwtHeader {
                    name: "x-jwt-assertion".into(),
                    prefix: "Bearer ".into(),
                },
                l7::authn::JwtHeader {
                    name: "x-token".into(),
                    prefix: String::new(),
                },
            ],
            from_params: vec!["token".into()],
            from_cookies: vec!["session".into()],
            output_payload_to_header: Some("x-jwt-payload".into()),
            forward_original_token: true,
            output_claim_to_headers: vec![l7::authn::ClaimToHeader {
                header: "x-sub".into(),
                claim: "sub".into(),
            }],
            timeout: Some("3s".into()),
        }
    );
    // And the whole configuration survives its JSON encoding.
    let json = serde_json::to_string(shop).unwrap();
    let back: WaypointConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, shop);
}

#[test]
fn request_authentication_manifests_are_strict() {
    let mut cluster = Cluster::default();
    let mut errors = Vec::new();
    manifests::load_text(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: typo, namespace: shop}\n\
         spec: {jwtRules: [{issuer: a, jwksUrl: x}]}\n---\n\
         apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {name: snake, namespace: shop}\n\
         spec: {jwtRules: [{issuer: a, jwks_uri: 'https://example.com/jwks.json'}]}\n---\n\
         apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: no-spec}\n",
        "ra.yaml",
        &mut cluster,
        &mut errors,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("ra.yaml document 1 (RequestAuthentication shop/typo): ")
            && errors[0].contains("jwksUrl"),
        "{errors:?}"
    );
    // Istio's `jwks_uri` spelling is read as `jwksUri`; a missing spec is an empty one, and an
    // object without a namespace lands in `default`.
    let keys: Vec<String> = cluster
        .request_authentications
        .iter()
        .map(|r| crate::cluster::key(&r.metadata))
        .collect();
    assert_eq!(keys, ["shop/snake", "default/no-spec"]);
    assert_eq!(
        cluster.request_authentications[0].spec.jwt_rules[0]
            .jwks_uri
            .as_deref(),
        Some("https://example.com/jwks.json")
    );
}

//! RequestAuthentication through the waypoint: a token checked before authorization, refused
//! with 401 and Envoy's reason, its principal and claims used by AuthorizationPolicy, and the
//! request passed upstream without the token but with the claims the rule copies out.

use std::net::SocketAddr;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::Mesh;

const ISSUER: &str = "testing@secure.istio.io";

fn config(m: &Mesh) -> String {
    // The key set as one JSON line, inside a single-quoted YAML scalar.
    let jwks: Value =
        serde_json::from_str(include_str!("../../src/authn/testdata/rsa-test-jwks.json")).unwrap();
    format!(
        r#"
services:
- name: reviews
  namespace: shop
  vips: [{vip}]
  ports: [{{port: 9080, targetPort: 8080, name: http}}]
  endpoints:
  - {{address: {v1}, name: reviews-v1, serviceAccount: reviews}}
requestAuthentications:
- apiVersion: security.istio.io/v1
  kind: RequestAuthentication
  metadata: {{name: jwt-example, namespace: shop}}
  spec:
    targetRefs: [{{kind: Service, group: "", name: reviews}}]
    jwtRules:
    - issuer: {ISSUER}
      jwks: '{jwks}'
      outputClaimToHeaders: [{{header: x-jwt-group, claim: group}}]
authorizationPolicies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {{name: require-jwt, namespace: shop}}
  spec:
    targetRefs: [{{kind: Service, group: "", name: reviews}}]
    rules:
    - from: [{{source: {{requestPrincipals: ["{ISSUER}/*"]}}}}]
      when: [{{key: "request.auth.claims[group]", values: [group1]}}]
"#,
        vip = m.ip(100),
        v1 = m.ip(11),
    )
}

fn token(claims: Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-rsa".into());
    let key =
        EncodingKey::from_rsa_der(include_bytes!("../../src/authn/testdata/rsa-test-key.der"));
    encode(&header, &claims, &key).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn tokens_are_checked_then_authorized_and_not_passed_upstream() {
    let m = Mesh::new();
    m.endpoint(11, "shop", "reviews", "reviews-v1").await;
    let _w = m.waypoint("shop", &config(&m)).await;
    let mut c = m
        .http1("shop", "productpage", SocketAddr::new(m.ip(100), 9080))
        .await;
    let good = token(json!({"iss": ISSUER, "sub": "alice", "exp": now() + 600, "group": "group1"}));
    let bearer = format!("Bearer {good}");
    let a = c.send("GET", "/", &[("authorization", &bearer)], "").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.request_header("authorization"), None, "{a:?}");
    assert_eq!(a.request_header("x-jwt-group"), Some("group1"), "{a:?}");

    // No token: authentication passes, authorization requires a principal.
    let a = c.get("/").await;
    assert_eq!((a.status, a.body.as_str()), (403, "RBAC: access denied"));

    // A valid token without the claim the policy wants.
    let other = token(json!({"iss": ISSUER, "sub": "bob", "exp": now() + 600, "group": "group2"}));
    let a = c
        .send(
            "GET",
            "/",
            &[("authorization", &format!("Bearer {other}"))],
            "",
        )
        .await;
    assert_eq!(a.status, 403, "{a:?}");

    for (claims, reason) in [
        (
            json!({"iss": ISSUER, "sub": "alice", "exp": now() - 3600}),
            "Jwt is expired",
        ),
        (
            json!({"iss": "someone@else", "sub": "alice"}),
            "Jwt issuer is not configured",
        ),
    ] {
        let bearer = format!("Bearer {}", token(claims));
        let a = c.send("GET", "/", &[("authorization", &bearer)], "").await;
        assert_eq!((a.status, a.body.as_str()), (401, reason), "{a:?}");
        assert_eq!(
            a.headers["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
    }
    // A forged signature.
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[2] = "AAAA";
    let forged = format!("Bearer {}", parts.join("."));
    let a = c.send("GET", "/", &[("authorization", &forged)], "").await;
    assert_eq!((a.status, a.body.as_str()), (401, "Jwt verification fails"));
}

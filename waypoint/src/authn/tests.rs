//! Request authentication: table tests over real signed tokens (ES256 keys made per run, and an
//! RS256 test key in `testdata/`), with the clock injected; one test fetches a key set (and an
//! OpenID discovery document) from a server on loopback.

use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use meshcore::l7::authn::RequestAuthentication;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use super::token::*;
use super::*;

const NOW: u64 = 1_900_000_000;
const ISSUER: &str = "https://issuer.example";

/// An ES256 signing key and its public JWK.
struct Signer {
    key: EncodingKey,
    jwk: Value,
    kid: &'static str,
}

fn es256(kid: &'static str) -> Signer {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    Signer {
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                    "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
        kid,
    }
}

impl Signer {
    fn sign(&self, claims: Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.to_owned());
        encode(&header, &claims, &self.key).unwrap()
    }

    fn jwks(&self) -> String {
        json!({"keys": [self.jwk]}).to_string()
    }
}

fn claims(sub: &str) -> Value {
    json!({"iss": ISSUER, "sub": sub, "exp": NOW + 3600, "aud": "bookinfo", "groups": ["dev"]})
}

/// A RequestAuthentication on the waypoint `ns/waypoint` with one rule (YAML fragment).
fn policy(name: &str, rule: &str) -> RequestAuthentication {
    serde_yaml_ng::from_str(&format!(
        "metadata: {{name: {name}, namespace: ns}}\nspec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]\n  jwtRules:\n  - {rule}\n"
    ))
    .unwrap()
}

fn compile(policies: &[RequestAuthentication]) -> (JwtAuthn, Vec<AuthnNote>) {
    JwtAuthn::compile(
        policies,
        &WaypointRef {
            namespace: "ns",
            name: "waypoint",
            class: Some("istio-waypoint"),
        },
        "istio-system",
        &JwksCache::default(),
    )
}

fn request(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn check(a: &JwtAuthn, parts: &mut http::request::Parts) -> Result<Option<Authenticated>, Refused> {
    a.authenticate(Some(("ns", "svc")), parts, || NOW)
}

#[test]
fn a_valid_token_gives_the_principal_and_is_removed_before_upstream() {
    let s = es256("k1");
    let (a, notes) = compile(&[policy(
        "jwt",
        &format!("{{issuer: '{ISSUER}', jwks: '{}'}}", s.jwks()),
    )]);
    assert!(notes.is_empty(), "{notes:?}");
    let mut parts = request("/", &[("authorization", &bearer(&s.sign(claims("alice"))))]);
    let auth = check(&a, &mut parts).unwrap().unwrap();
    assert_eq!(auth.principal, "https://issuer.example/alice");
    assert_eq!(auth.audiences, ["bookinfo"]);
    assert_eq!(auth.claim_values(&["groups".into()]), ["dev"]);
    assert!(parts.headers.get("authorization").is_none());
}

#[test]
fn no_token_passes_without_a_principal() {
    let s = es256("k1");
    let (a, _) = compile(&[policy(
        "jwt",
        &format!("{{issuer: '{ISSUER}', jwks: '{}'}}", s.jwks()),
    )]);
    assert_eq!(check(&a, &mut request("/", &[])), Ok(None));
    // Another scheme in Authorization is not a bearer token.
    assert_eq!(
        check(
            &a,
            &mut request("/", &[("authorization", "Basic YWxpY2U6")])
        ),
        Ok(None)
    );
}

#[test]
fn refusals_give_envoys_reasons() {
    let s = es256("k1");
    let other = es256("k1");
    let (a, _) = compile(&[policy(
        "jwt",
        &format!(
            "{{issuer: '{ISSUER}', audiences: [bookinfo], jwks: '{}'}}",
            s.jwks()
        ),
    )]);
    let with = |claims: Value, signer: &Signer| -> Result<Option<Authenticated>, Refused> {
        check(
            &a,
            &mut request("/", &[("authorization", &bearer(&signer.sign(claims)))]),
        )
    };
    let mut c = claims("alice");
    c["exp"] = json!(NOW - 61);
    assert_eq!(with(c, &s), Err(EXPIRED));
    let mut c = claims("alice");
    c["exp"] = json!(NOW - 30); // within the clock skew
    assert!(with(c, &s).is_ok());
    let mut c = claims("alice");
    c["nbf"] = json!(NOW + 600);
    assert_eq!(with(c, &s), Err(NOT_YET_VALID));
    let mut c = claims("alice");
    c["iss"] = json!("https://elsewhere.example");
    assert_eq!(with(c, &s), Err(UNKNOWN_ISSUER));
    let mut c = claims("alice");
    c["aud"] = json!(["reviews"]);
    assert_eq!(with(c, &s), Err(BAD_AUDIENCE));
    let mut c = claims("alice");
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(with(c, &s), Err(BAD_AUDIENCE));
    assert_eq!(with(claims("alice"), &other), Err(VERIFICATION_FAILED));
    let unknown_kid = es256("k2");
    assert_eq!(with(claims("alice"), &unknown_kid), Err(NO_KEY));
    let bad = |t: &str| check(&a, &mut request("/", &[("authorization", &bearer(t))]));
    assert_eq!(bad("not-a-token"), Err(MALFORMED));
    assert_eq!(bad("a.b.c.d"), Err(MALFORMED));
    // alg "none", unsigned: refused whatever it claims.
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!("{}.{}.", b64(json!({"alg": "none"})), b64(claims("alice")));
    assert_eq!(bad(&unsigned), Err(MALFORMED));
    // A tampered payload fails the signature.
    let token = s.sign(claims("alice"));
    let mut segments: Vec<&str> = token.split('.').collect();
    let forged = b64(claims("admin"));
    segments[1] = &forged;
    assert_eq!(bad(&segments.join(".")), Err(VERIFICATION_FAILED));
}

#[test]
fn rs256_with_a_kid_less_key_set_verifies() {
    let der = include_bytes!("testdata/rsa-test-key.der");
    let mut jwks: Value =
        serde_json::from_str(include_str!("testdata/rsa-test-jwks.json")).unwrap();
    jwks["keys"][0].as_object_mut().unwrap().remove("kid");
    let (a, notes) = compile(&[policy(
        "jwt",
        &format!("{{issuer: '{ISSUER}', jwks: '{jwks}'}}"),
    )]);
    assert!(notes.is_empty(), "{notes:?}");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rotated-away".into());
    let token = encode(&header, &claims("bob"), &EncodingKey::from_rsa_der(der)).unwrap();
    let auth = check(&a, &mut request("/", &[("authorization", &bearer(&token))]));
    assert_eq!(
        auth.unwrap().unwrap().principal,
        "https://issuer.example/bob"
    );
}

#[test]
fn locations_headers_params_and_cookies() {
    let s = es256("k1");
    let token = s.sign(claims("alice"));
    let rule = |locations: &str| {
        compile(&[policy(
            "jwt",
            &format!("{{issuer: '{ISSUER}', jwks: '{}', {locations}}}", s.jwks()),
        )])
        .0
    };
    // Defaults: Authorization: Bearer, and ?access_token=.
    let (a, _) = compile(&[policy(
        "jwt",
        &format!("{{issuer: '{ISSUER}', jwks: '{}'}}", s.jwks()),
    )]);
    let uri = format!("/p?x=1&access_token={token}");
    assert!(check(&a, &mut request(&uri, &[])).unwrap().is_some());
    // `bearer` in any case, as Envoy.
    let lower = format!("bearer {token}");
    assert!(check(&a, &mut request("/", &[("authorization", &lower)]))
        .unwrap()
        .is_some());

    let a = rule("fromHeaders: [{name: x-jwt-assertion, prefix: 'Token '}]");
    let value = format!("Token {token}");
    let mut parts = request("/", &[("x-jwt-assertion", &value)]);
    assert!(check(&a, &mut parts).unwrap().is_some());
    assert!(parts.headers.get("x-jwt-assertion").is_none());
    // Only the listed places: the default header is not read (so its token is not refused).
    assert_eq!(
        check(
            &a,
            &mut request("/", &[("authorization", &bearer("garbage"))])
        ),
        Ok(None)
    );

    let a = rule("fromParams: [token]");
    assert!(check(&a, &mut request(&format!("/?token={token}"), &[]))
        .unwrap()
        .is_some());
    let a = rule("fromCookies: [session]");
    let cookie = format!("theme=dark; session={token}");
    assert!(check(&a, &mut request("/", &[("cookie", &cookie)]))
        .unwrap()
        .is_some());
}

#[test]
fn outputs_forwarding_and_spoofed_headers() {
    let s = es256("k1");
    let (a, notes) = compile(&[policy(
        "jwt",
        &format!(
            "{{issuer: '{ISSUER}', jwks: '{}', forwardOriginalToken: true, outputPayloadToHeader: x-jwt-payload, outputClaimToHeaders: [{{header: x-jwt-sub, claim: sub}}, {{header: x-jwt-exp, claim: exp}}]}}",
            s.jwks()
        ),
    )]);
    assert!(notes.is_empty(), "{notes:?}");
    let token = s.sign(claims("alice"));
    let mut parts = request(
        "/",
        &[("authorization", &bearer(&token)), ("x-jwt-sub", "mallory")],
    );
    check(&a, &mut parts).unwrap().unwrap();
    assert_eq!(parts.headers["authorization"], bearer(&token));
    assert_eq!(parts.headers["x-jwt-sub"], "alice");
    assert_eq!(parts.headers["x-jwt-exp"], (NOW + 3600).to_string());
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts.headers["x-jwt-payload"].as_bytes())
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap()["sub"],
        "alice"
    );
    // Without a token a client cannot set them itself.
    let mut parts = request("/", &[("x-jwt-sub", "mallory"), ("x-jwt-payload", "e30")]);
    assert_eq!(check(&a, &mut parts), Ok(None));
    assert!(parts.headers.get("x-jwt-sub").is_none());
    assert!(parts.headers.get("x-jwt-payload").is_none());
}

#[test]
fn several_issuers_and_attachment() {
    let s1 = es256("k1");
    let s2 = es256("k2");
    let mut second: RequestAuthentication = serde_yaml_ng::from_str(&format!(
        "metadata: {{name: svc-jwt, namespace: ns}}\nspec:\n  targetRefs: [{{kind: Service, group: '', name: svc}}]\n  jwtRules: [{{issuer: 'https://two.example', jwks: '{}'}}]\n",
        s2.jwks()
    ))
    .unwrap();
    let first = policy(
        "jwt",
        &format!("{{issuer: '{ISSUER}', jwks: '{}'}}", s1.jwks()),
    );
    let (a, _) = compile(&[first.clone(), second.clone()]);
    let mut c = claims("carol");
    c["iss"] = json!("https://two.example");
    let t2 = s2.sign(c);
    // The Service's rule applies to requests for that Service only.
    let auth = check(&a, &mut request("/", &[("authorization", &bearer(&t2))]));
    assert_eq!(
        auth.unwrap().unwrap().principal,
        "https://two.example/carol"
    );
    let elsewhere = a.authenticate(
        Some(("ns", "other")),
        &mut request("/", &[("authorization", &bearer(&t2))]),
        || NOW,
    );
    assert_eq!(elsewhere, Err(UNKNOWN_ISSUER));
    // Selector-only and other waypoints' policies do not attach.
    second.spec.target_refs.clear();
    second.spec.selector = Some(Default::default());
    second
        .spec
        .selector
        .as_mut()
        .unwrap()
        .match_labels
        .insert("app".into(), "x".into());
    let (a, notes) = compile(&[second]);
    assert!(a.is_empty());
    assert!(notes[0].message.contains("ztunnel"), "{notes:?}");
}

#[test]
fn unusable_rules_are_noted_and_fail_closed() {
    let (a, notes) = compile(&[policy(
        "jwt",
        &format!("{{issuer: '{ISSUER}', jwks: 'not json'}}"),
    )]);
    assert!(
        notes[0].refused && notes[0].message.contains("jwks"),
        "{notes:?}"
    );
    let token = es256("k1").sign(claims("alice"));
    let result = check(&a, &mut request("/", &[("authorization", &bearer(&token))]));
    assert_eq!(result, Err(NO_KEY));
    let (_, notes) = compile(&[policy("jwt", "{issuer: '', jwks: '{}'}")]);
    assert!(notes[0].message.contains("issuer is required"), "{notes:?}");
    let (_, notes) = compile(&[policy("jwt", "{issuer: x, jwksUri: 'ftp://keys'}")]);
    assert!(notes[0].message.contains("not an http(s) URL"), "{notes:?}");
}

/// A key set served on loopback: refused before the first fetch, verified after; and the
/// issuer's OpenID discovery document leading to it.
#[tokio::test]
async fn remote_key_sets_are_fetched_and_discovered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = es256("k1");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let jwks = s.jwks();
    let discovery =
        json!({"issuer": format!("http://{addr}"), "jwks_uri": format!("http://{addr}/keys")})
            .to_string();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let body = if head.starts_with("GET /keys ") {
                jwks.clone()
            } else if head.starts_with("GET /.well-known/openid-configuration ") {
                discovery.clone()
            } else {
                String::new()
            };
            let status = if body.is_empty() {
                "404 Not Found"
            } else {
                "200 OK"
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        }
    });
    let cache = JwksCache::default();
    let waypoint = WaypointRef {
        namespace: "ns",
        name: "waypoint",
        class: Some("istio-waypoint"),
    };
    let issuer = format!("http://{addr}");
    let mut c = claims("dave");
    c["iss"] = json!(issuer);
    let token = s.sign(c);
    for rule in [
        format!("{{issuer: '{issuer}', jwksUri: 'http://{addr}/keys'}}"),
        format!("{{issuer: '{issuer}'}}"), // OpenID discovery
    ] {
        let (a, notes) =
            JwtAuthn::compile(&[policy("jwt", &rule)], &waypoint, "istio-system", &cache);
        assert!(notes.is_empty(), "{notes:?}");
        let mut verdict = check(&a, &mut request("/", &[("authorization", &bearer(&token))]));
        for _ in 0..100 {
            if verdict != Err(NO_KEYS_YET) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            verdict = check(&a, &mut request("/", &[("authorization", &bearer(&token))]));
        }
        assert_eq!(
            verdict.unwrap().unwrap().principal,
            format!("{issuer}/dave"),
            "{rule}"
        );
        assert_eq!(a.dump()[0]["keys"]["keys"], 1, "{}", a.dump());
    }
}

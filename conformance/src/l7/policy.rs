//! L7 authorization at the waypoint, the destination refusing traffic that bypasses its
//! waypoint, and the waypoint's request metrics.

use meshctl::cluster::http::Request;

use super::{Suite, NS};
use crate::support::{eventually, principal, CONVERGE};
use crate::Case;

pub fn cases() -> Vec<Case<Suite>> {
    vec![
        Case {
            name: "L7 ALLOW by method and path (GET /items* only)",
            run: allow_method_path,
        },
        Case {
            name: "L7 ALLOW by principal and header",
            run: allow_principal_header,
        },
        Case {
            name: "L7 DENY wins over ALLOW, 403 'RBAC: access denied' counted",
            run: deny_over_allow,
        },
        Case {
            name: "RequestAuthentication: valid JWT 200, none 403, expired or forged 401",
            run: jwt,
        },
        Case {
            name: "waypoint bypass: the pod admits only its waypoint",
            run: bypass_refused,
        },
        Case {
            name: "metrics: istio_requests_total with reporter=waypoint",
            run: metrics,
        },
    ]
}

fn policy(name: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: echo}}]\n  action: {action}\n  rules:\n{rules}"
    )
}

fn status(s: &Suite, from: &str, req: &Request<'_>) -> Result<u16, String> {
    Ok(s.ask(from, s.vip("echo", 80)?, req)?.status)
}

fn want(got: u16, want: u16, what: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: HTTP {got}, want {want}"))
    }
}

fn allow_method_path(s: &mut Suite) -> Result<(), String> {
    let rules = "  - to: [{operation: {methods: [GET], paths: [\"/items*\"]}}]\n";
    s.apply("l7-allow-get", &policy("allow-get-items", "ALLOW", rules))?;
    // Both at once: the previous case's policies may still be in force for a moment.
    eventually(CONVERGE, || {
        want(
            status(s, "client", &Request::get("/items/1"))?,
            200,
            "GET /items/1",
        )?;
        want(
            status(s, "client", &Request::get("/other"))?,
            403,
            "GET /other",
        )
    })?;
    let post = Request {
        method: "POST",
        body: b"x",
        ..Request::get("/items/1")
    };
    want(status(s, "client", &post)?, 403, "POST /items/1")
}

fn allow_principal_header(s: &mut Suite) -> Result<(), String> {
    let rules = format!(
        "  - from: [{{source: {{principals: [\"cluster.local/ns/{NS}/sa/client\"]}}}}]\n    when: [{{key: \"request.headers[x-ticket]\", values: [\"ok-*\"]}}]\n"
    );
    s.apply(
        "l7-allow-principal",
        &policy("client-with-ticket", "ALLOW", &rules),
    )?;
    let ticket = Request {
        headers: &[("x-ticket", "ok-42")],
        ..Request::get("/")
    };
    eventually(CONVERGE, || {
        want(status(s, "client", &ticket)?, 200, "client with ticket")?;
        want(
            status(s, "client", &Request::get("/"))?,
            403,
            "client without ticket",
        )
    })?;
    want(
        status(s, "intruder", &ticket)?,
        403,
        "another principal with ticket",
    )
}

fn deny_over_allow(s: &mut Suite) -> Result<(), String> {
    let before = denied_count(s)?;
    s.apply("l7-allow-all", &policy("allow-all", "ALLOW", "  - {}\n"))?;
    s.apply(
        "l7-deny-admin",
        &policy(
            "deny-admin",
            "DENY",
            "  - to: [{operation: {paths: [\"/admin*\"]}}]\n",
        ),
    )?;
    eventually(CONVERGE, || {
        want(
            status(s, "client", &Request::get("/public"))?,
            200,
            "GET /public",
        )?;
        let a = s.ask("client", s.vip("echo", 80)?, &Request::get("/admin/users"))?;
        want(a.status, 403, "GET /admin/users")?;
        if a.body != "RBAC: access denied" {
            return Err(format!("denial body {:?}", a.body));
        }
        Ok(())
    })?;
    eventually(CONVERGE, || {
        let after = denied_count(s)?;
        if after > before {
            Ok(())
        } else {
            Err(format!("403 DENY count stayed at {after}"))
        }
    })
}

/// Requests the waypoint answered 403 with flag DENY, summed over label sets.
fn denied_count(s: &Suite) -> Result<f64, String> {
    let text = s.waypoint_metrics()?;
    Ok(sum(
        &text,
        "istio_requests_total",
        &["response_code=\"403\"", "response_flags=\"DENY\""],
    ))
}

fn sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn bypass_refused(s: &mut Suite) -> Result<(), String> {
    // The destination's own (L4) policy admits only the waypoint's identity.
    let l4 = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: only-waypoint, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{app: echo}}}}\n  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [\"cluster.local/ns/{NS}/sa/waypoint\"]}}}}]\n"
    );
    s.apply("l4-only-waypoint", &l4)?;
    let pod = s.cluster.pod("echo-v1-1")?.ip;
    eventually(CONVERGE, || {
        match s
            .cluster
            .request("client", (pod, 8080).into(), &Request::get("/"))
        {
            Ok(a) => Err(format!("direct to the pod answered HTTP {}", a.status)),
            Err(_) => Ok(()),
        }
    })?;
    let a = s.get("echo", 80, "/")?;
    want(a.status, 200, "through the waypoint")
}

fn metrics(s: &mut Suite) -> Result<(), String> {
    for _ in 0..3 {
        s.get("echo", 80, "/metrics-probe")?;
    }
    let text = s.waypoint_metrics()?;
    let labels = [
        "reporter=\"waypoint\"".to_owned(),
        format!("source_principal=\"{}\"", principal(NS, "client")),
        format!("destination_principal=\"{}\"", principal(NS, "echo")),
        "destination_service_name=\"echo\"".to_owned(),
        "response_code=\"200\"".to_owned(),
    ];
    let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
    let n = sum(&text, "istio_requests_total", &refs);
    if n < 3.0 {
        return Err(format!(
            "istio_requests_total{{{}}} = {n}, want >= 3",
            refs.join(",")
        ));
    }
    if !text.contains("istio_request_duration_milliseconds_bucket") {
        return Err("no istio_request_duration_milliseconds histogram".into());
    }
    Ok(())
}

const JWT_ISSUER: &str = "testing@secure.istio.io";

/// A token of [`JWT_ISSUER`] signed with the waypoint's RS256 test key.
fn jwt_token(claims: serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-rsa".into());
    let key = jsonwebtoken::EncodingKey::from_rsa_der(include_bytes!(
        "../../../waypoint/src/authn/testdata/rsa-test-key.der"
    ));
    jsonwebtoken::encode(&header, &claims, &key).expect("token")
}

/// Istio's "authorization with JWT" task against the waypoint: a RequestAuthentication and an
/// AuthorizationPolicy requiring a principal of that issuer with a claim, through istiod-lite.
fn jwt(s: &mut Suite) -> Result<(), String> {
    let jwks: serde_json::Value = serde_json::from_str(include_str!(
        "../../../waypoint/src/authn/testdata/rsa-test-jwks.json"
    ))
    .map_err(|e| e.to_string())?;
    s.apply(
        "l7-jwt-authn",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt-example, namespace: {NS}}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: echo}}]\n  jwtRules:\n  - issuer: {JWT_ISSUER}\n    jwks: '{jwks}'\n"
        ),
    )?;
    let rules = format!(
        "  - from: [{{source: {{requestPrincipals: [\"{JWT_ISSUER}/*\"]}}}}]\n    when: [{{key: \"request.auth.claims[groups]\", values: [group1]}}]\n"
    );
    s.apply("l7-jwt-authz", &policy("require-jwt", "ALLOW", &rules))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let good = format!(
        "Bearer {}",
        jwt_token(
            serde_json::json!({"iss": JWT_ISSUER, "sub": "alice", "exp": now + 600, "groups": ["group1", "group2"]})
        )
    );
    let expired = format!(
        "Bearer {}",
        jwt_token(
            serde_json::json!({"iss": JWT_ISSUER, "sub": "alice", "exp": now - 3600, "groups": ["group1"]})
        )
    );
    let forged = format!("{}AAAA", &good[..good.len() - 4]);
    let with = |token: &str| {
        let headers = [("authorization", token)];
        let req = Request {
            headers: &headers,
            ..Request::get("/")
        };
        s.ask("client", s.vip("echo", 80)?, &req)
    };
    eventually(CONVERGE, || {
        let a = with(&good)?;
        want(a.status, 200, "a valid token")?;
        if a.body.to_ascii_lowercase().contains("authorization") {
            return Err(format!("the token reached the app: {}", a.body));
        }
        want(status(s, "client", &Request::get("/"))?, 403, "no token")
    })?;
    for (token, reason) in [
        (&expired, "Jwt is expired"),
        (&forged, "Jwt verification fails"),
    ] {
        let a = with(token)?;
        if a.status != 401 || a.body.trim() != reason {
            return Err(format!(
                "want 401 {reason:?}, got {} {:?}",
                a.status, a.body
            ));
        }
    }
    Ok(())
}

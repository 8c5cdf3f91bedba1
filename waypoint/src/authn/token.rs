//! Finding a request's token and verifying it against the rules that apply (pure: the clock is a
//! parameter).

use base64::Engine as _;
use http::HeaderValue;
use jsonwebtoken::{decode, decode_header, errors::ErrorKind, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{Authenticated, Location, Provider, Refused};

// Envoy's reasons, so clients and runbooks written for Istio read the same text.
pub(super) const MALFORMED: Refused =
    Refused("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections");
pub(super) const UNKNOWN_ISSUER: Refused = Refused("Jwt issuer is not configured");
pub(super) const EXPIRED: Refused = Refused("Jwt is expired");
pub(super) const NOT_YET_VALID: Refused = Refused("Jwt not yet valid");
pub(super) const BAD_AUDIENCE: Refused = Refused("Audiences in Jwt are not allowed");
pub(super) const NO_KEY: Refused = Refused("Jwks doesn't have key to match kid or alg from Jwt");
pub(super) const VERIFICATION_FAILED: Refused = Refused("Jwt verification fails");
pub(super) const NO_KEYS_YET: Refused = Refused("Jwks remote fetch is failed");

/// Clock skew allowed on `exp` and `nbf` (Envoy's default).
const CLOCK_SKEW_SECS: u64 = 60;

pub(super) fn authenticate(
    providers: &[&Provider],
    parts: &mut http::request::Parts,
    now_unix: u64,
) -> Result<Option<Authenticated>, Refused> {
    // What the rules output is the waypoint's to say: drop anything a client sent under those
    // names, token or not.
    for p in providers {
        if let Some(h) = &p.payload_header {
            parts.headers.remove(h);
        }
        for (h, _) in &p.claim_headers {
            parts.headers.remove(h);
        }
    }
    let mut looked: Vec<&Location> = Vec::new();
    for p in providers {
        for location in &p.locations {
            if looked.contains(&location) {
                continue;
            }
            looked.push(location);
            let Some(token) = extract(location, parts) else {
                continue;
            };
            let (issuer, payload_segment) = unverified_issuer(&token)?;
            let mut outcome = Err(UNKNOWN_ISSUER);
            for q in providers
                .iter()
                .filter(|q| q.issuer == issuer && q.locations.contains(location))
            {
                outcome = verify(q, &token, now_unix);
                if let Ok(auth) = outcome {
                    output(q, location, &token[payload_segment], &auth, parts);
                    return Ok(Some(auth));
                }
            }
            return outcome.map(Some);
        }
    }
    Ok(None)
}

/// The token at `location`, if the request carries one there.
fn extract(location: &Location, parts: &http::request::Parts) -> Option<String> {
    match location {
        Location::Header { name, prefix } => parts.headers.get_all(name).iter().find_map(|v| {
            let v = v.to_str().ok()?;
            let rest = match v.get(..prefix.len()) {
                Some(head) if head.eq_ignore_ascii_case(prefix) => &v[prefix.len()..],
                _ => return None,
            };
            let token = rest.trim();
            (!token.is_empty()).then(|| token.to_owned())
        }),
        Location::Param(name) => parts.uri.query()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name && !v.is_empty()).then(|| v.to_owned())
        }),
        Location::Cookie(name) => parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name && !v.is_empty()).then(|| v.to_owned())
            }),
    }
}

/// The `iss` of a token not yet verified (to pick the rule that verifies it), and where its
/// payload segment is.
fn unverified_issuer(token: &str) -> Result<(String, std::ops::Range<usize>), Refused> {
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(_sig), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(MALFORMED);
    };
    let start = header.len() + 1;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| MALFORMED)?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| MALFORMED)?;
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(UNKNOWN_ISSUER)?;
    Ok((issuer.to_owned(), start..start + payload.len()))
}

fn verify(p: &Provider, token: &str, now_unix: u64) -> Result<Authenticated, Refused> {
    let header = decode_header(token).map_err(|_| MALFORMED)?;
    let keys = p.keys.keys()?;
    let mut validation = Validation::new(header.alg);
    // exp / nbf are checked below against the given clock; iss was matched already.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims.clear();
    if p.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&p.audiences);
        validation.required_spec_claims.insert("aud".to_owned());
    }
    let mut candidates = keys
        .keys
        .iter()
        .filter(|k| {
            // Envoy's rule: a key without `kid` is a candidate for any token.
            header.kid.is_none() || k.common.key_id.is_none() || k.common.key_id == header.kid
        })
        .peekable();
    if candidates.peek().is_none() {
        return Err(NO_KEY);
    }
    let mut refused = NO_KEY;
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match decode::<Map<String, Value>>(token, &key, &validation) {
            Ok(data) => return authenticated(p, data.claims, now_unix),
            Err(e) => match e.kind() {
                ErrorKind::InvalidAudience | ErrorKind::MissingRequiredClaim(_) => {
                    return Err(BAD_AUDIENCE)
                }
                // Another key (same kid absent, other family) may still verify it.
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {}
                _ => refused = VERIFICATION_FAILED,
            },
        }
    }
    Err(refused)
}

fn authenticated(
    p: &Provider,
    claims: Map<String, Value>,
    now_unix: u64,
) -> Result<Authenticated, Refused> {
    let time = |name: &str| -> Result<Option<u64>, Refused> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .map(Some)
                .ok_or(VERIFICATION_FAILED),
        }
    };
    if time("exp")?.is_some_and(|exp| now_unix > exp.saturating_add(CLOCK_SKEW_SECS)) {
        return Err(EXPIRED);
    }
    if time("nbf")?.is_some_and(|nbf| now_unix.saturating_add(CLOCK_SKEW_SECS) < nbf) {
        return Err(NOT_YET_VALID);
    }
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let audiences = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    Ok(Authenticated {
        principal: format!("{}/{sub}", p.issuer),
        audiences,
        presenter: claims.get("azp").and_then(Value::as_str).map(str::to_owned),
        claims,
    })
}

/// The rule's effects on the request passed upstream.
fn output(
    p: &Provider,
    location: &Location,
    payload: &str,
    auth: &Authenticated,
    parts: &mut http::request::Parts,
) {
    if !p.forward {
        if let Location::Header { name, .. } = location {
            parts.headers.remove(name);
        }
    }
    if let Some(h) = &p.payload_header {
        if let Ok(v) = HeaderValue::from_str(payload) {
            parts.headers.insert(h.clone(), v);
        }
    }
    for (h, claim) in &p.claim_headers {
        let value = auth
            .claims
            .get(claim)
            .or_else(|| dotted(&auth.claims, claim));
        let text = match value {
            Some(Value::String(s)) => s.clone(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            _ => continue,
        };
        if let Ok(v) = HeaderValue::from_str(&text) {
            parts.headers.insert(h.clone(), v);
        }
    }
}

/// A nested claim named `a.b`.
fn dotted<'c>(claims: &'c Map<String, Value>, path: &str) -> Option<&'c Value> {
    let mut keys = path.split('.');
    let mut value = claims.get(keys.next()?)?;
    for k in keys {
        value = value.get(k)?;
    }
    Some(value)
}

//! From RequestAuthentication objects to the token rules one waypoint checks.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use meshcore::l7::authn::{JwtRule, RequestAuthentication};
use meshcore::l7::duration::parse_istio_duration;

use super::jwks::{JwksCache, KeySource, RemoteSource};
use super::{AuthnNote, Location, Provider};
use crate::attach::{attachment, Target, TargetRefs, WaypointRef};

/// How long a key-set fetch may take unless the rule says (Istio's default).
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn compile_all(
    policies: &[RequestAuthentication],
    waypoint: &WaypointRef<'_>,
    root_namespace: &str,
    jwks: &JwksCache,
    notes: &mut Vec<AuthnNote>,
) -> Vec<(Provider, Vec<Target>)> {
    let mut sorted: Vec<&RequestAuthentication> = policies.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for policy in sorted {
        let key: Arc<str> = policy.key().into();
        let mut note = |message: String, refused: bool| {
            notes.push(AuthnNote {
                policy: key.to_string(),
                message,
                refused,
            })
        };
        if !seen.insert(key.clone()) {
            note(
                "listed more than once; only the first copy is used".into(),
                false,
            );
            continue;
        }
        let spec = &policy.spec;
        let refs = TargetRefs {
            namespace: &policy.metadata.namespace,
            target_ref: spec.target_ref.as_ref(),
            target_refs: &spec.target_refs,
            selector: spec.selector.as_ref(),
        };
        let Some((targets, errors)) = attachment(&refs, waypoint, root_namespace, &mut note) else {
            continue;
        };
        if !errors.is_empty() {
            note(
                format!("{}; the other targets apply", errors.join("; ")),
                true,
            );
        }
        if spec.selector.is_some() {
            note(
                "selector and targetRefs cannot both be set; targetRefs apply".into(),
                true,
            );
        }
        for (i, rule) in spec.jwt_rules.iter().enumerate() {
            let at = format!("jwtRules[{i}]");
            match provider(rule, &key, &at, jwks, &mut note) {
                Some(p) => out.push((p, targets.clone())),
                None => continue,
            }
        }
    }
    out
}

fn header_name(name: &str, at: &str, note: &mut dyn FnMut(String, bool)) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            note(
                format!("{at}: {name:?} is not a valid header name; ignored"),
                true,
            );
            None
        }
    }
}

fn provider(
    rule: &JwtRule,
    policy: &Arc<str>,
    at: &str,
    jwks: &JwksCache,
    note: &mut dyn FnMut(String, bool),
) -> Option<Provider> {
    if rule.issuer.is_empty() {
        note(format!("{at}: issuer is required; rule dropped"), true);
        return None;
    }
    let timeout = match rule.timeout.as_deref().map(parse_istio_duration) {
        None => DEFAULT_FETCH_TIMEOUT,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => DEFAULT_FETCH_TIMEOUT,
        Some(Err(e)) => {
            note(format!("{at}.timeout: {e}; using 5s"), true);
            DEFAULT_FETCH_TIMEOUT
        }
    };
    let keys = match (&rule.jwks, &rule.jwks_uri) {
        (Some(inline), _) => match KeySource::inline(inline) {
            Ok(keys) => keys,
            Err(e) => {
                note(
                    format!(
                        "{at}.jwks: {e}; tokens of issuer {:?} are refused",
                        rule.issuer
                    ),
                    true,
                );
                KeySource::Broken(e)
            }
        },
        (None, Some(uri)) => match RemoteSource::uri(uri) {
            Ok(source) => KeySource::Remote(jwks.handle(source, timeout)),
            Err(e) => {
                note(
                    format!(
                        "{at}.jwksUri: {e}; tokens of issuer {:?} are refused",
                        rule.issuer
                    ),
                    true,
                );
                KeySource::Broken(e)
            }
        },
        // Istio finds the key set through the issuer's OpenID discovery document.
        (None, None) => match RemoteSource::discovery(&rule.issuer) {
            Ok(source) => KeySource::Remote(jwks.handle(source, timeout)),
            Err(e) => {
                note(
                    format!("{at}: neither jwks nor jwksUri, and the issuer is no URL for OpenID discovery ({e}); tokens of issuer {:?} are refused", rule.issuer),
                    true,
                );
                KeySource::Broken(e)
            }
        },
    };
    let mut locations = Vec::new();
    for (h, header) in rule.from_headers.iter().enumerate() {
        if let Some(name) = header_name(&header.name, &format!("{at}.fromHeaders[{h}]"), note) {
            locations.push(Location::Header {
                name,
                prefix: header.prefix.clone(),
            });
        }
    }
    locations.extend(rule.from_params.iter().cloned().map(Location::Param));
    locations.extend(rule.from_cookies.iter().cloned().map(Location::Cookie));
    if rule.from_headers.is_empty() && rule.from_params.is_empty() && rule.from_cookies.is_empty() {
        locations.push(Location::Header {
            name: http::header::AUTHORIZATION,
            prefix: "Bearer ".to_owned(),
        });
        locations.push(Location::Param("access_token".to_owned()));
    }
    let payload_header = rule
        .output_payload_to_header
        .as_deref()
        .filter(|h| !h.is_empty())
        .and_then(|h| header_name(h, &format!("{at}.outputPayloadToHeader"), note));
    let claim_headers = rule
        .output_claim_to_headers
        .iter()
        .enumerate()
        .filter_map(|(c, ch)| {
            let at = format!("{at}.outputClaimToHeaders[{c}]");
            if ch.claim.is_empty() {
                note(format!("{at}: claim is required; ignored"), true);
                return None;
            }
            Some((header_name(&ch.header, &at, note)?, ch.claim.clone()))
        })
        .collect();
    Some(Provider {
        policy: policy.clone(),
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        keys,
        locations,
        payload_header,
        forward: rule.forward_original_token,
        claim_headers,
    })
}

//! Request authentication: Istio's RequestAuthentication (JWT) as a waypoint enforces it.
//!
//! [`JwtAuthn::compile`] keeps the RequestAuthentications attached to the waypoint (the same
//! `targetRefs` rules as AuthorizationPolicy, see [`crate::attach`]) and parses them once;
//! [`JwtAuthn::authenticate`] runs per request, before authorization, and gives authorization the
//! request principal and claims.
//!
//! # Semantics (Istio's)
//! - The rules of every RequestAuthentication attached to the waypoint and to the addressed
//!   Service apply together.
//! - A token is looked for where the rules say (`fromHeaders`, `fromParams`, `fromCookies`);
//!   a rule that names no location takes `Authorization: Bearer <token>` and `?access_token=`.
//! - No token: the request goes on without a request principal (authorization decides; Istio's
//!   `requestPrincipals: ["*"]` then denies it).
//! - A token that fails is answered 401 with Envoy's reason: an issuer no rule names, a
//!   signature no key of the issuer's key set verifies, an expired or not-yet-valid token (60 s
//!   clock skew allowed), an audience the rule does not list, a key set not fetched.
//! - A valid token gives `request.auth.principal` `<iss>/<sub>`, `request.auth.audiences`,
//!   `request.auth.presenter` (`azp`) and `request.auth.claims[...]`.
//! - The token is removed from its header unless `forwardOriginalToken`; `outputPayloadToHeader`
//!   and `outputClaimToHeaders` add headers, and any value a client sent in those headers is
//!   removed first, so a client cannot claim what it was not issued.

mod compile;
mod jwks;
#[cfg(test)]
mod tests;
mod token;

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;
use meshcore::l7::authn::RequestAuthentication;

use crate::attach::{Target, WaypointRef};
pub use jwks::JwksCache;
use jwks::KeySource;

/// What a validated token says about the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Authenticated {
    /// `<iss>/<sub>`.
    pub principal: String,
    /// `aud`, as a list.
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl Authenticated {
    /// The values of a claim at `path` (`[groups]` → `["groups"]`, nested `[a][b]`): a string,
    /// each string of a list, or a number's / boolean's JSON text.
    pub fn claim_values(&self, path: &[Box<str>]) -> Vec<&str> {
        let Some((first, rest)) = path.split_first() else {
            return Vec::new();
        };
        let mut value = self.claims.get(&**first);
        for key in rest {
            value = value.and_then(|v| v.get(&**key));
        }
        let mut out = Vec::new();
        match value {
            Some(serde_json::Value::Array(items)) => {
                out.extend(items.iter().filter_map(scalar_text));
            }
            Some(v) => out.extend(scalar_text(v)),
            None => {}
        }
        out
    }
}

fn scalar_text(v: &serde_json::Value) -> Option<&str> {
    match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Bool(true) => Some("true"),
        serde_json::Value::Bool(false) => Some("false"),
        // Numbers have no borrowed text; claims compared as numbers are rare and Istio's
        // matcher is string-only.
        _ => None,
    }
}

/// Why a token was refused: Envoy's reason, sent as the 401's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub &'static str);

/// Where a token is found.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Location {
    /// A header, with the prefix before the token (`Bearer `, compared ignoring case).
    Header {
        name: HeaderName,
        prefix: String,
    },
    Param(String),
    Cookie(String),
}

/// One `jwtRules` entry, ready to check tokens.
#[derive(Debug)]
struct Provider {
    /// `namespace/name` of its RequestAuthentication, for notes and dumps.
    policy: Arc<str>,
    issuer: String,
    audiences: Vec<String>,
    keys: KeySource,
    locations: Vec<Location>,
    payload_header: Option<HeaderName>,
    forward: bool,
    claim_headers: Vec<(HeaderName, String)>,
}

/// The RequestAuthentications one waypoint enforces, compiled.
#[derive(Debug, Default)]
pub struct JwtAuthn {
    providers: Vec<Provider>,
    /// Gateway- and GatewayClass-targeted providers (indexes): every request.
    waypoint: Vec<usize>,
    /// Service-targeted: namespace → name → providers.
    services: HashMap<Box<str>, HashMap<Box<str>, Vec<usize>>>,
}

/// A note about one RequestAuthentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthnNote {
    pub policy: String,
    pub message: String,
    /// The rule is unusable as written; tokens of its issuer are refused (fail closed).
    pub refused: bool,
}

impl std::fmt::Display for AuthnNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestAuthentication {}: {}", self.policy, self.message)
    }
}

impl JwtAuthn {
    /// Keeps what attaches to `waypoint` and compiles it; `jwks` fetches and caches the key
    /// sets named by `jwksUri`.
    pub fn compile(
        policies: &[RequestAuthentication],
        waypoint: &WaypointRef<'_>,
        root_namespace: &str,
        jwks: &JwksCache,
    ) -> (JwtAuthn, Vec<AuthnNote>) {
        let mut out = JwtAuthn::default();
        let mut notes = Vec::new();
        for (provider, targets) in
            compile::compile_all(policies, waypoint, root_namespace, jwks, &mut notes)
        {
            let i = out.providers.len();
            out.providers.push(provider);
            for target in targets {
                match target {
                    Target::Waypoint => out.waypoint.push(i),
                    Target::Service(ns, name) => out
                        .services
                        .entry(ns.into())
                        .or_default()
                        .entry(name.into())
                        .or_default()
                        .push(i),
                }
            }
        }
        (out, notes)
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Checks the request's token for a request to `service` (namespace, name), editing the
    /// request's headers as the rules say. `Ok(None)`: no rule applies, or no token was sent.
    /// `now_unix` is called only when a rule applies.
    pub fn authenticate(
        &self,
        service: Option<(&str, &str)>,
        parts: &mut http::request::Parts,
        now_unix: impl FnOnce() -> u64,
    ) -> Result<Option<Authenticated>, Refused> {
        let by_service = service
            .and_then(|(ns, name)| self.services.get(ns)?.get(name))
            .map(Vec::as_slice);
        if self.waypoint.is_empty() && by_service.is_none() {
            return Ok(None);
        }
        let applicable: Vec<&Provider> = self
            .waypoint
            .iter()
            .chain(by_service.unwrap_or_default())
            .map(|&i| &self.providers[i])
            .collect();
        // The clock is read only when a rule applies: most requests have none.
        token::authenticate(&applicable, parts, now_unix())
    }

    /// For `/config_dump`: each rule with where its keys stand.
    pub fn dump(&self) -> serde_json::Value {
        let target_of = |i: usize| -> Vec<String> {
            let mut t = Vec::new();
            if self.waypoint.contains(&i) {
                t.push("waypoint".to_owned());
            }
            for (ns, names) in &self.services {
                for (name, list) in names {
                    if list.contains(&i) {
                        t.push(format!("Service {ns}/{name}"));
                    }
                }
            }
            t.sort();
            t
        };
        serde_json::Value::Array(
            self.providers
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    serde_json::json!({
                        "policy": &*p.policy,
                        "issuer": p.issuer,
                        "audiences": p.audiences,
                        "targets": target_of(i),
                        "keys": p.keys.describe(),
                    })
                })
                .collect(),
        )
    }
}

//! Gateway API `HTTPRoute` and `GRPCRoute` (`gateway.networking.k8s.io/v1`) as users write them.
//!
//! The types mirror the Kubernetes objects field for field (camelCase names, the same defaults),
//! so a route exported from a cluster parses unchanged: `status` and the extra `metadata` a
//! cluster returns are accepted and ignored. Any other unknown field is refused, naming it.
//!
//! Parsing checks shapes only. Values the API server's validation would reject or that this mesh
//! does not support (a `type` this version does not know, an unknown HTTP method, a bad regular
//! expression, a malformed duration...) parse, and are reported when the waypoint compiles its
//! route table, as Gateway API route status does (`Accepted: False`, reason `UnsupportedValue`).
//! Enumerations therefore keep unknown values ([`PathMatchType::Other`] and friends) instead of
//! failing the whole document.
//!
//! Durations (`timeouts`, `retry.backoff`) are kept as written; [`parse_duration`] reads them
//! with the GEP-2257 rules.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The Gateway API group; also the default `group` of a `parentRef`.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// `apiVersion` of the routes this module describes.
pub const API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// An `HTTPRoute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "http_route_kind")]
    pub kind: String,
    pub metadata: super::ObjectMeta,
    pub spec: HttpRouteSpec,
    /// Whatever status a cluster wrote: accepted so a copied object parses, never used.
    #[serde(default, skip_serializing)]
    pub status: Option<IgnoredAny>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    /// Parsed but not used for mesh routing: a mesh route matches the Service the request is
    /// addressed to, not its `Host` header (GEP-1294).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Absent: one rule matching every request (`PathPrefix /`), the API server's default.
    #[serde(default = "default_http_rules")]
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ORed; empty means one `PathPrefix /` match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<HttpBackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<HttpRouteRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistence>,
}

/// Conditions ANDed together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    /// Absent: `PathPrefix /`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<HeaderMatch>,
    /// Upper case (`GET`, `POST`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathMatch {
    #[serde(default, rename = "type")]
    pub match_type: PathMatchType,
    #[serde(default = "slash")]
    pub value: String,
}

impl Default for HttpPathMatch {
    fn default() -> Self {
        Self {
            match_type: PathMatchType::PathPrefix,
            value: slash(),
        }
    }
}

/// A header (or query parameter) match: `HTTPHeaderMatch`, `HTTPQueryParamMatch`,
/// `GRPCHeaderMatch` share this shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    #[serde(default, rename = "type")]
    pub match_type: ValueMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub filter_type: FilterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirrorFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirectFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewriteFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_ref: Option<LocalObjectReference>,
    /// `CORS` is not supported: accepted so the route parses, reported at compile time, and
    /// not written back.
    #[serde(default, skip_serializing)]
    pub cors: Option<IgnoredAny>,
    /// `ExternalAuth` (experimental) is not supported; as `cors`.
    #[serde(default, skip_serializing)]
    pub external_auth: Option<IgnoredAny>,
}

/// `HTTPHeaderFilter`: header names are case-insensitive; one action per name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderFilter {
    /// Replaces any value the header had.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HttpHeader>,
    /// Appends to the values the header had.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirectFilter {
    /// `http` or `https`; absent: the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Absent: the request's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301, 302 (the default), 303, 307 or 308.
    #[serde(default = "found")]
    pub status_code: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewriteFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// `HTTPPathModifier`: the field named by `type` carries the value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub modifier_type: PathModifierType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMirrorFilter {
    pub backend_ref: BackendObjectReference,
    /// 0 to 100; at most one of `percent` and `fraction`; neither: every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fraction {
    pub numerator: u32,
    #[serde(default = "hundred")]
    pub denominator: u32,
}

/// An `ExtensionRef` filter's target: parsed, never resolvable by this mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectReference {
    pub group: String,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    /// GEP-2257 duration (see [`parse_duration`]); `0s` disables the timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRetry {
    /// Response status codes (400 to 599) worth a retry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    /// Retries after the first attempt; 0 disables retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// GEP-2257 duration: the base interval between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

/// Parsed so routes using it load; the waypoint does not implement session persistence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionPersistence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub persistence_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_config: Option<CookieConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_type: Option<String>,
}

/// A route's parent: a `Service` (mesh routes, `group: ""`) or a `Gateway` (the waypoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentReference {
    /// Defaults to `gateway.networking.k8s.io`: a Service parent must say `group: ""`.
    #[serde(default = "gateway_group")]
    pub group: String,
    #[serde(default = "gateway_kind")]
    pub kind: String,
    /// Defaults to the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// Service: a port name. Gateway: a listener name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// Service: one of its ports (absent: all). Gateway: a listener port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Where a mirror sends its copies (`BackendObjectReference`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendObjectReference {
    /// `""` (the core group) by default.
    #[serde(default)]
    pub group: String,
    #[serde(default = "service_kind")]
    pub kind: String,
    pub name: String,
    /// Defaults to the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A weighted backend with its own filters (`HTTPBackendRef`, `GRPCBackendRef`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef<F> {
    #[serde(default)]
    pub group: String,
    #[serde(default = "service_kind")]
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Proportion of requests: weight / sum of the rule's weights; 0 sends none.
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<F>,
}

pub type HttpBackendRef = BackendRef<HttpRouteFilter>;
pub type GrpcBackendRef = BackendRef<GrpcRouteFilter>;

/// A `GRPCRoute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRoute {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "grpc_route_kind")]
    pub kind: String,
    pub metadata: super::ObjectMeta,
    pub spec: GrpcRouteSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<IgnoredAny>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    /// Not used for mesh routing, as for `HTTPRoute`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ORed; empty matches every gRPC request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<GrpcRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<GrpcRouteFilter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<GrpcBackendRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistence>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    /// Absent: every service and method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// Matches the request path `/<service>/<method>`; an absent part matches anything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethodMatch {
    #[serde(default, rename = "type")]
    pub match_type: ValueMatchType,
    /// Fully qualified, e.g. `grpc.health.v1.Health`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteFilter {
    #[serde(rename = "type")]
    pub filter_type: FilterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirrorFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_ref: Option<LocalObjectReference>,
}

/// An enumeration that keeps values it does not know (the Gateway API asks implementations to
/// report those, not to fail on them).
macro_rules! open_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this version does not know; the route using it is not accepted.
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(other) => other,
                }
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                match text.as_str() {
                    $($text => Self::$variant,)+
                    _ => Self::Other(text),
                }
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                match value {
                    $name::Other(other) => other,
                    known => known.as_str().to_owned(),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

open_enum! {
    /// `HTTPPathMatch.type`; defaults to `PathPrefix`.
    #[derive(Default)]
    PathMatchType {
        /// The whole path, case-sensitive.
        Exact = "Exact",
        /// Whole path elements: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`.
        #[default]
        PathPrefix = "PathPrefix",
        /// Must match the whole path.
        RegularExpression = "RegularExpression",
    }
}

open_enum! {
    /// How a header, query parameter or gRPC service/method value is compared; defaults to
    /// `Exact`.
    #[derive(Default)]
    ValueMatchType {
        #[default]
        Exact = "Exact",
        /// Must match the whole value.
        RegularExpression = "RegularExpression",
    }
}

open_enum! {
    /// A filter's `type` (HTTPRoute and GRPCRoute filters share the names).
    FilterType {
        RequestHeaderModifier = "RequestHeaderModifier",
        ResponseHeaderModifier = "ResponseHeaderModifier",
        RequestMirror = "RequestMirror",
        RequestRedirect = "RequestRedirect",
        UrlRewrite = "URLRewrite",
        ExtensionRef = "ExtensionRef",
        Cors = "CORS",
        ExternalAuth = "ExternalAuth",
    }
}

open_enum! {
    /// `HTTPPathModifier.type`.
    PathModifierType {
        ReplaceFullPath = "ReplaceFullPath",
        /// Replaces the matched `PathPrefix`, element-wise.
        ReplacePrefixMatch = "ReplacePrefixMatch",
    }
}

/// A Gateway API duration that does not follow GEP-2257.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason} (a Gateway API duration is 1 to 4 parts, each up to \
     5 digits followed by h, m, s or ms, e.g. \"10s\", \"500ms\", \"1h30m\")"
)]
pub struct DurationError {
    pub input: String,
    pub reason: String,
}

/// Reads a Gateway API duration (GEP-2257): one to four `<digits><unit>` parts, each number of
/// one to five decimal digits, units `h`, `m`, `s` and `ms`, the parts summed (`1h30m`,
/// `1m500ms`, `0s`). Signs, fractions, spaces and other units are refused.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let fail = |reason: String| DurationError {
        input: input.to_owned(),
        reason,
    };
    if input.is_empty() {
        return Err(fail("it is empty".to_owned()));
    }
    let mut rest = input;
    let mut parts = 0;
    let mut millis: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            let found = rest.chars().next().unwrap_or_default();
            return Err(fail(format!("expected a digit, found {found:?}")));
        }
        if digits > 5 {
            return Err(fail(format!(
                "{:?} has more than 5 digits",
                &rest[..digits]
            )));
        }
        // At most 5 ASCII digits: always fits.
        let value: u64 = rest[..digits].parse().unwrap_or_default();
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.is_empty() {
            return Err(fail(format!("{value} has no unit")));
        } else {
            let unit: String = rest.chars().take_while(|c| !c.is_ascii_digit()).collect();
            return Err(fail(format!("unknown unit {unit:?}")));
        };
        rest = &rest[len..];
        parts += 1;
        if parts > 4 {
            return Err(fail("it has more than 4 parts".to_owned()));
        }
        millis += value * unit;
    }
    Ok(Duration::from_millis(millis))
}

fn api_version() -> String {
    API_VERSION.to_owned()
}

fn http_route_kind() -> String {
    "HTTPRoute".to_owned()
}

fn grpc_route_kind() -> String {
    "GRPCRoute".to_owned()
}

fn gateway_group() -> String {
    GROUP.to_owned()
}

fn gateway_kind() -> String {
    "Gateway".to_owned()
}

fn service_kind() -> String {
    "Service".to_owned()
}

fn slash() -> String {
    "/".to_owned()
}

fn found() -> u16 {
    302
}

fn one() -> u32 {
    1
}

fn hundred() -> u32 {
    100
}

fn default_http_rules() -> Vec<HttpRouteRule> {
    vec![HttpRouteRule::default()]
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let err =
            serde_yaml_ng::from_str::<HttpRoute>("metadata: {name: r}\nspec:\n  parentRef: []\n")
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

    #[test]
    fn durations() {
        let ok = [
            ("0s", 0),
            ("10s", 10_000),
            ("500ms", 500),
            ("1h30m", 5_400_000),
            ("1h30m30s500ms", 5_430_500),
            ("00060m", 3_600_000),
            ("1m1m", 120_000),
            ("99999h", 99_999 * 3_600_000),
        ];
        for (text, millis) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
        let bad = [
            ("", "empty"),
            ("10", "no unit"),
            ("1.5s", "unknown unit \".\""),
            ("-1s", "expected a digit"),
            ("1d", "unknown unit \"d\""),
            ("1us", "unknown unit \"us\""),
            ("100000s", "more than 5 digits"),
            ("1h1m1s1ms1s", "more than 4 parts"),
            ("1 s", "unknown unit \" s\""),
            ("s", "expected a digit, found 's'"),
        ];
        for (text, reason) in bad {
            let err = parse_duration(text).unwrap_err();
            assert_eq!(err.input, text);
            let message = err.to_string();
            assert!(message.contains(reason), "{text}: {message}");
            assert!(message.contains("e.g. \"10s\""), "{message}");
        }
    }
}

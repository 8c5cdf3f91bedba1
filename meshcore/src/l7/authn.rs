//! Istio's `RequestAuthentication` (`security.istio.io/v1`, also `v1beta1`): which JSON Web
//! Tokens a waypoint validates, in the shape users write it.
//!
//! Only the object model lives here; extraction, verification and what a validated token gives
//! authorization are the waypoint's (its `authn` module). Unknown fields are refused, naming the
//! field; `status` is accepted and ignored.

use serde::{Deserialize, Serialize};

use super::authz::{ApiVersion, PolicyTargetReference, WorkloadSelector};

/// An Istio RequestAuthentication object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    /// `security.istio.io/v1` when omitted.
    #[serde(default)]
    pub api_version: ApiVersion,
    /// `RequestAuthentication` when omitted.
    #[serde(default)]
    pub kind: Kind,
    pub metadata: super::ObjectMeta,
    #[serde(default)]
    pub spec: RequestAuthenticationSpec,
    /// Whatever the control plane reported; ignored.
    #[serde(default, skip_serializing)]
    pub status: Option<serde::de::IgnoredAny>,
}

impl RequestAuthentication {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        self.metadata.key()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    #[default]
    RequestAuthentication,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// Workloads (ztunnel / sidecars); never a waypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// The waypoint's Gateway, the `istio-waypoint` GatewayClass, or Services it serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// One issuer's tokens: where they are found, how they are checked, what is passed on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// Must equal the token's `iss`.
    pub issuer: String,
    /// When set, the token's `aud` must name one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where the key set is fetched (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "jwks_uri")]
    pub jwks_uri: Option<String>,
    /// The key set inline, as JSON text; wins over `jwksUri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Default (no `fromHeaders`, `fromParams`, `fromCookies`): `Authorization: Bearer <token>`
    /// and the `access_token` query parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// A header to receive the verified payload (base64url JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    /// Keep the token in the request passed upstream (removed by default).
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims copied to request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long a `jwksUri` fetch may take (Istio's duration form; default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A header a token is taken from, with the prefix before it (`"Bearer "`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

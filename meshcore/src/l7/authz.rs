//! Istio's `AuthorizationPolicy` (`security.istio.io/v1`, also `v1beta1`) in the shape users
//! write it, for the policies a waypoint enforces at L7.
//!
//! Only the object model lives here: which policies attach to a waypoint and what they mean is
//! the waypoint's business (its `authz` module). Unknown fields are refused, naming the field;
//! `status` (written by the control plane) is accepted and ignored. `ports`, `notPorts` and
//! condition values are strings in Istio's schema; bare YAML numbers are accepted too.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// An Istio AuthorizationPolicy object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// `security.istio.io/v1` when omitted.
    #[serde(default)]
    pub api_version: ApiVersion,
    /// `AuthorizationPolicy` when omitted.
    #[serde(default)]
    pub kind: Kind,
    pub metadata: super::ObjectMeta,
    /// `spec: {}` (or no spec) is an ALLOW policy without rules.
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
    /// Whatever the control plane reported; ignored.
    #[serde(default, skip_serializing)]
    pub status: Option<serde::de::IgnoredAny>,
}

impl AuthorizationPolicy {
    /// `namespace/name`, how logs, metrics and decisions name the policy.
    pub fn key(&self) -> String {
        self.metadata.key()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiVersion {
    #[default]
    #[serde(rename = "security.istio.io/v1")]
    V1,
    #[serde(rename = "security.istio.io/v1beta1")]
    V1beta1,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    #[default]
    AuthorizationPolicy,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads the policy applies to (ztunnel / sidecars); never a waypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The single-reference form of `targetRefs` (deprecated by Istio, still accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Gateways (waypoints), the waypoint GatewayClass, or Services the policy attaches to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default)]
    pub action: Action,
    /// The external authorizer of a CUSTOM policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
    /// ORed; no rules at all matches nothing (`rules: [{}]` matches everything).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

/// `spec.selector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// One `targetRefs` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// `gateway.networking.k8s.io` for Gateway / GatewayClass; `""` (core) for Service.
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    /// Must be the policy's own namespace when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

impl Action {
    /// The name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    pub name: String,
}

/// A rule matches when some `from` matches (or there is none), some `to` matches (or there is
/// none), and every `when` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    #[serde(default)]
    pub source: Source,
}

/// Who sent the request; the fields are ANDed, the values of one field ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// `<trust-domain>/ns/<namespace>/sa/<service-account>`, with `*` forms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// `<iss>/<sub>` of a validated JWT.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// `<namespace>/<service-account>`, or `<service-account>` in the policy's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    /// Addresses or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    #[serde(default)]
    pub operation: Operation,
}

/// What the request does; the fields are ANDed, the values of one field ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(
        default,
        deserialize_with = "strings_or_numbers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<String>,
    #[serde(
        default,
        deserialize_with = "strings_or_numbers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// One `when` entry: `key` names an attribute (`request.headers[x-user]`, `source.ip`...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(
        default,
        deserialize_with = "strings_or_numbers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub values: Vec<String>,
    #[serde(
        default,
        deserialize_with = "strings_or_numbers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_values: Vec<String>,
}

/// A list of strings in which bare numbers (`ports: [80]`) stand for their decimal text.
fn strings_or_numbers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Text(String),
        Number(u64),
    }
    let items = Option::<Vec<Item>>::deserialize(d)?.unwrap_or_default();
    Ok(items
        .into_iter()
        .map(|i| match i {
            Item::Text(s) => s,
            Item::Number(n) => n.to_string(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AuthorizationPolicy, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(yaml)
    }

    #[test]
    fn full_policy() {
        let p = parse(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
  annotations:
    istio.io/dry-run: "true"
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  - kind: Service
    group: ""
    name: httpbin
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
        notPrincipals: ["*/sa/admin"]
        requestPrincipals: ["issuer/sub"]
        notRequestPrincipals: ["*"]
        namespaces: ["test"]
        notNamespaces: ["prod*"]
        serviceAccounts: ["test/curl", "curl"]
        notServiceAccounts: ["test/admin"]
        ipBlocks: ["10.0.0.0/8", "192.168.1.1"]
        notIpBlocks: ["10.0.0.1"]
        remoteIpBlocks: ["203.0.113.0/24"]
        notRemoteIpBlocks: ["203.0.113.4"]
    to:
    - operation:
        hosts: ["*.example.com"]
        notHosts: ["admin.example.com"]
        ports: [8080, "9090"]
        notPorts: ["22"]
        methods: ["GET", "HEAD"]
        notMethods: ["DELETE"]
        paths: ["/info*", "/api/{*}/items"]
        notPaths: ["/admin*"]
    when:
    - key: request.headers[x-user]
      values: ["alice"]
      notValues: ["bob"]
    - key: destination.port
      values: [80]
status:
  conditions:
  - type: WaypointAccepted
    status: "True"
"#,
        )
        .unwrap();
        assert_eq!(p.api_version, ApiVersion::V1);
        assert_eq!(p.key(), "foo/httpbin");
        assert_eq!(p.spec.action, Action::Deny);
        assert_eq!(p.spec.target_refs.len(), 2);
        assert_eq!(p.spec.target_refs[1].group, "");
        assert_eq!(p.spec.target_refs[1].namespace, None);
        let rule = &p.spec.rules[0];
        let s = &rule.from[0].source;
        assert_eq!(s.service_accounts, ["test/curl", "curl"]);
        assert_eq!(s.not_remote_ip_blocks, ["203.0.113.4"]);
        let o = &rule.to[0].operation;
        assert_eq!(o.ports, ["8080", "9090"]);
        assert_eq!(o.not_ports, ["22"]);
        assert_eq!(o.paths[1], "/api/{*}/items");
        assert_eq!(rule.when[0].key, "request.headers[x-user]");
        assert_eq!(rule.when[1].values, ["80"]);
        assert!(p.status.is_some());
        // Status is never written back; the rest survives a round trip.
        let json = to_yaml(&p);
        assert!(!json.contains("status:"), "{json}");
        let again = parse(&json).unwrap();
        assert_eq!(again.spec, p.spec);
        assert_eq!(again.metadata, p.metadata);
    }

    fn to_yaml(p: &AuthorizationPolicy) -> String {
        serde_yaml_ng::to_string(p).unwrap()
    }

    #[test]
    fn defaults_and_v1beta1() {
        let p = parse(
            "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all}\nspec: {}\n",
        )
        .unwrap();
        assert_eq!(p.api_version, ApiVersion::V1beta1);
        assert_eq!(p.metadata.namespace, "default");
        assert_eq!(p.spec.action, Action::Allow);
        assert!(p.spec.rules.is_empty());
        // No spec at all is the same thing.
        let q = parse("metadata: {name: deny-all}\n").unwrap();
        assert_eq!(q.spec, p.spec);
        assert_eq!(q.kind, Kind::AuthorizationPolicy);
        // `rules: [{}]` is one empty rule.
        let r = parse("metadata: {name: a}\nspec: {rules: [{}], action: AUDIT}\n").unwrap();
        assert_eq!(r.spec.rules, vec![Rule::default()]);
        assert_eq!(r.spec.action, Action::Audit);
        let c = parse(
            "metadata: {name: a}\nspec: {action: CUSTOM, provider: {name: ext-authz}, targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: wp, namespace: x}}\n",
        )
        .unwrap();
        assert_eq!(c.spec.provider.as_ref().unwrap().name, "ext-authz");
        assert_eq!(
            c.spec.target_ref.as_ref().unwrap().namespace.as_deref(),
            Some("x")
        );
        let s = parse("metadata: {name: a}\nspec: {selector: {matchLabels: {app: x}}}\n").unwrap();
        assert_eq!(s.spec.selector.unwrap().match_labels["app"], "x");
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        for (yaml, field) in [
            ("metadata: {name: a}\nspec: {actions: DENY}\n", "actions"),
            (
                "metadata: {name: a}\nspec: {rules: [{from: [{source: {principal: [x]}}]}]}\n",
                "principal",
            ),
            (
                "metadata: {name: a}\nspec: {rules: [{to: [{operation: {method: [GET]}}]}]}\n",
                "method",
            ),
            (
                "metadata: {name: a}\nspec: {rules: [{when: [{key: source.ip, value: [x]}]}]}\n",
                "value",
            ),
            ("metadata: {name: a}\nspex: {}\n", "spex"),
            (
                "metadata: {name: a}\nspec: {targetRefs: [{kind: Service, name: a, sectionName: http}]}\n",
                "sectionName",
            ),
        ] {
            let err = parse(yaml).unwrap_err().to_string();
            assert!(err.contains(field), "{yaml}: {err}");
        }
        let err = parse("apiVersion: networking.istio.io/v1\nmetadata: {name: a}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("networking.istio.io/v1"), "{err}");
        let err = parse("kind: PeerAuthentication\nmetadata: {name: a}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("PeerAuthentication"), "{err}");
        let err = parse("metadata: {name: a}\nspec: {action: REJECT}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("REJECT"), "{err}");
    }
}

//! Istio's resources as users write them (`security.istio.io/v1`), as kube-derive CRD types. Spec
//! fields keep Istio's camelCase names; unknown fields are refused so a misspelt key is reported
//! instead of silently ignored. Gateway API's objects ([`gateway`]) are read too; their CRDs
//! come from the Gateway API project, not from `--print-crds`.

pub mod gateway;
pub mod security;

use kube::CustomResourceExt;

/// The CustomResourceDefinitions of these types, as multi-document YAML (`--print-crds`; the
/// Helm chart ships this output).
pub fn crds_yaml() -> String {
    [
        security::AuthorizationPolicy::crd(),
        security::PeerAuthentication::crd(),
    ]
    .iter()
    .map(|crd| serde_yaml_ng::to_string(crd).expect("a CRD serialises"))
    .collect::<Vec<_>>()
    .join("---\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn crds_name_istio_groups_and_have_a_status_subresource() {
        let yaml = super::crds_yaml();
        for want in [
            "name: authorizationpolicies.security.istio.io",
            "name: peerauthentications.security.istio.io",
            "group: security.istio.io",
            "status: {}",
            "kind: CustomResourceDefinition",
        ] {
            assert!(yaml.contains(want), "missing {want:?} in\n{yaml}");
        }
        let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
    }
}

//! Istio's resources as users write them (`security.istio.io/v1`), as kube-derive CRD types. Spec
//! fields keep Istio's camelCase names; unknown fields are refused so a misspelt key is reported
//! instead of silently ignored. Gateway API's objects ([`gateway`]) are read too; their CRDs
//! come from the Gateway API project, not from `--print-crds`.

/// Implements [`kube::Resource`] for a namespaced type whose definition is not kube-derive's
/// (Gateway API's, Istio's networking kinds, Linkerd's, SMI's and Cilium's): `(type, group, version,
/// kind, plural)`.
macro_rules! namespaced_resource {
    ($ty:ty, $group:expr, $version:expr, $kind:literal, $plural:literal) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed($kind)
            }

            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed($group)
            }

            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed($version)
            }

            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed($plural)
            }

            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.metadata
            }

            fn meta_mut(
                &mut self,
            ) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

pub mod cilium;
pub mod gateway;
pub mod linkerd;
pub mod linkerd_policy;
pub mod networking;
pub mod secret;
pub mod security;

use kube::CustomResourceExt;

/// The CustomResourceDefinitions of these types, as multi-document YAML (`--print-crds`; the
/// Helm chart ships this output). Each serves `v1` (stored) and `v1beta1` with the same schema,
/// as Istio's do, so manifests written for older Istio releases apply unchanged; the API
/// server converts between them (same fields), and istiod-lite watches `v1`.
pub fn crds_yaml() -> String {
    [
        security::AuthorizationPolicy::crd(),
        security::PeerAuthentication::crd(),
        security::RequestAuthentication::crd(),
    ]
    .into_iter()
    .map(with_v1beta1)
    .chain(networking::crds())
    .map(|crd| serde_yaml_ng::to_string(&crd).expect("a CRD serialises"))
    .collect::<Vec<_>>()
    .join("---\n")
}

type Crd =
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// `crd` also serving `v1beta1`, a copy of its stored version.
fn with_v1beta1(mut crd: Crd) -> Crd {
    if let Some(stored) = crd.spec.versions.iter().find(|v| v.storage).cloned() {
        let mut beta = stored;
        beta.name = "v1beta1".into();
        beta.storage = false;
        crd.spec.versions.push(beta);
    }
    crd
}

#[cfg(test)]
mod tests {
    #[test]
    fn crds_name_istio_groups_and_have_a_status_subresource() {
        let yaml = super::crds_yaml();
        for want in [
            "name: authorizationpolicies.security.istio.io",
            "name: peerauthentications.security.istio.io",
            "name: requestauthentications.security.istio.io",
            "group: security.istio.io",
            "status: {}",
            "kind: CustomResourceDefinition",
        ] {
            assert!(yaml.contains(want), "missing {want:?} in\n{yaml}");
        }
        let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 5);
        for doc in &docs[..3] {
            let versions: Vec<(&str, bool, bool)> = doc["spec"]["versions"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap(),
                        v["served"].as_bool().unwrap(),
                        v["storage"].as_bool().unwrap(),
                    )
                })
                .collect();
            assert_eq!(versions, [("v1", true, true), ("v1beta1", true, false)]);
        }
    }
}

//! Istio's traffic management objects (`networking.istio.io`): `VirtualService` and
//! `DestinationRule`, whose specs are meshcore's types, handed to waypoints as written.
//!
//! Like the Gateway API types, they implement [`kube::Resource`] by hand. Their
//! CustomResourceDefinitions (in `--print-crds`, so the `base` chart installs them when Istio's
//! are not there) serve `v1`, `v1beta1` and `v1alpha3` with the same fields; the schema keeps
//! unknown fields (`x-kubernetes-preserve-unknown-fields`), and istiod-lite's strict reading
//! reports them by name instead.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceSubresources, CustomResourceValidation,
    JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meshcore::l7;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::gateway::l7_meta;

pub const GROUP: &str = "networking.istio.io";
pub const VERSION: &str = "v1";

/// A `VirtualService`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualService {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: l7::networking::VirtualServiceSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<IgnoredAny>,
}

namespaced_resource!(
    VirtualService,
    GROUP,
    VERSION,
    "VirtualService",
    "virtualservices"
);

/// A `DestinationRule`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRule {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: l7::networking::DestinationRuleSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<IgnoredAny>,
}

namespaced_resource!(
    DestinationRule,
    GROUP,
    VERSION,
    "DestinationRule",
    "destinationrules"
);

impl VirtualService {
    /// As the waypoint takes it.
    pub fn to_l7(&self) -> l7::networking::VirtualService {
        l7::networking::VirtualService {
            api_version: format!("{GROUP}/{VERSION}"),
            kind: "VirtualService".into(),
            metadata: l7_meta(&self.metadata),
            spec: self.spec.clone(),
            status: None,
        }
    }
}

impl DestinationRule {
    /// As the waypoint takes it.
    pub fn to_l7(&self) -> l7::networking::DestinationRule {
        l7::networking::DestinationRule {
            api_version: format!("{GROUP}/{VERSION}"),
            kind: "DestinationRule".into(),
            metadata: l7_meta(&self.metadata),
            spec: self.spec.clone(),
            status: None,
        }
    }
}

/// The CRDs of both kinds.
pub fn crds() -> Vec<CustomResourceDefinition> {
    [
        ("VirtualService", "virtualservices", "vs"),
        ("DestinationRule", "destinationrules", "dr"),
    ]
    .into_iter()
    .map(|(kind, plural, short)| crd(kind, plural, short))
    .collect()
}

fn crd(kind: &str, plural: &str, short: &str) -> CustomResourceDefinition {
    let object = |preserve: bool| JSONSchemaProps {
        type_: Some("object".into()),
        x_kubernetes_preserve_unknown_fields: preserve.then_some(true),
        ..Default::default()
    };
    let schema = JSONSchemaProps {
        type_: Some("object".into()),
        properties: Some(
            [
                ("spec".to_owned(), object(true)),
                ("status".to_owned(), object(true)),
            ]
            .into_iter()
            .collect(),
        ),
        ..Default::default()
    };
    let version = |name: &str, storage: bool| CustomResourceDefinitionVersion {
        name: name.into(),
        served: true,
        storage,
        schema: Some(CustomResourceValidation {
            open_api_v3_schema: Some(schema.clone()),
        }),
        subresources: Some(CustomResourceSubresources {
            status: Some(Default::default()),
            scale: None,
        }),
        ..Default::default()
    };
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{plural}.{GROUP}")),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: GROUP.into(),
            names: CustomResourceDefinitionNames {
                kind: kind.into(),
                plural: plural.into(),
                singular: Some(kind.to_ascii_lowercase()),
                short_names: Some(vec![short.into()]),
                categories: Some(vec!["istio-io".into(), "networking-istio-io".into()]),
                list_kind: Some(format!("{kind}List")),
            },
            scope: "Namespaced".into(),
            versions: vec![
                version("v1", true),
                version("v1beta1", false),
                version("v1alpha3", false),
            ],
            conversion: None,
            preserve_unknown_fields: None,
        },
        status: None,
    }
}

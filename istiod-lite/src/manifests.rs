//! Reading Kubernetes manifests: multi-document YAML files in a directory, as `kubectl apply
//! -f DIR` would take them. Namespaces, Pods, Services, Secrets of type `kubernetes.io/tls`,
//! EndpointSlices, AuthorizationPolicies, PeerAuthentications, RequestAuthentications, Gateway
//! API Gateways, HTTPRoutes, GRPCRoutes and ReferenceGrants, Istio VirtualServices and DestinationRules, SMI TrafficSplits, Linkerd
//! ServiceProfiles and Linkerd's policy (Servers, ServerAuthorizations, AuthorizationPolicies,
//! MeshTLSAuthentications, NetworkAuthentications) and Cilium's `cilium.io/v2`
//! CiliumNetworkPolicies and CiliumClusterwideNetworkPolicies are kept (also inside `kind: List`); other
//! kinds are skipped. A document that does not parse refuses the whole load, naming file,
//! document, object and field, so the caller keeps its last good view.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::cluster::{Cluster, TlsSecret};
use crate::crd::secret::TLS_TYPE;

/// Every manifest file under `dir` (`.yaml`, `.yml`, `.json`), sorted, not recursing into
/// hidden directories.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Loads every manifest under `dir`.
pub fn load_dir(dir: &Path) -> Result<Cluster, Vec<String>> {
    let files = manifest_files(dir).map_err(|e| vec![format!("reading {}: {e}", dir.display())])?;
    let mut cluster = Cluster::default();
    let mut errors = Vec::new();
    for file in files {
        let shown = file
            .strip_prefix(dir)
            .unwrap_or(&file)
            .display()
            .to_string();
        match std::fs::read_to_string(&file) {
            Ok(text) => load_text(&text, &shown, &mut cluster, &mut errors),
            Err(e) => errors.push(format!("{shown}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(cluster)
    } else {
        Err(errors)
    }
}

/// Adds the objects of one file's text to `cluster`.
pub fn load_text(text: &str, file: &str, cluster: &mut Cluster, errors: &mut Vec<String>) {
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let at = format!("{file} document {}", i + 1);
        match Value::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(value) => add_object(value, &at, cluster, errors),
            Err(e) => {
                // A syntax error leaves the rest of the stream unreadable, and the document
                // iterator then yields the same error forever (found by fuzzing): stop here.
                errors.push(format!("{at}: {e}; the rest of the file is not read"));
                return;
            }
        }
    }
}

fn add_object(value: Value, at: &str, cluster: &mut Cluster, errors: &mut Vec<String>) {
    let field = |k: &str| {
        value
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (api, kind) = (field("apiVersion"), field("kind"));
    let name = value
        .get("metadata")
        .map(|m| {
            let s = |k: &str| {
                m.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            match s("namespace") {
                ns if ns.is_empty() => s("name"),
                ns => format!("{ns}/{}", s("name")),
            }
        })
        .unwrap_or_default();
    let at = format!("{at} ({kind} {name})");
    /// Deserializes strictly: a field the type does not know is an error naming its path, as
    /// `kubectl apply` with strict field validation reports it.
    fn typed<T: serde::de::DeserializeOwned>(
        v: Value,
        at: &str,
        errors: &mut Vec<String>,
    ) -> Option<T> {
        let mut unknown = Vec::new();
        let result: Result<T, _> = serde_ignored::deserialize(v, |path| {
            // Our Istio types leave the type header and any recorded status to the reader.
            let path = path.to_string();
            if !matches!(path.as_str(), "apiVersion" | "kind")
                && !path.starts_with("status")
                && !unsupported_filter(&path)
            {
                unknown.push(path);
            }
        });
        match result {
            Err(e) => {
                errors.push(format!("{at}: {e}"));
                None
            }
            Ok(_) if !unknown.is_empty() => {
                errors.push(format!("{at}: unknown field {}", unknown.join(", ")));
                None
            }
            Ok(obj) => Some(obj),
        }
    }
    let security = matches!(
        api.as_str(),
        "security.istio.io/v1" | "security.istio.io/v1beta1"
    );
    let networking = matches!(
        api.as_str(),
        "networking.istio.io/v1" | "networking.istio.io/v1beta1" | "networking.istio.io/v1alpha3"
    );
    let gateway_api = matches!(
        api.as_str(),
        "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1"
    );
    match (api.as_str(), kind.as_str()) {
        ("v1", "List") => {
            let items = value
                .get("items")
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default();
            for (i, item) in items.into_iter().enumerate() {
                add_object(item, &format!("{at} item {i}"), cluster, errors);
            }
        }
        ("v1", "Namespace") => cluster.namespaces.extend(typed(value, &at, errors)),
        ("v1", "Pod") => cluster.pods.extend(
            typed::<k8s_openapi::api::core::v1::Pod>(value, &at, errors).map(default_namespace),
        ),
        ("v1", "Service") => cluster.services.extend(
            typed::<k8s_openapi::api::core::v1::Service>(value, &at, errors).map(default_namespace),
        ),
        // Only TLS Secrets (ingress gateways' certificates); others are skipped unread.
        ("v1", "Secret") if value.get("type").and_then(Value::as_str) == Some(TLS_TYPE) => {
            cluster.secrets.extend(
                typed::<k8s_openapi::api::core::v1::Secret>(value, &at, errors)
                    .map(default_namespace)
                    .and_then(TlsSecret::from_secret),
            )
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => cluster.endpoint_slices.extend(
            typed::<k8s_openapi::api::discovery::v1::EndpointSlice>(value, &at, errors)
                .map(default_namespace),
        ),
        (_, "AuthorizationPolicy") if security => cluster.authorization_policies.extend(
            typed::<crate::cluster::AuthorizationPolicy>(with_spec(value), &at, errors)
                .map(default_namespace),
        ),
        (_, "PeerAuthentication") if security => cluster.peer_authentications.extend(
            typed::<crate::cluster::PeerAuthentication>(with_spec(value), &at, errors)
                .map(default_namespace),
        ),
        (_, "RequestAuthentication") if security => cluster.request_authentications.extend(
            typed::<crate::cluster::RequestAuthentication>(with_spec(value), &at, errors)
                .map(default_namespace),
        ),
        (_, "Gateway") if gateway_api => cluster
            .gateways
            .extend(typed::<crate::cluster::Gateway>(value, &at, errors).map(default_namespace)),
        (_, "HTTPRoute") if gateway_api => cluster
            .http_routes
            .extend(typed::<crate::cluster::HttpRoute>(value, &at, errors).map(default_namespace)),
        (_, "GRPCRoute") if gateway_api => cluster
            .grpc_routes
            .extend(typed::<crate::cluster::GrpcRoute>(value, &at, errors).map(default_namespace)),
        (_, "ReferenceGrant") if gateway_api => cluster.reference_grants.extend(
            typed::<crate::cluster::ReferenceGrant>(value, &at, errors).map(default_namespace),
        ),
        (_, "VirtualService") if networking => cluster.virtual_services.extend(
            typed::<crate::cluster::VirtualService>(value, &at, errors).map(default_namespace),
        ),
        (_, "DestinationRule") if networking => cluster.destination_rules.extend(
            typed::<crate::cluster::DestinationRule>(value, &at, errors).map(default_namespace),
        ),
        (_, "TrafficSplit") if api.starts_with("split.smi-spec.io/") => {
            cluster.traffic_splits.extend(
                typed::<crate::cluster::TrafficSplit>(value, &at, errors).map(default_namespace),
            )
        }
        ("linkerd.io/v1alpha2", "ServiceProfile") => cluster.service_profiles.extend(
            typed::<crate::cluster::ServiceProfile>(value, &at, errors).map(default_namespace),
        ),
        (
            "policy.linkerd.io/v1alpha1"
            | "policy.linkerd.io/v1beta1"
            | "policy.linkerd.io/v1beta2"
            | "policy.linkerd.io/v1beta3",
            "Server",
        ) => cluster
            .servers
            .extend(typed::<crate::cluster::Server>(value, &at, errors).map(default_namespace)),
        ("policy.linkerd.io/v1alpha1" | "policy.linkerd.io/v1beta1", "ServerAuthorization") => {
            cluster.server_authorizations.extend(
                typed::<crate::cluster::ServerAuthorization>(value, &at, errors)
                    .map(default_namespace),
            )
        }
        // Linkerd's, not Istio's (security.istio.io, above).
        ("policy.linkerd.io/v1alpha1", "AuthorizationPolicy") => {
            cluster.linkerd_authorization_policies.extend(
                typed::<crate::cluster::LinkerdAuthorizationPolicy>(value, &at, errors)
                    .map(default_namespace),
            )
        }
        ("policy.linkerd.io/v1alpha1", "MeshTLSAuthentication") => {
            cluster.mesh_tls_authentications.extend(
                typed::<crate::cluster::MeshTlsAuthentication>(value, &at, errors)
                    .map(default_namespace),
            )
        }
        ("policy.linkerd.io/v1alpha1", "NetworkAuthentication") => {
            cluster.network_authentications.extend(
                typed::<crate::cluster::NetworkAuthentication>(value, &at, errors)
                    .map(default_namespace),
            )
        }
        ("cilium.io/v2", "CiliumNetworkPolicy") => cluster.cilium_network_policies.extend(
            typed::<crate::cluster::CiliumNetworkPolicy>(value, &at, errors).map(default_namespace),
        ),
        // Cluster-scoped: no namespace, whatever the manifest says (as the API server).
        ("cilium.io/v2", "CiliumClusterwideNetworkPolicy") => {
            cluster.cilium_clusterwide_network_policies.extend(
                typed::<crate::cluster::CiliumClusterwideNetworkPolicy>(value, &at, errors).map(
                    |mut p| {
                        p.metadata.namespace = None;
                        p
                    },
                ),
            )
        }
        ("", _) | (_, "") => errors.push(format!(
            "{at}: not a Kubernetes object (apiVersion and kind are required)"
        )),
        _ => {} // other kinds (Deployments, ConfigMaps, ...) are not the mesh's business
    }
}

/// Route filters this mesh parses but does not support (`CORS`, `ExternalAuth`): their bodies
/// are skipped on purpose, and the waypoint reports the filter in the route's status.
fn unsupported_filter(path: &str) -> bool {
    // serde_ignored marks an optional value with a trailing `?`.
    let path = path.trim_end_matches(".?");
    path.contains(".filters.") && matches!(path.rsplit('.').next(), Some("cors" | "externalAuth"))
}

/// An Istio policy may leave `spec` out (an empty spec: for an ALLOW policy, allow nothing).
fn with_spec(mut value: Value) -> Value {
    if let Value::Mapping(m) = &mut value {
        let key = Value::String("spec".into());
        if !m.contains_key(&key) {
            m.insert(key, Value::Mapping(Default::default()));
        }
    }
    value
}

/// Objects without a namespace land in `default`, as `kubectl apply` would put them.
fn default_namespace<T: kube::Resource>(mut obj: T) -> T {
    let meta = obj.meta_mut();
    if meta.namespace.as_deref().unwrap_or_default().is_empty() {
        meta.namespace = Some("default".into());
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_secrets_and_reference_grants_are_read_strictly_other_secrets_skipped() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: web, namespace: shop}\n\
                    type: kubernetes.io/tls\nstringData: {tls.crt: CERT, tls.key: KEY}\n---\n\
                    apiVersion: v1\nkind: Secret\nmetadata: {name: opaque}\n\
                    data: {password: '!!not base64!!'}\n---\n\
                    apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
                    metadata: {name: g, namespace: certs}\n\
                    spec: {from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: shop}], \
                    to: [{group: \"\", kind: Secret}]}\n---\n\
                    apiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\n\
                    metadata: {name: h}\nspec: {from: [], to: []}\n";
        let mut cluster = Cluster::default();
        let mut errors = Vec::new();
        load_text(text, "a.yaml", &mut cluster, &mut errors);
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(cluster.secrets.len(), 1);
        assert_eq!(cluster.secrets[0].cert_chain.as_deref(), Some("CERT"));
        assert_eq!(cluster.reference_grants.len(), 2);
        assert_eq!(
            cluster.reference_grants[1].metadata.namespace.as_deref(),
            Some("default")
        );

        let bad = "apiVersion: v1\nkind: Secret\nmetadata: {name: web, namespace: shop}\n\
                   type: kubernetes.io/tls\ndata: {tls.crt: '!!'}\n---\n\
                   apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
                   metadata: {name: g, namespace: certs}\nspec: {from: [], to: [], tos: []}\n";
        let mut errors = Vec::new();
        load_text(bad, "b.yaml", &mut Cluster::default(), &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("b.yaml document 1 (Secret shop/web): "),
            "{errors:?}"
        );
        assert_eq!(
            errors[1],
            "b.yaml document 2 (ReferenceGrant certs/g): unknown field spec.tos"
        );
    }

    #[test]
    fn a_syntax_error_ends_the_file_with_one_error() {
        // Found by fuzzing: the document iterator repeated the error forever (hang, unbounded
        // memory) after a line like this one.
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion:ho` x\napiVersion: v1\nkind: Pod\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n";
        let mut cluster = Cluster::default();
        let mut errors = Vec::new();
        load_text(text, "bad.yaml", &mut cluster, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("bad.yaml document 2"), "{errors:?}");
        assert!(
            errors[0].contains("the rest of the file is not read"),
            "{errors:?}"
        );
    }
}

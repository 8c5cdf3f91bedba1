//! Linkerd's policy objects through cluster mode against the API stand-in: watched in
//! `policy.linkerd.io`, translated into the L4 authorizations ztunnels get, followed through
//! changes, and optional (without Linkerd's CRDs, ztunnels are still served).

use istiod_lite::sources::kube::KubeSource;
use istiod_lite::translate::ClusterInfo;
use istiod_lite::xds::ResourceSet;
use meshcore::api::type_url;
use serde_json::{json, Value};

use crate::kube::{example_objects, next, versions};
use crate::kube_api::FakeApi;

const POLICY: &str = "policy.linkerd.io/v1alpha1";
const CART: &str = "shop/linkerd-server-cart-http";

fn server() -> Value {
    json!({"apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server",
           "metadata": {"name": "cart-http", "namespace": "shop"},
           "spec": {"podSelector": {"matchLabels": {"app": "cart"}}, "port": "http",
                    "proxyProtocol": "HTTP/1"}})
}

fn authn(identity: &str) -> Value {
    json!({"apiVersion": POLICY, "kind": "MeshTLSAuthentication",
           "metadata": {"name": "frontend", "namespace": "shop"},
           "spec": {"identities": [identity]}})
}

fn linkerd_policy() -> Value {
    json!({"apiVersion": POLICY, "kind": "AuthorizationPolicy",
           "metadata": {"name": "cart-from-frontend", "namespace": "shop"},
           "spec": {"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "cart-http"},
                    "requiredAuthenticationRefs": [
                        {"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "frontend"}]}})
}

fn version(set: &ResourceSet) -> Option<String> {
    set.by_type[type_url::AUTHORIZATION]
        .get(CART)
        .map(|r| r.version.clone())
}

/// The next set in which `CART`'s version is not `old`.
async fn next_change(source: &mut KubeSource, old: Option<String>) -> ResourceSet {
    loop {
        let set = next(source).await;
        if version(&set) != old {
            return set;
        }
    }
}

#[tokio::test]
async fn linkerd_policy_is_watched_and_reaches_ztunnels_as_authorizations() {
    let api = FakeApi::start().await;
    for o in example_objects() {
        api.apply(o);
    }
    api.apply(server());
    api.apply(authn(
        "frontend.shop.serviceaccount.identity.linkerd.cluster.local",
    ));
    api.apply(linkerd_policy());
    let mut source = KubeSource::start(api.client(), ClusterInfo::default(), false);
    let first = next(&mut source).await;
    assert!(version(&first).is_some(), "{:?}", versions(&first));
    {
        let status = source.status.lock().unwrap();
        for kind in [
            "Server",
            "ServerAuthorization",
            "LinkerdAuthorizationPolicy",
            "MeshTlsAuthentication",
            "NetworkAuthentication",
        ] {
            assert!(
                status.synced.contains(&kind.to_owned()),
                "{kind} not synced"
            );
        }
        // Istio's AuthorizationPolicy of the same name is a different object: still there.
        assert!(first.by_type[type_url::AUTHORIZATION].contains_key("shop/cart-from-frontend"));
    }

    // Another identity: the authorization changes; a ServerAuthorization adds a rule.
    api.apply(authn(
        "batch.legacy.serviceaccount.identity.linkerd.cluster.local",
    ));
    let changed = next_change(&mut source, version(&first)).await;
    api.apply(
        json!({"apiVersion": "policy.linkerd.io/v1beta1", "kind": "ServerAuthorization",
        "metadata": {"name": "cart-from-office", "namespace": "shop"},
        "spec": {"server": {"name": "cart-http"},
                 "client": {"unauthenticated": true, "networks": [{"cidr": "192.168.0.0/16"}]}}}),
    );
    let widened = next_change(&mut source, version(&changed)).await;
    assert_ne!(version(&widened), version(&first));

    // The Server goes: so does its authorization, and nothing of it is left.
    api.delete("policy.linkerd.io/v1beta3", "Server", "shop", "cart-http");
    let gone = next_change(&mut source, version(&widened)).await;
    assert_eq!(version(&gone), None);
    let notes = source.status.lock().unwrap().notes.clone();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("AuthorizationPolicy.policy.linkerd.io shop/cart-from-frontend: targetRef: Server shop/cart-http does not exist")),
        "{notes:?}"
    );
}

#[tokio::test]
async fn without_linkerds_policy_crds_ztunnels_are_still_served() {
    let api = FakeApi::start().await;
    api.serve_group("policy.linkerd.io", false);
    for o in example_objects() {
        api.apply(o);
    }
    let mut source = KubeSource::start(api.client(), ClusterInfo::default(), false);
    let first = next(&mut source).await;
    assert!(first.count(type_url::ADDRESS) > 0);
    let errors = source.status.lock().unwrap().watch_errors.clone();
    for kind in [
        "Server",
        "LinkerdAuthorizationPolicy",
        "NetworkAuthentication",
    ] {
        assert!(
            errors[kind].contains(&format!("{kind} CRD not installed")),
            "{errors:?}"
        );
    }
}

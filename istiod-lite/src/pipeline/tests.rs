//! The incremental pipeline must serve exactly what a whole translation of the same view
//! gives, after any sequence of changes.

use std::path::Path;

use super::*;
use crate::manifests;
use meshcore::api::type_url;

fn example() -> Cluster {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mesh");
    manifests::load_dir(&dir).unwrap_or_else(|e| panic!("examples/mesh: {e:?}"))
}

fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
    serde_yaml_ng::from_str(s).unwrap()
}

type Versions = BTreeMap<&'static str, BTreeMap<String, String>>;

fn versions(set: &ResourceSet) -> Versions {
    set.by_type
        .iter()
        .map(|(t, m)| {
            let v = m
                .values()
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect();
            (*t, v)
        })
        .collect()
}

/// Builds and checks the result against a from-scratch translation of the pipeline's view.
fn check(p: &mut Pipeline) -> ResourceSet {
    let set = p.build().expect("something changed");
    let cluster = p.cluster();
    let waypoints = crate::translate::waypoints::waypoints(
        &crate::translate::waypoints::View::from_cluster(&cluster),
        p.info(),
    );
    let whole = ResourceSet::from_translation(&translate(&cluster, p.info()), 0).with_waypoints(
        crate::xds::resources::waypoint_resources(&waypoints.configs),
        waypoints.identities,
    );
    assert_eq!(versions(&set), versions(&whole));
    assert_eq!(set.identities_by_node, whole.identities_by_node);
    assert_eq!(set.waypoint_identities, whole.waypoint_identities);
    set
}

fn pod(ns: &str, name: &str, ip: &str, labels: &str) -> Object {
    Object::Pod(yaml(&format!(
        "metadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec: {{serviceAccountName: sa, nodeName: node-1, containers: [{{name: c, image: i}}]}}\n\
         status: {{phase: Running, podIP: {ip}}}"
    )))
}

#[test]
fn incremental_changes_match_a_whole_translation() {
    let mut p = Pipeline::new(ClusterInfo::default());
    p.replace_all(example());
    let first = check(&mut p);
    assert!(first.count(type_url::ADDRESS) > 0);
    assert!(p.build().is_none(), "nothing changed, nothing built");

    // A new pod in an enrolled namespace, picked up by a Service's selector.
    p.apply(pod("shop", "cart-3", "10.10.1.99", "app: cart"));
    check(&mut p);
    // The same object again is no change.
    p.apply(pod("shop", "cart-3", "10.10.1.99", "app: cart"));
    assert!(p.build().is_none());

    // Mesh-wide STRICT in the root namespace reaches every namespace's workloads.
    p.apply(Object::PeerAuthentication(yaml(
        "metadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}",
    )));
    check(&mut p);
    // A root-namespace selector policy binds to pods of other namespaces.
    p.apply(Object::AuthorizationPolicy(yaml(
        "metadata: {name: carts, namespace: istio-system}\n\
         spec: {selector: {matchLabels: {app: cart}}, rules: [{}]}",
    )));
    check(&mut p);

    // Enrolling the legacy namespace turns its pods into HBONE workloads.
    p.apply(Object::Namespace(yaml(
        "metadata: {name: legacy, labels: {istio.io/dataplane-mode: ambient}}",
    )));
    check(&mut p);

    // Emptying a namespace removes its resources.
    for name in p.slices["legacy"].names(Kind::Pod) {
        p.delete(Kind::Pod, "legacy", &name);
    }
    for name in p.slices["legacy"].names(Kind::Service) {
        p.delete(Kind::Service, "legacy", &name);
    }
    for name in p.slices["legacy"].names(Kind::AuthorizationPolicy) {
        p.delete(Kind::AuthorizationPolicy, "legacy", &name);
    }
    p.delete(Kind::Namespace, "legacy", "legacy");
    assert!(!p.slices.contains_key("legacy"));
    let set = check(&mut p);
    assert!(!set.by_type[type_url::ADDRESS]
        .keys()
        .any(|k| k.contains("legacy")));

    // A relist that no longer holds a policy deletes it.
    p.replace_kind(Kind::AuthorizationPolicy, Vec::new());
    let set = check(&mut p);
    assert!(set.by_type[type_url::AUTHORIZATION]
        .keys()
        .all(|k| k.contains(STATIC_STRICT)));
}

#[test]
fn an_invalid_policy_keeps_its_last_good_version() {
    let mut p = Pipeline::new(ClusterInfo::default());
    p.replace_all(example());
    p.build();
    let good = "metadata: {name: deny-ip, namespace: shop}\n\
                spec: {action: DENY, rules: [{from: [{source: {ipBlocks: [10.9.0.0/16]}}]}]}";
    p.apply(Object::AuthorizationPolicy(yaml(good)));
    let before = check(&mut p);
    assert!(before.by_type[type_url::AUTHORIZATION].contains_key("shop/deny-ip"));

    p.apply(Object::AuthorizationPolicy(yaml(
        "metadata: {name: deny-ip, namespace: shop}\n\
         spec: {action: DENY, rules: [{from: [{source: {ipBlocks: [10.9.0.0/99]}}]}]}",
    )));
    assert!(p.build().is_none(), "the refused update changes nothing");
    let rejected = p.rejected();
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0].to_string().contains("10.9.0.0/99"),
        "{}",
        rejected[0]
    );
    // Other changes still flow, with the last good policy still served.
    p.apply(pod("shop", "cart-9", "10.10.1.98", "app: cart"));
    let after = check(&mut p);
    assert_eq!(
        after.by_type[type_url::AUTHORIZATION]["shop/deny-ip"].version,
        before.by_type[type_url::AUTHORIZATION]["shop/deny-ip"].version
    );
    // Fixing it clears the reason; deleting it removes the policy.
    p.apply(Object::AuthorizationPolicy(yaml(good)));
    assert!(p.rejected().is_empty());
    p.delete(Kind::AuthorizationPolicy, "shop", "deny-ip");
    let gone = check(&mut p);
    assert!(!gone.by_type[type_url::AUTHORIZATION].contains_key("shop/deny-ip"));
}

#[test]
fn waypoint_changes_match_a_whole_translation() {
    let mut p = Pipeline::new(ClusterInfo::default());
    p.replace_all(example());
    let first = check(&mut p);
    assert!(first.by_type[type_url::WAYPOINT_CONFIG].is_empty());

    // A waypoint in `shop`; `cart` uses it.
    p.apply(Object::Gateway(yaml(
        "metadata: {name: wp, namespace: shop}\n\
         spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}",
    )));
    let set = check(&mut p);
    assert_eq!(
        set.waypoint_identities["shop/wp"],
        "spiffe://cluster.local/ns/shop/sa/wp"
    );
    p.apply(Object::Service(yaml(
        "metadata: {name: cart, namespace: shop, labels: {istio.io/use-waypoint: wp}}\n\
         spec: {clusterIP: 10.96.0.20, selector: {app: cart}, ports: [{name: http, port: 80, targetPort: http}]}",
    )));
    let bound = check(&mut p);

    // A route touches the waypoint's configuration and nothing ztunnels hold.
    p.apply(Object::HttpRoute(yaml(
        "metadata: {name: cart, namespace: shop}\n\
         spec: {parentRefs: [{group: \"\", kind: Service, name: cart}], rules: [{backendRefs: [{name: cart, port: 80}]}]}",
    )));
    let routed = check(&mut p);
    let config = |set: &ResourceSet| {
        set.by_type[type_url::WAYPOINT_CONFIG]["shop/wp"]
            .version
            .clone()
    };
    assert_ne!(config(&routed), config(&bound));
    for t in [type_url::ADDRESS, type_url::AUTHORIZATION] {
        assert_eq!(versions(&routed)[t], versions(&bound)[t], "{t}");
    }
    assert!(p.build().is_none());

    // Deleting the Gateway unbinds the Service everywhere and drops the configuration.
    p.delete(Kind::Gateway, "shop", "wp");
    let gone = check(&mut p);
    assert!(gone.by_type[type_url::WAYPOINT_CONFIG].is_empty());
    assert!(gone.waypoint_identities.is_empty());
    assert!(p
        .notes()
        .iter()
        .any(|n| n.object == "Service shop/cart" && n.message.contains("does not exist")));
}

/// A waypoint in `foo`, and RequestAuthentications attached to it: Istio's documented example
/// (`v1`) and a `v1beta1` one.
const JWT: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: foo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt-example, namespace: foo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwksUri: "https://raw.githubusercontent.com/istio/istio/release-1.24/security/tools/jwt/samples/jwks.json"
---
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: jwt-beta, namespace: foo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  jwtRules:
  - issuer: "issuer-foo"
    audiences: [foo-api]
    fromHeaders: [{name: x-jwt-assertion, prefix: "Bearer "}]
    forwardOriginalToken: true
"#;

/// A waypoint's configuration as a set carries it.
fn waypoint_config(set: &ResourceSet, key: &str) -> meshcore::l7::WaypointConfig {
    let resource = &set.by_type[type_url::WAYPOINT_CONFIG][key];
    let decoded: meshcore::api::discovery::Resource =
        prost::Message::decode(resource.encoded.clone()).unwrap();
    let body: meshcore::api::waypoint::WaypointConfig =
        prost::Message::decode(decoded.resource.unwrap().value.as_slice()).unwrap();
    serde_json::from_str(&body.config_json).unwrap()
}

fn request_authns(set: &ResourceSet, key: &str) -> Vec<(String, String)> {
    waypoint_config(set, key)
        .request_authentications
        .iter()
        .map(|r| (r.key(), r.spec.jwt_rules[0].issuer.clone()))
        .collect()
}

#[test]
fn request_authentications_reach_waypoints_and_only_waypoints() {
    let mut cluster = example();
    let mut errors = Vec::new();
    manifests::load_text(JWT, "jwt.yaml", &mut cluster, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(cluster.request_authentications.len(), 2);
    let mut p = Pipeline::new(ClusterInfo::default());
    p.replace_all(cluster);
    let first = check(&mut p);
    let both = [
        ("foo/jwt-beta".to_owned(), "issuer-foo".to_owned()),
        (
            "foo/jwt-example".to_owned(),
            "testing@secure.istio.io".to_owned(),
        ),
    ];
    assert_eq!(request_authns(&first, "foo/waypoint"), both);
    assert_eq!(p.cluster().request_authentications.len(), 2);

    // A change touches the waypoint's configuration and nothing ztunnels hold.
    p.delete(Kind::RequestAuthentication, "foo", "jwt-beta");
    let one = check(&mut p);
    assert_eq!(request_authns(&one, "foo/waypoint"), both[1..]);
    for t in [type_url::ADDRESS, type_url::AUTHORIZATION] {
        assert_eq!(versions(&one)[t], versions(&first)[t], "{t}");
    }
    p.apply(Object::RequestAuthentication(yaml(
        "metadata: {name: jwt-beta, namespace: foo}\n\
         spec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], \
         jwtRules: [{issuer: issuer-foo}]}",
    )));
    let again = check(&mut p);
    assert_eq!(request_authns(&again, "foo/waypoint"), both);
    assert!(p.build().is_none(), "nothing changed, nothing built");

    // A relist without them drops them.
    p.replace_kind(Kind::RequestAuthentication, Vec::new());
    let none = check(&mut p);
    assert!(request_authns(&none, "foo/waypoint").is_empty());
}

#[test]
fn request_authentications_are_read_from_the_manifest_directory() {
    let dir = std::env::temp_dir().join(format!("istiod-lite-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("jwt.yaml"), JWT).unwrap();
    let mut source = crate::sources::dir::DirSource::new(&dir, ClusterInfo::default());
    let set = source.poll();
    let _ = std::fs::remove_dir_all(&dir);
    let set = set.expect("the directory parses").expect("a first set");
    let config = waypoint_config(&set, "foo/waypoint");
    let keys: Vec<String> = config
        .request_authentications
        .iter()
        .map(|r| r.key())
        .collect();
    assert_eq!(keys, ["foo/jwt-beta", "foo/jwt-example"]);
    let beta = &config.request_authentications[0].spec.jwt_rules[0];
    assert_eq!(beta.audiences, ["foo-api"]);
    assert_eq!(beta.from_headers[0].prefix, "Bearer ");
    assert!(beta.forward_original_token);
    let example = &config.request_authentications[1].spec.jwt_rules[0];
    assert_eq!(
        example.jwks_uri.as_deref(),
        Some("https://raw.githubusercontent.com/istio/istio/release-1.24/security/tools/jwt/samples/jwks.json")
    );
}

#[test]
fn linkerd_policy_changes_match_a_whole_translation() {
    let mut p = Pipeline::new(ClusterInfo::default());
    p.replace_all(example());
    check(&mut p);
    let server = "shop/linkerd-server-cart-http";
    let version = |set: &ResourceSet| {
        set.by_type[type_url::AUTHORIZATION]
            .get(server)
            .map(|r| r.version.clone())
    };

    // A Server on cart's named port: the port is closed to everyone, the others stay open.
    p.apply(Object::Server(yaml(
        "metadata: {name: cart-http, namespace: shop}\n\
         spec: {podSelector: {matchLabels: {app: cart}}, port: http}",
    )));
    let closed = check(&mut p);
    assert!(version(&closed).is_some());

    // frontend admitted by an authentication of another namespace.
    let authn = |identity: &str| {
        Object::MeshTlsAuthentication(yaml(&format!(
            "metadata: {{name: frontend-id, namespace: legacy}}\nspec: {{identities: [{identity}]}}"
        )))
    };
    p.apply(authn(
        "frontend.shop.serviceaccount.identity.linkerd.cluster.local",
    ));
    p.apply(Object::LinkerdAuthorizationPolicy(yaml(
        "metadata: {name: cart-from-frontend, namespace: shop}\n\
         spec:\n  targetRef: {group: policy.linkerd.io, kind: Server, name: cart-http}\n  \
         requiredAuthenticationRefs: [{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: frontend-id, namespace: legacy}]",
    )));
    let admitted = check(&mut p);
    assert_ne!(version(&admitted), version(&closed));

    // Changing (then deleting) the authentication re-translates the namespace requiring it.
    p.apply(authn(
        "batch.legacy.serviceaccount.identity.linkerd.cluster.local",
    ));
    let changed = check(&mut p);
    assert_ne!(version(&changed), version(&admitted));
    p.delete(Kind::MeshTlsAuthentication, "legacy", "frontend-id");
    let missing = check(&mut p);
    assert_eq!(version(&missing), version(&closed));
    assert!(p.notes().iter().any(|n| n.object
        == "AuthorizationPolicy.policy.linkerd.io shop/cart-from-frontend"
        && n.message.contains("does not exist")));

    // A pod change re-resolves the named port; deleting the Server opens it again.
    p.apply(pod("shop", "cart-3", "10.10.1.99", "app: cart"));
    check(&mut p);
    // The policy that is not applied goes: nothing to push, its note goes.
    p.replace_kind(Kind::LinkerdAuthorizationPolicy, Vec::new());
    assert!(p.build().is_none());
    assert!(
        !p.notes()
            .iter()
            .any(|n| n.object.starts_with("AuthorizationPolicy.policy")),
        "{:?}",
        p.notes()
    );
    p.delete(Kind::Server, "shop", "cart-http");
    let gone = check(&mut p);
    assert_eq!(version(&gone), None);
    assert!(p.build().is_none());
}

#[test]
fn secrets_and_grants_rebuild_the_ingress_gateways_that_use_them() {
    let mut p = Pipeline::new(ClusterInfo::default());
    for ns in ["gw", "certs"] {
        p.apply(Object::Namespace(yaml(&format!(
            "metadata: {{name: {ns}}}"
        ))));
    }
    p.apply(Object::Gateway(yaml(
        "metadata: {name: web, namespace: gw}\n\
         spec: {gatewayClassName: istio, listeners: [{name: https, port: 443, protocol: HTTPS, \
         tls: {certificateRefs: [{name: shared, namespace: certs}]}}]}",
    )));
    let set = check(&mut p);
    assert_eq!(
        set.waypoint_identities.get("gw/web").map(String::as_str),
        Some("spiffe://cluster.local/ns/gw/sa/web-istio")
    );
    let served = |set: &ResourceSet| {
        waypoint_config(set, "gw/web")
            .ingress
            .unwrap()
            .listeners
            .len()
    };
    assert_eq!(served(&set), 0, "no Secret yet");
    let secret = crate::cluster::TlsSecret {
        metadata: yaml("{name: shared, namespace: certs}"),
        cert_chain: Some("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into()),
        private_key: Some("-----BEGIN PRIVATE KEY-----\ny\n-----END PRIVATE KEY-----\n".into()),
    };
    p.apply(Object::Secret(secret));
    assert!(
        p.slices.values().all(|s| !s.dirty),
        "a Secret re-translates no ztunnel slice"
    );
    assert!(
        p.build().is_none(),
        "a Secret of another namespace needs a grant: nothing served changes"
    );
    assert_eq!(
        p.ingress_statuses()[0].listeners[0].resolved_refs.reason,
        "RefNotPermitted"
    );
    p.apply(Object::ReferenceGrant(yaml(
        "metadata: {name: g, namespace: certs}\n\
         spec: {from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: gw}], \
         to: [{group: \"\", kind: Secret}]}",
    )));
    assert!(p.slices.values().all(|s| !s.dirty));
    let set = check(&mut p);
    assert_eq!(served(&set), 1);
    assert_eq!(
        waypoint_config(&set, "gw/web").ingress.unwrap().listeners[0].certificates[0].secret,
        "certs/shared"
    );
    p.delete(Kind::ReferenceGrant, "certs", "g");
    let set = check(&mut p);
    assert_eq!(served(&set), 0, "the grant's removal is seen");
    p.replace_kind(Kind::Secret, Vec::new());
    assert!(p.build().is_none(), "nothing served changed");
    assert_eq!(
        p.ingress_statuses()[0].listeners[0].resolved_refs.reason,
        "RefNotPermitted"
    );
}

//! Ports out of range in manifests (issue 14, S4): an object holding one (a Service port of
//! 70000, an AuthorizationPolicy port "99999", a containerPort, a PeerAuthentication
//! portLevelMtls key) is refused on its own by name and field, as the API server's validation
//! would refuse it, never truncated into another port; its last good version stays and every
//! other object still translates.

use std::net::IpAddr;

use istiod_lite::sources::dir::DirSource;
use istiod_lite::translate::ClusterInfo;
use istiod_lite::xds::ResourceSet;
use meshcore::api::type_url;

use crate::support::two_pod_mesh;

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 67, (std::process::id() % 200) as u8 + 1, last])
}

const SERVICE: &str = "shop/cart.shop.svc.cluster.local";
const BIG: &str = "shop/big.shop.svc.cluster.local";

fn service(name: &str, port: i64) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{clusterIP: 10.96.0.{}, selector: {{app: cart}}, ports: [{{name: http, port: {port}, targetPort: 8080}}]}}\n",
        name.len()
    )
}

fn policy(name: &str, port: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{action: DENY, rules: [{{to: [{{operation: {{ports: [\"{port}\"]}}}}]}}]}}\n"
    )
}

fn write(dir: &std::path::Path, docs: &[String]) {
    std::fs::write(dir.join("extra.yaml"), docs.join("---\n")).unwrap();
}

fn poll(source: &mut DirSource) -> ResourceSet {
    source
        .poll()
        .expect("the change parses")
        .expect("a new set")
}

fn refused(source: &DirSource) -> Vec<String> {
    source.status.lock().unwrap().refused.clone()
}

fn has(set: &ResourceSet, type_url: &str, name: &str) -> bool {
    set.by_type
        .get(type_url)
        .is_some_and(|r| r.contains_key(name))
}

#[test]
fn out_of_range_ports_refuse_their_object_by_name_and_the_rest_translates() {
    let root = std::env::temp_dir().join(format!("istiod-it-ports-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    two_pod_mesh(&root, [("frontend", ip(2)), ("cart", ip(3))]);
    write(
        &root,
        &[
            service("cart", 80),
            service("big", 70000),
            policy("deny-9090", "9090"),
            policy("bad-port", "99999"),
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {name: odd-mtls, namespace: shop}\n\
             spec: {selector: {matchLabels: {app: cart}}, mtls: {mode: STRICT}, portLevelMtls: {0: {mode: PERMISSIVE}}}\n"
                .into(),
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: negative, namespace: shop}}\n\
                 spec: {{nodeName: node-1, containers: [{{name: c, image: i, ports: [{{name: http, containerPort: -8080}}]}}]}}\n\
                 status: {{phase: Running, podIP: \"{}\"}}\n",
                ip(4)
            ),
        ],
    );
    let mut source = DirSource::new(&root, ClusterInfo::default());
    let set = poll(&mut source);
    let refused = refused(&source);
    let expect = [
        ("Service shop/big: ", "spec.ports[0].port: 70000"),
        ("AuthorizationPolicy shop/bad-port: ", "\"99999\""),
        ("PeerAuthentication shop/odd-mtls: ", "portLevelMtls: 0"),
        (
            "Pod shop/negative: ",
            "spec.containers[0].ports[0].containerPort: -8080",
        ),
    ];
    for (object, field) in expect {
        assert!(
            refused
                .iter()
                .any(|r| r.starts_with(object) && r.contains(field)),
            "no refusal of {object}naming {field}; refused: {refused:?}"
        );
    }
    assert_eq!(refused.len(), expect.len(), "{refused:?}");
    // Everything else translated; the refused objects are nowhere.
    assert!(has(&set, type_url::ADDRESS, SERVICE));
    assert!(!has(&set, type_url::ADDRESS, BIG));
    assert!(has(&set, type_url::AUTHORIZATION, "shop/deny-9090"));
    assert!(!has(&set, type_url::AUTHORIZATION, "shop/bad-port"));
    assert_eq!(
        set.by_type[type_url::ADDRESS]
            .keys()
            .filter(|k| k.contains("//Pod/"))
            .count(),
        2,
        "the two good pods, not the refused one"
    );

    // A good Service edited to an out-of-range port keeps its last good version.
    let version = set.by_type[type_url::ADDRESS][SERVICE].version.clone();
    write(
        &root,
        &[
            service("cart", 65536),
            service("big", 8081),
            policy("deny-9090", "9090"),
        ],
    );
    let set = poll(&mut source);
    assert_eq!(set.by_type[type_url::ADDRESS][SERVICE].version, version);
    assert!(has(&set, type_url::ADDRESS, BIG), "fixed, so served");
    let refused = self::refused(&source);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].starts_with("Service shop/cart: spec.ports[0].port: 65536"),
        "{refused:?}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

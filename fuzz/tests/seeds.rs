//! Writes the seed corpus (`fuzz/corpus/<target>/`) from the project's own examples and
//! encoders, so each target starts from inputs its parser accepts. Run after a format changes:
//!
//!     cargo test -p mesh-fuzz --test seeds -- --ignored

use std::path::Path;

use prost::Message;

fn write(target: &str, name: &str, data: impl AsRef<[u8]>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

fn example(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)).unwrap()
}

#[test]
#[ignore = "writes the checked-in corpus"]
fn write_seed_corpus() {
    use ztunnel::dns::message::{query, TYPE_A, TYPE_AAAA};
    write(
        "dns",
        "a-fqdn",
        query(0x1234, "details.default.svc.cluster.local", TYPE_A),
    );
    write("dns", "aaaa-short", query(7, "productpage", TYPE_AAAA));
    write("dns", "a-external", query(9, "example.com", TYPE_A));

    write("hbone_headers", "forwarded", "for=10.0.0.1:1234");
    write(
        "hbone_headers",
        "forwarded-v6",
        "for=\"[fd00::1]:8080\";proto=http",
    );
    write(
        "hbone_headers",
        "baggage",
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=cart,service.name=cart,service.version=v1",
    );
    write(
        "hbone_headers",
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    write("hbone_headers", "authority", "http://10.96.0.10:80/");

    write("socks5", "ipv4", [5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0, 80]);
    let mut name = vec![5, 1, 0, 5, 1, 0, 3, 7];
    name.extend_from_slice(b"details");
    name.extend_from_slice(&9080u16.to_be_bytes());
    write("socks5", "name", name);
    let mut v6 = vec![5, 2, 2, 0, 5, 1, 0, 4];
    v6.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v6.extend_from_slice(&443u16.to_be_bytes());
    write("socks5", "ipv6", v6);
    write(
        "socks5",
        "bind-refused",
        [5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80],
    );

    for (name, path) in [
        ("ztunnel", "examples/ztunnel/mesh.yaml"),
        ("local-xds", "examples/local-xds/mesh.yaml"),
        ("waypoint-mesh", "examples/waypoint/mesh.yaml"),
    ] {
        write("local_config", name, example(path));
    }

    let mut manifests = String::new();
    for file in ["namespaces", "workloads", "policies", "waypoint"] {
        let text = example(&format!("examples/local-cluster/{file}.yaml"));
        write("manifests", file, &text);
        manifests.push_str(&text);
        manifests.push_str("\n---\n");
    }
    write("manifests", "all", &manifests);

    // xDS resources as istiod-lite encodes them for the example cluster.
    let mut cluster = istiod_lite::manifests::load_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local-cluster"),
    )
    .unwrap();
    // Scheduled pods (the examples leave addresses to `meshctl up`).
    let mut errors = Vec::new();
    istiod_lite::manifests::load_text(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop, labels: {app: cart}}
spec: {serviceAccountName: cart, nodeName: node-1, containers: [{name: app, image: echo}]}
status: {podIP: 10.10.1.7, podIPs: [{ip: 10.10.1.7}, {ip: "fd00::7"}], phase: Running}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: cart}, ports: [{name: http, port: 80, targetPort: 8080}]}
"#,
        "scheduled.yaml",
        &mut cluster,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let t = istiod_lite::translate::translate(&cluster, &Default::default());
    let encoded = istiod_lite::xds::resources::Encoded::from_translation(&t);
    for (kind, resources) in [(0u8, &encoded.addresses), (1, &encoded.authorizations)] {
        for (i, r) in resources.values().take(4).enumerate() {
            let wire = meshcore::api::discovery::Resource::decode(r.encoded.clone()).unwrap();
            let body = wire.resource.unwrap().value;
            let mut data = vec![kind];
            data.extend_from_slice(&body);
            write("xds", &format!("{kind}-{i}"), data);
        }
    }

    use meshcore::api::zds::{
        workload_request::Payload, AddWorkload, DelWorkload, KeepWorkload, SnapshotSent,
        WorkloadInfo, WorkloadRequest,
    };
    for (name, payload) in [
        (
            "add",
            Payload::Add(AddWorkload {
                uid: "uid-1".into(),
                workload_info: Some(WorkloadInfo {
                    name: "cart-1".into(),
                    namespace: "shop".into(),
                    service_account: "cart".into(),
                }),
            }),
        ),
        (
            "keep",
            Payload::Keep(KeepWorkload {
                uid: "uid-1".into(),
            }),
        ),
        (
            "del",
            Payload::Del(DelWorkload {
                uid: "uid-1".into(),
            }),
        ),
        ("snapshot", Payload::SnapshotSent(SnapshotSent {})),
    ] {
        let req = WorkloadRequest {
            payload: Some(payload),
        };
        write("zds", name, req.encode_to_vec());
    }

    write(
        "cni",
        "chained",
        r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"mesh-cni","agentSocket":"/var/run/mesh/cni.sock","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/p"}],"ips":[{"address":"10.10.1.7/24","interface":0}]}}"#,
    );
    write(
        "cni",
        "args",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1;K8S_POD_UID=u-1",
    );
    write(
        "cni",
        "old-version",
        r#"{"cniVersion":"0.3.1","name":"n","type":"mesh-cni"}"#,
    );

    let id: meshcore::identity::SpiffeId =
        "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
    let csr = meshcore::pki::generate_csr(&id).unwrap();
    write("csr", "workload.pem", &csr.csr_pem);
    write(
        "csr",
        "workload.der",
        pem::parse(&csr.csr_pem).unwrap().contents(),
    );

    write(
        "waypoint_config",
        "example",
        example("examples/waypoint/waypoint.yaml"),
    );

    // Tokens that must be refused: expired, and of an issuer no rule names (both signed with
    // the test key, so mutations exercise the signature check).
    let key = jsonwebtoken::EncodingKey::from_rsa_der(include_bytes!(
        "../../waypoint/src/authn/testdata/rsa-test-key.der"
    ));
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-rsa".into());
    for (name, claims) in [
        (
            "expired",
            serde_json::json!({"iss": "testing@secure.istio.io", "sub": "alice", "exp": 1_000_000_000u64, "groups": ["group1"]}),
        ),
        (
            "other-issuer",
            serde_json::json!({"iss": "someone@else", "sub": "alice", "exp": 4_000_000_000u64}),
        ),
    ] {
        write(
            "jwt",
            name,
            jsonwebtoken::encode(&header, &claims, &key).unwrap(),
        );
    }
}

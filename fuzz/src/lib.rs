//! The bodies of the fuzz targets, one per parser that takes input from outside the process.
//!
//! Each `fuzz_targets/<name>.rs` hands libFuzzer's input to the function of the same name here
//! (`scripts/fuzz`, nightly features through cargo-fuzz); `tests/replay.rs` runs the same
//! functions on stable over the checked-in corpus and a bounded number of mutations of it, so CI
//! catches a regression without a fuzzer. A target fails by panicking: besides "does not crash",
//! each checks what must hold for any input (a parsed query is answerable, a forged token never
//! authenticates, a bad configuration is refused with a message, never half-applied).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

/// DNS queries as the ztunnel DNS proxy reads them (UDP and TCP bodies).
pub fn dns(data: &[u8]) {
    use ztunnel::dns::message::{answer, answer_ips, answers, error, parse_query, rcode};
    let _ = answer_ips(data);
    let Ok(q) = parse_query(data) else { return };
    let ips = [
        IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    let reply = answer(data, &q, &ips);
    assert!(answers(data, &reply), "an answer must answer its query");
    let (_, got) = answer_ips(&reply).expect("our own answer parses");
    assert!(got.len() <= 1, "one record per family");
    let failure = error(data, Some(&q), rcode::SERVFAIL);
    assert!(answers(data, &failure));
}

/// The HBONE CONNECT request's headers: authority, `forwarded`, `baggage`, `traceparent`.
pub fn hbone_headers(data: &[u8]) {
    use meshcore::hbone::{parse_forwarded_for, Baggage, TraceParent};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(addr) = parse_forwarded_for(text) {
        // What we write, we read back.
        assert_eq!(
            parse_forwarded_for(&meshcore::hbone::forwarded_for(addr)),
            Some(addr)
        );
    }
    let baggage = Baggage::parse(text);
    assert_eq!(
        Baggage::parse(&baggage.encode()),
        baggage,
        "baggage round trip"
    );
    if let Some(tp) = TraceParent::parse(text) {
        assert_eq!(
            TraceParent::parse(&tp.encode()).map(|t| t.encode()),
            Some(tp.encode())
        );
    }
    // The authority as the server reads it: `ip:port` or refused, never a panic.
    if let Ok(uri) = text.parse::<http::Uri>() {
        let _ = uri
            .authority()
            .and_then(|a| a.as_str().parse::<std::net::SocketAddr>().ok());
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// A SOCKS5 client's greeting and CONNECT request on 15080.
pub fn socks5(data: &[u8]) {
    use ztunnel::proxy::socks5::{negotiate, Requested};
    let mut io = tokio::io::join(data, tokio::io::sink());
    if let Ok(Requested::Name(name, _)) = runtime().block_on(negotiate(&mut io)) {
        assert!(name.len() <= 255);
    }
}

/// ztunnel's local configuration file (`LOCAL_XDS_PATH`).
pub fn local_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = ztunnel::config::local::parse(text, "cluster.local") {
        assert!(!e.is_empty(), "a refusal says why");
    }
}

/// xDS resources as ztunnel receives them: an `Address` or an `Authorization` (first byte
/// chooses), decoded and converted.
pub fn xds(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let result = if kind % 2 == 0 {
        ztunnel::config::xds_convert::address("fuzz", body).map(|_| ())
    } else {
        ztunnel::config::xds_convert::authorization("fuzz", body).map(|_| ())
    };
    if let Err(e) = result {
        assert!(!e.is_empty(), "a refusal says why");
    }
}

/// An egress policy resource (`mesh.egress.v1.EgressPolicy`) as ztunnel receives it: the
/// protobuf, then the JSON policy inside, strictly parsed and validated.
pub fn egress_policy(data: &[u8]) {
    if let Err(e) = ztunnel::config::xds_convert::egress_policy("apps/p", data) {
        assert!(!e.is_empty(), "a refusal says why");
    }
}

/// A node-agent (ZDS) `WorkloadRequest` as ztunnel decodes it.
pub fn zds(data: &[u8]) {
    use meshcore::zds::{decode_request, Request};
    // Without a descriptor an `add` must be refused, not served.
    if let Ok(Request::Add { .. }) = decode_request(data, None) {
        panic!("an add without a network namespace was accepted");
    }
}

/// The CNI plugin: its network configuration on stdin and `CNI_ARGS`. (Only commands that do
/// not call the agent: ADD/DEL would dial a socket the input names.)
pub fn cni(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = mesh_cni::parse_args(text);
    for command in ["CHECK", "VERSION", "STATUS", "NOT-A-COMMAND"] {
        let vars = [("CNI_COMMAND", command), ("CNI_ARGS", text)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        match mesh_cni::run(&vars, text) {
            Ok(out) => assert!(out.is_empty() || out.starts_with('{')),
            Err((_, e)) => {
                let json = e.to_json("1.0.0");
                assert!(json.starts_with('{'), "{json}");
            }
        }
    }
}

/// A certificate signing request as the CA validates it: the PEM text as sent, and the input as
/// the DER inside a PEM block (to reach the ASN.1 parser).
pub fn csr(data: &[u8]) {
    use meshcore::pki::ValidatedCsr;
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ValidatedCsr::from_pem(text);
    }
    let wrapped = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", data.to_vec()));
    if let Ok(csr) = ValidatedCsr::from_pem(&wrapped) {
        // Accepted only with a workload identity.
        assert!(!csr.identity().namespace().is_empty());
    }
}

/// Kubernetes manifests as istiod-lite reads a `--config-dir`, then translated.
pub fn manifests(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut cluster = istiod_lite::cluster::Cluster::default();
    let mut errors = Vec::new();
    istiod_lite::manifests::load_text(text, "fuzz.yaml", &mut cluster, &mut errors);
    let _ = istiod_lite::translate::translate(
        &cluster,
        &istiod_lite::translate::ClusterInfo::default(),
    );
}

/// The waypoint's configuration (its file, or the JSON istiod-lite sends), compiled.
pub fn waypoint_config(data: &[u8]) {
    use waypoint::config::{Snapshot, WaypointIdentity};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = serde_yaml_ng::from_str::<meshcore::l7::WaypointConfig>(text) else {
        return;
    };
    let me = WaypointIdentity {
        namespace: "ns".into(),
        name: "waypoint".into(),
        trust_domain: "cluster.local".into(),
        root_namespace: "istio-system".into(),
        retry_budget: Default::default(),
    };
    let _ = Snapshot::compile(config, &me);
}

/// A bearer token against a RequestAuthentication with a real key set: whatever the input, it
/// never authenticates (a fuzzer cannot sign), and a refusal carries a reason.
pub fn jwt(data: &[u8]) {
    use waypoint::authn::{JwksCache, JwtAuthn};
    static AUTHN: OnceLock<JwtAuthn> = OnceLock::new();
    let authn = AUTHN.get_or_init(|| {
        let policy = serde_yaml_ng::from_str(&format!(
            "metadata: {{name: jwt, namespace: ns}}\nspec:\n  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]\n  jwtRules:\n  - issuer: testing@secure.istio.io\n    jwks: '{}'\n",
            include_str!("../../waypoint/src/authn/testdata/rsa-test-jwks.json").replace('\n', "")
        ))
        .expect("policy");
        let (authn, notes) = JwtAuthn::compile(
            &[policy],
            &waypoint::authz::WaypointRef {
                namespace: "ns",
                name: "waypoint",
                class: Some("istio-waypoint"),
            },
            "istio-system",
            &JwksCache::default(),
        );
        assert!(notes.is_empty(), "{notes:?}");
        authn
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {text}")) else {
        return;
    };
    let mut parts = http::Request::get("/")
        .body(())
        .expect("request")
        .into_parts()
        .0;
    parts.headers.insert(http::header::AUTHORIZATION, value);
    match authn.authenticate(None, &mut parts, || 1_900_000_000) {
        Ok(None) => {}
        Ok(Some(auth)) => panic!("an unsigned input authenticated as {}", auth.principal),
        Err(refused) => assert!(!refused.0.is_empty()),
    }
}

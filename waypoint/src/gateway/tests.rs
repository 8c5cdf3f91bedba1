//! Listener compilation and the certificate chosen per handshake.

use super::*;
use meshcore::l7::ingress::{Certificate, Listener};

/// A self-signed certificate for `names` (rcgen, PKCS#8 key) from Secret `secret`.
fn cert(secret: &str, names: &[&str]) -> Certificate {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let c = params.self_signed(&key).unwrap();
    Certificate {
        secret: secret.into(),
        cert_chain: c.pem(),
        private_key: key.serialize_pem(),
    }
}

fn listener(name: &str, port: u16, hostname: Option<&str>, certs: Vec<Certificate>) -> Listener {
    Listener {
        name: name.into(),
        port,
        protocol: if certs.is_empty() {
            ListenerProtocol::Http
        } else {
            ListenerProtocol::Https
        },
        hostname: hostname.map(str::to_owned),
        allowed_namespaces: None,
        allowed_kinds: Vec::new(),
        certificates: certs,
    }
}

fn view(listeners: Vec<Listener>) -> IngressView {
    IngressView::compile(&IngressConfig {
        namespace: "infra".into(),
        name: "edge".into(),
        listeners,
        reference_grants: Vec::new(),
    })
}

fn chosen(v: &IngressView, port: u16, sni: Option<&str>) -> Option<String> {
    v.certificate(port, sni).map(|c| c.secret.clone())
}

#[test]
fn sni_picks_the_listener_then_the_certificate() {
    let v = view(vec![
        listener(
            "any",
            443,
            None,
            vec![cert("infra/default", &["default.example"])],
        ),
        listener(
            "shop",
            443,
            Some("*.shop.example"),
            vec![
                cert("infra/shop-a", &["a.shop.example"]),
                cert("infra/shop-wild", &["*.shop.example"]),
            ],
        ),
        listener(
            "api",
            443,
            Some("api.shop.example"),
            vec![cert("infra/api", &["api.shop.example"])],
        ),
        listener("plain", 80, None, Vec::new()),
    ]);
    assert!(v.notes.is_empty(), "{:?}", v.notes);
    // The most specific listener: exact, then wildcard, then the catch-all.
    assert_eq!(
        chosen(&v, 443, Some("api.shop.example")).unwrap(),
        "infra/api"
    );
    assert_eq!(
        chosen(&v, 443, Some("b.shop.example")).unwrap(),
        "infra/shop-wild"
    );
    assert_eq!(
        chosen(&v, 443, Some("A.Shop.Example")).unwrap(),
        "infra/shop-a"
    );
    assert_eq!(
        chosen(&v, 443, Some("other.example")).unwrap(),
        "infra/default"
    );
    // No SNI: the first listener's first certificate. Other ports: none.
    assert_eq!(chosen(&v, 443, None).unwrap(), "infra/default");
    assert_eq!(chosen(&v, 80, Some("a.shop.example")), None);
    assert_eq!(chosen(&v, 8443, Some("a.shop.example")), None);
    assert_eq!(v.ports[&443].listeners, [0, 1, 2]);
}

#[test]
fn a_certificate_whose_names_do_not_cover_falls_back_to_the_first() {
    let v = view(vec![listener(
        "shop",
        443,
        Some("*.shop.example"),
        vec![
            cert("infra/first", &["x.shop.example"]),
            cert("infra/second", &["y.shop.example"]),
        ],
    )]);
    assert_eq!(
        chosen(&v, 443, Some("y.shop.example")).unwrap(),
        "infra/second"
    );
    assert_eq!(
        chosen(&v, 443, Some("z.shop.example")).unwrap(),
        "infra/first"
    );
    // The listener's hostname must cover the SNI.
    assert_eq!(chosen(&v, 443, Some("elsewhere.example")), None);
}

#[test]
fn pkcs1_and_sec1_keys_parse_and_broken_ones_are_skipped() {
    let pem = |secret: &str, crt: &str, key: &str| Certificate {
        secret: secret.into(),
        cert_chain: crt.into(),
        private_key: key.into(),
    };
    let rsa = pem(
        "infra/rsa",
        include_str!("testdata/rsa.crt"),
        include_str!("testdata/rsa-pkcs1.key"),
    );
    let ec = pem(
        "infra/ec",
        include_str!("testdata/ec.crt"),
        include_str!("testdata/ec-sec1.key"),
    );
    let mismatched = pem(
        "infra/mismatched",
        include_str!("testdata/rsa.crt"),
        include_str!("testdata/ec-sec1.key"),
    );
    let garbage = pem("infra/garbage", "not a certificate", "not a key");
    let v = view(vec![listener(
        "tls",
        443,
        None,
        vec![garbage, mismatched, rsa, ec],
    )]);
    let secrets: Vec<_> = v.listeners[0]
        .certificates
        .iter()
        .map(|c| c.secret.as_str())
        .collect();
    assert_eq!(secrets, ["infra/rsa", "infra/ec"]);
    assert_eq!(v.notes.len(), 2, "{:?}", v.notes);
    assert!(v.notes[0].contains("infra/garbage"), "{}", v.notes[0]);
    assert!(v.notes[1].contains("infra/mismatched"), "{}", v.notes[1]);
    assert_eq!(chosen(&v, 443, Some("x.ec.example")).unwrap(), "infra/ec");
    assert_eq!(chosen(&v, 443, Some("rsa.example")).unwrap(), "infra/rsa");
    // The dump names Secrets, SANs and expiry, never the key.
    let dump = v.dump().to_string();
    assert!(
        dump.contains("\"*.ec.example\"") && dump.contains("notAfter"),
        "{dump}"
    );
    assert!(!dump.contains("PRIVATE KEY"), "{dump}");
}

#[test]
fn a_listener_without_usable_certificates_and_protocol_conflicts_are_noted() {
    let v = view(vec![
        listener("web", 8080, None, Vec::new()),
        listener(
            "tls",
            8080,
            None,
            vec![Certificate {
                secret: "infra/bad".into(),
                cert_chain: String::new(),
                private_key: String::new(),
            }],
        ),
    ]);
    assert_eq!(v.ports[&8080].protocol, ListenerProtocol::Http);
    assert_eq!(v.ports[&8080].listeners, [0]);
    assert_eq!(v.notes.len(), 3, "{:?}", v.notes);
    assert!(v
        .notes
        .iter()
        .any(|n| n.contains("port 8080 already serves")));
}

//! Gateway mode, HTTPS: TLS terminated with the certificate SNI picks among the listeners'
//! certificates, verified by a client against the issuing CA, and rotated by a configuration
//! change without disturbing open connections.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::gateway::{cert_yaml, config, connect, http1, rewrite, send, setup, Gw, HTTPS_PORT};
use crate::support::Mesh;

/// A test CA issuing serving certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `name`: its chain (leaf, CA) and key as PEM, and the leaf's DER.
    fn leaf(&self, name: &str) -> (String, String, CertificateDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let ca_pem = pem_of(&self.der);
        (
            format!("{}{ca_pem}", cert.pem()),
            key.serialize_pem(),
            cert.der().clone(),
        )
    }

    /// A client trusting this CA only, offering HTTP/1.1.
    fn connector(&self) -> TlsConnector {
        self.connector_alpn(b"http/1.1")
    }

    fn connector_alpn(&self, alpn: &[u8]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(meshcore::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        TlsConnector::from(Arc::new(config))
    }
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// A verified TLS connection from `ip(200)` to the HTTPS listener, for `name`.
async fn tls(m: &Mesh, ca: &Ca, name: &str) -> TlsStream<tokio::net::TcpStream> {
    let tcp = connect(m, 200, HTTPS_PORT).await;
    ca.connector()
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS to {name}: {e}"))
}

fn served_leaf(s: &TlsStream<tokio::net::TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// Two HTTPS listeners (`a.example.com`, `*.b.example.com`) with their certificates.
fn gw(
    a: &(String, String, CertificateDer<'static>),
    b: &(String, String, CertificateDer<'static>),
) -> Gw {
    Gw {
        https: vec![
            (
                "https-a",
                "a.example.com",
                cert_yaml("shop/a-tls", &a.0, &a.1),
            ),
            (
                "https-b",
                "\"*.b.example.com\"",
                cert_yaml("shop/b-tls", &b.0, &b.1),
            ),
        ],
        ..Gw::default()
    }
}

#[tokio::test]
async fn sni_picks_the_certificate_and_the_host_the_route() {
    let ca = Ca::new();
    let (a, b) = (ca.leaf("a.example.com"), ca.leaf("*.b.example.com"));
    let (m, w) = setup(&gw(&a, &b)).await;

    let stream = tls(&m, &ca, "a.example.com").await;
    assert_eq!(served_leaf(&stream), a.2, "a.example.com's certificate");
    let mut c = http1(stream).await;
    let answer = send(&mut c, "a.example.com", "/", &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.echo("Hostname"), Some("alpha-1"));
    assert_eq!(answer.request_header("x-forwarded-proto"), Some("https"));

    let stream = tls(&m, &ca, "x.b.example.com").await;
    assert_eq!(
        served_leaf(&stream),
        b.2,
        "the wildcard listener's certificate"
    );
    let mut c = http1(stream).await;
    let answer = send(&mut c, "x.b.example.com", "/", &[]).await;
    assert_eq!(answer.echo("Hostname"), Some("beta-1"), "{answer:?}");
    // SNI picked the certificate; the Host still picks the virtual host, among this port's.
    let answer = send(&mut c, "unknown.example.com", "/", &[]).await;
    assert_eq!(answer.status, 404, "{answer:?}");

    // HTTP/2 by ALPN.
    let tcp = connect(&m, 200, HTTPS_PORT).await;
    let name = ServerName::try_from("a.example.com").unwrap();
    let stream = ca.connector_alpn(b"h2").connect(name, tcp).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("https://a.example.com/h2")
        .version(http::Version::HTTP_2)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let answer = crate::support::read(h2.send_request(req).await.unwrap()).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.echo("Hostname"), Some("alpha-1"));

    let dump = crate::support::get_text(w.addresses.admin, "/config_dump").await;
    assert!(
        dump.contains("shop/a-tls") && dump.contains("notAfter"),
        "{dump}"
    );
    assert!(!dump.contains("PRIVATE KEY"), "the key is never dumped");
    w.shutdown().await;
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes_and_open_connections_go_on() {
    let ca = Ca::new();
    let (a, b) = (ca.leaf("a.example.com"), ca.leaf("*.b.example.com"));
    let (m, w) = setup(&gw(&a, &b)).await;

    let before = tls(&m, &ca, "a.example.com").await;
    assert_eq!(served_leaf(&before), a.2);
    let mut open = http1(before).await;
    assert_eq!(send(&mut open, "a.example.com", "/", &[]).await.status, 200);

    let rotated = ca.leaf("a.example.com");
    rewrite(&m, &config(&m, &gw(&rotated, &b)));
    let mut seen = false;
    for _ in 0..100 {
        let s = tls(&m, &ca, "a.example.com").await;
        if served_leaf(&s) == rotated.2 {
            seen = true;
            let mut c = http1(s).await;
            assert_eq!(send(&mut c, "a.example.com", "/", &[]).await.status, 200);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "a new handshake gets the new certificate");
    let answer = send(&mut open, "a.example.com", "/", &[]).await;
    assert_eq!(
        answer.status, 200,
        "the connection opened before still works"
    );

    // A certificate that does not parse is skipped: the listener stays up with none for
    // that name, the other listener unaffected.
    let broken = Gw {
        https: vec![
            (
                "https-a",
                "a.example.com",
                cert_yaml("shop/a-tls", "garbage", "garbage"),
            ),
            (
                "https-b",
                "\"*.b.example.com\"",
                cert_yaml("shop/b-tls", &b.0, &b.1),
            ),
        ],
        ..Gw::default()
    };
    rewrite(&m, &config(&m, &broken));
    let mut refused = false;
    for _ in 0..100 {
        let tcp = connect(&m, 200, HTTPS_PORT).await;
        let name = ServerName::try_from("a.example.com").unwrap();
        if ca.connector().connect(name, tcp).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "no certificate for a.example.com any more");
    let s = tls(&m, &ca, "y.b.example.com").await;
    assert_eq!(served_leaf(&s), b.2);
    w.shutdown().await;
}

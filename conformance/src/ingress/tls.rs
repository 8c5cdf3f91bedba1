//! HTTPS at the gateway: TLS terminated with the listener's Secret, the certificate picked by
//! SNI, a Secret in another namespace only with a ReferenceGrant, and a Secret rotated under
//! an open connection. Also the status istiod-lite gives the Gateway and its routes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};

use super::{route, Suite, GATEWAY_NS};
use crate::support::*;
use crate::Case;

pub fn cases() -> Vec<Case<Suite>> {
    vec![
        Case {
            name: "HTTPRouteHTTPSListener: TLS terminated, cert by SNI",
            run: https_listener,
        },
        Case {
            name: "GatewaySecretReferenceGrant: cross-namespace cert needs a grant",
            run: secret_reference_grant,
        },
        Case {
            name: "listener Secret rotation keeps open connections",
            run: rotation,
        },
        Case {
            name: "Gateway and route status: listeners, attached routes, reasons",
            run: status,
        },
    ]
}

fn https_route(s: &mut Suite) -> Result<(), String> {
    s.apply(
        "https-route",
        &route(
            GATEWAY_NS,
            "https",
            "  parentRefs: [{name: gw, sectionName: https}, {name: gw, sectionName: secure}]\n  \
             rules: [{backendRefs: [{name: infra-backend-v1, port: 8080}]}]\n",
        ),
    )
}

fn https_listener(s: &mut Suite) -> Result<(), String> {
    https_route(s)?;
    let r = eventually(Duration::from_secs(15), || {
        let r = s.https("shop.example.com", "/")?;
        (r.status == 200)
            .then_some(r)
            .ok_or("not yet 200".to_owned())
    })?;
    if !r
        .echo("Hostname")
        .unwrap_or_default()
        .starts_with("infra-backend-v1")
    {
        return Err(format!("answered by {:?}", r.echo("Hostname")));
    }
    if r.request_header("x-forwarded-proto") != Some("https") {
        return Err(format!(
            "x-forwarded-proto {:?}",
            r.request_header("x-forwarded-proto")
        ));
    }
    // Two labels under the wildcard are covered by the listener (not by the certificate,
    // which names *.example.com): the handshake must fail verification, not be misrouted.
    if s.https("a.b.example.com", "/").is_ok() {
        return Err("a.b.example.com verified against a *.example.com certificate".into());
    }
    // HTTP/2 over TLS (ALPN h2) as well.
    let resolve = format!("shop.example.com:443:{}", s.address);
    let ca = s.ca_file.display().to_string();
    let r = s.curl(&[
        "--http2",
        "--resolve",
        &resolve,
        "--cacert",
        &ca,
        "https://shop.example.com/h2",
    ])?;
    if r.status != 200 || r.echo("Proto").is_none() {
        return Err(format!("HTTP/2: {} {}", r.status, r.body));
    }
    Ok(())
}

fn secret_reference_grant(s: &mut Suite) -> Result<(), String> {
    https_route(s)?;
    // Without a grant, the listener `secure` has no certificate: curl cannot verify
    // secure.example.org.
    std::thread::sleep(Duration::from_secs(2));
    if let Ok(r) = s.https("secure.example.org", "/") {
        return Err(format!(
            "secure.example.org verified without a ReferenceGrant for its Secret: HTTP {}",
            r.status
        ));
    }
    s.apply(
        "secret-grant",
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
         metadata: {name: gateway-certs, namespace: certs}\n\
         spec:\n  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}]\n  \
         to: [{group: '', kind: Secret}]\n",
    )?;
    let r = eventually(Duration::from_secs(15), || {
        s.https("secure.example.org", "/")
    })?;
    if r.status != 200 {
        return Err(format!(
            "secure.example.org with the grant: HTTP {}",
            r.status
        ));
    }
    Ok(())
}

/// A TLS client to the gateway's 443 trusting the test CA, HTTP/1.1 keep-alive.
struct Client {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Client {
    fn connect(s: &Suite, host: &'static str) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        let der = pem_to_der(&s.pki.ca_pem)?;
        roots.add(der).map_err(|e| e.to_string())?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp =
            TcpStream::connect_timeout(&SocketAddr::from((s.address, 443)), Duration::from_secs(3))
                .map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let conn = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from(host).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let mut c = Self {
            tls: rustls::StreamOwned::new(conn, tcp),
        };
        // Completes the handshake.
        while c.tls.conn.is_handshaking() {
            c.tls
                .conn
                .complete_io(&mut c.tls.sock)
                .map_err(|e| format!("TLS handshake with {host}: {e}"))?;
        }
        Ok(c)
    }

    /// The leaf certificate the gateway presented.
    fn leaf(&self) -> Vec<u8> {
        self.tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    /// `GET /` on this connection; the status.
    fn get(&mut self, host: &str) -> Result<u16, String> {
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        self.tls
            .write_all(req.as_bytes())
            .map_err(|e| format!("writing: {e}"))?;
        // Reads the head, then exactly content-length bytes of body.
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            let n = self
                .tls
                .read(&mut byte)
                .map_err(|e| format!("reading: {e}"))?;
            if n == 0 {
                return Err("connection closed".into());
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad reply {head:?}"))?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| format!("no content-length in {head:?}"))?;
        let mut body = vec![0u8; length];
        self.tls
            .read_exact(&mut body)
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok(status)
    }
}

fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, String> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("test CA: {e}"))
}

fn rotation(s: &mut Suite) -> Result<(), String> {
    https_route(s)?;
    eventually(Duration::from_secs(15), || {
        let r = s.https("shop.example.com", "/")?;
        (r.status == 200)
            .then_some(())
            .ok_or("not yet 200".to_owned())
    })?;
    let mut open = Client::connect(s, "shop.example.com")?;
    let before = open.leaf();
    if open.get("shop.example.com")? != 200 {
        return Err("the first request on the open connection failed".into());
    }
    // A new key and certificate in the same Secret, as cert-manager renews one.
    s.rotate_wildcard()?;
    eventually(Duration::from_secs(20), || {
        let c = Client::connect(s, "shop.example.com")?;
        (c.leaf() != before)
            .then_some(())
            .ok_or("new handshakes still get the old certificate".to_owned())
    })?;
    for i in 0..3 {
        let status = open
            .get("shop.example.com")
            .map_err(|e| format!("the connection opened before the rotation, request {i}: {e}"))?;
        if status != 200 {
            return Err(format!("request {i} after the rotation: HTTP {status}"));
        }
    }
    Ok(())
}

fn status(s: &mut Suite) -> Result<(), String> {
    https_route(s)?;
    s.apply(
        "refused-route",
        &route(
            "apps",
            "refused",
            "  parentRefs: [{name: gw, namespace: infra, sectionName: same}]\n  \
             rules: [{backendRefs: [{name: web, port: 80}]}]\n",
        ),
    )?;
    eventually(Duration::from_secs(15), || {
        let config = s.control_config()?;
        super::status_check::check(&config)
    })
}

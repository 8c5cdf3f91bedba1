//! Mutual TLS rules at the handshake: who is refused, and rotation.

use crate::support::*;
use meshcore::hbone::HboneError;
use meshcore::pki::{inspect_cert, CertificateAuthority, Validity};
use meshcore::tls::{client_config, peer_identity, Credentials, TrustRoots, WorkloadCert};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn assert_handshake_refused(err: HboneError) {
    assert!(
        matches!(err, HboneError::Handshake { .. } | HboneError::Http2 { .. }),
        "expected a refused handshake, got {err}"
    );
}

#[tokio::test]
async fn client_from_other_trust_domain_is_refused() {
    let mesh = Mesh::new();
    let server = forwarding_server(mesh.creds("spiffe://cluster.local/ns/app/sa/server")).await;
    let echo = echo_server().await;

    // Same CA, so the chain is fine: only the trust domain is wrong.
    let foreign = mesh.creds("spiffe://other.domain/ns/app/sa/client");
    let err = client()
        .connect(&request(&foreign, &server, echo))
        .await
        .unwrap_err();
    assert_handshake_refused(err);

    // A certificate from another CA altogether fails chain verification.
    let other_mesh = Mesh::new();
    let req = request(
        &other_mesh.creds("spiffe://cluster.local/ns/app/sa/client"),
        &server,
        echo,
    );
    // The client must still trust our server to get as far as presenting its certificate.
    req.credentials.set_roots(mesh.roots());
    let err = client().connect(&req).await.unwrap_err();
    assert_handshake_refused(err);
    assert_eq!(
        server
            .server
            .counters()
            .handshake_failures
            .load(Ordering::Relaxed),
        2
    );

    // And a client of the right domain passes.
    let ok = mesh.creds("spiffe://cluster.local/ns/app/sa/client");
    client()
        .connect(&request(&ok, &server, echo))
        .await
        .unwrap();
}

#[tokio::test]
async fn expired_and_not_yet_valid_client_certs_are_refused() {
    let mesh = Mesh::new();
    let server = forwarding_server(mesh.creds("spiffe://cluster.local/ns/app/sa/server")).await;
    let echo = echo_server().await;
    let client_id = id("spiffe://cluster.local/ns/app/sa/client");
    let now = SystemTime::now();
    let windows = [
        Validity {
            not_before: now - Duration::from_secs(7200),
            not_after: now - Duration::from_secs(3600),
        },
        Validity {
            not_before: now + Duration::from_secs(3600),
            not_after: now + Duration::from_secs(7200),
        },
    ];
    for validity in windows {
        let creds = Credentials::new(mesh.cert(&client_id, validity), mesh.roots());
        let err = client()
            .connect(&request(&creds, &server, echo))
            .await
            .unwrap_err();
        assert_handshake_refused(err);
    }
    assert_eq!(
        server
            .server
            .counters()
            .handshake_failures
            .load(Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn client_refuses_server_with_unexpected_identity() {
    let mesh = Mesh::new();
    let server = forwarding_server(mesh.creds("spiffe://cluster.local/ns/app/sa/impostor")).await;
    let echo = echo_server().await;
    let creds = mesh.creds("spiffe://cluster.local/ns/app/sa/client");
    let mut req = request(&creds, &server, echo);
    req.expected = vec![
        id("spiffe://cluster.local/ns/app/sa/server"),
        id("spiffe://cluster.local/ns/app/sa/alias"),
    ];
    let err = client().connect(&req).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("server presented spiffe://cluster.local/ns/app/sa/impostor"),
        "{text}"
    );
    // Any of the expected identities is enough (service account or a service SAN).
    req.expected
        .push(id("spiffe://cluster.local/ns/app/sa/impostor"));
    client().connect(&req).await.unwrap();
}

/// Opens a raw TLS connection and returns the certificate serial the server presented.
async fn server_serial(creds: &Arc<Credentials>, server: &ForwardingServer) -> String {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let config = client_config(creds.clone(), vec![server.creds.identity()]);
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls_pki_types::ServerName::IpAddress(server.addr.ip().into()),
            tcp,
        )
        .await
        .unwrap();
    let (_, session) = tls.get_ref();
    assert_eq!(peer_identity(session), Some(server.creds.identity()));
    inspect_cert(&session.peer_certificates().unwrap()[0])
        .unwrap()
        .serial
}

#[tokio::test]
async fn rotation_keeps_streams_and_new_handshakes_use_new_cert() {
    let mesh = Mesh::new();
    let server = forwarding_server(mesh.creds("spiffe://cluster.local/ns/app/sa/server")).await;
    let echo = echo_server().await;
    let client_creds = mesh.creds("spiffe://cluster.local/ns/app/sa/client");
    let pool = client();
    let mut tunnel = pool
        .connect(&request(&client_creds, &server, echo))
        .await
        .unwrap();
    let mut buf = [0u8; 5];
    tunnel.write_all(b"hello").await.unwrap();
    tunnel.read_exact(&mut buf).await.unwrap();
    let old_serial = server_serial(&client_creds, &server).await;

    // Rotate both ends.
    let validity = Validity::from_now(Duration::from_secs(7200));
    let new_server_cert = mesh.cert(&server.creds.identity(), validity);
    let new_not_after = new_server_cert.not_after();
    server.creds.rotate(new_server_cert).unwrap();
    client_creds
        .rotate(mesh.cert(&client_creds.identity(), validity))
        .unwrap();

    // The established stream carries on.
    tunnel.write_all(b"again").await.unwrap();
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"again");

    // A new handshake sees the new certificate.
    let new_serial = server_serial(&client_creds, &server).await;
    assert_ne!(old_serial, new_serial);
    assert_eq!(server.creds.snapshot().cert.not_after(), new_not_after);

    // Rotation to another identity is refused.
    let err = server
        .creds
        .rotate(mesh.cert(&id("spiffe://cluster.local/ns/app/sa/other"), validity))
        .unwrap_err();
    assert!(err.to_string().contains("would change identity"), "{err}");
}

#[tokio::test]
async fn trust_roots_can_be_replaced() {
    // Root migration: a client that trusts only a new root refuses the old server until the
    // server is given the new roots and a cert from the new CA.
    let old = Mesh::new();
    let new = Mesh {
        ca: CertificateAuthority::generate_root("cluster.local", Duration::from_secs(3600))
            .unwrap(),
    };
    let server_id = id("spiffe://cluster.local/ns/app/sa/server");
    let server = forwarding_server(Credentials::new(
        old.cert(&server_id, Validity::from_now(Duration::from_secs(600))),
        TrustRoots::from_pem(&format!("{}{}", old.ca.root_pem(), new.ca.root_pem())).unwrap(),
    ))
    .await;
    let echo = echo_server().await;
    let client_creds = new.creds("spiffe://cluster.local/ns/app/sa/client");
    assert_handshake_refused(
        client()
            .connect(&request(&client_creds, &server, echo))
            .await
            .unwrap_err(),
    );
    server
        .creds
        .rotate(new.cert(&server_id, Validity::from_now(Duration::from_secs(600))))
        .unwrap();
    client()
        .connect(&request(&client_creds, &server, echo))
        .await
        .unwrap();
}

#[test]
fn workload_cert_requires_spiffe_leaf() {
    let mesh = Mesh::new();
    let err = WorkloadCert::from_pem(mesh.ca.root_pem(), mesh.ca.key_pem()).unwrap_err();
    assert!(err.to_string().contains("SPIFFE URI SAN"), "{err}");
}

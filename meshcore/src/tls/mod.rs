//! Mutual TLS for both ends of an HBONE connection: TLS 1.3 only, ALPN `h2`, no SNI.
//!
//! The server presents the destination workload's certificate and accepts a client only if its
//! certificate chains to the trust roots and carries a SPIFFE ID of the server's own trust domain.
//! The client presents the source workload's certificate and accepts the server only if its SPIFFE
//! ID is one of those expected for the destination. Both ends read [`Credentials`] per handshake.

pub mod control;
mod credentials;
mod verify;

pub use credentials::{CredentialSnapshot, Credentials, TrustRoots, WorkloadCert};

use crate::identity::SpiffeId;
use crate::pki::{inspect_cert, PkiError};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use std::sync::{Arc, OnceLock};

/// ALPN protocol spoken inside the tunnel.
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// The crypto provider used by every mesh TLS endpoint (ring).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            #[cfg(feature = "aws-lc")]
            let p = rustls::crypto::aws_lc_rs::default_provider();
            #[cfg(not(feature = "aws-lc"))]
            let p = rustls::crypto::ring::default_provider();
            Arc::new(p)
        })
        .clone()
}

/// Server side of HBONE: one config for the life of a listener; rotation happens underneath.
pub fn server_config(creds: Arc<Credentials>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_client_cert_verifier(Arc::new(verify::SpiffeClientVerifier::new(creds.clone())))
        .with_cert_resolver(Arc::new(CurrentCert(creds)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // HBONE servers see many distinct short-lived clients; tickets buy little and cost memory.
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// Client side of HBONE for one destination: accepts only a server proving one of `expected`.
pub fn client_config(creds: Arc<Credentials>, expected: Vec<SpiffeId>) -> Arc<ClientConfig> {
    let verifier = verify::SpiffeServerVerifier::new(creds.clone(), expected);
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous() // our verifier checks the chain with webpki, then the SPIFFE ID instead of a DNS name
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentCert(creds)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    Arc::new(config)
}

/// The identity a peer proved in a completed handshake: the SPIFFE ID of its leaf certificate.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    inspect_cert(leaf).ok()?.spiffe_id
}

/// Serves the current certificate of a [`Credentials`] to either end.
#[derive(Debug)]
struct CurrentCert(Arc<Credentials>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.snapshot().cert.certified_key().clone())
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.snapshot().cert.certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

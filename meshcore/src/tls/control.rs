//! TLS for the control-plane channel (xDS and the CA on 15012): the server proves a DNS name
//! (`istiod.istio-system.svc`) with a certificate from the mesh CA; clients verify it against
//! the mesh roots like any HTTPS client. Callers authenticate at the gRPC layer (tokens).

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use super::{provider, TlsError, ALPN_H2};
use crate::pki::parse_pem_certs;

/// The name istiod-lite's serving certificate carries, as Istio's istiod does.
pub const ISTIOD_SERVER_NAME: &str = "istiod.istio-system.svc";

/// Server side: the chain (leaf first) and key, TLS 1.3, ALPN h2, no client certificate.
pub fn control_server_config(
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = parse_pem_certs(chain_pem, "serving certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Config(format!("serving key: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("serving certificate: {e}")))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Client side: trusts the mesh roots in `roots_pem`, checks the server's DNS name, ALPN h2.
pub fn control_client_config(roots_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_pem_certs(roots_pem, "control plane root")? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(format!("control plane root: {e}")))?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

//! Serving certificates of HTTPS listeners: parsed once per configuration from the Secrets'
//! PEM (`tls.crt`, `tls.key`: PKCS#8, PKCS#1 RSA or SEC1 EC keys), chosen per handshake by SNI
//! from the configuration in force ([`SniResolver`]), so a rotated Secret applies to the next
//! handshake without touching the listener or its open connections.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshcore::l7::ingress::Certificate;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::ConfigStore;

/// One certificate from a Secret, ready to serve.
pub struct ServingCert {
    /// The Secret, `namespace/name`.
    pub secret: String,
    pub key: Arc<CertifiedKey>,
    /// The leaf's DNS SANs, lowercase.
    pub dns_names: Vec<String>,
    pub not_after: SystemTime,
}

impl ServingCert {
    /// Parses a Secret's chain and key; the error says what is wrong (never the key itself).
    pub fn parse(c: &Certificate) -> Result<ServingCert, String> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(c.cert_chain.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("tls.crt is not PEM certificates: {e}"))?;
        let Some(leaf) = chain.first() else {
            return Err("tls.crt holds no certificate".into());
        };
        let (_, x509) = X509Certificate::from_der(leaf)
            .map_err(|e| format!("tls.crt: the leaf does not parse: {e}"))?;
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(d) = name {
                    dns_names.push(d.to_ascii_lowercase());
                }
            }
        }
        let not_after =
            UNIX_EPOCH + Duration::from_secs(x509.validity().not_after.timestamp().max(0) as u64);
        let key = PrivateKeyDer::from_pem_slice(c.private_key.as_bytes())
            .map_err(|_| "tls.key is not a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)")?;
        let provider = meshcore::tls::provider();
        let key = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| format!("tls.key does not fit tls.crt or is unsupported: {e}"))?;
        Ok(ServingCert {
            secret: c.secret.clone(),
            key: Arc::new(key),
            dns_names,
            not_after,
        })
    }

    /// Whether the leaf's DNS names cover `sni` (lowercase): exactly, or by a `*.` wildcard
    /// standing for one label.
    pub fn covers(&self, sni: &str) -> bool {
        self.dns_names.iter().any(|n| match n.strip_prefix("*.") {
            Some(suffix) => sni
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => n == sni,
        })
    }

    pub fn dump(&self) -> Value {
        json!({
            "secret": self.secret,
            "dnsNames": self.dns_names,
            "notAfter": meshcore::certs::rfc3339(self.not_after),
        })
    }
}

/// Picks the certificate of a handshake on one port from the configuration in force.
pub struct SniResolver {
    pub store: Arc<ConfigStore>,
    pub port: u16,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.store.load();
        let ingress = snapshot.ingress.as_ref()?;
        let chosen = ingress.certificate(self.port, hello.server_name());
        if chosen.is_none() {
            tracing::debug!(port = self.port, sni = ?hello.server_name(), "no certificate for this handshake");
        }
        chosen.map(|c| c.key.clone())
    }
}

/// The TLS configuration of an HTTPS port: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, no
/// client certificates, the certificate chosen per handshake by [`SniResolver`].
pub fn server_config(store: Arc<ConfigStore>, port: u16) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(meshcore::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { store, port }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

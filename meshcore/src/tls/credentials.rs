//! A workload's TLS credentials (its certificate chain and key, and the roots it trusts), swappable
//! at run time. TLS configurations read the current snapshot on every handshake, so rotation needs
//! no listener restart and leaves established connections alone.

use super::{provider, TlsError};
use crate::identity::SpiffeId;
use crate::pki::{
    generate_csr, inspect_cert, parse_pem_certs, CertificateAuthority, ValidatedCsr, Validity,
};
use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::SystemTime;

/// One workload certificate with its key, ready for rustls.
#[derive(Debug)]
pub struct WorkloadCert {
    identity: SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
    certified_key: Arc<CertifiedKey>,
}

impl WorkloadCert {
    /// Builds from a leaf-first PEM chain (as the CA returns it) and the PEM private key. The leaf
    /// must carry exactly one SPIFFE URI SAN. A trailing self-signed root is not sent to peers.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let mut chain = parse_pem_certs(chain_pem, "certificate chain")?;
        let leaf = inspect_cert(&chain[0])?;
        let identity = leaf.spiffe_id.ok_or_else(|| {
            TlsError::Config(format!(
                "leaf certificate must carry one SPIFFE URI SAN, has {:?}",
                leaf.uri_sans
            ))
        })?;
        if chain.len() > 1 {
            let last = inspect_cert(chain.last().expect("non-empty"))?;
            if last.subject == last.issuer {
                chain.pop();
            }
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Config(format!("private key: {e}")))?;
        let signing_key = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Config(format!("private key: {e}")))?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        certified_key.keys_match().map_err(|e| {
            TlsError::Config(format!("private key does not match certificate: {e}"))
        })?;
        Ok(Self {
            identity,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            certified_key: Arc::new(certified_key),
        })
    }

    /// Issues a fresh certificate for `identity` straight from a CA held in this process (local
    /// mode and tests): new key, CSR, signature.
    pub fn issue(
        ca: &CertificateAuthority,
        identity: &SpiffeId,
        validity: Validity,
    ) -> Result<Self, TlsError> {
        let csr = generate_csr(identity)?;
        let chain = ca.sign(&ValidatedCsr::from_pem(&csr.csr_pem)?, validity)?;
        Self::from_pem(&chain.to_pem(), &csr.key_pem)
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When this certificate should be renewed: half-way through its life.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }

    pub(crate) fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }
}

/// The trust anchors a workload verifies peers against.
#[derive(Debug, Clone)]
pub struct TrustRoots {
    store: Arc<RootCertStore>,
}

impl TrustRoots {
    /// Parses one or more PEM root certificates (several during a root migration).
    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        let certs = parse_pem_certs(pem, "trust roots")?;
        Self::from_der(certs)
    }

    pub fn from_der(certs: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        let mut store = RootCertStore::empty();
        for cert in certs {
            store
                .add(cert)
                .map_err(|e| TlsError::Config(format!("trust root: {e}")))?;
        }
        Ok(Self {
            store: Arc::new(store),
        })
    }

    pub(crate) fn anchors(&self) -> &[rustls_pki_types::TrustAnchor<'static>] {
        &self.store.roots
    }
}

/// What one handshake sees: the certificate to present and the roots to check the peer against.
#[derive(Debug, Clone)]
pub struct CredentialSnapshot {
    pub cert: Arc<WorkloadCert>,
    pub roots: TrustRoots,
}

/// Hot-swappable credentials of one workload identity.
#[derive(Debug)]
pub struct Credentials {
    current: ArcSwap<CredentialSnapshot>,
}

impl Credentials {
    pub fn new(cert: WorkloadCert, roots: TrustRoots) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(CredentialSnapshot {
                cert: Arc::new(cert),
                roots,
            }),
        })
    }

    /// The credentials for the next handshake.
    pub fn snapshot(&self) -> Arc<CredentialSnapshot> {
        self.current.load_full()
    }

    pub fn identity(&self) -> SpiffeId {
        self.current.load().cert.identity.clone()
    }

    /// Replaces the certificate (rotation). The identity must stay the same.
    pub fn rotate(&self, cert: WorkloadCert) -> Result<(), TlsError> {
        let current = self.current.load().cert.identity.clone();
        if cert.identity != current {
            return Err(TlsError::Config(format!(
                "rotation would change identity from {current} to {}",
                cert.identity
            )));
        }
        let cert = Arc::new(cert);
        // rcu: a concurrent set_roots is never lost.
        self.current.rcu(|old| CredentialSnapshot {
            cert: cert.clone(),
            roots: old.roots.clone(),
        });
        Ok(())
    }

    /// Replaces the trust roots.
    pub fn set_roots(&self, roots: TrustRoots) {
        self.current.rcu(|old| CredentialSnapshot {
            cert: old.cert.clone(),
            roots: roots.clone(),
        });
    }
}

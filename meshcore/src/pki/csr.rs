//! Certificate signing requests for workload identities.

use super::PkiError;
use crate::identity::SpiffeId;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};

/// A fresh ECDSA P-256 key and the CSR asking for `identity` with it.
pub struct WorkloadCsr {
    pub csr_pem: String,
    /// PKCS#8 PEM of the private key; stays with the workload, never sent.
    pub key_pem: String,
}

/// Generates a key pair and a CSR whose only SAN is the identity's SPIFFE URI.
pub fn generate_csr(identity: &SpiffeId) -> Result<WorkloadCsr, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    let csr = params.serialize_request(&key)?;
    Ok(WorkloadCsr {
        csr_pem: csr.pem()?,
        key_pem: key.serialize_pem(),
    })
}

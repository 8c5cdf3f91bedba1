//! Certificates for the mesh: a CA that signs workload certificates from CSRs, CSR generation,
//! and inspection of certificates (SPIFFE ID, validity, chain).

mod ca;
mod csr;
mod inspect;
mod keys;

pub use ca::{
    CertificateAuthority, SignedChain, ValidatedCsr, Validity, DEFAULT_WORKLOAD_TTL, DEV_ROOT_TTL,
};
pub use csr::{generate_csr, WorkloadCsr};
pub use inspect::{inspect_cert, inspect_pem_chain, verify_chain_signatures, CertInfo};
pub use keys::private_key_to_pkcs8;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Everything that can go wrong issuing or reading certificates; each message names the input at fault.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what}: no PEM certificate found")]
    NoCertificate { what: String },
    #[error("{what}: malformed PEM: {detail}")]
    BadPem { what: String, detail: String },
    #[error("{what}: cannot parse certificate: {detail}")]
    BadCertificate { what: String, detail: String },
    #[error("{what}: unsupported or malformed private key: {detail}")]
    BadKey { what: String, detail: String },
    #[error("CA certificate is not a CA (basicConstraints CA:TRUE missing)")]
    NotACa,
    #[error("CA private key does not match the CA certificate's public key")]
    KeyMismatch,
    #[error("CA chain is broken: {0}")]
    BrokenChain(String),
    #[error("CSR rejected: {0}")]
    CsrRejected(String),
    #[error("cannot sign certificate: {0}")]
    Signing(#[from] rcgen::Error),
    #[error(
        "{path} has mode {mode:04o}: a CA key that group or others may access lets them mint any \
         identity of the mesh; make it its owner's only (chmod 600 {path})"
    )]
    KeyPermissions { path: String, mode: u32 },
    #[error("I/O on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Parses every certificate in a PEM text, in order.
pub fn parse_pem_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadPem {
            what: what.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// Encodes a DER certificate as PEM.
pub fn cert_to_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip() {
        for len in 0..100usize {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let pem = pem_encode("CERTIFICATE", &der);
            let back = CertificateDer::from_pem_slice(pem.as_bytes());
            if len == 0 {
                continue;
            }
            assert_eq!(back.unwrap().as_ref(), &der[..], "len {len}");
        }
    }

    #[test]
    fn no_certificate_is_named() {
        let err = parse_pem_certs("hello", "root-cert.pem").unwrap_err();
        assert_eq!(err.to_string(), "root-cert.pem: no PEM certificate found");
    }
}

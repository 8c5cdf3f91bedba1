//! Reading certificates: the SPIFFE identity they carry, their validity, and whether a chain holds.

use super::{parse_pem_certs, PkiError};
use crate::identity::SpiffeId;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What the mesh needs to know about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The SPIFFE identity, when the certificate has exactly one URI SAN and it is a workload ID.
    pub spiffe_id: Option<SpiffeId>,
    pub uri_sans: Vec<String>,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
}

impl CertInfo {
    /// True while `now` lies inside the validity window.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

pub(crate) fn parse_x509<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, PkiError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::BadCertificate {
        what: what.to_owned(),
        detail: e.to_string(),
    })?;
    Ok(cert)
}

/// Reads one DER certificate.
pub fn inspect_cert(der: &[u8]) -> Result<CertInfo, PkiError> {
    let cert = parse_x509(der, "certificate")?;
    let uri_sans = uri_sans(&cert);
    let spiffe_id = match uri_sans.as_slice() {
        [only] => only.parse().ok(),
        _ => None,
    };
    let validity = cert.validity();
    Ok(CertInfo {
        spiffe_id,
        uri_sans,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before: to_system_time(validity.not_before.timestamp()),
        not_after: to_system_time(validity.not_after.timestamp()),
        is_ca: cert.is_ca(),
    })
}

/// Reads every certificate of a PEM chain, in order.
pub fn inspect_pem_chain(pem: &str) -> Result<Vec<CertInfo>, PkiError> {
    parse_pem_certs(pem, "certificate chain")?
        .iter()
        .map(|der| inspect_cert(der))
        .collect()
}

/// Checks that each certificate of a leaf-first chain is signed by the next, and the last by
/// itself (a root). Signatures only: validity and usage are the TLS verifier's business.
pub fn verify_chain_signatures(chain: &[impl AsRef<[u8]>]) -> Result<(), PkiError> {
    let parsed = chain
        .iter()
        .enumerate()
        .map(|(i, der)| parse_x509(der.as_ref(), &format!("chain[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, cert) in parsed.iter().enumerate() {
        let issuer = parsed.get(i + 1).unwrap_or(cert);
        cert.verify_signature(Some(issuer.public_key()))
            .map_err(|e| {
                PkiError::BrokenChain(format!(
                    "chain[{i}] ({}) is not signed by {} ({}): {e}",
                    cert.subject(),
                    if i + 1 < parsed.len() {
                        format!("chain[{}]", i + 1)
                    } else {
                        "itself".into()
                    },
                    issuer.subject()
                ))
            })?;
    }
    Ok(())
}

pub(crate) fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

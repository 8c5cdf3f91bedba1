//! The mesh CA: a self-signed root or a user's root/intermediate (Istio's `cacerts` layout), signing
//! workload certificates from CSRs.

use super::inspect::parse_x509;
use super::keys::private_key_to_pkcs8;
use super::{cert_to_pem, parse_pem_certs, pem_encode, verify_chain_signatures, PkiError};
use crate::identity::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use std::path::Path;
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ECDSA_WITH_SHA256,
};
use x509_parser::prelude::{FromDer, X509CertificationRequest};
use x509_parser::public_key::PublicKey;

/// Lifetime of a generated development root.
pub const DEV_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Workload certificate lifetime when the caller does not ask for one.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);

/// Certificates start this far in the past so peers with slightly slow clocks accept them.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from (slightly before) now for `ttl`.
    pub fn from_now(ttl: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - CLOCK_SKEW_ALLOWANCE,
            not_after: now + ttl,
        }
    }
}

/// A signed workload certificate and the chain up to the root, leaf first, each as PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedChain {
    pub pems: Vec<String>,
}

impl SignedChain {
    pub fn leaf_pem(&self) -> &str {
        &self.pems[0]
    }

    pub fn root_pem(&self) -> &str {
        self.pems.last().expect("a chain holds at least the leaf")
    }

    /// The whole chain as one PEM text.
    pub fn to_pem(&self) -> String {
        self.pems.concat()
    }
}

/// A CSR that passed validation, with the identity it asks for. Authorize the identity, then sign.
pub struct ValidatedCsr {
    identity: SpiffeId,
    request: CertificateSigningRequestParams,
}

impl ValidatedCsr {
    /// Parses and checks a PEM CSR: a valid self-signature, an ECDSA P-256 or RSA (≥ 2048 bit) key,
    /// and exactly one SAN, which is a workload SPIFFE URI.
    pub fn from_pem(csr_pem: &str) -> Result<Self, PkiError> {
        let reject = |m: String| PkiError::CsrRejected(m);
        let der = pem::parse(csr_pem).map_err(|e| reject(format!("not a PEM CSR: {e}")))?;
        if der.tag() != "CERTIFICATE REQUEST" && der.tag() != "NEW CERTIFICATE REQUEST" {
            return Err(reject(format!(
                "PEM block is {:?}, not a CERTIFICATE REQUEST",
                der.tag()
            )));
        }
        let (_, csr) = X509CertificationRequest::from_der(der.contents())
            .map_err(|e| reject(format!("malformed CSR: {e}")))?;
        csr.verify_signature()
            .map_err(|e| reject(format!("CSR signature does not verify: {e}")))?;
        check_key(&csr)?;
        let identity = csr_identity(&csr)?;
        let request = CertificateSigningRequestParams::from_der(
            &CertificateSigningRequestDer::from(der.contents()),
        )
        .map_err(|e| reject(format!("unsupported CSR content: {e}")))?;
        Ok(Self { identity, request })
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }
}

fn check_key(csr: &X509CertificationRequest<'_>) -> Result<(), PkiError> {
    let spki = &csr.certification_request_info.subject_pki;
    let alg = &spki.algorithm;
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
        if curve.as_ref() == Some(&OID_EC_P256) {
            // The certificate's key description is derived from the CSR's signature algorithm,
            // so a P-256 key must come with ecdsa-with-SHA256.
            if csr.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256 {
                return Err(PkiError::CsrRejected(format!(
                    "P-256 key signed with {}; use ecdsa-with-SHA256",
                    csr.signature_algorithm.algorithm
                )));
            }
            return Ok(());
        }
        return Err(PkiError::CsrRejected(
            "EC key on a curve other than P-256".into(),
        ));
    }
    if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
        if let Ok(PublicKey::RSA(rsa)) = spki.parsed() {
            if rsa.key_size() >= 2048 {
                return Ok(());
            }
            return Err(PkiError::CsrRejected(format!(
                "RSA key of {} bits; at least 2048 required",
                rsa.key_size()
            )));
        }
    }
    Err(PkiError::CsrRejected(format!(
        "key algorithm {} not supported; use ECDSA P-256 or RSA",
        alg.algorithm
    )))
}

fn csr_identity(csr: &X509CertificationRequest<'_>) -> Result<SpiffeId, PkiError> {
    let mut uris = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::URI(uri) => uris.push(*uri),
                    other => {
                        return Err(PkiError::CsrRejected(format!(
                        "CSR carries a non-SPIFFE SAN ({other}); only one spiffe:// URI is allowed"
                    )))
                    }
                }
            }
        }
    }
    match uris.as_slice() {
        [uri] => uri
            .parse()
            .map_err(|e| PkiError::CsrRejected(format!("URI SAN is not a workload identity: {e}"))),
        [] => Err(PkiError::CsrRejected("CSR has no SPIFFE URI SAN".into())),
        many => Err(PkiError::CsrRejected(format!(
            "CSR carries {} URI SANs ({}); exactly one is allowed",
            many.len(),
            many.join(", ")
        ))),
    }
}

/// Signs workload certificates. Holds the signing key, the CA certificate and the chain to the root.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    key_pem: String,
    /// The CA certificate, then any intermediates, then the root (the root alone for a root CA).
    chain_pems: Vec<String>,
    /// Leaves never outlive the CA certificate.
    not_after: SystemTime,
}

impl CertificateAuthority {
    /// Creates a self-signed ECDSA P-256 root, `O=<trust domain>`, valid for `ttl`.
    pub fn generate_root(trust_domain: &str, ttl: Duration) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let validity = Validity::from_now(ttl);
        let params = ca_params(trust_domain, validity)?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            key_pem: key.serialize_pem(),
            chain_pems: vec![cert.pem()],
            issuer: Issuer::new(params, key),
            not_after: validity.not_after,
        })
    }

    /// Loads a CA from PEM text, as Istio's `cacerts` secret holds it: `ca_cert` and `ca_key` (PKCS#8,
    /// PKCS#1 or SEC1; RSA or ECDSA), optionally `cert_chain` (the CA cert's chain, which may
    /// repeat the CA cert and the root) and `root_cert`. Checks that the key fits the certificate
    /// and that the chain holds.
    pub fn from_pem(
        ca_cert: &str,
        ca_key: &str,
        cert_chain: Option<&str>,
        root_cert: Option<&str>,
    ) -> Result<Self, PkiError> {
        let ca_der = parse_pem_certs(ca_cert, "ca-cert.pem")?.swap_remove(0);
        let parsed = parse_x509(&ca_der, "ca-cert.pem")?;
        if !parsed.is_ca() {
            return Err(PkiError::NotACa);
        }
        let pkcs8 = private_key_to_pkcs8(ca_key, "ca-key.pem")?;
        let key = KeyPair::try_from(&pkcs8).map_err(|e| PkiError::BadKey {
            what: "ca-key.pem".into(),
            detail: e.to_string(),
        })?;
        if key.public_key_raw() != parsed.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::KeyMismatch);
        }

        let mut chain: Vec<CertificateDer<'static>> = vec![ca_der.clone()];
        let extra = match cert_chain {
            Some(pem) => parse_pem_certs(pem, "cert-chain.pem")?,
            None => Vec::new(),
        };
        let root = match root_cert {
            Some(pem) => parse_pem_certs(pem, "root-cert.pem")?,
            None => Vec::new(),
        };
        for cert in extra.into_iter().chain(root.into_iter().take(1)) {
            if !chain.contains(&cert) {
                chain.push(cert);
            }
        }
        verify_chain_signatures(&chain).map_err(|e| match e {
            PkiError::BrokenChain(m) => PkiError::BrokenChain(format!(
                "{m} (ca-cert.pem, then cert-chain.pem, must lead to root-cert.pem)"
            )),
            other => other,
        })?;

        let issuer =
            Issuer::from_ca_cert_der(&ca_der, key).map_err(|e| PkiError::BadCertificate {
                what: "ca-cert.pem".into(),
                detail: e.to_string(),
            })?;
        let ca = Self {
            issuer,
            key_pem: pem_encode("PRIVATE KEY", pkcs8.secret_pkcs8_der()),
            chain_pems: chain.iter().map(|c| cert_to_pem(c)).collect(),
            not_after: SystemTime::UNIX_EPOCH
                + Duration::from_secs(parsed.validity().not_after.timestamp().max(0) as u64),
        };
        ca.check_issued_names_match(parsed.subject().as_raw())?;
        Ok(ca)
    }

    /// Signs a probe certificate and checks that its issuer name is byte-for-byte the CA's
    /// subject. rcgen rebuilds names and cannot reproduce every encoding (repeated or
    /// multi-valued attributes); verifiers compare names bytewise, so refuse such a CA up front
    /// rather than issue certificates that never verify.
    fn check_issued_names_match(&self, ca_subject: &[u8]) -> Result<(), PkiError> {
        let probe_id = SpiffeId::new("probe.invalid", "probe", "probe").expect("valid literal");
        let csr = super::generate_csr(&probe_id)?;
        let probe = self.sign(
            &ValidatedCsr::from_pem(&csr.csr_pem)?,
            Validity::from_now(Duration::from_secs(60)),
        )?;
        let der = parse_pem_certs(probe.leaf_pem(), "probe")?.swap_remove(0);
        let leaf = parse_x509(&der, "probe")?;
        if leaf.issuer().as_raw() != ca_subject {
            return Err(PkiError::BadCertificate {
                what: "ca-cert.pem".into(),
                detail: format!(
                    "subject {} cannot be reproduced exactly in issued certificates (repeated or multi-valued attributes are not supported)",
                    leaf.issuer()
                ),
            });
        }
        verify_chain_signatures(&parse_pem_certs(&probe.to_pem(), "probe chain")?)
    }

    /// Loads Istio's plug-in CA layout from a directory: `ca-cert.pem`, `ca-key.pem`, and optional
    /// `cert-chain.pem` and `root-cert.pem`. A `ca-key.pem` that group or others may access
    /// (any of mode 077) is refused: whoever reads it can mint any identity of the mesh.
    pub fn from_istio_dir(dir: &Path) -> Result<Self, PkiError> {
        check_key_is_private(&dir.join("ca-key.pem"))?;
        let read = |name: &str, required: bool| -> Result<Option<String>, PkiError> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(s) => Ok(Some(s)),
                Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(PkiError::Io {
                    path: path.display().to_string(),
                    source,
                }),
            }
        };
        let cert = read("ca-cert.pem", true)?.unwrap_or_default();
        let key = read("ca-key.pem", true)?.unwrap_or_default();
        let chain = read("cert-chain.pem", false)?;
        let root = read("root-cert.pem", false)?;
        Self::from_pem(&cert, &key, chain.as_deref(), root.as_deref())
    }

    /// Loads Istio's `cacerts` layout from `dir`, or, when the directory is absent or holds no
    /// `ca-cert.pem`, generates a self-signed root for `trust_domain` and persists it there first
    /// (written to a sibling directory and renamed into place, so processes starting together
    /// end up sharing one root). Returns the CA and whether it was generated.
    pub fn load_or_generate_dir(dir: &Path, trust_domain: &str) -> Result<(Self, bool), PkiError> {
        let io = |path: &Path, source| PkiError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut generated = false;
        if !dir.join("ca-cert.pem").exists() {
            let ca = Self::generate_root(trust_domain, DEV_ROOT_TTL)?;
            let parent = dir.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
            let tmp = parent.join(format!(
                ".{}.tmp-{}",
                dir.file_name().and_then(|n| n.to_str()).unwrap_or("ca"),
                std::process::id()
            ));
            // Only the owner may enter the directory or read the key: whoever reads the key can
            // mint any identity of the mesh.
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&tmp)
                .map_err(|e| io(&tmp, e))?;
            for (name, pem, mode) in [
                ("ca-cert.pem", ca.ca_cert_pem().to_owned(), 0o644),
                ("ca-key.pem", ca.key_pem().to_owned(), 0o600),
                ("root-cert.pem", ca.root_pem().to_owned(), 0o644),
                ("cert-chain.pem", ca.chain_pem(), 0o644),
            ] {
                use std::io::Write;
                let path = tmp.join(name);
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)
                    .and_then(|mut f| f.write_all(pem.as_bytes()))
                    .map_err(|e| io(&path, e))?;
            }
            // An existing empty directory would make rename fail; remove it first (only if empty).
            let _ = std::fs::remove_dir(dir);
            match std::fs::rename(&tmp, dir) {
                Ok(()) => generated = true,
                // Another process won the race: its CA stays, ours is dropped.
                Err(_) if dir.join("ca-cert.pem").exists() => {
                    let _ = std::fs::remove_dir_all(&tmp);
                }
                Err(e) => return Err(io(dir, e)),
            }
        }
        Ok((Self::from_istio_dir(dir)?, generated))
    }

    /// Signs an intermediate CA (ECDSA P-256) under this CA; returns (certificate PEM, key PEM).
    pub fn issue_intermediate(
        &self,
        org: &str,
        ttl: Duration,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params(org, Validity::from_now(ttl))?;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a serving certificate for DNS names (the control plane's own, e.g.
    /// `istiod.istio-system.svc`): a fresh P-256 key, the names as DNS SANs, serverAuth.
    /// Returns the chain (leaf first) and the key as PEM.
    pub fn issue_server_cert(
        &self,
        dns_names: &[&str],
        validity: Validity,
    ) -> Result<(SignedChain, String), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = dns_names
            .iter()
            .map(|n| Ok(SanType::DnsName((*n).try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = to_offset(validity.not_before);
        params.not_after = to_offset(validity.not_after.min(self.not_after));
        let leaf = params.signed_by(&key, &self.issuer)?;
        let mut pems = Vec::with_capacity(1 + self.chain_pems.len());
        pems.push(leaf.pem());
        pems.extend(self.chain_pems.iter().cloned());
        Ok((SignedChain { pems }, key.serialize_pem()))
    }

    /// Validates a CSR and signs it for `ttl` from now. Use [`ValidatedCsr`] and [`Self::sign`]
    /// instead when the caller must authorize the identity first.
    pub fn sign_csr(&self, csr_pem: &str, ttl: Duration) -> Result<SignedChain, PkiError> {
        self.sign(&ValidatedCsr::from_pem(csr_pem)?, Validity::from_now(ttl))
    }

    /// Signs a validated CSR: the SPIFFE ID as the only (critical) URI SAN, empty subject,
    /// digitalSignature + keyEncipherment, serverAuth + clientAuth, a random serial.
    pub fn sign(&self, csr: &ValidatedCsr, validity: Validity) -> Result<SignedChain, PkiError> {
        let mut request = csr.request.clone();
        let params = &mut request.params;
        *params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(csr.identity.to_string().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = to_offset(validity.not_before);
        params.not_after = to_offset(validity.not_after.min(self.not_after));
        let leaf = request.signed_by(&self.issuer)?;
        let mut pems = Vec::with_capacity(1 + self.chain_pems.len());
        pems.push(leaf.pem());
        pems.extend(self.chain_pems.iter().cloned());
        Ok(SignedChain { pems })
    }

    /// The trust anchor workloads verify peers against (root-cert.pem).
    pub fn root_pem(&self) -> &str {
        self.chain_pems
            .last()
            .expect("chain holds at least the CA cert")
    }

    /// The CA's own certificate (ca-cert.pem).
    pub fn ca_cert_pem(&self) -> &str {
        &self.chain_pems[0]
    }

    /// The CA certificate followed by intermediates and the root (cert-chain.pem).
    pub fn chain_pem(&self) -> String {
        self.chain_pems.concat()
    }

    /// The signing key as PKCS#8 PEM, for persisting a generated root.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

/// Refuses a key file that anyone but its owner may read or write (mode & 077), as OpenSSH
/// refuses an unprotected private key. A missing file is left to the read that follows.
fn check_key_is_private(path: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(_) => return Ok(()),
    };
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyPermissions {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

fn ca_params(org: &str, validity: Validity) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, org);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    params.not_before = to_offset(validity.not_before);
    params.not_after = to_offset(validity.not_after);
    Ok(params)
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Signing(rcgen::Error::RingUnspecified))?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and no leading zero byte to strip
    Ok(SerialNumber::from_slice(&bytes))
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

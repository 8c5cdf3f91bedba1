//! Certificate verifiers for HBONE. Chains are checked by webpki against the roots of the current
//! credentials snapshot; on top, SPIFFE rules: the client's trust domain must be ours, the server's
//! identity must be one we expected.

use super::{provider, Credentials};
use crate::identity::SpiffeId;
use crate::pki::inspect_cert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// Server-side check of the client certificate.
#[derive(Debug)]
pub(super) struct SpiffeClientVerifier {
    creds: Arc<Credentials>,
}

impl SpiffeClientVerifier {
    pub(super) fn new(creds: Arc<Credentials>) -> Self {
        Self { creds }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: mesh clients have exactly one certificate to offer.
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let snapshot = self.creds.snapshot();
        verify_chain(
            end_entity,
            intermediates,
            &snapshot.roots,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        let peer = spiffe_of(end_entity)?;
        let ours = snapshot.cert.identity().trust_domain();
        if peer.trust_domain() != ours {
            return Err(other(format!(
                "client {peer} is from trust domain {:?}, this workload trusts only {ours:?}",
                peer.trust_domain()
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client-side check of the server certificate.
#[derive(Debug)]
pub(super) struct SpiffeServerVerifier {
    creds: Arc<Credentials>,
    expected: Vec<SpiffeId>,
}

impl SpiffeServerVerifier {
    pub(super) fn new(creds: Arc<Credentials>, expected: Vec<SpiffeId>) -> Self {
        Self { creds, expected }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let snapshot = self.creds.snapshot();
        verify_chain(
            end_entity,
            intermediates,
            &snapshot.roots,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        let peer = spiffe_of(end_entity)?;
        if !self.expected.contains(&peer) {
            return Err(other(format!(
                "server presented {peer}, expected one of [{}]",
                self.expected
                    .iter()
                    .map(|id| id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn verify_chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &super::TrustRoots,
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<(), Error> {
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    cert.verify_for_usage(
        provider().signature_verification_algorithms.all,
        roots.anchors(),
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(webpki_error)
}

fn webpki_error(e: webpki::Error) -> Error {
    use webpki::Error as W;
    Error::InvalidCertificate(match e {
        W::BadDer | W::BadDerTime => CertificateError::BadEncoding,
        W::CertExpired { .. } | W::InvalidCertValidity => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => CertificateError::Other(OtherError(Arc::new(WebpkiError(other)))),
    })
}

#[derive(Debug)]
struct WebpkiError(webpki::Error);

impl std::fmt::Display for WebpkiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for WebpkiError {}

fn spiffe_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, Error> {
    let info =
        inspect_cert(cert).map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    info.spiffe_id.ok_or_else(|| {
        other(format!(
            "peer certificate carries no single SPIFFE URI SAN (URI SANs: {:?})",
            info.uri_sans
        ))
    })
}

/// A verification failure with a message for the logs.
fn other(message: String) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Message(
        message,
    )))))
}

#[derive(Debug)]
struct Message(String);

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

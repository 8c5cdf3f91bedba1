//! Certificates from the control plane's CA (`IstioCertificateService/CreateCertificate`): a
//! fresh key and CSR per request, the node's bootstrap token as `authorization: Bearer`, the
//! identity in `ImpersonatedIdentity`, and the returned chain checked to carry that identity.

use std::path::PathBuf;
use std::time::Duration;

use crate::api::ca::{
    istio_certificate_service_client::IstioCertificateServiceClient, IstioCertificateRequest,
};
use crate::identity::SpiffeId;
use crate::pki::generate_csr;
use crate::tls::{TrustRoots, WorkloadCert};
use tonic::transport::Channel;

use super::{CertificateProvider, IssueFuture};

/// How long a certificate request may take.
const CA_DEADLINE: Duration = Duration::from_secs(10);

pub struct RemoteCa {
    channel: Channel,
    /// Re-read for every request, so a rotated token is picked up.
    token_file: PathBuf,
    cluster_id: String,
    ttl: Duration,
    roots: TrustRoots,
}

impl RemoteCa {
    pub fn new(
        channel: Channel,
        token_file: PathBuf,
        cluster_id: String,
        ttl: Duration,
        roots: TrustRoots,
    ) -> Self {
        Self {
            channel,
            token_file,
            cluster_id,
            ttl,
            roots,
        }
    }

    async fn request(&self, id: &SpiffeId) -> Result<WorkloadCert, String> {
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("CA_TOKEN_FILE {}: {e}", self.token_file.display()))?;
        let csr = generate_csr(id).map_err(|e| format!("CSR for {id}: {e}"))?;
        let metadata = prost_types::Struct {
            fields: [(
                "ImpersonatedIdentity".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(id.to_string())),
                },
            )]
            .into(),
        };
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr.csr_pem,
            validity_duration: self.ttl.as_secs() as i64,
            metadata: Some(metadata),
        });
        let bearer = format!("Bearer {}", token.trim());
        request.metadata_mut().insert(
            "authorization",
            bearer
                .parse()
                .map_err(|_| "CA_TOKEN_FILE holds characters not allowed in a header".to_owned())?,
        );
        request.metadata_mut().insert(
            "clusterid",
            self.cluster_id
                .parse()
                .map_err(|_| "CLUSTER_ID is not a valid header value".to_owned())?,
        );
        // A deadline, as Istio's CA client has: a CA that never answers must not hold the
        // certificate (and the pod's start) forever. A call that meets a connection just told
        // to go away (GOAWAY at istiod-lite's maximum connection age) is cancelled before it
        // reaches the server; tonic then dials anew, so it is retried once at once, as gRPC
        // clients retry what was never sent.
        let call = async {
            let client = IstioCertificateServiceClient::new(self.channel.clone());
            let retry = request_copy(&request);
            match client.clone().create_certificate(request).await {
                Err(s) if s.code() == tonic::Code::Cancelled => {
                    client.clone().create_certificate(retry).await
                }
                other => other,
            }
        };
        let response = tokio::time::timeout(CA_DEADLINE, call)
            .await
            .map_err(|_| format!("CA did not answer for {id} within {CA_DEADLINE:?}"))?
            .map_err(|s| format!("CA refused {id}: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        let cert = WorkloadCert::from_pem(&response.cert_chain.join(""), &csr.key_pem)
            .map_err(|e| format!("certificate from the CA for {id}: {e}"))?;
        if cert.identity() != id {
            return Err(format!(
                "the CA returned a certificate for {} instead of {id}",
                cert.identity()
            ));
        }
        Ok(cert)
    }
}

/// The same request again (message and metadata), for the one retry.
fn request_copy(
    request: &tonic::Request<IstioCertificateRequest>,
) -> tonic::Request<IstioCertificateRequest> {
    let mut copy = tonic::Request::new(request.get_ref().clone());
    *copy.metadata_mut() = request.metadata().clone();
    copy
}

impl CertificateProvider for RemoteCa {
    fn issue<'a>(&'a self, id: &'a SpiffeId) -> IssueFuture<'a> {
        Box::pin(self.request(id))
    }

    fn roots(&self) -> TrustRoots {
        self.roots.clone()
    }
}

//! The certificate service: `istio.v1.auth.IstioCertificateService/CreateCertificate`.
//!
//! Callers authenticate with `authorization: Bearer <token>`; in local mode each token names a
//! node (a bootstrap-token file: `<node> <token>` per line). A caller may obtain certificates
//! only for identities of pods scheduled on its node (the CSR's SPIFFE ID, which must equal the
//! `ImpersonatedIdentity` metadata when that is sent). Everything else is refused with a gRPC
//! status saying why, and counted.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshcore::api::ca::{
    istio_certificate_service_server::IstioCertificateService, IstioCertificateRequest,
    IstioCertificateResponse,
};
use meshcore::pki::{CertificateAuthority, ValidatedCsr, Validity, DEFAULT_WORKLOAD_TTL};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::xds::ResourceSet;

/// Bootstrap tokens: token → node.
#[derive(Debug, Default, Clone)]
pub struct NodeTokens {
    by_token: HashMap<String, String>,
}

impl NodeTokens {
    /// `<node> <token>` per line; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut by_token = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                [node, token] if token.len() >= 16 => {
                    if let Some(other) = by_token.insert(token.to_owned(), node.to_owned()) {
                        return Err(format!(
                            "line {}: token already given to node {other}; each node needs its own",
                            i + 1
                        ));
                    }
                }
                [_, _] => return Err(format!("line {}: token shorter than 16 characters", i + 1)),
                _ => return Err(format!("line {}: expected `<node> <token>`", i + 1)),
            }
        }
        Ok(Self { by_token })
    }

    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[derive(Default, Debug)]
pub struct CaCounters {
    pub issued: AtomicU64,
    pub refused: AtomicU64,
}

#[derive(Clone)]
pub struct CaServer {
    ca: Arc<CertificateAuthority>,
    tokens: Arc<NodeTokens>,
    resources: watch::Receiver<Arc<ResourceSet>>,
    max_ttl: Duration,
    pub counters: Arc<CaCounters>,
}

impl CaServer {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        tokens: NodeTokens,
        resources: watch::Receiver<Arc<ResourceSet>>,
    ) -> Self {
        Self {
            ca,
            tokens: Arc::new(tokens),
            resources,
            max_ttl: DEFAULT_WORKLOAD_TTL,
            counters: Arc::default(),
        }
    }

    fn refuse(&self, status: Status) -> Status {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(code = ?status.code(), "certificate request refused: {}", status.message());
        status
    }

    fn authorize(
        &self,
        req: &Request<IstioCertificateRequest>,
    ) -> Result<(ValidatedCsr, Validity), Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
        let node = self
            .tokens
            .by_token
            .get(token)
            .ok_or_else(|| Status::unauthenticated("unknown bootstrap token"))?;
        let body = req.get_ref();
        let csr = ValidatedCsr::from_pem(&body.csr)
            .map_err(|e| Status::invalid_argument(format!("CSR: {e}")))?;
        let identity = csr.identity().to_string();
        let impersonated = body
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("ImpersonatedIdentity"))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            });
        if let Some(asked) = impersonated {
            if asked != identity {
                return Err(Status::invalid_argument(format!(
                    "ImpersonatedIdentity {asked} differs from the CSR's {identity}"
                )));
            }
        }
        let allowed = self
            .resources
            .borrow()
            .identities_by_node
            .get(node)
            .is_some_and(|ids| ids.contains(&identity));
        if !allowed {
            return Err(Status::permission_denied(format!(
                "node {node} runs no pod as {identity}"
            )));
        }
        let asked = Duration::from_secs(body.validity_duration.max(0) as u64);
        let ttl = if asked.is_zero() {
            self.max_ttl
        } else {
            asked.min(self.max_ttl)
        };
        Ok((csr, Validity::from_now(ttl)))
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaServer {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let (csr, validity) = self.authorize(&request).map_err(|s| self.refuse(s))?;
        let chain = self
            .ca
            .sign(&csr, validity)
            .map_err(|e| self.refuse(Status::internal(format!("signing: {e}"))))?;
        self.counters.issued.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(identity = %csr.identity(), "certificate issued");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain.pems,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_format() {
        let t =
            NodeTokens::parse("# nodes\nnode-1 0123456789abcdef0\n\nnode-2   fedcba98765432100\n")
                .unwrap();
        assert_eq!(
            t.by_token.get("0123456789abcdef0").map(String::as_str),
            Some("node-1")
        );
        assert_eq!(
            NodeTokens::parse("node-1 short").unwrap_err(),
            "line 1: token shorter than 16 characters"
        );
        assert_eq!(
            NodeTokens::parse("just-one-field").unwrap_err(),
            "line 1: expected `<node> <token>`"
        );
        assert_eq!(
            NodeTokens::parse("a 0123456789abcdef0\nb 0123456789abcdef0").unwrap_err(),
            "line 2: token already given to node a; each node needs its own"
        );
    }
}

//! The certificate service: `istio.v1.auth.IstioCertificateService/CreateCertificate`.
//!
//! Callers authenticate with `authorization: Bearer <token>`:
//! - local mode: each token names a node, or a workload identity (a bootstrap-token file,
//!   `<node> <token>` or `spiffe://<td>/ns/<ns>/sa/<sa> <token>` per line: a waypoint's
//!   token names the identity it runs as);
//! - cluster mode: a service-account token, checked with a Kubernetes TokenReview (audience
//!   `istio-ca`). The caller's own identity is its service account's SPIFFE ID; ztunnel's
//!   service account acts for the node its pod runs on (from the token's bound node, or its
//!   bound pod's `spec.nodeName`).
//!
//! A caller may obtain its own identity, and a node's ztunnel the identities of pods scheduled
//! on that node (the CSR's SPIFFE ID, which must equal the `ImpersonatedIdentity` metadata when
//! that is sent). Everything else is refused with a gRPC status saying why, and counted.

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

/// Bootstrap tokens: SHA-256 of the token → who presents it (a node, or a workload identity).
/// Looking up digests rather than tokens keeps the comparison's timing from telling anything
/// about a valid token.
#[derive(Debug, Default, Clone)]
pub struct NodeTokens {
    by_token: HashMap<[u8; 32], Caller>,
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

impl NodeTokens {
    /// `<node> <token>` or `<SPIFFE ID> <token>` per line; blank lines and `#` comments are
    /// skipped.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut by_token = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                [subject, token] if token.len() >= 16 => {
                    let caller = if subject.starts_with("spiffe://") {
                        let id: meshcore::identity::SpiffeId = subject
                            .parse()
                            .map_err(|e| format!("line {}: {subject}: {e}", i + 1))?;
                        Caller {
                            node: None,
                            identity: Some(id.to_string()),
                        }
                    } else {
                        Caller {
                            node: Some(subject.to_owned()),
                            identity: None,
                        }
                    };
                    if let Some(other) = by_token.insert(digest(token), caller) {
                        let other = other.node.or(other.identity).unwrap_or_default();
                        return Err(format!(
                            "line {}: token already given to {other}; each node and identity \
                             needs its own",
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

    /// The node a token acts for, if it is a node's.
    pub fn node(&self, token: &str) -> Option<&str> {
        self.by_token.get(&digest(token))?.node.as_deref()
    }

    /// Who presents the token.
    pub fn caller(&self, token: &str) -> Option<&Caller> {
        self.by_token.get(&digest(token))
    }
}

/// Who a verified caller is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The node whose pods' identities it may obtain (a ztunnel).
    pub node: Option<String>,
    /// Its own SPIFFE ID, which it may always obtain.
    pub identity: Option<String>,
}

/// How callers are authenticated.
#[derive(Clone)]
pub enum Authenticator {
    NodeTokens(Arc<NodeTokens>),
    TokenReview(Arc<crate::token_review::TokenReviewer>),
}

/// The token of `authorization: Bearer <token>`.
pub fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<&str, Status> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))
}

impl Authenticator {
    pub async fn authenticate(&self, token: &str) -> Result<Caller, Status> {
        match self {
            Authenticator::NodeTokens(t) => t
                .caller(token)
                .cloned()
                .ok_or_else(|| Status::unauthenticated("unknown bootstrap token")),
            Authenticator::TokenReview(r) => r.review(token).await,
        }
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
    auth: Authenticator,
    resources: watch::Receiver<Arc<ResourceSet>>,
    max_ttl: Duration,
    pub counters: Arc<CaCounters>,
}

impl CaServer {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        auth: Authenticator,
        resources: watch::Receiver<Arc<ResourceSet>>,
    ) -> Self {
        Self {
            ca,
            auth,
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

    async fn authorize(
        &self,
        req: &Request<IstioCertificateRequest>,
    ) -> Result<(ValidatedCsr, Validity), Status> {
        let token = bearer(req.metadata())?;
        let caller = self.auth.authenticate(token).await?;
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
        if caller.identity.as_deref() != Some(identity.as_str()) {
            let Some(node) = &caller.node else {
                return Err(Status::permission_denied(format!(
                    "{} may only obtain its own identity, not {identity}",
                    caller.identity.as_deref().unwrap_or("the caller")
                )));
            };
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
        let (csr, validity) = self.authorize(&request).await.map_err(|s| self.refuse(s))?;
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
        assert_eq!(t.node("0123456789abcdef0"), Some("node-1"));
        assert_eq!(t.node("fedcba98765432100"), Some("node-2"));
        assert_eq!(t.node("0123456789abcdef"), None);
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
            "line 2: token already given to a; each node and identity needs its own"
        );
    }

    #[test]
    fn a_token_may_name_a_workload_identity() {
        let t = NodeTokens::parse(
            "node-1 0123456789abcdef0\nspiffe://cluster.local/ns/shop/sa/wp waypoint-token-0123\n",
        )
        .unwrap();
        assert_eq!(
            t.caller("waypoint-token-0123"),
            Some(&Caller {
                node: None,
                identity: Some("spiffe://cluster.local/ns/shop/sa/wp".into()),
            })
        );
        assert_eq!(t.node("waypoint-token-0123"), None);
        assert!(
            NodeTokens::parse("spiffe://cluster.local/ns/shop 0123456789abcdef0")
                .unwrap_err()
                .starts_with("line 1: spiffe://cluster.local/ns/shop: ")
        );
    }
}

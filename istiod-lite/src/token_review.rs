//! Cluster-mode caller authentication for the certificate service: a Kubernetes TokenReview of
//! the caller's service-account token (audience `istio-ca`).
//!
//! The API server must confirm the audience (an answer without `status.audiences` is refused).
//! Answers are cached by the token's SHA-256: an accepted caller for 60 s, a refused token for
//! 5 s, so reconnecting clients, and unauthenticated callers retrying, do not each cost the API
//! server a TokenReview (and a Pod read).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};
use tonic::Status;

use crate::ca::Caller;

pub const AUDIENCE: &str = "istio-ca";
/// Bound service-account tokens name the node and pod they were issued for in these keys.
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// How long an accepted token's caller is remembered.
const ACCEPTED_FOR: Duration = Duration::from_secs(60);
/// How long a refused token is remembered.
const REFUSED_FOR: Duration = Duration::from_secs(5);
/// Cached answers kept; past this the cache starts over.
const MAX_CACHED: usize = 10_000;

type Answer = Result<Caller, (tonic::Code, String)>;

pub struct TokenReviewer {
    client: Client,
    trust_domain: String,
    /// (namespace, service account) of ztunnel: it acts for its node.
    ztunnel: (String, String),
    /// SHA-256 of a token → the answer and until when it holds.
    cache: Mutex<HashMap<[u8; 32], (Answer, Instant)>>,
}

impl TokenReviewer {
    /// `ztunnel`: `namespace/serviceaccount`.
    pub fn new(client: Client, trust_domain: &str, ztunnel: &str) -> Result<Self, String> {
        let (ns, sa) = ztunnel.split_once('/').ok_or_else(|| {
            format!("ztunnel service account {ztunnel:?}: expected namespace/name")
        })?;
        Ok(Self {
            client,
            trust_domain: trust_domain.to_owned(),
            ztunnel: (ns.to_owned(), sa.to_owned()),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Who presents `token`: from the cache, else from a TokenReview (whose answer is cached;
    /// an API server that cannot be reached is not).
    pub async fn review(&self, token: &str) -> Result<Caller, Status> {
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        let now = Instant::now();
        if let Some((answer, until)) = self.cache.lock().expect("cache lock").get(&digest) {
            if *until > now {
                return answer
                    .clone()
                    .map_err(|(code, message)| Status::new(code, message));
            }
        }
        let answer = self.review_uncached(token).await;
        if answer
            .as_ref()
            .is_err_and(|s| s.code() == tonic::Code::Unavailable)
        {
            return answer;
        }
        let ttl = if answer.is_ok() {
            ACCEPTED_FOR
        } else {
            REFUSED_FOR
        };
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        let kept: Answer = match &answer {
            Ok(caller) => Ok(caller.clone()),
            Err(s) => Err((s.code(), s.message().to_owned())),
        };
        cache.insert(digest, (kept, now + ttl));
        answer
    }

    async fn review_uncached(&self, token: &str) -> Result<Caller, Status> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Status::unavailable(format!("TokenReview: {e}")))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Status::unauthenticated(format!(
                "token not accepted by the API server: {}",
                status.error.unwrap_or_else(|| "not authenticated".into())
            )));
        }
        // The API server states the audiences it checked; without them nothing says the token
        // was meant for us (a token for another audience would pass).
        let audiences = status.audiences.as_deref().unwrap_or_default();
        if !audiences.iter().any(|a| a == AUDIENCE) {
            return Err(Status::unauthenticated(format!(
                "token is not for audience {AUDIENCE} (the API server confirmed {audiences:?})"
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((ns, sa)) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|r| r.split_once(':'))
        else {
            return Err(Status::unauthenticated(format!(
                "{username} is not a service account"
            )));
        };
        let identity = format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain);
        let extra = user.extra.unwrap_or_default();
        let first = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        let node = if (ns, sa) == (self.ztunnel.0.as_str(), self.ztunnel.1.as_str()) {
            match (first(NODE_NAME), first(POD_NAME)) {
                (Some(node), _) => Some(node),
                (None, Some(pod)) => Some(self.node_of(ns, &pod, first(POD_UID)).await?),
                (None, None) => return Err(Status::permission_denied(
                    "ztunnel's token is not bound to a pod; use a projected service-account token",
                )),
            }
        } else {
            None
        };
        Ok(Caller {
            node,
            identity: Some(identity),
        })
    }

    /// The node of the pod a token is bound to (checking its uid, so a recreated pod of the
    /// same name does not inherit the token).
    async fn node_of(&self, ns: &str, pod: &str, uid: Option<String>) -> Result<String, Status> {
        let p = Api::<Pod>::namespaced(self.client.clone(), ns)
            .get(pod)
            .await
            .map_err(|e| Status::permission_denied(format!("ztunnel pod {ns}/{pod}: {e}")))?;
        if uid.is_some() && p.metadata.uid != uid {
            return Err(Status::permission_denied(format!(
                "ztunnel pod {ns}/{pod} was replaced since its token was issued"
            )));
        }
        p.spec
            .and_then(|s| s.node_name)
            .ok_or_else(|| Status::permission_denied(format!("ztunnel pod {ns}/{pod} has no node")))
    }
}

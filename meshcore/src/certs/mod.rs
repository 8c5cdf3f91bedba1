//! Workload certificates: a provider that can issue one for an identity, and a manager that
//! fetches on first use, caches per identity and renews at half-life.
//!
//! The provider is a trait so the local CA (this file) and the remote CA client (istiod-lite's
//! CreateCertificate) plug in the same way. Renewal failures keep the valid certificate and
//! retry with capped exponential backoff.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use crate::identity::SpiffeId;
use crate::pki::{CertificateAuthority, Validity};
use crate::tls::{Credentials, TrustRoots, WorkloadCert};
use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::OnceCell;

pub mod remote;

pub type IssueFuture<'a> = Pin<Box<dyn Future<Output = Result<WorkloadCert, String>> + Send + 'a>>;

/// Where a process gets its workload certificates, as ztunnel's and the waypoint's settings
/// say it: the control plane's certificate service, a CA directory, or (development only) a CA
/// held in memory.
pub enum CaSource<'a> {
    Remote {
        control: crate::control::ControlPlane,
        /// Bearer token file, re-read per request.
        token_file: std::path::PathBuf,
        /// The mesh root, PEM: what peers' certificates chain to.
        root_pem: &'a str,
        cluster_id: &'a str,
    },
    Dir(&'a Path),
    InMemory,
}

impl CaSource<'_> {
    /// The provider for this source, issuing certificates of `ttl` in `trust_domain`.
    pub fn provider(
        self,
        trust_domain: &str,
        ttl: Duration,
    ) -> Result<Arc<dyn CertificateProvider>, String> {
        Ok(match self {
            CaSource::Remote {
                control,
                token_file,
                root_pem,
                cluster_id,
            } => Arc::new(remote::RemoteCa::new(
                control.channel()?,
                token_file,
                cluster_id.to_owned(),
                ttl,
                TrustRoots::from_pem(root_pem).map_err(|e| format!("mesh root: {e}"))?,
            )),
            CaSource::Dir(dir) => Arc::new(LocalCa::from_dir(dir, trust_domain, ttl)?),
            CaSource::InMemory => {
                tracing::warn!("no CA_DIR or CA_ADDRESS: an in-memory development CA that only this process trusts");
                Arc::new(LocalCa::generate(trust_domain, ttl)?)
            }
        })
    }
}

/// Something that can issue a certificate for a workload identity.
pub trait CertificateProvider: Send + Sync + 'static {
    fn issue<'a>(&'a self, id: &'a SpiffeId) -> IssueFuture<'a>;
    /// The mesh roots peers are verified against.
    fn roots(&self) -> TrustRoots;
}

/// A CA held in this process: from Istio's `cacerts` files, or generated for development.
pub struct LocalCa {
    ca: CertificateAuthority,
    roots: TrustRoots,
    ttl: Duration,
}

impl LocalCa {
    pub fn new(ca: CertificateAuthority, ttl: Duration) -> Result<Self, String> {
        let roots = TrustRoots::from_pem(ca.root_pem()).map_err(|e| format!("CA roots: {e}"))?;
        Ok(Self { ca, roots, ttl })
    }

    /// A development root in memory; only this process trusts it.
    pub fn generate(trust_domain: &str, ttl: Duration) -> Result<Self, String> {
        let ca = CertificateAuthority::generate_root(trust_domain, crate::pki::DEV_ROOT_TTL)
            .map_err(|e| format!("generating a development CA: {e}"))?;
        Self::new(ca, ttl)
    }

    /// Loads the CA from `dir` (Istio's `cacerts` layout). An absent or empty directory gets a
    /// generated development root written into it first (atomically, so ztunnels started
    /// together end up sharing one root).
    pub fn from_dir(dir: &Path, trust_domain: &str, ttl: Duration) -> Result<Self, String> {
        let (ca, generated) = CertificateAuthority::load_or_generate_dir(dir, trust_domain)
            .map_err(|e| format!("CA in {}: {e}", dir.display()))?;
        if generated {
            tracing::warn!(dir = %dir.display(), "generated a development root CA; use a real one in production");
        }
        Self::new(ca, ttl)
    }

    pub fn authority(&self) -> &CertificateAuthority {
        &self.ca
    }
}

impl CertificateProvider for LocalCa {
    fn issue<'a>(&'a self, id: &'a SpiffeId) -> IssueFuture<'a> {
        Box::pin(async move {
            WorkloadCert::issue(&self.ca, id, Validity::from_now(self.ttl))
                .map_err(|e| format!("issuing certificate for {id}: {e}"))
        })
    }

    fn roots(&self) -> TrustRoots {
        self.roots.clone()
    }
}

/// One identity's certificate as the admin dump shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertStatus {
    pub identity: String,
    pub not_before: String,
    pub not_after: String,
    pub renew_at: String,
    pub renewals: u64,
    pub last_error: Option<String>,
}

struct Entry {
    cell: OnceCell<Arc<Credentials>>,
    status: std::sync::Mutex<Option<CertStatus>>,
}

/// Caches credentials per identity and keeps them fresh.
pub struct CertManager {
    provider: Arc<dyn CertificateProvider>,
    /// Copy-on-write map: lookups on the connection path are lock-free.
    entries: ArcSwap<HashMap<SpiffeId, Arc<Entry>>>,
    backoff_cap: Duration,
}

impl CertManager {
    pub fn new(provider: Arc<dyn CertificateProvider>) -> Arc<Self> {
        Arc::new(Self {
            provider,
            entries: ArcSwap::default(),
            backoff_cap: Duration::from_secs(60),
        })
    }

    /// The credentials for `id`, issuing them on first use. Concurrent first callers share one
    /// issuance; a failed issuance is retried by the next caller.
    pub async fn credentials(self: &Arc<Self>, id: &SpiffeId) -> Result<Arc<Credentials>, String> {
        let entry = self.entry(id);
        if let Some(creds) = entry.cell.get() {
            return Ok(creds.clone());
        }
        let creds = entry
            .cell
            .get_or_try_init(|| async {
                let cert = self.provider.issue(id).await?;
                let renew_at = renewal_time(&cert, SystemTime::now());
                set_status(&entry, &cert, renew_at, 0, None);
                let creds = Credentials::new(cert, self.provider.roots());
                tokio::spawn(renew_loop(
                    Arc::downgrade(self),
                    id.clone(),
                    Arc::downgrade(&entry),
                    creds.clone(),
                    renew_at,
                ));
                Ok::<_, String>(creds)
            })
            .await?;
        Ok(creds.clone())
    }

    fn entry(&self, id: &SpiffeId) -> Arc<Entry> {
        if let Some(e) = self.entries.load().get(id) {
            return e.clone();
        }
        let fresh = Arc::new(Entry {
            cell: OnceCell::new(),
            status: std::sync::Mutex::new(None),
        });
        let mut chosen = fresh.clone();
        self.entries.rcu(|map| {
            let mut map = HashMap::clone(map);
            chosen = map
                .entry(id.clone())
                .or_insert_with(|| fresh.clone())
                .clone();
            map
        });
        chosen
    }

    /// Every identity with a certificate, for the admin dump.
    pub fn status(&self) -> Vec<CertStatus> {
        let mut all: Vec<CertStatus> = self
            .entries
            .load()
            .values()
            .filter_map(|e| e.status.lock().expect("status lock").clone())
            .collect();
        all.sort_by(|a, b| a.identity.cmp(&b.identity));
        all
    }

    /// Stops keeping `id`'s certificate: no more renewals (its renewal task ends at its next
    /// wake-up), and the next [`Self::credentials`] issues afresh. Connections holding the
    /// credentials keep them until they end. For an identity whose last pod has left: renewing
    /// it would be refused by the CA forever.
    pub fn forget(&self, id: &SpiffeId) {
        if !self.entries.load().contains_key(id) {
            return;
        }
        self.entries.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(id);
            map
        });
    }

    /// Whether a certificate for `id` has been issued.
    pub fn has(&self, id: &SpiffeId) -> bool {
        self.entries
            .load()
            .get(id)
            .is_some_and(|e| e.cell.initialized())
    }
}

/// Half-way between now (when the certificate arrived) and its expiry: the certificate's own
/// not-before is back-dated for clock skew and would make short-lived certificates renew at once.
fn renewal_time(cert: &WorkloadCert, received: SystemTime) -> SystemTime {
    let left = cert
        .not_after()
        .duration_since(received)
        .unwrap_or_default();
    received + (left / 2).max(Duration::from_secs(1))
}

fn set_status(
    entry: &Entry,
    cert: &WorkloadCert,
    renew_at: SystemTime,
    renewals: u64,
    error: Option<String>,
) {
    *entry.status.lock().expect("status lock") = Some(CertStatus {
        identity: cert.identity().to_string(),
        not_before: rfc3339(cert.not_before()),
        not_after: rfc3339(cert.not_after()),
        renew_at: rfc3339(renew_at),
        renewals,
        last_error: error,
    });
}

pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".into())
}

async fn renew_loop(
    manager: Weak<CertManager>,
    id: SpiffeId,
    entry: Weak<Entry>,
    creds: Arc<Credentials>,
    mut renew_at: SystemTime,
) {
    let mut renewals = 0;
    let mut backoff = Duration::from_secs(1);
    loop {
        let wait = renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(wait).await;
        let (Some(manager), Some(entry)) = (manager.upgrade(), entry.upgrade()) else {
            return;
        };
        match manager.provider.issue(&id).await {
            Ok(cert) => match creds.rotate(cert) {
                Ok(()) => {
                    renewals += 1;
                    backoff = Duration::from_secs(1);
                    let current = creds.snapshot().cert.clone();
                    renew_at = renewal_time(&current, SystemTime::now());
                    set_status(&entry, &current, renew_at, renewals, None);
                    tracing::debug!(identity = %id, "certificate renewed");
                }
                Err(e) => {
                    tracing::error!(identity = %id, retry_in = ?backoff, "renewed certificate refused: {e}");
                    renew_at = SystemTime::now() + backoff;
                    backoff = (backoff * 2).min(manager.backoff_cap);
                }
            },
            Err(e) => {
                // Keep serving with the valid certificate; try again soon.
                tracing::warn!(identity = %id, retry_in = ?backoff, "certificate renewal failed: {e}");
                let current = creds.snapshot().cert.clone();
                renew_at = SystemTime::now() + backoff;
                set_status(&entry, &current, renew_at, renewals, Some(e));
                backoff = (backoff * 2).min(manager.backoff_cap);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn issues_once_per_identity_and_renews_at_half_life() {
        let ca = LocalCa::generate("cluster.local", Duration::from_secs(2)).unwrap();
        let manager = CertManager::new(Arc::new(ca));
        let id = SpiffeId::new("cluster.local", "default", "sleep").unwrap();
        let (a, b) = tokio::join!(manager.credentials(&id), manager.credentials(&id));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(Arc::ptr_eq(&a, &b), "concurrent callers share one issuance");
        assert!(manager.has(&id));
        let first = a.snapshot().cert.not_after();
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert!(
            a.snapshot().cert.not_after() > first,
            "renewed after about 1 s"
        );
        assert_eq!(manager.status()[0].renewals, 1);
    }

    /// Counts issuances.
    struct Counting(LocalCa, std::sync::atomic::AtomicUsize);

    impl CertificateProvider for Counting {
        fn issue<'a>(&'a self, id: &'a SpiffeId) -> IssueFuture<'a> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.issue(id)
        }

        fn roots(&self) -> TrustRoots {
            self.0.roots()
        }
    }

    #[tokio::test]
    async fn a_forgotten_identity_is_not_renewed() {
        let ca = LocalCa::generate("cluster.local", Duration::from_secs(2)).unwrap();
        let counting = Arc::new(Counting(ca, Default::default()));
        let manager = CertManager::new(counting.clone());
        let id = SpiffeId::new("cluster.local", "default", "gone").unwrap();
        let held = manager.credentials(&id).await.unwrap();
        manager.forget(&id);
        assert!(!manager.has(&id) && manager.status().is_empty());
        // Past the half-life: no renewal was asked for.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert_eq!(counting.1.load(std::sync::atomic::Ordering::Relaxed), 1);
        // A connection still holding the credentials keeps them (they are not torn down).
        assert_eq!(held.snapshot().cert.identity(), &id);
    }

    #[test]
    fn dev_ca_in_a_directory_is_shared() {
        let dir = std::env::temp_dir().join(format!("zt-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = LocalCa::from_dir(&dir, "cluster.local", Duration::from_secs(60)).unwrap();
        let b = LocalCa::from_dir(&dir, "cluster.local", Duration::from_secs(60)).unwrap();
        assert_eq!(a.authority().root_pem(), b.authority().root_pem());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

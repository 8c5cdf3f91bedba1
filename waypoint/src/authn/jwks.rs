//! Key sets: inline ones parsed with the configuration, remote ones (`jwksUri`, or the issuer's
//! OpenID discovery document) fetched in the background, cached and refreshed.
//!
//! A remote key set lives in a [`RemoteKeys`] shared by every configuration that names it, so a
//! configuration change does not refetch it; its fetch task ends when no configuration holds it
//! any more. Requests read the keys lock-free. Until a first fetch succeeds, tokens of that
//! issuer are refused (fail closed); after, a failed refresh keeps the last good keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use serde_json::json;

use super::token::NO_KEYS_YET;
use super::Refused;

/// How often a fetched key set is fetched again (Istio's default refresh interval).
const REFRESH: Duration = Duration::from_secs(20 * 60);
/// First retry after a failed fetch; doubled up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// A key set larger than this is refused.
const MAX_BODY: usize = 1 << 20;

/// Where a rule's keys come from.
#[derive(Debug)]
pub(super) enum KeySource {
    Inline(Arc<JwkSet>),
    Remote(Arc<RemoteKeys>),
    /// Unusable as written: every token of the issuer is refused.
    Broken(String),
}

impl KeySource {
    pub fn inline(text: &str) -> Result<Self, String> {
        parse_jwks(text.as_bytes()).map(|k| KeySource::Inline(Arc::new(k)))
    }

    /// The keys to verify with now.
    pub fn keys(&self) -> Result<Arc<JwkSet>, Refused> {
        match self {
            KeySource::Inline(keys) => Ok(keys.clone()),
            KeySource::Remote(remote) => remote.keys.load_full().ok_or(NO_KEYS_YET),
            KeySource::Broken(_) => Err(super::token::NO_KEY),
        }
    }

    pub fn describe(&self) -> serde_json::Value {
        match self {
            KeySource::Inline(keys) => json!({"inline": keys.keys.len()}),
            KeySource::Broken(e) => json!({"error": e}),
            KeySource::Remote(r) => {
                let status = r.status.lock().expect("status lock").clone();
                json!({
                    "uri": r.source.describe(),
                    "keys": r.keys.load().as_ref().map(|k| k.keys.len()),
                    "fetchedAtUnix": status.fetched_at.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                    "lastError": status.error,
                })
            }
        }
    }
}

fn parse_jwks(body: &[u8]) -> Result<JwkSet, String> {
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    if set.keys.is_empty() {
        return Err("the key set has no keys".into());
    }
    Ok(set)
}

/// A remote key set's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum RemoteSource {
    Uri(http::Uri),
    /// `<issuer>/.well-known/openid-configuration`, whose `jwks_uri` names the key set.
    Discovery(http::Uri),
}

impl RemoteSource {
    pub fn uri(text: &str) -> Result<Self, String> {
        fetchable(text).map(RemoteSource::Uri)
    }

    pub fn discovery(issuer: &str) -> Result<Self, String> {
        fetchable(&format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ))
        .map(RemoteSource::Discovery)
    }

    fn describe(&self) -> String {
        match self {
            RemoteSource::Uri(u) => u.to_string(),
            RemoteSource::Discovery(u) => format!("{u} (OpenID discovery)"),
        }
    }
}

fn fetchable(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(format!("{text:?} is not an http(s) URL")),
    }
}

#[derive(Debug, Clone, Default)]
struct FetchStatus {
    fetched_at: Option<SystemTime>,
    error: Option<String>,
}

/// One remote key set, shared by the configurations that name it.
#[derive(Debug)]
pub(super) struct RemoteKeys {
    source: RemoteSource,
    timeout: Duration,
    keys: ArcSwapOption<JwkSet>,
    status: Mutex<FetchStatus>,
}

/// The remote key sets in use, by address.
#[derive(Default)]
pub struct JwksCache {
    entries: Mutex<HashMap<RemoteSource, Weak<RemoteKeys>>>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwksCache")
    }
}

impl JwksCache {
    /// The shared entry for `source`, starting its fetch task if it is new (and a runtime is
    /// there to run it: pure unit tests compile configurations without one).
    pub(super) fn handle(&self, source: RemoteSource, timeout: Duration) -> Arc<RemoteKeys> {
        let mut entries = self.entries.lock().expect("jwks cache lock");
        entries.retain(|_, w| w.strong_count() > 0);
        if let Some(existing) = entries.get(&source).and_then(Weak::upgrade) {
            return existing;
        }
        let keys = Arc::new(RemoteKeys {
            source: source.clone(),
            timeout,
            keys: ArcSwapOption::empty(),
            status: Mutex::new(FetchStatus::default()),
        });
        entries.insert(source, Arc::downgrade(&keys));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(keep_fresh(Arc::downgrade(&keys)));
        }
        keys
    }
}

/// Fetches the key set, then again every [`REFRESH`]; retries failures with backoff. Ends when
/// no configuration holds the entry.
async fn keep_fresh(entry: Weak<RemoteKeys>) {
    let mut retry = FIRST_RETRY;
    loop {
        let Some(keys) = entry.upgrade() else { return };
        let result = fetch(&keys.source, keys.timeout).await;
        let wait = {
            let mut status = keys.status.lock().expect("status lock");
            match result {
                Ok(set) => {
                    keys.keys.store(Some(Arc::new(set)));
                    status.fetched_at = Some(SystemTime::now());
                    status.error = None;
                    retry = FIRST_RETRY;
                    REFRESH
                }
                Err(e) => {
                    tracing::warn!(jwks = %keys.source.describe(), "fetching the key set failed: {e}");
                    status.error = Some(e);
                    let wait = retry;
                    retry = (retry * 2).min(MAX_RETRY);
                    wait
                }
            }
        };
        drop(keys);
        tokio::time::sleep(wait).await;
    }
}

async fn fetch(source: &RemoteSource, timeout: Duration) -> Result<JwkSet, String> {
    let jwks_uri = match source {
        RemoteSource::Uri(uri) => uri.clone(),
        RemoteSource::Discovery(uri) => {
            let body = get(uri, timeout).await?;
            let doc: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| format!("{uri}: not a discovery document: {e}"))?;
            let text = doc
                .get("jwks_uri")
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("{uri}: the discovery document has no jwks_uri"))?;
            fetchable(text)?
        }
    };
    let body = get(&jwks_uri, timeout).await?;
    parse_jwks(&body).map_err(|e| format!("{jwks_uri}: {e}"))
}

/// One GET over HTTP/1.1 (TLS for https, trusting the system's roots), bounded in time and size.
async fn get(uri: &http::Uri, timeout: Duration) -> Result<Bytes, String> {
    tokio::time::timeout(timeout, get_unbounded(uri))
        .await
        .map_err(|_| format!("{uri}: no answer within {timeout:?}"))?
}

async fn get_unbounded(uri: &http::Uri) -> Result<Bytes, String> {
    let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| format!("{uri}: {e}"))?;
    let request = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            uri.authority().map_or(host, |a| a.as_str()),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{uri}: {e}"))?;
    let response = if tls {
        let name = rustls_pki_types::ServerName::try_from(bare_host.to_owned())
            .map_err(|e| format!("{uri}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(https_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{uri}: TLS: {e}"))?;
        send(TokioIo::new(stream), request).await
    } else {
        send(TokioIo::new(tcp), request).await
    }
    .map_err(|e| format!("{uri}: {e}"))?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("{uri}: answered {}", response.status()));
    }
    Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| format!("{uri}: reading the body: {e}"))
}

async fn send<T>(
    io: T,
    request: http::Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

/// The client configuration for https key sets: the system's roots (`SSL_CERT_FILE` /
/// `SSL_CERT_DIR` override them, as for other TLS clients).
fn https_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no trusted root certificates on this system".to_owned());
            }
            let config = rustls::ClientConfig::builder_with_provider(meshcore::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

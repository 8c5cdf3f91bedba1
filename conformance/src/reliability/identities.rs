//! Refused identities: each wrong way of proving who one is, tried against the running mesh:
//! on the server ztunnel's HBONE port (15008) with certificates minted here, and on istiod-lite's
//! certificate service (15012) with the wrong token or for the wrong node's pod. Each attempt
//! must be refused, counted in a metric the mesh exports, and logged with its reason.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use meshcore::certs::remote::RemoteCa;
use meshcore::certs::CertificateProvider;
use meshcore::control::ControlPlane;
use meshcore::hbone::{ClientSettings, ConnectRequest, HboneClient};
use meshcore::identity::SpiffeId;
use meshcore::pki::{CertificateAuthority, Validity};
use meshcore::tls::{Credentials, TrustRoots, WorkloadCert};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::harness::{http_get, metric, Mesh, Process, CONTROL, ECHO_PORT, SERVER};

/// What the server ztunnel logs for a refused HBONE handshake, and the metric counting it.
const HBONE_LOG: &str = "TLS handshake refused: ";
const HBONE_METRIC: &str = "ztunnel_hbone_handshake_failures_total";
/// What istiod-lite logs and counts for a refused certificate request.
const CA_LOG: &str = "certificate request refused: ";
const CA_METRIC: &str = "istiod_lite_certificates_refused_total";

pub const TD: &str = "cluster.local";

pub fn spiffe(td: &str, sa: &str) -> SpiffeId {
    format!("spiffe://{td}/ns/shop/sa/{sa}")
        .parse()
        .expect("a valid SPIFFE ID")
}

/// This mesh's CA, from the mesh's directory (Istio's cacerts layout).
pub fn mesh_ca(mesh: &Mesh) -> Result<CertificateAuthority, String> {
    CertificateAuthority::from_istio_dir(&mesh.dir.join("ca")).map_err(|e| format!("mesh CA: {e}"))
}

/// One attempt's outcome, as the row shows it.
struct Attempt {
    name: &'static str,
    /// Ok(how it was refused) or Err(what was accepted).
    refused: Result<String, String>,
    counted: Option<String>,
    logged: Option<String>,
}

impl Attempt {
    fn ok(&self) -> bool {
        self.refused.is_ok() && self.counted.is_some() && self.logged.is_some()
    }

    fn show(&self) -> String {
        let refused = match &self.refused {
            Ok(how) => format!("refused ({})", short(how, 70)),
            Err(what) => format!("ACCEPTED ({})", short(what, 70)),
        };
        format!(
            "{}: {refused}, {}, log \"{}\"",
            self.name,
            self.counted.as_deref().unwrap_or("NOT COUNTED"),
            self.logged
                .as_deref()
                .map(|l| short(l, 90))
                .unwrap_or_else(|| "NOT LOGGED".into())
        )
    }
}

fn short(s: &str, n: usize) -> String {
    let s = s.trim();
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Every attempt in turn; the case fails if any was accepted, or a refusal went uncounted or
/// unlogged.
pub async fn refused_identities(mesh: &Mesh) -> Result<String, String> {
    let ca = mesh_ca(mesh)?;
    let roots = TrustRoots::from_pem(ca.root_pem()).map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let cert = |ca: &CertificateAuthority, id: &SpiffeId, v: Validity| {
        WorkloadCert::issue(ca, id, v).map_err(|e| format!("minting {id}: {e}"))
    };
    let valid = Validity::from_now(hour);
    let foreign = CertificateAuthority::generate_root("evil.example", hour)
        .map_err(|e| format!("foreign CA: {e}"))?;
    let impostor_ca =
        CertificateAuthority::generate_root(TD, hour).map_err(|e| format!("impostor CA: {e}"))?;
    let client_id = spiffe(TD, "client");

    let mut attempts = Vec::new();
    let plain = async {
        let mut t = TcpStream::connect((SERVER, 15008))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = t.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut got = Vec::new();
        match tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut got)).await {
            Err(_) => Err("still open after 5 s".to_owned()),
            Ok(_) if got.starts_with(b"HTTP/") => Err(format!(
                "answered {:?}",
                String::from_utf8_lossy(&got[..got.len().min(20)])
            )),
            Ok(_) => Ok("closed, no answer".to_owned()),
        }
    };
    attempts.push(hbone_attempt(mesh, "plaintext to 15008", plain).await?);
    let no_cert = raw_tls(None);
    attempts.push(hbone_attempt(mesh, "TLS without a client certificate", no_cert).await?);
    let other_td = cert(&foreign, &spiffe("evil.example", "client"), valid)?;
    let attempt = via_hbone(other_td, &roots);
    attempts.push(hbone_attempt(mesh, "another trust domain (its own CA)", attempt).await?);
    let impostor = cert(&impostor_ca, &client_id, valid)?;
    let attempt = via_hbone(impostor, &roots);
    attempts.push(hbone_attempt(mesh, "another CA naming cluster.local", attempt).await?);
    let expired = Validity {
        not_before: now - 2 * hour,
        not_after: now - hour,
    };
    let attempt = via_hbone(cert(&ca, &client_id, expired)?, &roots);
    attempts.push(hbone_attempt(mesh, "expired (this CA)", attempt).await?);
    let early = Validity {
        not_before: now + hour,
        not_after: now + 2 * hour,
    };
    let attempt = via_hbone(cert(&ca, &client_id, early)?, &roots);
    attempts.push(hbone_attempt(mesh, "not yet valid (this CA)", attempt).await?);
    let attempt = via_hbone(cert(&ca, &spiffe("evil.example", "client"), valid)?, &roots);
    attempts.push(hbone_attempt(mesh, "SAN of another trust domain (this CA)", attempt).await?);
    let (chain, key) = non_spiffe_cert(mesh)?;
    let attempt = raw_tls(Some((chain, key)));
    attempts.push(hbone_attempt(mesh, "non-SPIFFE URI SAN (this CA)", attempt).await?);

    // The certificate service.
    let control = control_plane(ca.root_pem())?;
    let remote_id = spiffe(TD, "remote");
    let node1 = remote_ca(&control, &mesh.dir.join("node.token"), &roots)?;
    let node2 = remote_ca(&control, &mesh.dir.join("node-2.token"), &roots)?;
    // The control: node-2's ztunnel may have the identity, so a refusal below is about the node.
    node2
        .issue(&remote_id)
        .await
        .map_err(|e| format!("node-2's token was refused its own pod's identity: {e}"))?;
    let attempt = async {
        match node1.issue(&remote_id).await {
            Ok(_) => Err(format!("{remote_id} issued to node-1")),
            Err(e) => Ok(after(&e, "CA refused ")),
        }
    };
    attempts.push(ca_attempt(mesh, "CSR for node-2's pod with node-1's token", attempt).await?);
    let bad = mesh.dir.join("bad.token");
    std::fs::write(&bad, "not-a-token-the-mesh-knows-0123456789\n").map_err(|e| e.to_string())?;
    let stranger = remote_ca(&control, &bad, &roots)?;
    let attempt = async {
        match stranger.issue(&client_id).await {
            Ok(_) => Err(format!("{client_id} issued to an unknown token")),
            Err(e) => Ok(after(&e, "CA refused ")),
        }
    };
    attempts.push(ca_attempt(mesh, "an invalid token", attempt).await?);

    let failed: Vec<String> = attempts
        .iter()
        .filter(|a| !a.ok())
        .map(Attempt::show)
        .collect();
    if !failed.is_empty() {
        return Err(format!(
            "{} of {} attempts not refused, counted and logged: {}\n{}",
            failed.len(),
            attempts.len(),
            failed.join("; "),
            mesh.tails()
        ));
    }
    let lines: Vec<String> = attempts.iter().map(Attempt::show).collect();
    Ok(format!(
        "{} of {} refused, counted, logged: {}; token for the wrong audience: not run here \
         (manifest-directory mode has bootstrap tokens, no TokenReview): proved by istiod-lite \
         tests/it/kube.rs ca_lives_in_secrets_and_callers_pass_token_review (audience \
         `kubernetes` and no audiences: Unauthenticated, counted in the CA's refused count)",
        attempts.len(),
        attempts.len(),
        lines.join("; ")
    ))
}

/// The text after `marker` in `s` (all of `s` without it).
fn after(s: &str, marker: &str) -> String {
    s.split_once(marker)
        .map(|(_, rest)| rest)
        .unwrap_or(s)
        .to_owned()
}

/// istiod-lite's 15012 as a ztunnel reaches it, trusting `root_pem`.
pub fn control_plane(root_pem: &str) -> Result<ControlPlane, String> {
    Ok(ControlPlane {
        address: format!("{CONTROL}:15012"),
        server_name: meshcore::tls::control::ISTIOD_SERVER_NAME.to_owned(),
        tls: meshcore::tls::control::control_client_config(root_pem).map_err(|e| e.to_string())?,
    })
}

fn remote_ca(control: &ControlPlane, token: &Path, roots: &TrustRoots) -> Result<RemoteCa, String> {
    Ok(RemoteCa::new(
        control.channel()?,
        token.to_owned(),
        "Kubernetes".into(),
        Duration::from_secs(3600),
        roots.clone(),
    ))
}

/// An HBONE tunnel to the server's echo presenting `cert`; the client trusts this mesh's roots
/// (so it gets as far as presenting its certificate).
async fn via_hbone(cert: WorkloadCert, roots: &TrustRoots) -> Result<String, String> {
    let req = ConnectRequest {
        credentials: Credentials::new(cert, roots.clone()),
        expected: vec![spiffe(TD, "server")],
        hbone_addr: SocketAddr::new(SERVER, 15008),
        target: SocketAddr::new(SERVER, ECHO_PORT),
        source: None,
        bind_ip: None,
        dialer: None,
        baggage: None,
        trace: None,
    };
    match HboneClient::new(ClientSettings::default())
        .connect(&req)
        .await
    {
        Ok(_) => Err("a tunnel was opened".into()),
        Err(e) => Ok(after(&e.to_string(), ": ")),
    }
}

/// A TLS 1.3 client on 15008 with `cert` (or none) that accepts any server, for what meshcore's
/// client cannot present. Refused when the server ends the connection instead of speaking HTTP/2.
async fn raw_tls(
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<String, String> {
    let builder = rustls::ClientConfig::builder_with_provider(meshcore::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
    let mut config = match cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![meshcore::tls::ALPN_H2.to_vec()];
    let tcp = TcpStream::connect((SERVER, 15008))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = match connector
        .connect(ServerName::IpAddress(SERVER.into()), tcp)
        .await
    {
        Ok(tls) => tls,
        Err(e) => return Ok(e.to_string()),
    };
    // TLS 1.3: the server judges the client's certificate after the client thinks it is done;
    // an accepted client would get the server's HTTP/2 SETTINGS.
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(0)) => Ok("closed after the handshake".into()),
        Ok(Err(e)) => Ok(e.to_string()),
        Ok(Ok(n)) => Err(format!("the server spoke HTTP/2 ({n} bytes)")),
        Err(_) => Err("the connection stayed open 5 s".into()),
    }
}

/// A certificate signed by this mesh's CA whose only SAN is a URI that is not a SPIFFE ID, with
/// clientAuth, so only the SAN is wrong. meshcore's CA signs SPIFFE IDs only, hence rcgen.
fn non_spiffe_cert(
    mesh: &Mesh,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let read = |name: &str| {
        std::fs::read_to_string(mesh.dir.join("ca").join(name)).map_err(|e| format!("{name}: {e}"))
    };
    let ca_key = KeyPair::from_pem(&read("ca-key.pem")?).map_err(|e| e.to_string())?;
    let issuer =
        Issuer::from_ca_cert_pem(&read("ca-cert.pem")?, ca_key).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        "https://shop.example/client"
            .try_into()
            .map_err(|e: rcgen::Error| e.to_string())?,
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let leaf = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| e.to_string())?;
    Ok((vec![leaf.der().clone()], key))
}

/// Runs one attempt on 15008 and finds its count and log line on the server ztunnel.
async fn hbone_attempt(
    mesh: &Mesh,
    name: &'static str,
    attempt: impl std::future::Future<Output = Result<String, String>>,
) -> Result<Attempt, String> {
    let read = || async { metric(SERVER, HBONE_METRIC).await };
    observe(name, &mesh.server, HBONE_LOG, HBONE_METRIC, &read, attempt).await
}

/// Runs one attempt on the certificate service and finds its count and log line on istiod-lite.
async fn ca_attempt(
    mesh: &Mesh,
    name: &'static str,
    attempt: impl std::future::Future<Output = Result<String, String>>,
) -> Result<Attempt, String> {
    let control = mesh.control.as_ref().ok_or("istiod-lite is not running")?;
    let read = || async { control_metric(CA_METRIC).await };
    observe(name, control, CA_LOG, CA_METRIC, &read, attempt).await
}

async fn observe<F, Fut>(
    name: &'static str,
    process: &Process,
    needle: &str,
    metric_name: &str,
    read: &F,
    attempt: impl std::future::Future<Output = Result<String, String>>,
) -> Result<Attempt, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<f64, String>>,
{
    let count_before = read().await?;
    let logged_before = process.log_count(needle);
    let refused = attempt.await;
    // The count and the log line follow the refusal within moments.
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut counted, mut logged) = (None, None);
    loop {
        let now = read().await?;
        if counted.is_none() && now > count_before {
            counted = Some(format!("{metric_name} +{}", now - count_before));
        }
        if logged.is_none() {
            logged = log_lines(process, needle)
                .get(logged_before)
                .map(|l| after(l, needle))
                .map(|l| l.split(" peer_addr=").next().unwrap_or_default().to_owned());
        }
        if (counted.is_some() && logged.is_some()) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Attempt {
        name,
        refused,
        counted,
        logged,
    })
}

fn log_lines(process: &Process, needle: &str) -> Vec<String> {
    std::fs::read_to_string(&process.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// A counter on istiod-lite's 15014 `/metrics`.
pub async fn control_metric(name: &str) -> Result<f64, String> {
    let (_, body) = http_get(SocketAddr::new(CONTROL, 15014), "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("{name} not on istiod-lite's /metrics"))
}

/// Accepts any server certificate: these clients test the server's judgement, not their own.
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        meshcore::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

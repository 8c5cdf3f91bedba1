use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use istiod_lite::sources::dir::DirSource;
use istiod_lite::translate::ClusterInfo;
use istiod_lite::xds::{grpc, XdsServer};
use meshcore::pki::{CertificateAuthority, Validity};
use meshcore::tls::control::{control_server_config, ISTIOD_SERVER_NAME};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// istiod-lite: the mesh's control plane.
///
/// Reads Kubernetes manifests from a directory (Namespaces, Pods with spec.nodeName and
/// status.podIP, Services, AuthorizationPolicies, PeerAuthentications), translates them into
/// the ambient xDS resources and serves them to ztunnels over delta ADS with TLS on the gRPC
/// port. Every flag can also be set through the environment variable shown.
#[derive(Debug, Parser)]
#[command(name = "istiod-lite", version, about, long_about)]
struct Settings {
    /// Directory of Kubernetes manifests (multi-document YAML), re-read when it changes; a
    /// change that does not parse is refused and the last good config stays served.
    #[arg(long, env = "CONFIG_DIR")]
    config_dir: PathBuf,

    /// Directory holding the mesh CA in Istio's `cacerts` layout (ca-cert.pem, ca-key.pem,
    /// cert-chain.pem, root-cert.pem; RSA or ECDSA). Empty or absent: a root is generated
    /// and persisted there, so restarts keep it. ztunnels verify istiod-lite against its root.
    #[arg(long, env = "CA_DIR")]
    ca_dir: PathBuf,

    /// Bootstrap tokens for the certificate service, `<node> <token>` per line: a ztunnel
    /// presenting a node's token may obtain certificates for the pods on that node. Without
    /// this file the certificate service is off.
    #[arg(long, env = "BOOTSTRAP_TOKENS")]
    bootstrap_tokens: Option<PathBuf>,

    /// gRPC over TLS (delta xDS, certificates), Istio's 15012.
    #[arg(long, env = "GRPC_ADDRESS", default_value = "0.0.0.0:15012")]
    grpc_address: SocketAddr,

    /// Plain HTTP: /ready, /metrics, /debug/clients, /debug/resources, /debug/config.
    #[arg(long, env = "HTTP_ADDRESS", default_value = "0.0.0.0:15014")]
    http_address: SocketAddr,

    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,

    /// Cluster name put on workloads.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,

    /// DNS suffix of Services.
    #[arg(long, env = "DOMAIN_SUFFIX", default_value = "cluster.local")]
    domain: String,

    /// Namespace whose policies apply mesh-wide.
    #[arg(long, env = "ROOT_NAMESPACE", default_value = "istio-system")]
    root_namespace: String,

    /// How often the manifest directory is checked for changes.
    #[arg(long, env = "CONFIG_POLL_MS", default_value_t = 200)]
    poll_ms: u64,

    /// Log filter (`RUST_LOG` syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,
}

fn main() -> std::process::ExitCode {
    let s = Settings::parse();
    let filter = match EnvFilter::try_new(&s.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("istiod-lite: invalid log level {:?}: {e}", s.log_level);
            return std::process::ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(s)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("istiod-lite: {e}");
            eprintln!("istiod-lite: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(s: Settings) -> Result<(), String> {
    let (ca, generated) = CertificateAuthority::load_or_generate_dir(&s.ca_dir, &s.trust_domain)
        .map_err(|e| format!("CA_DIR {}: {e}", s.ca_dir.display()))?;
    if generated {
        tracing::warn!(dir = %s.ca_dir.display(), "generated a root CA and persisted it; bring your own for production");
    }
    let (chain, key) = ca
        .issue_server_cert(
            &[ISTIOD_SERVER_NAME],
            Validity::from_now(Duration::from_secs(365 * 24 * 3600)),
        )
        .map_err(|e| format!("serving certificate: {e}"))?;
    let tls = control_server_config(&chain.to_pem(), &key).map_err(|e| e.to_string())?;

    let info = ClusterInfo {
        trust_domain: s.trust_domain.clone(),
        cluster_id: s.cluster_id.clone(),
        domain: s.domain.clone(),
        root_namespace: s.root_namespace.clone(),
    };
    let mut source = DirSource::new(&s.config_dir, info);
    let status = source.status.clone();
    let first = match source.poll() {
        Ok(Some(set)) => set,
        Ok(None) => unreachable!("the first poll always reads"),
        Err(errors) => {
            return Err(format!(
                "manifests in {}:\n  {}",
                s.config_dir.display(),
                errors.join("\n  ")
            ))
        }
    };
    tracing::info!(
        addresses = first.count(meshcore::api::type_url::ADDRESS),
        authorizations = first.count(meshcore::api::type_url::AUTHORIZATION),
        "config loaded"
    );
    let (publish, resources) = watch::channel(Arc::new(first));
    let xds = XdsServer::new(resources.clone());
    let ca_server = match &s.bootstrap_tokens {
        Some(path) => {
            let tokens = istiod_lite::ca::NodeTokens::from_file(path)?;
            Some(istiod_lite::ca::CaServer::new(
                Arc::new(ca),
                tokens,
                resources.clone(),
            ))
        }
        None => {
            tracing::info!("no BOOTSTRAP_TOKENS: certificate service off");
            None
        }
    };
    let http_ctx = Arc::new(istiod_lite::http::HttpContext {
        clients: xds.clients.clone(),
        resources,
        source: status,
    });

    let grpc_listener = TcpListener::bind(s.grpc_address)
        .await
        .map_err(|e| format!("binding gRPC on {}: {e}", s.grpc_address))?;
    let http_listener = TcpListener::bind(s.http_address)
        .await
        .map_err(|e| format!("binding HTTP on {}: {e}", s.http_address))?;
    tokio::spawn(istiod_lite::http::serve(http_listener, http_ctx));
    tokio::spawn(source.run(
        Duration::from_millis(s.poll_ms),
        publish,
        std::future::pending(),
    ));
    tracing::info!(grpc = %s.grpc_address, http = %s.http_address, dir = %s.config_dir.display(), "istiod-lite serving");

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    };
    grpc::serve(grpc_listener, tls, xds, ca_server, shutdown)
        .await
        .map_err(|e| format!("gRPC server: {e}"))
}

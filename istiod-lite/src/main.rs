use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use istiod_lite::ca::Authenticator;
use istiod_lite::controller::DeploySettings;
use istiod_lite::http::SourceStatus;
use istiod_lite::sources::dir::DirSource;
use istiod_lite::sources::kube::{KubeOptions, KubeSource};
use istiod_lite::token_review::TokenReviewer;
use istiod_lite::translate::ClusterInfo;
use istiod_lite::xds::{grpc, XdsServer};
use meshcore::pki::{CertificateAuthority, Validity};
use meshcore::tls::control::{control_server_config, ISTIOD_SERVER_NAME};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// istiod-lite: the mesh's control plane.
///
/// Watches the Kubernetes API (--kubernetes) or reads Kubernetes manifests from a directory
/// (--config-dir: Namespaces, Pods with spec.nodeName and status.podIP, Services,
/// AuthorizationPolicies, PeerAuthentications, RequestAuthentications, Gateway API Gateways,
/// HTTPRoutes, GRPCRoutes, ...), translates them into the ambient xDS resources and each
/// waypoint's configuration, and serves them to ztunnels and waypoints over delta ADS with TLS
/// on the gRPC port, next to the certificate service. Every flag can also be set through the
/// environment variable shown.
#[derive(Debug, clap::Parser)]
#[command(name = "istiod-lite", version, about, long_about)]
struct Settings {
    /// Directory of Kubernetes manifests (multi-document YAML), re-read when it changes; a
    /// change that does not parse is refused and the last good config stays served.
    #[arg(long, env = "CONFIG_DIR", conflicts_with = "kubernetes")]
    config_dir: Option<PathBuf>,

    /// Watch the Kubernetes API instead (in-cluster service account, or KUBECONFIG). Policies
    /// get a `ZtunnelAccepted` status condition; waypoint Gateways are deployed and get status,
    /// as do the routes attached to them; callers of the certificate service are authenticated
    /// with TokenReview; the CA lives in Secrets of the root namespace.
    #[arg(long, env = "KUBERNETES")]
    kubernetes: bool,

    /// Directory holding the mesh CA in Istio's `cacerts` layout (ca-cert.pem, ca-key.pem,
    /// cert-chain.pem, root-cert.pem; RSA or ECDSA). Empty or absent: a root is generated
    /// and persisted there, so restarts keep it. ztunnels verify istiod-lite against its root.
    /// With --kubernetes and no --ca-dir: Secret `cacerts`, else `istio-ca-secret` (created
    /// with a generated root at first start) in the root namespace. Without either: `ca/` in
    /// the state directory.
    #[arg(long, env = "CA_DIR")]
    ca_dir: Option<PathBuf>,

    /// Where istiod-lite keeps what must survive a restart when nothing else is given (the
    /// generated root CA, in `ca/`). Default: /var/lib/istiod-lite for root, else
    /// $XDG_STATE_HOME/istiod-lite or ~/.local/state/istiod-lite. Created with mode 0700.
    #[arg(long, env = "STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// Bootstrap tokens for the certificate service and xDS, `<node> <token>` or
    /// `spiffe://<td>/ns/<ns>/sa/<sa> <token>` per line: a ztunnel presenting a node's token
    /// may obtain certificates for the pods on that node; a waypoint presenting an identity's
    /// token may obtain that identity's certificate and read the configuration of the
    /// waypoint Gateways running as it. Without this file (and without --kubernetes) the
    /// certificate service is off.
    #[arg(long, env = "BOOTSTRAP_TOKENS")]
    bootstrap_tokens: Option<PathBuf>,

    /// With --kubernetes: the service account (`namespace/name`) whose pods are ztunnels; a
    /// token of it may obtain certificates for the pods of its own pod's node.
    #[arg(
        long,
        env = "ZTUNNEL_SERVICE_ACCOUNT",
        default_value = "istio-system/ztunnel"
    )]
    ztunnel_service_account: String,

    /// With --kubernetes: do not write status (policies' `ZtunnelAccepted`, waypoint Gateways',
    /// routes').
    #[arg(long, env = "DISABLE_STATUS")]
    no_status: bool,

    /// With --kubernetes: do not deploy waypoints (by default each Gateway of class
    /// istio-waypoint gets a ServiceAccount, Deployment and Service it owns, and its namespace
    /// the istio-ca-root-cert ConfigMap).
    #[arg(long, env = "DISABLE_WAYPOINT_DEPLOYMENT")]
    no_waypoint_deployment: bool,

    /// The image deployed waypoints run.
    #[arg(long, env = "WAYPOINT_IMAGE", default_value = istiod_lite::controller::DEFAULT_WAYPOINT_IMAGE)]
    waypoint_image: String,

    /// istiod-lite's address as deployed waypoints reach it (`host:port` of its Service's
    /// 15012): their XDS_ADDRESS and CA_ADDRESS.
    #[arg(long, env = "DISCOVERY_ADDRESS", default_value = istiod_lite::controller::DEFAULT_DISCOVERY_ADDRESS)]
    discovery_address: String,

    /// OTLP collector deployed waypoints send request spans to (their
    /// OTEL_EXPORTER_OTLP_ENDPOINT), e.g. `http://jaeger-collector.istio-system:4317`; no
    /// tracing when unset.
    #[arg(long, env = "WAYPOINT_OTLP_ENDPOINT")]
    waypoint_otlp_endpoint: Option<String>,

    /// `grpc` or `http/protobuf` (the waypoints' OTEL_EXPORTER_OTLP_PROTOCOL).
    #[arg(long, env = "WAYPOINT_OTLP_PROTOCOL", default_value = "grpc", value_parser = ["grpc", "http/protobuf"])]
    waypoint_otlp_protocol: String,

    /// Share of new traces the waypoints sample, 0 to 1 (their OTEL_TRACES_SAMPLER_ARG).
    #[arg(long, env = "WAYPOINT_TRACE_SAMPLING", default_value = "0.01", value_parser = parse_ratio)]
    waypoint_trace_sampling: String,

    /// gRPC over TLS (delta xDS, certificates), Istio's 15012.
    #[arg(long, env = "GRPC_ADDRESS", default_value = "0.0.0.0:15012")]
    grpc_address: SocketAddr,

    /// How long a gRPC connection (a ztunnel's, a waypoint's) is served before istiod-lite
    /// sends it GOAWAY, jittered by ±10%, so clients reconnect now and then and spread over
    /// the replicas after a scale-out (Istio: `--keepaliveMaxServerConnectionAge`, 30m in its
    /// chart). `0s`: never.
    #[arg(long, env = "KEEPALIVE_MAX_SERVER_CONNECTION_AGE", default_value = "30m", value_parser = duration)]
    keepalive_max_server_connection_age: Duration,

    /// After that GOAWAY, how long streams still open (a ztunnel's xDS stream, a certificate
    /// request) may go on before the connection is closed (Istio: 10s).
    #[arg(long, env = "KEEPALIVE_MAX_SERVER_CONNECTION_AGE_GRACE", default_value = "10s", value_parser = duration)]
    keepalive_max_server_connection_age_grace: Duration,

    /// Plain HTTP: /ready, /metrics, /debug/clients, /debug/resources, /debug/config.
    #[arg(long, env = "HTTP_ADDRESS", default_value = "0.0.0.0:15014")]
    http_address: SocketAddr,

    /// Networks (comma-separated CIDRs, e.g. `10.0.0.0/8`) whose clients may read /debug/*
    /// besides loopback ones; every other client gets 403 there. The debug endpoints list
    /// every workload, policy and connected client of the mesh.
    #[arg(long, env = "DEBUG_ALLOWED_NETWORKS", value_delimiter = ',')]
    debug_allowed_networks: Vec<ipnet::IpNet>,

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

    /// Print the CustomResourceDefinitions of the Istio resources istiod-lite reads (generated
    /// from its own types) as YAML, and exit.
    #[arg(long)]
    print_crds: bool,

    /// Log filter (`RUST_LOG` syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,

    /// Parse and validate the settings (flags and environment), report, and exit without
    /// starting. Files named by settings are not opened.
    #[arg(long)]
    check_config: bool,
}

impl Settings {
    /// Checks what flags alone cannot express.
    fn validate(&self) -> Result<(), String> {
        meshcore::identity::validate_trust_domain(&self.trust_domain)
            .map_err(|e| format!("TRUST_DOMAIN: {e}"))?;
        if self.config_dir.is_none() && !self.kubernetes {
            return Err("give --config-dir DIR (CONFIG_DIR), or --kubernetes (KUBERNETES)".into());
        }
        if self.poll_ms == 0 {
            return Err("CONFIG_POLL_MS must be at least 1".into());
        }
        if !self.ztunnel_service_account.contains('/') {
            return Err(format!(
                "ZTUNNEL_SERVICE_ACCOUNT {:?}: expected namespace/name",
                self.ztunnel_service_account
            ));
        }
        EnvFilter::try_new(&self.log_level)
            .map_err(|e| format!("RUST_LOG {:?}: {e}", self.log_level))?;
        Ok(())
    }

    /// The state directory: the flag, else the default for this user.
    fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return PathBuf::from("/var/lib/istiod-lite");
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state"))
            })
            .unwrap_or_else(std::env::temp_dir);
        base.join("istiod-lite")
    }
}

/// `30m`, `10s`, `1h30m`, `500ms`, `0s` (Gateway API's duration form).
fn duration(s: &str) -> Result<Duration, String> {
    meshcore::l7::duration::parse_duration(s).map_err(|e| e.to_string())
}

/// A sampling ratio, kept as written for the waypoints' environment.
fn parse_ratio(s: &str) -> Result<String, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(s.to_owned()),
        _ => Err(format!("{s}: want a ratio from 0 to 1")),
    }
}

fn main() -> std::process::ExitCode {
    istiod_lite::tune_allocator();
    let meshcore::settings::Parsed {
        settings: s,
        warnings,
    } = meshcore::settings::parse::<Settings>();
    if s.print_crds {
        print!("{}", istiod_lite::crd::crds_yaml());
        return std::process::ExitCode::SUCCESS;
    }
    if s.check_config {
        return meshcore::settings::check_config_report("istiod-lite", s.validate(), &warnings);
    }
    if let Err(e) = s.validate() {
        eprintln!("istiod-lite: {e}");
        return std::process::ExitCode::from(2);
    }
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
    warnings.iter().for_each(|w| tracing::warn!("{w}"));
    meshcore::rlimit::raise_nofile_and_log("istiod-lite");
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

/// The CA of `dir` (Istio's `cacerts` layout), generated and persisted at first start; says
/// where it lives, as ztunnels and waypoints need its root-cert.pem.
fn load_ca_dir(
    dir: &std::path::Path,
    trust_domain: &str,
    what: &str,
) -> Result<CertificateAuthority, String> {
    let (ca, generated) = CertificateAuthority::load_or_generate_dir(dir, trust_domain)
        .map_err(|e| format!("{what} {}: {e}", dir.display()))?;
    let root = dir.join("root-cert.pem");
    if generated {
        tracing::warn!(dir = %dir.display(), root = %root.display(), "generated a root CA and persisted it; bring your own for production");
    } else {
        tracing::info!(dir = %dir.display(), root = %root.display(), "CA loaded");
    }
    Ok(ca)
}

/// Where the config comes from.
enum Source {
    Dir(DirSource),
    Kube(KubeSource),
}

async fn run(s: Settings) -> Result<(), String> {
    let client = if s.kubernetes {
        Some(
            kube::Client::try_default()
                .await
                .map_err(|e| format!("Kubernetes client (in-cluster or KUBECONFIG): {e}"))?,
        )
    } else {
        None
    };
    let ca = match (&s.ca_dir, &client) {
        (Some(dir), _) => load_ca_dir(dir, &s.trust_domain, "CA_DIR")?,
        (None, Some(client)) => {
            let (ca, secret) = istiod_lite::ca_secret::load_or_create(
                client.clone(),
                &s.root_namespace,
                &s.trust_domain,
            )
            .await?;
            tracing::info!("CA loaded from Secret {}/{secret}", s.root_namespace);
            ca
        }
        (None, None) => {
            let state = s.state_dir();
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&state)
                .map_err(|e| format!("state directory {}: {e}", state.display()))?;
            load_ca_dir(
                &state.join("ca"),
                &s.trust_domain,
                "the state directory's CA",
            )?
        }
    };
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
    let (mut source, status) = match (&s.config_dir, &client) {
        (Some(dir), None) => {
            let source = DirSource::new(dir, info);
            let status = SourceStatus::Dir(source.status.clone());
            (Source::Dir(source), status)
        }
        (None, Some(client)) => {
            let deploy = (!s.no_waypoint_deployment).then(|| DeploySettings {
                image: s.waypoint_image.clone(),
                discovery_address: s.discovery_address.clone(),
                info: info.clone(),
                root_pem: ca.root_pem().to_owned(),
                tracing: s
                    .waypoint_otlp_endpoint
                    .iter()
                    .flat_map(|endpoint| {
                        [
                            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
                            (
                                "OTEL_EXPORTER_OTLP_PROTOCOL",
                                s.waypoint_otlp_protocol.clone(),
                            ),
                            ("OTEL_TRACES_SAMPLER_ARG", s.waypoint_trace_sampling.clone()),
                        ]
                    })
                    .collect(),
            });
            let options = KubeOptions {
                write_status: !s.no_status,
                deploy,
            };
            let source = KubeSource::start_with(client.clone(), info, options);
            let status = SourceStatus::Kube(source.status.clone());
            (Source::Kube(source), status)
        }
        _ => return Err("give --config-dir DIR, or --kubernetes".into()),
    };
    // The first config is complete before anything is served: ztunnels take the first push
    // as the whole state.
    let first = match &mut source {
        Source::Dir(source) => match source.poll() {
            Ok(Some(set)) => set,
            Ok(None) => unreachable!("the first poll always reads"),
            Err(errors) => {
                return Err(format!(
                    "manifests in {}:\n  {}",
                    s.config_dir.clone().unwrap_or_default().display(),
                    errors.join("\n  ")
                ))
            }
        },
        Source::Kube(kube) => {
            tracing::info!("listing the cluster");
            kube.next_set()
                .await
                .ok_or("the Kubernetes watchers stopped")?
        }
    };
    tracing::info!(
        addresses = first.count(meshcore::api::type_url::ADDRESS),
        authorizations = first.count(meshcore::api::type_url::AUTHORIZATION),
        waypoints = first.count(meshcore::api::type_url::WAYPOINT_CONFIG),
        "config loaded"
    );
    let (publish, resources) = watch::channel(Arc::new(first));
    let auth = match (&s.bootstrap_tokens, &client) {
        (Some(path), _) => Some(Authenticator::NodeTokens(Arc::new(
            istiod_lite::ca::NodeTokens::from_file(path)?,
        ))),
        (None, Some(client)) => Some(Authenticator::TokenReview(Arc::new(TokenReviewer::new(
            client.clone(),
            &s.trust_domain,
            &s.ztunnel_service_account,
        )?))),
        (None, None) => {
            tracing::info!("no BOOTSTRAP_TOKENS: certificate service off");
            None
        }
    };
    // The same callers may read the config: without an authenticator, xDS is open to anyone
    // who can reach the port (local experiments only).
    let mut xds = XdsServer::new(resources.clone());
    if let Some(auth) = &auth {
        xds = xds.with_auth(auth.clone());
    } else {
        tracing::warn!(
            "xDS clients are not authenticated: give BOOTSTRAP_TOKENS or run with --kubernetes"
        );
    }
    let ca_server =
        auth.map(|auth| istiod_lite::ca::CaServer::new(Arc::new(ca), auth, resources.clone()));
    let http_ctx = Arc::new(istiod_lite::http::HttpContext {
        clients: xds.clients.clone(),
        resources,
        source: status,
        ca: ca_server.as_ref().map(|c| c.counters.clone()),
        debug_networks: s.debug_allowed_networks.clone(),
    });

    let grpc_listener = TcpListener::bind(s.grpc_address)
        .await
        .map_err(|e| format!("binding gRPC on {}: {e}", s.grpc_address))?;
    let http_listener = TcpListener::bind(s.http_address)
        .await
        .map_err(|e| format!("binding HTTP on {}: {e}", s.http_address))?;
    tokio::spawn(istiod_lite::http::serve(http_listener, http_ctx));
    match source {
        Source::Dir(dir) => {
            tokio::spawn(dir.run(
                Duration::from_millis(s.poll_ms),
                publish,
                std::future::pending(),
            ));
        }
        Source::Kube(kube) => {
            tokio::spawn(kube.run(publish, std::future::pending()));
        }
    }
    tracing::info!(grpc = %s.grpc_address, http = %s.http_address, "istiod-lite serving");

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    };
    let age = grpc::ConnectionAge {
        max: Some(s.keepalive_max_server_connection_age).filter(|d| !d.is_zero()),
        grace: s.keepalive_max_server_connection_age_grace,
    };
    grpc::serve_with(grpc_listener, tls, xds, ca_server, age, shutdown)
        .await
        .map_err(|e| format!("gRPC server: {e}"))
}

//! Wiring: the certificate, the configuration source (local file or xDS), the HBONE listener
//! and the side doors; readiness (a configuration in force, not draining); graceful shutdown (stop accepting, GOAWAY, let open tunnels finish within the drain timeout).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshcore::certs::{CaSource, CertManager, CertificateProvider};
use meshcore::control::ControlPlane;
use meshcore::hbone::{
    server::HboneServer, ClientSettings, HboneClient, ServerSettings, HBONE_PORT,
};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::admin::{self, AdminContext, Endpoints, LogControl};
use crate::config::file::FileSource;
use crate::config::xds::{XdsClient, XdsConfig};
use crate::config::{ConfigStore, WaypointIdentity};
use crate::gateway::listeners::GatewayListeners;
use crate::metrics::Metrics;
use crate::proxy::upstream::Upstream;
use crate::proxy::{Proxy, ProxySettings};
use crate::settings::Settings;

pub const ADMIN_PORT: u16 = 15000;
pub const STATS_PORT: u16 = 15020;
pub const READINESS_PORT: u16 = 15021;

#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub hbone: SocketAddr,
    pub admin: SocketAddr,
    pub stats: SocketAddr,
    pub readiness: SocketAddr,
}

pub struct Waypoint {
    pub addresses: Addresses,
    pub proxy: Arc<Proxy>,
    /// Gateway mode: the listener ports of the configuration's ingress Gateway.
    pub gateway: Arc<GatewayListeners>,
    server: Arc<HboneServer>,
    shutdown: watch::Sender<bool>,
    quit: Arc<Notify>,
    open_tunnels: Arc<AtomicUsize>,
    drain_timeout: Duration,
}

/// Span export as the settings say, with the pod's name and namespace on every span.
fn start_tracing(settings: &Settings) -> Result<meshcore::otel::Tracing, String> {
    let mut resource = Vec::new();
    for (key, var) in [
        ("k8s.pod.name", "POD_NAME"),
        ("k8s.namespace.name", "POD_NAMESPACE"),
    ] {
        if let Ok(v) = std::env::var(var) {
            resource.push(meshcore::otel::KeyValue::new(key, v));
        }
    }
    meshcore::otel::Tracing::start(&settings.tracing, "waypoint", resource)
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {what} on {addr}: {e}"))
}

/// The mesh root the control plane chains to: XDS_ROOT_CA, else CA_DIR's root-cert.pem.
fn mesh_root(settings: &Settings) -> Result<String, String> {
    let path = settings
        .xds_root_ca
        .clone()
        .or_else(|| settings.ca_dir.as_ref().map(|d| d.join("root-cert.pem")))
        .ok_or("no mesh root: set XDS_ROOT_CA or CA_DIR")?;
    std::fs::read_to_string(&path).map_err(|e| format!("mesh root {}: {e}", path.display()))
}

/// The control plane at `address`, verified against the mesh root.
fn control_plane(settings: &Settings, address: &str) -> Result<ControlPlane, String> {
    let root = mesh_root(settings)?;
    Ok(ControlPlane {
        address: address.to_owned(),
        server_name: settings.xds_server_name.clone(),
        tls: meshcore::tls::control::control_client_config(&root)
            .map_err(|e| format!("mesh root: {e}"))?,
    })
}

fn certificate_provider(settings: &Settings) -> Result<Arc<dyn CertificateProvider>, String> {
    let root;
    let source = match (&settings.ca_address, &settings.ca_dir) {
        (Some(address), _) => {
            root = mesh_root(settings)?;
            CaSource::Remote {
                control: control_plane(settings, address)?,
                token_file: settings
                    .ca_token_file
                    .clone()
                    .expect("validated: CA_ADDRESS has a token"),
                root_pem: &root,
                cluster_id: &settings.cluster_id,
            }
        }
        (None, Some(dir)) => CaSource::Dir(dir),
        (None, None) => CaSource::InMemory,
    };
    source.provider(&settings.trust_domain, settings.secret_ttl)
}

/// The waypoint's first certificate. The CA may not be up yet (a waypoint starting with its
/// control plane): retried with backoff for up to a minute before giving up.
async fn first_certificate(
    certs: &Arc<CertManager>,
    identity: &meshcore::identity::SpiffeId,
) -> Result<Arc<meshcore::tls::Credentials>, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut wait = Duration::from_millis(200);
    loop {
        match certs.credentials(identity).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() + wait < deadline => {
                tracing::warn!(retry_in = ?wait, "the waypoint's certificate: {e}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(format!("the waypoint's certificate: {e}")),
        }
    }
}

/// Starts a waypoint: fails if its configuration, certificate or listeners cannot be had.
pub async fn start(
    settings: Settings,
    log: Option<Arc<dyn LogControl>>,
) -> Result<Waypoint, String> {
    settings.validate()?;
    let identity = settings.identity()?;
    let certs = CertManager::new(certificate_provider(&settings)?);
    let credentials = first_certificate(&certs, &identity).await?;

    let store = Arc::new(ConfigStore::new(WaypointIdentity {
        namespace: settings.namespace.clone(),
        name: settings.name.clone(),
        trust_domain: settings.trust_domain.clone(),
        root_namespace: settings.root_namespace.clone(),
        retry_budget: crate::traffic::budget::BudgetSettings {
            ratio: settings.retry_budget_ratio,
            min_per_second: settings.retry_budget_min_per_second,
            ttl: settings.retry_budget_ttl,
        },
    }));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (mut file_status, mut xds_status) = (None, None);
    // True once a configuration is in force: at once from the file, at the first xDS push.
    let mut configured = watch::channel(true).1;
    if let Some(path) = &settings.local_config_path {
        let mut source = FileSource::new(path, store.clone());
        source.poll().map_err(|e| format!("configuration: {e}"))?;
        file_status = Some(source.status());
        let mut rx = shutdown_rx.clone();
        tokio::spawn(source.run(settings.config_poll_interval, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }
    if let Some(address) = &settings.xds_address {
        if settings.ca_token_file.is_none() {
            tracing::warn!("XDS_ADDRESS without CA_TOKEN_FILE: the xDS stream carries no token");
        }
        let client = XdsClient::new(
            XdsConfig {
                control: control_plane(&settings, address)?,
                node_id: settings.node_id(),
                token_file: settings.ca_token_file.clone(),
                resource: settings.xds_resource(),
            },
            store.clone(),
        );
        xds_status = Some(client.status());
        configured = client.ready();
        let mut rx = shutdown_rx.clone();
        tokio::spawn(client.run(async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }

    let ip = settings.bind_address;
    let hbone_listener = bind(SocketAddr::new(ip, HBONE_PORT), "HBONE").await?;
    let admin_listener = bind(
        SocketAddr::new(settings.local_only_address(), ADMIN_PORT),
        "admin",
    )
    .await?;
    let stats_listener = bind(SocketAddr::new(ip, STATS_PORT), "metrics").await?;
    let ready_listener = bind(SocketAddr::new(ip, READINESS_PORT), "readiness").await?;
    let local = |l: &TcpListener| l.local_addr().expect("bound");
    let addresses = Addresses {
        hbone: local(&hbone_listener),
        admin: local(&admin_listener),
        stats: local(&stats_listener),
        readiness: local(&ready_listener),
    };

    let upstream = Upstream::new(
        Arc::new(HboneClient::new(ClientSettings::default())),
        certs.clone(),
        identity.clone(),
    );
    let proxy = Arc::new(
        Proxy::new(
            store,
            upstream,
            Arc::new(Metrics::new()),
            ProxySettings {
                cluster: settings.cluster_id.clone(),
                access_log: settings.access_log,
                forward_client_cert: settings.forward_client_cert,
                detection_timeout: settings.protocol_detection_timeout,
                header_timeout: settings.request_header_timeout,
                workload: settings
                    .pod_name
                    .clone()
                    .unwrap_or_else(|| settings.name.clone()),
            },
            identity.clone(),
        )
        .with_tracing(start_tracing(&settings)?),
    );
    proxy.flows.set_enabled(settings.flow_records);
    // Istio's waypoint accepts up to 100 streams per client connection.
    let server = HboneServer::new(
        meshcore::tls::server_config(credentials),
        ServerSettings {
            max_concurrent_streams: 100,
            ..ServerSettings::default()
        },
    );
    let open_tunnels = Arc::new(AtomicUsize::new(0));
    {
        let (proxy, open, mut rx) = (proxy.clone(), open_tunnels.clone(), shutdown_rx.clone());
        tokio::spawn(server.clone().serve(
            hbone_listener,
            move |connect| {
                let (proxy, open) = (proxy.clone(), open.clone());
                async move {
                    open.fetch_add(1, Ordering::Relaxed);
                    proxy.handle(connect).await;
                    open.fetch_sub(1, Ordering::Relaxed);
                }
            },
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
    }

    // Gateway mode: the ingress Gateway's listener ports, following the configuration.
    let gateway =
        GatewayListeners::start(proxy.clone(), ip, open_tunnels.clone(), shutdown_rx.clone()).await;

    let quit = Arc::new(Notify::new());
    let ready_rx = readiness(configured, shutdown_rx.clone());
    let ctx = Arc::new(AdminContext {
        proxy: proxy.clone(),
        gateway: gateway.clone(),
        certs,
        file: file_status,
        xds: xds_status,
        log,
        quit: quit.clone(),
        ready: ready_rx,
    });
    tokio::spawn(admin::serve(
        admin_listener,
        ctx.clone(),
        Endpoints::Admin,
        shutdown_rx.clone(),
    ));
    tokio::spawn(admin::serve(
        stats_listener,
        ctx.clone(),
        Endpoints::Stats,
        shutdown_rx.clone(),
    ));
    tokio::spawn(admin::serve(
        ready_listener,
        ctx,
        Endpoints::Readiness,
        shutdown_rx,
    ));
    tracing::info!(hbone = %addresses.hbone, identity = %identity, "waypoint started");
    Ok(Waypoint {
        addresses,
        proxy,
        gateway,
        server,
        shutdown,
        quit,
        open_tunnels,
        drain_timeout: settings.drain_timeout,
    })
}

/// Ready while a configuration is in force and the process is not draining.
fn readiness(
    mut configured: watch::Receiver<bool>,
    mut draining: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let ready = *configured.borrow_and_update() && !*draining.borrow_and_update();
    let (tx, rx) = watch::channel(ready);
    tokio::spawn(async move {
        // The file source's flag never changes: its sender is gone from the start.
        let mut source_alive = true;
        loop {
            tokio::select! {
                changed = configured.changed(), if source_alive => source_alive = changed.is_ok(),
                changed = draining.changed() => if changed.is_err() { return },
            }
            let ready = *configured.borrow() && !*draining.borrow();
            tx.send_replace(ready);
            if *draining.borrow() {
                return;
            }
        }
    });
    rx
}

impl Waypoint {
    /// Completes when `/quitquitquit` was called.
    pub async fn quit_requested(&self) {
        self.quit.notified().await;
    }

    /// Tunnels (and gateway listener connections) being served now.
    pub fn open_tunnels(&self) -> usize {
        self.open_tunnels.load(Ordering::Relaxed)
    }

    /// Stops accepting (HBONE and gateway listeners), sends GOAWAY, waits for open tunnels and
    /// connections up to the drain timeout.
    pub async fn shutdown(self) {
        self.server.drain();
        self.gateway.drain();
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        while self.open_tunnels() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.open_tunnels() > 0 {
            tracing::info!(
                open = self.open_tunnels(),
                "drain timeout: closing remaining tunnels"
            );
        }
        // Ended tunnels' last bytes are written by their HBONE connections, which close after
        // GOAWAY: wait for them too, or the process cuts those bytes.
        if tokio::time::timeout_at(deadline, self.server.connections_closed())
            .await
            .is_err()
        {
            tracing::info!("drain timeout: HBONE connections still open");
        }
        let _ = self.shutdown.send(true);
        self.proxy.tracing.shutdown(Duration::from_secs(2)).await;
        tracing::info!("waypoint stopped");
    }
}

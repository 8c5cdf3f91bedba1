//! Wires a ztunnel together: binds the listeners, loads config and the first certificate, and
//! runs until told to drain. `main` and the in-process tests start it the same way.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshcore::hbone::{server::HboneServer, ClientSettings, HboneClient, ServerSettings};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::admin::{self, AdminContext, LogControl};
use crate::certs::{CaSource, CertManager};
use crate::config::watch::{LocalFileSource, SourceStatus};
use crate::config::xds::{XdsClient, XdsConfig};
use crate::control::ControlPlane;
use crate::metrics::Metrics;
use crate::proxy::{self, Drain, Proxy};
use crate::settings::Settings;
use crate::state::StateStore;

/// Istio's ztunnel ports.
pub mod ports {
    pub const OUTBOUND: u16 = 15001;
    pub const INBOUND_PLAINTEXT: u16 = 15006;
    pub const HBONE: u16 = meshcore::hbone::HBONE_PORT;
    pub const SOCKS5: u16 = 15080;
    pub const ADMIN: u16 = 15000;
    pub const STATS: u16 = 15020;
    pub const READINESS: u16 = 15021;
}

/// Where each listener ended up.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub hbone: SocketAddr,
    pub inbound_plaintext: SocketAddr,
    pub outbound: SocketAddr,
    /// SOCKS5, only with `UNSTABLE_ENABLE_SOCKS5=true`.
    pub socks5: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub stats: SocketAddr,
    pub readiness: SocketAddr,
}

/// A running ztunnel.
pub struct Ztunnel {
    pub proxy: Arc<Proxy>,
    pub addresses: Addresses,
    pub metrics: Arc<Metrics>,
    hbone_server: Arc<HboneServer>,
    quit: Arc<Notify>,
    drain_timeout: Duration,
}

pub(crate) async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding the {what} listener on {addr}: {e}"))
}

/// Starts a ztunnel: everything is listening and ready when this returns.
pub async fn start(
    settings: Settings,
    logging: Option<Arc<dyn LogControl>>,
) -> Result<Ztunnel, String> {
    settings.validate()?;
    let workload = settings
        .proxy_workload_info
        .clone()
        .expect("validated: dedicated mode has PROXY_WORKLOAD_INFO");
    let identity = workload
        .identity(&settings.trust_domain)
        .map_err(|e| format!("PROXY_WORKLOAD_INFO: {e}"))?;

    let ip = settings.bind_address;
    let local = settings.local_only_address();
    let hbone_l = bind((ip, ports::HBONE).into(), "HBONE").await?;
    let plaintext_l = bind((ip, ports::INBOUND_PLAINTEXT).into(), "inbound plaintext").await?;
    let outbound_l = bind((ip, ports::OUTBOUND).into(), "outbound").await?;
    let socks5_l = match settings.enable_socks5 {
        true => Some(bind((local, ports::SOCKS5).into(), "SOCKS5").await?),
        false => None,
    };
    let admin_l = bind((local, ports::ADMIN).into(), "admin").await?;
    let stats_l = bind((ip, ports::STATS).into(), "metrics").await?;
    let readiness_l = bind((ip, ports::READINESS).into(), "readiness").await?;
    let addr = |l: &TcpListener| l.local_addr().expect("bound listener");
    let addresses = Addresses {
        hbone: addr(&hbone_l),
        inbound_plaintext: addr(&plaintext_l),
        outbound: addr(&outbound_l),
        socks5: socks5_l.as_ref().map(addr),
        admin: addr(&admin_l),
        stats: addr(&stats_l),
        readiness: addr(&readiness_l),
    };

    let drain = Drain::default();
    let ready = Arc::new(AtomicBool::new(false));
    let node_id = format!(
        "ztunnel~{ip}~{}.{ns}~{ns}.svc.cluster.local",
        workload.name,
        ns = workload.namespace
    );
    let Shared {
        state,
        source_status,
        certs,
    } = shared_parts(&settings, node_id, &drain)?;
    state.add_served(&workload.namespace, &workload.name);
    let server_creds = certs.credentials(&identity).await?;
    let hbone_server = HboneServer::new(
        meshcore::tls::server_config(server_creds),
        ServerSettings {
            windows: settings.hbone_windows(),
            ..ServerSettings::default()
        },
    );

    let mark = (settings.socket_mark != 0).then_some(settings.socket_mark);
    let metrics = Arc::new(Metrics::new().traced(crate::metrics::start_tracing(&settings)?));
    metrics.flows.set_enabled(settings.flow_records);
    let proxy = Arc::new(Proxy {
        workload,
        identity,
        cluster_id: settings.cluster_id.clone(),
        state: state.clone(),
        certs: certs.clone(),
        hbone: HboneClient::new(ClientSettings {
            socket_mark: mark,
            windows: settings.hbone_windows(),
            ..ClientSettings::default()
        }),
        metrics: metrics.clone(),
        drain: drain.clone(),
        bind_ip: (settings.bind_outbound && !ip.is_unspecified()).then_some(ip),
        socket_mark: mark,
        listen_ip: ip,
        denials: Default::default(),
        inbound: Default::default(),
        netns: None,
        relay_idle: settings.relay_idle_timeout,
        socks5: settings.enable_socks5,
        own_dials: Default::default(),
        resolved: Arc::new(crate::dns::resolved::ResolvedNames::new(
            settings.egress_fqdn_min_ttl,
        )),
    });

    let quit = Arc::new(Notify::new());
    let admin_ctx = Arc::new(AdminContext {
        served: crate::admin::Served::Workload(proxy.clone()),
        drain: drain.clone(),
        source: source_status,
        certs,
        metrics: metrics.clone(),
        ready: ready.clone(),
        logging,
        quit: quit.clone(),
    });
    admin::serve_all(admin_l, stats_l, readiness_l, &admin_ctx, &drain);

    proxy::serve(
        proxy.clone(),
        hbone_server.clone(),
        proxy::Listeners {
            hbone: hbone_l,
            plaintext: plaintext_l,
            outbound: outbound_l,
            socks5: socks5_l,
        },
    );

    ready.store(true, Ordering::Release);
    tracing::info!(
        workload = %format!("{}/{}", proxy.workload.namespace, proxy.workload.name),
        identity = %proxy.identity,
        hbone = %addresses.hbone,
        socks5 = %addresses.socks5.map_or("off".into(), |a| a.to_string()),
        admin = %addresses.admin,
        "ztunnel ready"
    );
    Ok(Ztunnel {
        proxy,
        addresses,
        metrics,
        hbone_server,
        quit,
        drain_timeout: settings.drain_timeout,
    })
}

impl Ztunnel {
    /// Completes when `/quitquitquit` is called.
    pub async fn quit_requested(&self) {
        self.quit.notified().await
    }

    /// Graceful shutdown: stop accepting, send GOAWAY on HBONE connections, let open
    /// connections finish until the drain deadline, then cut what is left.
    pub async fn shutdown(self) {
        let drain = &self.proxy.drain;
        tracing::info!(open = drain.active(), deadline = ?self.drain_timeout, "draining");
        drain.start();
        self.hbone_server.drain();
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        let left = drain.wait_idle(self.drain_timeout).await;
        if left > 0 {
            tracing::warn!(
                open = left,
                "drain deadline passed; closing remaining connections"
            );
        }
        // Tunnels that ended have handed their last bytes to HTTP/2: let the HBONE connections
        // write them and close (GOAWAY was sent) before the process goes.
        let flushed =
            tokio::time::timeout_at(deadline, self.hbone_server.connections_closed()).await;
        if flushed.is_err() {
            tracing::warn!("drain deadline passed with HBONE connections still open");
        }
        drain.close();
        self.proxy.metrics.tracing.shutdown(SPAN_FLUSH).await;
        tracing::info!("ztunnel stopped");
    }
}

/// How long a stopping ztunnel waits to send its last spans.
pub const SPAN_FLUSH: Duration = Duration::from_secs(2);

/// What every mode needs: the config view (local file or xDS) and the certificate manager.
pub struct Shared {
    pub state: Arc<StateStore>,
    pub source_status: Arc<Mutex<SourceStatus>>,
    pub certs: Arc<CertManager>,
}

/// Starts the config sources and the certificate provider the settings ask for.
pub fn shared_parts(settings: &Settings, node_id: String, drain: &Drain) -> Result<Shared, String> {
    let state = Arc::new(StateStore::new(&settings.trust_domain));
    let source_status = Arc::new(Mutex::new(SourceStatus::default()));
    if let Some(path) = &settings.local_xds_path {
        let mut source = LocalFileSource::new(
            path,
            &settings.trust_domain,
            state.clone(),
            source_status.clone(),
        );
        source.poll().map_err(|e| format!("local config: {e}"))?;
        let drain = drain.clone();
        tokio::spawn(source.run(settings.config_poll_interval, async move {
            drain.closed().await
        }));
    }

    // The control plane and the mesh root it (and the workloads) chain to.
    let control_root = || -> Result<String, String> {
        let path = settings
            .xds_root_ca
            .clone()
            .or_else(|| settings.ca_dir.as_ref().map(|d| d.join("root-cert.pem")))
            .ok_or("no mesh root: set XDS_ROOT_CA or CA_DIR")?;
        std::fs::read_to_string(&path).map_err(|e| format!("mesh root {}: {e}", path.display()))
    };
    let control_plane = |address: &str| -> Result<ControlPlane, String> {
        let tls = meshcore::tls::control::control_client_config(&control_root()?)
            .map_err(|e| format!("mesh root: {e}"))?;
        Ok(ControlPlane {
            address: address.to_owned(),
            server_name: settings.xds_server_name.clone(),
            tls,
        })
    };
    let root;
    let source = match (&settings.ca_address, &settings.ca_dir) {
        (Some(address), _) => {
            root = control_root()?;
            CaSource::Remote {
                control: control_plane(address)?,
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
    let provider = source.provider(&settings.trust_domain, settings.secret_ttl)?;
    // After the CA: a development CA directory gets its root-cert.pem written above.
    if let Some(address) = &settings.xds_address {
        let client = XdsClient::new(
            XdsConfig {
                control: control_plane(address)?,
                node_id,
                token_file: settings.ca_token_file.clone(),
            },
            state.clone(),
            source_status.clone(),
        );
        let drain = drain.clone();
        tokio::spawn(client.run(async move { drain.closed().await }));
    }
    Ok(Shared {
        state,
        source_status,
        certs: CertManager::new(provider),
    })
}

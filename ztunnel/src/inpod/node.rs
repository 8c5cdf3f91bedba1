//! Starting a ztunnel in node mode (`PROXY_MODE=shared`): the node's own endpoints (admin on
//! localhost, metrics and readiness on the bind address), the shared config view and
//! certificates, and the client of the node agent that hands over the pods to serve.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshcore::hbone::{ClientSettings, HboneClient};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::pods::{run_agent_client, NodeContext, Pods};
use crate::admin::{self, AdminContext, LogControl, Served};
use crate::app::{bind, ports, shared_parts, Shared};
use crate::metrics::Metrics;
use crate::proxy::Drain;
use crate::settings::Settings;

/// A running node-mode ztunnel.
pub struct NodeZtunnel {
    pub pods: Arc<Pods>,
    pub metrics: Arc<Metrics>,
    pub admin: SocketAddr,
    pub stats: SocketAddr,
    pub readiness: SocketAddr,
    drain: Drain,
    quit: Arc<Notify>,
    drain_timeout: Duration,
}

pub async fn start_node(
    settings: Settings,
    logging: Option<Arc<dyn LogControl>>,
) -> Result<NodeZtunnel, String> {
    settings.validate()?;
    let ip = settings.bind_address;
    let admin_l = bind(
        (settings.local_only_address(), ports::ADMIN).into(),
        "admin",
    )
    .await?;
    let stats_l = bind((ip, ports::STATS).into(), "metrics").await?;
    let readiness_l = bind((ip, ports::READINESS).into(), "readiness").await?;
    let addr = |l: &TcpListener| l.local_addr().expect("bound listener");
    let (admin, stats, readiness) = (addr(&admin_l), addr(&stats_l), addr(&readiness_l));

    let drain = Drain::default();
    let ready = Arc::new(AtomicBool::new(false));
    // ztunnel's own pod, when PROXY_WORKLOAD_INFO names it, identifies it to the control plane.
    let (name, ns) = settings
        .proxy_workload_info
        .as_ref()
        .map_or(("ztunnel".to_owned(), "istio-system".to_owned()), |w| {
            (w.name.clone(), w.namespace.clone())
        });
    let node_id = format!("ztunnel~{ip}~{name}.{ns}~{ns}.svc.cluster.local");
    let Shared {
        state,
        source_status,
        certs,
    } = shared_parts(&settings, node_id, &drain)?;
    let mark = (settings.socket_mark != 0).then_some(settings.socket_mark);
    let metrics = Arc::new(Metrics::new().traced(crate::metrics::start_tracing(&settings)?));
    metrics.flows.set_enabled(settings.flow_records);
    let pods = Arc::new(Pods::new(NodeContext {
        trust_domain: settings.trust_domain.clone(),
        cluster_id: settings.cluster_id.clone(),
        cluster_domain: settings.cluster_domain.clone(),
        state: state.clone(),
        certs: certs.clone(),
        hbone: HboneClient::new(ClientSettings {
            socket_mark: mark,
            windows: settings.hbone_windows(),
            ..ClientSettings::default()
        }),
        metrics: metrics.clone(),
        socket_mark: mark,
        relay_idle: settings.relay_idle_timeout,
        socks5: settings.enable_socks5,
        windows: settings.hbone_windows(),
        fqdn_min_ttl: settings.egress_fqdn_min_ttl,
        dns_upstreams: settings.dns_proxy.then(|| {
            crate::dns::upstreams(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
        }),
    }));

    let quit = Arc::new(Notify::new());
    let admin_ctx = Arc::new(AdminContext {
        served: Served::Node {
            pods: pods.clone(),
            state,
        },
        drain: drain.clone(),
        source: source_status,
        certs,
        metrics: metrics.clone(),
        ready: ready.clone(),
        logging,
        quit: quit.clone(),
    });
    admin::serve_all(admin_l, stats_l, readiness_l, &admin_ctx, &drain);
    let d = drain.clone();
    tokio::spawn(run_agent_client(
        pods.clone(),
        settings.inpod_uds.clone(),
        async move { d.started().await },
    ));
    ready.store(true, Ordering::Release);
    tracing::info!(agent = %settings.inpod_uds.display(), %admin, "ztunnel ready in node mode");
    Ok(NodeZtunnel {
        pods,
        metrics,
        admin,
        stats,
        readiness,
        drain,
        quit,
        drain_timeout: settings.drain_timeout,
    })
}

impl NodeZtunnel {
    /// Completes when `/quitquitquit` is called.
    pub async fn quit_requested(&self) {
        self.quit.notified().await
    }

    /// Stops taking pods and connections, drains every pod until the deadline, then stops.
    pub async fn shutdown(self) {
        self.drain.start();
        let pods = self.pods.list();
        let servers = self.pods.servers();
        self.pods.remove_all();
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        for (_, proxy) in &pods {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            proxy.drain.wait_idle(left).await;
        }
        // Ended tunnels' last bytes go out with their HBONE connections (see
        // `HboneServer::connections_closed`).
        for server in servers {
            let _ = tokio::time::timeout_at(deadline, server.connections_closed()).await;
        }
        for (_, proxy) in pods {
            proxy.drain.close();
        }
        self.drain.close();
        self.metrics.tracing.shutdown(crate::app::SPAN_FLUSH).await;
        tracing::info!("ztunnel stopped");
    }
}

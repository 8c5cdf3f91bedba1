//! The data path. Several front doors end in two functions:
//! - outbound (15001 capture, 15080 SOCKS5 when enabled): [`outbound::open`] resolves the
//!   destination and opens an HBONE tunnel or a plain TCP connection for the served workload;
//! - inbound (15008 HBONE, 15006 plaintext): [`inbound::authorize_and_connect`] decides with
//!   the L4 policy engine, then connects to the local application.

pub mod egress;
pub mod inbound;
pub mod original_dst;
pub mod outbound;
pub mod own;
pub mod revalidate;
pub mod socks5;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshcore::hbone::HboneClient;
use meshcore::identity::SpiffeId;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::certs::CertManager;
use crate::metrics::Metrics;
use crate::settings::WorkloadInfo;
use crate::state::{StateStore, WorkloadEntry};

/// Time allowed to connect to an application or a plain TCP destination.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a connection handler needs; shared by all listeners of one served workload.
pub struct Proxy {
    pub workload: WorkloadInfo,
    pub identity: SpiffeId,
    pub cluster_id: String,
    pub state: Arc<StateStore>,
    pub certs: Arc<CertManager>,
    pub hbone: HboneClient,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    /// Outgoing connections are dialled from here (the workload's address), when set.
    pub bind_ip: Option<IpAddr>,
    pub socket_mark: Option<u32>,
    /// The address ztunnel's listeners are bound to (may be unspecified).
    pub listen_ip: IpAddr,
    pub denials: crate::admin::DenialLog,
    /// Admitted inbound connections, decided again when the config changes.
    pub inbound: Arc<revalidate::InboundConnections>,
    /// In node mode, the pod's network namespace: connections to its application and plain
    /// TCP from it are made from inside the pod.
    pub netns: Option<Arc<crate::inpod::netns::Netns>>,
    /// Relays moving no byte for this long are closed (`RELAY_IDLE_TIMEOUT`).
    pub relay_idle: std::time::Duration,
    /// Whether this proxy serves SOCKS5 on 15080 (`UNSTABLE_ENABLE_SOCKS5`), which makes
    /// 15080 one of its own ports.
    pub socks5: bool,
    /// The plain connections ztunnel dialled, so one that NAT brings back is recognised.
    pub own_dials: Arc<own::OwnDials>,
    /// Names the workload resolved through the DNS proxy, for egress FQDN peers.
    pub resolved: Arc<crate::dns::resolved::ResolvedNames>,
}

impl Proxy {
    /// A TCP connection to `addr` with ztunnel's mark (so capture rules let it pass), from the
    /// pod's namespace in node mode.
    pub async fn connect_tcp(
        &self,
        addr: SocketAddr,
        bind: Option<IpAddr>,
    ) -> std::io::Result<tokio::net::TcpStream> {
        match &self.netns {
            Some(ns) => ns.connect(addr, bind, self.socket_mark).await,
            None => meshcore::hbone::client::connect_tcp(addr, bind, self.socket_mark).await,
        }
    }

    /// The connection to the served application for an inbound connection from `client`. In
    /// node mode it comes from the client's own address, as Istio's in-pod ztunnel does, so
    /// the application sees who called; otherwise from ztunnel's.
    pub async fn connect_app(
        &self,
        addr: SocketAddr,
        client: IpAddr,
    ) -> std::io::Result<tokio::net::TcpStream> {
        match &self.netns {
            Some(ns) => ns.connect_as(addr, client, self.socket_mark).await,
            None => self.connect_tcp(addr, None).await,
        }
    }

    /// The served workload as the current config describes it.
    pub fn served(&self, snap: &crate::state::Snapshot) -> Option<Arc<WorkloadEntry>> {
        snap.workload_by_name(&self.workload.namespace, &self.workload.name)
            .cloned()
    }

    /// Whether `dst` is one of ztunnel's own listeners, so that relaying there would come back
    /// into ztunnel: a data-plane port ([`own::is_data_port`], Istio's `illegal_ports`) on any
    /// address local to ztunnel's network namespace (in node mode the pod's: loopback and the
    /// pod's addresses), or an admin port on an address ztunnel listens on.
    pub fn is_own_listener(&self, dst: SocketAddr, served: Option<&WorkloadEntry>) -> bool {
        use crate::app::ports;
        let ip = dst.ip().to_canonical();
        if own::is_data_port(dst.port(), self.socks5) {
            return self.listens_on(ip, served)
                || ip.is_loopback()
                || (self.netns.is_none() && own::is_local_address(ip));
        }
        [ports::ADMIN, ports::STATS, ports::READINESS].contains(&dst.port())
            && self.listens_on(ip, served)
    }

    /// Whether ztunnel's listeners for this workload are reachable at `ip`: its bind address,
    /// loopback when bound to every address, 127.0.0.1 (admin and SOCKS5), the workload's own.
    fn listens_on(&self, ip: IpAddr, served: Option<&WorkloadEntry>) -> bool {
        let listen = self.listen_ip.to_canonical();
        ip == listen
            || ip.is_unspecified()
            // Bound to every address: any local one reaches it.
            || (listen.is_unspecified() && ip.is_loopback())
            // Admin and SOCKS5 sit on 127.0.0.1 unless the bind address is loopback itself.
            || (!listen.is_loopback() && ip == IpAddr::from([127, 0, 0, 1]))
            || served.is_some_and(|w| w.workload.workload_ips.contains(&ip))
    }
}

/// Graceful shutdown: listeners stop accepting once draining starts, and every connection
/// holds a [`ConnectionGuard`] so shutdown can wait for the open ones to finish.
#[derive(Clone)]
pub struct Drain {
    inner: Arc<DrainInner>,
}

/// Phases of a shutdown.
const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const CLOSED: u8 = 2;

struct DrainInner {
    signal: watch::Sender<u8>,
    active: AtomicUsize,
    idle: Notify,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            inner: Arc::new(DrainInner {
                signal: watch::Sender::new(RUNNING),
                active: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }
}

impl Drain {
    /// Stops accepting; open connections carry on.
    pub fn start(&self) {
        self.inner.signal.send_if_modified(|s| {
            let changed = *s == RUNNING;
            *s = (*s).max(DRAINING);
            changed
        });
    }

    /// Ends whatever is still open (the drain deadline passed).
    pub fn close(&self) {
        self.inner.signal.send_replace(CLOSED);
    }

    pub fn is_draining(&self) -> bool {
        *self.inner.signal.borrow() != RUNNING
    }

    /// Completes once draining starts.
    pub async fn started(&self) {
        let mut rx = self.inner.signal.subscribe();
        let _ = rx.wait_for(|s| *s != RUNNING).await;
    }

    /// Completes once the drain deadline has passed.
    pub async fn closed(&self) {
        let mut rx = self.inner.signal.subscribe();
        let _ = rx.wait_for(|s| *s == CLOSED).await;
    }

    /// Runs `fut` as a tracked connection that is cut when the drain deadline passes.
    pub fn spawn_connection<F>(&self, fut: impl FnOnce(ConnectionGuard) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let fut = fut(self.track());
        let drain = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = drain.closed() => {}
            }
        });
    }

    pub fn track(&self) -> ConnectionGuard {
        self.inner.active.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.inner.clone())
    }

    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Relaxed)
    }

    /// Waits until no connection is open, or `deadline` passes; returns how many were left.
    pub async fn wait_idle(&self, deadline: Duration) -> usize {
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.active() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.active()
    }
}

pub struct ConnectionGuard(Arc<DrainInner>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Accepts on `listener` until draining starts, handing each connection to `handle`.
pub async fn accept_loop<F, Fut>(listener: TcpListener, drain: Drain, name: &'static str, handle: F)
where
    F: Fn(tokio::net::TcpStream, SocketAddr, ConnectionGuard) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut errors = meshcore::accept::AcceptErrors::new(name);
    loop {
        tokio::select! {
            _ = drain.started() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    errors.accepted();
                    let _ = tcp.set_nodelay(true);
                    let _ = meshcore::control::Keepalive::DATA_PATH.apply_tcp(&tcp);
                    drain.spawn_connection(|guard| handle(tcp, peer, guard));
                }
                Err(e) => errors.failed(&listener, e).await,
            }
        }
    }
}

/// A workload's data-plane listeners.
pub struct Listeners {
    pub hbone: TcpListener,
    pub plaintext: TcpListener,
    pub outbound: TcpListener,
    /// Only with `UNSTABLE_ENABLE_SOCKS5`.
    pub socks5: Option<TcpListener>,
}

/// Serves `proxy`'s listeners until its drain starts (HBONE through `hbone_server`, which
/// presents the workload's certificate).
pub fn serve(
    proxy: Arc<Proxy>,
    hbone_server: Arc<meshcore::hbone::server::HboneServer>,
    listeners: Listeners,
) {
    revalidate::spawn_watch(&proxy);
    let p = proxy.clone();
    let handler = move |req| {
        let proxy = p.clone();
        let guard = proxy.drain.track();
        async move {
            let drain = proxy.drain.clone();
            tokio::select! {
                _ = inbound::handle_hbone(proxy, req, guard) => {}
                _ = drain.closed() => {}
            }
        }
    };
    let d = proxy.drain.clone();
    tokio::spawn(hbone_server.serve(listeners.hbone, handler, async move { d.started().await }));
    let p = proxy.clone();
    tokio::spawn(accept_loop(
        listeners.outbound,
        proxy.drain.clone(),
        "outbound",
        move |tcp, peer, guard| outbound::handle_captured(p.clone(), tcp, peer, guard),
    ));
    let p = proxy.clone();
    tokio::spawn(accept_loop(
        listeners.plaintext,
        proxy.drain.clone(),
        "inbound plaintext",
        move |tcp, peer, guard| inbound::handle_plaintext(p.clone(), tcp, peer, guard),
    ));
    if let Some(socks5_l) = listeners.socks5 {
        let p = proxy.clone();
        tokio::spawn(accept_loop(
            socks5_l,
            proxy.drain.clone(),
            "socks5",
            move |tcp, peer, guard| socks5::handle(p.clone(), tcp, peer, guard),
        ));
    }
}

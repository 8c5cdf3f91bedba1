//! The gateway's sockets: one per listener port of the configuration in force, at the bind
//! address (the pod IP). Ports follow configuration changes (a port no longer configured stops
//! accepting, its open connections go on; a new one is bound); a port that fails to bind is
//! logged with the reason, retried every few seconds and on every change, and keeps the
//! waypoint unready, without affecting the other ports. The protocol of a connection (HTTP, or
//! TLS terminated with the certificate chosen by SNI) is read from the configuration when it
//! is accepted.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshcore::l7::ingress::ListenerProtocol;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::proxy::gateway::{self, Accepted, Listener};
use crate::proxy::Proxy;

/// How often a port that failed to bind is tried again.
const RETRY_BIND: Duration = Duration::from_secs(5);

/// The gateway listener sockets of one waypoint.
pub struct GatewayListeners {
    proxy: Arc<Proxy>,
    bind: IpAddr,
    state: Mutex<State>,
    /// Turns true when the waypoint drains: connections shut down gracefully.
    drain: watch::Sender<bool>,
    /// Open connections, counted with the waypoint's tunnels for the drain.
    open: Arc<AtomicUsize>,
}

#[derive(Default)]
struct State {
    bound: BTreeMap<u16, Bound>,
    /// Ports that could not be bound, and why.
    failed: BTreeMap<u16, String>,
    draining: bool,
}

struct Bound {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl GatewayListeners {
    /// Binds the configured ports now, then follows configuration changes until `shutdown`.
    pub async fn start(
        proxy: Arc<Proxy>,
        bind: IpAddr,
        open: Arc<AtomicUsize>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let listeners = Arc::new(Self {
            proxy,
            bind,
            state: Mutex::new(State::default()),
            drain: watch::channel(false).0,
            open,
        });
        let changes = listeners.proxy.store.subscribe();
        listeners.reconcile().await;
        tokio::spawn(listeners.clone().follow(changes, shutdown));
        listeners
    }

    async fn follow(
        self: Arc<Self>,
        mut changes: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let retry = !self.state().failed.is_empty();
            tokio::select! {
                _ = async { drop(shutdown.wait_for(|s| *s).await) } => break,
                changed = changes.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(RETRY_BIND), if retry => {}
            }
            if self.state().draining {
                break;
            }
            self.reconcile().await;
        }
        self.stop_accepting();
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("gateway listeners lock")
    }

    /// Binds what the configuration has and the waypoint lacks, closes what it no longer has.
    async fn reconcile(&self) {
        let snapshot = self.proxy.store.load();
        let wanted: Vec<u16> = snapshot
            .ingress
            .as_ref()
            .map(|i| i.ports.keys().copied().collect())
            .unwrap_or_default();
        let missing: Vec<u16> = {
            let mut state = self.state();
            if state.draining {
                return;
            }
            state.bound.retain(|port, b| {
                let keep = wanted.contains(port);
                if !keep {
                    b.accept.abort();
                    tracing::info!(port, address = %b.addr, "gateway listener removed: no longer accepting");
                }
                keep
            });
            state.failed.retain(|port, _| wanted.contains(port));
            wanted
                .iter()
                .copied()
                .filter(|p| !state.bound.contains_key(p))
                .collect()
        };
        for port in missing {
            let addr = SocketAddr::new(self.bind, port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let addr = listener.local_addr().unwrap_or(addr);
                    let accept = tokio::spawn(accept(
                        listener,
                        port,
                        self.proxy.clone(),
                        self.open.clone(),
                        self.drain.subscribe(),
                    ));
                    tracing::info!(port, address = %addr, "gateway listener accepting");
                    let mut state = self.state();
                    state.failed.remove(&port);
                    state.bound.insert(port, Bound { addr, accept });
                }
                Err(e) => {
                    tracing::warn!(port, address = %addr, "gateway listener: cannot bind: {e} (retried every {RETRY_BIND:?})");
                    self.state()
                        .failed
                        .insert(port, format!("binding {addr}: {e}"));
                }
            }
        }
    }

    /// Every configured port is accepting.
    pub fn ready(&self) -> bool {
        self.state().failed.is_empty()
    }

    /// The bound ports and their socket addresses.
    pub fn addresses(&self) -> Vec<(u16, SocketAddr)> {
        self.state()
            .bound
            .iter()
            .map(|(port, b)| (*port, b.addr))
            .collect()
    }

    /// Stops accepting and asks open connections to finish (HTTP/2 GOAWAY, HTTP/1 closed once
    /// idle).
    pub fn drain(&self) {
        self.state().draining = true;
        self.stop_accepting();
        self.drain.send_replace(true);
    }

    fn stop_accepting(&self) {
        let mut state = self.state();
        for (_, b) in std::mem::take(&mut state.bound) {
            b.accept.abort();
        }
    }

    /// For `/config_dump`: the sockets and the ports that failed to bind.
    pub fn dump(&self) -> Value {
        let state = self.state();
        let bound: Vec<Value> = state
            .bound
            .iter()
            .map(|(port, b)| json!({"port": port, "address": b.addr.to_string()}))
            .collect();
        let failed: Vec<Value> = state
            .failed
            .iter()
            .map(|(port, e)| json!({"port": port, "error": e}))
            .collect();
        json!({ "bound": bound, "failed": failed })
    }
}

/// Accepts on one port until aborted; each connection is served on its own task.
async fn accept(
    listener: TcpListener,
    port: u16,
    proxy: Arc<Proxy>,
    open: Arc<AtomicUsize>,
    drain: watch::Receiver<bool>,
) {
    let tls = TlsAcceptor::from(crate::gateway::certs::server_config(
        proxy.store.clone(),
        port,
    ));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: do not spin.
                tracing::warn!(port, "gateway listener: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let protocol = proxy
            .store
            .load()
            .ingress
            .as_ref()
            .and_then(|i| i.ports.get(&port))
            .map(|p| p.protocol);
        let Some(protocol) = protocol else {
            continue;
        };
        let local = tcp.local_addr().unwrap_or(SocketAddr::new(peer.ip(), port));
        let _ = tcp.set_nodelay(true);
        let accepted = Accepted {
            listener: Listener {
                port,
                https: protocol == ListenerProtocol::Https,
            },
            peer,
            local,
            sni: None,
        };
        let (proxy, open, drain, tls) = (proxy.clone(), open.clone(), drain.clone(), tls.clone());
        tokio::spawn(async move {
            open.fetch_add(1, Ordering::Relaxed);
            connection(proxy, tcp, accepted, tls, drain).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn connection(
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    mut accepted: Accepted,
    tls: TlsAcceptor,
    drain: watch::Receiver<bool>,
) {
    if !accepted.listener.https {
        return gateway::serve(proxy, tcp, accepted, drain).await;
    }
    let timeout = proxy.settings.header_timeout;
    match tokio::time::timeout(timeout, tls.accept(tcp)).await {
        Ok(Ok(stream)) => {
            accepted.sni = stream.get_ref().1.server_name().map(str::to_owned);
            gateway::serve(proxy, stream, accepted, drain).await
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %accepted.peer, port = accepted.listener.port, "TLS handshake failed: {e}")
        }
        Err(_) => {
            tracing::debug!(peer = %accepted.peer, port = accepted.listener.port, "TLS handshake timed out")
        }
    }
}

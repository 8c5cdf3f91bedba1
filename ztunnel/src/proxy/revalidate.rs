//! Established inbound connections decided again when the config changes: as Istio's ztunnel
//! does, a connection that a new policy (or a removed ALLOW) no longer admits is closed.
//!
//! Each admitted connection is registered with what its decision was made on and its
//! application socket's descriptor number. Closing shuts that socket down, so the relay ends
//! by itself with its byte counts intact; [`Registration::cut`] is the fallback that ends the
//! relay after a grace period if the client side stays silent. Cost per connection: one map
//! insert and removal under an uncontended lock; no descriptor of its own (a `dup` here was
//! the third descriptor per inbound tunnel, a third of the per-tunnel descriptor cost).
//!
//! Why the bare number is safe: the socket is owned by the [`Admitted`] returned by
//! [`InboundConnections::register`], whose `Drop` removes the entry (under the lock) before
//! the socket's own drop closes it. So while an entry is in the map, its socket is open, and
//! `revalidate`, which shuts sockets down only while holding the lock, never touches a number
//! the kernel has handed to another socket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use meshcore::identity::SpiffeId;
use meshcore::policy::Connection;
use tokio::sync::Notify;

use super::Proxy;

/// How long a cut connection's relay gets to end by itself before it is dropped.
const CUT_GRACE: Duration = Duration::from_secs(1);

struct Tracked {
    source_ip: IpAddr,
    destination: SocketAddr,
    identity: Option<SpiffeId>,
    /// The application socket's descriptor, open for as long as this entry exists.
    app: RawFd,
    cut: Arc<Notify>,
}

/// The inbound connections of one served workload.
#[derive(Default)]
pub struct InboundConnections {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Tracked>>,
}

/// Keeps a connection registered; dropping it unregisters.
pub struct Registration {
    id: u64,
    set: Arc<InboundConnections>,
    cut: Arc<Notify>,
}

impl Registration {
    /// Completes a grace period after the connection was cut by a policy change.
    pub async fn cut(&self) {
        self.cut.notified().await;
        tokio::time::sleep(CUT_GRACE).await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.set.live.lock().expect("inbound lock").remove(&self.id);
    }
}

/// An admitted connection's application socket with its registration. Fields drop in
/// declaration order, so the entry goes before the socket closes (see the module's note).
pub struct Admitted {
    pub registration: Registration,
    pub app: tokio::net::TcpStream,
}

impl Drop for Admitted {
    /// Nothing to do: having a `Drop` keeps the socket from being moved out and outliving its
    /// registration, which the module's safety note relies on.
    fn drop(&mut self) {}
}

impl InboundConnections {
    /// Registers an admitted connection, taking its socket to the application.
    pub fn register(
        self: &Arc<Self>,
        source_ip: IpAddr,
        destination: SocketAddr,
        identity: Option<&SpiffeId>,
        app: tokio::net::TcpStream,
    ) -> Admitted {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cut = Arc::new(Notify::new());
        self.live.lock().expect("inbound lock").insert(
            id,
            Tracked {
                source_ip,
                destination,
                identity: identity.cloned(),
                app: app.as_raw_fd(),
                cut: cut.clone(),
            },
        );
        Admitted {
            registration: Registration {
                id,
                set: self.clone(),
                cut,
            },
            app,
        }
    }

    pub fn len(&self) -> usize {
        self.live.lock().expect("inbound lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides every registered connection against the current config; closes those denied.
    /// Returns how many were closed.
    pub fn revalidate(&self, proxy: &Proxy) -> usize {
        let snap = proxy.state.load();
        let Some(served) = proxy.served(&snap) else {
            return 0; // the workload left the config: its drain, not policy, ends them
        };
        let policies = snap.policies_for(&served);
        let mut closed = 0;
        for t in self.live.lock().expect("inbound lock").values() {
            let principal = t.identity.as_ref().map(SpiffeId::principal);
            let conn = Connection {
                source_ip: t.source_ip,
                destination: t.destination,
                identity: t.identity.as_ref(),
                principal: principal.as_deref(),
            };
            let decision = policies.decide(&conn);
            if decision.allowed() {
                continue;
            }
            tracing::info!(connection = %conn, "closing an established connection: {} (config changed)", decision.reason);
            proxy
                .denials
                .record(conn.to_string(), decision.reason.to_string());
            proxy.metrics.flows.record(closed_by_policy(
                &snap,
                &served,
                t,
                decision.reason.to_string(),
            ));
            // SAFETY: the entry exists, so its socket is open (module note); the lock is held,
            // so it cannot be unregistered and closed meanwhile.
            let app = unsafe { BorrowedFd::borrow_raw(t.app) };
            let _ = socket2::SockRef::from(&app).shutdown(std::net::Shutdown::Both);
            t.cut.notify_one();
            closed += 1;
        }
        closed
    }
}

/// The flow record of an established connection a new policy closed.
fn closed_by_policy(
    snap: &crate::state::Snapshot,
    served: &crate::state::WorkloadEntry,
    t: &Tracked,
    reason: String,
) -> crate::flows::Event {
    use crate::flows::{Event, Flow, Kind, Peer};
    let source = snap.workload_by_ip("", t.source_ip);
    let flow = Flow {
        reporter: "destination",
        source: Peer {
            namespace: source
                .map(|w| w.workload.namespace.clone())
                .unwrap_or_default(),
            workload: source.map(|w| w.workload.name.clone()).unwrap_or_default(),
            principal: t
                .identity
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            address: Some(SocketAddr::new(t.source_ip, 0)),
        },
        destination: Peer {
            namespace: served.workload.namespace.clone(),
            workload: served.workload.name.clone(),
            principal: served.identity.to_string(),
            address: Some(t.destination),
        },
        service: String::new(),
        mtls: t.identity.is_some(),
    };
    Event::refused(
        Kind::Denied,
        Arc::new(flow),
        "DENY",
        format!("{reason} (established connection closed: the config changed)"),
    )
}

/// Re-decides `proxy`'s connections after every config swap, for as long as the proxy lives.
pub fn spawn_watch(proxy: &Arc<Proxy>) {
    let weak: Weak<Proxy> = Arc::downgrade(proxy);
    let mut changed = proxy.state.subscribe();
    tokio::spawn(async move {
        while changed.changed().await.is_ok() {
            let Some(proxy) = weak.upgrade() else {
                return;
            };
            if !proxy.inbound.is_empty() {
                proxy.inbound.revalidate(&proxy);
            }
        }
    });
}

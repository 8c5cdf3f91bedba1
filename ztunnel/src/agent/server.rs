//! The agent's side of the ZDS socket: it keeps the set of enrolled pods and keeps the
//! connected ztunnel in step with it.
//!
//! Enrolling a pod installs the reply routing (the mark rules, `ip rule`, table 100: what lets
//! ztunnel connect to the application from a client's address), then sends the pod to
//! ztunnel; once ztunnel has acknowledged it (its listeners are open inside the pod) the
//! redirects are installed and the pod is *ready*. Un-enrolling
//! removes the rules, then sends `del`. Either way the pod's traffic is never captured with no
//! ztunnel listener behind it. Without a connected ztunnel a newly enrolled pod gets no rules
//! (nothing could serve them); a pod already captured keeps its rules across a ztunnel restart. A ztunnel that connects (at start, or after a restart) receives the
//! whole current set as a snapshot (`add` for each pod, then `snapshot_sent`) and then every
//! change; the agent works level-triggered, comparing what ztunnel holds with what is enrolled,
//! so a burst of changes, or a change during a reconnect, is never lost.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use meshcore::api::zds::WorkloadInfo;
use meshcore::zds::{Conn, Listener, Request};
use tokio::sync::watch;

use super::{discover, host, rules};
use crate::inpod::netns::Netns;

/// A pod in the mesh on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrolledPod {
    pub uid: String,
    pub info: WorkloadInfo,
    /// Where its network namespace can be opened (`/run/netns/...`, `/proc/PID/ns/net`, the
    /// CNI's `CNI_NETNS`).
    pub netns: PathBuf,
    /// The pod's addresses (its Workload's, or before the control plane knows them, the CNI
    /// result's): the namespace must hold every one of them to be enrolled.
    pub ips: Vec<IpAddr>,
}

impl EnrolledPod {
    /// The same pod in the same namespace (the addresses aside).
    pub fn same_place(&self, other: &EnrolledPod) -> bool {
        self.uid == other.uid && self.info == other.info && self.netns == other.netns
    }
}

/// Why a pod was not enrolled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollError {
    /// The namespace does not hold the pod's addresses (or the pod has none to check).
    Addresses(String),
    Other(String),
}

impl std::fmt::Display for EnrollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnrollError::Addresses(e) | EnrollError::Other(e) => f.write_str(e),
        }
    }
}

/// Checks that the namespace at `path` (opened as `netns`) holds every one of `ips`: a pod is
/// only ever enrolled with the namespace that has its addresses, so a namespace named for it
/// by mistake (or on purpose: another process's, on the CNI socket) is refused.
pub fn check_addresses(
    pod: &str,
    path: &std::path::Path,
    netns: &Netns,
    ips: &[IpAddr],
) -> Result<(), String> {
    if ips.is_empty() {
        return Err(format!(
            "pod {pod}: no address known to check network namespace {} against; not enrolled",
            path.display()
        ));
    }
    let held = netns.run(discover::interface_addresses).map_err(|e| {
        format!(
            "pod {pod}: reading the addresses of {}: {e}",
            path.display()
        )
    })?;
    let missing: Vec<String> = ips
        .iter()
        .filter(|ip| !held.contains(ip))
        .map(|ip| ip.to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "pod {pod}: network namespace {} does not hold the pod's address {}; not enrolled",
            path.display(),
            missing.join(", ")
        ))
    }
}

#[derive(Default)]
pub struct Agent {
    pods: Mutex<BTreeMap<String, EnrolledPod>>,
    /// The namespace each enrolled pod's path named at enrolment (its nsfs inode): a path that
    /// names another namespace later (a `/proc/PID` whose process is gone, its pid reused) is
    /// never handed to ztunnel or given rules.
    inodes: Mutex<BTreeMap<String, u64>>,
    changed: watch::Sender<u64>,
    /// Pods ztunnel acknowledged and whose rules are in.
    ready: Mutex<BTreeSet<String>>,
    ready_changed: watch::Sender<u64>,
    rules: rules::RuleOptions,
    timeouts: ZdsTimeouts,
    /// The node's own namespace, where the probe SNAT for enrolled pods goes ([`host`]);
    /// `None`: no host rules (tests that play the node in their own namespace).
    host: Option<Netns>,
    /// Serialises rewrites of the host rules.
    host_sync: Mutex<()>,
    /// Enrolments refused because the namespace did not hold the pod's addresses.
    address_mismatches: AtomicU64,
}

/// How long the agent waits on a ztunnel connection. It serves one ztunnel at a time, so a
/// peer that connects and goes quiet must not hold the socket from the real one.
#[derive(Debug, Clone, Copy)]
pub struct ZdsTimeouts {
    /// For the hello after connecting.
    pub hello: std::time::Duration,
    /// For the answer to each request (ztunnel sets a pod up in milliseconds).
    pub ack: std::time::Duration,
}

impl Default for ZdsTimeouts {
    fn default() -> Self {
        Self {
            hello: std::time::Duration::from_secs(5),
            ack: std::time::Duration::from_secs(30),
        }
    }
}

fn timed_out(what: &str, after: std::time::Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("ztunnel sent no {what} within {after:?}; connection dropped"),
    )
}

impl Agent {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn with_rules(rules: rules::RuleOptions) -> Arc<Self> {
        Arc::new(Self {
            rules,
            ..Self::default()
        })
    }

    /// With the node's probe SNAT ([`host`]) in `node`, the agent's own namespace in a
    /// cluster. Writes the host rules at once (an empty set: clears a previous run's).
    pub fn for_node(rules: rules::RuleOptions, node: Netns) -> Result<Arc<Self>, String> {
        let agent = Arc::new(Self {
            rules,
            host: Some(node),
            ..Self::default()
        });
        agent.sync_host()?;
        Ok(agent)
    }

    /// Enrolments (and CNI `ADD`s) refused so far because the namespace lacked the pod's
    /// addresses.
    pub fn address_mismatches(&self) -> u64 {
        self.address_mismatches.load(Ordering::Relaxed)
    }

    /// Counts a refusal made before enrolment (a CNI `ADD`).
    pub fn count_address_mismatch(&self) {
        self.address_mismatches.fetch_add(1, Ordering::Relaxed);
    }

    /// Rewrites the node's probe SNAT with the enrolled pods' IPv4 addresses.
    fn sync_host(&self) -> Result<(), String> {
        let Some(node) = &self.host else {
            return Ok(());
        };
        let _one = self.host_sync.lock().expect("host lock");
        let ips: BTreeSet<Ipv4Addr> = self
            .pods
            .lock()
            .expect("pods lock")
            .values()
            .flat_map(|p| p.ips.iter())
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        host::sync(node, &ips).map_err(|e| format!("node probe SNAT: {e}"))
    }

    /// Deletes the node's probe SNAT (the agent stops).
    pub fn remove_host_rules(&self) -> Result<(), String> {
        let Some(node) = &self.host else {
            return Ok(());
        };
        let _one = self.host_sync.lock().expect("host lock");
        host::remove(node).map_err(|e| format!("node probe SNAT: {e}"))
    }

    /// With other ZDS timeouts (tests).
    pub fn with_timeouts(timeouts: ZdsTimeouts) -> Arc<Self> {
        Arc::new(Self {
            timeouts,
            ..Self::default()
        })
    }

    /// Sends `request` and waits for ztunnel's answer, within the ack timeout.
    async fn ask(&self, conn: &Conn, request: Request) -> std::io::Result<Result<(), String>> {
        tokio::time::timeout(self.timeouts.ack, conn.request(request))
            .await
            .map_err(|_| timed_out("answer", self.timeouts.ack))?
    }

    pub fn is_enrolled(&self, uid: &str) -> bool {
        self.pods.lock().expect("pods lock").contains_key(uid)
    }

    /// Whether ztunnel serves the pod and its traffic is captured.
    pub fn is_ready(&self, uid: &str) -> bool {
        self.ready.lock().expect("ready lock").contains(uid)
    }

    /// Sees every change of the ready set.
    pub fn subscribe_ready(&self) -> watch::Receiver<u64> {
        self.ready_changed.subscribe()
    }

    fn set_ready(&self, uid: &str, ready: bool) {
        let mut set = self.ready.lock().expect("ready lock");
        let changed = if ready {
            set.insert(uid.to_owned())
        } else {
            set.remove(uid)
        };
        drop(set);
        if changed {
            self.ready_changed.send_modify(|g| *g += 1);
        }
    }

    pub fn enrolled(&self) -> Vec<EnrolledPod> {
        self.pods
            .lock()
            .expect("pods lock")
            .values()
            .cloned()
            .collect()
    }

    /// Puts a pod in the mesh: its namespace must hold the pod's addresses; then reply routing,
    /// then ztunnel is told; the redirects follow ztunnel's ack.
    pub fn enroll(&self, pod: EnrolledPod) -> Result<(), EnrollError> {
        let name = format!("{}/{} ({})", pod.info.namespace, pod.info.name, pod.uid);
        let netns = Netns::open(&pod.netns)
            .map_err(|e| EnrollError::Other(format!("pod {name}: {}: {e}", pod.netns.display())))?;
        if let Err(e) = check_addresses(&name, &pod.netns, &netns, &pod.ips) {
            self.address_mismatches.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(pod = %name, netns = %pod.netns.display(), "{e}");
            return Err(EnrollError::Addresses(e));
        }
        if pod.ips.iter().any(|ip| ip.is_ipv6()) {
            tracing::warn!(pod = %name, "the pod has an IPv6 address: its IPv6 TCP is not captured (IPv4 only)");
        }
        rules::prepare(&netns).map_err(|e| EnrollError::Other(format!("pod {name}: {e}")))?;
        let uid = pod.uid.clone();
        self.inodes
            .lock()
            .expect("inodes lock")
            .insert(uid.clone(), netns.inode);
        self.pods.lock().expect("pods lock").insert(uid, pod);
        self.changed.send_modify(|g| *g += 1);
        self.sync_host().map_err(EnrollError::Other)
    }

    /// The pod's addresses changed (its Workload got or changed them): its namespace must hold
    /// the new ones, or the pod is un-enrolled.
    pub fn readdress(&self, uid: &str, ips: Vec<IpAddr>) -> Result<(), EnrollError> {
        let Some(pod) = self.pods.lock().expect("pods lock").get(uid).cloned() else {
            return Ok(());
        };
        let name = format!("{}/{} ({uid})", pod.info.namespace, pod.info.name);
        let checked = self
            .open_pinned(&pod)
            .and_then(|netns| check_addresses(&name, &pod.netns, &netns, &ips));
        if let Err(e) = checked {
            self.address_mismatches.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(pod = %name, netns = %pod.netns.display(), "{e}; un-enrolling");
            self.unenroll(uid).map_err(EnrollError::Other)?;
            return Err(EnrollError::Addresses(e));
        }
        if let Some(p) = self.pods.lock().expect("pods lock").get_mut(uid) {
            p.ips = ips;
        }
        self.sync_host().map_err(EnrollError::Other)
    }

    /// The pod's namespace, if its path still names the one it was enrolled with.
    fn open_pinned(&self, pod: &EnrolledPod) -> Result<Netns, String> {
        let netns = Netns::open(&pod.netns).map_err(|e| format!("{}: {e}", pod.netns.display()))?;
        let pinned = self
            .inodes
            .lock()
            .expect("inodes lock")
            .get(&pod.uid)
            .copied();
        if pinned.is_some_and(|inode| inode != netns.inode) {
            return Err(format!(
                "{} names another network namespace than at enrolment",
                pod.netns.display()
            ));
        }
        Ok(netns)
    }

    /// Takes a pod out of the mesh: the redirects go first, then ztunnel is told. Established
    /// connections keep their NAT translation and reply routing, and carry on.
    pub fn unenroll(&self, uid: &str) -> Result<(), String> {
        let Some(pod) = self.pods.lock().expect("pods lock").remove(uid) else {
            return Ok(());
        };
        self.set_ready(uid, false);
        let removed = match self.open_pinned(&pod) {
            Ok(netns) => rules::remove(&netns).map_err(|e| format!("pod {uid}: {e}")),
            // The pod (and its namespace) is gone already: nothing to clean.
            Err(_) => Ok(()),
        };
        self.inodes.lock().expect("inodes lock").remove(uid);
        self.changed.send_modify(|g| *g += 1);
        let host = self.sync_host();
        removed.and(host)
    }

    /// ztunnel holds the pod: install its redirects (idempotent; again after a reconnect).
    fn capture(&self, pod: &EnrolledPod) {
        let netns = match self.open_pinned(pod) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(uid = %pod.uid, "not capturing: {e}");
                return;
            }
        };
        if let Err(e) = rules::install(&netns, self.rules) {
            tracing::warn!(uid = %pod.uid, "installing the redirect rules: {e}");
            return;
        }
        // Checked and marked under the pods lock, so an un-enrolment cannot slip in between.
        let pods = self.pods.lock().expect("pods lock");
        if pods.contains_key(&pod.uid) {
            self.set_ready(&pod.uid, true);
        } else {
            drop(pods);
            let _ = rules::remove(&netns); // un-enrolled meanwhile: leave no redirects behind
        }
    }

    /// Serves ztunnel connections on `listener`, one at a time, until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: Listener) {
        loop {
            let conn = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("ZDS accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            };
            if let Err(e) = self.clone().serve_ztunnel(&conn).await {
                tracing::warn!("ztunnel connection ended: {e}");
            }
        }
    }

    async fn serve_ztunnel(self: Arc<Self>, conn: &Conn) -> std::io::Result<()> {
        tokio::time::timeout(self.timeouts.hello, conn.expect_hello())
            .await
            .map_err(|_| timed_out("hello", self.timeouts.hello))??;
        tracing::info!("ztunnel connected; sending the snapshot");
        let mut changed = self.changed.subscribe();
        // What ztunnel holds: uid → the pod as sent.
        let mut held: BTreeMap<String, EnrolledPod> = BTreeMap::new();
        self.sync(conn, &mut held).await?;
        if let Err(e) = self.ask(conn, Request::SnapshotSent).await? {
            tracing::warn!("ztunnel refused the snapshot end: {e}");
        }
        // Pods ztunnel refused, or whose namespace could not be opened, are tried again.
        let mut retry = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            // Between requests ztunnel sends nothing: readable means it went away (or broke the
            // protocol), and the next ztunnel's connection is waiting to be accepted.
            tokio::select! {
                r = changed.changed() => if r.is_err() { return Ok(()) },
                _ = retry.tick() => {}
                r = conn.recv() => {
                    return Err(match r? {
                        None => std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "ztunnel disconnected"),
                        Some(_) => std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected message from ztunnel"),
                    });
                }
            }
            self.sync(conn, &mut held).await?;
        }
    }

    /// Sends ztunnel what changed between `held` and the enrolled set.
    async fn sync(
        &self,
        conn: &Conn,
        held: &mut BTreeMap<String, EnrolledPod>,
    ) -> std::io::Result<()> {
        let current: BTreeMap<String, EnrolledPod> = self.pods.lock().expect("pods lock").clone();
        for uid in held.keys().cloned().collect::<Vec<_>>() {
            if !current.contains_key(&uid) {
                if let Err(e) = self.ask(conn, Request::Del { uid: uid.clone() }).await? {
                    tracing::warn!(%uid, "ztunnel refused del: {e}");
                }
                held.remove(&uid);
            }
        }
        for (uid, pod) in current {
            if held.get(&uid).is_some_and(|h| h.same_place(&pod)) {
                continue;
            }
            let netns: OwnedFd = match self.open_pinned(&pod) {
                Ok(n) => n.into_fd(),
                Err(e) => {
                    tracing::warn!(%uid, "network namespace: {e}");
                    continue;
                }
            };
            let add = Request::Add {
                uid: uid.clone(),
                info: Some(pod.info.clone()),
                netns,
            };
            match self.ask(conn, add).await? {
                Ok(()) => {
                    tokio::task::block_in_place(|| self.capture(&pod));
                    held.insert(uid, pod);
                }
                Err(e) => tracing::warn!(%uid, "ztunnel refused the pod: {e}"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use meshcore::zds::{Conn, Listener, Request};

    use super::{check_addresses, Agent, ZdsTimeouts};

    /// S5: a namespace is taken for a pod only if it holds every one of the pod's addresses.
    #[test]
    fn a_namespace_without_the_pods_address_is_refused_naming_it() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED a_namespace_without: entering a namespace needs root");
            return;
        }
        let path = std::path::Path::new("/proc/self/ns/net");
        let netns = crate::inpod::netns::Netns::open(path).unwrap();
        let missing = "192.0.2.77".parse().unwrap();
        let e = check_addresses("shop/v", path, &netns, &[missing]).unwrap_err();
        assert!(
            e.contains("shop/v") && e.contains("/proc/self/ns/net") && e.contains("192.0.2.77"),
            "{e}"
        );
        let e = check_addresses("shop/v", path, &netns, &[]).unwrap_err();
        assert!(e.contains("no address known"), "{e}");
        let held = crate::agent::discover::addresses_in(path).unwrap();
        if !held.is_empty() {
            check_addresses("shop/v", path, &netns, &held).expect("its own addresses");
        }
    }

    /// S5: the agent serves one ztunnel at a time; one that connects and then never answers
    /// must not keep the next (the real one, after a restart) waiting forever.
    #[tokio::test]
    async fn a_silent_ztunnel_does_not_keep_the_socket_from_the_next() {
        let dir = std::env::temp_dir().join(format!("zds-timeouts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("zds.sock");
        let agent = Agent::with_timeouts(ZdsTimeouts {
            hello: Duration::from_millis(300),
            ack: Duration::from_millis(300),
        });
        tokio::spawn(agent.serve(Listener::bind(&socket).unwrap()));
        // Says hello, then never answers the end of the snapshot.
        let silent = Conn::connect(&socket).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let next = Conn::connect(&socket).await.unwrap();
        let request = tokio::time::timeout(Duration::from_secs(3), next.next_request())
            .await
            .expect("the next ztunnel is served once the silent one timed out")
            .unwrap();
        assert!(
            matches!(request, Some(Request::SnapshotSent)),
            "{request:?}"
        );
        next.ack(None).await.unwrap();
        drop(silent);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

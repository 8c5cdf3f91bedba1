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
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use meshcore::api::zds::WorkloadInfo;
use meshcore::zds::{Conn, Listener, Request};
use tokio::sync::watch;

use super::rules;
use crate::inpod::netns::Netns;

/// A pod in the mesh on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrolledPod {
    pub uid: String,
    pub info: WorkloadInfo,
    /// Where its network namespace can be opened (`/run/netns/...`, `/proc/PID/ns/net`, the
    /// CNI's `CNI_NETNS`).
    pub netns: PathBuf,
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

    /// Puts a pod in the mesh: reply routing first, then ztunnel is told; the redirects follow
    /// ztunnel's ack.
    pub fn enroll(&self, pod: EnrolledPod) -> Result<(), String> {
        let netns = Netns::open(&pod.netns)
            .map_err(|e| format!("pod {}: {}: {e}", pod.uid, pod.netns.display()))?;
        rules::prepare(&netns).map_err(|e| format!("pod {}: {e}", pod.uid))?;
        let uid = pod.uid.clone();
        self.inodes
            .lock()
            .expect("inodes lock")
            .insert(uid.clone(), netns.inode);
        self.pods.lock().expect("pods lock").insert(uid, pod);
        self.changed.send_modify(|g| *g += 1);
        Ok(())
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
        removed
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
            if held.get(&uid) == Some(&pod) {
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

    use super::{Agent, ZdsTimeouts};

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

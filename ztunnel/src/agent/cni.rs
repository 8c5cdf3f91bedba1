//! The agent's end of the CNI plugin's socket: one JSON line in (`mesh_cni::PodEvent`), one
//! JSON line out (`mesh_cni::AgentReply`) per connection. The plugin blocks the pod's start on
//! the reply, so an `ADD` is answered once the pod is enrolled (or known not to be).

use std::path::Path;

use mesh_cni::{AgentReply, PodEvent};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// Longest event line taken (a pod event is a few hundred bytes).
const MAX_LINE: u64 = 64 * 1024;

/// An event with the way back to the plugin.
pub struct CniRequest {
    pub event: PodEvent,
    pub reply: oneshot::Sender<AgentReply>,
}

/// How long the plugin may take to send its event line.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Binds the socket: 0600 (the runtime runs the plugin as root), in a 0700 directory when the
/// agent creates it.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        meshcore::zds::private_dir(dir)?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {}: {e}", path.display())))?;
    meshcore::zds::owner_only(path)?;
    Ok(listener)
}

/// Accepts plugin connections and passes their events to `events`.
pub async fn serve(listener: UnixListener, events: mpsc::Sender<CniRequest>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("CNI socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Only root (the container runtime) or the agent's own user may report pods.
        match stream.peer_cred().map(|c| c.uid()) {
            Ok(uid) if meshcore::zds::peer_allowed(uid) => {}
            other => {
                tracing::warn!(peer = ?other, "CNI socket: a connection from another user refused");
                continue;
            }
        }
        let events = events.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let read = tokio::time::timeout(
                READ_TIMEOUT,
                BufReader::new(read.take(MAX_LINE)).read_line(&mut line),
            )
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no event within 5 s",
                ))
            });
            let reply = match read {
                Ok(_) => match serde_json::from_str::<PodEvent>(&line) {
                    Ok(event) => {
                        let (tx, rx) = oneshot::channel();
                        let sent = events.send(CniRequest { event, reply: tx }).await;
                        match (sent, rx.await) {
                            (Ok(()), Ok(reply)) => reply,
                            _ => refused("the agent is shutting down"),
                        }
                    }
                    Err(e) => refused(&format!("unreadable pod event: {e}")),
                },
                Err(e) => refused(&format!("reading the pod event: {e}")),
            };
            let mut out = serde_json::to_string(&reply).expect("reply serialises");
            out.push('\n');
            let _ = write.write_all(out.as_bytes()).await;
        });
    }
}

fn refused(why: &str) -> AgentReply {
    tracing::warn!("CNI request refused: {why}");
    AgentReply {
        ok: false,
        error: why.to_owned(),
        enrolled: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn the_socket_is_its_owners_only_and_other_users_are_refused() {
        let dir = std::env::temp_dir().join(format!("cni-sock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("run").join("cni.sock");
        let _listener = bind(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700, "a directory it made");
        assert!(meshcore::zds::peer_allowed(0));
        // SAFETY: geteuid has no preconditions.
        assert!(meshcore::zds::peer_allowed(unsafe { libc::geteuid() }));
        assert!(!meshcore::zds::peer_allowed(65534) || unsafe { libc::geteuid() } == 65534);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

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

pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    UnixListener::bind(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {}: {e}", path.display())))
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
        let events = events.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let reply = match BufReader::new(read.take(MAX_LINE))
                .read_line(&mut line)
                .await
            {
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

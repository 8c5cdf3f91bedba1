//! An accept loop for the small HTTP side doors (admin, metrics, readiness, debug): a cap on
//! the connections open at once, and a pause after a failed accept. Without the pause, running
//! out of descriptors (EMFILE) spins: the connection stays in the backlog, the listener stays
//! readable, and every retry fails at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// First pause after a failed accept; doubles while failures go on.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// Longest pause after a failed accept.
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// Failed accepts are logged at most this often (with how many there were).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Accepts connections from a listener, at most `max_connections` open at once.
pub struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    what: &'static str,
    pause: Duration,
    failures: u64,
    last_log: Option<Instant>,
}

impl Acceptor {
    /// `what` names the listener in log lines.
    pub fn new(listener: TcpListener, max_connections: usize, what: &'static str) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            what,
            pause: FIRST_PAUSE,
            failures: 0,
            last_log: None,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection and the permit that counts it (hold it as long as the connection
    /// lives). At the cap, waits for a connection to end before accepting: new clients wait in
    /// the backlog. Cancel-safe.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        loop {
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            match self.listener.accept().await {
                Ok((tcp, peer)) => {
                    self.pause = FIRST_PAUSE;
                    return (tcp, peer, permit);
                }
                Err(e) => {
                    drop(permit);
                    self.failures += 1;
                    let due = self.last_log.is_none_or(|at| at.elapsed() >= LOG_EVERY);
                    if due {
                        tracing::warn!(
                            listener = self.what,
                            failures = self.failures,
                            retry_in = ?self.pause,
                            "accept failed: {e}"
                        );
                        self.last_log = Some(Instant::now());
                        self.failures = 0;
                    }
                    tokio::time::sleep(self.pause).await;
                    self.pause = (self.pause * 2).min(MAX_PAUSE);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cap: with one connection held, the next is accepted only once it ends.
    #[tokio::test]
    async fn at_the_cap_the_next_connection_waits_for_one_to_end() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut acceptor = Acceptor::new(listener, 1, "test");
        let _a = TcpStream::connect(addr).await.unwrap();
        let (first, _, permit) = acceptor.accept().await;
        let _b = TcpStream::connect(addr).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(200), acceptor.accept()).await;
        assert!(waited.is_err(), "accepted past the cap");
        drop((first, permit));
        let _next = tokio::time::timeout(Duration::from_secs(2), acceptor.accept())
            .await
            .expect("accepted once a connection ended");
    }
}

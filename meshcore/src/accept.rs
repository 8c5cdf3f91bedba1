//! Accepting when things go wrong. [`Acceptor`] is the loop for the small HTTP side doors
//! (admin, metrics, readiness, debug): a cap on the connections open at once, and a pause after
//! a failed accept. [`AcceptErrors`] is that pause for the data-path loops, which keep their own
//! accept: without it, running out of descriptors (EMFILE) spins: the connection stays in the
//! backlog, the listener stays readable, and every retry fails at once. Out of descriptors, it
//! also sheds: a descriptor kept in reserve is freed to accept the waiting connection and close
//! it at once, so the client learns now instead of hanging in the backlog, while established
//! connections go on.

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

/// Connections accepted and closed at once because the process was out of descriptors.
static SHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many connections were shed for want of descriptors, process-wide.
pub fn shed_total() -> u64 {
    SHED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A data-path accept loop's failures: backoff, one log line per interval, shedding.
pub struct AcceptErrors {
    what: &'static str,
    pause: Duration,
    failures: u64,
    last_log: Option<Instant>,
}

/// One descriptor held back, process-wide, to accept-and-close with when the process is out
/// of them (one for all listeners: a node ztunnel has listeners per pod).
static RESERVE: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

/// Whether the reserve is spent, so a successful accept (the hot path) takes no lock unless it
/// must refill it.
static RESERVE_SPENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

fn refill_reserve() {
    let mut reserve = RESERVE.lock().unwrap_or_else(|e| e.into_inner());
    if reserve.is_none() {
        *reserve = std::fs::File::open("/dev/null").ok();
    }
    RESERVE_SPENT.store(reserve.is_none(), std::sync::atomic::Ordering::Relaxed);
}

impl AcceptErrors {
    pub fn new(what: &'static str) -> Self {
        refill_reserve();
        Self {
            what,
            pause: FIRST_PAUSE,
            failures: 0,
            last_log: None,
        }
    }

    /// After a successful accept.
    pub fn accepted(&mut self) {
        self.pause = FIRST_PAUSE;
        if RESERVE_SPENT.load(std::sync::atomic::Ordering::Relaxed) {
            refill_reserve();
        }
    }

    /// After a failed accept on `listener`: sheds one waiting connection if out of
    /// descriptors, logs (at most once per interval, with the count), then pauses.
    pub async fn failed(&mut self, listener: &TcpListener, e: std::io::Error) {
        let out_of_descriptors = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
        let mut shed = false;
        let freed = out_of_descriptors
            && RESERVE
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .is_some();
        if freed {
            RESERVE_SPENT.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if freed {
            // The freed descriptor takes the waiting connection, which is closed at once.
            if let Ok(Ok((tcp, _))) =
                tokio::time::timeout(Duration::from_millis(1), listener.accept()).await
            {
                // A reset, not a graceful close: the client must not think it was served.
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                drop(tcp);
                SHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                shed = true;
            }
            refill_reserve();
        }
        self.failures += 1;
        if self.last_log.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            tracing::warn!(
                listener = self.what,
                failures = self.failures,
                shed_total = shed_total(),
                retry_in = ?self.pause,
                "accept failed: {e}{}",
                if out_of_descriptors { "; new connections are refused until descriptors free up, established ones go on" } else { "" }
            );
            self.last_log = Some(Instant::now());
            self.failures = 0;
        }
        if !shed {
            tokio::time::sleep(self.pause).await;
            self.pause = (self.pause * 2).min(MAX_PAUSE);
        }
    }
}

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

//! A pod's network namespace, held by fd (as the node agent hands it over).
//!
//! `setns` applies to the calling thread only, so no tokio worker ever changes namespace.
//! Sockets meant for a pod are made by the pod's socket thread: one long-lived thread per pod
//! (started on first use) that entered the pod's namespace once and does nothing but create
//! sockets on request. A socket keeps the namespace it was created in, so binding, connecting
//! and all I/O afterwards happen on tokio's threads as usual. Other work inside the namespace
//! (running `nft`, reading addresses) uses [`Netns::run`], a short-lived thread per call. A
//! thread per socket cost 10.2-10.7x a plain socket (76-92 µs); the socket thread costs 3.3-3.4x
//! (25-29 µs), the rest being the hand-off between threads. So the thread also keeps a few IPv4
//! TCP sockets ready (the kind nearly every connection needs), refilled in the background when
//! half are taken: taking one is a short lock, not a round trip (`cargo bench -p ztunnel --bench
//! netns`, as root).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A request to the pod's socket thread.
type Job = Box<dyn FnOnce() + Send>;

/// IPv4 TCP sockets kept ready per pod (file descriptors held while the pod is served).
pub const READY_SOCKETS: usize = 8;

/// Sockets made ahead by the socket thread, and whether a refill is queued.
#[derive(Default)]
struct Ready {
    sockets: Mutex<Vec<Socket>>,
    refilling: AtomicBool,
}

pub struct Netns {
    fd: OwnedFd,
    /// Identity of the namespace (its nsfs inode), for logs and equality.
    pub inode: u64,
    /// The socket thread's queue; the thread ends when this is dropped.
    sockets: std::sync::OnceLock<std::sync::mpsc::Sender<Job>>,
    ready: Arc<Ready>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "netns:[{}]", self.inode)
    }
}

impl Netns {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: fstat on a descriptor we own, into a zeroed struct.
        let inode = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
                return Err(io::Error::last_os_error());
            }
            st.st_ino
        };
        Ok(Self {
            fd,
            inode,
            sockets: std::sync::OnceLock::new(),
            ready: Arc::default(),
        })
    }

    /// The namespace's descriptor (to hand over, e.g. by SCM_RIGHTS).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Opens a namespace by path (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn open(path: &std::path::Path) -> io::Result<Self> {
        Self::new(std::fs::File::open(path)?.into())
    }

    /// Runs `f` on a fresh thread inside this namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let fd = self.fd.try_clone()?;
        std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || {
                // SAFETY: setns affects this (short-lived) thread only; fd is a namespace fd.
                if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })?
            .join()
            .map_err(|_| io::Error::other("netns thread panicked"))?
    }

    /// The socket thread's queue, starting the thread on first use.
    fn socket_thread(&self) -> io::Result<&std::sync::mpsc::Sender<Job>> {
        if let Some(queue) = self.sockets.get() {
            return Ok(queue);
        }
        let fd = self.fd.try_clone()?;
        let (queue, jobs) = std::sync::mpsc::channel::<Job>();
        let (entered_tx, entered) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("netns-sockets".into())
            .spawn(move || {
                // SAFETY: setns affects this thread only; fd is a namespace fd.
                let result = if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                };
                let ok = result.is_ok();
                let _ = entered_tx.send(result);
                drop(fd);
                if ok {
                    while let Ok(job) = jobs.recv() {
                        job();
                    }
                }
            })?;
        entered
            .recv()
            .map_err(|_| io::Error::other("netns socket thread ended"))??;
        // Two callers may race here; the loser's thread ends with its dropped queue.
        let _ = self.sockets.set(queue);
        Ok(self.sockets.get().expect("just set"))
    }

    /// A non-blocking socket created inside the namespace by its socket thread (a ready one when
    /// it is IPv4 TCP and one is left).
    pub fn socket(&self, domain: Domain, ty: Type, protocol: Protocol) -> io::Result<Socket> {
        if (domain, ty, protocol) == (Domain::IPV4, Type::STREAM, Protocol::TCP) {
            if let Some(socket) = self.take_ready()? {
                return Ok(socket);
            }
        }
        self.socket_from_thread(domain, ty, protocol)
    }

    /// A socket asked of the socket thread, waiting for its answer (no ready sockets).
    pub fn socket_from_thread(
        &self,
        domain: Domain,
        ty: Type,
        protocol: Protocol,
    ) -> io::Result<Socket> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = reply.send(new_socket(domain, ty, protocol));
        });
        let gone = || io::Error::other("netns socket thread ended");
        self.socket_thread()?.send(job).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }

    /// A ready IPv4 TCP socket, if any; queues a refill on the socket thread once half are
    /// taken (the first call finds none and starts the first fill).
    fn take_ready(&self) -> io::Result<Option<Socket>> {
        let (socket, left) = {
            let mut ready = self.ready.sockets.lock().expect("ready sockets");
            let socket = ready.pop();
            (socket, ready.len())
        };
        if left <= READY_SOCKETS / 2 && !self.ready.refilling.swap(true, Ordering::AcqRel) {
            let ready = self.ready.clone();
            let job: Job = Box::new(move || {
                let have = ready.sockets.lock().expect("ready sockets").len();
                let made: Vec<Socket> = (have..READY_SOCKETS)
                    .map_while(|_| new_socket(Domain::IPV4, Type::STREAM, Protocol::TCP).ok())
                    .collect();
                ready.sockets.lock().expect("ready sockets").extend(made);
                ready.refilling.store(false, Ordering::Release);
            });
            if self.socket_thread()?.send(job).is_err() {
                self.ready.refilling.store(false, Ordering::Release);
            }
        }
        Ok(socket)
    }

    /// How many sockets are ready now (for tests).
    pub fn ready_sockets(&self) -> usize {
        self.ready.sockets.lock().expect("ready sockets").len()
    }

    fn tcp(&self, v4: bool) -> io::Result<Socket> {
        let domain = if v4 { Domain::IPV4 } else { Domain::IPV6 };
        self.socket(domain, Type::STREAM, Protocol::TCP)
    }

    /// A listener on `addr` inside the namespace, with `mark` on accepted connections' replies.
    pub fn listen(&self, addr: SocketAddr, mark: Option<u32>) -> io::Result<TcpListener> {
        let socket = self.tcp(addr.is_ipv4())?;
        socket.set_reuse_address(true)?;
        if let Some(mark) = mark {
            socket.set_mark(mark)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    }

    /// A UDP socket bound to `addr` inside the namespace, with `mark` on what it sends.
    pub fn udp(&self, addr: SocketAddr, mark: Option<u32>) -> io::Result<tokio::net::UdpSocket> {
        let domain = if addr.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = self.socket(domain, Type::DGRAM, Protocol::UDP)?;
        if let Some(mark) = mark {
            socket.set_mark(mark)?;
        }
        socket.bind(&addr.into())?;
        tokio::net::UdpSocket::from_std(socket.into())
    }

    /// Connects to `addr` from inside the namespace as `source` (IP_TRANSPARENT: an address
    /// the namespace does not own), with `mark`. The pod's 0x111 connmark rule and routing table
    /// 100 deliver the application's replies back to this socket. Connects from the pod's own
    /// address if the kernel refuses the bind.
    pub async fn connect_as(
        &self,
        addr: SocketAddr,
        source: std::net::IpAddr,
        mark: Option<u32>,
    ) -> io::Result<TcpStream> {
        let socket = self.marked_tcp(addr.is_ipv4(), mark)?;
        // Only marked sockets get their replies routed back by the pod's rules.
        let transparent = mark.is_some()
            && source.is_ipv4() == addr.is_ipv4()
            && if source.is_ipv4() {
                socket.set_ip_transparent_v4(true)
            } else {
                socket.set_ip_transparent_v6(true)
            }
            .is_ok()
            && socket.bind(&SocketAddr::new(source, 0).into()).is_ok();
        if !transparent {
            tracing::debug!(%source, %addr, "connecting without the client's address");
        }
        TcpSocket::from_std_stream(socket.into())
            .connect(addr)
            .await
    }

    /// Connects to `addr` from inside the namespace, optionally from `bind` and with `mark`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        bind: Option<std::net::IpAddr>,
        mark: Option<u32>,
    ) -> io::Result<TcpStream> {
        let socket = TcpSocket::from_std_stream(self.marked_tcp(addr.is_ipv4(), mark)?.into());
        if let Some(ip) = bind {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.connect(addr).await
    }

    /// A TCP socket for an outgoing connection: `mark` set, Nagle off.
    fn marked_tcp(&self, v4: bool, mark: Option<u32>) -> io::Result<Socket> {
        let socket = self.tcp(v4)?;
        if let Some(mark) = mark {
            socket.set_mark(mark)?;
        }
        socket.set_tcp_nodelay(true)?;
        meshcore::control::Keepalive::DATA_PATH.apply_tcp(&socket)?;
        Ok(socket)
    }
}

/// A non-blocking, close-on-exec socket in the calling thread's namespace.
fn new_socket(domain: Domain, ty: Type, protocol: Protocol) -> io::Result<Socket> {
    Socket::new(domain, ty.cloexec(), Some(protocol))
        .and_then(|s| s.set_nonblocking(true).map(|_| s))
}

/// HBONE from a pod is dialled from inside the pod, so the destination sees the pod's address
/// (and source `ipBlocks` match it), as with Istio's in-pod ztunnel.
impl meshcore::hbone::client::Dial for Netns {
    fn dial(
        &self,
        addr: SocketAddr,
        bind_ip: Option<std::net::IpAddr>,
        mark: Option<u32>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<TcpStream>> + Send + '_>>
    {
        Box::pin(self.connect(addr, bind_ip, mark))
    }

    fn id(&self) -> u64 {
        self.inode
    }
}

//! A pod's network namespace, held by fd (as the node agent hands it over).
//!
//! `setns` applies to the calling thread only, so every socket meant for a pod is created on a
//! short-lived thread that enters the pod's namespace, creates the socket, and ends: no tokio
//! worker ever changes namespace, and nothing else can run by accident in the pod's. A socket
//! keeps the namespace it was created in, so binding, connecting and all I/O afterwards happen
//! on tokio's threads as usual.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub struct Netns {
    fd: OwnedFd,
    /// Identity of the namespace (its nsfs inode), for logs and equality.
    pub inode: u64,
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
        Ok(Self { fd, inode })
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

    /// A non-blocking TCP socket created inside the namespace.
    fn socket(&self, v4: bool) -> io::Result<Socket> {
        self.run(move || {
            let domain = if v4 { Domain::IPV4 } else { Domain::IPV6 };
            let socket = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
    }

    /// A listener on `addr` inside the namespace, with `mark` on accepted connections' replies.
    pub fn listen(&self, addr: SocketAddr, mark: Option<u32>) -> io::Result<TcpListener> {
        let socket = self.socket(addr.is_ipv4())?;
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
        let v4 = addr.is_ipv4();
        let socket = self.run(move || {
            let domain = if v4 { Domain::IPV4 } else { Domain::IPV6 };
            Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))
        })?;
        socket.set_nonblocking(true)?;
        if let Some(mark) = mark {
            socket.set_mark(mark)?;
        }
        socket.bind(&addr.into())?;
        tokio::net::UdpSocket::from_std(socket.into())
    }

    /// Connects to `addr` from inside the namespace as `source` (IP_TRANSPARENT: an address
    /// the namespace does not own), with `mark`. The pod's 0x111 connmark rule and routing table
    /// 100 deliver the application's replies back to this socket. Falls back to the pod's own
    /// address if the kernel refuses the bind.
    pub async fn connect_as(
        &self,
        addr: SocketAddr,
        source: std::net::IpAddr,
        mark: Option<u32>,
    ) -> io::Result<TcpStream> {
        let socket = self.socket(addr.is_ipv4())?;
        if let Some(mark) = mark {
            socket.set_mark(mark)?;
        }
        socket.set_tcp_nodelay(true)?;
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
            return self.connect(addr, None, mark).await;
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
        let socket = self.socket(addr.is_ipv4())?;
        if let Some(mark) = mark {
            socket.set_mark(mark)?;
        }
        socket.set_tcp_nodelay(true)?;
        let socket = TcpSocket::from_std_stream(socket.into());
        if let Some(ip) = bind {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.connect(addr).await
    }
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

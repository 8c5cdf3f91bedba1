//! The node-agent ↔ ztunnel protocol (ZDS), both ends.
//!
//! A `SOCK_SEQPACKET` unix socket (Istio: `/var/run/ztunnel/ztunnel.sock`) served by the node
//! agent; ztunnel connects. Every datagram is one protobuf message (`istio.workload.zds`):
//! ztunnel says `ZdsHello`, then the agent sends `WorkloadRequest`s (`add` carries the pod's
//! network namespace as an fd in an `SCM_RIGHTS` control message; `keep` during the snapshot
//! after a reconnect; `del`; `snapshot_sent` once the snapshot is complete) and ztunnel answers
//! each with a `WorkloadResponse{ack{error}}` (empty error: done).
//!
//! Sockets are non-blocking and driven by tokio's `AsyncFd`; datagram boundaries make framing
//! free, and a message larger than [`MAX_MESSAGE`] is refused rather than truncated silently.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use prost::Message;
use tokio::io::unix::AsyncFd;

use crate::api::zds::{
    workload_request::Payload, workload_response, Ack, AddWorkload, DelWorkload, KeepWorkload,
    SnapshotSent, Version, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello,
};

/// Istio's path for the socket.
pub const DEFAULT_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";
/// Largest datagram accepted.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// What the agent asks ztunnel to do.
#[derive(Debug)]
pub enum Request {
    /// Serve a pod: its uid, who it is, and its network namespace.
    Add {
        uid: String,
        info: Option<WorkloadInfo>,
        netns: OwnedFd,
    },
    /// A pod ztunnel may already serve is still there (sent during a snapshot).
    Keep { uid: String },
    /// Stop serving a pod.
    Del { uid: String },
    /// Every current pod has been sent (as `add` or `keep`); drop the others.
    SnapshotSent,
}

/// One `WorkloadRequest` message as ztunnel reads it, with the descriptor that came with it
/// (only `add` carries one: the pod's network namespace). Pure, so it can be fuzzed.
pub fn decode_request(bytes: &[u8], fd: Option<OwnedFd>) -> io::Result<Request> {
    let req = WorkloadRequest::decode(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("WorkloadRequest: {e}")))?;
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    Ok(match req.payload {
        Some(Payload::Add(add)) => Request::Add {
            uid: add.uid,
            info: add.workload_info,
            netns: fd.ok_or_else(|| invalid("add without a network namespace fd"))?,
        },
        Some(Payload::Keep(k)) => Request::Keep { uid: k.uid },
        Some(Payload::Del(d)) => Request::Del { uid: d.uid },
        Some(Payload::SnapshotSent(_)) => Request::SnapshotSent,
        None => return Err(invalid("WorkloadRequest without a payload")),
    })
}

/// A connected SEQPACKET socket, either end.
pub struct Conn {
    fd: AsyncFd<OwnedFd>,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn seqpacket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers an owned socket with tokio's reactor.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes the OwnedFd, so the descriptor stays open, and is the same one,
    // for as long as it is registered.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path too long: {}", path.display()),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

impl Conn {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self { fd: register(fd)? })
    }

    /// ztunnel's end: connects to the agent's socket and says hello.
    pub async fn connect(path: &Path) -> io::Result<Self> {
        let fd = seqpacket()?;
        let (addr, len) = sockaddr(path)?;
        // SAFETY: addr/len describe a valid sockaddr_un. A unix-socket connect completes or fails
        // immediately (EAGAIN only when the backlog is full, reported as an error).
        cvt(unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("connecting to {}: {e}", path.display())))?;
        let conn = Self::new(fd)?;
        let hello = ZdsHello {
            version: Version::V1 as i32,
        };
        conn.send(&hello.encode_to_vec(), None).await?;
        Ok(conn)
    }

    /// Sends one datagram, with `fd` attached by SCM_RIGHTS when given.
    pub async fn send(&self, bytes: &[u8], fd: Option<RawFd>) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|inner| send_with_fd(inner.get_ref().as_raw_fd(), bytes, fd)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one datagram and the fd attached to it, if any. `Ok(None)`: the peer closed.
    pub async fn recv(&self) -> io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| recv_with_fd(inner.get_ref().as_raw_fd())) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// ztunnel: the next request. `Ok(None)`: the agent closed the connection.
    pub async fn next_request(&self) -> io::Result<Option<Request>> {
        let Some((bytes, fd)) = self.recv().await? else {
            return Ok(None);
        };
        decode_request(&bytes, fd).map(Some)
    }

    /// ztunnel: answers the last request.
    pub async fn ack(&self, error: Option<String>) -> io::Result<()> {
        let response = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack {
                error: error.unwrap_or_default(),
            })),
        };
        self.send(&response.encode_to_vec(), None).await
    }

    /// The agent: sends a request (with the pod's netns for `add`) and waits for the ack;
    /// `Err` carries ztunnel's error text when it refused.
    pub async fn request(&self, request: Request) -> io::Result<Result<(), String>> {
        let (payload, fd) = match &request {
            Request::Add { uid, info, netns } => (
                Payload::Add(AddWorkload {
                    uid: uid.clone(),
                    workload_info: info.clone(),
                }),
                Some(netns.as_fd().as_raw_fd()),
            ),
            Request::Keep { uid } => (Payload::Keep(KeepWorkload { uid: uid.clone() }), None),
            Request::Del { uid } => (Payload::Del(DelWorkload { uid: uid.clone() }), None),
            Request::SnapshotSent => (Payload::SnapshotSent(SnapshotSent {}), None),
        };
        let req = WorkloadRequest {
            payload: Some(payload),
        };
        self.send(&req.encode_to_vec(), fd).await?;
        let Some((bytes, _)) = self.recv().await? else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "ztunnel closed the connection",
            ));
        };
        let response = WorkloadResponse::decode(bytes.as_slice()).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("WorkloadResponse: {e}"))
        })?;
        match response.payload {
            Some(workload_response::Payload::Ack(Ack { error })) if error.is_empty() => Ok(Ok(())),
            Some(workload_response::Payload::Ack(Ack { error })) => Ok(Err(error)),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "WorkloadResponse without a payload",
            )),
        }
    }

    /// The agent: reads ztunnel's hello.
    pub async fn expect_hello(&self) -> io::Result<Version> {
        let Some((bytes, _)) = self.recv().await? else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before hello",
            ));
        };
        let hello = ZdsHello::decode(bytes.as_slice())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("ZdsHello: {e}")))?;
        Version::try_from(hello.version)
            .ok()
            .filter(|v| *v == Version::V1)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unsupported ZDS version {}", hello.version),
                )
            })
    }
}

/// The agent's listening socket.
pub struct Listener {
    fd: AsyncFd<OwnedFd>,
}

impl Listener {
    /// Binds `path` (replacing a stale socket file left by a previous run).
    pub fn bind(path: &Path) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        if let Some(dir) = path.parent() {
            private_dir(dir)?;
        }
        let fd = seqpacket()?;
        let (addr, len) = sockaddr(path)?;
        // SAFETY: valid sockaddr_un; listen on our own fd.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        })
        .map_err(|e| io::Error::new(e.kind(), format!("binding {}: {e}", path.display())))?;
        owner_only(path)?;
        // SAFETY: listen(2) on a bound socket we own.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 8) })?;
        Ok(Self { fd: register(fd)? })
    }

    pub async fn accept(&self) -> io::Result<Conn> {
        loop {
            let mut guard = self.fd.readable().await?;
            let accepted = guard.try_io(|inner| {
                // SAFETY: accept4 on our listening fd; the result is owned right away.
                let fd = cvt(unsafe {
                    libc::accept4(
                        inner.get_ref().as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    )
                })?;
                // SAFETY: a fresh descriptor from accept4.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            });
            match accepted {
                Ok(fd) => {
                    let fd = fd?;
                    // Only this process's user (or root) may hand pods over or take them.
                    match peer_uid(fd.as_raw_fd()) {
                        Ok(uid) if peer_allowed(uid) => return Conn::new(fd),
                        Ok(uid) => {
                            tracing::warn!(uid, "ZDS connection from another user refused");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!("ZDS connection refused: its peer is unknown: {e}");
                            continue;
                        }
                    }
                }
                Err(_would_block) => continue,
            }
        }
    }
}

/// The uid of a Unix socket's peer (SO_PEERCRED).
pub fn peer_uid(fd: RawFd) -> io::Result<u32> {
    // SAFETY: all-zero is a valid ucred; getsockopt fills it and its length.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED into a ucred of the size given.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.uid)
}

/// Whether a local peer may use the node's control sockets: root, or this process's user.
pub fn peer_allowed(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// `dir` created for its owner only (0700) when it does not exist yet (an existing one, such
/// as a host directory shared with ztunnel, keeps its mode).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A socket file readable and writable by its owner only (0600).
pub fn owner_only(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

const CMSG_SPACE: usize = 64; // room for one fd's control message on any 64-bit libc

fn send_with_fd(sock: RawFd, bytes: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut control = [0u8; CMSG_SPACE];
    // SAFETY: all-zero is a valid msghdr; the pointers set below outlive the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_* compute sizes and positions inside `control`, which is large enough
        // for one int of SCM_RIGHTS data.
        unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: msg is fully initialised and points at live buffers.
    let sent = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "datagram cut short",
        ));
    }
    Ok(())
}

fn recv_with_fd(sock: RawFd) -> io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u8; CMSG_SPACE];
    // SAFETY: all-zero is a valid msghdr; the buffers set below outlive the recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    // SAFETY: msg points at live buffers; MSG_CMSG_CLOEXEC marks received fds close-on-exec.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut received = None;
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    // Only the first is kept; any extra is closed by dropping it.
                    if received.is_none() {
                        received = Some(fd);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message larger than {MAX_MESSAGE} bytes or too many descriptors"),
        ));
    }
    if n == 0 {
        return Ok(None);
    }
    buf.truncate(n as usize);
    Ok(Some((buf, received)))
}

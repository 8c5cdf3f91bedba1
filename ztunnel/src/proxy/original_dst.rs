//! The destination a captured connection was really addressed to, read from conntrack with
//! `SO_ORIGINAL_DST` after an nftables/iptables REDIRECT.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use tokio::net::TcpStream;

const SO_ORIGINAL_DST: libc::c_int = 80;
const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

pub fn original_dst(tcp: &TcpStream) -> io::Result<SocketAddr> {
    let fd = tcp.as_raw_fd();
    // An IPv4 connection on a dual-stack socket (local ::ffff:a.b.c.d) is tracked as IPv4.
    if tcp.local_addr()?.ip().to_canonical().is_ipv4() {
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: addr and len describe a writable sockaddr_in of the right size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                &mut addr as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Ok(SocketAddr::new(ip.into(), u16::from_be(addr.sin_port)))
    } else {
        let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: as above, for sockaddr_in6.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                IP6T_SO_ORIGINAL_DST,
                &mut addr as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Ok(SocketAddr::new(ip.into(), u16::from_be(addr.sin6_port)))
    }
}

/// Where a connection accepted on a capture port (15001, 15006) was going: its original
/// destination, or, when conntrack holds no entry for it, the listener's own address. No entry
/// means nothing redirected the connection (a client dialled the port itself, or no NAT rule
/// exists in this namespace, so conntrack does not track it); its destination is then the
/// port itself, which the own-listener check refuses and counts rather than dropping it unseen.
pub fn destination(tcp: &TcpStream) -> io::Result<SocketAddr> {
    match original_dst(tcp) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => tcp.local_addr(),
        other => other,
    }
}

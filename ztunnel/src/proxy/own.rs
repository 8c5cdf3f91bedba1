//! Keeping ztunnel from relaying into itself (issue 14, S7). Two ways a connection can come
//! back:
//! - its destination is one of ztunnel's data-plane ports on any address local to ztunnel's
//!   network namespace (not only its bind address): Istio's `illegal_ports`, 15001, 15006,
//!   15008, and 15080 when SOCKS5 is on ([`is_data_port`], checked by `Proxy::is_own_listener`);
//! - a NAT rule maps an ordinary-looking destination onto ztunnel's capture port, for
//!   ztunnel's own (marked) connections too: dialling it lands on 15001 again. Every plain
//!   outbound connection ztunnel dials is bound before it connects and its local address is
//!   kept in [`OwnDials`] while it lives, so the capture listener recognises a connection from
//!   itself and refuses it.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpSocket, TcpStream};

use crate::app::ports;

/// The ports of ztunnel's data-plane listeners, whatever the mode.
const DATA_PORTS: [u16; 3] = [ports::OUTBOUND, ports::INBOUND_PLAINTEXT, ports::HBONE];

/// Whether `port` is one of ztunnel's data-plane ports (15080 only when SOCKS5 is on).
pub fn is_data_port(port: u16, socks5: bool) -> bool {
    DATA_PORTS.contains(&port) || (socks5 && port == ports::SOCKS5)
}

/// Whether `ip` is an address of the calling thread's network namespace (all of 127/8 and ::1
/// are; otherwise the interfaces' addresses are read, which only destinations on ztunnel's
/// own ports cost). If the interfaces cannot be read, the address counts as local: refusing
/// a connection to an own port is the safe side.
pub fn is_local_address(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    match crate::agent::discover::interface_addresses() {
        Ok(ips) => ips.iter().any(|a| a.to_canonical() == ip),
        Err(e) => {
            tracing::debug!("reading interface addresses: {e}");
            true
        }
    }
}

/// The local addresses of the plain TCP connections ztunnel dialled that are still open.
#[derive(Default)]
pub struct OwnDials {
    open: Mutex<HashSet<SocketAddr>>,
}

/// Keeps an address in [`OwnDials`] while the connection lives.
pub struct DialGuard {
    dials: Arc<OwnDials>,
    local: SocketAddr,
}

impl Drop for DialGuard {
    fn drop(&mut self) {
        self.dials
            .open
            .lock()
            .expect("own dials lock")
            .remove(&self.local);
    }
}

impl OwnDials {
    /// A TCP connection to `addr` (from `bind` when set) with ztunnel's mark, whose local
    /// address is known to [`OwnDials::is_own`] before the SYN leaves.
    pub async fn connect(
        self: &Arc<Self>,
        addr: SocketAddr,
        bind: Option<IpAddr>,
        mark: Option<u32>,
    ) -> io::Result<(TcpStream, DialGuard)> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(mark) = mark {
            socket2::SockRef::from(&socket).set_mark(mark)?;
        }
        let any: IpAddr = if addr.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        // Bound to port 0 of the wildcard address, the port is this socket's on every address.
        socket.bind(SocketAddr::new(bind.unwrap_or(any), 0))?;
        socket.set_nodelay(true)?;
        meshcore::control::Keepalive::DATA_PATH.apply_tcp(&socket)?;
        let local = socket.local_addr()?;
        self.open.lock().expect("own dials lock").insert(local);
        let guard = DialGuard {
            dials: self.clone(),
            local,
        };
        let tcp = socket.connect(addr).await?;
        Ok((tcp, guard))
    }

    /// Whether a connection from `peer` is one ztunnel dialled itself.
    pub fn is_own(&self, peer: SocketAddr) -> bool {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let any: IpAddr = if peer.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let open = self.open.lock().expect("own dials lock");
        !open.is_empty()
            && (open.contains(&peer) || open.contains(&SocketAddr::new(any, peer.port())))
            && is_local_address(peer.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_ports_include_socks5_only_when_it_is_on() {
        for port in [15001, 15006, 15008] {
            assert!(is_data_port(port, false) && is_data_port(port, true));
        }
        assert!(!is_data_port(15080, false));
        assert!(is_data_port(15080, true));
        assert!(!is_data_port(15000, true) && !is_data_port(8080, true));
    }

    #[test]
    fn local_addresses() {
        assert!(is_local_address("127.3.4.5".parse().unwrap()));
        assert!(is_local_address("::ffff:127.0.0.1".parse().unwrap()));
        assert!(is_local_address("::1".parse().unwrap()));
        // TEST-NET-2 is configured nowhere.
        assert!(!is_local_address("198.51.100.7".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_dial_is_known_while_it_lives() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dials = Arc::new(OwnDials::default());
        let (tcp, guard) = dials
            .connect(listener.local_addr().unwrap(), None, None)
            .await
            .unwrap();
        let (_accepted, peer) = listener.accept().await.unwrap();
        assert!(dials.is_own(peer));
        assert!(!dials.is_own(SocketAddr::new(peer.ip(), peer.port() ^ 1)));
        drop((tcp, guard));
        assert!(!dials.is_own(peer));
    }
}

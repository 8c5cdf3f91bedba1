//! SOCKS5 (RFC 1928) on 15080, for sending traffic through ztunnel without capture: no
//! authentication, CONNECT only, IPv4, IPv6 and domain names (a mesh service's hostname
//! resolves to its VIP; other names through the system resolver, on tokio's blocking pool and
//! within [`RESOLVE_TIMEOUT`], so a slow DNS server never holds a runtime thread). Off unless
//! `UNSTABLE_ENABLE_SOCKS5=true`, as in Istio: whoever reaches the port speaks with the served
//! workload's identity.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::outbound::{self, OutboundError};
use super::{ConnectionGuard, Proxy};

const VERSION: u8 = 5;
/// A client gets this long to send its greeting and request.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A name the system resolver has not resolved by then is answered "host unreachable".
pub const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CMD_CONNECT: u8 = 1;

/// Reply codes.
const SUCCEEDED: u8 = 0;
const GENERAL_FAILURE: u8 = 1;
const NOT_ALLOWED: u8 = 2;
const HOST_UNREACHABLE: u8 = 4;
const CONNECTION_REFUSED: u8 = 5;
const COMMAND_NOT_SUPPORTED: u8 = 7;
const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 8;

#[derive(Debug, thiserror::Error)]
pub enum SocksError {
    #[error("reading the SOCKS request: {0}")]
    Io(#[from] std::io::Error),
    #[error("not SOCKS5 (version byte {0})")]
    Version(u8),
    #[error("client offers no 'no authentication' method")]
    NoMethod,
    #[error("command {0} is not supported (only CONNECT)")]
    Command(u8),
    #[error("address type {0} is not supported")]
    AddressType(u8),
    #[error("cannot resolve {0:?}")]
    Resolve(String),
    #[error("the requested host name is not an ASCII host name: {0:?}")]
    Name(String),
}

/// Where a CONNECT request asks to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    Addr(SocketAddr),
    /// A domain name (lossily UTF-8) and port, to resolve.
    Name(String, u16),
}

/// Reads the greeting and the CONNECT request from any stream; answers method selection, and
/// answers protocol failures itself. Pure protocol: no resolution, no sockets of its own.
pub async fn negotiate<S>(io: &mut S) -> Result<Requested, SocksError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(SocksError::Version(head[0]));
    }
    let mut methods = [0u8; 255];
    let methods = &mut methods[..head[1] as usize];
    io.read_exact(methods).await?;
    if !methods.contains(&NO_AUTH) {
        io.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(SocksError::NoMethod);
    }
    io.write_all(&[VERSION, NO_AUTH]).await?;

    let mut req = [0u8; 4];
    io.read_exact(&mut req).await?;
    if req[0] != VERSION {
        return Err(SocksError::Version(req[0]));
    }
    if req[1] != CMD_CONNECT {
        reply(io, COMMAND_NOT_SUPPORTED).await?;
        return Err(SocksError::Command(req[1]));
    }
    let ip: IpAddr = match req[3] {
        1 => {
            let mut b = [0u8; 4];
            io.read_exact(&mut b).await?;
            Ipv4Addr::from(b).into()
        }
        4 => {
            let mut b = [0u8; 16];
            io.read_exact(&mut b).await?;
            Ipv6Addr::from(b).into()
        }
        3 => {
            let len = io.read_u8().await? as usize;
            let mut name = [0u8; 255];
            io.read_exact(&mut name[..len]).await?;
            // A host name is ASCII (IDNs travel as punycode). Anything else is refused, not
            // repaired: a lossy conversion turned 255 invalid bytes into a 765-byte "name"
            // (found by the socks5 fuzz target).
            let Some(name) = std::str::from_utf8(&name[..len])
                .ok()
                .filter(|n| n.is_ascii() && !n.is_empty())
                .map(str::to_owned)
            else {
                reply(io, GENERAL_FAILURE).await?;
                return Err(SocksError::Name(
                    String::from_utf8_lossy(&name[..len.min(64)]).into_owned(),
                ));
            };
            let port = io.read_u16().await?;
            return Ok(Requested::Name(name, port));
        }
        other => {
            reply(io, ADDRESS_TYPE_NOT_SUPPORTED).await?;
            return Err(SocksError::AddressType(other));
        }
    };
    let port = io.read_u16().await?;
    Ok(Requested::Addr(SocketAddr::new(ip, port)))
}

/// [`negotiate`], then a name resolved (mesh hostnames first); answers an unresolvable name.
/// Returns the destination.
pub async fn handshake(tcp: &mut TcpStream, proxy: &Proxy) -> Result<SocketAddr, SocksError> {
    match negotiate(tcp).await? {
        Requested::Addr(addr) => Ok(addr),
        Requested::Name(name, port) => match resolve(proxy, &name).await {
            Some(ip) => Ok(SocketAddr::new(ip, port)),
            None => {
                reply(tcp, HOST_UNREACHABLE).await?;
                Err(SocksError::Resolve(name))
            }
        },
    }
}

/// A mesh service hostname (preferring the served workload's namespace), else DNS.
async fn resolve(proxy: &Proxy, name: &str) -> Option<IpAddr> {
    let snap = proxy.state.load();
    let services = snap.services_by_host(name);
    let best = services
        .iter()
        .find(|s| s.service.namespace == proxy.workload.namespace)
        .or(services.first());
    // Outbound resolution works on the default network; take a VIP there.
    let vip = best.and_then(|s| s.service.vips.iter().find(|v| v.network.is_empty()));
    if let Some(vip) = vip {
        return Some(vip.ip);
    }
    // getaddrinfo blocks: tokio runs it on the blocking pool. A timed-out lookup still
    // finishes there, bounded by the resolver's own timeouts (resolv.conf).
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, 0))).await {
        Ok(found) => found.ok()?.next().map(|a| a.ip()),
        Err(_) => {
            tracing::info!(name, "SOCKS5: resolving took over {RESOLVE_TIMEOUT:?}");
            None
        }
    }
}

async fn reply<S: tokio::io::AsyncWrite + Unpin>(tcp: &mut S, code: u8) -> std::io::Result<()> {
    // Bound address: unspecified; clients do not need it.
    tcp.write_all(&[VERSION, code, 0, 1, 0, 0, 0, 0, 0, 0])
        .await
}

fn reply_code(e: &OutboundError) -> u8 {
    match e {
        OutboundError::Denied
        | OutboundError::EgressDenied(_)
        | OutboundError::Loop(_)
        | OutboundError::Looped(_) => NOT_ALLOWED,
        OutboundError::NoHealthyEndpoint(_) | OutboundError::NoAddress(_) => HOST_UNREACHABLE,
        OutboundError::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused =>
        {
            CONNECTION_REFUSED
        }
        _ => GENERAL_FAILURE,
    }
}

/// The 15080 listener's handler.
pub async fn handle(
    proxy: Arc<Proxy>,
    mut tcp: TcpStream,
    client: SocketAddr,
    _guard: ConnectionGuard,
) {
    let dst = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut tcp, &proxy)).await {
        Ok(Ok(dst)) => dst,
        Ok(Err(e)) => {
            meshcore::refusals::count("socks5", "bad_request");
            tracing::info!(%client, "SOCKS5 request refused: {e}");
            return;
        }
        Err(_) => {
            meshcore::refusals::count("socks5", "handshake_timeout");
            tracing::info!(%client, "SOCKS5 client sent no complete request within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    match outbound::open(&proxy, client, dst).await {
        Ok(opened) => {
            if reply(&mut tcp, SUCCEEDED).await.is_ok() {
                outbound::relay(tcp, opened).await;
            } else {
                opened.record.closed(0, 0);
            }
        }
        Err(e) => {
            if !matches!(e, OutboundError::EgressDenied(_)) {
                tracing::info!(%client, %dst, flag = e.response_flag(), "outbound connection failed: {e}");
            }
            let _ = reply(&mut tcp, reply_code(&e)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &[u8]) -> Vec<u8> {
        let mut r = vec![5, 1, 0, 5, 1, 0, 3, name.len() as u8];
        r.extend_from_slice(name);
        r.extend_from_slice(&8080u16.to_be_bytes());
        r
    }

    #[tokio::test]
    async fn host_names_must_be_ascii_and_are_never_repaired() {
        let data = request(&[0xff; 255]);
        let mut io = tokio::io::join(&data[..], tokio::io::sink());
        let err = negotiate(&mut io).await.unwrap_err();
        assert!(matches!(err, SocksError::Name(_)), "{err}");
        let data = request(b"cart.shop.svc.cluster.local");
        let mut io = tokio::io::join(&data[..], tokio::io::sink());
        match negotiate(&mut io).await.unwrap() {
            Requested::Name(name, port) => {
                assert_eq!((name.as_str(), port), ("cart.shop.svc.cluster.local", 8080))
            }
            other => panic!("{other:?}"),
        }
    }
}

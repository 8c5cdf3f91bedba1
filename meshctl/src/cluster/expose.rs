//! The local cluster's load balancer: each ingress gateway (a Gateway of class `istio`) gets an
//! address on this machine's loopback, `127.0.100.N`, with every listener port of the Gateway
//! open there, so `curl` on the host reaches the gateway as a client outside the cluster would
//! reach a `LoadBalancer` Service.
//!
//! `up` binds those sockets here, in the host's network namespace, and hands them to a
//! forwarder (`meshctl expose`) that lives in the cluster's fabric namespace: it accepts on the
//! host sockets and connects to the gateway pod's address from inside the cluster, then copies
//! bytes both ways (TLS stays end to end: the gateway terminates it). Living in the fabric, the
//! forwarder is stopped by `meshctl down` with everything else.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, FromRawFd};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Proc, FABRIC};

/// The first host address handed out (`127.0.100.1`, then `.2`...).
pub const FIRST_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 100, 1);

/// An ingress gateway reachable from the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exposed {
    /// The Gateway, `namespace/name`.
    pub gateway: String,
    /// Its address on the host.
    pub address: Ipv4Addr,
    /// `(listener name, port, protocol)`, as the Gateway declares them.
    pub listeners: Vec<(String, u16, String)>,
    /// The gateway pod's address inside the cluster.
    pub target: Ipv4Addr,
    pub forwarder: Proc,
}

impl Exposed {
    /// `http://127.0.100.1:80`-style URLs, one per listener.
    pub fn urls(&self) -> Vec<String> {
        self.listeners
            .iter()
            .map(|(name, port, protocol)| {
                let scheme = if protocol.eq_ignore_ascii_case("HTTPS") {
                    "https"
                } else {
                    "http"
                };
                format!("{name}: {scheme}://{}:{port}", self.address)
            })
            .collect()
    }
}

/// The host address of the `index`th gateway (from 0).
pub fn host_address(index: usize) -> Result<Ipv4Addr, String> {
    let last = u8::try_from(index + 1)
        .ok()
        .filter(|n| *n < 255)
        .ok_or("more than 254 ingress gateways")?;
    let [a, b, c, _] = FIRST_ADDRESS.octets();
    Ok(Ipv4Addr::new(a, b, c, last))
}

/// Opens the gateway's ports on `address` here and starts the forwarder to `target`.
pub fn expose(
    bin_dir: &Path,
    log: &Path,
    gateway: String,
    address: Ipv4Addr,
    listeners: Vec<(String, u16, String)>,
    target: Ipv4Addr,
) -> Result<Exposed, String> {
    let mut ports: Vec<u16> = listeners.iter().map(|l| l.1).collect();
    ports.sort_unstable();
    ports.dedup();
    let mut sockets = Vec::new();
    for port in &ports {
        let addr = SocketAddr::from((address, *port));
        sockets.push(
            TcpListener::bind(addr)
                .map_err(|e| format!("gateway {gateway}: binding {addr} on the host: {e}"))?,
        );
    }
    let mut argv = vec![
        bin_dir.join("meshctl").display().to_string(),
        "expose".to_owned(),
    ];
    for port in &ports {
        argv.push("--to".to_owned());
        argv.push(SocketAddr::from((target, *port)).to_string());
    }
    let fds: Vec<_> = sockets.iter().map(|s| s.as_fd()).collect();
    let pid = super::netns::spawn_with_fds(FABRIC, &argv, &[], log, None, &fds)?;
    Ok(Exposed {
        gateway,
        address,
        listeners,
        target,
        forwarder: Proc {
            netns: FABRIC.to_owned(),
            argv,
            env: Vec::new(),
            log: log.to_owned(),
            pid,
            resolv_conf: None,
        },
    })
}

/// The forwarder (`meshctl expose --to ADDR...`): descriptor `3 + i` is a listening socket
/// whose connections go to the `i`th address. Runs until killed.
pub fn serve(targets: Vec<SocketAddr>) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let mut tasks = Vec::new();
        for (i, target) in targets.into_iter().enumerate() {
            // SAFETY: `up` placed a listening socket at this descriptor for us (and nothing
            // else owns it in this process).
            let std_listener = unsafe { TcpListener::from_raw_fd(3 + i as i32) };
            std_listener
                .set_nonblocking(true)
                .map_err(|e| format!("listener {i}: {e}"))?;
            let listener = tokio::net::TcpListener::from_std(std_listener)
                .map_err(|e| format!("listener {i}: {e}"))?;
            tasks.push(tokio::spawn(accept_loop(listener, target)));
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    })
}

async fn accept_loop(listener: tokio::net::TcpListener, target: SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((mut client, peer)) => {
                tokio::spawn(async move {
                    let connect = tokio::net::TcpStream::connect(target);
                    match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
                        Ok(Ok(mut upstream)) => {
                            let _ = client.set_nodelay(true);
                            let _ = upstream.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                        Ok(Err(e)) => eprintln!("expose: {peer} -> {target}: {e}"),
                        Err(_) => eprintln!("expose: {peer} -> {target}: connect timed out"),
                    }
                });
            }
            Err(e) => {
                eprintln!("expose: accepting: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_get_consecutive_loopback_addresses() {
        assert_eq!(host_address(0).unwrap(), Ipv4Addr::new(127, 0, 100, 1));
        assert_eq!(host_address(9).unwrap(), Ipv4Addr::new(127, 0, 100, 10));
        assert!(host_address(254).is_err());
    }
}

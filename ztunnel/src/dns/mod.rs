//! ztunnel's DNS proxy (port 15053, in each pod in node mode): when the node agent captures a
//! pod's DNS, names of the mesh's Services are answered from the config view (their VIPs, no
//! round trip to the cluster's DNS), and every other query is forwarded, from inside the pod,
//! to the upstream resolvers of ztunnel's own `resolv.conf`. While an egress policy with an
//! FQDN peer selects the pod, every A/AAAA answer it gets is remembered ([`resolved`]).

pub mod message;
pub mod names;
pub mod resolved;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use message::{answer, error, parse_query, rcode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::inpod::netns::Netns;
use crate::proxy::Drain;
use crate::state::StateStore;

pub const PORT: u16 = 15053;
/// How long an upstream gets to answer a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest TCP-framed message taken.
const MAX_TCP_MESSAGE: usize = 16 * 1024;
/// Queries in flight per pod (UDP); more are dropped, as a busy resolver would.
const MAX_IN_FLIGHT: usize = 256;
/// A TCP DNS connection idle this long (or this slow to send a query) is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP DNS connections per pod; more are closed at once.
const MAX_TCP_CONNECTIONS: usize = 64;
/// The largest UDP reply an upstream may send (EDNS0 allows up to 64 KiB): nothing is cut.
const MAX_UDP_REPLY: usize = 65_535;

pub struct DnsProxy {
    pub state: Arc<StateStore>,
    pub upstreams: Vec<SocketAddr>,
    /// Forwarded queries leave from here (the pod), marked so capture lets them pass.
    pub netns: Option<Arc<Netns>>,
    pub mark: Option<u32>,
    /// The namespace of the pod asking: a bare Service name means one of its namespace.
    pub namespace: Option<String>,
    /// The cluster's DNS suffix (`cluster.local`).
    pub domain: String,
    /// Where the pod's answers are remembered for egress FQDN peers.
    pub remember: Option<Remember>,
}

/// The served workload whose answers are remembered, and its names.
pub struct Remember {
    pub namespace: String,
    pub name: String,
    pub names: Arc<resolved::ResolvedNames>,
}

impl Remember {
    /// Only while some egress policy with an FQDN peer selects the workload.
    fn wanted(&self, state: &StateStore) -> bool {
        let snap = state.load();
        snap.workload_by_name(&self.namespace, &self.name)
            .and_then(|w| snap.egress_for(w))
            .is_some_and(|c| c.has_fqdn())
    }
}

/// The `nameserver` lines of a `resolv.conf`, on port 53. Loopback resolvers (a node's
/// 127.0.0.53) are left out: queries are forwarded from inside the pod, where they do not run.
pub fn upstreams(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl DnsProxy {
    /// The mesh's answer for `name`, in any form Kubernetes' DNS and the pod's search list
    /// give it (see [`names`]): a Service's VIPs, or for a headless Service its endpoints'
    /// addresses, and a headless Service's pod records (`<pod>.<service>.<ns>.svc.<domain>`).
    fn lookup(&self, name: &str) -> Option<(String, Vec<IpAddr>)> {
        let snap = self.state.load();
        for candidate in names::service_candidates(name, self.namespace.as_deref(), &self.domain) {
            let services = snap.services_by_host(&candidate);
            let vips: Vec<IpAddr> = services
                .iter()
                .flat_map(|s| s.service.vips.iter().map(|v| v.ip))
                .collect();
            if !vips.is_empty() {
                return Some((candidate, vips));
            }
            let endpoints: Vec<IpAddr> = services
                .iter()
                .flat_map(|s| &s.endpoints)
                .flat_map(|e| e.workload.workload.workload_ips.iter().copied())
                .collect();
            if !endpoints.is_empty() {
                return Some((candidate, endpoints));
            }
        }
        let (pod, service) = names::pod_record(name, &self.domain)?;
        let ips: Vec<IpAddr> = snap
            .services_by_host(service)
            .iter()
            .filter(|s| s.service.vips.is_empty())
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.workload.workload.name == pod)
            .flat_map(|e| e.workload.workload.workload_ips.iter().copied())
            .collect();
        (!ips.is_empty()).then(|| (name.to_owned(), ips))
    }

    /// The response to one query; `None` for a message that gets none (a response).
    pub async fn resolve(&self, query: &[u8]) -> Option<Vec<u8>> {
        let q = match parse_query(query) {
            Ok(q) => q,
            Err(message::ParseError::NotQuery) => return None, // never answer an answer
            Err(e) => {
                tracing::debug!("DNS query refused: {e}");
                return Some(error(query, None, rcode::FORMERR));
            }
        };
        Some(self.resolve_question(query, &q).await)
    }

    async fn resolve_question(&self, query: &[u8], q: &message::Question) -> Vec<u8> {
        let remember = self.remember.as_ref().filter(|r| r.wanted(&self.state));
        if let Some((found, ips)) = self.lookup(&q.name) {
            let reply = answer(query, q, &ips);
            if let Some(r) = remember {
                self.keep(r, &q.name, &reply);
                if found != q.name {
                    self.keep(r, &found, &reply);
                }
            }
            return reply;
        }
        for upstream in &self.upstreams {
            match self.forward(query, *upstream).await {
                Ok(reply) => {
                    if let Some(r) = remember {
                        self.keep(r, &q.name, &reply);
                    }
                    return reply;
                }
                Err(e) => tracing::debug!(name = %q.name, %upstream, "DNS forward: {e}"),
            }
        }
        error(query, Some(q), rcode::SERVFAIL)
    }

    /// Remembers the A/AAAA records of `reply` (ours or an upstream's) under `name`.
    fn keep(&self, r: &Remember, name: &str, reply: &[u8]) {
        match message::answer_records(reply) {
            Ok((rcode::NOERROR, records)) => {
                r.names.remember(name, &records, std::time::Instant::now())
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(name, "DNS answer not remembered: {e}"),
        }
    }

    async fn forward(&self, query: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
        let bind = SocketAddr::new(
            if upstream.is_ipv4() {
                IpAddr::from([0, 0, 0, 0])
            } else {
                IpAddr::from([0u16; 8])
            },
            0,
        );
        let socket = match &self.netns {
            Some(ns) => ns.udp(bind, self.mark)?,
            None => UdpSocket::bind(bind).await?,
        };
        socket.connect(upstream).await?;
        socket.send(query).await?;
        let mut buf = vec![0u8; MAX_UDP_REPLY];
        let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
        // Only the answer to this query counts: same id and same question (a stray or forged
        // datagram is skipped, not relayed).
        loop {
            let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            if message::answers(query, &buf[..n]) {
                buf.truncate(n);
                return Ok(buf);
            }
            tracing::debug!(%upstream, "DNS: a reply to another query skipped");
        }
    }
}

/// Answers queries on a UDP socket until draining starts.
pub async fn serve_udp(socket: UdpSocket, proxy: Arc<DnsProxy>, drain: Drain) {
    let socket = Arc::new(socket);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("DNS recv: {e}");
                    continue;
                }
            },
            _ = drain.started() => return,
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue; // too many in flight: dropped, the client retries
        };
        let query = buf[..n].to_vec();
        let (socket, proxy) = (socket.clone(), proxy.clone());
        tokio::spawn(async move {
            if let Some(reply) = proxy.resolve(&query).await {
                let _ = socket.send_to(&reply, from).await;
            }
            drop(permit);
        });
    }
}

/// Answers length-prefixed queries on TCP connections until draining starts.
pub async fn serve_tcp(listener: TcpListener, proxy: Arc<DnsProxy>, drain: Drain) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (mut tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("DNS accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = drain.started() => return,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue; // at the cap: the connection is closed (dropped)
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, tcp.read_u16()).await else {
                    return;
                };
                let len = len as usize;
                if len == 0 || len > MAX_TCP_MESSAGE {
                    return;
                }
                let mut query = vec![0u8; len];
                if !matches!(
                    tokio::time::timeout(TCP_IDLE, tcp.read_exact(&mut query)).await,
                    Ok(Ok(_))
                ) {
                    return;
                }
                let Some(reply) = proxy.resolve(&query).await else {
                    return;
                };
                let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                if tcp.write_all(&framed).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::message::{answer_ips, query, TYPE_A, TYPE_AAAA};
    use super::*;

    #[tokio::test]
    async fn mesh_names_are_answered_from_the_config_and_others_fail_without_upstreams() {
        let state = Arc::new(StateStore::new("cluster.local"));
        let config = crate::config::local::parse(
            "services:\n- {name: cart, namespace: shop, hostname: cart.shop.svc.cluster.local, vips: [\"/10.96.0.10\"], ports: {80: 8080}}\n\
             - {name: db, namespace: shop, hostname: db.shop.svc.cluster.local, vips: [], ports: {5432: 5432}}\n\
             workloads:\n\
             - {name: db-0, namespace: shop, workloadIps: [10.1.0.5], services: {shop/db.shop.svc.cluster.local: {5432: 5432}}}\n\
             - {name: db-1, namespace: shop, workloadIps: [10.1.0.6], services: {shop/db.shop.svc.cluster.local: {5432: 5432}}}\n",
            "cluster.local",
        )
        .unwrap();
        state.replace(config).unwrap();
        let proxy = DnsProxy {
            namespace: Some("shop".into()),
            domain: "cluster.local".into(),
            state,
            upstreams: Vec::new(),
            netns: None,
            mark: None,
            remember: None,
        };
        let a = proxy
            .resolve(&query(1, "cart.shop.svc.cluster.local", TYPE_A))
            .await
            .unwrap();
        assert_eq!(
            answer_ips(&a).unwrap(),
            (
                rcode::NOERROR,
                vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
            )
        );
        // Short forms (the pod is in shop), and headless Services' endpoints and pod records.
        let ask = |id, name: &'static str| {
            let proxy = &proxy;
            async move {
                let reply = proxy.resolve(&query(id, name, TYPE_A)).await.unwrap();
                answer_ips(&reply).unwrap()
            }
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for name in [
            "cart",
            "cart.shop",
            "cart.shop.svc",
            "cart.shop.shop.svc.cluster.local",
        ] {
            assert_eq!(
                ask(5, name).await,
                (rcode::NOERROR, vec![ip("10.96.0.10")]),
                "{name}"
            );
        }
        assert_eq!(
            ask(6, "db").await,
            (rcode::NOERROR, vec![ip("10.1.0.5"), ip("10.1.0.6")])
        );
        assert_eq!(
            ask(7, "db-1.db.shop.svc.cluster.local").await,
            (rcode::NOERROR, vec![ip("10.1.0.6")])
        );
        assert_eq!(
            ask(8, "db-2.db.shop.svc.cluster.local").await.0,
            rcode::SERVFAIL
        );
        let aaaa = proxy
            .resolve(&query(2, "cart.shop.svc.cluster.local", TYPE_AAAA))
            .await
            .unwrap();
        assert_eq!(answer_ips(&aaaa).unwrap(), (rcode::NOERROR, vec![]));
        let other = proxy
            .resolve(&query(3, "example.com", TYPE_A))
            .await
            .unwrap();
        assert_eq!(answer_ips(&other).unwrap(), (rcode::SERVFAIL, vec![]));
        let junk = proxy.resolve(&[1, 2, 3]).await.unwrap();
        assert_eq!(junk[3] & 0xf, rcode::FORMERR as u8);
        let mut response = query(4, "cart.shop.svc.cluster.local", TYPE_A);
        response[2] |= 0x80;
        assert!(
            proxy.resolve(&response).await.is_none(),
            "an answer gets no answer"
        );
    }

    #[test]
    fn upstreams_come_from_nameserver_lines() {
        let conf = "search shop.svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\nnameserver bogus\nnameserver 127.0.0.53\n";
        assert_eq!(
            upstreams(conf),
            vec![
                "10.96.0.10:53".parse::<SocketAddr>().unwrap(),
                "[fd00::a]:53".parse().unwrap()
            ]
        );
    }

    /// A forwarded query takes only its own answer (id and question), whole even past 4 KiB.
    #[tokio::test]
    async fn forwarded_answers_must_match_and_are_never_cut() {
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            let (n, from) = upstream.recv_from(&mut buf).await.unwrap();
            let q = buf[..n].to_vec();
            // A reply to another query first (another id), then the real one, 5,000 bytes long.
            let mut stray = q.clone();
            stray[0] ^= 0xff;
            stray[2] |= 0x80;
            upstream.send_to(&stray, from).await.unwrap();
            let mut big = q.clone();
            big[2] |= 0x80;
            big.resize(5000, 0);
            upstream.send_to(&big, from).await.unwrap();
        });
        let proxy = DnsProxy {
            namespace: None,
            domain: "cluster.local".into(),
            state: Arc::new(StateStore::new("cluster.local")),
            upstreams: vec![at],
            netns: None,
            mark: None,
            remember: None,
        };
        let q = query(77, "example.com", TYPE_A);
        let reply = proxy.resolve(&q).await.unwrap();
        assert_eq!(reply.len(), 5000, "not cut at 4096");
        assert_eq!(&reply[..2], &q[..2], "the matching id");
        assert!(message::answers(&q, &reply));
    }
}

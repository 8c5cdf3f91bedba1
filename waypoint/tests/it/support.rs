//! A small mesh around one waypoint: a CA directory, echo endpoints behind HBONE, and a client
//! that tunnels to the waypoint and speaks HTTP/1.1 or HTTP/2 inside the tunnel.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshcore::certs::{CertManager, LocalCa};
use meshcore::hbone::server::HboneServer;
use meshcore::hbone::{ClientSettings, ConnectRequest, HboneClient, ServerSettings};
use meshcore::identity::SpiffeId;
use waypoint::{Settings, Waypoint};

static NEXT_NET: AtomicU8 = AtomicU8::new(0);

/// One test's corner of loopback (`127.77.<n>.x`) and its CA.
pub struct Mesh {
    pub net: u8,
    pub dir: PathBuf,
    pub certs: Arc<CertManager>,
    /// Held while the test runs: `127.77.<n>.254:1` bound marks the corner as taken, so tests
    /// in other processes (nextest runs one per process) pick another.
    _claim: std::net::TcpListener,
}

/// A free corner: starting from one derived from the process id, the first whose claim
/// address binds.
fn claim_net() -> (u8, std::net::TcpListener) {
    let start = std::process::id() % 250;
    for _ in 0..250 {
        let step = u32::from(NEXT_NET.fetch_add(1, Ordering::Relaxed));
        let net = 1 + ((start + step) % 250) as u8;
        if let Ok(claim) = std::net::TcpListener::bind((Ipv4Addr::new(127, 77, net, 254), 1)) {
            return (net, claim);
        }
    }
    panic!("no free 127.77.n.0/24 corner of loopback for a test mesh");
}

impl Mesh {
    pub fn new() -> Self {
        let (net, claim) = claim_net();
        let dir = std::env::temp_dir().join(format!("waypoint-it-{}-{net}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca =
            LocalCa::from_dir(&dir.join("ca"), "cluster.local", Duration::from_secs(3600)).unwrap();
        Self {
            net,
            dir,
            certs: CertManager::new(Arc::new(ca)),
            _claim: claim,
        }
    }

    pub fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 77, self.net, host))
    }

    /// An endpoint at `ip(host)`: the echo server on 8080 (HTTP, h2c, gRPC) and 9000 (TCP),
    /// behind an HBONE server on 15008 proving `ns/sa`.
    pub async fn endpoint(&self, host: u8, ns: &str, sa: &str, pod: &str) {
        let ip = self.ip(host);
        let echo_id = Arc::new(meshctl::echo::Identity {
            pod: pod.to_owned(),
            namespace: ns.to_owned(),
            version: String::new(),
            fail_status: None,
        });
        let http = tokio::net::TcpListener::bind((ip, 8080)).await.unwrap();
        tokio::spawn(meshctl::echo::serve_http(http, echo_id));
        let tcp = tokio::net::TcpListener::bind((ip, 9000)).await.unwrap();
        tokio::spawn(meshctl::echo::serve_tcp(tcp));
        let id = SpiffeId::new("cluster.local", ns, sa).unwrap();
        let creds = self.certs.credentials(&id).await.unwrap();
        let server = HboneServer::new(
            meshcore::tls::server_config(creds),
            ServerSettings::default(),
        );
        let listener = tokio::net::TcpListener::bind((ip, 15008)).await.unwrap();
        tokio::spawn(server.serve(
            listener,
            |connect| async move {
                let target = connect.destination;
                let Ok(mut app) = tokio::net::TcpStream::connect(target).await else {
                    connect.reject(http::StatusCode::SERVICE_UNAVAILABLE);
                    return;
                };
                if let Ok(mut tunnel) = connect.accept() {
                    let _ = meshcore::copy::copy_bidirectional(&mut tunnel, &mut app).await;
                }
            },
            std::future::pending(),
        ));
    }

    /// An endpoint outside the mesh at `ip(host)`: the echo server on 8080, no HBONE.
    pub async fn plain_endpoint(&self, host: u8, pod: &str) {
        let echo_id = Arc::new(meshctl::echo::Identity {
            pod: pod.to_owned(),
            namespace: "legacy".to_owned(),
            version: String::new(),
            fail_status: None,
        });
        let http = tokio::net::TcpListener::bind((self.ip(host), 8080))
            .await
            .unwrap();
        tokio::spawn(meshctl::echo::serve_http(http, echo_id));
    }

    /// Writes the waypoint's config file and starts it at `ip(1)` as `ns/waypoint`.
    pub async fn waypoint(&self, ns: &str, config: &str) -> Waypoint {
        self.waypoint_with(ns, config, |_| {}).await
    }

    /// [`Mesh::waypoint`] with settings adjusted by `adjust`.
    pub async fn waypoint_with(
        &self,
        ns: &str,
        config: &str,
        adjust: impl FnOnce(&mut Settings),
    ) -> Waypoint {
        let path = self.config_path();
        std::fs::write(&path, config).unwrap();
        let mut s = Settings::defaults();
        s.namespace = ns.to_owned();
        s.name = "waypoint".to_owned();
        s.bind_address = self.ip(1);
        s.ca_dir = Some(self.dir.join("ca"));
        s.local_config_path = Some(path);
        s.config_poll_interval = Duration::from_millis(50);
        s.drain_timeout = Duration::from_secs(1);
        adjust(&mut s);
        waypoint::start(s, None).await.expect("waypoint starts")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("waypoint.yaml")
    }

    /// A client `ns/sa` tunnelling to the waypoint for `target`.
    pub async fn client(
        &self,
        ns: &str,
        sa: &str,
        target: SocketAddr,
    ) -> meshcore::hbone::H2Stream {
        let id = SpiffeId::new("cluster.local", ns, sa).unwrap();
        let creds = self.certs.credentials(&id).await.unwrap();
        let hbone = HboneClient::new(ClientSettings::default());
        let waypoint_id = SpiffeId::new("cluster.local", "shop", "waypoint").unwrap();
        hbone
            .connect(&ConnectRequest {
                credentials: creds,
                expected: vec![waypoint_id],
                hbone_addr: SocketAddr::new(self.ip(1), 15008),
                target,
                source: Some(SocketAddr::new(self.ip(200), 40000)),
                bind_ip: None,
                dialer: None,
                baggage: None,
                trace: None,
            })
            .await
            .expect("tunnel to the waypoint")
    }

    /// Sends HTTP/1.1 requests over one tunnel from `ns/sa` to `target`.
    pub async fn http1(&self, ns: &str, sa: &str, target: SocketAddr) -> Http1 {
        let stream = self.client(ns, sa, target).await;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Http1 {
            sender,
            host: target.to_string(),
        }
    }

    /// Sends HTTP/2 requests over one tunnel.
    pub async fn http2(&self, ns: &str, sa: &str, target: SocketAddr) -> Http2 {
        let stream = self.client(ns, sa, target).await;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        Http2 {
            sender,
            host: target.to_string(),
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
    pub trailers: Option<http::HeaderMap>,
}

impl Answer {
    /// The echo server's `Key=Value` line, e.g. `Hostname`.
    pub fn echo(&self, key: &str) -> Option<&str> {
        meshctl::echo::field(&self.body, key)
    }

    /// A request header as the echo server saw it.
    pub fn request_header(&self, name: &str) -> Option<&str> {
        meshctl::echo::request_header(&self.body, name)
    }
}

pub async fn read(response: Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        trailers,
    }
}

pub struct Http1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Http1 {
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        self.sender.ready().await.unwrap();
        read(self.sender.send_request(req).await.expect("response")).await
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        self.send("GET", path, &[], "").await
    }
}

pub struct Http2 {
    sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    host: String,
}

impl Http2 {
    pub async fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.host))
            .version(http::Version::HTTP_2);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::new()).unwrap();
        self.sender.ready().await.unwrap();
        read(self.sender.send_request(req).await.expect("response")).await
    }
}

/// The metrics text of a waypoint.
pub async fn metrics(w: &Waypoint) -> String {
    get_text(w.addresses.stats, "/metrics").await
}

/// A plain HTTP/1.1 GET on a side door.
pub async fn get_text(addr: SocketAddr, path: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    read(sender.send_request(req).await.unwrap()).await.body
}

/// The value of the sample of `metric` whose labels include all of `labels`.
pub fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .reduce(|a, b| a + b)
}

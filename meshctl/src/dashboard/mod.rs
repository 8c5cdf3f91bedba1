//! `meshctl dashboard`: a live web view of the running mesh. One page (`page.html`, embedded,
//! plain HTML with inline JavaScript drawing SVG, nothing fetched from elsewhere) and
//! `/api/graph`, the service graph as JSON ([`graph::Graph`]), served on loopback with hyper.
//!
//! A collector thread reads the local cluster every [`POLL`]: every node ztunnel's
//! `/config_dump` (workloads, certificates, policies) and `/flows` (the window's connections,
//! denials with their policy), and every waypoint's `/metrics` (request and error rates between
//! the oldest and newest scrape within the window); the server hands out the latest graph.

pub mod graph;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::cluster::Cluster;
use crate::inspect::fetch::{self, From};
use crate::inspect::stat::{self, Sample};
use crate::inspect::{clock, ztunnel_config::Dump};
use crate::observe;

/// The page, served at `/`.
pub const PAGE: &str = include_str!("page.html");
/// The default address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:15600";
/// How often the cluster is read (the page polls as often).
pub const POLL: Duration = Duration::from_secs(2);

/// `meshctl dashboard`'s settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub state_dir: PathBuf,
    /// Where to serve; `None`: [`DEFAULT_LISTEN`].
    pub listen: Option<SocketAddr>,
    /// Flows and request rates over this much of the recent past.
    pub window: Duration,
    /// Open the page in a browser (`xdg-open`).
    pub open: bool,
}

/// The address to serve on. Loopback by default; another address only when asked for by name
/// on the command line (the view has no authentication: whoever reaches it sees the mesh's
/// workloads, identities and policies), with a warning.
pub fn listen_address(given: Option<SocketAddr>) -> (SocketAddr, Option<String>) {
    match given {
        None => (DEFAULT_LISTEN.parse().expect("valid default"), None),
        Some(a) if a.ip().is_loopback() => (a, None),
        Some(a) => (
            a,
            Some(format!(
                "serving on {a}, not loopback: the web view has no authentication, so anyone who \
                 reaches it sees the mesh's workloads, identities and policies"
            )),
        ),
    }
}

/// Runs the web view until interrupted.
pub fn run(opts: Options) -> Result<(), String> {
    // Fail early, with the usual message, when there is no cluster.
    Cluster::load(&opts.state_dir)?;
    let (addr, warning) = listen_address(opts.listen);
    if let Some(w) = warning {
        eprintln!("meshctl dashboard: warning: {w}");
    }
    let latest = Arc::new(Mutex::new(Bytes::from_static(
        b"{\"nodes\":[],\"edges\":[]}",
    )));
    let collector = Collector::new(opts.state_dir.clone(), opts.window);
    {
        let latest = latest.clone();
        std::thread::spawn(move || collector.run(&latest));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("listening on {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let url = format!("http://{addr}/");
        println!("meshctl dashboard: the mesh's web view on {url} (Ctrl-C to stop)");
        if opts.open {
            open_browser(&url);
        }
        tokio::select! {
            () = serve(listener, latest) => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

/// `xdg-open URL`, if there is one; quietly nothing otherwise.
fn open_browser(url: &str) {
    let _ = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Serves the page and the latest graph until the task is dropped.
pub async fn serve(listener: TcpListener, latest: Arc<Mutex<Bytes>>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let latest = latest.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let latest = latest.clone();
                async move { Ok::<_, Infallible>(answer(&req, &latest)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn answer(req: &Request<Incoming>, latest: &Mutex<Bytes>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &str, body: Bytes| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, kind)
            .header(header::CACHE_CONTROL, "no-store")
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .body(Full::new(body))
            .expect("valid response")
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"GET only\n"),
        );
    }
    match req.uri().path() {
        "/" | "/index.html" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(PAGE.as_bytes()),
        ),
        "/api/graph" => {
            let body = latest.lock().map(|b| b.clone()).unwrap_or_default();
            reply(StatusCode::OK, "application/json", body)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ),
    }
}

/// Reads the cluster and keeps the waypoints' recent scrapes for the request rates.
pub struct Collector {
    state_dir: PathBuf,
    window: Duration,
    /// Scrapes of the waypoints' `istio_requests_total`, oldest first, within the window.
    scrapes: VecDeque<(Instant, Vec<Sample>)>,
}

impl Collector {
    pub fn new(state_dir: PathBuf, window: Duration) -> Self {
        Self {
            state_dir,
            window,
            scrapes: VecDeque::new(),
        }
    }

    /// Collects every [`POLL`] into `latest`, forever.
    fn run(mut self, latest: &Mutex<Bytes>) {
        loop {
            let started = Instant::now();
            let graph = self.collect();
            let json = serde_json::to_vec(&graph).expect("graph serializes");
            if let Ok(mut l) = latest.lock() {
                *l = Bytes::from(json);
            }
            std::thread::sleep(POLL.saturating_sub(started.elapsed()));
        }
    }

    /// One reading of the cluster, as a graph.
    pub fn collect(&mut self) -> graph::Graph {
        let now_ms = clock::now_ms();
        let window_ms = self.window.as_millis() as u64;
        let cluster = match Cluster::load(&self.state_dir) {
            Ok(c) => c,
            Err(e) => {
                return graph::Graph {
                    generated_ms: now_ms,
                    window_seconds: window_ms as f64 / 1000.0,
                    errors: vec![e],
                    ..graph::Graph::default()
                }
            }
        };
        let mut errors = Vec::new();
        let mut dumps = Vec::new();
        for node in &cluster.nodes {
            match cluster
                .ztunnel_dump(&node.name)
                .and_then(|v| serde_json::from_value::<Dump>(v).map_err(|e| e.to_string()))
            {
                Ok(d) => dumps.push((node.name.clone(), d)),
                Err(e) => errors.push(format!("{}: config_dump: {e}", node.name)),
            }
        }
        let flows = read_flows(&cluster).unwrap_or_else(|e| {
            errors.push(format!("flows: {e}"));
            Vec::new()
        });
        let mut samples = Vec::new();
        for pod in cluster.pods.iter().filter(|p| p.waypoint().is_some()) {
            match fetch::get(
                &From::Netns(pod.netns.clone()),
                SocketAddr::from((pod.ip, 15020)),
                "/metrics",
            ) {
                Ok(body) => samples.extend(
                    stat::parse(&body)
                        .into_iter()
                        .filter(|s| s.name == "istio_requests_total"),
                ),
                Err(e) => errors.push(format!("waypoint {}: {e}", pod.key())),
            }
        }
        let rates = self.rates(Instant::now(), samples);
        graph::build(graph::Input {
            now_ms,
            window_ms,
            flows: &flows,
            dumps: &dumps,
            rates,
            errors,
        })
    }

    /// Adds a scrape and gives the request rates between the oldest kept and this one.
    fn rates(
        &mut self,
        now: Instant,
        samples: Vec<Sample>,
    ) -> Option<(f64, Vec<graph::RequestRate>)> {
        self.scrapes.push_back((now, samples));
        while self.scrapes.len() > 2
            && self
                .scrapes
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= self.window)
        {
            self.scrapes.pop_front();
        }
        let (first, before) = self.scrapes.front()?;
        let (last, after) = self.scrapes.back()?;
        let seconds = last.duration_since(*first).as_secs_f64();
        (self.scrapes.len() >= 2 && seconds > 0.0)
            .then(|| (seconds, graph::request_rates(before, after, seconds)))
    }
}

/// The recorded flows of every node's ztunnel (each JSON object with its `node`).
fn read_flows(cluster: &Cluster) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let opts = observe::Options {
        json: true,
        ..observe::Options::default()
    };
    observe::run(observe::cluster_sources(cluster), &opts, &mut out)?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_by_default_and_a_warning_otherwise() {
        assert_eq!(
            listen_address(None),
            (DEFAULT_LISTEN.parse().unwrap(), None)
        );
        let (a, w) = listen_address(Some("127.0.0.2:9000".parse().unwrap()));
        assert_eq!((a.port(), w), (9000, None));
        let (_, w) = listen_address(Some("[::1]:9000".parse().unwrap()));
        assert!(w.is_none());
        let (_, w) = listen_address(Some("0.0.0.0:15600".parse().unwrap()));
        assert!(w.unwrap().contains("no authentication"));
    }

    #[test]
    fn request_rates_span_the_window() {
        let mut c = Collector::new("/nonexistent".into(), Duration::from_secs(10));
        let t0 = Instant::now();
        let scrape = |n: u32| {
            stat::parse(&format!(
                "istio_requests_total{{reporter=\"waypoint\",source_workload=\"client\",source_workload_namespace=\"gamma\",destination_service_name=\"echo\",destination_service_namespace=\"gamma\",response_code=\"200\"}} {n}\n"
            ))
        };
        assert!(c.rates(t0, scrape(0)).is_none(), "one scrape: no rate yet");
        let (s, r) = c.rates(t0 + Duration::from_secs(2), scrape(10)).unwrap();
        assert_eq!(s, 2.0);
        assert_eq!(r[0].rps, 5.0);
        // Scrapes older than the window are dropped: the rate is over the last 10 s or so.
        for i in 2..=10u32 {
            c.rates(t0 + Duration::from_secs(2 * u64::from(i)), scrape(10 * i));
        }
        let (s, r) = c.rates(t0 + Duration::from_secs(22), scrape(110)).unwrap();
        assert!((10.0..=12.0).contains(&s), "{s}");
        assert!((r[0].rps - 5.0).abs() < 1e-9, "{r:?}");
    }

    #[tokio::test]
    async fn serves_the_page_and_the_graph() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let latest = Arc::new(Mutex::new(Bytes::from_static(b"{\"nodes\":[1]}")));
        tokio::spawn(serve(listener, latest));
        let got = tokio::task::spawn_blocking(move || {
            (
                fetch::get(&From::Here, addr, "/"),
                fetch::get(&From::Here, addr, "/api/graph"),
                fetch::get(&From::Here, addr, "/nope"),
            )
        })
        .await
        .unwrap();
        let page = got.0.unwrap();
        assert!(page.contains("<svg") && page.contains("/api/graph"));
        assert!(
            !page.contains("src=") && !page.contains("<link"),
            "nothing from elsewhere"
        );
        assert_eq!(got.1.unwrap(), "{\"nodes\":[1]}");
        assert!(got.2.unwrap_err().contains("HTTP 404"));
    }
}

//! The data path. Each HBONE CONNECT from a ztunnel is resolved to a Service port (service-
//! addressed) or a pod (workload-addressed), accepted, and served by protocol: HTTP (HTTP/1.1 or
//! HTTP/2, told apart by hyper) through [`http`], opaque TCP through [`tcp`], unknown ports
//! detected from their first bytes ([`sniff`]).

mod attempt;
pub mod body;
mod forward;
pub mod gateway;
pub mod headers;
pub mod http;
mod outcome;
mod rand;
pub mod sniff;
pub mod tcp;
pub mod upstream;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshcore::hbone::{Baggage, InboundConnect};
use meshcore::identity::SpiffeId;
use meshcore::l7::service::Protocol;
use serde::Serialize;

use crate::config::{ConfigStore, Target};
use crate::metrics::Metrics;
use crate::settings::AccessLogFormat;
use upstream::Upstream;

/// Settings the data path reads.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub cluster: String,
    pub access_log: AccessLogFormat,
    pub forward_client_cert: bool,
    pub detection_timeout: Duration,
    /// Time an HTTP/1 client has to send a request's headers.
    pub header_timeout: Duration,
    /// This proxy's workload name (`POD_NAME`, else the Gateway's name): the source of the
    /// requests a gateway listener reports (`reporter="source"`).
    pub workload: String,
}

/// The original client of a tunnel, as its ztunnel presented it, or of a gateway listener
/// connection.
#[derive(Debug, Clone)]
pub struct Client {
    /// Verified in the TLS handshake: the client workload's identity. `None` at a gateway
    /// listener: the client is outside the mesh and proves nothing.
    pub identity: Option<Arc<SpiffeId>>,
    /// From `forwarded: for=`; the client pod's address. At a gateway: the connection's peer.
    pub addr: Option<SocketAddr>,
    /// The TLS server name the client asked for (gateway HTTPS listeners).
    pub sni: Option<String>,
    /// Workload metadata from `baggage` (name, app, version), for metrics.
    pub baggage: Baggage,
}

/// A recent denial, for `/config_dump`.
#[derive(Debug, Clone, Serialize)]
pub struct Denial {
    pub time: String,
    pub source: String,
    pub destination: String,
    pub request: String,
    pub reason: String,
}

const RECENT_DENIALS: usize = 100;

pub struct Proxy {
    pub store: Arc<ConfigStore>,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    pub settings: ProxySettings,
    /// The waypoint's own identity (presented upstream, named in `x-forwarded-client-cert`).
    pub identity: SpiffeId,
    denials: Mutex<VecDeque<Denial>>,
    /// One record per HTTP request, for `/flows` (`crate::flows`).
    pub flows: crate::flows::RequestLog,
    /// OTLP span export of requests (off unless configured).
    pub tracing: meshcore::otel::Tracing,
}

impl Proxy {
    pub fn new(
        store: Arc<ConfigStore>,
        upstream: Upstream,
        metrics: Arc<Metrics>,
        settings: ProxySettings,
        identity: SpiffeId,
    ) -> Self {
        Self {
            store,
            upstream,
            metrics,
            settings,
            identity,
            denials: Mutex::new(VecDeque::new()),
            flows: crate::flows::RequestLog::default(),
            tracing: meshcore::otel::Tracing::off(),
        }
    }

    /// The same proxy, exporting a span per request through `tracing`.
    pub fn with_tracing(self, tracing: meshcore::otel::Tracing) -> Self {
        Self { tracing, ..self }
    }

    /// Serves one CONNECT stream to its end.
    pub async fn handle(self: Arc<Self>, connect: InboundConnect) {
        let destination = connect.destination;
        let protocol = {
            let snapshot = self.store.load();
            match snapshot.resolve(destination) {
                Some(Target::Service { port, .. }) => port.protocol(),
                Some(Target::Workload { protocol, .. }) => protocol,
                None => {
                    tracing::info!(%destination, peer = %connect.peer, "no service or workload at this address: refused");
                    connect.reject(::http::StatusCode::SERVICE_UNAVAILABLE);
                    return;
                }
            }
        };
        let client = Client {
            identity: Some(connect.peer.clone()),
            addr: connect.forwarded_for(),
            sni: None,
            baggage: connect
                .headers
                .get("baggage")
                .and_then(|v| v.to_str().ok())
                .map(Baggage::parse)
                .unwrap_or_default(),
        };
        let stream = match connect.accept() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%destination, "accepting tunnel: {e}");
                return;
            }
        };
        match protocol {
            Protocol::Tcp => {
                tcp::forward(self, sniff::Rewind::new(stream), client, destination).await
            }
            Protocol::Http | Protocol::Http2 | Protocol::Grpc => {
                http::serve(self, sniff::Rewind::new(stream), client, destination).await
            }
            Protocol::Auto => match sniff::detect(stream, self.settings.detection_timeout).await {
                Ok((sniff::Detected::Http, stream)) => {
                    http::serve(self, stream, client, destination).await
                }
                Ok((sniff::Detected::Tcp, stream)) => {
                    tcp::forward(self, stream, client, destination).await
                }
                Err(e) => tracing::debug!(%destination, "reading the first bytes: {e}"),
            },
        }
    }

    /// Keeps a denial for `/config_dump`; `source` is `None` for a client without identity
    /// (gateway), shown as `-`.
    pub fn record_denial(
        &self,
        source: Option<&SpiffeId>,
        destination: SocketAddr,
        request: String,
        reason: String,
    ) {
        let mut d = self.denials.lock().expect("denials lock");
        if d.len() == RECENT_DENIALS {
            d.pop_front();
        }
        d.push_back(Denial {
            time: meshcore::certs::rfc3339(SystemTime::now()),
            source: source.map_or_else(|| "-".to_owned(), SpiffeId::to_string),
            destination: destination.to_string(),
            request,
            reason,
        });
    }

    pub fn recent_denials(&self) -> Vec<Denial> {
        self.denials
            .lock()
            .expect("denials lock")
            .iter()
            .cloned()
            .collect()
    }
}

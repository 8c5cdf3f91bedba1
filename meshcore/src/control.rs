//! The channel to the control plane (istiod-lite on 15012): TLS verified against the mesh root
//! and the server's DNS name, HTTP/2, shared by the xDS and certificate clients.

use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Largest xDS message either end takes or sends: Istio's 200 MiB. tonic's default decode limit
/// (4 MiB) is a first Address response of ~16,000 pods; above it a ztunnel never syncs.
pub const MAX_XDS_MESSAGE_BYTES: usize = 200 * 1024 * 1024;

/// A delta ADS client on `channel` taking and sending messages up to [`MAX_XDS_MESSAGE_BYTES`].
pub fn ads_client(
    channel: Channel,
) -> crate::api::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient<
    Channel,
> {
    crate::api::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::new(
        channel,
    )
    .max_decoding_message_size(MAX_XDS_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_XDS_MESSAGE_BYTES)
}

/// How a control-plane connection notices that its peer is gone when nothing says so (a
/// silent partition, a peer that vanished): TCP keepalive, and HTTP/2 pings answered within a
/// timeout. Istio's ztunnel values by default: TCP 300 s idle, 75 s interval, 9 probes; an HTTP/2
/// ping every 30 s, answered within 10 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub tcp_idle: Duration,
    pub tcp_interval: Duration,
    pub tcp_retries: u32,
    pub h2_interval: Duration,
    pub h2_timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            tcp_idle: Duration::from_secs(300),
            tcp_interval: Duration::from_secs(75),
            tcp_retries: 9,
            h2_interval: Duration::from_secs(30),
            h2_timeout: Duration::from_secs(10),
        }
    }
}

impl Keepalive {
    /// TCP keepalive for data-path connections (Istio's ztunnel: probes after 180 s idle), so a
    /// half-open connection (a peer that vanished) does not hold its descriptor and buffers
    /// forever.
    pub const DATA_PATH: Keepalive = Keepalive {
        tcp_idle: Duration::from_secs(180),
        tcp_interval: Duration::from_secs(60),
        tcp_retries: 9,
        h2_interval: Duration::from_secs(30),
        h2_timeout: Duration::from_secs(10),
    };

    /// Sets TCP keepalive on `socket`.
    pub fn apply_tcp<S: std::os::fd::AsFd>(&self, socket: &S) -> std::io::Result<()> {
        let ka = socket2::TcpKeepalive::new()
            .with_time(self.tcp_idle)
            .with_interval(self.tcp_interval)
            .with_retries(self.tcp_retries);
        socket2::SockRef::from(socket).set_tcp_keepalive(&ka)
    }
}

/// After a session that stayed up this long, reconnection backoff starts over.
pub const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// How soon to try again when nothing answered at all (connection refused, no route, TLS
/// never completed): the control plane is down or restarting, and trying costs it nothing, so
/// the ztunnels find it within this of its return and a policy written during an outage is
/// enforced within about a second of istiod-lite coming back.
pub const UNANSWERED_RETRY: Duration = Duration::from_millis(500);

/// The wait before reconnecting, and the backoff to carry. When the control plane never
/// answered (`answered` false), [`UNANSWERED_RETRY`] and the backoff unchanged. When it
/// answered and the session still ended (an error status, a refused token), the backoff
/// doubles from 1 s to 30 s, so a live but unhappy control plane is not hammered; it starts
/// over at 1 s after a session that stayed up [`HEALTHY_SESSION`].
pub fn next_backoff(current: Duration, session: Duration, answered: bool) -> (Duration, Duration) {
    if !answered {
        return (UNANSWERED_RETRY, current);
    }
    let wait = if session >= HEALTHY_SESSION {
        Duration::from_secs(1)
    } else {
        current
    };
    (wait, (wait * 2).min(Duration::from_secs(30)))
}

/// Whether a failed call reached the control plane: tonic reports a connection that could not
/// be made (or broke before an answer) as `Unavailable`; any other status was the server's.
pub fn answered(status: &tonic::Status) -> bool {
    status.code() != tonic::Code::Unavailable
}

/// Where the control plane is and how to recognise it.
#[derive(Clone)]
pub struct ControlPlane {
    /// `host:port` to dial.
    pub address: String,
    /// The DNS name its certificate must carry.
    pub server_name: String,
    pub tls: Arc<rustls::ClientConfig>,
}

impl ControlPlane {
    /// A channel that connects on first use and reconnects after failures, with
    /// [`Keepalive::default`].
    pub fn channel(&self) -> Result<Channel, String> {
        self.channel_with(Keepalive::default())
    }

    /// [`Self::channel`] with the given keepalive.
    pub fn channel_with(&self, keepalive: Keepalive) -> Result<Channel, String> {
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone());
        let server_name = rustls_pki_types::ServerName::try_from(self.server_name.clone())
            .map_err(|e| format!("server name {:?}: {e}", self.server_name))?;
        let address = self.address.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let (tls, server_name, address) = (tls.clone(), server_name.clone(), address.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&address).await?;
                tcp.set_nodelay(true)?;
                keepalive.apply_tcp(&tcp)?;
                let stream = tls.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        Ok(Endpoint::from_shared(format!("http://{}", self.address))
            .map_err(|e| format!("address {:?}: {e}", self.address))?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(keepalive.h2_interval)
            .keep_alive_timeout(keepalive.h2_timeout)
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(connector))
    }
}

/// The outbound half of a delta ADS stream (the requests `rx` yields), carrying the caller's
/// bearer token. The token file is read for every stream, so a rotated token is used from the
/// next reconnection on.
pub fn ads_request(
    rx: tokio::sync::mpsc::Receiver<crate::api::discovery::DeltaDiscoveryRequest>,
    token_file: Option<&std::path::Path>,
) -> Result<
    tonic::Request<
        impl futures_util::Stream<Item = crate::api::discovery::DeltaDiscoveryRequest> + Send + 'static,
    >,
    String,
> {
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut request = tonic::Request::new(outbound);
    if let Some(file) = token_file {
        let token = std::fs::read_to_string(file)
            .map_err(|e| format!("token file {}: {e}", file.display()))?;
        let bearer = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| format!("token file {}: not a valid header value", file.display()))?;
        request.metadata_mut().insert("authorization", bearer);
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_30s_and_starts_over_after_a_healthy_session() {
        let s = Duration::from_secs;
        let mut backoff = s(1);
        let mut waits = Vec::new();
        for _ in 0..7 {
            let (wait, next) = next_backoff(backoff, s(0), true);
            waits.push(wait.as_secs());
            backoff = next;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        let (wait, next) = next_backoff(backoff, HEALTHY_SESSION, true);
        assert_eq!((wait, next), (s(1), s(2)));
    }

    #[test]
    fn an_unanswered_control_plane_is_tried_every_half_second_without_growing_the_backoff() {
        let s = Duration::from_secs;
        let (wait, next) = next_backoff(s(8), s(0), false);
        assert_eq!((wait, next), (UNANSWERED_RETRY, s(8)));
        assert!(!answered(&tonic::Status::unavailable("tcp connect error")));
        assert!(answered(&tonic::Status::unauthenticated("bad token")));
    }
}

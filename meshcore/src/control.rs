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
    /// A channel that connects on first use and reconnects after failures.
    pub fn channel(&self) -> Result<Channel, String> {
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone());
        let server_name = rustls_pki_types::ServerName::try_from(self.server_name.clone())
            .map_err(|e| format!("server name {:?}: {e}", self.server_name))?;
        let address = self.address.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let (tls, server_name, address) = (tls.clone(), server_name.clone(), address.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&address).await?;
                tcp.set_nodelay(true)?;
                let stream = tls.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        Ok(Endpoint::from_shared(format!("http://{}", self.address))
            .map_err(|e| format!("address {:?}: {e}", self.address))?
            .connect_timeout(Duration::from_secs(10))
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

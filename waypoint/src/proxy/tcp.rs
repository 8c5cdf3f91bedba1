//! Opaque TCP through the waypoint: L4 authorization (the HTTP-only parts of policies cannot
//! match), one endpoint of the addressed Service (or the addressed pod), bytes copied both ways
//! over a new HBONE tunnel, and Istio's TCP metrics when it ends.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::upstream::Destination;
use super::{Client, Proxy};
use crate::authz::{RequestAttrs, Verdict};
use crate::config::Target;
use crate::metrics::{Peer, RequestLabels};

pub async fn forward<S>(proxy: Arc<Proxy>, mut stream: S, client: Client, destination: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let snapshot = proxy.store.load();
    let Some(target) = snapshot.resolve(destination) else {
        return;
    };
    let (service, endpoint, port) = match &target {
        Target::Service { service, port } => {
            let Some(endpoint) = service.pick_endpoint() else {
                tracing::info!(%destination, flag = "UH", "TCP: no healthy endpoint");
                let _ = stream.shutdown().await;
                return;
            };
            (*service, endpoint.clone(), port.target_port())
        }
        Target::Workload {
            service,
            endpoint,
            port,
            ..
        } => (*service, (*endpoint).clone(), *port),
    };
    let mut labels = RequestLabels {
        source: Peer {
            workload: client.baggage.workload_name.clone().unwrap_or_default(),
            namespace: client
                .identity
                .as_deref()
                .map(|i| i.namespace().to_owned())
                .unwrap_or_default(),
            principal: client
                .identity
                .as_deref()
                .map(|i| i.to_string())
                .unwrap_or_default(),
            ..Default::default()
        },
        destination: Peer {
            workload: endpoint.name.clone().unwrap_or_default(),
            namespace: endpoint.namespace.clone(),
            principal: endpoint.identity.to_string(),
            ..Default::default()
        },
        destination_service: service.hostname.clone(),
        destination_service_name: service.key.name.clone(),
        destination_service_namespace: service.key.namespace.clone(),
        cluster: proxy.settings.cluster.clone(),
        request_protocol: "tcp",
        reporter: crate::metrics::Reporter::Waypoint,
    };
    let decision = snapshot.policies.decide(&RequestAttrs {
        service: Some((&service.key.namespace, &service.key.name)),
        source: client.identity.as_deref(),
        source_ip: client.addr.map(|a| a.ip()),
        destination_ip: destination.ip(),
        destination_port: destination.port(),
        sni: None,
        http: None,
    });
    if matches!(decision.verdict, Verdict::Deny) {
        tracing::info!(%destination, source = ?client.identity, "TCP connection {}", decision.describe());
        proxy.record_denial(
            client.identity.as_deref(),
            destination,
            "TCP".into(),
            decision.describe(),
        );
        proxy.metrics.tcp(&labels, "DENY", 0, 0);
        let _ = stream.shutdown().await;
        return;
    }
    let dest = Destination {
        target: SocketAddr::new(endpoint.address, port),
        hbone: endpoint.hbone,
        expected: service.expected_identities(&endpoint),
    };
    drop(snapshot);
    let mut tunnel = match proxy.upstream.tunnel(&dest).await {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(%destination, flag = "UF", "TCP: {e}");
            proxy.metrics.tcp(&labels, "UF", 0, 0);
            let _ = stream.shutdown().await;
            return;
        }
    };
    let (moved, result) = meshcore::copy::copy_bidirectional(&mut stream, &mut tunnel).await;
    if let Err(e) = result {
        tracing::debug!(%destination, "TCP relay ended: {e}");
    }
    labels.request_protocol = "tcp";
    proxy.metrics.tcp(&labels, "-", moved.a_to_b, moved.b_to_a);
}

//! Tracing across a tunnel: one connection through both ztunnels is one trace of two spans
//! (the client's `ztunnel outbound`, the server's `ztunnel inbound` as its child, joined by the
//! `traceparent` the HBONE CONNECT carries), exported over OTLP/gRPC by the client's ztunnel
//! and over OTLP/HTTP by the server's, to meshctl's receiver.

use std::net::SocketAddr;
use std::time::Duration;

use meshctl::otlp::{Collector, ReceivedSpan};

use super::harness::{self, Mesh, CLIENT, CONTROL, SERVER};

/// The receiver, on the suite's control address: (collector, gRPC address, HTTP address).
pub async fn receiver() -> Result<(std::sync::Arc<Collector>, SocketAddr, SocketAddr), String> {
    let any = SocketAddr::new(CONTROL, 0);
    let (c, g, h) = meshctl::otlp::start(Some(any), Some(any)).await?;
    Ok((c, g.expect("bound"), h.expect("bound")))
}

fn pair(spans: &[ReceivedSpan]) -> Option<(ReceivedSpan, ReceivedSpan)> {
    spans
        .iter()
        .filter(|s| s.name == "ztunnel outbound" && s.error.is_none())
        .find_map(|out| {
            let inbound = spans
                .iter()
                .find(|s| s.name == "ztunnel inbound" && s.parent_span_id == out.span_id)?;
            Some((out.clone(), inbound.clone()))
        })
}

pub async fn one_connection_one_trace(
    m: &mut Mesh,
    collector: &Collector,
) -> Result<String, String> {
    harness::echo_once(b"traced").await?;
    let (out, inbound) = collector
        .wait_for(Duration::from_secs(10), pair)
        .await
        .map_err(|e| {
            format!(
                "no outbound span with its inbound child: {e}\n{}",
                m.tails()
            )
        })?;
    let want = [
        (&out, "kind", out.kind, "client"),
        (&out, "received over", out.received_over, "grpc"),
        (&inbound, "kind", inbound.kind, "server"),
        (&inbound, "received over", inbound.received_over, "http"),
    ];
    for (span, what, got, expected) in want {
        if got != expected {
            return Err(format!("{what} {got}, want {expected}: {}", span.line()));
        }
    }
    if out.trace_id != inbound.trace_id || out.service != "ztunnel" {
        return Err(format!(
            "not one trace of ztunnel spans:\n{}\n{}",
            out.line(),
            inbound.line()
        ));
    }
    for (span, key, expected) in [
        (&out, "istio.source_workload", "client"),
        (&out, "istio.reporter", "source"),
        (&inbound, "istio.reporter", "destination"),
        (&inbound, "istio.destination_workload", "server"),
        (
            &inbound,
            "istio.source_principal",
            "spiffe://cluster.local/ns/shop/sa/client",
        ),
        (&inbound, "istio.connection_security_policy", "mutual_tls"),
    ] {
        if span.attribute(key) != Some(expected) {
            return Err(format!("{key} should be {expected}: {}", span.line()));
        }
    }
    let bytes: u64 = inbound
        .attribute("istio.received_bytes")
        .and_then(|b| b.parse().ok())
        .unwrap_or(0);
    if bytes < 6 {
        return Err(format!(
            "inbound span counts {bytes} bytes received: {}",
            inbound.line()
        ));
    }
    let mut exported = Vec::new();
    for ip in [CLIENT, SERVER] {
        let (_, body) = harness::http_get(SocketAddr::new(ip, 15020), "/metrics").await?;
        let n = body
            .lines()
            .find_map(|l| l.strip_prefix("mesh_trace_spans_total{result=\"exported\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(format!(
                "{ip}: no mesh_trace_spans_total{{result=\"exported\"}}"
            ))?;
        exported.push(n);
    }
    Ok(format!(
        "trace {}: outbound span {} (gRPC) → inbound span {} (HTTP), {bytes} bytes; exported {} + {} spans",
        &out.trace_id[..8],
        &out.span_id[..8],
        &inbound.span_id[..8],
        exported[0],
        exported[1]
    ))
}

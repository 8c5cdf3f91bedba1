//! The proxies' span export (meshcore::otel) against this receiver, over both OTLP transports.

use std::time::Duration;

use meshcore::otel::{KeyValue, Protocol, SpanKind, Tracing, TracingSettings};

async fn export_two_hops(protocol: Protocol) -> Vec<super::ReceivedSpan> {
    let (collector, grpc, http) = super::start(
        Some("127.0.0.1:0".parse().unwrap()),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let endpoint = match protocol {
        Protocol::Grpc => grpc.unwrap(),
        Protocol::HttpProtobuf => http.unwrap(),
    };
    let tracing = Tracing::start(
        &TracingSettings {
            endpoint: Some(format!("http://{endpoint}")),
            protocol,
            sampling: 1.0,
            service_name: None,
        },
        "ztunnel",
        vec![KeyValue::new("k8s.pod.name", "ztunnel-x")],
    )
    .unwrap();
    let client = tracing.hop(None).expect("on");
    assert!(client.sampled(), "ratio 1 samples every new trace");
    let sent = client.context;
    let server = tracing.hop(Some(sent)).expect("on");
    server.finish(
        "ztunnel inbound",
        SpanKind::Server,
        vec![KeyValue::new("istio.destination_workload", "echo")],
        Some("denied by ns/deny-all".into()),
    );
    client.finish("ztunnel outbound", SpanKind::Client, Vec::new(), None);
    tracing.shutdown(Duration::from_secs(5)).await;
    let spans = collector
        .wait_for(Duration::from_secs(5), |s| {
            (s.len() == 2).then(|| s.to_vec())
        })
        .await
        .unwrap();
    let inbound = spans.iter().find(|s| s.name == "ztunnel inbound").unwrap();
    let outbound = spans.iter().find(|s| s.name == "ztunnel outbound").unwrap();
    assert_eq!(inbound.trace_id, format!("{:032x}", sent.trace_id));
    assert_eq!(inbound.parent_span_id, format!("{:016x}", sent.span_id));
    assert_eq!(outbound.span_id, format!("{:016x}", sent.span_id));
    assert_eq!(outbound.parent_span_id, "");
    assert_eq!(
        (inbound.kind, outbound.kind, inbound.service.as_str()),
        ("server", "client", "ztunnel")
    );
    assert_eq!(inbound.error.as_deref(), Some("denied by ns/deny-all"));
    assert_eq!(
        inbound.attribute("istio.destination_workload"),
        Some("echo")
    );
    assert!(inbound.end_unix_nano >= inbound.start_unix_nano);
    assert!(inbound.line().contains("ERROR \"denied by ns/deny-all\""));
    spans
}

#[tokio::test]
async fn spans_reach_the_receiver_over_otlp_grpc() {
    let spans = export_two_hops(Protocol::Grpc).await;
    assert!(spans.iter().all(|s| s.received_over == "grpc"));
}

#[tokio::test]
async fn spans_reach_the_receiver_over_otlp_http_at_v1_traces() {
    let spans = export_two_hops(Protocol::HttpProtobuf).await;
    assert!(spans.iter().all(|s| s.received_over == "http"));
}

#[tokio::test]
async fn the_http_receiver_names_what_is_wrong() {
    let (_, _, http) = super::start(None, Some("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let http = http.unwrap();
    let send = |path: &'static str, ctype: &'static str, body: &'static [u8]| async move {
        let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post(path)
            .header("content-type", ctype)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(body)))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let (s, b) = send("/v1/metrics", "application/x-protobuf", b"").await;
    assert_eq!((s, b.contains("POST /v1/traces")), (404, true));
    let (s, b) = send("/v1/traces", "application/json", b"{}").await;
    assert_eq!((s, b.contains("application/x-protobuf")), (415, true));
    let (s, b) = send("/v1/traces", "application/x-protobuf", b"\xff\xff\xff").await;
    assert_eq!(
        (s, b.contains("not an ExportTraceServiceRequest")),
        (400, true)
    );
}

//! Settings, the sampling decision, and the queue's bound under an exporter that never answers.
//! Export over both OTLP transports is tested against meshctl's receiver (meshctl/src/otlp).

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

use super::*;

#[test]
fn bad_settings_are_named() {
    for (endpoint, want) in [
        ("jaeger:4317", "want http://HOST:PORT"),
        ("http://", "OTEL_EXPORTER_OTLP_ENDPOINT=http://"),
    ] {
        let e = endpoint_url(endpoint, Protocol::Grpc).unwrap_err();
        assert!(e.contains(want), "{endpoint}: {e}");
    }
    assert!(parse_ratio("1.5").unwrap_err().contains("from 0 to 1"));
    assert!(parse_protocol("http/json")
        .unwrap_err()
        .contains("grpc or http/protobuf"));
    assert_eq!(
        endpoint_url("http://c:4318/", Protocol::HttpProtobuf).unwrap(),
        "http://c:4318/v1/traces"
    );
    assert_eq!(
        endpoint_url("http://c:4318/custom", Protocol::HttpProtobuf).unwrap(),
        "http://c:4318/custom"
    );
    assert!(
        !Tracing::start(&TracingSettings::default(), "x", Vec::new())
            .unwrap()
            .is_on()
    );
}

/// Never answers, as a collector behind a black-holed route.
#[derive(Debug)]
struct Stalled;

impl SpanExporter for Stalled {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_stalled_collector_costs_dropped_spans_not_waiting() {
    let tracing = Tracing::with_exporter(Stalled, Resource::builder_empty().build(), 1.0, "t");
    let before = DROPPED.load(Ordering::Relaxed);
    // One batch is taken by the stalled export; the queue holds QUEUE more; the rest drop.
    for _ in 0..(QUEUE + BATCH + 100) {
        tracing
            .hop(None)
            .unwrap()
            .finish("x", SpanKind::Client, Vec::new(), None);
        tokio::task::yield_now().await;
    }
    let dropped = DROPPED.load(Ordering::Relaxed) - before;
    assert!(dropped >= 100, "dropped {dropped}");
    assert!(render().contains("mesh_trace_spans_total{result=\"dropped\"}"));
}

#[tokio::test]
async fn sampling_follows_the_ratio_and_the_parent() {
    let none = Tracing::with_exporter(Stalled, Resource::builder_empty().build(), 0.0, "t");
    let all = Tracing::with_exporter(Stalled, Resource::builder_empty().build(), 1.0, "t");
    let half = Tracing::with_exporter(Stalled, Resource::builder_empty().build(), 0.5, "t");
    assert!((0..100).all(|_| !none.hop(None).unwrap().sampled()));
    assert!((0..100).all(|_| all.hop(None).unwrap().sampled()));
    let n = (0..2000)
        .filter(|_| half.hop(None).unwrap().sampled())
        .count();
    assert!((800..1200).contains(&n), "{n} of 2000 sampled at 0.5");
    // A caller's decision wins both ways.
    let mut parent = TraceParent::random();
    assert!(!all.hop(Some(parent)).unwrap().sampled());
    parent.sampled = true;
    assert!(none.hop(Some(parent)).unwrap().sampled());
}

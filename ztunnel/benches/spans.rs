//! What tracing costs per connection: `Metrics::opened` + `closed` (the metric work every
//! connection pays) with tracing off, on with the connection not sampled, and on and sampled
//! (the span built and queued; the export task hands batches to an exporter that discards
//! them, so the OTLP encoding and network are not in the figure), measured in the same run.
//!
//!     cargo bench -p ztunnel --bench spans

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use meshcore::otel::{SpanKind, Tracing};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use ztunnel::metrics::{ConnectionLabels, Metrics, Reporter, INBOUND_SPAN};
use ztunnel::state::Snapshot;

const MESH: &str = r#"
workloads:
- {name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["10.0.0.2"], protocol: HBONE}
- {name: echo, namespace: default, serviceAccount: echo, workloadIps: ["10.0.0.3"], protocol: HBONE}
"#;
const CONNECTIONS: u32 = 100_000;

#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

fn run(snap: &Snapshot, metrics: &Arc<Metrics>) -> f64 {
    let src = snap.workload_by_name("default", "sleep").expect("sleep");
    let dst = snap.workload_by_name("default", "echo").expect("echo");
    let client: SocketAddr = "10.0.0.2:40000".parse().unwrap();
    let server: SocketAddr = "10.0.0.3:8080".parse().unwrap();
    let started = Instant::now();
    for _ in 0..CONNECTIONS {
        let hop = metrics.tracing.hop(None);
        let record = metrics
            .opened(ConnectionLabels {
                reporter: Reporter::Destination,
                cluster: "Kubernetes",
                source: Some(src),
                source_principal: Some(src.identity.to_string()),
                destination: Some(dst),
                destination_service: None,
                destination_principal: Some(dst.identity.to_string()),
                mutual_tls: true,
                source_addr: Some(client),
                destination_addr: Some(server),
            })
            .with_span(hop, INBOUND_SPAN, SpanKind::Server);
        record.closed(1024, 4096);
    }
    started.elapsed().as_nanos() as f64 / CONNECTIONS as f64
}

fn main() {
    let config = ztunnel::config::local::parse(MESH, "cluster.local").expect("mesh");
    let snap = Snapshot::build(config, "cluster.local", 1).expect("snapshot");
    // The export task runs on its own worker, as on ztunnel's runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut rows = Vec::new();
    for (name, sampling) in [
        ("off", None),
        ("on, not sampled", Some(0.0)),
        ("on, sampled", Some(1.0)),
    ] {
        let tracing = match sampling {
            None => Tracing::off(),
            Some(s) => {
                Tracing::with_exporter(Discard, Resource::builder_empty().build(), s, "bench")
            }
        };
        let metrics = Arc::new(Metrics::new().traced(tracing));
        metrics.flows.set_enabled(false);
        run(&snap, &metrics); // warm up
        let ns = (0..3)
            .map(|_| run(&snap, &metrics))
            .fold(f64::INFINITY, f64::min);
        rows.push((name, ns));
    }
    let base = rows[0].1;
    println!(
        "tracing, per connection (open + close, flow records off), best of 3 × {CONNECTIONS}:"
    );
    println!("{:<18} {:>10} {:>12}", "tracing", "ns", "added ns");
    for (name, ns) in &rows {
        println!("{name:<18} {ns:>10.0} {:>12.0}", ns - base);
    }
    println!(
        "sampled: +{:.1} µs per connection ({:.1}% of the mesh bench's ~140 µs CPU per connection, both ends); not sampled: +{:.2} µs",
        (rows[2].1 - base) / 1000.0,
        (rows[2].1 - base) / 140_000.0 * 100.0,
        (rows[1].1 - base) / 1000.0
    );
}

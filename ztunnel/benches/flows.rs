//! What seeing connections costs per connection: `Metrics::opened` + `closed` (the metric work
//! every connection pays) with `FLOW_RECORDS` off, on, and on with a live `/flows` reader
//! draining the stream; then, flow records off, tracing off, on with the connection not sampled,
//! and on and sampled (the span built and queued; the export task hands batches to an exporter
//! that discards them, so OTLP encoding and the network are not in the figure); then the
//! egress decision an outbound connection pays (`proxy::egress::decide`, as `resolve_and_open`
//! calls it) with no egress policy selecting the source, and with policies selecting it. Each
//! table is measured in one run. Set against the ~140 µs of CPU a connection costs both tunnel ends in
//! the mesh bench (docs/performance.md), the differences are the share each adds.
//!
//!     cargo bench -p ztunnel --bench flows

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
const CONNECTIONS: u32 = 200_000;

fn run(snap: &Snapshot, metrics: &Arc<Metrics>) -> f64 {
    let src = snap.workload_by_name("default", "sleep").expect("sleep");
    let dst = snap.workload_by_name("default", "echo").expect("echo");
    let client: SocketAddr = "10.0.0.2:40000".parse().unwrap();
    let server: SocketAddr = "10.0.0.3:8080".parse().unwrap();
    let started = Instant::now();
    for _ in 0..CONNECTIONS {
        let hop = metrics.tracing.hop(None);
        let record = metrics.opened(ConnectionLabels {
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
        });
        record
            .with_span(hop, INBOUND_SPAN, SpanKind::Server)
            .closed(1024, 4096);
    }
    started.elapsed().as_nanos() as f64 / CONNECTIONS as f64
}

#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

/// Best of three runs after a warm-up.
fn best(snap: &Snapshot, metrics: &Arc<Metrics>) -> f64 {
    run(snap, metrics);
    (0..3)
        .map(|_| run(snap, metrics))
        .fold(f64::INFINITY, f64::min)
}

/// sleep selected by an ALLOW policy (workload, CIDR, Service and entity rules with ports) and
/// a DENY policy; `other` selected by none. `fqdn` adds an FQDN rule (10,000 names cached).
fn egress_mesh(fqdn: bool) -> String {
    let fqdn_rule = if fqdn {
        r#", {to: [{fqdn: {matchPattern: "*.example.com"}}]}"#
    } else {
        ""
    };
    format!(
        r#"{MESH}- {{name: other, namespace: default, workloadIps: ["10.0.0.4"]}}
egressPolicies:
- {{name: allow, namespace: default, workloads: [default/sleep], action: Allow, rules: [
   {{to: [{{workloads: ["10.0.0.3", "10.0.0.9"]}}], ports: [{{port: 8080}}]}},
   {{to: [{{cidr: {{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}}}], ports: [{{port: 443}}]}},
   {{to: [{{service: {{namespace: default, name: db}}}}]}},
   {{to: [{{entity: world}}], ports: [{{port: 53}}]}}{fqdn_rule}]}}
- {{name: deny, namespace: default, workloads: [default/sleep], action: Deny, rules: [{{ports: [{{port: 22}}]}}]}}
"#
    )
}

fn egress_rows() -> Vec<(&'static str, f64)> {
    use ztunnel::dns::resolved::ResolvedNames;
    use ztunnel::proxy::egress::{decide, Target};
    let mut rows = Vec::new();
    for (name, source, fqdn) in [
        ("none selects the source", "other", false),
        ("policies select it", "sleep", false),
        ("allowed by an FQDN rule", "sleep", true),
    ] {
        let config = ztunnel::config::local::parse(&egress_mesh(fqdn), "cluster.local")
            .expect("egress mesh");
        let snap = Snapshot::build(config, "cluster.local", 1).expect("snapshot");
        let names = ResolvedNames::new(std::time::Duration::from_secs(3600));
        let now = Instant::now();
        for i in 0..ztunnel::dns::resolved::MAX_ENTRIES {
            let ip = std::net::IpAddr::from([198, 18, (i >> 8) as u8, i as u8]);
            names.remember(&format!("host{i}.example.com"), &[(ip, 60)], now);
        }
        let src = snap.workload_by_name("default", source).expect("source");
        let dst = snap.workload_by_name("default", "echo").expect("echo");
        // The FQDN row dials an address outside the mesh that only the name allows.
        let dialled: SocketAddr = match fqdn {
            false => "10.0.0.3:8080".parse().unwrap(),
            true => "198.18.0.7:443".parse().unwrap(),
        };
        let run = || {
            let started = Instant::now();
            let mut allowed = 0u32;
            for _ in 0..CONNECTIONS {
                let target = match fqdn {
                    false => Target {
                        dialled,
                        service: None,
                        endpoint: Some(dst),
                        endpoint_ip: Some(dialled.ip()),
                        target_port: Some(dialled.port()),
                    },
                    true => Target::passthrough(dialled),
                };
                let d = decide(&snap, Some(src), &names, std::hint::black_box(target));
                allowed += u32::from(d.is_none_or(|d| d.allowed()));
            }
            assert_eq!(allowed, CONNECTIONS);
            started.elapsed().as_nanos() as f64 / CONNECTIONS as f64
        };
        run();
        rows.push((name, (0..3).map(|_| run()).fold(f64::INFINITY, f64::min)));
    }
    rows
}

fn main() {
    let config = ztunnel::config::local::parse(MESH, "cluster.local").expect("mesh");
    let snap = Snapshot::build(config, "cluster.local", 1).expect("snapshot");
    // Two workers: the span export task runs beside the loop, as on ztunnel's runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for (name, on, reader) in [
        ("off", false, false),
        ("on", true, false),
        ("on, a live reader", true, true),
    ] {
        let metrics = Arc::new(Metrics::new());
        metrics.flows.set_enabled(on);
        // The reader drains on its own thread every FLOW_POLL, as `/flows`' task does.
        let drain = reader.then(|| {
            let mut live = metrics.flows.subscribe();
            std::thread::spawn(move || {
                use tokio::sync::broadcast::error::TryRecvError;
                let mut n = 0u64;
                loop {
                    match live.try_recv() {
                        Ok(_) => n += 1,
                        Err(TryRecvError::Lagged(k)) => n += k,
                        Err(TryRecvError::Empty) => std::thread::sleep(ztunnel::admin::FLOW_POLL),
                        Err(TryRecvError::Closed) => return n,
                    }
                }
            })
        });
        let _guard = rt.enter();
        let ns = best(&snap, &metrics);
        drop(metrics);
        if let Some(t) = drain {
            let _ = t.join();
        }
        rows.push((name, ns));
    }
    let base = rows[0].1;
    println!("flow records, per connection (open + close), best of 3 × {CONNECTIONS}:");
    println!("{:<20} {:>10} {:>12}", "FLOW_RECORDS", "ns", "added ns");
    for (name, ns) in &rows {
        println!("{name:<20} {ns:>10.0} {:>12.0}", ns - base);
    }
    println!(
        "added per connection: {:.0} ns ({:.2}% of the mesh bench's ~140 µs CPU per connection, both ends)",
        rows[1].1 - base,
        (rows[1].1 - base) / 140_000.0 * 100.0
    );

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
        rows.push((name, best(&snap, &metrics)));
    }
    let base = rows[0].1;
    println!();
    println!(
        "tracing, per connection (open + close, flow records off), best of 3 × {CONNECTIONS}:"
    );
    println!("{:<20} {:>10} {:>12}", "tracing", "ns", "added ns");
    for (name, ns) in &rows {
        println!("{name:<20} {ns:>10.0} {:>12.0}", ns - base);
    }
    println!(
        "sampled: +{:.1} µs per connection ({:.1}% of ~140 µs); not sampled: +{:.2} µs",
        (rows[2].1 - base) / 1000.0,
        (rows[2].1 - base) / 140_000.0 * 100.0,
        (rows[1].1 - base) / 1000.0
    );

    let rows = egress_rows();
    let base = rows[0].1;
    println!();
    println!("egress decision, per outbound connection (allowed), best of 3 × {CONNECTIONS}:");
    println!("{:<24} {:>10} {:>12}", "egress policy", "ns", "added ns");
    for (name, ns) in &rows {
        println!("{name:<24} {ns:>10.1} {:>12.1}", ns - base);
    }
    println!(
        "a policy selecting the source: +{:.0} ns per connection ({:.2}% of ~140 µs)",
        rows[1].1 - base,
        (rows[1].1 - base) / 140_000.0 * 100.0
    );
}

//! What a request's flow record costs the waypoint: building the record from values the
//! request already holds (moved, as `Outcome::record` does, plus the clones it makes) and
//! `RequestLog::record` (an `Arc`, a short lock on the ring, a non-blocking broadcast), with
//! `FLOW_RECORDS` off, on, and on with a live `/flows` reader draining, in the same run. Set
//! against the waypoint's CPU per request in `cargo bench -p waypoint --bench l7`.
//!
//!     cargo bench -p waypoint --bench flows

use std::sync::Arc;
use std::time::Instant;

use waypoint::flows::{RequestLog, RequestRecord, Verdict};

const REQUESTS: usize = 200_000;

/// What the request path holds when it ends: its strings, already allocated for the metrics'
/// labels and the access log (built outside the timed loop, as they exist anyway).
struct Held {
    source: (String, String, String),
    destination: (String, String, String),
    service: String,
    method: String,
    path: String,
    request_id: String,
}

fn held() -> Held {
    Held {
        source: (
            "shop".into(),
            "frontend".into(),
            "spiffe://cluster.local/ns/shop/sa/frontend".into(),
        ),
        destination: (
            "shop".into(),
            "cart-v1".into(),
            "spiffe://cluster.local/ns/shop/sa/cart".into(),
        ),
        service: "cart.shop.svc.cluster.local".into(),
        method: "GET".into(),
        path: "/items/42?full=1".into(),
        request_id: "d2f10e5e-84b8-48bb-a7d3-4f14ad735162".into(),
    }
}

fn record(h: Held, route: &Arc<str>) -> RequestRecord {
    let peer = |(namespace, workload, principal): (String, String, String)| waypoint::flows::Peer {
        namespace,
        workload,
        principal,
        address: Some(([10, 244, 1, 11], 40000).into()),
    };
    RequestRecord {
        time_ms: meshcore::flow_ring::now_ms(),
        kind: "request",
        reporter: "waypoint",
        verdict: Verdict::Allowed,
        source: peer(h.source),
        destination: peer(h.destination),
        // The two clones the request path makes: the hostname and `namespace/name`.
        service: h.service.clone(),
        service_name: "shop/cart".to_owned(),
        service_port: 80,
        mtls: true,
        route: Some(route.clone()),
        route_rule: Some(route.clone()),
        backend: Some(route.clone()),
        policy: None,
        policy_rule: None,
        reason: String::new(),
        method: h.method,
        path: waypoint::flows::without_query(h.path),
        protocol: "http",
        status: 200,
        grpc_status: None,
        flag: None,
        bytes_received: 0,
        bytes_sent: 512,
        duration_ms: 1,
        duration_us: 1200,
        request_id: h.request_id,
    }
}

fn run(log: &RequestLog, route: &Arc<str>) -> f64 {
    let mut inputs: Vec<Held> = (0..REQUESTS).map(|_| held()).collect();
    let started = Instant::now();
    for h in inputs.drain(..) {
        if log.enabled() {
            log.record(record(h, route));
        } else {
            drop(h); // the request's strings are freed either way
        }
    }
    started.elapsed().as_nanos() as f64 / REQUESTS as f64
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let route: Arc<str> = Arc::from("shop/cart-split");
    let mut rows = Vec::new();
    for (name, on, reader) in [
        ("off", false, false),
        ("on", true, false),
        ("on, a live reader", true, true),
    ] {
        let log = Arc::new(RequestLog::default());
        log.set_enabled(on);
        let drain = reader.then(|| {
            let mut live = log.subscribe();
            std::thread::spawn(move || {
                use tokio::sync::broadcast::error::TryRecvError;
                loop {
                    match live.try_recv() {
                        Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                        Err(TryRecvError::Empty) => std::thread::sleep(meshcore::flow_ring::POLL),
                        Err(TryRecvError::Closed) => return,
                    }
                }
            })
        });
        run(&log, &route); // warm up
        let ns = (0..3)
            .map(|_| run(&log, &route))
            .fold(f64::INFINITY, f64::min);
        drop(log);
        if let Some(t) = drain {
            let _ = t.join();
        }
        rows.push((name, ns));
    }
    let base = rows[0].1;
    println!("waypoint flow records, per request, best of 3 × {REQUESTS}:");
    println!("{:<20} {:>10} {:>12}", "FLOW_RECORDS", "ns", "added ns");
    for (name, ns) in &rows {
        println!("{name:<20} {ns:>10.0} {:>12.0}", ns - base);
    }
}

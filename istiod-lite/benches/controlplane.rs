//! Control-plane benchmark: 10k pods, 1k services, 1k AuthorizationPolicies in memory, 100
//! simulated ztunnels subscribed over TLS delta xDS (brief: full push to 100 ztunnels ≤ 2 s,
//! one-pod change ≤ 50 ms, ≤ 256 MB).
//!
//!     cargo bench -p istiod-lite --bench controlplane
//!
//! Measures translation, encoding, time until every subscriber holds the full set, time from a
//! one-pod change (incremental re-translation included) until every subscriber has it, and the
//! server's peak RSS. The subscribers run in a child process (this binary again), so the RSS
//! measured is the control plane's alone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io::BufRead;

use istiod_lite::cluster::{AuthorizationPolicy, Cluster};
use istiod_lite::pipeline::{Object, Pipeline};
use istiod_lite::translate::{translate, ClusterInfo};
use istiod_lite::xds::{grpc, ResourceSet, XdsServer};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use meshcore::api::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use meshcore::api::discovery::{DeltaDiscoveryRequest, Node};
use meshcore::api::type_url;
use meshcore::pki::{CertificateAuthority, Validity};
use tokio::sync::{mpsc, watch};

const PODS: usize = 10_000;
const SERVICES: usize = 1_000;
const POLICIES: usize = 1_000;
const NAMESPACES: usize = 100;
const SUBSCRIBERS: usize = 100;

fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
    serde_yaml_ng::from_str(s).unwrap()
}

fn pod(i: usize, ip_offset: usize) -> Pod {
    let ns = i % NAMESPACES;
    let ip = i + ip_offset;
    yaml(&format!(
        "metadata: {{name: pod-{i}, namespace: ns-{ns}, labels: {{app: app-{}}}}}\n\
         spec: {{serviceAccountName: sa-{}, nodeName: node-{}, containers: [{{name: c, image: i}}]}}\n\
         status: {{phase: Running, podIP: 10.{}.{}.{}, conditions: [{{type: Ready, status: \"True\"}}]}}",
        i / 10,
        i % 50,
        i % 100,
        ip / 65536 + 1,
        (ip / 256) % 256,
        ip % 256
    ))
}

fn cluster() -> Cluster {
    let namespaces = (0..NAMESPACES)
        .map(|n| {
            yaml::<Namespace>(&format!(
                "metadata: {{name: ns-{n}, labels: {{istio.io/dataplane-mode: ambient}}}}"
            ))
        })
        .collect();
    let pods = (0..PODS).map(|i| pod(i, 0)).collect();
    // Service s selects the 10 pods labelled app-s (pods 10s..10s+9, spread over namespaces,
    // so it lands on the pods of its own namespace only).
    let services = (0..SERVICES)
        .map(|s| {
            yaml::<Service>(&format!(
                "metadata: {{name: svc-{s}, namespace: ns-{}}}\n\
                 spec: {{clusterIP: 10.96.{}.{}, selector: {{app: app-{s}}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}",
                (s * 10) % NAMESPACES,
                s / 256,
                s % 256
            ))
        })
        .collect();
    let authorization_policies = (0..POLICIES)
        .map(|p| {
            yaml::<AuthorizationPolicy>(&format!(
                "metadata: {{name: policy-{p}, namespace: ns-{}}}\n\
                 spec: {{selector: {{matchLabels: {{app: app-{}}}}}, rules: [{{from: [{{source: {{principals: [cluster.local/ns/ns-{}/sa/sa-{}]}}}}], to: [{{operation: {{ports: ['8080']}}}}]}}]}}",
                p % NAMESPACES,
                p % SERVICES,
                (p + 1) % NAMESPACES,
                p % 50
            ))
        })
        .collect();
    Cluster {
        namespaces,
        pods,
        services,
        authorization_policies,
        ..Default::default()
    }
}

fn rss_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
        .unwrap()
        / 1024.0
}

/// Set (to `address root-pem-file`) in the child that runs the subscribers.
const SUBSCRIBERS_ENV: &str = "CONTROLPLANE_BENCH_SUBSCRIBE";
const WATCHED: &str = "Kubernetes//Pod/ns-7/pod-7";

fn main() {
    istiod_lite::tune_allocator();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(SUBSCRIBERS_ENV) {
        Ok(args) => rt.block_on(subscribers(args)),
        Err(_) => rt.block_on(run()),
    }
}

async fn run() {
    let info = ClusterInfo::default();
    let c = cluster();
    let t0 = Instant::now();
    let translation = translate(&c, &info);
    let translate_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t0 = Instant::now();
    let set = ResourceSet::from_translation(&translation, 1);
    let encode_ms = t0.elapsed().as_secs_f64() * 1e3;
    let total = set.count(type_url::ADDRESS) + set.count(type_url::AUTHORIZATION);
    println!(
        "{} workloads, {} services, {} authorizations ({total} resources): translate {translate_ms:.0} ms, encode {encode_ms:.0} ms",
        translation.workloads.len(),
        translation.services.len(),
        translation.authorizations.len()
    );
    drop((translation, set));
    // What the server really runs: the pipeline, which later re-translates one namespace.
    let mut pipeline = Pipeline::new(info.clone());
    pipeline.replace_all(c);
    let t0 = Instant::now();
    let set = pipeline.build().unwrap();
    let pipeline_ms = t0.elapsed().as_secs_f64() * 1e3;
    let rss_config = rss_mib("VmRSS");
    assert_eq!(
        set.count(type_url::ADDRESS) + set.count(type_url::AUTHORIZATION),
        total
    );

    let ca =
        CertificateAuthority::generate_root("cluster.local", Duration::from_secs(3600)).unwrap();
    let (chain, key) = ca
        .issue_server_cert(
            &["istiod.istio-system.svc"],
            Validity::from_now(Duration::from_secs(3600)),
        )
        .unwrap();
    let tls = meshcore::tls::control::control_server_config(&chain.to_pem(), &key).unwrap();
    let (publish, resources) = watch::channel(Arc::new(set));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(grpc::serve(
        listener,
        tls,
        XdsServer::new(resources),
        None,
        std::future::pending(),
    ));
    let dir = std::env::temp_dir().join(format!("controlplane-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let root_pem = dir.join("root.pem");
    std::fs::write(&root_pem, ca.root_pem()).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(
            SUBSCRIBERS_ENV,
            format!("{address} {} {total}", root_pem.display()),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (line_tx, mut lines) = mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let next = async |lines: &mut mpsc::UnboundedReceiver<String>| {
        tokio::time::timeout(Duration::from_secs(60), lines.recv())
            .await
            .expect("subscribers answer")
            .expect("subscribers alive")
    };
    assert_eq!(next(&mut lines).await, "full");
    let full_push = start.elapsed();
    let rss_after_push = rss_mib("VmRSS");

    // One pod changes (a new IP, as after a restart): incremental re-translation, publish,
    // until every subscriber has it.
    let mut changes = Vec::new();
    let mut builds = Vec::new();
    for round in 1..=5 {
        let moved = pod(7, 50_000 + round);
        let t0 = Instant::now();
        pipeline.apply(Object::Pod(moved));
        let set = pipeline.build().unwrap().with_delta_from(&publish.borrow());
        builds.push(t0.elapsed().as_secs_f64() * 1e3);
        publish.send_replace(Arc::new(set));
        for _ in 0..SUBSCRIBERS {
            assert_eq!(next(&mut lines).await, "seen");
        }
        changes.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    child.kill().unwrap();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    builds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("RSS with the config translated, before serving: {rss_config:.0} MiB");
    println!(
        "pipeline: whole build {pipeline_ms:.0} ms; one-pod rebuild (translate one namespace, merge, delta) median {:.1} ms",
        builds[builds.len() / 2]
    );
    changes.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let peak = rss_mib("VmHWM");
    println!();
    println!("{:<52} {:>10}   target", "measure", "result");
    println!(
        "{:<52} {:>7.0} ms   <= 2000 ms: {}",
        "full push to 100 ztunnels (connect + TLS + send)",
        full_push.as_secs_f64() * 1e3,
        if full_push <= Duration::from_secs(2) {
            "met"
        } else {
            "NOT met"
        }
    );
    let median = changes[changes.len() / 2];
    println!(
        "{:<52} {:>7.0} ms   <= 50 ms: {} (runs: {})",
        "one-pod change to all 100 (median of 5)",
        median,
        if median <= 50.0 { "met" } else { "NOT met" },
        changes
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "{:<52} {:>7.0} MiB  <= 256 MiB: {} (after push: {rss_after_push:.0} MiB)",
        "istiod-lite peak RSS (subscribers in another process)",
        peak,
        if peak <= 256.0 { "met" } else { "NOT met" }
    );
}

/// The child: 100 ztunnel-like subscribers over TLS. Prints `full` once all hold the whole set,
/// then `seen` each time one receives an update of the watched pod.
async fn subscribers(args: String) {
    let mut args = args.split(' ');
    let (address, root, total) = (
        args.next().unwrap().to_owned(),
        std::fs::read_to_string(args.next().unwrap()).unwrap(),
        args.next().unwrap().parse::<usize>().unwrap(),
    );
    let control = ztunnel::control::ControlPlane {
        address,
        server_name: "istiod.istio-system.svc".into(),
        tls: meshcore::tls::control::control_client_config(&root).unwrap(),
    };
    let full = Arc::new(AtomicUsize::new(0));
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<usize>();
    for i in 0..SUBSCRIBERS {
        let channel = control.channel().unwrap();
        let (full, seen_tx) = (full.clone(), seen_tx.clone());
        tokio::spawn(async move {
            let mut client = AggregatedDiscoveryServiceClient::new(channel);
            let (tx, rx) = mpsc::channel(8);
            for t in [type_url::ADDRESS, type_url::AUTHORIZATION] {
                tx.send(DeltaDiscoveryRequest {
                    node: Some(Node {
                        id: format!("ztunnel~bench~{i}"),
                        ..Default::default()
                    }),
                    type_url: t.into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
            let out = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|r| (r, rx))
            });
            let mut responses = client
                .delta_aggregated_resources(out)
                .await
                .unwrap()
                .into_inner();
            let mut held: BTreeMap<String, usize> = BTreeMap::new();
            let mut complete = false;
            while let Ok(Some(r)) = responses.message().await {
                // Only updates after the full initial set count as "the change arrived".
                if complete && r.resources.iter().any(|x| x.name == WATCHED) {
                    let _ = seen_tx.send(i);
                }
                *held.entry(r.type_url.clone()).or_default() += r.resources.len();
                if !complete && held.values().sum::<usize>() >= total && held.len() == 2 {
                    complete = true;
                    full.fetch_add(1, Ordering::Relaxed);
                }
                let _ = tx
                    .send(DeltaDiscoveryRequest {
                        type_url: r.type_url,
                        response_nonce: r.nonce,
                        ..Default::default()
                    })
                    .await;
            }
        });
    }
    let start = Instant::now();
    while full.load(Ordering::Relaxed) < SUBSCRIBERS {
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "full push did not complete"
        );
    }
    println!("full");
    while seen_rx.recv().await.is_some() {
        println!("seen");
    }
}

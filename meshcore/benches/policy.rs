//! L4 policy decision latency with 10k policies × 10 rules (the brief's figure: ≤ 1 µs p99).
//!
//! Two layouts:
//! - `one workload, all 10k policies`: every policy applies to the workload deciding, the worst
//!   case for the engine; rules mix exact principals, namespaces, ports, principal prefixes and
//!   source CIDRs (the last two cannot be indexed and are evaluated on every decision);
//! - `10k policies over 1000 namespaces`: what a workload really compiles (its namespace's
//!   policies plus the mesh-wide ones), as ztunnel's state store does.
//!
//! Each decision is timed on its own; the clock's own cost is measured and printed beside.
//!
//!     cargo bench -p meshcore --bench policy

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use meshcore::identity::SpiffeId;
use meshcore::policy::{
    Action, Authorization, CompiledPolicies, Connection, Match, Scope, StringMatch,
};

const POLICIES: usize = 10_000;
const RULES: usize = 10;

/// Rule `r` of policy `p`; one rule in a hundred is a principal prefix or a CIDR (not indexable).
fn rule(p: usize, r: usize) -> Vec<Vec<Match>> {
    let n = p * RULES + r;
    let m = match n % 100 {
        0 => Match {
            principals: vec![StringMatch::Prefix(format!("cluster.local/ns/pfx{n}/"))],
            ..Default::default()
        },
        1 => Match {
            source_ips: vec![format!("10.{}.{}.0/24", (n / 256) % 256, n % 256)
                .parse()
                .unwrap()],
            destination_ports: vec![],
            ..Default::default()
        },
        k if k % 3 == 0 => Match {
            principals: vec![StringMatch::Exact(format!(
                "cluster.local/ns/ns{n}/sa/sa{n}"
            ))],
            ..Default::default()
        },
        k if k % 3 == 1 => Match {
            namespaces: vec![StringMatch::Exact(format!("ns{n}"))],
            ..Default::default()
        },
        _ => Match {
            destination_ports: vec![(1024 + n % 60000) as u16],
            not_source_ips: vec!["192.168.0.0/16".parse().unwrap()],
            ..Default::default()
        },
    };
    vec![vec![m]]
}

fn policy(p: usize, namespace: String, scope: Scope) -> Arc<Authorization> {
    Arc::new(Authorization {
        name: format!("p{p}"),
        namespace,
        scope,
        action: if p % 10 == 0 {
            Action::Deny
        } else {
            Action::Allow
        },
        rules: (0..RULES).map(|r| rule(p, r)).collect(),
        dry_run: false,
    })
}

/// Decides `n` connections from a rotating set of peers; returns sorted nanoseconds.
fn measure(compiled: &CompiledPolicies, n: usize) -> (Vec<u64>, usize) {
    let peers: Vec<(SpiffeId, String)> = (0..1000)
        .map(|i| {
            let k = i * 97 % (POLICIES * RULES);
            let id = SpiffeId::new("cluster.local", &format!("ns{k}"), &format!("sa{k}")).unwrap();
            let p = id.principal();
            (id, p)
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    let mut allowed = 0;
    for i in 0..n {
        let (id, principal) = &peers[i % peers.len()];
        let conn = Connection {
            source_ip: IpAddr::from([10, (i / 256 % 256) as u8, (i % 256) as u8, 7]),
            destination: SocketAddr::from(([10, 1, 2, 3], (1024 + i % 60000) as u16)),
            identity: Some(id),
            principal: Some(principal),
        };
        let t = Instant::now();
        let d = compiled.decide(&conn);
        out.push(t.elapsed().as_nanos() as u64);
        allowed += d.allowed() as usize;
    }
    out.sort_unstable();
    (out, allowed)
}

fn clock_cost() -> u64 {
    let mut v: Vec<u64> = (0..100_000)
        .map(|_| {
            let t = Instant::now();
            t.elapsed().as_nanos() as u64
        })
        .collect();
    v.sort_unstable();
    v[v.len() / 2]
}

fn report(name: &str, compiled: &CompiledPolicies) {
    let (ns, allowed) = measure(compiled, 200_000);
    let p = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)];
    let p99 = p(0.99);
    println!(
        "{name:<36} {:>7} {:>7} {:>8} {:>8}   {:>6.1}% allowed   p99 target <= 1000 ns: {}",
        compiled.policies().len(),
        p(0.5),
        p99,
        p(0.999),
        allowed as f64 / ns.len() as f64 * 100.0,
        if p99 <= 1000 { "met" } else { "NOT met" }
    );
}

fn main() {
    println!("clock read costs ~{} ns (included below)", clock_cost());
    println!(
        "{:<36} {:>7} {:>7} {:>8} {:>8}",
        "layout", "policies", "p50 ns", "p99 ns", "p99.9 ns"
    );
    let t = Instant::now();
    let all: Vec<_> = (0..POLICIES)
        .map(|p| policy(p, "default".into(), Scope::Namespace))
        .collect();
    let worst = CompiledPolicies::new(all);
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    report("one workload, all 10k policies", &worst);

    // 10 mesh-wide policies, then 10 per namespace for 999 namespaces; a workload in ns42
    // compiles the mesh-wide ones and its namespace's.
    let per_ns: Vec<_> = (0..10)
        .map(|p| policy(p, "istio-system".into(), Scope::Global))
        .chain((10..20).map(|p| policy(p * 500, "ns42".into(), Scope::Namespace)))
        .collect();
    report(
        "10k over 1000 namespaces (one ns)",
        &CompiledPolicies::new(per_ns),
    );
    println!("compiling 10k policies x 10 rules for one workload took {compile_ms:.0} ms");
}

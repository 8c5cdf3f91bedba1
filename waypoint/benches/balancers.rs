//! The waypoint's balancers side by side under a skewed backend, and the retry budget's cap
//! under a failing one: a discrete-event simulation on a virtual clock driving the waypoint's
//! real code (a `Snapshot` compiled from YAML, `ServiceView::pick` / `begin` / `report`,
//! `EndpointState::observe_rtt`, the Service's `RetryBudget` and the route's compiled `Retry`),
//! fed as `proxy/attempt.rs` feeds them. Nothing is timed on the machine: the results depend only
//! on the model and the seed, so two runs print the same tables.
//!
//!     cargo bench -p waypoint --bench balancers    # under a second after the build
//!
//! A. Skewed backend. One Service, 3 endpoints; endpoints 0 and 1 take 1 ms per request on
//!    average, endpoint 2 ten times longer (10 ms); service times are exponential (the same
//!    draw per request for every balancer, scaled by the endpoint's mean). Each endpoint serves
//!    up to K = 4 requests at once and queues the rest FIFO, so the fleet's capacity is
//!    4 × (1000 + 1000 + 100) = 8400 requests/s. Load is open-loop: Poisson arrivals at a share
//!    of that capacity (70 %, and 10 %, where round robin is still stable), N = 100k requests,
//!    the same arrival times, service draws and random numbers for every balancer. The
//!    waypoint's own time is taken as zero: a request's latency is its endpoint's queue plus
//!    its service. Open-loop because a mesh's clients do not slow down when one pod does; a
//!    closed loop would hide the slow pod's queue (coordinated omission).
//!    Then the same again with endpoint 2 as fast as the others from the middle of the run:
//!    its share of the second half shows whether a balancer comes back to an endpoint that
//!    recovered (1/3 is even).
//! B. Retry budget. The same Service answering every attempt with a 503 after 1 ms, a
//!    VirtualService route with `retries: {attempts: 3, retryOn: 5xx}`, Poisson arrivals for
//!    60 s; prints upstream attempts ÷ requests received without a budget and with several.
//!
//! Prints markdown tables and writes them as JSON (`target/bench-balancers.json`, or the path
//! in BENCH_JSON). Knobs: BALANCERS_REQUESTS (scenario A, default 100000), BALANCERS_SEED.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use http::HeaderMap;
use meshcore::l7::WaypointConfig;
use serde_json::{json, Value};
use waypoint::config::{InFlight, ServiceView, Snapshot, WaypointIdentity};
use waypoint::route::CompiledRule;
use waypoint::traffic::balance::{self, Balancer};
use waypoint::traffic::budget::BudgetSettings;

const PORT: u16 = 8080;
/// Endpoint 2 is the slow one.
const SLOW: usize = 2;
const MEAN_US: [f64; 3] = [1000.0, 1000.0, 10_000.0];
/// Requests an endpoint serves at once; more wait in its FIFO queue.
const K: usize = 4;
const LOADS: [f64; 2] = [0.7, 0.1];
const BALANCERS: [(&str, Balancer); 4] = [
    ("ROUND_ROBIN", Balancer::RoundRobin),
    ("LEAST_REQUEST", Balancer::LeastRequest),
    ("RANDOM", Balancer::Random),
    ("PEAK_EWMA", Balancer::PeakEwma),
];
/// Scenario B: how long a failing endpoint takes to answer 503, and how long the run lasts.
const FAIL_US: u64 = 1000;
const BUDGET_SECS: u64 = 60;

const SERVICE: &str = "
services:
- name: backend
  namespace: bench
  vips: [10.96.0.10]
  ports: [{port: 8080, name: http}]
  endpoints:
  - {address: 10.0.0.1, name: fast-0}
  - {address: 10.0.0.2, name: fast-1}
  - {address: 10.0.0.3, name: slow}
";

/// SplitMix64: a seeded, portable stream, so every run draws the same numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Exponential with mean 1.
    fn exp(&mut self) -> f64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        -(1.0 - u).ln()
    }
}

/// The virtual clock: events in time order (ties in the order they were scheduled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Request `id` arrives at the waypoint.
    Arrive(u32),
    /// The endpoint answers attempt `n` of request `id`.
    Answer(u32, u32),
}

#[derive(Default)]
struct Clock {
    heap: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
}

impl Clock {
    fn at(&mut self, us: u64, event: Event) {
        self.seq += 1;
        self.heap.push(Reverse((us, self.seq, event)));
    }

    fn next(&mut self) -> Option<(u64, Event)> {
        self.heap.pop().map(|Reverse((t, _, e))| (t, e))
    }
}

fn snapshot(extra: &str, budget: BudgetSettings) -> Snapshot {
    let config: WaypointConfig =
        serde_yaml_ng::from_str(&format!("{SERVICE}{extra}")).expect("bench config");
    let me = WaypointIdentity {
        namespace: "bench".into(),
        name: "waypoint".into(),
        trust_domain: "cluster.local".into(),
        root_namespace: "istio-system".into(),
        retry_budget: budget,
    };
    let s = Snapshot::compile(config, &me).expect("bench config compiles");
    assert!(s.traffic_notes.is_empty(), "{:?}", s.traffic_notes);
    s
}

/// The balancer's request: no headers, only a fresh random number (as `proxy/http.rs` draws).
fn request(headers: &HeaderMap, random: u64) -> balance::Request<'_> {
    balance::Request {
        headers,
        query: None,
        source_ip: None,
        random,
    }
}

// ---------------------------------------------------------------------------------------------
// A. Skewed backend.

/// The same offered load for every balancer: arrival times, service draws, pick randoms.
#[derive(Default)]
struct Load {
    arrive_us: Vec<u64>,
    work: Vec<f64>,
    random: Vec<u64>,
    rate: f64,
}

/// Requests per second the three endpoints can serve together.
fn capacity() -> f64 {
    MEAN_US.iter().map(|m| K as f64 * 1e6 / m).sum()
}

fn load(share: f64, n: usize, seed: u64) -> Load {
    let rate = share * capacity();
    let mut rng = Rng(seed);
    let mut t = 0.0;
    let mut l = Load {
        rate,
        ..Load::default()
    };
    for _ in 0..n {
        t += rng.exp() * 1e6 / rate;
        l.arrive_us.push(t as u64);
        l.work.push(rng.exp());
        l.random.push(rng.next());
    }
    l
}

#[derive(Default)]
struct Skewed {
    latency_us: Vec<u64>,
    on_slow: usize,
    /// Picks of endpoint 2 among the second half of the requests.
    on_slow_late: usize,
    max_queue_slow: usize,
    span_us: u64,
}

#[derive(Default)]
struct Endpoint {
    busy: usize,
    queue: VecDeque<u32>,
}

/// `recover`: endpoint 2 is as fast as the others for the second half of the requests.
fn skewed(name: &str, expect: &Balancer, l: &Load, recover: bool) -> Skewed {
    let dr = format!(
        "destinationRules:\n- metadata: {{name: backend, namespace: bench}}\n  \
         spec: {{host: backend, trafficPolicy: {{loadBalancer: {{simple: {name}}}}}}}\n"
    );
    let snap = snapshot(&dr, BudgetSettings::default());
    let svc: &ServiceView = &snap.services[0];
    assert_eq!(&svc.traffic.policy(None, PORT).balancer, expect, "{name}");
    let n = l.arrive_us.len();
    let headers = HeaderMap::new();
    let mut guards: Vec<Option<InFlight<'_>>> = (0..n).map(|_| None).collect();
    let mut chosen = vec![0usize; n];
    let mut eps: Vec<Endpoint> = (0..MEAN_US.len()).map(|_| Endpoint::default()).collect();
    let mut out = Skewed {
        latency_us: vec![0; n],
        ..Skewed::default()
    };
    let service_us = |id: usize, e: usize| {
        let mean = match e {
            SLOW if recover && id >= n / 2 => MEAN_US[0],
            _ => MEAN_US[e],
        };
        ((l.work[id] * mean) as u64).max(1)
    };
    let mut clock = Clock::default();
    for (id, &t) in l.arrive_us.iter().enumerate() {
        clock.at(t, Event::Arrive(id as u32));
    }
    // Each request is one arrival and one answer: 2n events.
    for _ in 0..2 * n {
        let Some((now, event)) = clock.next() else {
            break;
        };
        match event {
            Event::Arrive(id) => {
                let id = id as usize;
                // proxy/http.rs: pick on the virtual clock; attempt.rs `once`: begin().
                let choice = svc
                    .pick(None, PORT, &request(&headers, l.random[id]), now / 1000)
                    .expect("a healthy endpoint");
                let e = choice.index;
                guards[id] = Some(svc.begin(e, None, PORT).expect("no pool limit"));
                chosen[id] = e;
                out.on_slow += usize::from(e == SLOW);
                out.on_slow_late += usize::from(e == SLOW && id >= n / 2);
                let ep = &mut eps[e];
                if ep.busy < K {
                    ep.busy += 1;
                    clock.at(now + service_us(id, e), Event::Answer(id as u32, 0));
                } else {
                    ep.queue.push_back(id as u32);
                    if e == SLOW {
                        out.max_queue_slow = out.max_queue_slow.max(ep.queue.len());
                    }
                }
            }
            Event::Answer(id, _) => {
                let id = id as usize;
                let e = chosen[id];
                let rtt = now - l.arrive_us[id];
                // attempt.rs `once`: report, observe_rtt on an answer, then the guard drops.
                svc.report(e, None, PORT, Some(200), now / 1000);
                svc.state[e].observe_rtt(rtt, now);
                guards[id] = None;
                out.latency_us[id] = rtt;
                out.span_us = out.span_us.max(now - l.arrive_us[0]);
                let ep = &mut eps[e];
                match ep.queue.pop_front() {
                    Some(next) => {
                        clock.at(now + service_us(next as usize, e), Event::Answer(next, 0))
                    }
                    None => ep.busy -= 1,
                }
            }
        }
    }
    assert!(clock.next().is_none() && guards.iter().all(Option::is_none));
    out.latency_us.sort_unstable();
    out
}

fn pct(sorted: &[u64], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// A latency in ms, to three significant figures.
fn ms(v: f64) -> String {
    match v {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 10.0 => format!("{v:.1}"),
        v => format!("{v:.2}"),
    }
}

/// A ratio to three significant figures (an unstable queue makes some tiny).
fn sig(x: f64) -> String {
    let decimals = (2 - x.abs().log10().floor() as i32).clamp(2, 9) as usize;
    format!("{x:.decimals$}")
}

fn scenario_a(n: usize, seed: u64) -> Value {
    let capacity = capacity();
    println!(
        "## A. Skewed backend: 3 endpoints (1 ms, 1 ms, 10 ms mean, exponential), K = {K} at once \
         each, FIFO beyond; capacity {capacity:.0}/s; {n} Poisson arrivals, seed {seed}\n"
    );
    let mut loads = Vec::new();
    for share in LOADS {
        let l = load(share, n, seed);
        println!(
            "### load {:.0} % of capacity ({:.0} requests/s offered)\n",
            share * 100.0,
            l.rate
        );
        println!("| balancer | p50 ms | p99 ms | p99.9 ms | share on slow endpoint | throughput /s | max queue at slow |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        let mut rows = Vec::new();
        for (name, b) in &BALANCERS {
            let r = skewed(name, b, &l, false);
            let s = &r.latency_us;
            let row = json!({
                "balancer": name,
                "p50_ms": pct(s, 0.50),
                "p99_ms": pct(s, 0.99),
                "p999_ms": pct(s, 0.999),
                "mean_ms": s.iter().sum::<u64>() as f64 / s.len() as f64 / 1000.0,
                "slow_share": r.on_slow as f64 / n as f64,
                "throughput_rps": n as f64 * 1e6 / r.span_us as f64,
                "max_queue_slow": r.max_queue_slow,
            });
            println!(
                "| {name} | {} | {} | {} | {:.1} % | {:.0} | {} |",
                ms(pct(s, 0.50)),
                ms(pct(s, 0.99)),
                ms(pct(s, 0.999)),
                row["slow_share"].as_f64().unwrap() * 100.0,
                row["throughput_rps"].as_f64().unwrap(),
                r.max_queue_slow
            );
            rows.push(row);
        }
        println!("\n| balancer | p50 × RR | p99 × RR | p99.9 × RR | throughput × RR |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        let base = rows[0].clone();
        for r in &mut rows {
            let x = ["p50_ms", "p99_ms", "p999_ms", "throughput_rps"]
                .map(|k| r[k].as_f64().unwrap() / base[k].as_f64().unwrap());
            let cells = x.map(|v| format!("{}×", sig(v))).join(" | ");
            println!("| {} | {cells} |", r["balancer"].as_str().unwrap());
            r["vs_round_robin"] =
                json!({"p50": x[0], "p99": x[1], "p999": x[2], "throughput": x[3]});
        }
        // The same load with endpoint 2 back to 1 ms halfway: does its share come back to 1/3?
        println!("\n| balancer | endpoint 2 recovers halfway: its share of the second half |");
        println!("| --- | ---: |");
        for (r, (name, b)) in rows.iter_mut().zip(&BALANCERS) {
            let late = skewed(name, b, &l, true).on_slow_late as f64 / (n - n / 2) as f64;
            println!("| {name} | {:.1} % |", late * 100.0);
            r["recovered_share_second_half"] = json!(late);
        }
        println!();
        loads.push(json!({"load": share, "offered_rps": l.rate, "rows": rows}));
    }
    json!({
        "endpoints_mean_ms": MEAN_US.map(|m| m / 1000.0),
        "concurrency_per_endpoint": K,
        "capacity_rps": capacity,
        "requests": n,
        "seed": seed,
        "loads": loads,
    })
}

// ---------------------------------------------------------------------------------------------
// B. Retry budget under a backend that always fails.

const RETRY_ROUTE: &str = "
virtualServices:
- metadata: {name: backend, namespace: bench}
  spec:
    hosts: [backend]
    http:
    - retries: {attempts: 3, retryOn: 5xx}
      route: [{destination: {host: backend}}]
";

#[derive(Default)]
struct Budgeted {
    requests: u64,
    attempts: u64,
    refused: u64,
}

/// `budget`: `None` for no budget (as attempt.rs without a picked Service).
fn failing(budget: Option<BudgetSettings>, rate: f64, seed: u64) -> Budgeted {
    let snap = snapshot(RETRY_ROUTE, budget.unwrap_or_default());
    let svc = &snap.services[0];
    let rule: &CompiledRule = snap
        .routes
        .rules()
        .iter()
        .find(|r| r.retry.is_some())
        .expect("the route with retries");
    let retry = rule.retry.as_ref().expect("retries");
    let tries = retry.attempts + 1;
    let budget = budget.map(|_| &svc.retry_budget);
    let n = (rate * BUDGET_SECS as f64) as usize;
    let headers = HeaderMap::new();
    let mut rng = Rng(seed);
    let mut clock = Clock::default();
    let mut t = 0.0;
    for id in 0..n {
        t += rng.exp() * 1e6 / rate;
        clock.at(t as u64, Event::Arrive(id as u32));
    }
    let mut guards: Vec<Option<InFlight<'_>>> = (0..n).map(|_| None).collect();
    let mut index = vec![0usize; n];
    let mut out = Budgeted::default();
    // At most `tries` answers per request.
    for _ in 0..n * (1 + tries as usize) {
        let Some((now, event)) = clock.next() else {
            break;
        };
        let s = now / 1_000_000;
        let (id, n_try) = match event {
            Event::Arrive(id) => {
                out.requests += 1;
                // attempt.rs `with_policy`: every original request is counted first.
                if let Some(b) = budget {
                    b.request(s);
                }
                let choice = svc.pick(None, PORT, &request(&headers, rng.next()), now / 1000);
                index[id as usize] = choice.expect("an endpoint").index;
                (id as usize, 0)
            }
            Event::Answer(id, n_try) => {
                let id = id as usize;
                let e = index[id];
                svc.report(e, None, PORT, Some(503), now / 1000);
                svc.state[e].observe_rtt(FAIL_US, now);
                guards[id] = None;
                let on = retry.on.as_ref();
                let retriable =
                    retry.codes.contains(&503) || on.is_some_and(|on| on.status(503, None));
                if !retriable || n_try + 1 == tries {
                    continue;
                }
                // The budget has the last word.
                if budget.is_some_and(|b| !b.try_retry(s)) {
                    out.refused += 1;
                    continue;
                }
                // `repick`: another endpoint than the last where there is a choice.
                if on.is_some() {
                    for _ in 0..3 {
                        let c = svc.pick(None, PORT, &request(&headers, rng.next()), now / 1000);
                        let c = c.expect("an endpoint").index;
                        if c != e {
                            index[id] = c;
                            break;
                        }
                    }
                }
                (id, n_try + 1)
            }
        };
        // attempt.rs `once`: one try upstream, in flight until its answer.
        guards[id] = Some(svc.begin(index[id], None, PORT).expect("no pool limit"));
        out.attempts += 1;
        let backoff = retry.backoff.map_or(0, |b| b.as_micros() as u64);
        let start = now + if n_try > 0 { backoff } else { 0 };
        clock.at(start + FAIL_US, Event::Answer(id as u32, n_try));
    }
    assert!(clock.next().is_none());
    out
}

fn scenario_b(seed: u64) -> Value {
    let d = BudgetSettings::default();
    println!(
        "## B. Retry budget: every answer a 503 after {FAIL_US} µs; route retries {{attempts: 3, \
         retryOn: 5xx}}; Poisson arrivals for {BUDGET_SECS} s\n"
    );
    println!("| budget | rate /s | requests received | sent upstream | upstream ÷ received | bound | retries refused |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let no_min = BudgetSettings {
        min_per_second: 0,
        ..d
    };
    let cases: [(&str, Option<BudgetSettings>, f64); 5] = [
        ("none", None, 1000.0),
        ("default: ratio 0.2, 10/s, ttl 10 s", Some(d), 1000.0),
        ("default", Some(d), 100.0),
        ("default", Some(d), 10.0),
        ("ratio 0.2, no minimum", Some(no_min), 1000.0),
    ];
    let mut rows = Vec::new();
    for (name, budget, rate) in cases {
        let r = failing(budget, rate, seed);
        let x = r.attempts as f64 / r.requests as f64;
        // Retries per window ≤ ratio × requests + minimum × ttl; never more than 3 per request.
        let bound = budget.map_or(4.0, |b| {
            (1.0 + b.ratio + f64::from(b.min_per_second) / rate).min(4.0)
        });
        println!(
            "| {name} | {rate:.0} | {} | {} | {x:.3} | {bound:.2} | {} |",
            r.requests, r.attempts, r.refused
        );
        rows.push(json!({
            "budget": name,
            "settings": budget.map(|b| json!({
                "ratio": b.ratio, "min_per_second": b.min_per_second, "ttl_s": b.ttl.as_secs()
            })),
            "rate_rps": rate,
            "requests": r.requests,
            "upstream_attempts": r.attempts,
            "upstream_per_request": x,
            "bound": bound,
            "refused": r.refused,
        }));
    }
    println!();
    json!({
        "fail_after_us": FAIL_US,
        "seconds": BUDGET_SECS,
        "retries": {"attempts": 3, "retryOn": "5xx"},
        "rows": rows,
    })
}

fn main() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("BALANCERS_REQUESTS", 100_000).clamp(1000, 2_000_000) as usize;
    let seed = env("BALANCERS_SEED", 0x5eed);
    let started = std::time::Instant::now();
    let a = scenario_a(n, seed);
    let b = scenario_b(seed);
    let out = std::env::var("BENCH_JSON").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/bench-balancers.json"
        )
        .to_owned()
    });
    let report = json!({"skewed_backend": a, "retry_budget": b});
    std::fs::write(&out, serde_json::to_vec_pretty(&report).expect("json")).expect("write json");
    println!(
        "JSON in {out}; simulated in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

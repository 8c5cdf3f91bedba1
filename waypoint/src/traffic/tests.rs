//! DestinationRule compilation and the balancers, without sockets.

use std::collections::HashMap as Map;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderMap;
use meshcore::l7::networking::DestinationRule;
use meshcore::l7::service::Service;

use super::balance::{choose, EndpointState, Request};
use super::*;

fn services() -> Vec<Service> {
    serde_yaml_ng::from_str(
        "- {name: reviews, namespace: shop, ports: [{port: 9080}]}\n\
         - {name: ratings, namespace: shop, ports: [{port: 9080}]}\n",
    )
    .unwrap()
}

fn rules(yaml: &str) -> Vec<DestinationRule> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

#[test]
fn subsets_ports_and_pool_limits_compile_with_overrides() {
    let (out, notes) = compile(
        &rules(
            r#"
metadata: {name: reviews, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool: {http: {http2MaxRequests: 7}}
    outlierDetection: {consecutive5xxErrors: 3, baseEjectionTime: 2s, maxEjectionPercent: 50}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: RANDOM}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpHeaderName: X-User}}
---
metadata: {name: newer, namespace: shop, creationTimestamp: "2025-01-01T00:00:00Z"}
spec: {host: reviews.shop.svc.cluster.local, trafficPolicy: {tls: {mode: SIMPLE}}}
---
metadata: {name: elsewhere, namespace: shop}
spec: {host: nowhere}
"#,
        ),
        &services(),
    );
    let t = &out[&ServiceKey::new("shop", "reviews")];
    assert_eq!(t.rule, "shop/reviews");
    assert_eq!(t.policy.balancer, Balancer::LeastRequest);
    assert_eq!(t.policy.max_requests, Some(7));
    let outlier = t.policy.outlier.as_ref().unwrap();
    assert_eq!(
        (outlier.consecutive_5xx, outlier.max_ejection_percent),
        (Some(3), 50)
    );
    assert_eq!(
        t.policy(None, 9080).balancer,
        Balancer::Random,
        "port level"
    );
    assert_eq!(
        t.policy(Some("v1"), 9080).balancer,
        Balancer::LeastRequest,
        "subset inherits"
    );
    assert_eq!(t.policy(Some("v1"), 9080).max_requests, Some(7));
    assert!(matches!(
        t.policy(Some("v2"), 9080).balancer,
        Balancer::ConsistentHash(HashKey::Header(_))
    ));
    assert_eq!(t.subset("v2").unwrap().labels["version"], "v2");
    let messages: Vec<&str> = notes.iter().map(|n| n.message.as_str()).collect();
    assert!(
        messages.iter().any(|m| m.contains("shop/reviews is older")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("nowhere")),
        "{messages:?}"
    );
    assert!(!out.contains_key(&ServiceKey::new("shop", "ratings")));
}

#[test]
fn unsupported_balancers_fall_back_to_the_default_least_request_with_a_note() {
    let (out, notes) = compile(
        &rules("metadata: {name: r, namespace: shop}\nspec: {host: ratings, trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}}\n"),
        &services(),
    );
    assert_eq!(
        out[&ServiceKey::new("shop", "ratings")].policy.balancer,
        Balancer::LeastRequest
    );
    assert!(notes[0].message.contains("PASSTHROUGH"), "{notes:?}");
    assert_eq!(Balancer::default(), Balancer::LeastRequest);
}

#[test]
fn peak_ewma_tries_again_an_endpoint_left_alone_after_a_slow_spell() {
    let a = addrs(2);
    let state: Vec<EndpointState> = a.iter().map(|_| EndpointState::default()).collect();
    let next = AtomicUsize::new(0);
    let h = HeaderMap::new();
    // Endpoint 1 was slow (100 ms) and has not answered since; endpoint 0 answers in 1 ms.
    state[1].observe_rtt(100_000, 0);
    let pick_at = |now_us: u64| {
        choose(
            &Balancer::PeakEwma,
            &[0, 1],
            &a,
            &state,
            &next,
            &req(&h, 7),
            now_us,
        )
        .unwrap()
        .index
    };
    state[0].observe_rtt(1_000, 1_000_000);
    assert_eq!(pick_at(1_000_000), 0);
    // A minute later endpoint 0 is fresh and endpoint 1's estimate has decayed below it.
    state[0].observe_rtt(1_000, 60_000_000);
    assert_eq!(pick_at(60_000_000), 1);
}

fn addrs(n: u8) -> Vec<IpAddr> {
    (1..=n).map(|i| IpAddr::from([10, 0, 0, i])).collect()
}

fn req<'a>(headers: &'a HeaderMap, random: u64) -> Request<'a> {
    Request {
        headers,
        query: None,
        source_ip: None,
        random,
    }
}

#[test]
fn round_robin_random_and_least_request() {
    let a = addrs(4);
    let state: Vec<EndpointState> = a.iter().map(|_| EndpointState::default()).collect();
    let next = AtomicUsize::new(0);
    let h = HeaderMap::new();
    let cands = [0, 2, 3];
    let rr: Vec<usize> = (0..6)
        .map(|i| {
            choose(
                &Balancer::RoundRobin,
                &cands,
                &a,
                &state,
                &next,
                &req(&h, i),
                0,
            )
            .unwrap()
            .index
        })
        .collect();
    assert_eq!(rr, [0, 2, 3, 0, 2, 3]);
    assert!(choose(
        &Balancer::RoundRobin,
        &[],
        &a,
        &state,
        &next,
        &req(&h, 0),
        0
    )
    .is_none());
    let mut seen = Map::new();
    for i in 0..300u64 {
        let c = choose(
            &Balancer::Random,
            &cands,
            &a,
            &state,
            &next,
            &req(&h, i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            0,
        )
        .unwrap();
        *seen.entry(c.index).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3);
    // Least request: endpoint 2 is busy, so it loses every comparison it is drawn into.
    state[2].active.store(10, Ordering::Relaxed);
    for i in 0..200u64 {
        let r = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let c = choose(
            &Balancer::LeastRequest,
            &cands,
            &a,
            &state,
            &next,
            &req(&h, r),
            0,
        )
        .unwrap();
        assert_ne!(c.index, 2);
    }
}

#[test]
fn consistent_hash_keeps_keys_and_moves_only_those_of_a_leaving_endpoint() {
    let a = addrs(5);
    let state: Vec<EndpointState> = a.iter().map(|_| EndpointState::default()).collect();
    let next = AtomicUsize::new(0);
    let b = Balancer::ConsistentHash(HashKey::Header(http::HeaderName::from_static("x-user")));
    let pick = |user: &str, cands: &[usize], random: u64| {
        let mut h = HeaderMap::new();
        h.insert("x-user", user.parse().unwrap());
        choose(&b, cands, &a, &state, &next, &req(&h, random), 0)
            .unwrap()
            .index
    };
    let all = [0, 1, 2, 3, 4];
    let users: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let before: Vec<usize> = users.iter().map(|u| pick(u, &all, 1)).collect();
    // Same key, same endpoint, whatever the randomness.
    for (u, b) in users.iter().zip(&before) {
        assert_eq!(pick(u, &all, 99), *b);
    }
    // Spread over all five.
    let used: std::collections::BTreeSet<_> = before.iter().collect();
    assert_eq!(used.len(), 5);
    // Endpoint 3 leaves: only its keys move.
    let rest = [0, 1, 2, 4];
    for (u, b) in users.iter().zip(&before) {
        let after = pick(u, &rest, 7);
        if *b != 3 {
            assert_eq!(after, *b, "{u} moved");
        }
    }
}

#[test]
fn a_cookie_hash_creates_the_cookie_and_then_follows_it() {
    let a = addrs(3);
    let state: Vec<EndpointState> = a.iter().map(|_| EndpointState::default()).collect();
    let next = AtomicUsize::new(0);
    let b = Balancer::ConsistentHash(HashKey::Cookie {
        name: "session".into(),
        path: Some("/".into()),
        ttl: Some(std::time::Duration::from_secs(60)),
    });
    let h = HeaderMap::new();
    let first = choose(&b, &[0, 1, 2], &a, &state, &next, &req(&h, 42), 0).unwrap();
    let cookie = first.set_cookie.expect("a cookie is created");
    assert!(
        cookie.starts_with("session=")
            && cookie.contains("Max-Age=60")
            && cookie.contains("Path=/"),
        "{cookie}"
    );
    let value = cookie.split(';').next().unwrap().to_owned();
    let mut h = HeaderMap::new();
    h.insert(
        http::header::COOKIE,
        format!("other=1; {value}").parse().unwrap(),
    );
    for r in 0..20 {
        let again = choose(&b, &[0, 1, 2], &a, &state, &next, &req(&h, r), 0).unwrap();
        assert_eq!(
            again,
            super::balance::Choice {
                index: first.index,
                set_cookie: None
            }
        );
    }
}

#[test]
fn peak_ewma_prefers_the_faster_endpoint_and_forgets_a_slow_spell() {
    let a = addrs(2);
    let state: Vec<EndpointState> = a.iter().map(|_| EndpointState::default()).collect();
    let next = AtomicUsize::new(0);
    let h = HeaderMap::new();
    // Endpoint 1 took 100 ms, endpoint 0 1 ms: every choice between them goes to 0.
    state[0].observe_rtt(1_000, 1);
    state[1].observe_rtt(100_000, 1);
    for i in 0..50u64 {
        let c = choose(
            &Balancer::PeakEwma,
            &[0, 1],
            &a,
            &state,
            &next,
            &req(&h, i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            0,
        )
        .unwrap();
        assert_eq!(c.index, 0);
    }
    // Peak: one slow answer is taken at once; fast ones bring it down as time passes.
    state[0].observe_rtt(200_000, 2);
    assert_eq!(state[0].rtt_us.load(Ordering::Relaxed), 200_000);
    state[0].observe_rtt(1_000, 60_000_000);
    assert!(
        state[0].rtt_us.load(Ordering::Relaxed) < 2_000,
        "decayed after a minute"
    );
    // Requests in flight count: a fast endpoint with a queue loses to a slower idle one.
    state[0].active.store(200, Ordering::Relaxed);
    let c = choose(
        &Balancer::PeakEwma,
        &[0, 1],
        &a,
        &state,
        &next,
        &req(&h, 7),
        0,
    )
    .unwrap();
    assert_eq!(c.index, 1);
}

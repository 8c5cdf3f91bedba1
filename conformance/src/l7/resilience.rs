//! Resilience at the waypoint, through istiod-lite in the local cluster: retries moving to a
//! healthy pod, outlier detection setting a failing pod aside, and the connection pool's limit
//! answering 503 `UO`. Service `flaky` has one healthy pod and one answering every request 503.

use meshctl::cluster::http::{Answer, Request};

use super::{Suite, NS};
use crate::support::{eventually, CONVERGE};
use crate::Case;

pub fn cases() -> Vec<Case<Suite>> {
    vec![
        Case {
            name: "VirtualService retries: a pod answering 503 is retried on another, attempts counted",
            run: retries,
        },
        Case {
            name: "DestinationRule outlierDetection: the failing pod is ejected",
            run: ejection,
        },
        Case {
            name: "DestinationRule connectionPool: overflow answered 503 UO",
            run: pool_overflow,
        },
    ]
}

fn flaky(s: &Suite, path: &str) -> Result<Answer, String> {
    s.ask("client", s.vip("flaky", 80)?, &Request::get(path))
}

fn attempt(a: &Answer) -> Option<&str> {
    a.request_header("x-envoy-attempt-count")
}

/// Round robin, so every other first try lands on the broken pod.
fn destination_rule(extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: flaky, namespace: {NS}}}\nspec:\n  host: flaky\n  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN}}\n{extra}"
    )
}

fn virtual_service(retries: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: flaky, namespace: {NS}}}\nspec:\n  hosts: [flaky]\n  http:\n  - retries: {retries}\n    route: [{{destination: {{host: flaky}}}}]\n"
    )
}

fn retries(s: &mut Suite) -> Result<(), String> {
    s.apply("res-dr", &destination_rule(""))?;
    s.apply("res-vs", &virtual_service("{attempts: 2, retryOn: 5xx}"))?;
    eventually(CONVERGE, || {
        let mut retried = 0;
        for i in 0..12 {
            let a = flaky(s, "/")?;
            if a.status != 200 {
                return Err(format!("request {i}: HTTP {}", a.status));
            }
            if attempt(&a) == Some("2") {
                retried += 1;
            }
        }
        // Round robin puts half the first tries on the broken pod; each is retried.
        if retried == 0 {
            return Err("no request was retried".into());
        }
        Ok(())
    })
}

fn ejection(s: &mut Suite) -> Result<(), String> {
    s.apply(
        "res-dr",
        &destination_rule(
            "    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}\n",
        ),
    )?;
    s.apply("res-vs", &virtual_service("{attempts: 0}"))?;
    // Without retries, only ejection keeps the broken pod's 503s away: after its first failure,
    // every request reaches the healthy pod on its first try.
    eventually(CONVERGE, || {
        let mut failures = 0;
        let mut answers = Vec::new();
        for _ in 0..16 {
            let a = flaky(s, "/")?;
            if attempt(&a).is_some_and(|n| n != "1") {
                return Err(format!("a retry happened: {a:?}"));
            }
            if a.status != 200 {
                failures += 1;
            }
            answers.push(a.status);
        }
        let last: Vec<u16> = answers[answers.len() - 10..].to_vec();
        if failures > 2 || last.iter().any(|s| *s != 200) {
            return Err(format!(
                "answers {answers:?}: the broken pod was not set aside"
            ));
        }
        Ok(())
    })
}

fn pool_overflow(s: &mut Suite) -> Result<(), String> {
    s.apply(
        "res-pool",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: echo-v1, namespace: {NS}}}\nspec:\n  host: echo-v1\n  trafficPolicy:\n    connectionPool: {{http: {{http2MaxRequests: 1}}}}\n"
        ),
    )?;
    let vip = s.vip("echo-v1", 80)?;
    eventually(CONVERGE, || {
        let s: &Suite = s;
        std::thread::scope(|scope| {
            let slow = scope.spawn(|| s.ask("client", vip, &Request::get("/?delay=1500ms")));
            std::thread::sleep(std::time::Duration::from_millis(400));
            let second = s.ask("client", vip, &Request::get("/"))?;
            let first = slow.join().map_err(|_| "the slow request panicked")??;
            if first.status != 200 {
                return Err(format!("the request in flight got HTTP {}", first.status));
            }
            if second.status != 503 || !second.body.contains("overflow") {
                return Err(format!(
                    "the request over the limit got HTTP {}: {}",
                    second.status, second.body
                ));
            }
            Ok(())
        })
    })?;
    let metrics = s.waypoint_metrics()?;
    if !metrics
        .lines()
        .any(|l| l.starts_with("istio_requests_total{") && l.contains("response_flags=\"UO\""))
    {
        return Err("no istio_requests_total sample with response_flags=\"UO\"".into());
    }
    Ok(())
}

//! `meshctl stat`: golden metrics over a window, as `linkerd viz stat` shows them: per Service
//! behind a waypoint, requests per second, success rate (non-5xx) and latency percentiles; per
//! workload, new TCP connections per second, the share over mutual TLS and bytes per second.
//! Computed from two scrapes of the proxies' own Prometheus metrics `window` apart (no
//! Prometheus needed); the arithmetic here is pure and unit-tested.

use std::collections::BTreeMap;

use serde::Serialize;

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a text exposition (comments skipped; label values unescaped for `\"`).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, labels(rest.strip_suffix('}')?)),
                None => (head, BTreeMap::new()),
            };
            Some(Sample {
                name: name.to_owned(),
                labels,
                value,
            })
        })
        .collect()
}

fn labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    out
}

/// Golden metrics of one Service, from its waypoint's request metrics.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HttpRow {
    pub service: String,
    pub rps: f64,
    /// Share of requests not answered 5xx; `None` without requests.
    pub success: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// TCP golden metrics of one destination workload, from the ztunnels' metrics.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TcpRow {
    pub workload: String,
    pub connections_per_second: f64,
    /// Share of those connections over mutual TLS; `None` without connections.
    pub mtls: Option<f64>,
    pub bytes_in_per_second: f64,
    pub bytes_out_per_second: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stat {
    pub window_seconds: f64,
    pub services: Vec<HttpRow>,
    pub workloads: Vec<TcpRow>,
}

/// Sums of `name`'s increase between `before` and `after`, per key (a counter reset counts
/// from zero).
pub(crate) fn increase(
    before: &[Sample],
    after: &[Sample],
    name: &str,
    key: impl Fn(&BTreeMap<String, String>) -> Option<String>,
) -> BTreeMap<String, f64> {
    let was: BTreeMap<(String, Vec<(String, String)>), f64> = before
        .iter()
        .filter(|s| s.name == name)
        .map(|s| {
            let id: Vec<(String, String)> = s.labels.clone().into_iter().collect();
            ((s.name.clone(), id), s.value)
        })
        .collect();
    let mut out = BTreeMap::new();
    for s in after.iter().filter(|s| s.name == name) {
        let Some(k) = key(&s.labels) else { continue };
        let id: Vec<(String, String)> = s.labels.clone().into_iter().collect();
        let prior = was.get(&(s.name.clone(), id)).copied().unwrap_or(0.0);
        let delta = if s.value >= prior {
            s.value - prior
        } else {
            s.value
        };
        *out.entry(k).or_insert(0.0) += delta;
    }
    out
}

/// The `q` quantile of a histogram from its cumulative bucket counts (`le` → count), linearly
/// interpolated inside the bucket, as Prometheus' `histogram_quantile` does.
pub fn quantile(q: f64, buckets: &BTreeMap<String, f64>) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets
        .iter()
        .filter_map(|(le, n)| {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, *n))
        })
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in &b {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let inside = count - prev.1;
            let frac = if inside > 0.0 {
                (rank - prev.1) / inside
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    None
}

/// The golden metrics between two scrapes of every proxy (`before` and `after` hold all
/// proxies' samples), `window` seconds apart; `namespace` keeps only Services and workloads
/// there.
pub fn compute(before: &[Sample], after: &[Sample], window: f64, namespace: Option<&str>) -> Stat {
    let in_ns = |ns: Option<&String>| namespace.is_none_or(|want| ns.is_some_and(|n| n == want));
    let service = |l: &BTreeMap<String, String>| {
        (l.get("reporter").map(String::as_str) == Some("waypoint")
            && in_ns(l.get("destination_service_namespace")))
        .then(|| l.get("destination_service").cloned())
        .flatten()
    };
    let requests = increase(before, after, "istio_requests_total", service);
    let errors = increase(before, after, "istio_requests_total", |l| {
        l.get("response_code")
            .filter(|c| c.starts_with('5'))
            .and_then(|_| service(l))
    });
    let buckets = |svc: &str| {
        increase(
            before,
            after,
            "istio_request_duration_milliseconds_bucket",
            |l| {
                (service(l).as_deref() == Some(svc))
                    .then(|| l.get("le").cloned())
                    .flatten()
            },
        )
    };
    let services = requests
        .iter()
        .map(|(svc, n)| {
            let b = buckets(svc);
            HttpRow {
                service: svc.clone(),
                rps: n / window,
                success: (*n > 0.0).then(|| 1.0 - errors.get(svc).copied().unwrap_or(0.0) / n),
                p50_ms: quantile(0.5, &b),
                p95_ms: quantile(0.95, &b),
                p99_ms: quantile(0.99, &b),
            }
        })
        .collect();
    let workload = |l: &BTreeMap<String, String>| {
        (l.get("reporter").map(String::as_str) == Some("destination")
            && in_ns(l.get("destination_workload_namespace")))
        .then(|| {
            Some(format!(
                "{}/{}",
                l.get("destination_workload_namespace")?,
                l.get("destination_workload")?
            ))
        })
        .flatten()
    };
    let opened = increase(
        before,
        after,
        "istio_tcp_connections_opened_total",
        workload,
    );
    let mtls = increase(before, after, "istio_tcp_connections_opened_total", |l| {
        (l.get("connection_security_policy").map(String::as_str) == Some("mutual_tls"))
            .then(|| workload(l))
            .flatten()
    });
    let bytes_in = increase(before, after, "istio_tcp_received_bytes_total", workload);
    let bytes_out = increase(before, after, "istio_tcp_sent_bytes_total", workload);
    let mut names: Vec<&String> = opened.keys().chain(bytes_in.keys()).collect();
    names.sort();
    names.dedup();
    let workloads = names
        .into_iter()
        .map(|w| {
            let n = opened.get(w).copied().unwrap_or(0.0);
            TcpRow {
                workload: w.clone(),
                connections_per_second: n / window,
                mtls: (n > 0.0).then(|| mtls.get(w).copied().unwrap_or(0.0) / n),
                bytes_in_per_second: bytes_in.get(w).copied().unwrap_or(0.0) / window,
                bytes_out_per_second: bytes_out.get(w).copied().unwrap_or(0.0) / window,
            }
        })
        .collect();
    Stat {
        window_seconds: window,
        services,
        workloads,
    }
}

/// Both tables as text.
pub fn table(stat: &Stat) -> String {
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}%", v * 100.0));
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}ms"));
    let mut out = format!("over {:.0}s\n", stat.window_seconds);
    let rows: Vec<Vec<String>> = stat
        .services
        .iter()
        .map(|r| {
            vec![
                r.service.clone(),
                format!("{:.1}", r.rps),
                pct(r.success),
                ms(r.p50_ms),
                ms(r.p95_ms),
                ms(r.p99_ms),
            ]
        })
        .collect();
    out.push_str("\nservices (HTTP, at their waypoint)\n");
    out.push_str(&super::table::render(
        &["SERVICE", "RPS", "SUCCESS", "P50", "P95", "P99"],
        &rows,
    ));
    let rows: Vec<Vec<String>> = stat
        .workloads
        .iter()
        .map(|r| {
            vec![
                r.workload.clone(),
                format!("{:.1}", r.connections_per_second),
                pct(r.mtls),
                format!("{:.0}", r.bytes_in_per_second),
                format!("{:.0}", r.bytes_out_per_second),
            ]
        })
        .collect();
    out.push_str("\nworkloads (TCP, at their ztunnel)\n");
    out.push_str(&super::table::render(
        &["WORKLOAD", "CONN/S", "MTLS", "BYTES IN/S", "BYTES OUT/S"],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# TYPE istio_requests_total counter
istio_requests_total{reporter="waypoint",destination_service="echo.gamma.svc.cluster.local",destination_service_namespace="gamma",response_code="200"} 10
istio_requests_total{reporter="waypoint",destination_service="echo.gamma.svc.cluster.local",destination_service_namespace="gamma",response_code="503"} 0
istio_request_duration_milliseconds_bucket{reporter="waypoint",destination_service="echo.gamma.svc.cluster.local",destination_service_namespace="gamma",le="1"} 0
istio_request_duration_milliseconds_bucket{reporter="waypoint",destination_service="echo.gamma.svc.cluster.local",destination_service_namespace="gamma",le="5"} 5
istio_request_duration_milliseconds_bucket{reporter="waypoint",destination_service="echo.gamma.svc.cluster.local",destination_service_namespace="gamma",le="10"} 10
istio_request_duration_milliseconds_bucket{reporter="waypoint",destination_service="echo.gamma.svc.cluster.local",destination_service_namespace="gamma",le="+Inf"} 10
istio_tcp_connections_opened_total{reporter="destination",destination_workload="cart",destination_workload_namespace="shop",connection_security_policy="mutual_tls"} 4
istio_tcp_received_bytes_total{reporter="destination",destination_workload="cart",destination_workload_namespace="shop",connection_security_policy="mutual_tls"} 1000
"#;

    const AFTER: &str = r#"istio_requests_total{reporter="waypoint",destination_service="echo.gamma.svc.cluster.local",destination_service_namespace="gamma",response_code="200"} 28
istio_requests_total{reporter="waypoint",destination_service="echo.gamma.svc.cluster.local",destination_service_namespace="gamma",response_code="503"} 2
istio_request_duration_milliseconds_bucket{reporter="waypoint",destination_service="echo.gamma.svc.cluster.local",destination_service_namespace="gamma",le="1"} 0
istio_request_duration_milliseconds_bucket{reporter="waypoint",destination_service="echo.gamma.svc.cluster.local",destination_service_namespace="gamma",le="5"} 15
istio_request_duration_milliseconds_bucket{reporter="waypoint",destination_service="echo.gamma.svc.cluster.local",destination_service_namespace="gamma",le="10"} 30
istio_request_duration_milliseconds_bucket{reporter="waypoint",destination_service="echo.gamma.svc.cluster.local",destination_service_namespace="gamma",le="+Inf"} 30
istio_tcp_connections_opened_total{reporter="destination",destination_workload="cart",destination_workload_namespace="shop",connection_security_policy="mutual_tls"} 14
istio_tcp_connections_opened_total{reporter="destination",destination_workload="cart",destination_workload_namespace="shop",connection_security_policy="unknown"} 10
istio_tcp_received_bytes_total{reporter="destination",destination_workload="cart",destination_workload_namespace="shop",connection_security_policy="mutual_tls"} 6000
"#;

    #[test]
    fn rates_success_and_percentiles_over_the_window() {
        let stat = compute(&parse(BEFORE), &parse(AFTER), 10.0, None);
        let s = &stat.services[0];
        assert_eq!(s.service, "echo.gamma.svc.cluster.local");
        assert_eq!(s.rps, 2.0); // 20 requests in 10 s
        assert_eq!(s.success, Some(0.9)); // 2 of 20 answered 503
                                          // 20 new observations: 10 in (1, 5], 10 in (5, 10]: the median sits at 5 ms.
        assert_eq!(s.p50_ms, Some(5.0));
        assert!((s.p99_ms.unwrap() - 9.9).abs() < 1e-9);
        let w = &stat.workloads[0];
        assert_eq!(w.workload, "shop/cart");
        assert_eq!(w.connections_per_second, 2.0); // 10 mTLS + 10 plain in 10 s
        assert_eq!(w.mtls, Some(0.5));
        assert_eq!(w.bytes_in_per_second, 500.0);
        let t = table(&stat);
        assert!(t.contains("90.00%") && t.contains("50.00%"), "{t}");
        assert!(compute(&parse(BEFORE), &parse(AFTER), 10.0, Some("other"))
            .services
            .is_empty());
    }

    #[test]
    fn label_values_with_escapes_parse() {
        let s = parse("m{a=\"x\\\"y\",b=\"z\"} 3\n");
        assert_eq!(s[0].labels["a"], "x\"y");
        assert_eq!(s[0].labels["b"], "z");
        assert_eq!(s[0].value, 3.0);
    }
}

//! DestinationRules as the data path applies them: per Service (and per subset, and per port),
//! which endpoints a request may go to, how one is chosen ([`balance`]), how many requests may
//! be in flight (connection pool), and when an endpoint is set aside (outlier detection).
//!
//! Pure: [`compile`] reads the rules; the per-endpoint counters live in
//! [`crate::config::ServiceView`].
//!
//! Semantics, and where they differ from Istio:
//! - Of several DestinationRules naming one Service, the oldest applies (Istio merges some
//!   cases); the others are reported.
//! - `subsets[].trafficPolicy` replaces the Service-level policy for that subset, field by field
//!   (load balancer, pool, outlier detection), as in Istio; `portLevelSettings` likewise for a
//!   port.
//! - `loadBalancer.simple`: `LEAST_REQUEST` (the default, as in Istio and by measurement: power
//!   of two choices on requests in flight; `LEAST_CONN` is the same), `ROUND_ROBIN`, `RANDOM`,
//!   `PEAK_EWMA`; `PASSTHROUGH` is refused (a waypoint always
//!   picks an endpoint). `consistentHash` on a header, a cookie (created with `ttl` when
//!   missing), the source IP or a query parameter, by highest-random-weight hashing: the same
//!   key reaches the same endpoint while it stays, across waypoint restarts and replicas (no
//!   ring state; `ringHash`/`maglev` sizes are accepted and not needed). Sticky sessions work
//!   with HTTPRoutes too, unlike Istio's waypoint (istio#55259).
//! - `connectionPool.http.http2MaxRequests` caps the requests in flight to the Service from
//!   this waypoint; without it, `http1MaxPendingRequests` + `tcp.maxConnections` does. Past
//!   the cap a request is answered 503 with flag `UO` at once (Envoy queues up to the pending
//!   limit first).
//! - `outlierDetection`: `consecutive5xxErrors` (also 502/503/504 and connect failures) and
//!   `consecutiveGatewayErrors` eject an endpoint for `baseEjectionTime` × the number of times
//!   it was ejected, at most `maxEjectionPercent` of the endpoints (at least one); ejected ones
//!   are used only when nothing else is left. `interval` and `minHealthPercent` are accepted.

pub mod balance;
pub mod budget;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use meshcore::l7::duration::parse_istio_duration;
use meshcore::l7::networking::{
    ConnectionPoolSettings, DestinationRule, LoadBalancerSettings, OutlierDetection,
};
use meshcore::l7::service::Service;

pub use balance::{Balancer, HashKey};

use crate::route::ServiceKey;

/// What applies to one set of endpoints (a Service, a subset, a port).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub balancer: Balancer,
    /// Requests in flight allowed to the Service; more are answered 503 `UO`.
    pub max_requests: Option<u32>,
    pub outlier: Option<Outlier>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outlier {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway: Option<u32>,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub policy: Policy,
}

/// A Service's DestinationRule, compiled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceTraffic {
    /// `namespace/name` of the DestinationRule; empty for the default policy.
    pub rule: String,
    pub policy: Policy,
    pub subsets: Vec<Subset>,
    pub ports: Vec<(u16, Policy)>,
}

impl ServiceTraffic {
    /// The policy for a request to `subset` on `port`: the subset's, else the port's, else the
    /// Service's.
    pub fn policy(&self, subset: Option<&str>, port: u16) -> &Policy {
        if let Some(s) = subset.and_then(|s| self.subset(s)) {
            return &s.policy;
        }
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(&self.policy, |(_, p)| p)
    }

    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }
}

/// A DestinationRule this waypoint applies only in part, or not at all.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrafficNote {
    pub rule: String,
    pub message: String,
}

/// The DestinationRules for `services`: per Service, and notes on what is not applied.
pub fn compile(
    rules: &[DestinationRule],
    services: &[Service],
) -> (HashMap<ServiceKey, ServiceTraffic>, Vec<TrafficNote>) {
    let mut out: HashMap<ServiceKey, ServiceTraffic> = HashMap::new();
    let mut notes = Vec::new();
    let mut ordered: Vec<&DestinationRule> = rules.iter().collect();
    ordered.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.is_none(),
            r.metadata.creation_timestamp.clone(),
            r.metadata.key(),
        )
    });
    for dr in ordered {
        let key = dr.metadata.key();
        let mut note = |message: String| {
            notes.push(TrafficNote {
                rule: key.clone(),
                message,
            })
        };
        let Some(svc) = crate::route::resolve_host(&dr.spec.host, &dr.metadata.namespace, services)
        else {
            note(format!(
                "host {} names no Service this waypoint knows",
                dr.spec.host
            ));
            continue;
        };
        let skey = ServiceKey::new(&svc.namespace, &svc.name);
        if let Some(first) = out.get(&skey) {
            note(format!(
                "DestinationRule {} is older and applies to {skey}",
                first.rule
            ));
            continue;
        }
        if dr.spec.workload_selector.is_some() {
            note("workloadSelector is not supported by the waypoint, ignored".into());
        }
        let base = match &dr.spec.traffic_policy {
            Some(tp) => {
                for (field, set) in [
                    ("tunnel", tp.tunnel.is_some()),
                    ("proxyProtocol", tp.proxy_protocol.is_some()),
                ] {
                    if set {
                        note(format!("trafficPolicy.{field} is not supported, ignored"));
                    }
                }
                if let Some(tls) = &tp.tls {
                    check_tls(tls, &mut note);
                }
                policy(
                    &Policy::default(),
                    tp.load_balancer.as_ref(),
                    tp.connection_pool.as_ref(),
                    tp.outlier_detection.as_ref(),
                    &mut note,
                )
            }
            None => Policy::default(),
        };
        let mut ports = Vec::new();
        for pl in dr
            .spec
            .traffic_policy
            .iter()
            .flat_map(|tp| &tp.port_level_settings)
        {
            let Some(port) = pl.port.map(|p| p.number as u16) else {
                note("portLevelSettings entry without port.number, ignored".into());
                continue;
            };
            let p = policy(
                &base,
                pl.load_balancer.as_ref(),
                pl.connection_pool.as_ref(),
                pl.outlier_detection.as_ref(),
                &mut note,
            );
            ports.push((port, p));
        }
        let mut subsets = Vec::new();
        for s in &dr.spec.subsets {
            let tp = s.traffic_policy.as_ref();
            let p = policy(
                &base,
                tp.and_then(|t| t.load_balancer.as_ref()),
                tp.and_then(|t| t.connection_pool.as_ref()),
                tp.and_then(|t| t.outlier_detection.as_ref()),
                &mut note,
            );
            subsets.push(Subset {
                name: s.name.clone(),
                labels: s.labels.clone(),
                policy: p,
            });
        }
        out.insert(
            skey,
            ServiceTraffic {
                rule: key.clone(),
                policy: base,
                subsets,
                ports,
            },
        );
    }
    (out, notes)
}

fn check_tls(tls: &serde_json::Value, note: &mut impl FnMut(String)) {
    let mode = tls
        .get("mode")
        .and_then(|m| m.as_str())
        .unwrap_or("ISTIO_MUTUAL");
    if mode != "ISTIO_MUTUAL" {
        note(format!(
            "tls.mode {mode}: the waypoint always reaches mesh endpoints over HBONE (ISTIO_MUTUAL)"
        ));
    }
}

/// `base` with the given settings laid over it.
fn policy(
    base: &Policy,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    note: &mut impl FnMut(String),
) -> Policy {
    let mut p = base.clone();
    if let Some(lb) = lb {
        match balance::from_settings(lb) {
            Ok(b) => p.balancer = b,
            Err(e) => note(format!("loadBalancer: {e}; least request used")),
        }
        if lb.locality_lb_setting.is_some()
            || lb.warmup_duration_secs.is_some()
            || lb.warmup.is_some()
        {
            note("loadBalancer locality and warmup settings are not supported, ignored".into());
        }
    }
    if let Some(pool) = pool {
        let http = pool.http.as_ref();
        let tcp = pool.tcp.as_ref();
        p.max_requests = http.and_then(|h| h.http2_max_requests).or_else(|| {
            match (
                http.and_then(|h| h.http1_max_pending_requests),
                tcp.and_then(|t| t.max_connections),
            ) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0)).max(1)),
            }
        });
    }
    if let Some(o) = outlier {
        let dur = |t: Option<&str>, default: Duration| {
            t.and_then(|t| parse_istio_duration(t).ok())
                .unwrap_or(default)
        };
        p.outlier = Some(Outlier {
            consecutive_5xx: o
                .consecutive_5xx_errors
                .or(o.consecutive_errors)
                .or(Some(5))
                .filter(|n| *n > 0),
            consecutive_gateway: o.consecutive_gateway_errors.filter(|n| *n > 0),
            base_ejection: dur(o.base_ejection_time.as_deref(), Duration::from_secs(30)),
            max_ejection_percent: o.max_ejection_percent.unwrap_or(10).min(100),
        });
    }
    p
}

#[cfg(test)]
mod tests;

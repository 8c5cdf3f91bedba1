//! Request records: one per HTTP request through the waypoint (who, which Service, the route
//! rule and backend, the L7 policy verdict with the deciding policy and rule, method, path,
//! status, sizes, duration, request id), kept in `meshcore::flow_ring`'s bounded ring and live
//! stream and served as newline-delimited JSON on the admin port (`/flows`), next to ztunnel's
//! connection records. The fields that mean the same as ztunnel's carry its names (`time_ms`,
//! `verdict`, `source`, `destination`, `service`, `mtls`, `flag`, `reason`, `bytes_received`,
//! `bytes_sent`, `duration_ms`), so `meshctl observe` merges both; `"kind":"request"` tells them
//! apart.
//!
//! The data path builds a record from what the request's metrics and access log already hold
//! (moved, not copied) after both are written; `FLOW_RECORDS=false` skips it.

use std::net::SocketAddr;
use std::sync::Arc;

pub use meshcore::flow_ring::{Filter, Peer};
use serde::Serialize;

/// The waypoint's request records.
pub type RequestLog = meshcore::flow_ring::FlowRing<RequestRecord>;

/// `allowed`: the request went through (whatever the backend answered); `denied`: an L7
/// AuthorizationPolicy (or a RequestAuthentication) refused it; `failed`: the waypoint answered
/// itself (no route, no healthy upstream, timeout, injected fault...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allowed,
    Denied,
    Failed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Failed => "failed",
        }
    }
}

/// One request.
#[derive(Debug, Serialize)]
pub struct RequestRecord {
    /// Milliseconds since the Unix epoch, when the response ended.
    pub time_ms: u64,
    /// Always `request` (ztunnel's records have none; they carry `event`).
    pub kind: &'static str,
    pub reporter: &'static str,
    pub verdict: Verdict,
    pub source: Peer,
    /// The backend pod that served it (the addressed Service's VIP when none was chosen).
    pub destination: Peer,
    /// The addressed Service's hostname.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// The addressed Service as `namespace/name`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    /// The port the client addressed (the Service's port; the pod's own when pod-addressed).
    #[serde(skip_serializing_if = "is_zero")]
    pub service_port: u16,
    /// Every request reaches the waypoint over HBONE (mutual TLS).
    pub mtls: bool,
    /// The HTTPRoute / GRPCRoute / VirtualService (`namespace/name`) whose rule matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<Arc<str>>,
    /// The rule's name, or its index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_rule: Option<Arc<str>>,
    /// The backend the rule picked (`namespace/name`, `#subset`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<Arc<str>>,
    /// The deciding AuthorizationPolicy (`namespace/name`) and rule, when one decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_rule: Option<usize>,
    /// The authorization decision in words (`denied by gamma/deny-post rule 0`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub method: String,
    /// Without the query string.
    pub path: String,
    pub protocol: &'static str,
    /// 0 when no response was sent.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// Envoy's response flag (`DENY`, `NR`, `UH`, `UF`, `UT`, `FI`...), when one was set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag: Option<&'static str>,
    /// Request body bytes (client → server) and response body bytes.
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: u64,
    /// Fractional milliseconds, for latency figures under a millisecond.
    pub duration_us: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
}

impl meshcore::flow_ring::Ends for RequestRecord {
    fn source(&self) -> &Peer {
        &self.source
    }

    fn destination(&self) -> &Peer {
        &self.destination
    }

    fn verdict(&self) -> &str {
        self.verdict.as_str()
    }

    fn service_is(&self, name: &str) -> bool {
        match (name.split_once('/'), self.service_name.split_once('/')) {
            (Some(_), _) => self.service_name == name,
            (None, Some((_, svc))) => svc == name,
            (None, None) => false,
        }
    }
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

/// The path of a request target without its query string.
pub fn without_query(mut path: String) -> String {
    if let Some(i) = path.find('?') {
        path.truncate(i);
    }
    path
}

/// The verdict of a finished request: denied when a policy (or authentication) refused it,
/// failed when the waypoint answered with an error of its own (a response flag other than
/// `DENY`, or a local 5xx), else allowed.
pub fn verdict(denied: bool, flag: &str, local_error: bool) -> Verdict {
    if denied || flag == "DENY" {
        Verdict::Denied
    } else if local_error || (flag != "-" && !flag.is_empty()) {
        Verdict::Failed
    } else {
        Verdict::Allowed
    }
}

/// The address of a peer, when `s` is one (`ip:port`).
pub fn address(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcore::flow_ring::Ends;

    fn record(verdict: Verdict) -> RequestRecord {
        RequestRecord {
            time_ms: 1_764_495_692_123,
            kind: "request",
            reporter: "waypoint",
            verdict,
            source: Peer {
                namespace: "gamma".into(),
                workload: "client".into(),
                principal: "spiffe://cluster.local/ns/gamma/sa/client".into(),
                address: address("10.244.1.5:40000"),
            },
            destination: Peer {
                namespace: "gamma".into(),
                workload: "echo-v1-1".into(),
                principal: String::new(),
                address: address("10.244.2.7:8080"),
            },
            service: "echo.gamma.svc.cluster.local".into(),
            service_name: "gamma/echo".into(),
            service_port: 80,
            mtls: true,
            route: Some("gamma/echo-split".into()),
            route_rule: Some("0".into()),
            backend: Some("gamma/echo-v1".into()),
            policy: None,
            policy_rule: None,
            reason: String::new(),
            method: "GET".into(),
            path: without_query("/hello?x=1".into()),
            protocol: "HTTP/1.1",
            status: 200,
            grpc_status: None,
            flag: None,
            bytes_received: 0,
            bytes_sent: 42,
            duration_ms: 3,
            duration_us: 3_120,
            request_id: "abc".into(),
        }
    }

    #[test]
    fn records_carry_ztunnels_field_names() {
        let v: serde_json::Value =
            serde_json::from_slice(&meshcore::flow_ring::line(&record(Verdict::Allowed))).unwrap();
        assert_eq!(v["kind"], "request");
        assert_eq!(v["verdict"], "allowed");
        assert_eq!(v["source"]["workload"], "client");
        assert_eq!(v["source"]["address"], "10.244.1.5:40000");
        assert_eq!(v["destination"]["namespace"], "gamma");
        assert_eq!(v["path"], "/hello");
        assert_eq!(v["route"], "gamma/echo-split");
        assert_eq!(v["bytes_sent"], 42);
        assert_eq!(v["duration_ms"], 3);
        assert!(v.get("policy").is_none() && v.get("flag").is_none());
    }

    #[test]
    fn filters_match_the_service_as_well_as_the_pod() {
        let r = record(Verdict::Denied);
        let q = |s: &str| Filter::from_query(s).unwrap();
        assert!(q("to=gamma%2Fecho").matches(&r));
        assert!(q("to=echo").matches(&r));
        assert!(q("to=echo-v1-1").matches(&r));
        assert!(!q("to=other").matches(&r));
        assert!(q("from=gamma/client&verdict=denied").matches(&r));
        assert!(!q("verdict=allowed").matches(&r));
        assert!(q("namespace=gamma").matches(&r));
        assert!(r.service_is("gamma/echo") && !r.service_is("other/echo"));
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(false, "-", false), Verdict::Allowed);
        assert_eq!(verdict(false, "DENY", false), Verdict::Denied);
        assert_eq!(verdict(true, "-", false), Verdict::Denied);
        assert_eq!(verdict(false, "UH", false), Verdict::Failed);
        assert_eq!(verdict(false, "-", true), Verdict::Failed);
    }
}

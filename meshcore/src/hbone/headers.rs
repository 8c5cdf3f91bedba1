//! The request headers Istio puts on an HBONE CONNECT: `forwarded`, `baggage`, `traceparent`.

use std::fmt::Write;
use std::net::SocketAddr;

/// `for="<ip:port>"` (RFC 7239; IPv6 in brackets), naming the original client.
pub fn forwarded_for(source: SocketAddr) -> String {
    format!("for=\"{source}\"")
}

/// Reads the client address back from a `forwarded` header, if it holds one.
pub fn parse_forwarded_for(value: &str) -> Option<SocketAddr> {
    value.split([';', ',']).find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        v.trim().trim_matches('"').parse().ok()
    })
}

/// Workload metadata carried in the W3C `baggage` header, with the keys Istio uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    /// Kind of the owning workload (`deployment`, `daemonset`, `pod`, ...).
    pub workload_kind: Option<String>,
    pub workload_name: Option<String>,
    pub service_name: Option<String>,
    pub service_version: Option<String>,
}

impl Baggage {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                if !out.is_empty() {
                    out.push(',');
                }
                let _ = write!(out, "{k}={v}");
            }
        };
        put("k8s.cluster.name", &self.cluster);
        put("k8s.namespace.name", &self.namespace);
        if let Some(kind) = &self.workload_kind {
            put(&format!("k8s.{kind}.name"), &self.workload_name);
        }
        put("service.name", &self.service_name);
        put("service.version", &self.service_version);
        out
    }

    pub fn parse(value: &str) -> Self {
        let mut b = Baggage::default();
        for member in value.split(',') {
            // A member may carry `;properties` after the value; Istio sends none.
            let member = member.split(';').next().unwrap_or_default();
            let Some((k, v)) = member.trim().split_once('=') else {
                continue;
            };
            let v = Some(v.trim().to_owned());
            match k.trim() {
                "k8s.cluster.name" => b.cluster = v,
                "k8s.namespace.name" => b.namespace = v,
                "service.name" => b.service_name = v,
                "service.version" => b.service_version = v,
                k => {
                    if let Some(kind) = k.strip_prefix("k8s.").and_then(|r| r.strip_suffix(".name"))
                    {
                        b.workload_kind = Some(kind.to_owned());
                        b.workload_name = v;
                    }
                }
            }
        }
        b
    }
}

/// A W3C trace context (`traceparent: 00-<trace id>-<span id>-<flags>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// A new random trace, not sampled. Ids need to be unique, not secret: they come from a
    /// per-thread generator (a `getrandom(2)` each was ~2 µs per connection).
    pub fn random() -> Self {
        use crate::fast_rand::next_u64;
        Self {
            trace_id: (u128::from(next_u64()) << 64 | u128::from(next_u64())).max(1),
            span_id: next_u64().max(1),
            sampled: false,
        }
    }

    /// The same trace with a fresh span id, for the next hop.
    pub fn child(&self) -> Self {
        Self {
            span_id: Self::random().span_id,
            ..*self
        }
    }

    pub fn encode(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.sampled as u8
        )
    }

    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_round_trip() {
        for addr in ["10.0.0.1:4242", "[fd00::1]:80"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(parse_forwarded_for(&forwarded_for(addr)), Some(addr));
        }
        assert_eq!(
            forwarded_for("[::1]:80".parse().unwrap()),
            "for=\"[::1]:80\""
        );
        assert_eq!(
            parse_forwarded_for("proto=https; for=\"10.1.2.3:9\""),
            Some("10.1.2.3:9".parse().unwrap())
        );
        assert_eq!(parse_forwarded_for("for=unknown"), None);
    }

    #[test]
    fn baggage_round_trip() {
        let b = Baggage {
            cluster: Some("Kubernetes".into()),
            namespace: Some("default".into()),
            workload_kind: Some("deployment".into()),
            workload_name: Some("sleep".into()),
            service_name: Some("sleep".into()),
            service_version: Some("v1".into()),
        };
        let s = b.encode();
        assert_eq!(
            s,
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=sleep,service.name=sleep,service.version=v1"
        );
        assert_eq!(Baggage::parse(&s), b);
    }

    #[test]
    fn traceparent_round_trip() {
        let t = TraceParent::random();
        let s = t.encode();
        assert_eq!(s.len(), 55);
        assert_eq!(TraceParent::parse(&s), Some(t));
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert_eq!(
            TraceParent::parse("00-00000000000000000000000000000000-0000000000000001-01"),
            None
        );
        assert_eq!(TraceParent::parse("garbage"), None);
    }
}

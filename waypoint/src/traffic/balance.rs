//! Choosing an endpoint among the eligible ones: round robin, random, least request (power of
//! two choices over requests in flight) and consistent hashing (highest random weight over the
//! endpoints' addresses, so a key keeps its endpoint across restarts and replicas, and only the
//! keys of an endpoint that leaves move). Pure: the caller passes the candidates, their state
//! and the request's hash inputs.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use meshcore::l7::duration::parse_istio_duration;
use meshcore::l7::networking::LoadBalancerSettings;

#[derive(Debug, Clone, Default, PartialEq)]
pub enum Balancer {
    RoundRobin,
    Random,
    /// The default, by measurement (docs/performance.md: the balancers under a skewed
    /// backend), as in Istio.
    #[default]
    LeastRequest,
    /// Linkerd's peak-EWMA: power of two choices on round-trip estimate × (in flight + 1).
    /// Selected with `simple: PEAK_EWMA` (an extension of Istio's enum).
    PeakEwma,
    ConsistentHash(HashKey),
}

/// What a consistent hash reads from a request.
#[derive(Debug, Clone, PartialEq)]
pub enum HashKey {
    Header(HeaderName),
    /// Created on the response when the request has none (`ttl` `None` or zero: a session
    /// cookie).
    Cookie {
        name: String,
        path: Option<String>,
        ttl: Option<Duration>,
    },
    SourceIp,
    QueryParam(String),
}

/// `loadBalancer` as a [`Balancer`].
pub fn from_settings(lb: &LoadBalancerSettings) -> Result<Balancer, String> {
    if let Some(ch) = &lb.consistent_hash {
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip == Some(true),
            ch.http_query_parameter_name.is_some(),
        ];
        if keys.iter().filter(|k| **k).count() != 1 {
            return Err(
                "consistentHash needs exactly one of httpHeaderName, httpCookie, \
                        useSourceIp, httpQueryParameterName"
                    .into(),
            );
        }
        let key = if let Some(h) = &ch.http_header_name {
            HashKey::Header(
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("httpHeaderName {h:?} is not a header name"))?,
            )
        } else if let Some(c) = &ch.http_cookie {
            let ttl = c
                .ttl
                .as_deref()
                .map(parse_istio_duration)
                .transpose()
                .map_err(|e| format!("httpCookie.ttl: {e}"))?;
            HashKey::Cookie {
                name: c.name.clone(),
                path: c.path.clone(),
                ttl,
            }
        } else if let Some(q) = &ch.http_query_parameter_name {
            HashKey::QueryParam(q.clone())
        } else {
            HashKey::SourceIp
        };
        return Ok(Balancer::ConsistentHash(key));
    }
    match lb.simple.as_deref().unwrap_or("UNSPECIFIED") {
        "ROUND_ROBIN" => Ok(Balancer::RoundRobin),
        "RANDOM" => Ok(Balancer::Random),
        "UNSPECIFIED" | "LEAST_REQUEST" | "LEAST_CONN" => Ok(Balancer::LeastRequest),
        "PEAK_EWMA" => Ok(Balancer::PeakEwma),
        other => Err(format!("simple {other} is not supported")),
    }
}

/// An endpoint's counters, kept for the life of a configuration.
#[derive(Debug, Default)]
pub struct EndpointState {
    /// Requests in flight to it.
    pub active: AtomicU32,
    /// Consecutive failures (5xx, gateway errors), for outlier detection.
    pub failures: AtomicU32,
    pub gateway_failures: AtomicU32,
    /// Ejected until this time (milliseconds on the caller's clock); 0: never ejected.
    pub ejected_until_ms: AtomicU64,
    /// How many times it was ejected (the ejection time grows with it).
    pub ejections: AtomicU32,
    /// Peak-EWMA round-trip estimate in microseconds (0: none yet), and when it was updated
    /// (microseconds on the caller's clock).
    pub rtt_us: AtomicU64,
    pub rtt_stamp_us: AtomicU64,
}

/// What an endpoint without a measurement is assumed to take (Linkerd's default).
const DEFAULT_RTT_US: u64 = 30_000;
/// How fast an old round-trip estimate fades (Linkerd's decay).
const RTT_DECAY_US: f64 = 10_000_000.0;

impl EndpointState {
    pub fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Folds a round trip into the peak-EWMA estimate: a slower one is taken at once (peak),
    /// faster ones pull it down as the old value decays (time constant 10 s).
    pub fn observe_rtt(&self, rtt_us: u64, now_us: u64) {
        let old = self.rtt_us.load(Ordering::Relaxed);
        let stamp = self.rtt_stamp_us.swap(now_us, Ordering::Relaxed);
        let new = if old == 0 || rtt_us > old {
            rtt_us
        } else {
            let w = (-(now_us.saturating_sub(stamp) as f64) / RTT_DECAY_US).exp();
            (old as f64 * w + rtt_us as f64 * (1.0 - w)) as u64
        };
        self.rtt_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Peak-EWMA cost: the estimate, decayed for the time since it was last updated (as
    /// Linkerd's does when read, so an endpoint left alone after a slow spell is tried again
    /// and its estimate refreshed), times the requests in flight plus one.
    fn cost(&self, now_us: u64) -> u64 {
        let rtt = match self.rtt_us.load(Ordering::Relaxed) {
            0 => DEFAULT_RTT_US,
            r => {
                let idle = now_us.saturating_sub(self.rtt_stamp_us.load(Ordering::Relaxed));
                ((r as f64) * (-(idle as f64) / RTT_DECAY_US).exp()) as u64
            }
        };
        rtt.saturating_mul(u64::from(self.active.load(Ordering::Relaxed)) + 1)
    }
}

/// What a balancer reads from a request.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub source_ip: Option<IpAddr>,
    /// A fresh random number.
    pub random: u64,
}

/// The chosen endpoint, and a cookie to set when a cookie hash created one.
#[derive(Debug, PartialEq, Eq)]
pub struct Choice {
    pub index: usize,
    pub set_cookie: Option<String>,
}

/// Chooses among `candidates` (indexes into `state` and `addresses`). `None` when there are
/// none.
pub fn choose(
    balancer: &Balancer,
    candidates: &[usize],
    addresses: &[IpAddr],
    state: &[EndpointState],
    next: &AtomicUsize,
    req: &Request<'_>,
    now_us: u64,
) -> Option<Choice> {
    if candidates.is_empty() {
        return None;
    }
    let plain = |index| {
        Some(Choice {
            index,
            set_cookie: None,
        })
    };
    match balancer {
        Balancer::RoundRobin => {
            let i = next.fetch_add(1, Ordering::Relaxed) % candidates.len();
            plain(candidates[i])
        }
        Balancer::Random => plain(candidates[(req.random % candidates.len() as u64) as usize]),
        Balancer::LeastRequest | Balancer::PeakEwma => {
            if candidates.len() == 1 {
                return plain(candidates[0]);
            }
            // Power of two choices: two distinct candidates at random, the cheaper wins.
            let n = candidates.len() as u64;
            let a = (req.random % n) as usize;
            let b = ((req.random >> 32) % (n - 1)) as usize;
            let b = if b >= a { b + 1 } else { b };
            let (ia, ib) = (candidates[a], candidates[b]);
            let cost = |i: usize| match balancer {
                Balancer::PeakEwma => state[i].cost(now_us),
                _ => u64::from(state[i].active.load(Ordering::Relaxed)),
            };
            plain(if cost(ib) < cost(ia) { ib } else { ia })
        }
        Balancer::ConsistentHash(key) => {
            let (hash, set_cookie) = match key_hash(key, req) {
                Some(h) => (h, None),
                None => match key {
                    // No cookie yet: make one, so this and every later request hash alike.
                    HashKey::Cookie { name, path, ttl } => {
                        let value = format!("{:016x}", mix(req.random));
                        let hash = fnv1a(value.as_bytes());
                        (hash, Some(cookie(name, &value, path.as_deref(), *ttl)))
                    }
                    // Nothing to hash on: any candidate.
                    _ => (mix(req.random), None),
                },
            };
            let index = *candidates
                .iter()
                .max_by_key(|&&i| (weight(hash, &addresses[i]), i))
                .expect("not empty");
            Some(Choice { index, set_cookie })
        }
    }
}

fn cookie(name: &str, value: &str, path: Option<&str>, ttl: Option<Duration>) -> String {
    let mut c = format!("{name}={value}; HttpOnly");
    if let Some(p) = path {
        c.push_str("; Path=");
        c.push_str(p);
    }
    if let Some(ttl) = ttl.filter(|t| !t.is_zero()) {
        c.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
    }
    c
}

/// The request's hash key, `None` when it has none.
fn key_hash(key: &HashKey, req: &Request<'_>) -> Option<u64> {
    match key {
        HashKey::Header(name) => req.headers.get(name).map(|v| fnv1a(v.as_bytes())),
        HashKey::SourceIp => req.source_ip.map(|ip| match ip {
            IpAddr::V4(v4) => fnv1a(&v4.octets()),
            IpAddr::V6(v6) => fnv1a(&v6.octets()),
        }),
        HashKey::QueryParam(name) => req.query.and_then(|q| {
            q.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k == name).then(|| fnv1a(v.as_bytes()))
            })
        }),
        HashKey::Cookie { name, .. } => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| fnv1a(v.as_bytes()))
            }),
    }
}

/// Highest-random-weight score of an endpoint for a key.
fn weight(hash: u64, address: &IpAddr) -> u64 {
    let a = match address {
        IpAddr::V4(v4) => fnv1a(&v4.octets()),
        IpAddr::V6(v6) => fnv1a(&v6.octets()),
    };
    mix(hash ^ a.rotate_left(17))
}

/// FNV-1a, 64 bits: stable across processes and releases.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finalizer.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

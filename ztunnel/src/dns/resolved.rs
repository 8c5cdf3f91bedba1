//! The names a served workload resolved through ztunnel's DNS proxy, for egress policies'
//! FQDN peers (Cilium's `toFQDNs`): each (name, address) of an answer is kept until
//! `now + max(TTL, EGRESS_FQDN_MIN_TTL)` (Cilium's `tofqdns-min-ttl`, 3600 s by default: an
//! application that keeps a connection pool or caches answers itself must not be cut off when
//! a short TTL runs out).
//!
//! Bounded: at most [`MAX_ENTRIES`] (name, address) pairs per workload; past that the oldest
//! (least recently answered) is evicted, so a workload resolving endless names cannot grow
//! ztunnel's memory, and loses at worst its oldest permissions. Only filled while some egress
//! policy with an FQDN peer selects the workload (the DNS proxy checks first).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// (name, address) pairs kept per workload.
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug)]
struct Entry {
    name: Arc<str>,
    expires: Instant,
    /// When it was last answered, for eviction order.
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    by_ip: HashMap<IpAddr, Vec<Entry>>,
    /// (seq, address, name) in answer order; stale records (the pair answered again since,
    /// or evicted) are skipped and compacted away.
    order: VecDeque<(u64, IpAddr, Arc<str>)>,
    len: usize,
    seq: u64,
}

/// One served workload's resolved names.
#[derive(Debug)]
pub struct ResolvedNames {
    /// `EGRESS_FQDN_MIN_TTL`.
    min_ttl: Duration,
    max_entries: usize,
    inner: Mutex<Inner>,
}

impl ResolvedNames {
    pub fn new(min_ttl: Duration) -> Self {
        Self::with_capacity(min_ttl, MAX_ENTRIES)
    }

    pub fn with_capacity(min_ttl: Duration, max_entries: usize) -> Self {
        Self {
            min_ttl,
            max_entries: max_entries.max(1),
            inner: Mutex::default(),
        }
    }

    /// Remembers that `name` resolved to each `(address, ttl)` at `now`.
    pub fn remember(&self, name: &str, answers: &[(IpAddr, u32)], now: Instant) {
        if answers.is_empty() {
            return;
        }
        let name: Arc<str> = name.trim_end_matches('.').to_ascii_lowercase().into();
        let mut inner = self.inner.lock().expect("resolved names lock");
        for &(ip, ttl) in answers {
            let ip = ip.to_canonical();
            let expires = now + self.min_ttl.max(Duration::from_secs(u64::from(ttl)));
            inner.seq += 1;
            let seq = inner.seq;
            let list = inner.by_ip.entry(ip).or_default();
            match list.iter_mut().find(|e| e.name == name) {
                Some(e) => {
                    e.expires = e.expires.max(expires);
                    e.seq = seq;
                }
                None => {
                    list.push(Entry {
                        name: name.clone(),
                        expires,
                        seq,
                    });
                    inner.len += 1;
                }
            }
            inner.order.push_back((seq, ip, name.clone()));
        }
        while inner.len > self.max_entries {
            let Some((seq, ip, name)) = inner.order.pop_front() else {
                break;
            };
            inner.evict(seq, ip, &name);
        }
        // Stale order records (pairs answered again) are bounded too.
        if inner.order.len() > 2 * self.max_entries + 64 {
            inner.compact();
        }
    }

    /// Whether some unexpired name resolved to `ip` satisfies `matches`.
    pub fn resolved(&self, ip: IpAddr, now: Instant, matches: &dyn Fn(&str) -> bool) -> bool {
        let inner = self.inner.lock().expect("resolved names lock");
        inner
            .by_ip
            .get(&ip.to_canonical())
            .is_some_and(|list| list.iter().any(|e| e.expires > now && matches(&e.name)))
    }

    /// (name, address) pairs held.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("resolved names lock").len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Unexpired names by address, for `/config_dump` (name → addresses, sorted).
    pub fn dump(&self, now: Instant) -> std::collections::BTreeMap<String, Vec<IpAddr>> {
        let inner = self.inner.lock().expect("resolved names lock");
        let mut out: std::collections::BTreeMap<String, Vec<IpAddr>> = Default::default();
        for (ip, list) in &inner.by_ip {
            for e in list.iter().filter(|e| e.expires > now) {
                out.entry(e.name.to_string()).or_default().push(*ip);
            }
        }
        out.values_mut().for_each(|ips| ips.sort());
        out
    }
}

impl Inner {
    /// Removes the pair if `seq` is still its latest answer.
    fn evict(&mut self, seq: u64, ip: IpAddr, name: &str) {
        let Some(list) = self.by_ip.get_mut(&ip) else {
            return;
        };
        if let Some(i) = list.iter().position(|e| &*e.name == name && e.seq == seq) {
            list.swap_remove(i);
            self.len -= 1;
            if list.is_empty() {
                self.by_ip.remove(&ip);
            }
        }
    }

    /// Keeps only the order records of live pairs.
    fn compact(&mut self) {
        let by_ip = &self.by_ip;
        self.order.retain(|(seq, ip, name)| {
            by_ip
                .get(ip)
                .is_some_and(|l| l.iter().any(|e| e.seq == *seq && e.name == *name))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn answers_expire_after_the_longer_of_ttl_and_minimum() {
        let names = ResolvedNames::new(Duration::from_secs(60));
        let t0 = Instant::now();
        names.remember("API.example.com.", &[(ip("192.0.2.1"), 5)], t0);
        names.remember("long.example.com", &[(ip("192.0.2.2"), 600)], t0);
        let is = |n: &'static str| move |name: &str| name == n;
        assert!(names.resolved(ip("192.0.2.1"), t0, &is("api.example.com")));
        assert!(!names.resolved(ip("192.0.2.9"), t0, &is("api.example.com")));
        let later = t0 + Duration::from_secs(61);
        assert!(
            !names.resolved(ip("192.0.2.1"), later, &is("api.example.com")),
            "the minimum TTL passed"
        );
        assert!(names.resolved(ip("192.0.2.2"), later, &is("long.example.com")));
        assert!(!names.resolved(
            ip("192.0.2.2"),
            t0 + Duration::from_secs(601),
            &is("long.example.com")
        ));
        // IPv4-mapped addresses are the IPv4 address.
        assert!(names.resolved(ip("::ffff:192.0.2.1"), t0, &is("api.example.com")));
        assert_eq!(names.dump(t0)["api.example.com"], vec![ip("192.0.2.1")]);
    }

    #[test]
    fn the_oldest_pairs_are_evicted_past_the_bound() {
        let names = ResolvedNames::with_capacity(Duration::from_secs(3600), 3);
        let t = Instant::now();
        let any = |_: &str| true;
        names.remember("a", &[(ip("10.0.0.1"), 1)], t);
        names.remember("b", &[(ip("10.0.0.2"), 1)], t);
        names.remember("c", &[(ip("10.0.0.3"), 1)], t);
        // "a" answered again: now the newest.
        names.remember("a", &[(ip("10.0.0.1"), 1)], t);
        names.remember("d", &[(ip("10.0.0.4"), 1)], t);
        assert_eq!(names.len(), 3);
        assert!(!names.resolved(ip("10.0.0.2"), t, &any), "b was the oldest");
        for kept in ["10.0.0.1", "10.0.0.3", "10.0.0.4"] {
            assert!(names.resolved(ip(kept), t, &any), "{kept}");
        }
        // Answering the same pair over and over keeps the order queue bounded.
        for _ in 0..1000 {
            names.remember("a", &[(ip("10.0.0.1"), 1)], t);
        }
        assert!(names.inner.lock().unwrap().order.len() <= 2 * 3 + 64 + 1);
        assert_eq!(names.len(), 3);
    }
}

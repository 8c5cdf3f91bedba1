//! Flow records: what happened to each connection ztunnel saw (opened, closed with its bytes and
//! duration, denied with the deciding policy, failed with the reason), kept in a bounded ring of
//! recent events and streamed live to admin clients (`/flows` on 15000, newline-delimited
//! JSON), as `hubble observe` reads Cilium's.
//!
//! The data path only builds the event and hands it over: one `Arc` per connection open and
//! one per close, a short lock on the ring, and a non-blocking broadcast send. A reader that
//! cannot keep up loses events (counted, and told with a `{"dropped":N}` line); it never slows
//! the connections it watches.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::broadcast;

/// Events kept for a reader that connects later.
pub const KEPT: usize = 1024;
/// Events a live reader may fall behind before it loses some.
const LIVE_BUFFER: usize = 1024;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Opened,
    Closed,
    Denied,
    Failed,
}

impl Kind {
    /// The verdict a reader filters on: `allowed` (opened, closed), `denied`, `failed`.
    pub fn verdict(self) -> &'static str {
        match self {
            Kind::Opened | Kind::Closed => "allowed",
            Kind::Denied => "denied",
            Kind::Failed => "failed",
        }
    }
}

/// One end of a connection, as far as ztunnel knows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Peer {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub workload: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
}

impl Peer {
    /// Whether `name` (`namespace/workload` or `workload`) names this end.
    fn is(&self, name: &str) -> bool {
        match name.split_once('/') {
            Some((ns, w)) => self.namespace == ns && self.workload == w,
            None => self.workload == name,
        }
    }
}

/// Who talked to whom: shared by a connection's open and close events.
#[derive(Debug, Serialize)]
pub struct Flow {
    /// `source` (ztunnel on the client's side) or `destination`.
    pub reporter: &'static str,
    pub source: Peer,
    pub destination: Peer,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service: String,
    pub mtls: bool,
}

/// One event.
#[derive(Debug, Serialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub event: Kind,
    pub verdict: &'static str,
    #[serde(flatten)]
    pub flow: Arc<Flow>,
    /// Istio's response flag for a refusal (`DENY`, `CONNECT`, `NR`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flag: Option<&'static str>,
    /// Why it was denied (the deciding policy and rule) or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Closed: client → server bytes, server → client bytes, and how long it was open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Event {
    pub fn new(event: Kind, flow: Arc<Flow>) -> Self {
        Self {
            time_ms: now_ms(),
            event,
            verdict: event.verdict(),
            flow,
            flag: None,
            reason: None,
            bytes_received: None,
            bytes_sent: None,
            duration_ms: None,
        }
    }

    pub fn closed(flow: Arc<Flow>, received: u64, sent: u64, open_for: Duration) -> Self {
        Self {
            bytes_received: Some(received),
            bytes_sent: Some(sent),
            duration_ms: Some(open_for.as_millis() as u64),
            ..Self::new(Kind::Closed, flow)
        }
    }

    pub fn refused(kind: Kind, flow: Arc<Flow>, flag: &'static str, reason: String) -> Self {
        Self {
            flag: Some(flag),
            reason: Some(reason),
            ..Self::new(kind, flow)
        }
    }
}

/// What a reader wants to see; every field set must match.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Either end's namespace.
    pub namespace: Option<String>,
    /// Either end (`namespace/workload` or `workload`).
    pub workload: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// `allowed`, `denied` or `failed`.
    pub verdict: Option<String>,
}

impl Filter {
    /// From a query string: `namespace=`, `workload=`, `from=`, `to=`, `verdict=` (other keys
    /// are left to the caller). An unknown verdict is an error naming it.
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut f = Filter::default();
        for (k, v) in query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, decode(v)))
        {
            match k {
                "namespace" => f.namespace = Some(v),
                "workload" => f.workload = Some(v),
                "from" => f.from = Some(v),
                "to" => f.to = Some(v),
                "verdict" if ["allowed", "denied", "failed"].contains(&v.as_str()) => {
                    f.verdict = Some(v)
                }
                "verdict" => return Err(format!("verdict={v}: want allowed, denied or failed")),
                _ => {}
            }
        }
        Ok(f)
    }

    pub fn matches(&self, e: &Event) -> bool {
        let (src, dst) = (&e.flow.source, &e.flow.destination);
        self.namespace
            .as_deref()
            .is_none_or(|ns| src.namespace == ns || dst.namespace == ns)
            && self
                .workload
                .as_deref()
                .is_none_or(|w| src.is(w) || dst.is(w))
            && self.from.as_deref().is_none_or(|w| src.is(w))
            && self.to.as_deref().is_none_or(|w| dst.is(w))
            && self.verdict.as_deref().is_none_or(|v| e.verdict == v)
    }
}

/// The value of `key` in a query string, `%XX` escapes and `+` decoded.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(decode)
}

/// `%XX` escapes and `+` of a query value.
fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The recent events and the live stream.
pub struct FlowLog {
    recent: Mutex<VecDeque<Arc<Event>>>,
    live: broadcast::Sender<Arc<Event>>,
    dropped: AtomicU64,
    /// `FLOW_RECORDS=false` turns recording off (the data path then builds no event).
    enabled: AtomicBool,
}

impl Default for FlowLog {
    fn default() -> Self {
        Self {
            recent: Mutex::new(VecDeque::with_capacity(KEPT)),
            live: broadcast::channel(LIVE_BUFFER).0,
            dropped: AtomicU64::new(0),
            enabled: AtomicBool::new(true),
        }
    }
}

impl FlowLog {
    /// Whether events are recorded; callers check before building one.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Keeps `event` and hands it to the live readers (never waits for them).
    pub fn record(&self, event: Event) {
        let event = Arc::new(event);
        {
            let mut recent = self.recent.lock().expect("flow ring lock");
            if recent.len() == KEPT {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(event);
        }
    }

    /// The kept events that match, oldest first.
    pub fn recent(&self, filter: &Filter) -> Vec<Arc<Event>> {
        self.recent
            .lock()
            .expect("flow ring lock")
            .iter()
            .filter(|e| filter.matches(e))
            .cloned()
            .collect()
    }

    /// A live reader from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.live.subscribe()
    }

    /// Counts events a slow reader lost.
    pub fn lost(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Events slow readers lost so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One NDJSON line for `event`.
pub fn line(event: &Event) -> bytes::Bytes {
    let mut out = serde_json::to_vec(event).expect("serializable event");
    out.push(b'\n');
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src: (&str, &str), dst: (&str, &str)) -> Arc<Flow> {
        let peer = |(ns, w): (&str, &str)| Peer {
            namespace: ns.into(),
            workload: w.into(),
            ..Peer::default()
        };
        Arc::new(Flow {
            reporter: "destination",
            source: peer(src),
            destination: peer(dst),
            service: String::new(),
            mtls: true,
        })
    }

    #[test]
    fn the_ring_keeps_the_latest_events_only() {
        let log = FlowLog::default();
        let f = flow(("a", "client"), ("b", "server"));
        for _ in 0..KEPT + 10 {
            log.record(Event::new(Kind::Opened, f.clone()));
        }
        log.record(Event::refused(Kind::Denied, f, "DENY", "b/deny-all".into()));
        let all = log.recent(&Filter::default());
        assert_eq!(all.len(), KEPT);
        assert_eq!(all.last().unwrap().event, Kind::Denied);
    }

    #[test]
    fn filters_match_either_end_and_the_verdict() {
        let f = flow(("shop", "client"), ("shop", "cart"));
        let denied = Event::refused(Kind::Denied, f.clone(), "DENY", "shop/deny".into());
        let opened = Event::new(Kind::Opened, f);
        let q = |s: &str| Filter::from_query(s).unwrap();
        assert!(q("verdict=denied").matches(&denied));
        assert!(!q("verdict=denied").matches(&opened));
        assert!(q("from=shop%2Fclient&to=cart").matches(&opened));
        assert!(!q("from=cart").matches(&opened));
        assert!(q("workload=cart&namespace=shop").matches(&opened));
        assert!(!q("namespace=other").matches(&opened));
        assert_eq!(
            Filter::from_query("verdict=maybe").unwrap_err(),
            "verdict=maybe: want allowed, denied or failed"
        );
    }

    #[test]
    fn a_slow_reader_loses_events_and_the_writer_never_waits() {
        let log = FlowLog::default();
        let mut slow = log.subscribe();
        let f = flow(("a", "x"), ("b", "y"));
        let started = std::time::Instant::now();
        for _ in 0..LIVE_BUFFER * 3 {
            log.record(Event::new(Kind::Opened, f.clone()));
        }
        // The writer never blocked on the reader that read nothing.
        assert!(started.elapsed() < Duration::from_secs(2));
        match slow.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                assert_eq!(n as usize, LIVE_BUFFER * 2)
            }
            other => panic!("expected the reader to have lagged: {other:?}"),
        }
    }

    #[test]
    fn events_serialize_as_one_json_line() {
        let f = flow(("shop", "client"), ("shop", "cart"));
        let e = Event::closed(f, 10, 20, Duration::from_millis(1500));
        let text = String::from_utf8(line(&e).to_vec()).unwrap();
        assert!(text.ends_with('\n') && !text[..text.len() - 1].contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["event"], "closed");
        assert_eq!(v["verdict"], "allowed");
        assert_eq!(v["source"]["workload"], "client");
        assert_eq!(v["bytes_sent"], 20);
        assert_eq!(v["duration_ms"], 1500);
    }
}

//! Flow records: what happened to each connection ztunnel saw (opened, closed with its bytes and
//! duration, denied with the deciding policy, failed with the reason), kept in a bounded ring of
//! recent events and streamed live to admin clients (`/flows` on 15000, newline-delimited
//! JSON), as `hubble observe` reads Cilium's.
//!
//! The data path only builds the event and hands it over: one `Arc` per connection open and
//! one per close, a short lock on the ring, and a non-blocking broadcast send. A reader that
//! cannot keep up loses events (counted, and told with a `{"dropped":N}` line); it never slows
//! the connections it watches. The ring, the live stream and the `/flows` body are
//! `meshcore::flow_ring`'s (shared with the waypoint's request records); this module holds the
//! connection events and their filters.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

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

pub use meshcore::flow_ring::{Filter, Peer};

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

impl Event {
    pub fn new(event: Kind, flow: Arc<Flow>) -> Self {
        Self {
            time_ms: meshcore::flow_ring::now_ms(),
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

impl meshcore::flow_ring::Ends for Event {
    fn source(&self) -> &Peer {
        &self.flow.source
    }

    fn destination(&self) -> &Peer {
        &self.flow.destination
    }

    fn verdict(&self) -> &str {
        self.verdict
    }
}

pub use meshcore::flow_ring::{line, query_param, KEPT};

/// The recent events and the live stream (the shared ring, holding connection events).
pub type FlowLog = meshcore::flow_ring::FlowRing<Event>;

#[cfg(test)]
mod tests {
    use super::*;
    use meshcore::flow_ring::LIVE_BUFFER;
    use tokio::sync::broadcast;

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
        let all = log.recent(|e| Filter::default().matches(e));
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

//! The part of flow records every proxy shares: a bounded ring of recent events, a live
//! broadcast that never waits for its readers, and the newline-delimited JSON body an admin
//! endpoint (`/flows`) serves from them. ztunnel records connections into one, the waypoint
//! requests; each proxy owns its event type and its filters.
//!
//! The data path only builds the event and hands it over: one `Arc`, a short lock on the ring
//! and a non-blocking broadcast send (none when nobody follows). A reader that cannot keep up
//! loses events (counted, and told with a `{"dropped":N}` line); it never slows the traffic it
//! watches.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

/// Events kept for a reader that connects later.
pub const KEPT: usize = 1024;
/// Events a live reader may fall behind before it loses some.
pub const LIVE_BUFFER: usize = 1024;
/// How often a following reader's task drains the live stream. Polled, not awaited: a reader
/// parked on the channel would be woken by every event (a cross-thread wake-up each, measured
/// in ztunnel's `benches/flows.rs`); draining every 50 ms costs the data path nothing and a
/// viewer nothing it can see.
pub const POLL: Duration = Duration::from_millis(50);

/// Milliseconds since the Unix epoch, as events carry their time.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The recent events and the live stream of one proxy.
pub struct FlowRing<E> {
    recent: Mutex<VecDeque<Arc<E>>>,
    live: broadcast::Sender<Arc<E>>,
    dropped: AtomicU64,
    /// `FLOW_RECORDS=false` turns recording off (the data path then builds no event).
    enabled: AtomicBool,
}

impl<E> Default for FlowRing<E> {
    fn default() -> Self {
        Self {
            recent: Mutex::new(VecDeque::with_capacity(KEPT)),
            live: broadcast::channel(LIVE_BUFFER).0,
            dropped: AtomicU64::new(0),
            enabled: AtomicBool::new(true),
        }
    }
}

impl<E> FlowRing<E> {
    /// Whether events are recorded; callers check before building one.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Keeps `event` and hands it to the live readers (never waits for them).
    pub fn record(&self, event: E) {
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

    /// The kept events that `keep` accepts, oldest first.
    pub fn recent(&self, keep: impl Fn(&E) -> bool) -> Vec<Arc<E>> {
        self.recent
            .lock()
            .expect("flow ring lock")
            .iter()
            .filter(|e| keep(e))
            .cloned()
            .collect()
    }

    /// A live reader from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<E>> {
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
pub fn line<E: Serialize>(event: &E) -> Bytes {
    let mut out = serde_json::to_vec(event).expect("serializable event");
    out.push(b'\n');
    out.into()
}

/// The stream options of a `/flows` request: `follow=true|1` and `limit=N` (the last N kept
/// events that match; default all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRequest {
    pub follow: bool,
    pub limit: usize,
}

impl StreamRequest {
    pub fn from_query(query: &str) -> Result<Self, String> {
        let limit = match query_param(query, "limit").map(|l| l.parse::<usize>()) {
            None => KEPT,
            Some(Ok(n)) => n,
            Some(Err(_)) => return Err("limit: want a number".into()),
        };
        Ok(Self {
            follow: matches!(query_param(query, "follow").as_deref(), Some("true" | "1")),
            limit,
        })
    }
}

impl<E: Serialize + Send + Sync + 'static> FlowRing<E> {
    /// The `/flows` answer: the last `limit` kept events that `keep` accepts as NDJSON, then,
    /// when following, every new one it accepts. `on_lost` is told how many events a reader
    /// that fell behind lost (it also gets a `{"dropped":N}` line); it should call
    /// [`FlowRing::lost`] on the ring. Following needs a tokio runtime (a task per reader).
    pub fn serve(
        &self,
        request: StreamRequest,
        keep: impl Fn(&E) -> bool + Send + 'static,
        on_lost: impl Fn(u64) + Send + 'static,
    ) -> FlowBody {
        // Subscribed before the ring is read: an event in between may show twice, none is missed.
        let live = request.follow.then(|| self.subscribe());
        let recent = self.recent(&keep);
        let recent = recent[recent.len().saturating_sub(request.limit)..].to_vec();
        let Some(mut live) = live else {
            let body: Vec<u8> = recent.iter().flat_map(|e| line(&**e).to_vec()).collect();
            return FlowBody::Once(Some(body.into()));
        };
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            use broadcast::error::TryRecvError;
            for e in &recent {
                if tx.send(line(&**e)).await.is_err() {
                    return;
                }
            }
            loop {
                let next = match live.try_recv() {
                    Ok(e) if keep(&e) => line(&*e),
                    Ok(_) => continue,
                    Err(TryRecvError::Empty) => {
                        if tx.is_closed() {
                            return; // the reader left
                        }
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                    Err(TryRecvError::Lagged(n)) => {
                        on_lost(n);
                        Bytes::from(format!("{{\"dropped\":{n}}}\n"))
                    }
                    Err(TryRecvError::Closed) => return,
                };
                if tx.send(next).await.is_err() {
                    return; // the reader left
                }
            }
        });
        FlowBody::Live(rx)
    }
}

/// A `/flows` response body: the kept events at once, or a live stream fed by a channel.
pub enum FlowBody {
    Once(Option<Bytes>),
    Live(mpsc::Receiver<Bytes>),
}

impl http_body::Body for FlowBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match &mut *self {
            FlowBody::Once(b) => Poll::Ready(b.take().map(|b| Ok(http_body::Frame::data(b)))),
            FlowBody::Live(rx) => rx
                .poll_recv(cx)
                .map(|b| b.map(|b| Ok(http_body::Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, FlowBody::Once(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            FlowBody::Once(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
            FlowBody::Once(None) => http_body::SizeHint::with_exact(0),
            FlowBody::Live(_) => http_body::SizeHint::default(),
        }
    }
}

/// One end of a flow or request, as far as the proxy knows it (the same JSON fields in
/// ztunnel's and the waypoint's records).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Peer {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub workload: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::SocketAddr>,
}

impl Peer {
    /// Whether `name` (`namespace/workload` or `workload`) names this end.
    pub fn is(&self, name: &str) -> bool {
        match name.split_once('/') {
            Some((ns, w)) => self.namespace == ns && self.workload == w,
            None => self.workload == name,
        }
    }
}

/// What a [`Filter`] looks at in an event.
pub trait Ends {
    fn source(&self) -> &Peer;
    fn destination(&self) -> &Peer;
    /// `allowed`, `denied` or `failed`.
    fn verdict(&self) -> &str;
    /// Whether `name` (`namespace/name` or `name`) names the Service the event was addressed
    /// to; `to=` and `workload=` accept it as well as the destination workload.
    fn service_is(&self, _name: &str) -> bool {
        false
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

    pub fn matches(&self, e: &impl Ends) -> bool {
        let (src, dst) = (e.source(), e.destination());
        self.namespace
            .as_deref()
            .is_none_or(|ns| src.namespace == ns || dst.namespace == ns)
            && self
                .workload
                .as_deref()
                .is_none_or(|w| src.is(w) || dst.is(w) || e.service_is(w))
            && self.from.as_deref().is_none_or(|w| src.is(w))
            && self
                .to
                .as_deref()
                .is_none_or(|w| dst.is(w) || e.service_is(w))
            && self.verdict.as_deref().is_none_or(|v| e.verdict() == v)
    }
}

/// The value of `key` in a query string, `%XX` escapes and `+` decoded.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(decode)
}

/// Every value of `key` in a query string (a repeated parameter), decoded.
pub fn query_params<'q>(query: &'q str, key: &'q str) -> impl Iterator<Item = String> + 'q {
    query
        .split('&')
        .filter_map(move |kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(decode)
}

/// `%XX` escapes and `+` of a query value.
pub fn decode(v: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[derive(Serialize)]
    struct Ev {
        n: usize,
    }

    #[test]
    fn the_ring_keeps_the_latest_events_only() {
        let ring = FlowRing::default();
        for n in 0..KEPT + 10 {
            ring.record(Ev { n });
        }
        let all = ring.recent(|_| true);
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].n, 10);
        assert_eq!(all.last().unwrap().n, KEPT + 9);
        assert_eq!(ring.recent(|e| e.n % 2 == 0).len(), KEPT / 2);
    }

    #[test]
    fn a_slow_reader_loses_events_and_the_writer_never_waits() {
        let ring = FlowRing::default();
        let mut slow = ring.subscribe();
        let started = std::time::Instant::now();
        for n in 0..LIVE_BUFFER * 3 {
            ring.record(Ev { n });
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        match slow.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                assert_eq!(n as usize, LIVE_BUFFER * 2)
            }
            other => panic!("expected the reader to have lagged: {:?}", other.is_ok()),
        }
    }

    #[test]
    fn stream_requests_from_the_query() {
        assert_eq!(
            StreamRequest::from_query("follow=true&limit=5").unwrap(),
            StreamRequest {
                follow: true,
                limit: 5
            }
        );
        assert_eq!(
            StreamRequest::from_query("").unwrap(),
            StreamRequest {
                follow: false,
                limit: KEPT
            }
        );
        assert!(StreamRequest::from_query("limit=x").is_err());
        assert_eq!(
            query_params("header=a%3Ab&x=1&header=c:d", "header").collect::<Vec<_>>(),
            ["a:b", "c:d"]
        );
        assert_eq!(
            query_param("from=a%2Fb+c", "from").as_deref(),
            Some("a/b c")
        );
    }

    #[tokio::test]
    async fn served_bodies_are_ndjson_and_a_lagging_follower_is_told() {
        let ring = Arc::new(FlowRing::default());
        for n in 0..5 {
            ring.record(Ev { n });
        }
        let once = ring.serve(
            StreamRequest {
                follow: false,
                limit: 2,
            },
            |e: &Ev| e.n != 4,
            |_| {},
        );
        let body = once.collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{\"n\":2}\n{\"n\":3}\n");

        let counter = ring.clone();
        let mut live = ring.serve(
            StreamRequest {
                follow: true,
                limit: 0,
            },
            |_| true,
            move |n| counter.lost(n),
        );
        // More than the live buffer before the reader's task drains: some are lost.
        for n in 0..LIVE_BUFFER * 2 {
            ring.record(Ev { n });
        }
        let mut text = String::new();
        while !text.contains("dropped") {
            let frame = live.frame().await.unwrap().unwrap();
            text.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
        }
        assert!(ring.dropped() > 0);
    }
}

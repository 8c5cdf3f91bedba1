//! Sending one request upstream under its rule's policy: timeouts, retries (on another
//! endpoint where Istio's semantics ask for it), fault injection, the connection pool's limit
//! and the outcome fed to outlier detection.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri, Version as HttpVersion};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{self, Body};
use super::rand::next_u64 as random;
use super::upstream::{Destination, UpstreamError, Version};
use super::Proxy;
use crate::config::{PickError, ServiceView};
use crate::route::{CompiledRule, Fault, FaultAbort};
use crate::traffic::balance;

/// Request bodies up to this size are buffered so a retry or a mirror can send them again.
pub(super) const REPLAYABLE_BODY: u64 = 64 * 1024;

/// Why the waypoint answered itself, with Envoy's response flag.
pub(super) struct Local {
    pub status: StatusCode,
    pub flag: &'static str,
    pub body: &'static str,
}

pub(super) const fn local(status: StatusCode, flag: &'static str, body: &'static str) -> Local {
    Local { status, flag, body }
}

/// Microseconds since the process started: the clock of ejections, round-trip estimates and
/// retry budgets.
fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

pub(super) fn now_ms() -> u64 {
    now_us() / 1000
}

/// The header telling the upstream which try this is (Envoy's name).
const ATTEMPT_COUNT: &str = "x-envoy-attempt-count";

/// A pick that failed, as the client sees it.
pub(super) fn pick_error(e: PickError) -> Local {
    match e {
        PickError::NoHealthy => local(StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream"),
        PickError::UnknownSubset => local(
            StatusCode::SERVICE_UNAVAILABLE,
            "NC",
            "no such subset in the destination's DestinationRule\n",
        ),
        PickError::Overflow => local(
            StatusCode::SERVICE_UNAVAILABLE,
            "UO",
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        ),
    }
}

/// What a fault rule does to this request: nothing, after a delay, or an answer instead.
pub(super) async fn inject(fault: &Fault, grpc: bool) -> Option<Response<Body>> {
    let hit = |percent: f64| (random() % 1_000_000) as f64 / 10_000.0 < percent;
    if let Some((delay, percent)) = fault.delay {
        if hit(percent) {
            tokio::time::sleep(delay).await;
        }
    }
    let (abort, percent) = fault.abort?;
    if !hit(percent) {
        return None;
    }
    let response = match (abort, grpc) {
        (FaultAbort::Http(status), false) => Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "text/plain")
            .body(body::full("fault filter abort")),
        (FaultAbort::Http(status), true) => grpc_error(http_to_grpc(status)),
        (FaultAbort::Grpc(code), _) => grpc_error(code),
    };
    Some(response.expect("static response"))
}

fn grpc_error(code: u32) -> Result<Response<Body>, http::Error> {
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("grpc-status", code.to_string())
        .header("grpc-message", "fault filter abort")
        .body(body::full(Bytes::new()))
}

/// Envoy's mapping of an HTTP status to a gRPC status.
pub(super) fn http_to_grpc(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Where the endpoint came from, so a retry can choose again and outcomes reach outlier
/// detection: the Service, the subset and the Service port.
pub(super) struct Picked<'a> {
    pub service: &'a ServiceView,
    pub subset: Option<&'a str>,
    pub port: u16,
    pub target_port: u16,
    pub index: usize,
}

/// One request's way upstream: the parts a retry sends again.
pub(super) struct Upstreamed<'a> {
    pub proxy: &'a Arc<Proxy>,
    pub dest: Destination,
    pub picked: Option<Picked<'a>>,
    pub version: Version,
    pub method: Method,
    pub uri: Uri,
    pub headers: http::HeaderMap,
}

impl Upstreamed<'_> {
    fn request(&self, body: Body, attempt: u32) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        if attempt > 1 {
            req.headers_mut()
                .insert(ATTEMPT_COUNT, http::HeaderValue::from(attempt));
        }
        if self.version == Version::Http2 {
            *req.version_mut() = HttpVersion::HTTP_2;
        }
        req
    }

    /// One try to the current endpoint, counted against the connection pool and reported to
    /// outlier detection.
    pub async fn once(
        &self,
        body: Body,
        timeout: Option<Duration>,
        attempt: u32,
    ) -> Result<Response<Incoming>, Local> {
        let _in_flight = match &self.picked {
            Some(p) => Some(
                p.service
                    .begin(p.index, p.subset, p.port)
                    .map_err(pick_error)?,
            ),
            None => None,
        };
        let started = Instant::now();
        let send = self
            .proxy
            .upstream
            .send(&self.dest, self.version, self.request(body, attempt));
        let result = match timeout {
            Some(t) => tokio::time::timeout(t, send).await.map_err(|_| {
                local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "UT",
                    "upstream request timeout",
                )
            })?,
            None => send.await,
        };
        let result = result.map_err(|e| {
            tracing::debug!(target = %self.dest.target, "upstream: {e}");
            match e {
                UpstreamError::Request { .. } => local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UC",
                    "upstream connect error or disconnect/reset before headers",
                ),
                _ => local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UF",
                    "upstream connect error",
                ),
            }
        });
        if let Some(p) = &self.picked {
            let status = result.as_ref().ok().map(|r| r.status().as_u16());
            p.service
                .report(p.index, p.subset, p.port, status, now_ms());
            if status.is_some() {
                p.service.state[p.index]
                    .observe_rtt(started.elapsed().as_micros() as u64, now_us());
            }
        }
        result
    }

    /// Another endpoint for a retry, unlike the last one where there is a choice (Istio's
    /// previous-hosts retry predicate).
    fn repick(&mut self) {
        let Some(p) = &mut self.picked else { return };
        let headers = http::HeaderMap::new();
        for _ in 0..3 {
            let req = balance::Request {
                headers: &headers,
                query: None,
                source_ip: None,
                random: random(),
            };
            let Ok(choice) = p.service.pick(p.subset, p.port, &req, now_ms()) else {
                return;
            };
            if choice.index != p.index || p.service.endpoints.len() == 1 {
                let endpoint = &p.service.endpoints[choice.index];
                p.index = choice.index;
                self.dest = Destination {
                    target: std::net::SocketAddr::new(endpoint.address, p.target_port),
                    hbone: endpoint.hbone,
                    expected: p.service.expected_identities(endpoint),
                };
                return;
            }
        }
    }

    /// Sends with the rule's timeouts and retries: `timeouts.request` bounds the whole exchange,
    /// `backendRequest` each try; a retry follows a listed status code or a failed connection
    /// (Gateway API), or Istio's `retryOn` conditions, which also move to another endpoint.
    pub async fn with_policy(
        mut self,
        rule: &CompiledRule,
        body: Body,
        attempts: &mut u32,
    ) -> Result<Response<Incoming>, Local> {
        let total = rule.timeouts.request;
        let exchange = async {
            let has_body = !hyper::body::Body::is_end_stream(&body);
            let budget = self.picked.as_ref().map(|p| &p.service.retry_budget);
            if let Some(b) = budget {
                b.request(now_us() / 1_000_000);
            }
            let Some(retry) = rule
                .retry
                .as_ref()
                .filter(|r| r.attempts > 0)
                .filter(|r| !(has_body && r.on.as_ref().is_some_and(|on| on.bodyless_only)))
            else {
                *attempts = 1;
                return self.once(body, rule.timeouts.backend_request, 1).await;
            };
            let Some(replay) = replayable(body).await? else {
                *attempts = 1;
                return Err(local(
                    StatusCode::BAD_REQUEST,
                    "-",
                    "request body unreadable\n",
                ));
            };
            let tries = retry.attempts + 1;
            let mut last = None;
            for n in 0..tries {
                *attempts = n + 1;
                if n > 0 && retry.on.is_some() {
                    self.repick();
                }
                let result = self
                    .once(
                        body::full(replay.clone()),
                        rule.timeouts.backend_request,
                        n + 1,
                    )
                    .await;
                let retriable = match (&result, &retry.on) {
                    (Ok(r), on) => {
                        let status = r.status().as_u16();
                        retry.codes.contains(&status)
                            || on
                                .as_ref()
                                .is_some_and(|on| on.status(status, body::grpc_status(r.headers())))
                    }
                    (Err(l), None) => l.flag == "UF" || l.flag == "UC",
                    (Err(l), Some(on)) => match l.flag {
                        "UF" => on.failure(false),
                        "UC" => on.failure(true),
                        "UT" => on.five_xx || on.gateway_error,
                        _ => false,
                    },
                };
                if !retriable || n + 1 == tries {
                    return result;
                }
                // The retry budget has the last word, so retries cannot pile load onto a
                // failing Service.
                let budget = self.picked.as_ref().map(|p| &p.service.retry_budget);
                if budget.is_some_and(|b| !b.try_retry(now_us() / 1_000_000)) {
                    tracing::debug!(target = %self.dest.target, "retry budget exhausted");
                    return result;
                }
                last = Some(result);
                if let Some(backoff) = retry.backoff {
                    tokio::time::sleep(backoff).await;
                }
            }
            last.expect("at least one try")
        };
        match total {
            Some(t) => tokio::time::timeout(t, exchange).await.map_err(|_| {
                local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "UT",
                    "upstream request timeout",
                )
            })?,
            None => exchange.await,
        }
    }
}

/// The whole body, read so a retry can send it again; bodies over 64 KiB are refused (413)
/// on routes with retries rather than sent once unretried behind the user's back.
async fn replayable(mut body: Body) -> Result<Option<Bytes>, Local> {
    let mut all = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| local(StatusCode::BAD_REQUEST, "-", "request body unreadable\n"))?;
        if let Some(data) = frame.data_ref() {
            if all.len() + data.len() > REPLAYABLE_BODY as usize {
                return Err(local(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "-",
                    "request body too large to retry\n",
                ));
            }
            all.extend_from_slice(data);
        }
    }
    Ok(Some(all.freeze()))
}

//! Header handling on the way through: hop-by-hop headers (RFC 9110 §7.6.1) removed, request id
//! kept or made, the W3C trace continued with a new span for this hop, `x-forwarded-proto`, and
//! optionally the client's identity in `x-forwarded-client-cert`.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, TE, TRANSFER_ENCODING, UPGRADE,
};
use meshcore::hbone::TraceParent;

use super::rand::next_u64;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
const PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");
const TRAILER: HeaderName = HeaderName::from_static("trailer");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Removes hop-by-hop headers, including those the `Connection` header names. An `Upgrade`
/// (websocket) is kept when `keep_upgrade`, with `Connection: upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        KEEP_ALIVE,
        PROXY_CONNECTION,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        TRANSFER_ENCODING,
        TRAILER,
    ] {
        headers.remove(name);
    }
    // `te: trailers` is the one TE value that may cross a hop (gRPC needs it).
    if headers.get(TE).is_some_and(|v| v != "trailers") {
        headers.remove(TE);
    }
    headers.remove(CONNECTION);
    if keep_upgrade && headers.contains_key(UPGRADE) {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// The request's id: kept when the client sent one, else made. Returned for the access log.
pub fn ensure_request_id(headers: &mut HeaderMap) -> String {
    if let Some(id) = headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok()) {
        return id.to_owned();
    }
    let (hi, lo) = (next_u64(), next_u64());
    let id = format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        (hi >> 32) as u32,
        (hi >> 16) as u16,
        hi as u16 & 0xfff,
        ((lo >> 48) as u16 & 0x3fff) | 0x8000,
        lo & 0xffff_ffff_ffff
    );
    headers.insert(REQUEST_ID, HeaderValue::from_str(&id).expect("hex"));
    id
}

/// Sends `context` (this hop's span) upstream as the request's `traceparent`.
pub fn set_trace(headers: &mut HeaderMap, context: TraceParent) {
    headers.insert(
        TRACEPARENT,
        HeaderValue::from_str(&context.encode()).expect("hex"),
    );
}

/// Continues the client's trace with a new span for this hop, or starts one; returns the trace id.
pub fn continue_trace(headers: &mut HeaderMap) -> u128 {
    let next = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .map(|t| TraceParent {
            span_id: next_u64() | 1,
            ..t
        })
        .unwrap_or_else(|| TraceParent {
            trace_id: (u128::from(next_u64()) << 64 | u128::from(next_u64())) | 1,
            span_id: next_u64() | 1,
            sampled: false,
        });
    headers.insert(
        TRACEPARENT,
        HeaderValue::from_str(&next.encode()).expect("hex"),
    );
    next.trace_id
}

pub fn set_forwarded_proto(headers: &mut HeaderMap) {
    headers
        .entry(FORWARDED_PROTO)
        .or_insert(HeaderValue::from_static("http"));
}

/// `x-forwarded-client-cert: By=<waypoint>;URI=<client>`, replacing whatever the client sent.
pub fn set_client_cert(headers: &mut HeaderMap, by: &str, client: Option<&str>) {
    headers.remove(CLIENT_CERT);
    if let Some(client) = client {
        if let Ok(v) = HeaderValue::from_str(&format!("By={by};URI={client}")) {
            headers.insert(CLIENT_CERT, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-app"], "kept");

        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn request_id_kept_or_made_and_trace_continued() {
        let mut h = map(&[("x-request-id", "abc")]);
        assert_eq!(ensure_request_id(&mut h), "abc");
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 36);
        assert_eq!(h["x-request-id"], id.as_str());

        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut h = map(&[("traceparent", parent)]);
        let trace = continue_trace(&mut h);
        assert_eq!(trace, 0x0af7651916cd43dd8448eb211c80319c);
        let next = h["traceparent"].to_str().unwrap();
        assert!(next.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert_ne!(next, parent, "a new span id for this hop");
    }
}

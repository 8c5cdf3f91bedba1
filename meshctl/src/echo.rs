//! The echo server for tests and demos: it answers with what it saw, so a test can tell which
//! pod answered, from which address the connection came and what headers arrived.
//!
//! - HTTP port: HTTP/1.1 and HTTP/2 without TLS (h2c, prior knowledge) on the same port. Any
//!   request gets `200` (or NNN for a path `/status/NNN`, after `?delay=250ms` if asked) and a
//!   text body of `Key=Value` lines (below). A gRPC request
//!   (`content-type: application/grpc`, any method) gets one gRPC message back: an
//!   `EchoResponse{message = <the same lines>}` (field 1, string), then `grpc-status: 0`.
//! - TCP port: raw TCP, every byte echoed back; half-close honoured.
//!
//! ```text
//! Hostname=cart-1
//! Namespace=shop
//! Version=v1              (only when --app-version is given)
//! ServicePort=8080
//! Method=GET
//! URL=/path
//! Proto=HTTP/1.1
//! RemoteAddr=10.10.1.5:43212
//! RequestHeader=host:cart.shop.svc.cluster.local
//! ```

use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Who this echo server is.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub pod: String,
    pub namespace: String,
    /// The pod's `version` label (`Version=`), when it has one.
    pub version: String,
    /// Answer every HTTP request with this status (a broken pod, for resilience tests); a
    /// `/status/NNN` path still wins.
    pub fail_status: Option<u16>,
}

type Body = BoxBody<Bytes, Infallible>;

/// Serves HTTP/1.1, h2c and gRPC on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener, id: Arc<Identity>) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        // As gRPC servers do: an answer's frames (headers, data, trailers) go out at once.
        let _ = tcp.set_nodelay(true);
        let id = id.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let id = id.clone();
                async move { Ok::<_, Infallible>(answer(req, peer, port, &id).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Echoes every byte of every connection on `listener`.
pub async fn serve_tcp(listener: TcpListener) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let (mut r, mut w) = tcp.split();
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        });
    }
}

/// A `Key=Value` line of an answer's text (`Hostname`, `URL`, `Method`...).
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// A request header as the echo server saw it (`RequestHeader=name:value`, name in lower case).
pub fn request_header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("RequestHeader="))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
}

/// The text describing a request.
pub fn describe(
    method: &str,
    uri: &str,
    proto: &str,
    headers: &HeaderMap,
    peer: SocketAddr,
    port: u16,
    id: &Identity,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Hostname={}", id.pod);
    let _ = writeln!(out, "Namespace={}", id.namespace);
    if !id.version.is_empty() {
        let _ = writeln!(out, "Version={}", id.version);
    }
    let _ = writeln!(out, "ServicePort={port}");
    let _ = writeln!(out, "Method={method}");
    let _ = writeln!(out, "URL={uri}");
    let _ = writeln!(out, "Proto={proto}");
    let _ = writeln!(out, "RemoteAddr={peer}");
    let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        for value in headers.get_all(name) {
            let _ = writeln!(
                out,
                "RequestHeader={name}:{}",
                String::from_utf8_lossy(value.as_bytes())
            );
        }
    }
    out
}

async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
    port: u16,
    id: &Identity,
) -> Response<Body> {
    let proto = match req.version() {
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    // Host: the :authority in HTTP/2, the header in HTTP/1.1.
    let mut headers = req.headers().clone();
    if let (None, Some(authority)) = (headers.get("host"), req.uri().authority()) {
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            headers.insert("host", v);
        }
    }
    let uri = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.to_string());
    let text = describe(req.method().as_str(), &uri, proto, &headers, peer, port, id);
    let grpc = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    let (mut status, delay) = test_controls(req.uri());
    if let Some(code) = id
        .fail_status
        .and_then(|c| http::StatusCode::from_u16(c).ok())
    {
        if !req.uri().path().starts_with("/status/") {
            status = code;
        }
    }
    // Read (and drop) the request body, so clients that send one are not left waiting.
    let _ = req.into_body().collect().await;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if grpc {
        grpc_answer(&text)
    } else {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(text)).boxed())
            .expect("static response")
    }
}

/// What a test asks of the answer: `/status/NNN` answers with that status, `?delay=250ms` (or
/// `?delay=2s`) waits that long first (at most 30 s).
fn test_controls(uri: &http::Uri) -> (http::StatusCode, Option<std::time::Duration>) {
    let status = uri
        .path()
        .strip_prefix("/status/")
        .and_then(|code| code.split('/').next()?.parse::<u16>().ok())
        .and_then(|code| http::StatusCode::from_u16(code).ok())
        .unwrap_or(http::StatusCode::OK);
    let delay = uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| {
            let v = kv.strip_prefix("delay=")?;
            let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
            let n: u64 = n.parse().ok()?;
            let d = match unit {
                "ms" | "" => std::time::Duration::from_millis(n),
                "s" => std::time::Duration::from_secs(n),
                _ => return None,
            };
            Some(d.min(std::time::Duration::from_secs(30)))
        });
    (status, delay)
}

/// `EchoResponse{message = text}` as one gRPC message, then `grpc-status: 0` trailers.
fn grpc_answer(text: &str) -> Response<Body> {
    let mut message = BytesMut::new();
    message.put_u8(0x0a); // field 1, length-delimited
    put_varint(&mut message, text.len() as u64);
    message.put_slice(text.as_bytes());
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0); // not compressed
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = vec![
        Ok::<_, Infallible>(Frame::data(frame.freeze())),
        Ok(Frame::trailers(trailers)),
    ];
    Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        .expect("static response")
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

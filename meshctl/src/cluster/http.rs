//! HTTP from inside a pod, as its application would send it: HTTP/1.1 with any method and
//! headers, and HTTP/2 (h2c, prior knowledge) for gRPC. The socket is made inside the pod's
//! network namespace, so the request is captured by its ztunnel like any other.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::netns;

/// A response read whole.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub trailers: Vec<(String, String)>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A `Key=Value` line of the echo server's answer (`Hostname`, `URL`, `Method`...).
    pub fn echo(&self, key: &str) -> Option<&str> {
        crate::echo::field(&self.body, key)
    }

    /// A request header as the echo server saw it.
    pub fn request_header(&self, name: &str) -> Option<&str> {
        crate::echo::request_header(&self.body, name)
    }
}

/// One request: HTTP/1.1, or HTTP/2 when `http2`.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// The Host / :authority; the destination address when `None`.
    pub host: Option<&'a str>,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    pub http2: bool,
}

impl<'a> Request<'a> {
    pub fn get(path: &'a str) -> Self {
        Self {
            method: "GET",
            path,
            host: None,
            headers: &[],
            body: b"",
            http2: false,
        }
    }
}

/// Sends `req` to `dst` from inside `netns` and reads the whole answer (5 s limit).
pub fn send(netns: &str, dst: SocketAddr, req: &Request<'_>) -> std::io::Result<Answer> {
    let tcp = netns::run_in(netns, move || connect(dst))?;
    send_on(tcp, dst, req)
}

/// [`send`] from this process's own network namespace (a client outside the cluster).
pub fn send_here(dst: SocketAddr, req: &Request<'_>) -> std::io::Result<Answer> {
    send_on(connect(dst)?, dst, req)
}

fn connect(dst: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(3))?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn send_on(
    tcp: std::net::TcpStream,
    dst: SocketAddr,
    req: &Request<'_>,
) -> std::io::Result<Answer> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::from_std(tcp)?;
        tokio::time::timeout(Duration::from_secs(5), exchange(tcp, dst, req))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{dst}: no answer in 5s"),
                )
            })?
    })
}

async fn exchange(
    tcp: tokio::net::TcpStream,
    dst: SocketAddr,
    req: &Request<'_>,
) -> std::io::Result<Answer> {
    let host = req
        .host
        .map(str::to_owned)
        .unwrap_or_else(|| dst.to_string());
    let err = |e: hyper::Error| std::io::Error::other(e.to_string());
    let mut builder = http::Request::builder().method(req.method);
    builder = if req.http2 {
        builder
            .uri(format!("http://{host}{}", req.path))
            .version(http::Version::HTTP_2)
    } else {
        builder.uri(req.path).header("host", &host)
    };
    for (k, v) in req.headers {
        builder = builder.header(*k, *v);
    }
    let request = builder
        .body(Full::new(Bytes::copy_from_slice(req.body)))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let response = if req.http2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(err)?;
        tokio::spawn(conn);
        sender.send_request(request).await.map_err(err)?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(err)?;
        tokio::spawn(conn);
        sender.send_request(request).await.map_err(err)?
    };
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(err)?;
    let pairs = |h: &http::HeaderMap| {
        h.iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: pairs(&parts.headers),
        trailers: collected.trailers().map(pairs).unwrap_or_default(),
        body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
    })
}

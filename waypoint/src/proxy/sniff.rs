//! Protocol detection for ports of unknown protocol: the first bytes tell an HTTP/1 request
//! line or the HTTP/2 preface from anything else. What was read is replayed to whoever serves
//! the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
const METHODS: &[&[u8]] = &[
    b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
];
/// Longest prefix needed to decide: the preface line, or the longest method plus a space.
const DECIDE_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http,
    Tcp,
}

/// What `prefix` says so far: `None` while it could still become either.
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    if prefix.is_empty() {
        return None;
    }
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http);
    }
    for m in METHODS {
        let n = prefix.len().min(m.len() + 1);
        let mut want = m.to_vec();
        want.push(b' ');
        if prefix[..n] == want[..n] {
            return (n == want.len()).then_some(Detected::Http);
        }
    }
    Some(Detected::Tcp)
}

/// Reads until the bytes decide (or `timeout` passes: a silent client is TCP, as a
/// server-first protocol would be), returning the verdict and the stream with the bytes put back.
pub async fn detect<S: AsyncRead + Unpin>(
    mut stream: S,
    timeout: Duration,
) -> io::Result<(Detected, Rewind<S>)> {
    let mut buf = Vec::with_capacity(DECIDE_LEN);
    let deadline = tokio::time::Instant::now() + timeout;
    let verdict = loop {
        if let Some(v) = classify(&buf) {
            break v;
        }
        if buf.len() >= DECIDE_LEN {
            break Detected::Tcp;
        }
        let mut chunk = [0u8; DECIDE_LEN];
        let want = DECIDE_LEN - buf.len();
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..want])).await {
            Ok(Ok(0)) | Err(_) => break Detected::Tcp,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((
        verdict,
        Rewind {
            prefix: buf,
            offset: 0,
            inner: stream,
        },
    ))
}

/// A stream whose first bytes were already read and are served again before the rest.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(inner: S) -> Self {
        Self {
            prefix: Vec::new(),
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.offset < this.prefix.len() {
            let rest = &this.prefix[this.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            if this.offset == this.prefix.len() {
                this.prefix = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_request_lines_and_the_preface() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http));
        assert_eq!(classify(b"POST /x"), Some(Detected::Http));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nSM"), Some(Detected::Http));
        assert_eq!(classify(b"GE"), None, "could still be GET");
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"GETX"), Some(Detected::Tcp));
        assert_eq!(
            classify(b"\x16\x03\x01"),
            Some(Detected::Tcp),
            "TLS client hello"
        );
        assert_eq!(classify(b"SSH-2.0"), Some(Detected::Tcp));
    }

    #[tokio::test]
    async fn replays_what_it_read() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let (v, mut r) = detect(b, Duration::from_secs(1)).await.unwrap();
        assert_eq!(v, Detected::Http);
        drop(a);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_silent_client_is_tcp() {
        let (_a, b) = tokio::io::duplex(64);
        let (v, _) = detect(b, Duration::from_millis(20)).await.unwrap();
        assert_eq!(v, Detected::Tcp);
    }
}

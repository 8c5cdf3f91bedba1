//! One HBONE tunnel: an HTTP/2 stream seen as a byte stream (`AsyncRead + AsyncWrite`).
//!
//! Reads hand out DATA frames and return their flow-control credit as bytes are consumed, so a
//! slow reader pushes back on the sender. Writes wait for send capacity (backpressure) and stage
//! bytes in one reusable buffer; shutdown sends END_STREAM (half-close), and reading END_STREAM
//! yields EOF.

use crate::identity::SpiffeId;
use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Released when a client stream ends; lets the connection pool count open streams.
pub(crate) trait StreamSlot: Send + Sync {}

pub struct H2Stream {
    peer: Arc<SpiffeId>,
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    staging: BytesMut,
    read_eof: bool,
    write_closed: bool,
    _slot: Option<Box<dyn StreamSlot>>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id())
            .field("peer", &self.peer.to_string())
            .finish()
    }
}

impl H2Stream {
    pub(crate) fn new(
        peer: Arc<SpiffeId>,
        send: SendStream<Bytes>,
        recv: RecvStream,
        slot: Option<Box<dyn StreamSlot>>,
    ) -> Self {
        Self {
            peer,
            send,
            recv,
            pending: Bytes::new(),
            staging: BytesMut::new(),
            read_eof: false,
            write_closed: false,
            _slot: slot,
        }
    }
}

/// The pieces of a stream, for the zero-copy relay.
pub(crate) type StreamParts = (
    SendStream<Bytes>,
    RecvStream,
    Bytes,
    bool,
    bool,
    Option<Box<dyn StreamSlot>>,
);

impl H2Stream {
    /// Takes the stream apart: (send, recv, unread received bytes, read EOF seen, write closed,
    /// pool slot).
    pub(crate) fn into_parts(self) -> StreamParts {
        (
            self.send,
            self.recv,
            self.pending,
            self.read_eof,
            self.write_closed,
            self._slot,
        )
    }

    /// The identity the other end proved in the TLS handshake of this stream's connection.
    pub fn peer_identity(&self) -> &SpiffeId {
        &self.peer
    }
}

pub(crate) fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().expect("checked is_io");
    }
    let kind = if e.is_reset() || e.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => this.read_eof = true,
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        // Credit the sender only for what the application actually took.
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        this.send.reserve_capacity(buf.len());
        let granted = loop {
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => break n,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        };
        let n = granted.min(buf.len());
        // The staging buffer's memory is reclaimed once h2 has written the previous chunk out,
        // so steady-state writes do not allocate.
        this.staging.reserve(n);
        this.staging.extend_from_slice(&buf[..n]);
        let chunk = this.staging.split().freeze();
        this.send.send_data(chunk, false).map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task flushes frames to the socket on its own.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            this.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

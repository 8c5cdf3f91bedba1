//! Relay between a TCP socket and an HBONE stream without an intermediate copy.
//!
//! The generic [`crate::copy::copy_bidirectional`] moves bytes through a buffer of its own, and
//! `H2Stream`'s `AsyncRead`/`AsyncWrite` add a copy each way (into a staging buffer before h2,
//! out of received DATA frames). Here, socket reads land in a `BytesMut` whose filled part is
//! frozen and handed to h2 as it is, and received DATA frames are written to the socket straight
//! from h2's buffers: two fewer memory copies per byte on each tunnel end.
//!
//! Flow control and half-close behave as with `H2Stream`: a chunk is sent only against granted
//! send capacity, receive credit is returned only once bytes reached the socket, EOF on the socket
//! becomes END_STREAM and END_STREAM becomes a socket shutdown, each direction finishing on its own.

use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::{BufMut, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::stream::{h2_to_io, H2Stream};
use crate::copy::{Transferred, INITIAL_BUFFER, MAX_BUFFER};

impl H2Stream {
    /// Relays until both directions have finished. `a_to_b` counts socket → tunnel bytes,
    /// `b_to_a` tunnel → socket, and are reported also when an error (in either direction, which
    /// stops both) ended the relay; the tunnel is reset when the stream is dropped without
    /// END_STREAM.
    pub async fn relay(self, tcp: &mut TcpStream) -> (Transferred, io::Result<()>) {
        self.relay_idle(tcp, crate::copy::DEFAULT_IDLE_TIMEOUT)
            .await
    }

    /// [`H2Stream::relay`], ended with a `TimedOut` error once no byte moved either way for
    /// between `idle` and twice `idle`.
    pub async fn relay_idle(
        self,
        tcp: &mut TcpStream,
        idle: std::time::Duration,
    ) -> (Transferred, io::Result<()>) {
        let (mut send, mut recv, pending, read_eof, write_closed, _slot) = self.into_parts();
        let (mut rd, mut wr) = tcp.split();
        // Counted per chunk (not per byte); uncontended, as both directions run in this task.
        let (up_bytes, down_bytes) = (AtomicU64::new(0), AtomicU64::new(0));
        let up = async {
            if write_closed {
                return Ok(());
            }
            upload(&mut rd, &mut send, &up_bytes).await
        };
        let down = download(&mut recv, &mut wr, pending, read_eof, &down_bytes);
        let watch = async {
            let mut seen = 0;
            loop {
                tokio::time::sleep(idle).await;
                let moved = up_bytes.load(Relaxed) + down_bytes.load(Relaxed);
                if moved == seen {
                    return crate::copy::idle_error(idle);
                }
                seen = moved;
            }
        };
        let result = tokio::select! {
            r = async { tokio::try_join!(up, down) } => r.map(|_| ()),
            e = watch => Err(e),
        };
        let moved = Transferred {
            a_to_b: up_bytes.into_inner(),
            b_to_a: down_bytes.into_inner(),
        };
        (moved, result)
    }
}

/// Socket → tunnel.
async fn upload(
    rd: &mut ReadHalf<'_>,
    send: &mut SendStream<Bytes>,
    total: &AtomicU64,
) -> io::Result<()> {
    let mut buf = BytesMut::new();
    let mut size = INITIAL_BUFFER;
    loop {
        // Reclaims the previous chunk's memory once h2 has written and dropped it.
        buf.reserve(size);
        let n = rd.read_buf(&mut (&mut buf).limit(size)).await?;
        if n == 0 {
            send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
            return Ok(());
        }
        if n == size && size < MAX_BUFFER {
            size *= 2;
        }
        let mut chunk = buf.split().freeze();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = loop {
                match poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(0)) => continue,
                    Some(Ok(n)) => break n,
                    Some(Err(e)) => return Err(h2_to_io(e)),
                    None => return Err(io::ErrorKind::BrokenPipe.into()),
                }
            };
            let part = chunk.split_to(granted.min(chunk.len()));
            let len = part.len() as u64;
            send.send_data(part, false).map_err(h2_to_io)?;
            total.fetch_add(len, Relaxed);
        }
    }
}

/// Tunnel → socket.
async fn download(
    recv: &mut RecvStream,
    wr: &mut WriteHalf<'_>,
    pending: Bytes,
    read_eof: bool,
    total: &AtomicU64,
) -> io::Result<()> {
    if !pending.is_empty() {
        wr.write_all(&pending).await?;
        let _ = recv.flow_control().release_capacity(pending.len());
        total.fetch_add(pending.len() as u64, Relaxed);
    }
    if !read_eof {
        while let Some(data) = poll_fn(|cx| recv.poll_data(cx)).await {
            let data = data.map_err(h2_to_io)?;
            wr.write_all(&data).await?;
            // Credit the sender only once the bytes are in the socket.
            let _ = recv.flow_control().release_capacity(data.len());
            total.fetch_add(data.len() as u64, Relaxed);
        }
    }
    wr.shutdown().await
}

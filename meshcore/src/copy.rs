//! Bidirectional copy between two byte streams (a TCP socket and an HBONE tunnel, or two sockets).
//!
//! Each direction owns a buffer that starts small, so the many chatty connections of a node cost
//! little memory, and doubles whenever a read fills it, up to [`MAX_BUFFER`] for bulk transfers.
//! End of input in one direction is passed on as a shutdown of the writer (half-close) while the
//! other direction keeps flowing. Backpressure is natural: a direction reads only after its
//! buffer has been written out.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A relay that moved no byte either way for this long is ended (Envoy's default idle
/// timeout): a peer that vanished without a FIN or keepalive answer holds nothing for ever.
pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// The error ending an idle relay.
pub fn idle_error(idle: std::time::Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no bytes either way for {idle:?}: relay closed as idle"),
    )
}

/// First buffer size of each direction.
pub const INITIAL_BUFFER: usize = 1024;
/// Largest buffer a direction grows to.
pub const MAX_BUFFER: usize = 256 * 1024;

/// Bytes moved each way when both directions finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

struct Direction {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    read_done: bool,
    needs_flush: bool,
    done: bool,
    total: u64,
}

impl Direction {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            end: 0,
            read_done: false,
            needs_flush: false,
            done: false,
            total: 0,
        }
    }

    /// Moves bytes from `reader` to `writer` until EOF (then shuts `writer` down) or until blocked.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.start == self.end && !self.read_done {
                if self.buf.is_empty() {
                    // Allocated on first use: a direction that never carries data costs nothing.
                    self.buf = vec![0; INITIAL_BUFFER];
                }
                let mut read_buf = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut read_buf) {
                    Poll::Ready(result) => result?,
                    Poll::Pending => {
                        if self.needs_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.needs_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
                let n = read_buf.filled().len();
                if n == 0 {
                    self.read_done = true;
                } else {
                    self.start = 0;
                    self.end = n;
                }
            }
            while self.start < self.end {
                let n = ready!(writer
                    .as_mut()
                    .poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.total += n as u64;
                self.needs_flush = true;
            }
            if self.end == self.buf.len() && self.buf.len() < MAX_BUFFER {
                // The last read filled the buffer: this is a bulk flow, give it more room.
                self.buf = vec![0; self.buf.len() * 2];
                self.start = 0;
                self.end = 0;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Copies `a` → `b` and `b` → `a` until both directions have reached EOF, honouring half-close.
/// Returns the byte counts moved each way, also when an I/O error (which ends both directions)
/// stopped the copy, with that error.
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> (Transferred, io::Result<()>)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    copy_bidirectional_idle(a, b, DEFAULT_IDLE_TIMEOUT).await
}

/// [`copy_bidirectional`], ended with a `TimedOut` error once no byte moved either way for
/// between `idle` and twice `idle` (one timer per relay, checked when it fires: no per-chunk
/// timer work).
pub async fn copy_bidirectional_idle<A, B>(
    a: &mut A,
    b: &mut B,
    idle: std::time::Duration,
) -> (Transferred, io::Result<()>)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::new();
    let mut b_to_a = Direction::new();
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    let mut seen = 0u64;
    let result = poll_fn(|cx| {
        while timer.as_mut().poll(cx).is_ready() {
            let moved = a_to_b.total + b_to_a.total;
            if moved == seen {
                return Poll::Ready(Err(idle_error(idle)));
            }
            seen = moved;
            timer.as_mut().reset(tokio::time::Instant::now() + idle);
        }
        if !a_to_b.done {
            if let Poll::Ready(result) = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))
            {
                result?;
            }
        }
        if !b_to_a.done {
            if let Poll::Ready(result) = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))
            {
                result?;
            }
        }
        if a_to_b.done && b_to_a.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await;
    let moved = Transferred {
        a_to_b: a_to_b.total,
        b_to_a: b_to_a.total,
    };
    (moved, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// S10: a relay on which nothing moves is ended after its idle time; one that keeps
    /// moving bytes, however slowly, is not.
    #[tokio::test]
    async fn an_idle_relay_ends_and_a_slow_one_does_not() {
        let idle = Duration::from_millis(100);
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut server) = tokio::io::duplex(1024);
        let relay =
            tokio::spawn(async move { copy_bidirectional_idle(&mut a, &mut b, idle).await });
        // Every 40 ms a byte (and its echo): never idle for 100 ms.
        for _ in 0..10 {
            client.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            server.read_exact(&mut byte).await.unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        assert!(!relay.is_finished(), "a slow relay was ended as idle");
        // Then silence: ended within twice the idle time (plus slack).
        let (moved, result) = tokio::time::timeout(Duration::from_millis(500), relay)
            .await
            .expect("the idle relay ended")
            .unwrap();
        assert_eq!(moved.a_to_b, 10);
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        let (mut client, mut proxy_a) = tokio::io::duplex(64 * 1024);
        let (mut proxy_b, mut server) = tokio::io::duplex(64 * 1024);
        let proxy =
            tokio::spawn(async move { copy_bidirectional(&mut proxy_a, &mut proxy_b).await });

        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload, "server sees everything, then EOF");
        // The server can still answer after the client's half-close.
        server.write_all(b"reply after half-close").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply after half-close");
        let (t, result) = proxy.await.unwrap();
        result.unwrap();
        assert_eq!(
            t,
            Transferred {
                a_to_b: 1_000_000,
                b_to_a: 22
            }
        );
    }

    #[tokio::test]
    async fn buffer_grows_for_bulk_and_stays_small_for_chat() {
        let mut d = Direction::new();
        let data = vec![7u8; 4 * MAX_BUFFER];
        let mut reader: &[u8] = &data;
        let mut sink = tokio::io::sink();
        poll_fn(|cx| d.poll_copy(cx, Pin::new(&mut reader), Pin::new(&mut sink)))
            .await
            .unwrap();
        assert_eq!(d.total, data.len() as u64);
        assert_eq!(
            d.buf.len(),
            MAX_BUFFER,
            "bulk flow grew its buffer to the cap"
        );

        let mut chat = Direction::new();
        let mut small: &[u8] = b"hi";
        poll_fn(|cx| {
            let _ = chat.poll_copy(cx, Pin::new(&mut small), Pin::new(&mut tokio::io::sink()));
            Poll::Ready(())
        })
        .await;
        assert_eq!(chat.total, 2);
        assert_eq!(
            chat.buf.len(),
            INITIAL_BUFFER,
            "chatty flow keeps the small buffer"
        );
    }
}

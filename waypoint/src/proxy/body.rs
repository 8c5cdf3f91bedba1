//! Body types of the proxy: one boxed body for requests and responses in both directions, and
//! a metered wrapper that counts a body's bytes and reports once when it ends (or is dropped).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// Told how a metered body ended.
pub trait BodyDone: Send + Sync + 'static {
    /// `bytes` read through the body; `grpc_status` from its trailers, if any.
    fn done(self, bytes: u64, grpc_status: Option<u32>, complete: bool);
}

/// Counts the bytes of `inner` and reports them once, at its end or when dropped unfinished.
pub struct Metered<B: HttpBody, D: BodyDone> {
    inner: B,
    bytes: u64,
    grpc_status: Option<u32>,
    done: Option<D>,
}

impl<B: HttpBody, D: BodyDone> Metered<B, D> {
    pub fn new(inner: B, done: D) -> Self {
        Self {
            inner,
            bytes: 0,
            grpc_status: None,
            done: Some(done),
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(done) = self.done.take() {
            done.done(self.bytes, self.grpc_status, complete);
        }
    }
}

impl<B: HttpBody, D: BodyDone> Drop for Metered<B, D> {
    fn drop(&mut self) {
        // An empty body may never be polled: it is complete if nothing is left of it.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

impl<B, D> HttpBody for Metered<B, D>
where
    B: HttpBody<Data = Bytes> + Unpin,
    D: BodyDone + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.grpc_status = grpc_status(trailers);
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `grpc-status` from headers or trailers.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

//! `envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources` as a plain
//! tower service, so responses can be written out in pieces.
//!
//! A generated gRPC stub encodes each response into one contiguous buffer, and that buffer lives
//! until its last byte has left, i.e. until the (possibly slow) client has read most of it: with a
//! hundred ztunnels subscribing at once, a hundred copies of the whole mesh. Here a response is
//! encoded lazily, [`CHUNK_BYTES`] at a time, as the transport asks for more; a client costs what
//! the HTTP/2 stream buffers, not a copy of the set. The bytes are exactly a gRPC length-prefixed
//! `DeltaDiscoveryResponse` (tested against prost's encoding); requests decode with tonic as usual.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use meshcore::api::discovery::DeltaDiscoveryRequest;
use prost::encoding::{bytes as pbytes, string};
use prost::Message;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codec::Streaming;
use tonic::server::NamedService;
use tonic::Status;

use super::encoded::EncodedDeltaResponse;
use super::server::Outgoing;
use super::XdsServer;

pub const PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// Bytes encoded per piece handed to the transport.
pub const CHUNK_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct AdsService {
    server: Arc<XdsServer>,
}

impl AdsService {
    pub fn new(server: XdsServer) -> Self {
        Self {
            server: Arc::new(server),
        }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

/// A Trailers-Only gRPC response carrying `status`.
fn status_response(status: &Status) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    let _ = status.add_header(headers);
    response
}

impl tower::Service<Request<Body>> for AdsService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move {
            if request.uri().path() != PATH {
                return Ok(status_response(&Status::unimplemented(format!(
                    "no method {}",
                    request.uri().path()
                ))));
            }
            let (parts, body) = request.into_parts();
            // A reconnecting client names every resource it holds (initial_resource_versions):
            // in a large mesh far above tonic's default 4 MiB. Istio's limit, 200 MiB.
            let requests = Streaming::<DeltaDiscoveryRequest>::new_request(
                tonic_prost::ProstDecoder::new(Default::default()),
                body,
                None,
                Some(meshcore::control::MAX_XDS_MESSAGE_BYTES),
            );
            let responses = match server.open(&parts.headers, requests).await {
                Ok(rx) => rx,
                Err(status) => return Ok(status_response(&status)),
            };
            let mut response = Response::new(Body::new(ResponseBody {
                responses,
                current: None,
                done: false,
            }));
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            Ok(response)
        })
    }
}

/// The response stream's body: each queued response, a piece at a time, then `grpc-status: 0`
/// when the session ends (or the status the session ended it with).
struct ResponseBody {
    responses: mpsc::Receiver<Outgoing>,
    current: Option<Chunks>,
    done: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(chunks) = &mut self.current {
                if let Some(piece) = chunks.next_piece() {
                    return Poll::Ready(Some(Ok(Frame::data(piece))));
                }
                self.current = None;
            }
            match self.responses.poll_recv(cx) {
                Poll::Ready(Some(Ok(response))) => self.current = Some(Chunks::new(response)),
                Poll::Ready(Some(Err(status))) => {
                    self.done = true;
                    let mut trailers = HeaderMap::new();
                    let _ = status.add_header(&mut trailers);
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// One response being encoded piece by piece, in field order (1, 2..., 4, 5, 6), exactly as
/// prost encodes the message, behind the 5-byte gRPC message prefix.
pub struct Chunks {
    response: EncodedDeltaResponse,
    started: bool,
    next_resource: usize,
    finished: bool,
}

impl Chunks {
    pub fn new(response: EncodedDeltaResponse) -> Self {
        Self {
            response,
            started: false,
            next_resource: 0,
            finished: false,
        }
    }

    pub fn next_piece(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        let r = &self.response;
        let mut buf = BytesMut::with_capacity(CHUNK_BYTES + 1024);
        if !self.started {
            self.started = true;
            let len = u32::try_from(r.encoded_len()).expect("a response under 4 GiB");
            buf.put_u8(0); // not compressed
            buf.put_u32(len);
            if !r.system_version_info.is_empty() {
                string::encode(1, &r.system_version_info, &mut buf);
            }
        }
        while self.next_resource < r.resources.len() && buf.len() < CHUNK_BYTES {
            pbytes::encode(2, &r.resources[self.next_resource], &mut buf);
            self.next_resource += 1;
        }
        if self.next_resource == r.resources.len() {
            if !r.type_url.is_empty() {
                string::encode(4, &r.type_url, &mut buf);
            }
            if !r.nonce.is_empty() {
                string::encode(5, &r.nonce, &mut buf);
            }
            string::encode_repeated(6, &r.removed_resources, &mut buf);
            self.finished = true;
        }
        Some(buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_to_the_length_prefixed_message() {
        let resource = Bytes::from(vec![7u8; 300]);
        let response = EncodedDeltaResponse {
            system_version_info: "3".into(),
            resources: vec![resource; 1000],
            type_url: "type.googleapis.com/istio.workload.Address".into(),
            nonce: "1-1".into(),
            removed_resources: vec!["a".into(), "b".into()],
        };
        let mut expected = vec![0u8];
        expected.extend_from_slice(&(response.encoded_len() as u32).to_be_bytes());
        expected.extend_from_slice(&response.encode_to_vec());
        let mut chunks = Chunks::new(response);
        let mut joined = Vec::new();
        let mut pieces = 0;
        while let Some(piece) = chunks.next_piece() {
            assert!(piece.len() <= CHUNK_BYTES + 1024);
            joined.extend_from_slice(&piece);
            pieces += 1;
        }
        assert!(pieces > 4, "{pieces} pieces");
        assert_eq!(joined, expected);
    }
}

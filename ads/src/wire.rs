//! ADS framing on the wire. Responses are gRPC messages assembled from resources encoded
//! once and shared by reference; requests are decoded here too. Nothing a stream keeps between
//! messages grows with the size of the mesh:
//! - a response goes to h2 as DATA chunks of about `FRAME_TARGET` bytes (small resources copied
//!   together, big ones by reference): h2 keeps a slab slot per queued chunk for the life of the
//!   connection, so one chunk per resource cost every connection hundreds of KB at S=1000;
//! - a request is decoded from a buffer that is released once it is empty (tonic's decoder keeps
//!   one the size of the largest request, e.g. an EDS ACK naming every cluster), and that grows
//!   only with bytes received: a length prefix is a claim, not a reservation.

use super::status::SentResources;
use bytes::{Buf, Bytes, BytesMut};
use futures::channel::mpsc;
use meshd_xds::resource::{CHUNK_TARGET, Layer, SharedResource, Subscription, length_delimited};
use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Code, Status};

/// Response chunks smaller than this are copied together into one DATA chunk of at most this.
const FRAME_TARGET: usize = CHUNK_TARGET;

/// What a stream task hands to the wire.
pub(crate) enum Outgoing {
    /// One gRPC message as a chain of shared chunks.
    Message(Vec<Bytes>),
    /// End the stream with this status (boxed: the channel's blocks hold slots of the largest
    /// variant, and every stream has one).
    End(Box<Status>),
}

/// The stream task's end of its response channel. futures' bounded channel, not tokio's: an
/// idle one is a few hundred bytes, where tokio's keeps a 32-slot block (1.3 KB in all), and
/// every connected proxy has one.
pub(crate) struct Sender(mpsc::Sender<Outgoing>);

impl Sender {
    /// Waits for room (at most [`CHANNEL_DEPTH`] messages queued); `Err`: the response body is
    /// gone (the proxy left).
    pub(crate) async fn send(&mut self, message: Outgoing) -> Result<(), ()> {
        futures::SinkExt::send(&mut self.0, message)
            .await
            .map_err(|_| ())
    }
}

/// Messages a stream task may queue before it waits for the connection to take them.
const CHANNEL_DEPTH: usize = 4;

/// A stream task's response channel (the receiver goes to [`FrameBody::new`]).
pub(crate) fn channel() -> (Sender, mpsc::Receiver<Outgoing>) {
    // futures' capacity is the buffer plus one slot per sender.
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH - 1);
    (Sender(tx), rx)
}

fn string_field(tag: u32, value: &str, out: &mut Vec<u8>) {
    if !value.is_empty() {
        out.extend(length_delimited(tag, value.as_bytes()));
    }
}

fn frame(head: Vec<u8>, fields: impl Iterator<Item = Bytes>) -> Vec<Bytes> {
    let fields: Vec<Bytes> = fields.collect();
    let len = head.len() + fields.iter().map(Bytes::len).sum::<usize>();
    let mut first = Vec::with_capacity(5 + head.len());
    first.push(0u8);
    first.extend((len as u32).to_be_bytes());
    first.extend(head);
    let mut chunks = Vec::with_capacity(fields.len() + 1);
    chunks.push(Bytes::from(first));
    chunks.extend(fields);
    chunks
}

/// What a SotW response carries.
pub(crate) enum SotwBody<'a> {
    /// Everything the proxy gets of the type.
    Whole(&'a SentResources),
    /// Only these (EDS, RDS and SDS after the first response).
    Resources(&'a [SharedResource]),
}

/// A DiscoveryResponse: version_info = 1, resources = 2, type_url = 4, nonce = 5. A whole
/// shared layer goes as that layer's chunks, encoded once for every proxy.
pub(crate) fn sotw_response(
    version: &str,
    type_url: &str,
    nonce: &str,
    body: SotwBody<'_>,
) -> Outgoing {
    let mut head = Vec::new();
    string_field(1, version, &mut head);
    string_field(4, type_url, &mut head);
    string_field(5, nonce, &mut head);
    let fields: Vec<Bytes> = match body {
        SotwBody::Whole(sent) => match &sent.subscription {
            Subscription::All => sent
                .set
                .layers()
                .iter()
                .flat_map(|l| l.sotw_chunks().into_owned())
                .collect(),
            Subscription::Names(_) => sent.iter().map(|r| r.sotw_field()).collect(),
        },
        SotwBody::Resources(rs) => rs.iter().map(|r| r.sotw_field()).collect(),
    };
    Outgoing::Message(frame(head, fields.into_iter()))
}

/// What a Delta response carries.
pub(crate) enum DeltaUpdates<'a> {
    /// Every resource of these layers (a first sync): each layer's chunks, encoded once.
    Layers(&'a [Layer]),
    Resources(&'a [SharedResource]),
}

/// A DeltaDiscoveryResponse: system_version_info = 1, resources = 2, type_url = 4, nonce = 5,
/// removed_resources = 6.
pub(crate) fn delta_response(
    version: &str,
    type_url: &str,
    nonce: &str,
    updates: DeltaUpdates<'_>,
    removed: &[String],
) -> Outgoing {
    let mut head = Vec::new();
    string_field(1, version, &mut head);
    string_field(4, type_url, &mut head);
    string_field(5, nonce, &mut head);
    for name in removed {
        head.extend(length_delimited(6, name.as_bytes()));
    }
    let fields: Vec<Bytes> = match updates {
        DeltaUpdates::Layers(layers) => layers
            .iter()
            .flat_map(|l| l.delta_chunks().into_owned())
            .collect(),
        DeltaUpdates::Resources(rs) => rs.iter().flat_map(|r| r.delta_field()).collect(),
    };
    Outgoing::Message(frame(head, fields.into_iter()))
}

/// The next DATA chunk of a message: a chunk of at least `FRAME_TARGET` bytes as it is, else it
/// and the small chunks after it copied together up to `FRAME_TARGET` bytes.
fn next_chunk(pending: &mut std::vec::IntoIter<Bytes>) -> Option<Bytes> {
    let first = pending.next()?;
    let mut len = first.len();
    let mut take = 0;
    for next in pending.as_slice() {
        if len + next.len() > FRAME_TARGET {
            break;
        }
        len += next.len();
        take += 1;
    }
    if take == 0 {
        return Some(first);
    }
    let mut out = BytesMut::with_capacity(len);
    out.extend_from_slice(&first);
    for next in pending.by_ref().take(take) {
        out.extend_from_slice(&next);
    }
    Some(out.freeze())
}

/// The response body: gRPC messages as they come, then the status as trailers.
pub(crate) struct FrameBody {
    rx: mpsc::Receiver<Outgoing>,
    /// The rest of the message being written (dropped with it: no queue outlives a message).
    pending: std::vec::IntoIter<Bytes>,
    done: bool,
}

impl FrameBody {
    pub(crate) fn new(rx: mpsc::Receiver<Outgoing>) -> Self {
        FrameBody {
            rx,
            pending: Vec::new().into_iter(),
            done: false,
        }
    }
}

impl http_body::Body for FrameBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(chunk) = next_chunk(&mut this.pending) {
            return Poll::Ready(Some(Ok(http_body::Frame::data(chunk))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let status = match futures::StreamExt::poll_next_unpin(&mut this.rx, cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Outgoing::Message(chunks))) => {
                this.pending = chunks.into_iter();
                let first = next_chunk(&mut this.pending).unwrap_or_default();
                return Poll::Ready(Some(Ok(http_body::Frame::data(first))));
            }
            Poll::Ready(Some(Outgoing::End(status))) => *status,
            // The stream task ended (drain, proxy gone): a clean end; Envoy reconnects.
            Poll::Ready(None) => Status::new(Code::Ok, ""),
        };
        this.done = true;
        let mut trailers = http::HeaderMap::new();
        let _ = status.add_header(&mut trailers);
        Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }
}

/// A stream's requests, decoded from the request body's gRPC messages (uncompressed).
pub(crate) struct Requests<T> {
    body: Body,
    /// Bytes of messages not yet complete; emptied and released after each message.
    buf: BytesMut,
    ended: bool,
    /// The largest message accepted.
    max: usize,
    _message: PhantomData<fn() -> T>,
}

impl<T: prost::Message + Default> Requests<T> {
    pub(crate) fn new(body: Body, max: usize) -> Self {
        Requests {
            body,
            buf: BytesMut::new(),
            ended: false,
            max,
            _message: PhantomData,
        }
    }

    fn decode_one(&mut self) -> Result<Option<Box<T>>, Status> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::unimplemented(
                "compressed requests are not supported",
            ));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Err(Status::resource_exhausted(format!(
                "request message of {len} bytes exceeds the limit of {} bytes",
                self.max
            )));
        }
        if self.buf.len() < 5 + len {
            // No reserve(len): a peer declaring 4 MiB and sending 5 bytes must not cost 4 MiB.
            return Ok(None);
        }
        let mut message = self.buf.split_to(5 + len);
        message.advance(5);
        let decoded = T::decode(message)
            .map(Box::new)
            .map_err(|e| Status::invalid_argument(format!("malformed request message: {e}")))?;
        if self.buf.is_empty() {
            // Release the allocation: a stream idles between requests with no buffer.
            self.buf = BytesMut::new();
        }
        Ok(Some(decoded))
    }
}

impl<T: prost::Message + Default> futures::Stream for Requests<T> {
    /// Boxed: a stream's task keeps room for whatever it holds across an await, and a request
    /// (≈ 600 bytes) is held while it is answered.
    type Item = Result<Box<T>, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.decode_one() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => {
                    this.ended = true;
                    this.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(status)));
                }
            }
            if this.ended {
                if this.buf.is_empty() {
                    return Poll::Ready(None);
                }
                this.buf = BytesMut::new();
                return Poll::Ready(Some(Err(Status::internal(
                    "request stream ended inside a message",
                ))));
            }
            match std::task::ready!(http_body::Body::poll_frame(Pin::new(&mut this.body), cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(status)) => {
                    this.ended = true;
                    this.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(status)));
                }
                None => this.ended = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use futures::StreamExt;
    use prost::Message;

    /// A request body delivering these DATA chunks.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
            Poll::Ready(
                self.get_mut()
                    .0
                    .pop_front()
                    .map(|b| Ok(http_body::Frame::data(b))),
            )
        }
    }

    fn grpc_message(m: &impl Message) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut out = vec![0u8];
        out.extend((body.len() as u32).to_be_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn small_chunks_are_coalesced_and_big_ones_pass_by_reference() {
        let big = Bytes::from(vec![7u8; FRAME_TARGET + 1]);
        let mut chunks = vec![Bytes::from_static(b"head")];
        chunks.extend((0..100).map(|i| Bytes::from(vec![i as u8; 1000])));
        chunks.push(big.clone());
        chunks.push(Bytes::from_static(b"tail"));
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        let mut pending = chunks.into_iter();
        let mut out = Vec::new();
        while let Some(c) = next_chunk(&mut pending) {
            out.push(c);
        }
        assert!(
            out.iter()
                .all(|c| c.len() <= FRAME_TARGET || c.len() == big.len())
        );
        assert!(out.len() < 10, "{} chunks", out.len());
        assert!(
            out.iter().any(|c| c.as_ptr() == big.as_ptr()),
            "big chunk copied"
        );
        assert_eq!(out.concat(), all);
    }

    #[test]
    fn requests_split_across_and_sharing_frames_decode_in_order() {
        let reqs: Vec<DiscoveryRequest> = (0..3)
            .map(|i| DiscoveryRequest {
                type_url: format!("t{i}"),
                resource_names: (0..200).map(|n| format!("name-{n}")).collect(),
                ..Default::default()
            })
            .collect();
        let wire: Vec<u8> = reqs.iter().flat_map(grpc_message).collect();
        // Frames of 777 bytes: messages split across frames, and frames holding two messages.
        let frames = wire.chunks(777).map(Bytes::copy_from_slice).collect();
        let body = Body::new(Chunks(frames));
        let got: Vec<DiscoveryRequest> = futures::executor::block_on(
            Requests::<DiscoveryRequest>::new(body, 1 << 20)
                .map(|r| *r.expect("decodes"))
                .collect(),
        );
        assert_eq!(got, reqs);
    }

    #[test]
    fn a_declared_length_is_not_reserved_and_one_over_the_limit_is_refused() {
        let mut requests = Requests::<DiscoveryRequest>::new(Body::empty(), 4 << 20);
        // Declares 3 MiB, sends 10 bytes: waits for more without reserving 3 MiB.
        requests.buf.extend_from_slice(&[0, 0, 0x30, 0, 0]);
        requests.buf.extend_from_slice(&[0u8; 10]);
        assert!(matches!(requests.decode_one(), Ok(None)));
        assert!(
            requests.buf.capacity() < 1 << 20,
            "{} bytes reserved for 15 received",
            requests.buf.capacity()
        );
        // Declares one byte over the limit: refused from its prefix alone.
        let mut requests = Requests::<DiscoveryRequest>::new(Body::empty(), 4 << 20);
        requests.buf.extend_from_slice(&[0, 0, 0x40, 0, 1]);
        let err = requests.decode_one().unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    }

    #[test]
    fn truncated_or_compressed_requests_are_errors() {
        let wire = grpc_message(&DiscoveryRequest::default());
        let mut compressed = wire.clone();
        compressed[0] = 1;
        let mut truncated = grpc_message(&DiscoveryRequest {
            type_url: "x".into(),
            ..Default::default()
        });
        truncated.pop();
        for bad in [compressed, truncated] {
            let body = Body::new(Chunks([Bytes::from(bad)].into()));
            let got: Vec<Result<Box<DiscoveryRequest>, Status>> =
                futures::executor::block_on(Requests::new(body, 1 << 20).collect());
            assert_eq!(got.len(), 1);
            assert!(got[0].is_err());
        }
    }
}

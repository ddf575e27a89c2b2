//! The `ProxySSH` call on the wire, framed by hand instead of by tonic's encoder: the HTTP/2
//! request that opens the stream, the request body, the gRPC messages it carries, and the
//! response stream read with a small buffer (`grpc::SmallBuffers`' decoder).
//!
//! Owns: the bytes of every request (the gRPC message header and protobuf prefix of an `ssh`
//! or `agent` frame, written from Teleport's field numbers), the request's method, URI and
//! headers (what tonic's `Grpc::streaming` sends, with no compression), and the response
//! handling of tonic's `Grpc::create_response` (trailers-only refusals, the HTTP status check
//! at the stream's end), so refusals read exactly as they did through tonic.
//! Must not know: where payloads come from (the relay reads them) or what they mean.
//!
//! Why by hand: tonic's encoder copies every payload into its own buffer (prost's `Bytes`
//! field appends to it) before HTTP/2 sees it: a full copy of everything a session uploads.
//! Here the relay reads a payload into a buffer that leaves [`PREFIX_ROOM`] bytes free in
//! front of it ([`crate::relay::Chunks::read_after`]); [`ssh_message`] writes the message's
//! header and protobuf prefix into the end of that room, so the whole gRPC message is one
//! contiguous `Bytes`, one DATA frame's worth of body, made without copying the payload.
//! Other requests (the dial, agent replies) are small and encoded whole ([`message`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_TYPE, TE};
use http::uri::{PathAndQuery, Uri};
use hyper::body::{Body, Frame};
use hyper::client::conn::http2::SendRequest;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;

use crate::grpc::{SmallBuffers, FRAME_SIZE};
use idmux_wire::proto::{ProxySshRequest, ProxySshResponse, PROXY_SSH};
use tonic::codec::Codec;

/// Field numbers (teleport.transport.v1, see idmux_wire::proto): `ProxySSHRequest.ssh`,
/// `Frame.payload`.
const FIELD_SSH: u32 = 2;
const FIELD_PAYLOAD: u32 = 1;

/// Room the relay leaves in front of a payload for [`ssh_message`] to fill: the 5-byte gRPC
/// message header, then key and length of `ssh`, then key and length of `payload`. A length
/// up to 2^21 - 1 is a varint of at most 3 bytes; a payload is at most [`FRAME_SIZE`].
pub(crate) const PREFIX_ROOM: usize = 5 + (1 + 3) + (1 + 3);
const _: () = assert!(FRAME_SIZE + 8 < 1 << 21);

/// The queue a `ProxySSH` call's requests go through, one whole gRPC message each
/// ([`message`], [`ssh_message`]). futures-channel's, not tokio's: tokio's allocates a
/// cache-padded channel and a 32-slot block (about 1.6 KiB) the moment it is made, which every
/// open session held while idle; this one allocates per queued message (issue 18).
/// `close_channel` on any sender ends the body, whatever other senders are left.
pub(crate) type Requests = futures_channel::mpsc::Sender<Bytes>;

/// A request queue of `cap` messages (plus one per sender, as futures-channel counts).
pub(crate) fn requests(cap: usize) -> (Requests, futures_channel::mpsc::Receiver<Bytes>) {
    futures_channel::mpsc::channel(cap)
}

/// The request body of a `ProxySSH` call: each `Bytes` from the channel is one whole gRPC
/// message; the body ends when every sender is dropped or one closes the channel.
pub(crate) struct RequestBody {
    rx: futures_channel::mpsc::Receiver<Bytes>,
}

impl RequestBody {
    pub(crate) fn new(rx: futures_channel::mpsc::Receiver<Bytes>) -> Self {
        Self { rx }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        futures_util::Stream::poll_next(Pin::new(&mut self.rx), cx)
            .map(|m| m.map(|m| Ok(Frame::data(m))))
    }
}

/// `req` as one gRPC message, encoded whole (its payload, if any, copied): for the first
/// request (`dial_target`) and agent frames, which are small.
pub(crate) fn message(req: &ProxySshRequest) -> Bytes {
    let len = req.encoded_len();
    let mut b = BytesMut::with_capacity(5 + len);
    put_message_header(&mut b, len);
    req.encode(&mut b)
        .expect("the buffer was sized for the message");
    b.freeze()
}

/// `ProxySSHRequest { ssh = 2 { payload = 1 } }` as one gRPC message, the payload not copied:
/// `buf` is [`PREFIX_ROOM`] bytes of room followed by the payload (1 to [`FRAME_SIZE`] bytes,
/// as [`crate::relay::Chunks::read_after`] returns it). The prefix is written into the end of
/// the room and the message starts where it does.
pub(crate) fn ssh_message(mut buf: BytesMut) -> Bytes {
    let p = buf.len() - PREFIX_ROOM;
    assert!(
        (1..=FRAME_SIZE).contains(&p),
        "a payload is 1 to FRAME_SIZE bytes"
    );
    // Frame { payload = 1 }, then ProxySSHRequest { ssh = 2 }: each length-delimited.
    let frame_len = 1 + encoded_len_varint(p as u64) + p;
    let msg_len = 1 + encoded_len_varint(frame_len as u64) + frame_len;
    let prefix_len = 5 + msg_len - p;
    let start = PREFIX_ROOM - prefix_len;
    let mut prefix = &mut buf[start..PREFIX_ROOM];
    put_message_header(&mut prefix, msg_len);
    encode_key(FIELD_SSH, WireType::LengthDelimited, &mut prefix);
    encode_varint(frame_len as u64, &mut prefix);
    encode_key(FIELD_PAYLOAD, WireType::LengthDelimited, &mut prefix);
    encode_varint(p as u64, &mut prefix);
    debug_assert!(prefix.is_empty(), "the prefix fills its room exactly");
    let mut b = buf.freeze();
    bytes::Buf::advance(&mut b, start);
    b
}

/// The 5-byte gRPC message header: not compressed, then the length (u32 big-endian).
fn put_message_header(b: &mut impl BufMut, len: usize) {
    b.put_u8(0);
    b.put_u32(u32::try_from(len).expect("a request is far below 4 GiB"));
}

/// The HTTP/2 request that opens a `ProxySSH` stream at `origin`, as tonic's
/// `Grpc::streaming` builds it (no metadata, no compression): POST to the method's path with
/// `te: trailers` and `content-type: application/grpc`.
pub(crate) fn request(origin: &Uri, body: RequestBody) -> http::Request<tonic::body::Body> {
    let mut parts = origin.clone().into_parts();
    let path = PathAndQuery::from_static(PROXY_SSH);
    parts.path_and_query = Some(match &parts.path_and_query {
        Some(pnq) if pnq != "/" => format!("{}{}", pnq.path(), path)
            .parse()
            .expect("must form valid path_and_query"),
        _ => path,
    });
    let uri = Uri::from_parts(parts).expect("path_and_query only is valid Uri");
    let mut req = http::Request::new(tonic::body::Body::new(body));
    *req.version_mut() = http::Version::HTTP_2;
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    req.headers_mut()
        .insert(TE, HeaderValue::from_static("trailers"));
    req.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    req
}

/// Open a `ProxySSH` stream on `send` (which must be ready) sending what `rx` gets: the
/// response stream, or the status tonic would have given (a transport error's status has the
/// error as its source, as tonic's does).
pub(crate) async fn call(
    send: &mut SendRequest<tonic::body::Body>,
    origin: &Uri,
    rx: futures_channel::mpsc::Receiver<Bytes>,
) -> Result<tonic::Streaming<ProxySshResponse>, tonic::Status> {
    let resp = send
        .send_request(request(origin, RequestBody::new(rx)))
        .await
        .map_err(|e| tonic::Status::from_error(Box::new(e)))?;
    response(resp)
}

/// Tonic's `Grpc::create_response` for a client that accepts no compression.
pub(crate) fn response<B>(
    resp: http::Response<B>,
) -> Result<tonic::Streaming<ProxySshResponse>, tonic::Status>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(v) = resp.headers().get("grpc-encoding") {
        if v.as_bytes() != b"identity" {
            let other = match std::str::from_utf8(v.as_bytes()) {
                Ok(s) => s.to_string(),
                Err(_) => format!("{:?}", v.as_bytes()),
            };
            let mut s = tonic::Status::unimplemented(format!(
                "Content is compressed with `{other}` which isn't supported"
            ));
            s.metadata_mut().insert(
                "grpc-accept-encoding",
                tonic::metadata::MetadataValue::from_static("identity"),
            );
            return Err(s);
        }
    }
    let status = resp.status();
    // prost's decoder with the small first buffer of the other long-lived streams. A `Frame`'s
    // payload (`bytes` as `Bytes` in idmux_wire::proto) is split off the stream's buffer.
    let decoder = SmallBuffers::<ProxySshRequest, ProxySshResponse>::default().decoder();
    match tonic::Status::from_header_map(resp.headers()) {
        // Trailers-only: the call ended before it began.
        Some(s) if s.code() != tonic::Code::Ok => Err(s),
        Some(_) => Ok(tonic::Streaming::new_empty(decoder, resp.into_body())),
        None => Ok(tonic::Streaming::new_response(
            decoder,
            resp.into_body(),
            status,
            None,
            None,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use idmux_wire::proto::{SshFrame, TargetHost};

    /// The DATA frames the body yields for `msgs`, until it ends.
    async fn frames(msgs: Vec<Bytes>) -> Vec<Bytes> {
        let (mut tx, rx) = super::requests(msgs.len().max(1));
        for m in msgs {
            tx.try_send(m).unwrap();
        }
        drop(tx);
        let mut body = RequestBody::new(rx);
        let mut out = Vec::new();
        while let Some(f) = body.frame().await {
            out.push(f.unwrap().into_data().unwrap());
        }
        out
    }

    /// `p` behind room for its prefix, as the relay reads it.
    fn with_room(p: &[u8]) -> BytesMut {
        let mut b = BytesMut::zeroed(PREFIX_ROOM);
        b.extend_from_slice(p);
        b
    }

    fn ssh(p: &[u8]) -> Bytes {
        ssh_message(with_room(p))
    }

    /// Written from the field numbers, not by an encoder. Protobuf: a key is
    /// `field << 3 | wire type`, wire type 2 (length-delimited) for strings, bytes and
    /// messages, followed by a varint length. gRPC: `00` (not compressed), then the message's
    /// length as a big-endian u32.
    #[tokio::test]
    async fn requests_are_the_bytes_teleport_expects() {
        // dial_target = 1 { host_port = 1 "node-1:3022", cluster = 2 "leaf" }:
        //   TargetHost: 0a 0b "node-1:3022" (13 bytes) + 12 04 "leaf" (6) = 19 = 0x13
        //   request:    0a 13 + 19 bytes = 21 = 0x15          -> header 00 00 00 00 15
        let dial = ProxySshRequest {
            dial_target: Some(TargetHost {
                host_port: "node-1:3022".into(),
                cluster: "leaf".into(),
            }),
            frame: None,
        };
        let mut want = vec![0, 0, 0, 0, 0x15, 0x0a, 0x13, 0x0a, 0x0b];
        want.extend_from_slice(b"node-1:3022");
        want.extend_from_slice(&[0x12, 0x04]);
        want.extend_from_slice(b"leaf");
        assert_eq!(frames(vec![message(&dial)]).await, [want]);

        // ssh = 2 { payload = 1 "hi" }:
        //   Frame:   0a 02 68 69 = 4 bytes
        //   request: 12 04 + 4 bytes = 6                       -> header 00 00 00 00 06
        let want = [0, 0, 0, 0, 0x06, 0x12, 0x04, 0x0a, 0x02, b'h', b'i'];
        assert_eq!(frames(vec![ssh(b"hi")]).await, [want.to_vec()]);
        // The same request encoded whole says the same.
        let whole = message(&crate::grpc::ssh_frame(Bytes::from_static(b"hi")));
        assert_eq!(whole, want.to_vec());

        // agent = 3 { payload = 1 "hi" }: the same with key 3 << 3 | 2 = 1a.
        let agent = message(&crate::grpc::agent_frame(Bytes::from_static(b"hi")));
        let want = [0, 0, 0, 0, 0x06, 0x1a, 0x04, 0x0a, 0x02, b'h', b'i'];
        assert_eq!(frames(vec![agent]).await, [want.to_vec()]);

        // ssh = 2 {} (an empty payload is left out, as proto3 does): 12 00 -> 00 00 00 00 02.
        let empty = message(&crate::grpc::ssh_frame(Bytes::new()));
        assert_eq!(empty, [0, 0, 0, 0, 0x02, 0x12, 0x00].to_vec());

        // ssh = 2 { payload = 1 <2000 bytes> }: one DATA frame, prefix and payload.
        //   varint 2000 = 15 * 128 + 80            -> d0 0f
        //   Frame:   0a d0 0f + 2000 = 2003 = 15 * 128 + 83 -> d3 0f
        //   request: 12 d3 0f + 2003 = 2006 = 0x7d6 -> header 00 00 00 07 d6
        let payload = vec![7u8; 2000];
        let mut want = vec![0, 0, 0, 0x07, 0xd6, 0x12, 0xd3, 0x0f, 0x0a, 0xd0, 0x0f];
        want.extend_from_slice(&payload);
        assert_eq!(frames(vec![ssh(&payload)]).await, [want]);

        // ssh = 2 { payload = 1 <100 bytes> }: one-byte lengths, 64 = 0x64.
        //   Frame: 0a 64 + 100 = 102 = 0x66; request: 12 66 + 102 = 104 = 0x68
        let mut want = vec![0, 0, 0, 0, 0x68, 0x12, 0x66, 0x0a, 0x64];
        want.extend_from_slice(&[3; 100]);
        assert_eq!(ssh(&[3; 100]), want);

        // Several in a row, then the end of the body when the senders are gone.
        let got = frames(vec![ssh(b"hi"), ssh(b"hi")]).await;
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn a_64k_payload_is_framed_where_it_was_read() {
        // varint 65536 = 0 + 0 * 128 + 4 * 16384  -> 80 80 04
        // Frame:   0a 80 80 04 + 65536 = 65540 = 4 + 0 * 128 + 4 * 16384 -> 84 80 04
        // request: 12 84 80 04 + 65540 = 65544 = 0x10008 -> header 00 00 01 00 08
        let payload = vec![0x5au8; FRAME_SIZE];
        let buf = with_room(&payload);
        let at = buf[PREFIX_ROOM..].as_ptr();
        let got = ssh_message(buf);
        let head = [
            0, 0, 1, 0, 8, 0x12, 0x84, 0x80, 0x04, 0x0a, 0x80, 0x80, 0x04,
        ];
        assert_eq!(head.len(), PREFIX_ROOM, "the largest prefix fills the room");
        assert_eq!(got[..13], head);
        assert_eq!(got[13..].as_ptr(), at, "the payload was copied");
        assert_eq!(got.len(), 13 + FRAME_SIZE);

        // What a server's prost decoder makes of it.
        let msg = ProxySshRequest::decode(&got[5..]).unwrap();
        let want = crate::grpc::ssh_frame(Bytes::from(payload));
        assert_eq!(msg, want);
    }

    #[tokio::test]
    async fn decoded_payloads_are_split_off_the_stream_buffer() {
        // Two ProxySSHResponse { ssh = 2 { payload = 1 <3000 bytes> } } in one DATA frame:
        //   varint 3000 = 23 * 128 + 56 -> b8 17
        //   Frame:    0a b8 17 + 3000 = 3003 = 23 * 128 + 59 -> bb 17
        //   response: 12 bb 17 + 3003 = 3006 = 0xbbe -> header 00 00 00 0b be
        let msg = |b: u8| {
            let mut m = vec![0, 0, 0, 0x0b, 0xbe, 0x12, 0xbb, 0x17, 0x0a, 0xb8, 0x17];
            m.extend_from_slice(&[b; 3000]);
            m
        };
        let data = Bytes::from([msg(1), msg(2)].concat());
        let body = vec![Frame::data(data), trailers(&[("grpc-status", "0")])];
        let mut rx = response(grpc_response(200, &[], body)).unwrap();
        let mut payloads = Vec::new();
        while let Some(r) = rx.message().await.unwrap() {
            let Some(SshFrame::Ssh(f)) = r.frame else {
                panic!("not an ssh frame: {r:?}")
            };
            payloads.push(f.payload);
        }
        assert_eq!(payloads.len(), 2);
        assert_eq!(payloads[0][..], [1; 3000]);
        assert_eq!(payloads[1][..], [2; 3000]);
        // Adjacent in one buffer, 11 bytes of header and prefix apart: split off, not copied.
        let gap = payloads[1].as_ptr() as usize - payloads[0].as_ptr() as usize;
        assert_eq!(gap, 3000 + 11);
    }

    /// What a test server saw of a request: method, URI, version, headers, body.
    type Seen = (http::Method, Uri, http::Version, http::HeaderMap, Bytes);
    type Reply = http_body_util::StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;

    /// An HTTP/2 server on a pipe that records each request (whole) and answers `reply()`.
    async fn server(
        reply: fn() -> http::Response<Reply>,
    ) -> (
        SendRequest<tonic::body::Body>,
        std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    ) {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let (a, b) = tokio::io::duplex(1 << 16);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let (p, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        log.lock()
                            .unwrap()
                            .push((p.method, p.uri, p.version, p.headers, body));
                        Ok::<_, Infallible>(reply())
                    }
                });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(b), svc)
                .await;
        });
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(a))
            .await
            .unwrap();
        tokio::spawn(conn);
        (send, seen)
    }

    fn requests() -> Vec<ProxySshRequest> {
        let dial = ProxySshRequest {
            dial_target: Some(TargetHost {
                host_port: "node-1:3022".into(),
                cluster: String::new(),
            }),
            frame: None,
        };
        let ssh = |p: &[u8]| crate::grpc::ssh_frame(Bytes::copy_from_slice(p));
        vec![dial, ssh(b"hi"), ssh(&[9; 60_000]), ssh(b"")]
    }

    /// The messages and the end of a call, in words.
    async fn outcome(r: Result<tonic::Streaming<ProxySshResponse>, tonic::Status>) -> Vec<String> {
        let mut rx = match r {
            Ok(rx) => rx,
            Err(s) => return vec![format!("refused {:?} {:?}", s.code(), s.message())],
        };
        let mut out = Vec::new();
        loop {
            match rx.message().await {
                Ok(Some(m)) => out.push(format!("{m:?}")),
                Ok(None) => return out,
                Err(s) => {
                    out.push(format!("ended {:?} {:?}", s.code(), s.message()));
                    return out;
                }
            }
        }
    }

    /// The same call through tonic's client, as idmux made it before.
    async fn via_tonic(send: SendRequest<tonic::body::Body>, origin: Uri) -> Vec<String> {
        let svc = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
            let mut send = send.clone();
            async move { send.send_request(req).await }
        });
        let mut grpc = tonic::client::Grpc::with_origin(svc, origin);
        grpc.ready().await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        for r in requests() {
            tx.send(r).await.unwrap();
        }
        drop(tx);
        let r = grpc
            .streaming(
                tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                PathAndQuery::from_static(PROXY_SSH),
                tonic_prost::ProstCodec::<ProxySshRequest, ProxySshResponse>::default(),
            )
            .await
            .map(tonic::Response::into_inner);
        outcome(r).await
    }

    async fn via_us(mut send: SendRequest<tonic::body::Body>, origin: Uri) -> Vec<String> {
        send.ready().await.unwrap();
        let (mut tx, rx) = super::requests(8);
        for r in requests() {
            // As the relay sends them: payloads framed in place, the rest encoded whole.
            let m = match &r.frame {
                Some(SshFrame::Ssh(f)) if !f.payload.is_empty() => {
                    ssh_message(with_room(&f.payload))
                }
                _ => message(&r),
            };
            tx.try_send(m).unwrap();
        }
        drop(tx);
        outcome(call(&mut send, &origin, rx).await).await
    }

    fn grpc_response(
        status: u16,
        headers: &[(&'static str, &'static str)],
        frames: Vec<Frame<Bytes>>,
    ) -> http::Response<Reply> {
        let mut r = http::Response::new(http_body_util::StreamBody::new(
            futures_util::stream::iter(frames.into_iter().map(Ok).collect::<Vec<_>>()),
        ));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut().insert(*k, HeaderValue::from_static(v));
        }
        r
    }

    fn trailers(pairs: &[(&'static str, &'static str)]) -> Frame<Bytes> {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        Frame::trailers(h)
    }

    /// The request (line, headers and body bytes) and every kind of answer read exactly as they
    /// did through tonic's client.
    #[tokio::test]
    async fn the_call_matches_tonics_on_the_wire_and_in_its_answers() {
        const CT: (&str, &str) = ("content-type", "application/grpc");
        // details {}, then ssh "ok": 00 00 00 00 02 0a 00 | 00 00 00 00 06 12 04 0a 02 6f 6b
        const MSGS: &[u8] = &[
            0, 0, 0, 0, 2, 0x0a, 0, 0, 0, 0, 0, 6, 0x12, 4, 0x0a, 2, b'o', b'k',
        ];
        // A gRPC answer: MSGS in one DATA frame, then `end` as the trailers.
        fn messages_then(end: &[(&'static str, &'static str)]) -> http::Response<Reply> {
            grpc_response(
                200,
                &[CT],
                vec![Frame::data(Bytes::from_static(MSGS)), trailers(end)],
            )
        }
        let replies: [fn() -> http::Response<Reply>; 7] = [
            // A refusal in the headers (trailers-only), percent-encoded.
            || {
                grpc_response(
                    200,
                    &[
                        CT,
                        ("grpc-status", "5"),
                        ("grpc-message", "no%20such%20node"),
                    ],
                    vec![],
                )
            },
            // Trailers-only success: no messages.
            || grpc_response(200, &[CT, ("grpc-status", "0")], vec![]),
            // Messages, then OK.
            || messages_then(&[("grpc-status", "0")]),
            // Messages, then a refusal in the trailers.
            || messages_then(&[("grpc-status", "7"), ("grpc-message", "denied")]),
            // Not gRPC at all (a load balancer's answer).
            || {
                grpc_response(
                    503,
                    &[("content-type", "text/plain")],
                    vec![Frame::data(Bytes::from_static(b"busy"))],
                )
            },
            // Not gRPC, and nothing more: the HTTP status says what happened.
            || grpc_response(503, &[], vec![]),
            // Compressed, which idmux never asks for.
            || grpc_response(200, &[CT, ("grpc-encoding", "gzip")], vec![]),
        ];
        let details =
            "ProxySshResponse { details: None, frame: Some(Ssh(Frame { payload: b\"ok\" })) }";
        let ends = [
            Some("refused NotFound \"no such node\""),
            None,
            Some(details),
            Some("ended PermissionDenied \"denied\""),
            Some("ended Internal \"Unexpected EOF decoding stream.\""),
            Some("ended Unavailable \"grpc-status header missing, mapped from HTTP status code 503\""),
            Some("refused Unimplemented \"Content is compressed with `gzip` which isn't supported\""),
        ];
        let origin: Uri = "https://proxy.test:443".parse().unwrap();
        for (i, reply) in replies.into_iter().enumerate() {
            let (send, seen_tonic) = server(reply).await;
            let want = via_tonic(send, origin.clone()).await;
            let (send, seen_us) = server(reply).await;
            let got = via_us(send, origin.clone()).await;
            assert_eq!(got, want, "reply {i}");
            assert_eq!(want.last().map(String::as_str), ends[i], "reply {i}");
            let a = seen_tonic.lock().unwrap().clone();
            let b = seen_us.lock().unwrap().clone();
            assert_eq!(a.len(), 1);
            assert_eq!(b, a, "reply {i}: the requests differ");
        }
    }
}

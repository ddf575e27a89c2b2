//! The gRPC transport to nodes (ALPN `teleport-proxy-ssh-grpc`): Teleport's
//! `teleport.transport.v1.TransportService/ProxySSH`, what current tbot and tsh dial with
//! (PROTOCOL.md section 4).
//!
//! One HTTP/2 connection over the TLS stream carries many `ProxySSH` streams, one per node
//! connection. A stream's first request carries `dial_target {host_port, cluster}`; the
//! proxy's first response carries `details` once the node answered (a refusal is the stream's
//! status instead); then `ssh` frames carry the node's bytes both ways, and `agent` frames
//! carry the SSH agent protocol when the proxy asks for the agent (answered from the
//! in-memory agent, as tbot does with its keyring). HTTP/2 flow control paces every stream on
//! its own, so a client that stops reading holds back only its own node. `ProxySSH` requests
//! and responses are framed by `proxy_ssh` (payloads go out without a copy); the other
//! calls go through tonic's client.
//!
//! The HTTP/2 window and keep-alive settings here are shared with the dev cluster's server side
//! (its frame size limit is grpc-go's own).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use http::uri::PathAndQuery;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::agent::Agent;
use crate::proxy_ssh;
use idmux_wire::proto::{
    Frame, GetClusterDetailsRequest, GetClusterDetailsResponse, ProxyClusterRequest,
    ProxyClusterResponse, ProxySshRequest, ProxySshResponse, SshFrame, TargetHost,
    GET_CLUSTER_DETAILS, PROXY_CLUSTER, PROXY_SSH,
};

/// ALPN of the proxy's gRPC TransportService.
pub const ALPN_PROXY_GRPC: &[u8] = b"teleport-proxy-ssh-grpc";

/// Largest payload put in one frame (and read from a node at once).
pub const FRAME_SIZE: usize = 64 * 1024;
/// HTTP/2 receive window per stream: what one node connection may have in flight. Matches
/// OpenSSH's 2 MiB channel window, so the outer layer never limits the inner SSH session.
pub const STREAM_WINDOW: u32 = 2 << 20;
/// HTTP/2 receive window per connection, shared by its streams. Bytes a stalled client leaves
/// unread hold their share of it, so it covers 128 streams' full windows (more than the 100
/// node connections tbot and idmux put on one connection): a few stalled clients can never
/// starve their neighbours. Memory is spent only on bytes actually unread.
pub const CONNECTION_WINDOW: u32 = STREAM_WINDOW * 128;
/// Largest HTTP/2 frame the client accepts: fewer, larger frames for bulk downloads. (What it
/// sends is capped by the proxy's own setting: 16 KiB from Teleport's grpc-go server.)
pub const MAX_FRAME_SIZE: u32 = 256 << 10;
/// Streams a server lets one connection open at once (clients cap themselves lower).
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// HTTP/2 PING interval on idle connections, and how long an answer may take.
pub const KEEPALIVE: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the proxy may take to connect a node.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `GetClusterDetails` may take.
const DETAILS_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests queued towards the proxy per stream before the sender waits.
const REQUEST_QUEUE: usize = 4;

/// An HTTP/2 connection to the proxy's TransportService.
pub struct GrpcProxy {
    send: SendRequest<tonic::body::Body>,
    origin: http::Uri,
    proxy: String,
    /// Why the connection ended, in words, once it has (e.g. the proxy's TLS alert about our
    /// certificate, which TLS 1.3 delivers only after the handshake).
    ended: Arc<Mutex<Option<String>>>,
}

/// A node connection: one `ProxySSH` stream whose first response (`details`) has arrived.
pub struct GrpcNode {
    /// Requests to the proxy (`ssh` and `agent` frames), each a whole gRPC message
    /// (`proxy_ssh::ssh_message`, `proxy_ssh::message`); dropping every clone, or closing
    /// the channel from any, ends the request side.
    pub(crate) tx: proxy_ssh::Requests,
    /// The proxy's responses: `ssh` and `agent` frames, then the status.
    pub rx: tonic::Streaming<ProxySshResponse>,
    /// Answers `agent` frames, if the caller has an agent.
    pub agent: Option<Agent>,
}

/// Speak HTTP/2 over `stream` (TLS with ALPN [`ALPN_PROXY_GRPC`] to `proxy`).
pub async fn connect<S>(stream: S, proxy: &str) -> Result<GrpcProxy>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .timer(hyper_util::rt::TokioTimer::new());
    let tls_error = Arc::new(Mutex::new(None));
    let stream = TlsWatch {
        inner: stream,
        proxy: proxy.to_string(),
        seen: tls_error.clone(),
        heard: false,
    };
    let (send, conn) = b
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| anyhow!("proxy {proxy}: HTTP/2 setup for the gRPC transport failed: {e}"))?;
    let who = proxy.to_string();
    let ended = Arc::new(Mutex::new(None));
    let slot = ended.clone();
    tokio::spawn(async move {
        let result = conn.await;
        let tls = tls_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(|s: Seen| s.words);
        let why = match (result, tls) {
            (_, Some(tls)) => tls,
            (Ok(()), None) => format!("proxy {who} closed the connection"),
            (Err(e), None) => format!("proxy {who}: gRPC connection failed: {e}"),
        };
        tracing::debug!("gRPC transport connection to {who} ended: {why}");
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    });
    let origin = format!("https://{proxy}")
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("https://teleport.cluster.local"));
    Ok(GrpcProxy {
        send,
        origin,
        proxy: proxy.to_string(),
        ended,
    })
}

/// A byte stream that remembers, in words, why it failed. h2 keeps only the kind and text of
/// an I/O error, so the TLS alert that tells why the proxy refused us (TLS 1.3 delivers it
/// after the handshake) must be caught before HTTP/2 sees it.
struct TlsWatch<S> {
    inner: S,
    proxy: String,
    seen: Arc<Mutex<Option<Seen>>>,
    /// Has the proxy sent any bytes since the handshake (its HTTP/2 SETTINGS at least)?
    heard: bool,
}

/// Why a [`TlsWatch`] stream failed.
struct Seen {
    /// From the proxy's TLS alert or our TLS check: certain, never replaced.
    tls: bool,
    words: String,
}

impl<S> TlsWatch<S> {
    fn check<T>(&self, r: std::io::Result<T>) -> std::io::Result<T> {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
        let Err(e) = &r else { return r };
        tracing::debug!("gRPC transport to {}: {:?}: {e}", self.proxy, e.kind());
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if crate::tls::rustls_error(e).is_some() {
            if !seen.as_ref().is_some_and(|s| s.tls) {
                *seen = Some(Seen {
                    tls: true,
                    words: crate::tls::describe_tls_error(&self.proxy, &[ALPN_PROXY_GRPC], e),
                });
            }
        } else if !self.heard
            && seen.is_none()
            && matches!(e.kind(), ConnectionReset | BrokenPipe | UnexpectedEof)
        {
            // A proxy that refuses the client certificate may close before its alert is
            // read (a TCP reset destroys it): dropped before a single HTTP/2 byte says the same.
            *seen = Some(Seen {
                tls: false,
                words: format!(
                    "proxy {} dropped the connection right after the TLS handshake, before \
                     speaking HTTP/2 ({}): it most likely refused this identity's certificate \
                     (expired, or issued by another cluster)",
                    self.proxy,
                    crate::tls::io_words(e)
                ),
            });
        }
        r
    }
}

impl<S: AsyncRead + Unpin> TlsWatch<S> {
    /// A write failed (the proxy closed after refusing us, so the socket says only "broken
    /// pipe"): read what it sent before closing, which holds the TLS alert that says why. The
    /// connection is dead either way, so nothing readable is lost.
    fn read_pending_alert(&mut self, cx: &mut Context<'_>) {
        let mut scratch = [0u8; 512];
        let mut rb = tokio::io::ReadBuf::new(&mut scratch);
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
            let _ = self.check(r);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TlsWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = ready!(Pin::new(&mut self.inner).poll_read(cx, buf));
        if buf.filled().len() > before {
            self.heard = true;
        }
        Poll::Ready(self.check(r))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsWatch<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = ready!(Pin::new(&mut self.inner).poll_write(cx, buf));
        if r.is_err() {
            self.read_pending_alert(cx);
        }
        Poll::Ready(self.check(r))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs));
        if r.is_err() {
            self.read_pending_alert(cx);
        }
        Poll::Ready(self.check(r))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = ready!(Pin::new(&mut self.inner).poll_flush(cx));
        if r.is_err() {
            self.read_pending_alert(cx);
        }
        Poll::Ready(self.check(r))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl GrpcProxy {
    /// Has the connection ended (GOAWAY, reset, keepalive timeout)?
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    /// A tonic client whose calls are streams on this connection.
    fn client(
        &self,
    ) -> tonic::client::Grpc<
        impl tonic::client::GrpcService<
                tonic::body::Body,
                ResponseBody = hyper::body::Incoming,
                Error = hyper::Error,
                Future: Send,
            > + Send,
    > {
        let send = self.send.clone();
        let svc = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
            let mut send = send.clone();
            async move { send.send_request(req).await }
        });
        tonic::client::Grpc::with_origin(svc, self.origin.clone())
    }

    /// Open a `ProxySSH` stream to `host:port` in `cluster` (empty = the proxy's own) and wait
    /// for the proxy to connect the node. A refusal is one line with the proxy's reason.
    pub async fn open_node(
        &self,
        host: &str,
        port: u16,
        cluster: &str,
        agent: Option<Agent>,
    ) -> Result<GrpcNode> {
        let host_port = idmux_wire::hostport::join(host, port);
        let (mut tx, rx) = proxy_ssh::requests(REQUEST_QUEUE);
        let first = ProxySshRequest {
            dial_target: Some(TargetHost {
                host_port: host_port.clone(),
                cluster: cluster.to_string(),
            }),
            frame: None,
        };
        tx.try_send(proxy_ssh::message(&first))
            .expect("the receiver is in hand and the queue empty");
        let mut send = self.send.clone();
        let call = async {
            // A closed connection fails here as a failed send would: a transport error.
            let resp = match send.ready().await {
                Ok(()) => proxy_ssh::call(&mut send, &self.origin, rx).await,
                Err(e) => Err(tonic::Status::from_error(Box::new(e))),
            };
            let mut inbound = match resp {
                Ok(r) => r,
                // Made from a transport error: the connection's end says more.
                Err(s) if std::error::Error::source(&s).is_some() => {
                    let e = self.refusal(&host_port, &s);
                    return Err(self.why_ended().await.unwrap_or(e));
                }
                Err(s) => return Err(self.refusal(&host_port, &s)),
            };
            match inbound.message().await {
                Ok(Some(r)) if r.details.is_some() => Ok(inbound),
                Ok(Some(_)) => bail!(
                    "proxy {}: the first ProxySSH response to {host_port} carried no cluster \
                     details",
                    self.proxy
                ),
                Ok(None) => bail!(
                    "proxy {} ended the ProxySSH stream to {host_port} before connecting it",
                    self.proxy
                ),
                Err(s) => Err(self.refusal(&host_port, &s)),
            }
        };
        let inbound = match tokio::time::timeout(DIAL_TIMEOUT, call).await {
            Ok(r) => r?,
            Err(_) => bail!(
                "proxy {} did not connect {host_port} within {}s",
                self.proxy,
                DIAL_TIMEOUT.as_secs()
            ),
        };
        Ok(GrpcNode {
            tx,
            rx: inbound,
            agent,
        })
    }

    /// A `ProxyCluster` stream to the Auth server of `cluster`: raw bytes both ways, as a byte
    /// stream (the first request names the cluster; each later one carries a frame). The
    /// stream holds this connection open for as long as it lives.
    pub async fn open_cluster(&self, cluster: &str) -> Result<crate::dial::BoxIo> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut grpc = self.client();
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        tx.send(ProxyClusterRequest {
            cluster: cluster.to_string(),
            frame: None,
        })
        .await
        .expect("the receiver is in hand");
        let codec = SmallBuffers::<ProxyClusterRequest, ProxyClusterResponse>::default();
        let what = format!("ProxyCluster {cluster}");
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| anyhow!("proxy {}: gRPC connection not ready: {e}", self.proxy))?;
            grpc.streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                PathAndQuery::from_static(PROXY_CLUSTER),
                codec,
            )
            .await
            .map_err(|s| self.refusal(&what, &s))
        };
        let mut inbound = match tokio::time::timeout(DIAL_TIMEOUT, call).await {
            Ok(r) => r?.into_inner(),
            Err(_) => bail!(
                "proxy {} did not open {what} within {}s",
                self.proxy,
                DIAL_TIMEOUT.as_secs()
            ),
        };
        let (near, far) = tokio::io::duplex(2 * FRAME_SIZE);
        let (mut rd, mut wr) = tokio::io::split(far);
        let keep = self.send.clone();
        tokio::spawn(async move {
            let _conn = keep;
            let up = async {
                let mut buf = vec![0u8; FRAME_SIZE];
                while let Ok(n) = rd.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let req = ProxyClusterRequest {
                        cluster: String::new(),
                        frame: Some(Frame {
                            payload: Bytes::copy_from_slice(&buf[..n]),
                        }),
                    };
                    if tx.send(req).await.is_err() {
                        break;
                    }
                }
                drop(tx);
            };
            let down = async {
                while let Ok(Some(r)) = inbound.message().await {
                    let Some(f) = r.frame else { break };
                    if wr.write_all(&f.payload).await.is_err() {
                        break;
                    }
                }
                let _ = wr.shutdown().await;
            };
            tokio::join!(up, down);
        });
        Ok(Box::new(near))
    }

    /// `GetClusterDetails`: one round trip, so a proxy's refusal of the identity's certificate
    /// (which TLS 1.3 delivers after the handshake) shows here (used by `idmux doctor`).
    pub async fn cluster_details(&self) -> Result<GetClusterDetailsResponse> {
        let mut grpc = self.client();
        let codec =
            tonic_prost::ProstCodec::<GetClusterDetailsRequest, GetClusterDetailsResponse>::default(
            );
        let r = async {
            grpc.ready()
                .await
                .map_err(|e| anyhow!("proxy {}: gRPC connection not ready: {e}", self.proxy))?;
            grpc.unary(
                tonic::Request::new(GetClusterDetailsRequest {}),
                PathAndQuery::from_static(GET_CLUSTER_DETAILS),
                codec,
            )
            .await
            .map(|r| r.into_inner())
            .map_err(|s| anyhow!("proxy {}: GetClusterDetails: {}", self.proxy, s.message()))
        };
        let r = match tokio::time::timeout(DETAILS_TIMEOUT, r).await {
            Ok(r) => r,
            Err(_) => bail!(
                "proxy {} did not answer GetClusterDetails within {}s",
                self.proxy,
                DETAILS_TIMEOUT.as_secs()
            ),
        };
        match r {
            Ok(d) => Ok(d),
            Err(e) => Err(self.why_ended().await.unwrap_or(e)),
        }
    }

    fn refusal(&self, host_port: &str, s: &tonic::Status) -> anyhow::Error {
        anyhow!("{}", status_line(&self.proxy, host_port, s))
    }

    /// If the connection has ended (or ends within 200 ms: the stream's failure may be the
    /// first sign of it), why.
    async fn why_ended(&self) -> Option<anyhow::Error> {
        for _ in 0..20 {
            if let Some(why) = self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                return Some(anyhow!("{why}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

/// One line for a failed `ProxySSH`: the proxy's refusal, or what broke on the way.
pub(crate) fn status_line(proxy: &str, host_port: &str, s: &tonic::Status) -> String {
    let msg = s.message().split_whitespace().collect::<Vec<_>>().join(" ");
    if std::error::Error::source(s).is_some() {
        // Made by tonic from a transport error: nothing came from the proxy.
        return format!("proxy {proxy}: the gRPC stream to {host_port} failed: {msg}");
    }
    match s.code() {
        tonic::Code::Unimplemented => {
            format!("proxy {proxy} does not serve {PROXY_SSH} (use --transport ssh): {msg}")
        }
        _ if msg.is_empty() => format!("proxy refused to connect to {host_port} ({:?})", s.code()),
        _ => format!("proxy refused to connect to {host_port}: {msg}"),
    }
}

/// Where tonic's encode and decode buffers of a stream start: 128 bytes, not tonic's 8 KiB
/// each. Every open node connection holds its decode buffer for its whole life, an idle one
/// too (16 KiB a session with tonic's two, most of the multiplexer's memory per open session
/// before; 1 KiB until 1,000 held sessions still came out 1 MiB over issue 18's budget). The
/// node's banner, the first thing an idle session receives, fits; a bulk transfer grows the
/// buffer to its message size as before. Messages are still gathered into chunks of up to
/// 32 KiB before they go to HTTP/2 (tonic's yield threshold).
pub const STREAM_BUFFER: usize = 128;

/// tonic's prost codec with [`STREAM_BUFFER`]-sized starting buffers, for the long-lived
/// streams (`ProxyCluster`; `ProxySSH`'s responses, whose requests `proxy_ssh` frames).
pub(crate) struct SmallBuffers<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for SmallBuffers<T, U> {
    fn default() -> Self {
        SmallBuffers(std::marker::PhantomData)
    }
}

impl<T, U> SmallBuffers<T, U> {
    fn settings() -> tonic::codec::BufferSettings {
        tonic::codec::BufferSettings::new(STREAM_BUFFER, 32 << 10)
    }
}

impl<T, U> tonic::codec::Codec for SmallBuffers<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <tonic_prost::ProstCodec<T, U> as tonic::codec::Codec>::Encoder;
    type Decoder = <tonic_prost::ProstCodec<T, U> as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstCodec::<T, U>::raw_encoder(Self::settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<T, U>::raw_decoder(Self::settings())
    }
}

/// A request carrying `payload` on the node's SSH stream (the relay frames its payloads in
/// place: `proxy_ssh::ssh_message`).
#[cfg(test)]
pub(crate) fn ssh_frame(payload: Bytes) -> ProxySshRequest {
    ProxySshRequest {
        dial_target: None,
        frame: Some(SshFrame::Ssh(Frame { payload })),
    }
}

/// A request carrying `payload` on the agent stream.
pub(crate) fn agent_frame(payload: Bytes) -> ProxySshRequest {
    ProxySshRequest {
        dial_target: None,
        frame: Some(SshFrame::Agent(Frame { payload })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lived_streams_start_with_small_codec_buffers() {
        use tonic::codec::{Codec, Decoder, Encoder};
        let mut c = SmallBuffers::<ProxySshRequest, ProxySshResponse>::default();
        let want = format!("{:?}", tonic::codec::BufferSettings::new(128, 32 << 10));
        assert_eq!(format!("{:?}", c.encoder().buffer_settings()), want);
        assert_eq!(format!("{:?}", c.decoder().buffer_settings()), want);
        // tonic's own default, which every stream held twice before.
        let mut d = tonic_prost::ProstCodec::<ProxySshRequest, ProxySshResponse>::default();
        assert_ne!(format!("{:?}", d.encoder().buffer_settings()), want);
    }

    /// A stream whose reads and writes fail with the queued errors (then EOF).
    struct Failing(std::collections::VecDeque<std::io::Error>);

    impl AsyncRead for Failing {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(self.0.pop_front().map_or(Ok(()), Err))
        }
    }

    impl AsyncWrite for Failing {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(self.0.pop_front().map_or(Ok(b.len()), Err))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn watch(errors: Vec<std::io::Error>) -> (TlsWatch<Failing>, Arc<Mutex<Option<Seen>>>) {
        let seen = Arc::new(Mutex::new(None));
        let w = TlsWatch {
            inner: Failing(errors.into()),
            proxy: "proxy.test:443".into(),
            seen: seen.clone(),
            heard: false,
        };
        (w, seen)
    }

    fn words(seen: &Arc<Mutex<Option<Seen>>>) -> String {
        seen.lock()
            .unwrap()
            .as_ref()
            .map(|s| s.words.clone())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_reset_before_any_http2_byte_reads_as_a_refused_certificate() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let reset = || std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let (mut w, seen) = watch(vec![reset()]);
        assert!(w.read(&mut [0u8; 16]).await.is_err());
        let got = words(&seen);
        assert!(
            got.contains("proxy proxy.test:443 dropped the connection"),
            "{got}"
        );
        assert!(got.contains("refused this identity's certificate"), "{got}");

        // The proxy's TLS alert, read after a failed write, wins over the guess.
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        let (mut w, seen) = watch(vec![reset(), alert]);
        assert!(w.write_all(b"PRI * HTTP/2.0").await.is_err());
        let got = words(&seen);
        assert!(got.contains("TLS alert UnknownCA"), "{got}");

        // Once the proxy has spoken HTTP/2, a reset is only a reset.
        let (mut w, seen) = watch(vec![]);
        w.inner.0.push_back(reset());
        w.heard = true;
        assert!(w.read(&mut [0u8; 16]).await.is_err());
        assert!(seen.lock().unwrap().is_none());
    }

    #[test]
    fn refusals_are_one_line_with_the_reason() {
        let s = tonic::Status::not_found(
            "failed to dial target host:\n direct dialing to nodes not found in inventory is \
             not supported",
        );
        assert_eq!(
            status_line("p:1", "node-9:3022", &s),
            "proxy refused to connect to node-9:3022: failed to dial target host: direct \
             dialing to nodes not found in inventory is not supported"
        );
        let s = tonic::Status::unimplemented("");
        assert!(status_line("p:1", "n:1", &s).contains("--transport ssh"));
        let s = tonic::Status::permission_denied("");
        assert_eq!(
            status_line("p:1", "n:1", &s),
            "proxy refused to connect to n:1 (PermissionDenied)"
        );
    }
}

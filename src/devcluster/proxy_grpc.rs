//! The proxy's gRPC TransportService (ALPN `teleport-proxy-ssh-grpc`, or TLS on the SSH port):
//! `ProxySSH`, one bidi stream per node connection, `ProxyCluster`, one bidi stream of raw
//! bytes to a cluster's Auth server, and `GetClusterDetails`.
//!
//! `ProxyCluster` (lib/srv/transport/transportv1 `ProxyCluster`, lib/proxy/router.go
//! `DialSite`): the first request names the cluster (empty = this one) and may carry a frame;
//! every later request must carry a frame (else `received invalid frame`, InvalidArgument). The
//! bytes go to the same mutual-TLS Auth acceptor the `teleport-auth@` route reaches
//! ([`crate::serve_auth`]), so the client does its own TLS with Auth inside the stream. An
//! unknown cluster: NotFound `failed dialing cluster "X": cluster "X" is not found`.
//!
//! Mutual TLS with a client certificate from the user CA; the caller is the certificate's
//! identity (user and roles). A `ProxySSH` stream's first request must carry `dial_target`;
//! the target gets the same checks as the SSH transport ([`router::authorize`]); a refusal
//! ends the stream with a status whose message reads `failed to dial target host: <why>`, as
//! Teleport's transport service words it. Once the node answers, the first response carries
//! `details`, then `ssh` frames flow both ways. HTTP/2 flow control paces each stream on its
//! own: a node or client that stops reading stalls only its stream, and nothing is queued
//! without bound.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::coalesce;
use crate::router::{self, Caller};
use crate::state::State;
use crate::Ctx;
use idmux_identity::TlsIdentity;
use idmux_transport::grpc::{self, FRAME_SIZE};
use idmux_transport::relay;
use idmux_wire::proto::{
    ClusterDetails, Frame, GetClusterDetailsRequest, GetClusterDetailsResponse,
    ProxyClusterRequest, ProxyClusterResponse, ProxySshRequest, ProxySshResponse, SshFrame,
    GET_CLUSTER_DETAILS, PROXY_CLUSTER, PROXY_SSH,
};

/// How long a client may take to send the dial target.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve TransportService on one connection from `caller` until the client closes it.
pub async fn serve<S: crate::Io>(
    ctx: Arc<Ctx>,
    tls: TlsStream<S>,
    caller: TlsIdentity,
) -> Result<()> {
    let caller = Arc::new(caller);
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (ctx, caller) = (ctx.clone(), caller.clone());
        async move { Ok::<_, Infallible>(route(ctx, caller, req).await) }
    });
    h2_server()
        .serve_connection(TokioIo::new(tls), svc)
        .await
        .map_err(|e| anyhow!("transport gRPC: {e}"))
}

/// The largest HTTP/2 frame Teleport's gRPC server accepts: grpc-go advertises
/// `SETTINGS_MAX_FRAME_SIZE` = `http2MaxFrameLen` (16 KiB, `internal/transport/defaults.go`,
/// sent by `newHTTP2Server` in `http2_server.go`) and offers no option to change it, so a
/// client's bulk upload reaches a real proxy in 16 KiB DATA frames.
pub(crate) const TELEPORT_MAX_FRAME_SIZE: u32 = 16 * 1024;

/// The HTTP/2 server side of TransportService's connections.
fn h2_server() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.initial_stream_window_size(grpc::STREAM_WINDOW)
        .initial_connection_window_size(grpc::CONNECTION_WINDOW)
        .max_frame_size(TELEPORT_MAX_FRAME_SIZE)
        .max_concurrent_streams(grpc::MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(grpc::KEEPALIVE))
        .keep_alive_timeout(grpc::KEEPALIVE_TIMEOUT)
        .timer(hyper_util::rt::TokioTimer::new());
    b
}

async fn route(
    ctx: Arc<Ctx>,
    caller: Arc<TlsIdentity>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<tonic::body::Body> {
    match req.uri().path() {
        PROXY_SSH => {
            let codec = tonic_prost::ProstCodec::<ProxySshResponse, ProxySshRequest>::default();
            tonic::server::Grpc::new(codec)
                .streaming(ProxySsh { ctx, caller }, req)
                .await
        }
        PROXY_CLUSTER => {
            let codec =
                tonic_prost::ProstCodec::<ProxyClusterResponse, ProxyClusterRequest>::default();
            tonic::server::Grpc::new(codec)
                .streaming(ProxyCluster { ctx, caller }, req)
                .await
        }
        GET_CLUSTER_DETAILS => {
            let codec = tonic_prost::ProstCodec::<
                GetClusterDetailsResponse,
                GetClusterDetailsRequest,
            >::default();
            tonic::server::Grpc::new(codec).unary(Details, req).await
        }
        other => Status::unimplemented(format!("{other} is not served by the idmux dev cluster"))
            .into_http(),
    }
}

struct Details;

impl tonic::server::UnaryService<GetClusterDetailsRequest> for Details {
    type Response = GetClusterDetailsResponse;
    type Future = std::future::Ready<Result<tonic::Response<GetClusterDetailsResponse>, Status>>;

    fn call(&mut self, _: tonic::Request<GetClusterDetailsRequest>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(GetClusterDetailsResponse {
            details: Some(ClusterDetails::default()),
        })))
    }
}

struct ProxySsh {
    ctx: Arc<Ctx>,
    caller: Arc<TlsIdentity>,
}

type Responses = ReceiverStream<Result<ProxySshResponse, Status>>;
type ProxySshFuture =
    Pin<Box<dyn Future<Output = Result<tonic::Response<Responses>, Status>> + Send>>;

/// A stream's first request within [`FIRST_REQUEST_TIMEOUT`]: `late` (DeadlineExceeded) when
/// it does not come in time, `ended` (InvalidArgument) when the stream ends first.
async fn first_request<T: prost::Message + Default>(
    inbound: &mut tonic::Streaming<T>,
    late: &str,
    ended: &str,
) -> Result<T, Status> {
    match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, inbound.message()).await {
        Err(_) => Err(Status::deadline_exceeded(late)),
        Ok(Err(s)) => Err(s),
        Ok(Ok(None)) => Err(Status::invalid_argument(ended)),
        Ok(Ok(Some(r))) => Ok(r),
    }
}

impl tonic::server::StreamingService<ProxySshRequest> for ProxySsh {
    type Response = ProxySshResponse;
    type ResponseStream = Responses;
    type Future = ProxySshFuture;

    fn call(&mut self, req: tonic::Request<tonic::Streaming<ProxySshRequest>>) -> ProxySshFuture {
        let (ctx, caller) = (self.ctx.clone(), self.caller.clone());
        Box::pin(async move {
            let mut inbound = req.into_inner();
            let first = first_request(
                &mut inbound,
                "no dial target within the time limit",
                "stream ended before the dial target",
            )
            .await?;
            let (tcp, target) = dial(&ctx, &caller, first).await.inspect_err(|s| {
                tracing::info!(
                    user = caller.username,
                    "proxy grpc: refused: {}",
                    s.message()
                );
            })?;
            tracing::info!(user = caller.username, target, "proxy grpc: relaying");
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let details = ProxySshResponse {
                details: Some(ClusterDetails::default()),
                frame: None,
            };
            // The receiver is in hand: this cannot fail.
            let _ = tx.send(Ok(details)).await;
            tokio::spawn(relay(inbound, tcp, tx));
            Ok(tonic::Response::new(ReceiverStream::new(rx)))
        })
    }
}

/// Check the first request and the caller, then connect to the node.
async fn dial(
    ctx: &Ctx,
    caller: &TlsIdentity,
    first: ProxySshRequest,
) -> Result<(TcpStream, String), Status> {
    let target = first
        .dial_target
        .ok_or_else(|| Status::invalid_argument("first frame must contain a dial target"))?;
    let (host, port) = router::split_target(&target.host_port)
        .map_err(|_| Status::invalid_argument("dial target contains an invalid hostport"))?;
    let who = Caller {
        username: &caller.username,
        roles: &caller.groups,
    };
    let refused =
        |code: Code, why: String| Status::new(code, format!("failed to dial target host: {why}"));
    let addr = router::authorize(&ctx.dir, &ctx.proxy_host, &who, host, port, &target.cluster)
        .map_err(|r| refused(r.grpc_code(), r.to_string()))?;
    let tcp = router::dial_node(host, &addr)
        .await
        .map_err(|e| refused(Code::Unavailable, e.to_string()))?;
    Ok((tcp, target.host_port))
}

/// Copy between the stream and the node until the node closes its side or the client goes.
async fn relay(
    mut inbound: tonic::Streaming<ProxySshRequest>,
    tcp: TcpStream,
    tx: tokio::sync::mpsc::Sender<Result<ProxySshResponse, Status>>,
) {
    let (mut node_r, mut node_w) = tcp.into_split();
    // Client -> node. Reading the next message only after the write finishes is what makes
    // HTTP/2 flow control hold the client back when the node is slow. The messages already
    // decoded when a write starts go in the same write (up to COALESCE bytes), so a bulk
    // upload costs the node's socket one writev per batch, not one write per frame.
    let to_node = async {
        let mut batch: Vec<bytes::Bytes> = Vec::new();
        let mut next = inbound.message().await;
        loop {
            match next {
                Ok(Some(ProxySshRequest {
                    frame: Some(SshFrame::Ssh(f)),
                    ..
                })) => batch.push(f.payload),
                // The dev proxy records nothing, so it never asks for the agent.
                Ok(Some(_)) => {}
                Ok(None) => {
                    if coalesce::write_batch(&mut node_w, &mut batch)
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    // The client is done sending: pass the half-close on.
                    let _ = node_w.shutdown().await;
                    return true;
                }
                Err(_) => return false,
            }
            let queued: usize = batch.iter().map(|b| b.len()).sum();
            next = match coalesce::ready_now(inbound.message()) {
                Some(more) if queued < coalesce::COALESCE => more,
                early => {
                    if coalesce::write_batch(&mut node_w, &mut batch)
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    match early {
                        Some(more) => more,
                        None => inbound.message().await,
                    }
                }
            };
        }
    };
    // Node -> client.
    let from_node = async {
        let mut chunks = relay::Chunks::new();
        loop {
            match chunks.read(&mut node_r, FRAME_SIZE).await {
                Ok(None) | Err(_) => return,
                Ok(Some(payload)) => {
                    let frame = ProxySshResponse {
                        details: None,
                        frame: Some(SshFrame::Ssh(Frame { payload })),
                    };
                    if tx.send(Ok(frame)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::pin!(to_node, from_node);
    let mut sending = true;
    loop {
        tokio::select! {
            half_closed = &mut to_node, if sending => {
                if !half_closed {
                    return; // the client reset the stream: drop the node connection
                }
                sending = false;
            }
            _ = &mut from_node => return, // the node is done: end the stream (status OK)
        }
    }
}

/// May `caller` reach the Auth server of `cluster` (empty = this one)? (pure)
pub(crate) fn cluster_route(st: &State, caller: &TlsIdentity, cluster: &str) -> Result<(), Status> {
    let who = Caller {
        username: &caller.username,
        roles: &caller.groups,
    };
    router::check_caller(st, &who).map_err(|r| Status::new(r.grpc_code(), r.to_string()))?;
    let failed = |code: Code, why: String| {
        Status::new(code, format!("failed dialing cluster {cluster:?}: {why}"))
    };
    if cluster.is_empty() || cluster == st.cluster_name {
        return Ok(());
    }
    if st.leaves.contains_key(cluster) {
        // The dev cluster's leaves have no Auth server (FIDELITY.md, leaf clusters).
        return Err(failed(
            Code::Unimplemented,
            "the idmux dev cluster runs no Auth server for its leaf clusters".into(),
        ));
    }
    Err(failed(
        Code::NotFound,
        format!("cluster {cluster:?} is not found"),
    ))
}

struct ProxyCluster {
    ctx: Arc<Ctx>,
    caller: Arc<TlsIdentity>,
}

type ClusterResponses = ReceiverStream<Result<ProxyClusterResponse, Status>>;
type ProxyClusterFuture =
    Pin<Box<dyn Future<Output = Result<tonic::Response<ClusterResponses>, Status>> + Send>>;

impl tonic::server::StreamingService<ProxyClusterRequest> for ProxyCluster {
    type Response = ProxyClusterResponse;
    type ResponseStream = ClusterResponses;
    type Future = ProxyClusterFuture;

    fn call(
        &mut self,
        req: tonic::Request<tonic::Streaming<ProxyClusterRequest>>,
    ) -> ProxyClusterFuture {
        let (ctx, caller) = (self.ctx.clone(), self.caller.clone());
        Box::pin(async move {
            let mut inbound = req.into_inner();
            let first = first_request(
                &mut inbound,
                "no cluster name within the time limit",
                "failed receiving first frame: stream ended",
            )
            .await?;
            let st = State::load(&ctx.dir).map_err(|e| Status::unavailable(format!("{e:#}")))?;
            cluster_route(&st, &caller, &first.cluster).inspect_err(|s| {
                tracing::info!(
                    user = caller.username,
                    "proxy cluster: refused: {}",
                    s.message()
                );
            })?;
            let (mut near, far) = tokio::io::duplex(256 * 1024);
            let peer = format!("ProxyCluster of {}", caller.username);
            let c = ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::serve_auth(c, far, &peer).await {
                    tracing::info!("{peer}: {e:#}");
                }
            });
            if let Some(f) = first.frame {
                near.write_all(&f.payload).await.map_err(|e| {
                    Status::unavailable(format!("failed writing payload from first frame: {e}"))
                })?;
            }
            tracing::info!(user = caller.username, "proxy cluster: relaying to Auth");
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(relay_cluster(inbound, near, tx));
            Ok(tonic::Response::new(ReceiverStream::new(rx)))
        })
    }
}

/// Copy between a `ProxyCluster` stream and Auth until either side ends.
async fn relay_cluster(
    mut inbound: tonic::Streaming<ProxyClusterRequest>,
    auth: tokio::io::DuplexStream,
    tx: tokio::sync::mpsc::Sender<Result<ProxyClusterResponse, Status>>,
) {
    let (mut auth_r, mut auth_w) = tokio::io::split(auth);
    let to_auth = async {
        loop {
            match inbound.message().await {
                Ok(Some(ProxyClusterRequest { frame: Some(f), .. })) => {
                    if auth_w.write_all(&f.payload).await.is_err() {
                        return None;
                    }
                }
                Ok(Some(_)) => return Some(Status::invalid_argument("received invalid frame")),
                Ok(None) => {
                    let _ = auth_w.shutdown().await;
                    return None;
                }
                Err(_) => return None,
            }
        }
    };
    let from_auth = async {
        let mut chunks = relay::Chunks::new();
        loop {
            match chunks.read(&mut auth_r, FRAME_SIZE).await {
                Ok(None) | Err(_) => return,
                Ok(Some(payload)) => {
                    let frame = ProxyClusterResponse {
                        frame: Some(Frame { payload }),
                    };
                    if tx.send(Ok(frame)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::pin!(to_auth, from_auth);
    let mut sending = true;
    loop {
        tokio::select! {
            refused = &mut to_auth, if sending => {
                if let Some(status) = refused {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                sending = false;
            }
            _ = &mut from_auth => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's first SETTINGS frame, read as bytes (RFC 9113 6.5: a 9-byte frame header,
    /// type 4, then 6-byte entries: a u16 identifier and a u32 value), carries
    /// SETTINGS_MAX_FRAME_SIZE (5) = 16384, as grpc-go's server does.
    #[tokio::test]
    async fn the_http2_server_accepts_frames_of_16_kib_as_grpc_go() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let svc = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
            Ok::<_, Infallible>(http::Response::new(String::new()))
        });
        tokio::spawn(h2_server().serve_connection(TokioIo::new(server), svc));
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        client
            .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .await
            .unwrap(); // empty SETTINGS
        let mut head = [0u8; 9];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head[3], 4, "the server's first frame is SETTINGS: {head:?}");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut body = vec![0u8; len];
        client.read_exact(&mut body).await.unwrap();
        let settings: Vec<(u16, u32)> = body
            .chunks(6)
            .map(|e| {
                (
                    u16::from_be_bytes([e[0], e[1]]),
                    u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
                )
            })
            .collect();
        assert!(settings.contains(&(5, 16384)), "{settings:?}");
    }

    #[test]
    fn proxy_cluster_routes_to_this_cluster_only_with_teleports_words() {
        let mut st = State {
            cluster_name: "dev.test".into(),
            ..Default::default()
        };
        st.leaves.insert("leaf.test".into(), vec![]);
        st.bots.insert(
            "ci".into(),
            crate::state::Bot {
                roles: vec![],
                logins: vec![],
                generation: 1,
                locked: None,
                instance_id: String::new(),
                heartbeats: vec![],
            },
        );
        let bot = TlsIdentity {
            username: "bot-ci".into(),
            ..Default::default()
        };
        assert!(cluster_route(&st, &bot, "").is_ok());
        assert!(cluster_route(&st, &bot, "dev.test").is_ok());
        let s = cluster_route(&st, &bot, "nope").unwrap_err();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(
            s.message(),
            r#"failed dialing cluster "nope": cluster "nope" is not found"#
        );
        assert_eq!(
            cluster_route(&st, &bot, "leaf.test").unwrap_err().code(),
            Code::Unimplemented
        );
        let gone = TlsIdentity {
            username: "bot-gone".into(),
            ..Default::default()
        };
        assert_eq!(
            cluster_route(&st, &gone, "").unwrap_err().code(),
            Code::PermissionDenied
        );
        st.bots.get_mut("ci").unwrap().locked = Some("copied".into());
        assert_eq!(
            cluster_route(&st, &bot, "").unwrap_err().code(),
            Code::PermissionDenied
        );
    }
}

//! The proxy's gRPC TransportService (ALPN `teleport-proxy-ssh-grpc`): `ProxySSH`, one bidi
//! stream per node connection, and `GetClusterDetails`.
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

use crate::router::{self, Caller};
use crate::Ctx;
use idmux_identity::TlsIdentity;
use idmux_transport::grpc::{self, FRAME_SIZE};
use idmux_transport::relay;
use idmux_wire::proto::{
    ClusterDetails, Frame, GetClusterDetailsRequest, GetClusterDetailsResponse, ProxySshRequest,
    ProxySshResponse, SshFrame, GET_CLUSTER_DETAILS, PROXY_SSH,
};

/// How long a client may take to send the dial target.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve TransportService on one connection from `caller` until the client closes it.
pub async fn serve(ctx: Arc<Ctx>, tls: TlsStream<TcpStream>, caller: TlsIdentity) -> Result<()> {
    let caller = Arc::new(caller);
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (ctx, caller) = (ctx.clone(), caller.clone());
        async move { Ok::<_, Infallible>(route(ctx, caller, req).await) }
    });
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.initial_stream_window_size(grpc::STREAM_WINDOW)
        .initial_connection_window_size(grpc::CONNECTION_WINDOW)
        .max_frame_size(grpc::MAX_FRAME_SIZE)
        .max_concurrent_streams(grpc::MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(grpc::KEEPALIVE))
        .keep_alive_timeout(grpc::KEEPALIVE_TIMEOUT)
        .timer(hyper_util::rt::TokioTimer::new());
    b.serve_connection(TokioIo::new(tls), svc)
        .await
        .map_err(|e| anyhow!("transport gRPC: {e}"))
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

impl tonic::server::StreamingService<ProxySshRequest> for ProxySsh {
    type Response = ProxySshResponse;
    type ResponseStream = Responses;
    type Future = ProxySshFuture;

    fn call(&mut self, req: tonic::Request<tonic::Streaming<ProxySshRequest>>) -> ProxySshFuture {
        let (ctx, caller) = (self.ctx.clone(), self.caller.clone());
        Box::pin(async move {
            let mut inbound = req.into_inner();
            let first = match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, inbound.message()).await {
                Err(_) => {
                    return Err(Status::deadline_exceeded(
                        "no dial target within the time limit",
                    ))
                }
                Ok(Err(s)) => return Err(s),
                Ok(Ok(None)) => {
                    return Err(Status::invalid_argument(
                        "stream ended before the dial target",
                    ))
                }
                Ok(Ok(Some(r))) => r,
            };
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
    // HTTP/2 flow control hold the client back when the node is slow.
    let to_node = async {
        loop {
            match inbound.message().await {
                Ok(Some(ProxySshRequest {
                    frame: Some(SshFrame::Ssh(f)),
                    ..
                })) => {
                    if node_w.write_all(&f.payload).await.is_err() {
                        return false;
                    }
                }
                // The dev proxy records nothing, so it never asks for the agent.
                Ok(Some(_)) => {}
                Ok(None) => {
                    // The client is done sending: pass the half-close on.
                    let _ = node_w.shutdown().await;
                    return true;
                }
                Err(_) => return false,
            }
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

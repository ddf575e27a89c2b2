//! The join service (`/teleport.join.v1.JoinService/Join`), as the proxy serves it to a bot
//! with no certificate yet: ALPN `teleport-proxy-grpc` (then `h2`) on the proxy's port, TLS
//! with the web certificate (what a client checks against its system roots), no client
//! certificate (`lib/client/proxy/insecure`, `lib/join/joinclient`).
//!
//! A token join on one stream: `ClientInit` (system role `Bot`, join method `token` or unset)
//! -> `ServerInit{join_method: "token", signature_algorithm_suite}` -> `TokenInit` (the public
//! keys: TLS as PKIX DER, SSH in wire format; the requested expiry) -> `Result` with the
//! certificates as DER and SSH wire format, CA lists as in `proto.Certs` (user CA, then host
//! CA). With `--legacy-join-only` the cluster answers as a Teleport without the service:
//! `unknown service teleport.join.v1.JoinService` (Unimplemented), and bots fall back to
//! `POST /webapi/host/credentials`.
//!
//! [`join`] is the protocol over any message stream, so it is tested without a network.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tonic::Status;

use crate::auth::{self, DEFAULT_JOIN_TTL, MAX_RENEWABLE_TTL};
use crate::ca::ClusterCas;
use crate::Ctx;
use idmux_wire::join::{
    BotResult, Certificates, JoinRequest, JoinRequestPayload, JoinResponse, JoinResponsePayload,
    JoinResult, ServerInit, JOIN,
};

/// The ALPN of the proxy's unauthenticated gRPC services.
pub(crate) const ALPN_PROXY_GRPC_INSECURE: &[u8] = b"teleport-proxy-grpc";
/// How long a client may take between two messages.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve gRPC on one connection: the join service, or an older Teleport's answer.
pub async fn serve<S: crate::Io>(ctx: Arc<Ctx>, tls: TlsStream<S>) -> Result<()> {
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(route(ctx, req).await) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), svc)
        .await
        .map_err(|e| anyhow!("join gRPC: {e}"))
}

/// Answer one call on a connection that serves the join service (the proxy's
/// `teleport-proxy-grpc`, Auth's port).
pub(crate) async fn route(
    ctx: Arc<Ctx>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<tonic::body::Body> {
    let path = req.uri().path().to_string();
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if path != JOIN || ctx.legacy_join_only {
        // grpc-go's words for a service the server does not have (this port serves no other).
        return Status::unimplemented(format!("unknown service {service}")).into_http();
    }
    let codec = tonic_prost::ProstCodec::<JoinResponse, JoinRequest>::default();
    tonic::server::Grpc::new(codec)
        .streaming(JoinSvc { ctx }, req)
        .await
}

struct JoinSvc {
    ctx: Arc<Ctx>,
}

type Responses = Pin<Box<dyn Stream<Item = Result<JoinResponse, Status>> + Send>>;
type JoinFuture =
    Pin<Box<dyn std::future::Future<Output = Result<tonic::Response<Responses>, Status>> + Send>>;

impl tonic::server::StreamingService<JoinRequest> for JoinSvc {
    type Response = JoinResponse;
    type ResponseStream = Responses;
    type Future = JoinFuture;

    fn call(&mut self, req: tonic::Request<tonic::Streaming<JoinRequest>>) -> Self::Future {
        let ctx = self.ctx.clone();
        Box::pin(async move {
            let mut inbound = req.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<JoinResponse, Status>>(2);
            tokio::spawn(async move {
                let mut next = async || -> Result<JoinRequest, Status> {
                    match tokio::time::timeout(STEP_TIMEOUT, inbound.message()).await {
                        Err(_) => Err(Status::deadline_exceeded("no join message within 30s")),
                        Ok(Err(s)) => Err(s),
                        Ok(Ok(None)) => Err(Status::cancelled("the client closed the stream")),
                        Ok(Ok(Some(m))) => Ok(m),
                    }
                };
                let first = match next().await {
                    Ok(m) => m,
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                };
                let live = ctx.live();
                let init = match server_init(&first, &live.cas) {
                    Ok(i) => i,
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                };
                let token = match &first.payload {
                    Some(JoinRequestPayload::ClientInit(c)) => c.token_name.clone(),
                    _ => String::new(),
                };
                if tx.send(Ok(init)).await.is_err() {
                    return;
                }
                let answer = match next().await {
                    Ok(m) => {
                        let dir = ctx.dir.clone();
                        tokio::task::spawn_blocking(move || {
                            token_result(&dir, &live.cas, &token, &m)
                        })
                        .await
                        .unwrap_or_else(|e| Err(Status::internal(format!("join failed: {e}"))))
                    }
                    Err(s) => Err(s),
                };
                let _ = tx.send(answer).await;
            });
            let stream: Responses = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
            Ok(tonic::Response::new(stream))
        })
    }
}

/// The answer to the first message: it must be a bot's `ClientInit` for a token join.
pub(crate) fn server_init(first: &JoinRequest, cas: &ClusterCas) -> Result<JoinResponse, Status> {
    let Some(JoinRequestPayload::ClientInit(init)) = &first.payload else {
        return Err(Status::invalid_argument(
            "expected ClientInit as the first message",
        ));
    };
    if init.system_role != "Bot" {
        return Err(Status::invalid_argument(format!(
            "this dev cluster joins bots only (system role {:?})",
            init.system_role
        )));
    }
    match init.join_method.as_deref() {
        None | Some("") | Some("token") => {}
        Some(other) => {
            return Err(Status::invalid_argument(format!(
                "join method {other:?} is not supported by this dev cluster (token only)"
            )))
        }
    }
    let suite = match cas.suite.name() {
        "" => "legacy",
        s => s,
    };
    Ok(JoinResponse {
        payload: Some(JoinResponsePayload::Init(ServerInit {
            join_method: "token".into(),
            signature_algorithm_suite: suite.into(),
        })),
    })
}

/// The answer to `TokenInit`: the bot's certificates, or a refusal.
pub(crate) fn token_result(
    dir: &std::path::Path,
    cas: &ClusterCas,
    token: &str,
    msg: &JoinRequest,
) -> Result<JoinResponse, Status> {
    let Some(JoinRequestPayload::TokenInit(t)) = &msg.payload else {
        return Err(Status::invalid_argument(
            "expected TokenInit after ServerInit",
        ));
    };
    let bot = t
        .client_params
        .as_ref()
        .and_then(|c| c.bot_params.as_ref())
        .ok_or_else(|| Status::invalid_argument("TokenInit: bot_params are required"))?;
    let keys = bot
        .public_keys
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("bot_params: public_keys are required"))?;
    let ssh_pub = russh::keys::ssh_key::PublicKey::from_bytes(&keys.public_ssh_key)
        .map_err(|e| Status::invalid_argument(format!("public_ssh_key: {e}")))?;
    let spki = keys.public_tls_key.clone();
    auth::check_one_key(&ssh_pub, &spki).map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
    let ttl = match bot.expires.and_then(|t| t.to_system_time()) {
        None => DEFAULT_JOIN_TTL,
        Some(t) => t
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::from_secs(60))
            .min(MAX_RENEWABLE_TTL),
    };
    let issued = auth::join_bot(dir, cas, token, &ssh_pub, &spki, ttl).map_err(|e| {
        let msg = format!("{e:#}");
        if msg.contains("token") {
            Status::permission_denied(msg)
        } else {
            Status::internal(msg)
        }
    })?;
    let internal = |e: anyhow::Error| Status::internal(format!("{e:#}"));
    let (tls_cas, ssh_cas) = auth::certs_ca_lists(cas, true).map_err(internal)?;
    let der = |pem: &str| -> Result<Vec<u8>, Status> {
        let (_, doc) = der::Document::from_pem(pem)
            .map_err(|e| Status::internal(format!("certificate PEM: {e}")))?;
        Ok(doc.as_bytes().to_vec())
    };
    let wire_key = |line: &str| -> Result<Vec<u8>, Status> {
        russh::keys::ssh_key::PublicKey::from_openssh(line.trim())
            .and_then(|k| k.to_bytes())
            .map_err(|e| Status::internal(format!("CA key: {e}")))
    };
    Ok(JoinResponse {
        payload: Some(JoinResponsePayload::Result(JoinResult {
            bot_result: Some(BotResult {
                certificates: Some(Certificates {
                    tls_cert: der(&issued.tls_cert_pem)?,
                    tls_ca_certs: tls_cas.iter().map(|p| der(p)).collect::<Result<_, _>>()?,
                    ssh_cert: issued
                        .ssh_cert
                        .to_bytes()
                        .map_err(|e| Status::internal(format!("SSH certificate: {e}")))?,
                    ssh_ca_keys: ssh_cas
                        .iter()
                        .map(|l| wire_key(l))
                        .collect::<Result<_, _>>()?,
                }),
            }),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use idmux_wire::join::ClientInit;

    fn init(method: Option<&str>, role: &str) -> JoinRequest {
        JoinRequest {
            payload: Some(JoinRequestPayload::ClientInit(ClientInit {
                join_method: method.map(str::to_string),
                token_name: "t".into(),
                system_role: role.into(),
                forwarded_by_proxy: false,
            })),
        }
    }

    #[test]
    fn server_init_names_the_suite_and_refuses_what_it_cannot_join() {
        let d = tempfile::tempdir().unwrap();
        let cas = ClusterCas::create(&d.path().join("ca"), "j.test").unwrap();
        let ok = server_init(&init(Some("token"), "Bot"), &cas).unwrap();
        assert_eq!(
            ok.payload,
            Some(JoinResponsePayload::Init(ServerInit {
                join_method: "token".into(),
                signature_algorithm_suite: "balanced-v1".into(),
            }))
        );
        assert!(server_init(&init(None, "Bot"), &cas).is_ok());
        let e = server_init(&init(Some("iam"), "Bot"), &cas).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("\"iam\""), "{e}");
        let e = server_init(&init(None, "Node"), &cas).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = server_init(&JoinRequest { payload: None }, &cas).unwrap_err();
        assert_eq!(e.message(), "expected ClientInit as the first message");
        // A spent or unknown token: AccessDenied (PermissionDenied), which the client never
        // falls back on.
        let key = idmux_identity::KeyPair::generate(idmux_identity::KeyType::EcdsaP256).unwrap();
        let token_init = JoinRequest {
            payload: Some(JoinRequestPayload::TokenInit(idmux_wire::join::TokenInit {
                client_params: Some(idmux_wire::join::ClientParams {
                    bot_params: Some(idmux_wire::join::BotParams {
                        public_keys: Some(idmux_wire::join::PublicKeys {
                            public_tls_key: key.spki_der().unwrap(),
                            public_ssh_key: key.ssh_public().unwrap().to_bytes().unwrap(),
                        }),
                        expires: None,
                    }),
                }),
            })),
        };
        let e = token_result(d.path(), &cas, "nope", &token_init).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().starts_with("token expired or not found"), "{e}");
    }
}

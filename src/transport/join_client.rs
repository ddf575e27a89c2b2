//! The join service client (`/teleport.join.v1.JoinService/Join`), as newest tbot joins: TLS to
//! the proxy with ALPN `teleport-proxy-grpc`, `h2`, the proxy's certificate checked as the web
//! API's is (`--ca-path`, the system roots, or `--insecure`), no client certificate; then one
//! stream: `ClientInit` -> `ServerInit` (the suite picks the key type) -> `TokenInit` ->
//! `Result`.
//!
//! Whether to fall back to `POST /webapi/host/credentials` is decided as tbot's joinclient
//! does ([`Outcome`]): on NotImplemented (an older Teleport), or on a connection error before
//! `ServerInit` (no TLS, no stream, no `ServerInit`); not on AccessDenied or BadParameter, and
//! never once `ServerInit` has arrived (a bad token is final).

use std::future::Future;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};
use http::uri::PathAndQuery;

use crate::refusal::{Refused, RefusedWith};
use crate::route::Route;
use idmux_identity::KeyPair;
use idmux_wire::join::{
    BotParams, Certificates, ClientInit, ClientParams, JoinRequest, JoinRequestPayload,
    JoinResponse, JoinResponsePayload, PublicKeys, TokenInit, JOIN,
};
use idmux_wire::proto::Timestamp;

/// The ALPNs the join service is reached by.
pub const JOIN_ALPN: [&[u8]; 2] = [b"teleport-proxy-grpc", b"h2"];
/// How long the whole join may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How a join through the service ended.
#[derive(Debug)]
pub enum Outcome {
    /// Joined: the key the certificates are for, and the certificates.
    Joined(Box<(KeyPair, Certificates)>),
    /// The legacy path should be tried (why, in one line).
    Fallback(String),
}

/// Is this gRPC status, before `ServerInit`, a reason to try the legacy join? (tbot: anything
/// but AccessDenied and BadParameter, which Teleport sends as PermissionDenied and
/// InvalidArgument.)
pub(crate) fn falls_back(code: tonic::Code) -> bool {
    !matches!(
        code,
        tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
    )
}

fn refused(status: &tonic::Status, who: &str) -> anyhow::Error {
    let msg = status
        .message()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    Refused {
        with: RefusedWith::Grpc(status.code()),
        line: format!("join refused by {who}: {msg}"),
    }
    .into()
}

/// Join with `token` through the join service of `web`'s proxy. `keygen` makes the key once
/// the server has named its suite.
pub async fn join<F, Fut>(web: &Route, token: &str, ttl: Duration, keygen: F) -> Result<Outcome>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<KeyPair>>,
{
    let who = format!("proxy {}", web.proxy());
    within(
        &who,
        run(web.dial_join(&JOIN_ALPN), &who, token, ttl, keygen),
    )
    .await
}

/// Join with `token` through the join service of Auth addressed directly (Teleport's auth
/// port serves it to callers with no certificate), its certificate checked as `auth` says.
pub async fn join_auth<F, Fut>(
    auth: &crate::auth_direct::AuthDirect,
    token: &str,
    ttl: Duration,
    keygen: F,
) -> Result<Outcome>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<KeyPair>>,
{
    let who = format!("auth server {}", auth.addr());
    within(&who, run(auth.dial_join(), &who, token, ttl, keygen)).await
}

/// The whole join within [`JOIN_TIMEOUT`].
async fn within(who: &str, join: impl Future<Output = Result<Outcome>>) -> Result<Outcome> {
    match tokio::time::timeout(JOIN_TIMEOUT, join).await {
        Ok(r) => r,
        Err(_) => Err(anyhow!(
            "join service of {who}: no answer within {}s",
            JOIN_TIMEOUT.as_secs()
        )),
    }
}

async fn run<D, F, Fut>(
    dial: D,
    who: &str,
    token: &str,
    ttl: Duration,
    keygen: F,
) -> Result<Outcome>
where
    D: Future<Output = Result<crate::route::ProxyTls>>,
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<KeyPair>>,
{
    let fallback = |why: String| Ok(Outcome::Fallback(why));
    let tls = match dial.await {
        Ok(t) => t,
        Err(e) => return fallback(format!("{e:#}")),
    };
    let channel = match crate::auth_client::grpc_channel_over(tls, None).await {
        Ok(c) => c,
        Err(e) => return fallback(format!("join service of {who}: HTTP/2 setup failed: {e}")),
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return fallback(format!("join service of {who}: not ready: {e}"));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<JoinRequest>(2);
    tx.send(JoinRequest {
        payload: Some(JoinRequestPayload::ClientInit(ClientInit {
            join_method: Some("token".into()),
            token_name: token.to_string(),
            system_role: "Bot".into(),
            forwarded_by_proxy: false,
        })),
    })
    .await
    .map_err(|_| anyhow!("join service: the request stream closed"))?;
    let codec = tonic_prost::ProstCodec::<JoinRequest, JoinResponse>::default();
    let stream = grpc
        .streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            PathAndQuery::from_static(JOIN),
            codec,
        )
        .await;
    let mut inbound = match stream {
        Ok(r) => r.into_inner(),
        Err(s) if falls_back(s.code()) => {
            return fallback(format!("join service of {who}: {}", s.message()))
        }
        Err(s) => return Err(refused(&s, who)),
    };
    let suite = match inbound.message().await {
        Ok(Some(JoinResponse {
            payload: Some(JoinResponsePayload::Init(init)),
        })) => init.signature_algorithm_suite,
        Ok(Some(other)) => {
            return Err(anyhow!(
                "join service of {who}: expected ServerInit, got {other:?}"
            ))
        }
        Ok(None) => return fallback(format!("join service of {who}: no ServerInit")),
        Err(s) if falls_back(s.code()) => {
            return fallback(format!("join service of {who}: {}", s.message()))
        }
        Err(s) => return Err(refused(&s, who)),
    };
    // From here on nothing falls back: the server has taken part in this join.
    let key = keygen(suite).await?;
    let expires = Timestamp::from_system_time(SystemTime::now() + ttl);
    tx.send(JoinRequest {
        payload: Some(JoinRequestPayload::TokenInit(TokenInit {
            client_params: Some(ClientParams {
                bot_params: Some(BotParams {
                    public_keys: Some(PublicKeys {
                        public_tls_key: key.spki_der()?,
                        public_ssh_key: key.ssh_public()?.to_bytes()?,
                    }),
                    expires: Some(expires),
                }),
            }),
        })),
    })
    .await
    .map_err(|_| anyhow!("join service of {who}: the stream closed before TokenInit"))?;
    match inbound.message().await {
        Ok(Some(JoinResponse {
            payload: Some(JoinResponsePayload::Result(r)),
        })) => {
            let certs = r.bot_result.and_then(|b| b.certificates).ok_or_else(|| {
                anyhow!("join service of {who}: a result with no bot certificates")
            })?;
            Ok(Outcome::Joined(Box::new((key, certs))))
        }
        Ok(other) => Err(anyhow!(
            "join service of {who}: expected the result, got {other:?}"
        )),
        Err(s) => Err(refused(&s, who)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_codes_are_tbots() {
        assert!(falls_back(tonic::Code::Unimplemented));
        assert!(falls_back(tonic::Code::Unavailable));
        assert!(falls_back(tonic::Code::Internal));
        assert!(!falls_back(tonic::Code::PermissionDenied));
        assert!(!falls_back(tonic::Code::InvalidArgument));
    }
}

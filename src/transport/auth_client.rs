//! The Auth service client: Teleport's gRPC services (`GenerateUserCerts`, the CA resources, the
//! bot role, heartbeats) through the proxy.
//!
//! With TLS routing the proxy passes connections that offer ALPN
//! `teleport-auth@<hex(cluster)>.teleport.cluster.local` straight to Auth without ending TLS
//! (PROTOCOL.md section 4), so the client does mutual TLS with Auth itself: SNI
//! `teleport.cluster.local`, Auth's certificate checked against the identity's TLS CAs (the host
//! CA) only, the identity's certificate as the client certificate, then HTTP/2 gRPC. One
//! [`AuthClient`] connection serves the calls of one renewal (renewals are minutes apart).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;

use crate::refusal::{Refused, RefusedWith};
use crate::route::{ProxyTls, Route, Way};
use idmux_identity::Identity;
use idmux_wire::proto::{Certs, UserCertsRequest, GENERATE_USER_CERTS};

pub use idmux_wire::alpn::{auth as auth_alpn, AUTH_SERVER_NAME};
/// How long one gRPC call may take once TLS is up.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Connect to Auth by `route` as `id`: with TLS routing (and inside an upgrade) TLS with ALPN
/// [`auth_alpn`] then `h2`, which the proxy passes to Auth; without it, a `ProxyCluster` stream
/// on the SSH proxy port's gRPC connection, with the same mutual TLS to Auth inside.
async fn dial_auth(route: &Route, id: &Identity) -> Result<ProxyTls> {
    let cluster = id
        .cluster_name()
        .map_err(|e| anyhow!("the identity names no cluster: {e}"))?;
    if let Way::SshPort(_) = route.way() {
        return crate::auth_tunnel::dial(route, id, &cluster).await;
    }
    let alpn = auth_alpn(&cluster);
    let protos: [&[u8]; 2] = [alpn.as_bytes(), b"h2"];
    route
        .dial_tls(id, &protos, Some(AUTH_SERVER_NAME), false)
        .await
}

/// A gRPC channel over a TLS connection that is already up (tonic dials through a connector:
/// it is handed this connection, once). `timeout` bounds each call.
pub(crate) async fn grpc_channel_over<S: crate::dial::Io>(
    tls: S,
    timeout: Option<Duration>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let slot = Arc::new(Mutex::new(Some(tls)));
    let connector = tower::service_fn(move |_: http::Uri| {
        let conn = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        async move {
            conn.map(TokioIo::new)
                .ok_or_else(|| std::io::Error::other("the connection was already used"))
        }
    });
    let mut ep = tonic::transport::Endpoint::from_static("http://teleport.cluster.local");
    if let Some(t) = timeout {
        ep = ep.timeout(t);
    }
    ep.connect_with_connector(connector).await
}

/// How Auth is reached: through the proxy ([`Route`]), or addressed directly (`--auth-server`
/// with no proxy, see [`crate::auth_direct`]).
#[derive(Clone)]
pub enum AuthVia {
    Proxy(Route),
    Direct(String),
}

impl AuthVia {
    /// How errors name the way: `auth via proxy H:P` or `auth server H:P`.
    pub fn describe(&self) -> String {
        match self {
            AuthVia::Proxy(r) => format!("auth via proxy {}", r.proxy()),
            AuthVia::Direct(a) => format!("auth server {a}"),
        }
    }
}

/// One gRPC connection to Auth, for the calls of one renewal (the bot's own certificates, the
/// CA resources, the bot role, each output's certificates).
pub struct AuthClient {
    /// How errors name the way (`auth via proxy H:P`, `auth server H:P`).
    who: String,
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl AuthClient {
    /// Dial Auth by `route` as `id`: one connection, HTTP/2.
    pub async fn connect(route: &Route, id: &Identity) -> Result<AuthClient> {
        let tls = dial_auth(route, id).await?;
        Self::over(tls, format!("auth via proxy {}", route.proxy())).await
    }

    /// Dial Auth by `via` as `id`.
    pub async fn connect_via(via: &AuthVia, id: &Identity) -> Result<AuthClient> {
        match via {
            AuthVia::Proxy(r) => Self::connect(r, id).await,
            AuthVia::Direct(a) => {
                let tls = crate::auth_direct::dial_as(a, id).await?;
                Self::over(tls, via.describe()).await
            }
        }
    }

    /// gRPC over a TLS connection to Auth that is up; `who` names the way in errors.
    pub async fn over(tls: ProxyTls, who: String) -> Result<AuthClient> {
        let channel = grpc_channel_over(tls, Some(CALL_TIMEOUT))
            .await
            .map_err(|e| anyhow!("{who}: HTTP/2 setup failed: {e}"))?;
        Ok(AuthClient {
            who,
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// One unary call of `path`. `what` names the request in errors ("the renewal"). A refusal
    /// by Auth is a typed [`Refused`] carrying Auth's message on one line; what broke on the
    /// way names the proxy or Auth's address.
    pub async fn unary<Req, Resp>(
        &mut self,
        path: &'static str,
        what: &str,
        req: Req,
    ) -> Result<Resp>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let who = self.who.clone();
        self.grpc
            .ready()
            .await
            .map_err(|e| anyhow!("{who}: connection not ready: {e}"))?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        let resp = self
            .grpc
            .unary(
                tonic::Request::new(req),
                PathAndQuery::from_static(path),
                codec,
            )
            .await;
        match resp {
            Ok(r) => Ok(r.into_inner()),
            // Auth's own refusal is typed (the bot stops on some codes); what broke on the way
            // (tonic made the status from a transport error) is a plain error.
            Err(status) => {
                let line = status_line(&who, path, what, &status);
                if std::error::Error::source(&status).is_some() {
                    return Err(anyhow!("{line}"));
                }
                Err(Refused {
                    with: RefusedWith::Grpc(status.code()),
                    line,
                }
                .into())
            }
        }
    }

    /// `GenerateUserCerts`: a renewal (`use_role_requests == false`) must come from the bot's
    /// renewable identity and name its own user; an impersonation request gets certificates
    /// for `role_requests`.
    pub async fn generate_user_certs(&mut self, req: UserCertsRequest) -> Result<Certs> {
        let what = if req.use_role_requests {
            "the impersonated certificate request"
        } else {
            "the renewal"
        };
        self.unary(GENERATE_USER_CERTS, what, req).await
    }
}

/// Call `GenerateUserCerts` on the Auth service by `route` as `id`, on a
/// connection of its own.
pub async fn generate_user_certs(
    route: &Route,
    id: &Identity,
    req: UserCertsRequest,
) -> Result<Certs> {
    AuthClient::connect(route, id)
        .await?
        .generate_user_certs(req)
        .await
}

/// One line for a failed call: Auth's own refusal, or what broke on the way.
fn status_line(who: &str, path: &str, what: &str, status: &tonic::Status) -> String {
    let msg = one_line(status.message());
    if std::error::Error::source(status).is_some() {
        // tonic made this status from a transport error: nothing came from Auth.
        return format!("{who}: {msg}");
    }
    match status.code() {
        tonic::Code::Unimplemented => {
            format!("{who} does not serve {path}: {msg}")
        }
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
            format!("{who} did not answer {what}: {msg}")
        }
        _ => format!("auth refused {what}: {msg}"),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_is_hex_of_cluster() {
        assert_eq!(
            auth_alpn("dev.idmux"),
            "teleport-auth@6465762e69646d7578.teleport.cluster.local"
        );
    }

    #[test]
    fn refusals_are_one_line_with_the_message() {
        let s = tonic::Status::permission_denied("user bot-x is locked:\n generation mismatch");
        assert_eq!(
            status_line("auth via proxy p:1", GENERATE_USER_CERTS, "the renewal", &s),
            "auth refused the renewal: user bot-x is locked: generation mismatch"
        );
        let s = tonic::Status::unimplemented("nope");
        assert!(
            status_line("auth via proxy p:1", GENERATE_USER_CERTS, "the renewal", &s)
                .contains("does not serve")
        );
    }
}

//! Auth without TLS routing, as tsh reaches it (api/client/proxy/client.go `ClientConfig`):
//! the gRPC TransportService on the proxy's SSH port (TLS with ALPN
//! `teleport-proxy-ssh-grpc`, checked against the cluster's CAs), a `ProxyCluster` stream to
//! the cluster's Auth server, and inside it the same mutual TLS with Auth as the
//! `teleport-auth@` route (SNI `teleport.cluster.local`, ALPN `h2`).
//!
//! Must not know: what is said to Auth.

use anyhow::{anyhow, Result};
use rustls::pki_types::ServerName;

use crate::grpc::{self, ALPN_PROXY_GRPC};
use crate::route::{ProxyTls, Route};
use crate::tls;
use idmux_identity::Identity;
use idmux_wire::alpn::AUTH_SERVER_NAME;

/// Mutual TLS with the Auth server of `cluster`, through a `ProxyCluster` stream on the SSH
/// proxy port of `route`.
pub(crate) async fn dial(route: &Route, id: &Identity, cluster: &str) -> Result<ProxyTls> {
    let addr = route.node_addr().to_string();
    let outer = route.dial_tls(id, &[ALPN_PROXY_GRPC], None, false).await?;
    let proxy = grpc::connect(outer, &addr).await?;
    let io = proxy.open_cluster(cluster).await?;
    let protos: [&[u8]; 1] = [b"h2"];
    let cfg = tls::client_config(id, &protos)?;
    let name = ServerName::try_from(AUTH_SERVER_NAME).map_err(|_| anyhow!("static DNS name"))?;
    let what = format!("auth via ProxyCluster on proxy {addr}");
    tls::handshake(&what, cfg, name, io)
        .await?
        .map_err(|e| anyhow!("auth via {}", tls::describe_tls_error(&addr, &protos, &e)))
}

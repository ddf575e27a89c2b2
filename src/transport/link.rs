//! A connection to the proxy that reaches nodes, over either transport, and the choice
//! between them (`--transport auto|grpc|ssh`).
//!
//! - `grpc`: TransportService over ALPN `teleport-proxy-ssh-grpc` ([`crate::grpc`]), what
//!   current tbot and tsh use; one layer of encryption (TLS) around the node's bytes.
//! - `ssh`: the proxy's SSH server over ALPN `teleport-proxy-ssh` and the `proxy:` subsystem
//!   ([`crate::sshproxy`]), what older proxies serve.
//! - `auto` (the default): gRPC, and the SSH transport when the proxy does not offer gRPC's
//!   ALPN. Any other failure (refused certificate, unreachable proxy) is reported as it is,
//!   never hidden behind a second attempt.

use anyhow::Result;
use russh::client::Handle;

use crate::agent::Agent;
use crate::grpc::{self, GrpcNode, GrpcProxy, ALPN_PROXY_GRPC};
use crate::route::{Route, Way};
use crate::sshproxy::{self, NodeChannel, ProxyHandler};
use crate::tls::{AlpnNotOffered, ALPN_PROXY_SSH};
use idmux_identity::Identity;

/// Which transport carries node connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// gRPC, falling back to SSH when the proxy does not offer it.
    #[default]
    Auto,
    /// gRPC TransportService only (ALPN teleport-proxy-ssh-grpc).
    Grpc,
    /// The proxy's SSH server only (ALPN teleport-proxy-ssh).
    Ssh,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Auto => "auto",
            TransportKind::Grpc => "grpc",
            TransportKind::Ssh => "ssh",
        })
    }
}

/// One authenticated connection to the proxy.
pub enum Link {
    Ssh(Handle<ProxyHandler>),
    Grpc(GrpcProxy),
}

/// A node connection through a [`Link`].
pub enum Node {
    Ssh(NodeChannel),
    Grpc(GrpcNode),
}

/// Connect to the proxy by `route` as `id` with `kind` (see the module doc for `auto`).
/// Without TLS routing both transports are on the SSH proxy port: gRPC inside TLS, SSH
/// plain, told apart by the proxy's multiplexer as Teleport's port 3023 does.
pub async fn connect(route: &Route, id: &Identity, kind: TransportKind) -> Result<Link> {
    let proxy = route.node_addr();
    match kind {
        TransportKind::Ssh => connect_ssh(route, id).await,
        TransportKind::Grpc => connect_grpc(route, id).await,
        TransportKind::Auto => match connect_grpc(route, id).await {
            Err(e) if e.downcast_ref::<AlpnNotOffered>().is_some() => {
                tracing::info!(
                    "proxy {proxy} does not offer the gRPC transport; using its SSH transport"
                );
                connect_ssh(route, id).await
            }
            r => r,
        },
    }
}

async fn connect_ssh(route: &Route, id: &Identity) -> Result<Link> {
    let proxy = route.node_addr();
    if let Way::SshPort(addr) = route.way() {
        let (io, _) = crate::dial::connect(addr).await?;
        return Ok(Link::Ssh(sshproxy::connect(io, id, addr).await?));
    }
    let tls = route
        .dial_tls(id, &[ALPN_PROXY_SSH], None, true)
        .await
        .map_err(|e| {
            hint(
                e,
                "it may serve only the gRPC transport: use --transport auto or grpc",
            )
        })?;
    Ok(Link::Ssh(sshproxy::connect(tls, id, proxy).await?))
}

async fn connect_grpc(route: &Route, id: &Identity) -> Result<Link> {
    let proxy = route.node_addr();
    let tls = route
        .dial_tls(id, &[ALPN_PROXY_GRPC], None, true)
        .await
        .map_err(|e| {
            hint(
                e,
                "it may predate the gRPC transport: use --transport auto or ssh",
            )
        })?;
    Ok(Link::Grpc(
        grpc::connect(crate::cork::Corked::new(tls), proxy).await?,
    ))
}

/// Add what to do to an [`AlpnNotOffered`] error, keeping its type (auto falls back on it).
fn hint(mut e: anyhow::Error, what: &'static str) -> anyhow::Error {
    if let Some(n) = e.downcast_mut::<AlpnNotOffered>() {
        n.hint = what;
    }
    e
}

impl Link {
    /// The transport this link uses (never `Auto`).
    pub fn kind(&self) -> TransportKind {
        match self {
            Link::Ssh(_) => TransportKind::Ssh,
            Link::Grpc(_) => TransportKind::Grpc,
        }
    }

    /// Has the connection ended?
    pub fn is_closed(&self) -> bool {
        match self {
            Link::Ssh(h) => h.is_closed(),
            Link::Grpc(g) => g.is_closed(),
        }
    }

    /// Connect to `host:port` in `cluster` (empty = the identity's own). `agent` answers the
    /// proxy's agent requests on the gRPC transport.
    pub async fn open_node(
        &self,
        host: &str,
        port: u16,
        cluster: &str,
        agent: Option<Agent>,
    ) -> Result<Node> {
        match self {
            Link::Ssh(h) => Ok(Node::Ssh(
                sshproxy::open_node(h, host, port, cluster).await?,
            )),
            Link::Grpc(g) => Ok(Node::Grpc(g.open_node(host, port, cluster, agent).await?)),
        }
    }

    /// End the connection politely (SSH disconnect; HTTP/2 GOAWAY when the last handle
    /// goes).
    pub async fn close(self) {
        match self {
            Link::Ssh(h) => sshproxy::close(h).await,
            Link::Grpc(g) => drop(g),
        }
    }
}

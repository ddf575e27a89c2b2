//! idmux-transport: every connection idmux makes to a proxy, and what runs over it.
//!
//! Owns: the way to a proxy and the one dial by it ([`route`]: TLS routing, the ALPN connection
//! upgrade through an L7 load balancer in [`upgrade`], or the SSH proxy port without TLS
//! routing; every dial starts in [`dial`]: TCP with its deadline, through an HTTP CONNECT proxy
//! chosen by Go's rules in [`proxy_env`]; TLS verified against the cluster's CAs in [`tls`],
//! the join's check inside an upgrade in [`join_verify`]; the gRPC connection's TLS writes
//! gathered per task turn in `cork`), a connection that reaches nodes
//! over either transport ([`link`]:
//! gRPC TransportService in [`grpc`], its `ProxySSH` call framed by hand in `proxy_ssh`, the
//! SSH `proxy:` subsystem in [`sshproxy`]), node bytes
//! between a proxy stream and a local byte stream ([`relay`], [`stdio`]), the relay threads a
//! connection is handed to ([`shards`]), the SSH agent that
//! answers with the current key ([`agent`]), and the clients of Auth ([`auth_client`], through
//! `ProxyCluster` without TLS routing) and of
//! the proxy's web API ([`web`]), whose refusals are typed ([`refusal`]).
//!
//! Must not know: the bot's schedule, the multiplexer's sockets, clap, or the dev cluster
//! (which uses the relay and the gRPC constants from the other side).

pub mod agent;
pub mod auth_client;
pub mod auth_direct;
mod auth_tunnel;
mod cork;
pub mod dial;
pub mod grpc;
pub mod join_client;
pub mod join_verify;
pub mod link;
pub mod proxy_env;
mod proxy_ssh;
pub mod refusal;
pub mod relay;
pub mod route;
pub mod shards;
pub mod sshproxy;
pub mod stdio;
pub mod tls;
pub mod upgrade;
pub mod web;

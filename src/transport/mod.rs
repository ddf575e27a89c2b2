//! TLS + ALPN dial to the proxy, the two transports to nodes (gRPC TransportService and the
//! SSH subsystem), and the stdio ProxyCommand.
//!
//! - [`tls`]: the TLS client configuration (cluster CA only, identity client cert) and dial.
//! - [`link`]: a connection that reaches nodes over either transport; `--transport`.
//! - [`grpc`]: the gRPC TransportService transport (`ProxySSH` streams).
//! - [`sshproxy`]: SSH to the proxy over that stream, host-cert check, login, node channels.
//! - [`relay`]: node bytes between a proxy channel and a local byte stream.
//! - [`stdio`]: this process's stdin/stdout as async streams (non-blocking for pipes).
//! - [`proto`]: Teleport protobuf messages (hand-written, Teleport's field numbers).
//! - [`auth_client`]: gRPC `GenerateUserCerts` to Auth through the proxy (renewal, outputs).
//! - [`proxy_command`]: `idmux ssh-proxy-command`, all of the above for one ssh connection.
//! - [`web`]: the proxy's web API (find, join, CA export) over verified HTTPS.

pub mod auth_client;
pub mod grpc;
pub mod link;
pub mod proto;
pub mod proxy_command;
pub mod relay;
pub mod sshproxy;
pub mod stdio;
pub mod tls;
pub mod web;

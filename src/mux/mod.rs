//! The multiplexer: the `v1.sock` server, the relay to the warm upstream, and the agent socket.
//!
//! - [`request`]: the v1 request format (pure parser).
//! - [`upstream`]: the pool of authenticated SSH connections to the proxy.
//! - [`server`]: the `v1.sock` and `agent.sock` listeners and per-connection handling.
//! - [`agent`]: the SSH agent protocol over the current key and certificate.
//! - [`metrics`]: counters and the `/metrics`, `/readyz`, `/livez` endpoint.

pub mod agent;
pub mod metrics;
pub mod request;
pub mod server;
pub mod upstream;

//! The multiplexer: the `v1.sock` server, the relay to the warm upstream, and the agent socket.
//!
//! - [`upstream`]: the pool of authenticated connections to the proxy, and where its identity
//!   comes from ([`upstream::IdentitySource`]).
//! - [`server`]: the `v1.sock` and `agent.sock` listeners and per-connection handling.
//! - `idmux_transport::shards`: the relay threads a session is handed to (one per core, each
//!   with its own upstream connections).
//! - [`metrics`]: counters and the `/metrics`, `/readyz`, `/livez` endpoint.
//! - [`limits`]: the caps and timeouts of every socket served ([`limits::Limits`]).
//! - [`v1recv`]: what one `recvmsg` on `v1.sock` amounts to (fds kept and closed, the
//!   request so far), pure.
//! - [`templates`]: tsh's `proxy_templates`, which rewrite a request's host and cluster.
//! - [`trim`]: free heap memory returned after a burst.
//! - `unix_halves`: a session's socket split into halves registered only for what each
//!   waits on.
//! - [`local`]: blocking clients of `v1.sock` and `agent.sock` (doctor, tests).
//!
//! The request format is `idmux_wire::v1`; the agent is `idmux_transport::agent`.

pub mod limits;
pub mod local;
pub mod metrics;
pub mod server;
pub mod templates;
pub mod trim;
mod unix_halves;
pub mod upstream;
pub mod v1recv;

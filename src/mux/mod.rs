//! The multiplexer: the `v1.sock` server, the relay to the warm upstream, and the agent socket.
//!
//! - [`request`]: the v1 request format (pure parser).

pub mod request;

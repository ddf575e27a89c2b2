//! The development cluster: proxy + auth on one TLS port on loopback, with real sshd nodes.

pub mod node;

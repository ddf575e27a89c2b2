//! idmux-client: what runs on the machine that uses the identity.
//!
//! Owns: the bot ([`bot`]: join, renew, write the destination dir, tbot's config), the
//! multiplexer ([`mux`]: `v1.sock`, `agent.sock`, the warm upstream pool, diagnostics) and the
//! stdio ProxyCommand ([`proxy_command`]), and what `idmux doctor` parses ([`doctor_parse`]).
//!
//! Must not know: clap (the `idmux` binary parses flags and hands over plain values) or the
//! dev cluster (it talks to any Teleport proxy through `idmux-transport`).

pub mod bot;
pub mod doctor_parse;
pub mod mux;
pub mod proxy_command;

//! idmux-wire: every byte format idmux speaks, pure.
//!
//! Owns: the v1.sock request ([`v1`]), the one `host:port` split and Teleport's
//! `cleanTargetHost` ([`hostport`]), ssh-agent messages ([`agent`]), Teleport's gRPC messages
//! with their method paths ([`proto`], [`services`]) and the resources they carry
//! ([`resources`]), its web API JSON ([`web`]) and the ALPN names the
//! proxy routes by ([`alpn`]).
//!
//! Must not know: sockets, files, time, tokio, keys or certificates. Bytes in, values or an
//! error naming what is wrong out; everything here is unit-tested from the formats' own
//! definitions (byte vectors written from field numbers, not round trips) and fuzzed.
#![forbid(unsafe_code)]

pub mod agent;
pub mod alpn;
pub mod hostport;
pub mod join;
pub mod proto;
pub mod resources;
pub mod services;
pub mod v1;
pub mod web;

//! The caps and timeouts of every socket the daemon serves (`v1.sock`, `agent.sock`, the
//! `--diag-addr` endpoint), and the number of relay threads, in one place: what a local
//! process can hold of the daemon is bounded by these numbers and nothing else.
//!
//! Owns: [`Limits`] (its `Default` is the shipped numbers, each field documented with what
//! happens at the limit), their check ([`Limits::check`]: zero is refused, naming the flag),
//! and the throttle of the "at the cap" warnings ([`CapWarning`]). The `idmux` binary maps one
//! flag to each field; the servers in [`crate::mux::server`] and [`crate::mux::metrics`] read
//! them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Result};

/// Caps and timeouts of the daemon's sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `v1.sock` connections open at once, relaying or not (`--v1-max-connections`; each
    /// ssh through the multiplexer is one for its whole session). At the cap a new connection
    /// is closed at once, unread (ssh sees the connection closed), and a warning is logged
    /// (at most every 10 s).
    pub v1_max_connections: usize,
    /// How long a `v1.sock` client may take to send its whole request (`--v1-request-timeout`);
    /// then the connection is closed.
    pub v1_request_timeout: Duration,
    /// Error lines being written to clients' stderr at once (`--v1-max-error-reports`); past
    /// that a failed request's line is dropped (its connection still closed).
    pub v1_max_error_reports: usize,
    /// How long an error line waits for a client's stderr to take it
    /// (`--v1-error-report-timeout`); a full stderr (a pipe nobody reads) gets no line.
    pub v1_error_report_timeout: Duration,
    /// `agent.sock` connections open at once (`--agent-max-connections`; ssh holds one only
    /// while it authenticates). At the cap a new connection is closed at once.
    pub agent_max_connections: usize,
    /// The largest agent request read, in bytes (`--agent-max-request-size`; at most 256 KiB,
    /// the agent protocol's frame limit); a larger one closes the connection at once.
    pub agent_max_request: usize,
    /// How long an agent request may take to arrive once its first byte has
    /// (`--agent-request-timeout`); then the connection is closed.
    pub agent_request_timeout: Duration,
    /// `--diag-addr` connections open at once (`--diag-max-connections`; any local user can
    /// connect). At the cap a new connection is closed at once.
    pub diag_max_connections: usize,
    /// How long a diagnostics client has to send its request headers
    /// (`--diag-header-timeout`); then the connection is closed.
    pub diag_header_timeout: Duration,
    /// How long one diagnostics connection may last in all (`--diag-connection-timeout`).
    pub diag_connection_timeout: Duration,
    /// Threads relaying sessions (`--relay-threads`; at most [`MAX_RELAY_THREADS`]), the
    /// cores the daemon's relay may use at once: each has its own proxy connections, made on
    /// its first session ([`idmux_transport::shards`]).
    pub relay_threads: usize,
}

/// The most `--relay-threads` accepted.
pub const MAX_RELAY_THREADS: usize = 64;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            v1_max_connections: 4096,
            v1_request_timeout: Duration::from_secs(10),
            v1_max_error_reports: 32,
            v1_error_report_timeout: Duration::from_secs(2),
            agent_max_connections: 512,
            agent_max_request: idmux_transport::agent::MAX_REQUEST,
            agent_request_timeout: idmux_transport::agent::REQUEST_TIMEOUT,
            diag_max_connections: 64,
            diag_header_timeout: Duration::from_secs(5),
            diag_connection_timeout: Duration::from_secs(30),
            relay_threads: idmux_transport::shards::default_threads(),
        }
    }
}

impl Limits {
    /// Refuse a zero cap or timeout, and an agent request size past the protocol's frame
    /// limit, in one line naming the flag.
    pub fn check(&self) -> Result<()> {
        let counts = [
            ("--v1-max-connections", self.v1_max_connections),
            ("--v1-max-error-reports", self.v1_max_error_reports),
            ("--agent-max-connections", self.agent_max_connections),
            ("--agent-max-request-size", self.agent_max_request),
            ("--diag-max-connections", self.diag_max_connections),
            ("--relay-threads", self.relay_threads),
        ];
        for (flag, n) in counts {
            if n == 0 {
                bail!("{flag} 0: must be at least 1");
            }
        }
        let times = [
            ("--v1-request-timeout", self.v1_request_timeout),
            ("--v1-error-report-timeout", self.v1_error_report_timeout),
            ("--agent-request-timeout", self.agent_request_timeout),
            ("--diag-header-timeout", self.diag_header_timeout),
            ("--diag-connection-timeout", self.diag_connection_timeout),
        ];
        for (flag, t) in times {
            if t.is_zero() {
                bail!("{flag} 0s: must be longer than zero");
            }
        }
        if self.relay_threads > MAX_RELAY_THREADS {
            bail!(
                "--relay-threads {}: at most {MAX_RELAY_THREADS}",
                self.relay_threads
            );
        }
        let most = idmux_wire::agent::MAX_FRAME;
        if self.agent_max_request > most {
            bail!(
                "--agent-max-request-size {}: at most {most} bytes (the agent protocol's frame \
                 limit)",
                self.agent_max_request
            );
        }
        Ok(())
    }
}

/// A "this socket is at its cap" warning, logged at most once per [`CapWarning::EVERY`] (a
/// flood of connections must not become a flood of log lines); the ones in between are
/// counted into the next line.
pub(crate) struct CapWarning {
    /// When the last line was logged (ms since the process's first use), and how many were
    /// held back since.
    last_ms: AtomicU64,
    held: AtomicU64,
}

impl CapWarning {
    const EVERY: Duration = Duration::from_secs(10);

    pub(crate) const fn new() -> CapWarning {
        CapWarning {
            last_ms: AtomicU64::new(u64::MAX),
            held: AtomicU64::new(0),
        }
    }

    /// One more refusal on `socket` (capped at `cap` by `flag`).
    pub(crate) fn refused(&self, socket: &str, cap: usize, flag: &str) {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let now = START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= Self::EVERY.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let held = self.held.swap(0, Ordering::Relaxed);
            let more = if held > 0 {
                format!(" ({held} more refused since the last warning)")
            } else {
                String::new()
            };
            tracing::warn!(
                "{socket}: {cap} connections open ({flag}); closing a new one at once{more}"
            );
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_and_zero_names_its_flag() {
        Limits::default().check().unwrap();
        let l = Limits {
            diag_max_connections: 0,
            ..Default::default()
        };
        assert_eq!(
            l.check().unwrap_err().to_string(),
            "--diag-max-connections 0: must be at least 1"
        );
        let l = Limits {
            v1_request_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(
            l.check().unwrap_err().to_string(),
            "--v1-request-timeout 0s: must be longer than zero"
        );
        let l = Limits {
            agent_max_request: 1 << 20,
            ..Default::default()
        };
        assert!(l
            .check()
            .unwrap_err()
            .to_string()
            .starts_with("--agent-max-request-size 1048576: at most"));
    }
}

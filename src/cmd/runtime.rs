//! The one place an async runtime is built, one shape per kind of command.

use anyhow::{Context, Result};
use tokio::runtime::{Builder, Runtime};

/// What the runtime is for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// A daemon (`idmux start`, the multiplexer): one thread (plus tokio's blocking pool for
    /// file I/O). The daemon's work per byte is a short hop between sockets (read, frame,
    /// encrypt, write); with worker threads each chunk crossed threads between the relay task
    /// and the connection's task, and the futex wake-ups and cache misses cost more CPU per GiB
    /// than the crypto (BENCHMARKS.md). One thread also means one malloc arena.
    Daemon,
    /// A one-shot command (`doctor`): one thread.
    OneShot,
    /// The stdio ProxyCommand: two workers, so the relay runs beside stdin's blocking reads.
    ProxyCommand,
    /// The dev cluster: a worker per core (it serves every client and node at once).
    Cluster,
}

/// Build the runtime for `kind`.
pub(crate) fn build(kind: Kind) -> Result<Runtime> {
    let mut b = match kind {
        Kind::Daemon | Kind::OneShot => Builder::new_current_thread(),
        Kind::ProxyCommand => {
            let mut b = Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
        Kind::Cluster => Builder::new_multi_thread(),
    };
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

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
    /// The stdio ProxyCommand: one thread, for the daemon's reason. stdin and stdout are
    /// driven through the reactor when they are pipes or sockets (what ssh gives it); with two
    /// workers each chunk crossed threads, 1.6-1.9 s of CPU per GiB uploaded against 1.2-1.4.
    ProxyCommand,
    /// The dev cluster: a worker per core for its own work (accepting, Auth's port, CA changes,
    /// which block in place); each connection to its proxy or SSH port runs on one of its
    /// shard threads (`idmux_transport::shards`).
    Cluster,
}

/// Build the runtime for `kind`.
pub(crate) fn build(kind: Kind) -> Result<Runtime> {
    let mut b = match kind {
        Kind::Daemon | Kind::OneShot | Kind::ProxyCommand => Builder::new_current_thread(),
        Kind::Cluster => Builder::new_multi_thread(),
    };
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

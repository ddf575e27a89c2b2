//! Relay threads: the multiplexer's sessions spread over the machine's cores.
//!
//! One thread relays every byte of every session through one core: about 0.7 GiB/s for all
//! of a daemon's sessions together on this machine's kind, whatever the machine has. So the
//! daemon runs `--relay-threads` shards (default: one per core, at most [`MAX_DEFAULT`]).
//! Shard 0 is the daemon's own thread; every other shard is a thread of its own
//! (`idmux-relay-N`) with a single-threaded runtime and its own upstream connections, made on
//! its first session. A session lives wholly on its shard: the v1.sock socket, the relay task,
//! the gRPC or SSH connection's task and its TLS socket, so its bytes never cross threads
//! (cross-thread hand-offs cost more CPU per GiB than the crypto: the reason the daemon was
//! single-threaded). Memory per session is what it was on one thread.
//!
//! A new session goes to the shard with the fewest open sessions, the lowest-numbered on a
//! tie, so one session at a time (`ssh host true` in a loop) always lands on shard 0 and its
//! warm connection, as before; parallel sessions spread out, and a shard that has never had
//! one costs a parked thread and an empty runtime. A shard other than the first closes its
//! proxy connections once they have carried nothing for a few seconds.
//!
//! Owns: the threads, their runtimes, and the choice of shard. Must not know: what a session
//! does (the caller's closure), the transports, the upstream pool.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use tokio::net::UnixStream;

/// The default number of shards is the machine's cores, but no more than this.
pub const MAX_DEFAULT: usize = 8;

/// The default `--relay-threads`: one per core the process may use, at most [`MAX_DEFAULT`].
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_DEFAULT)
}

/// Where sessions run, with each shard's state `T` (its upstream pool and what `handle`
/// needs).
pub(crate) struct Shards<T> {
    shards: Vec<Shard<T>>,
}

struct Shard<T> {
    /// `None` for shard 0: the caller's own runtime.
    runtime: Option<tokio::runtime::Handle>,
    state: Arc<T>,
    /// Sessions open on this shard.
    open: Arc<AtomicUsize>,
    /// Dropping it ends the shard's thread (its runtime and every task on it).
    _stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A session's count on its shard, given back when the session ends.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T: Send + Sync + 'static> Shards<T> {
    /// `n` shards (at least one), shard `i`'s state from `make(i)`; shards 1.. get a thread.
    pub(crate) fn start(n: usize, mut make: impl FnMut(usize) -> Result<T>) -> Result<Self> {
        let mut shards = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let state = Arc::new(make(i)?);
            let (runtime, stop) = if i == 0 {
                (None, None)
            } else {
                let (handle, stop) = spawn_thread(i)?;
                (Some(handle), Some(stop))
            };
            shards.push(Shard {
                runtime,
                state,
                open: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(Shards { shards })
    }

    /// Shard 0's state (the daemon's own thread).
    pub(crate) fn first(&self) -> &Arc<T> {
        &self.shards[0].state
    }

    /// Run `task(state)` on every shard but the first, on its own thread.
    pub(crate) fn on_others<F, Fut>(&self, task: F)
    where
        F: Fn(Arc<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        for s in &self.shards[1..] {
            if let Some(rt) = &s.runtime {
                rt.spawn(task(s.state.clone()));
            }
        }
    }

    /// Sessions open on each shard.
    #[cfg(test)]
    pub(crate) fn open(&self) -> Vec<usize> {
        self.shards
            .iter()
            .map(|s| s.open.load(Ordering::Relaxed))
            .collect()
    }

    /// Run `session(conn, state)` on the shard with the fewest open sessions. Must be called
    /// from shard 0's runtime. `extra` rides along (a connection slot released at the end).
    pub(crate) fn dispatch<X, F, Fut>(&self, conn: UnixStream, extra: X, session: F)
    where
        X: Send + 'static,
        F: FnOnce(UnixStream, Arc<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let i = pick(self.shards.iter().map(|s| s.open.load(Ordering::Relaxed)));
        let shard = &self.shards[i];
        shard.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(shard.open.clone());
        let state = shard.state.clone();
        match &shard.runtime {
            None => {
                tokio::spawn(async move {
                    let _held = (open, extra);
                    session(conn, state).await
                });
            }
            Some(rt) => {
                // The socket moves to the shard's reactor: deregistered here, registered
                // there (the std socket stays non-blocking).
                let conn = match conn.into_std() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(
                            "v1.sock: cannot hand a connection to relay thread {i}: {e}"
                        );
                        return;
                    }
                };
                rt.spawn(async move {
                    let _held = (open, extra);
                    match UnixStream::from_std(conn) {
                        Ok(conn) => session(conn, state).await,
                        Err(e) => tracing::warn!("v1.sock: relay thread {i}: {e}"),
                    }
                });
            }
        }
    }
}

/// The shard for a new session: the fewest open, the lowest index on a tie (pure).
fn pick(open: impl IntoIterator<Item = usize>) -> usize {
    open.into_iter()
        .enumerate()
        .min_by_key(|&(i, n)| (n, i))
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// Start relay thread `i`: a single-threaded runtime parked until the stop sender drops.
fn spawn_thread(i: usize) -> Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a relay thread's runtime")?;
    let handle = rt.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("idmux-relay-{i}"))
        .spawn(move || {
            rt.block_on(async {
                let _ = stopped.await;
            });
            // Dropping the runtime cancels the shard's sessions and closes their sockets.
            rt.shutdown_timeout(std::time::Duration::from_millis(500));
        })
        .map_err(|e| anyhow!("cannot start relay thread {i}: {e}"))?;
    Ok((handle, stop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_session_goes_to_the_least_busy_shard_and_the_first_on_a_tie() {
        assert_eq!(pick([0]), 0);
        assert_eq!(pick([0, 0, 0]), 0);
        assert_eq!(pick([1, 0]), 1);
        assert_eq!(pick([1, 1]), 0);
        assert_eq!(pick([3, 2, 2]), 1);
        assert_eq!(pick([]), 0);
    }

    #[tokio::test]
    async fn sessions_run_on_their_shard_thread_and_are_counted_while_open() {
        let shards = Shards::start(2, Ok::<usize, anyhow::Error>).unwrap();
        let mut ends = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..4 {
            let (a, _b) = UnixStream::pair().unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
            shards.dispatch(a, (), move |_conn, i: Arc<usize>| async move {
                let name = std::thread::current().name().map(str::to_string);
                let _ = seen_tx.send((*i, name));
                let _ = rx.await;
            });
            threads.push(seen_rx.await.unwrap());
            ends.push((tx, _b));
        }
        // Alternating: 0, 1, 0, 1 (each held open), each on its own thread.
        let idx: Vec<usize> = threads.iter().map(|t| t.0).collect();
        assert_eq!(idx, [0, 1, 0, 1]);
        assert_eq!(threads[1].1.as_deref(), Some("idmux-relay-1"));
        assert_ne!(threads[0].1, threads[1].1);
        assert_eq!(shards.open(), [2, 2]);
        for (tx, _) in ends.drain(..) {
            let _ = tx.send(());
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while shards.open() != [0, 0] {
            assert!(std::time::Instant::now() < deadline, "{:?}", shards.open());
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

//! Relay threads: connections spread over the machine's cores, each wholly on one thread.
//!
//! One thread relays every byte of every connection through one core: about 0.7 GiB/s for
//! all of them together on this machine's kind, whatever the machine has. A multi-threaded
//! runtime spreads them, but it also moves a connection's tasks between its workers, so each
//! chunk crosses threads between a relay task and its connection's task, and the futex
//! wake-ups and cache misses cost more CPU per GiB than the crypto. So a server here runs
//! shards: shard 0 is the caller's own thread; every other shard is a thread of its own
//! (`PREFIX-N`) with a single-threaded runtime. A connection lives wholly on its shard: its
//! socket, its task and every task it spawns (`tokio::spawn` runs on the current runtime),
//! and the sockets they open, so its bytes never cross threads.
//!
//! Used by the multiplexer (`--relay-threads`: v1.sock sessions, each shard with its own
//! upstream connections) and by the dev cluster's proxy (one shard per core).
//!
//! A new connection goes to the shard with the fewest open ones, the lowest-numbered on a
//! tie, so one at a time (`ssh host true` in a loop) always lands on shard 0, and a shard that
//! has never had one costs a parked thread and an empty runtime.
//!
//! Owns: the threads, their runtimes, and the choice of shard. Must not know: what a
//! connection carries (the caller's closure).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use tokio::net::{TcpStream, UnixStream};

/// A socket that can move from the runtime that accepted it to a shard's: deregistered from
/// one reactor, registered with the other (the std socket stays non-blocking).
pub trait Handoff: Sized + Send + 'static {
    type Std: Send + 'static;
    fn into_std(self) -> std::io::Result<Self::Std>;
    /// Must be called on the shard's runtime.
    fn from_std(s: Self::Std) -> std::io::Result<Self>;
}

impl Handoff for UnixStream {
    type Std = std::os::unix::net::UnixStream;
    fn into_std(self) -> std::io::Result<Self::Std> {
        UnixStream::into_std(self)
    }
    fn from_std(s: Self::Std) -> std::io::Result<Self> {
        UnixStream::from_std(s)
    }
}

impl Handoff for TcpStream {
    type Std = std::net::TcpStream;
    fn into_std(self) -> std::io::Result<Self::Std> {
        TcpStream::into_std(self)
    }
    fn from_std(s: Self::Std) -> std::io::Result<Self> {
        TcpStream::from_std(s)
    }
}

/// The default number of shards is the machine's cores, but no more than this.
pub const MAX_DEFAULT: usize = 8;

/// The default `--relay-threads`: one per core the process may use, at most [`MAX_DEFAULT`].
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_DEFAULT)
}

/// Where connections run, with each shard's state `T` (e.g. its upstream pool).
pub struct Shards<T> {
    shards: Vec<Shard<T>>,
    /// What the connections are, for messages ("v1.sock").
    what: &'static str,
}

struct Shard<T> {
    /// `None`: the caller's own runtime (shard 0, unless detached).
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
    /// `n` shards (at least one), shard `i`'s state from `make(i)`; shards 1.. get a thread
    /// named `PREFIX-i`. `what` names the connections in messages.
    pub fn start(
        n: usize,
        prefix: &'static str,
        what: &'static str,
        make: impl FnMut(usize) -> Result<T>,
    ) -> Result<Self> {
        Self::build(n, prefix, what, true, make)
    }

    /// Like [`Shards::start`], but shard 0 gets a thread of its own too: for a caller whose
    /// runtime is multi-threaded (its tasks would move between its workers).
    pub fn start_detached(
        n: usize,
        prefix: &'static str,
        what: &'static str,
        make: impl FnMut(usize) -> Result<T>,
    ) -> Result<Self> {
        Self::build(n, prefix, what, false, make)
    }

    fn build(
        n: usize,
        prefix: &'static str,
        what: &'static str,
        first_on_caller: bool,
        mut make: impl FnMut(usize) -> Result<T>,
    ) -> Result<Self> {
        let mut shards = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let state = Arc::new(make(i)?);
            let (runtime, stop) = if i == 0 && first_on_caller {
                (None, None)
            } else {
                let (handle, stop) = spawn_thread(prefix, i)?;
                (Some(handle), Some(stop))
            };
            shards.push(Shard {
                runtime,
                state,
                open: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(Shards { shards, what })
    }

    /// Shard 0's state (the caller's own thread, unless detached).
    pub fn first(&self) -> &Arc<T> {
        &self.shards[0].state
    }

    /// Run `task(state)` on every shard but the first, on its own thread.
    pub fn on_others<F, Fut>(&self, task: F)
    where
        F: Fn(Arc<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        for s in self.shards.iter().skip(1) {
            if let Some(rt) = &s.runtime {
                rt.spawn(task(s.state.clone()));
            }
        }
    }

    /// Connections open on each shard.
    #[cfg(test)]
    fn open(&self) -> Vec<usize> {
        self.shards
            .iter()
            .map(|s| s.open.load(Ordering::Relaxed))
            .collect()
    }

    /// Run `session(conn, state)` on the shard with the fewest open connections. Must be
    /// called from the caller's runtime. `extra` rides along (a connection slot released at the
    /// end).
    pub fn dispatch<S, X, F, Fut>(&self, conn: S, extra: X, session: F)
    where
        S: Handoff,
        X: Send + 'static,
        F: FnOnce(S, Arc<T>) -> Fut + Send + 'static,
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
                let what = self.what;
                let conn = match conn.into_std() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("{what}: cannot hand a connection to relay thread {i}: {e}");
                        return;
                    }
                };
                rt.spawn(async move {
                    let _held = (open, extra);
                    match S::from_std(conn) {
                        Ok(conn) => session(conn, state).await,
                        Err(e) => tracing::warn!("{what}: relay thread {i}: {e}"),
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
fn spawn_thread(
    prefix: &'static str,
    i: usize,
) -> Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a relay thread's runtime")?;
    let handle = rt.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("{prefix}-{i}"))
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
        let shards = Shards::start(2, "idmux-relay", "test", Ok::<usize, anyhow::Error>).unwrap();
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

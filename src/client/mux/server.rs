//! The daemon's sockets: `v1.sock` (the V1 multiplexer protocol) and `agent.sock`.
//!
//! A v1.sock connection: the first read is a recvmsg that may carry one fd (the client's
//! stderr); the request `host:port[|cluster]\0` follows, read within a time limit; the target
//! is dialed through the warm upstream; a failure is written to the stderr fd as one line
//! `idmux: ...` and the connection closed; on success the stderr fd is closed and the socket
//! becomes the node's raw SSH stream (bytes after the NUL go upstream first). Every connection
//! runs in its own task and nothing a client sends can stop the daemon.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::socket::{recvmsg, MsgFlags};
use tokio::io::{AsyncRead, AsyncReadExt, Interest};
use tokio::net::{UnixListener, UnixStream};

use crate::mux::metrics::Metrics;
use crate::mux::unix_halves;
use crate::mux::upstream::{IdentitySource, Upstream};
use crate::mux::v1recv;
use idmux_transport::agent::Agent;
use idmux_transport::relay;
use idmux_transport::shards::Shards;
use idmux_wire::hostport::clean_target_host;
use idmux_wire::v1 as request;

use crate::mux::limits::{CapWarning, Limits};

/// Bind a unix socket owner-only (and for the dir's ACL readers), replacing a stale one.
pub(crate) fn bind_owner_only(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        // A live daemon still answering means a second one must not steal the socket.
        if std::os::unix::net::UnixStream::connect(path).is_ok() && path.ends_with("v1.sock") {
            bail!(
                "{}: another multiplexer is serving this socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("{}: cannot remove the stale socket", path.display()))?;
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let l = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = l.with_context(|| format!("{}: cannot listen", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    // In a dir shared with readers (`idmux init --reader-user`) they may connect too.
    idmux_identity::acl::follow_dir(path, 0o600, true)?;
    Ok(l)
}

/// A socket file this process bound: removed when dropped (the daemon stopping, its task
/// dropped with the runtime), unless another process has since put its own socket there.
pub(crate) struct SocketFile {
    path: PathBuf,
    ino: Option<u64>,
}

impl SocketFile {
    pub(crate) fn new(path: PathBuf) -> SocketFile {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::symlink_metadata(&path).ok().map(|m| m.ino());
        SocketFile { path, ino }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let now = std::fs::symlink_metadata(&self.path).ok().map(|m| m.ino());
        if now.is_some() && now == self.ino {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Read the request: the first recvmsg may carry the stderr fd. Returns the stderr fd, the
/// target and the bytes that followed the NUL. What each read amounts to (which fd is kept,
/// which are closed, whether the request is whole) is [`v1recv::step`].
async fn read_request(conn: &UnixStream) -> (Option<OwnedFd>, Result<(request::Target, Vec<u8>)>) {
    let mut buf = vec![0u8; v1recv::BUFFER];
    let mut len = 0;
    let mut stderr: Option<OwnedFd> = None;
    loop {
        if conn.readable().await.is_err() {
            return (stderr, Err(anyhow!("connection failed")));
        }
        let got = conn.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut buf[len..])];
            // Room for every fd one message can carry (the kernel's SCM_MAX_FD); a message
            // that still does not fit is truncated, and the fds the kernel did install are read
            // from the buffer by `v1recv::scm_rights` (nix hides a truncated buffer) and closed.
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; v1recv::SCM_MAX_FD]);
            let msg = recvmsg::<()>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            let (n, truncated) = (msg.bytes, msg.flags.contains(MsgFlags::MSG_CTRUNC));
            let fds: Vec<OwnedFd> = v1recv::scm_rights(&space)
                .into_iter()
                // SAFETY: the kernel just installed these fds in our table for us; each is
                // wrapped exactly once, so each is closed exactly once.
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect();
            Ok((n, fds, truncated))
        });
        let (n, fds, truncated) = match got {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return (stderr, Err(anyhow!("reading the request: {e}"))),
            Ok(x) => x,
        };
        len += n;
        let read = v1recv::Read {
            bytes: n,
            fds: fds.len(),
            truncated,
        };
        let step = v1recv::step(&buf[..len], buf.len(), read, stderr.is_some());
        // The kept fd (the first one) is the client's stderr; the rest are closed here.
        let (kept, close) = v1recv::sort_fds(fds, step.keep);
        drop(close);
        if kept.is_some() {
            stderr = kept;
        }
        match step.next {
            v1recv::Next::Request { target, used } => {
                return (stderr, Ok((target, buf[used..len].to_vec())))
            }
            v1recv::Next::More => continue,
            v1recv::Next::Fail(e) => return (stderr, Err(anyhow!("{e}"))),
        }
    }
}

/// One write of at most this many bytes to a pipe whose poll says writable never blocks
/// (POSIX `PIPE_BUF`).
const PIPE_BUF: usize = 4096;

/// Write one error line to the client's stderr fd, off the runtime, without ever blocking on
/// it: the fd is polled for room (at most `wait`, [`Limits::v1_error_report_timeout`]), then
/// written once with at most [`PIPE_BUF`] bytes. A client whose stderr is full (a pipe nobody
/// reads) gets no line rather than a thread of the daemon; at most `reports`' permits
/// ([`Limits::v1_max_error_reports`]) are written at once.
async fn report(
    stderr: Option<OwnedFd>,
    msg: String,
    reports: &Arc<tokio::sync::Semaphore>,
    wait: Duration,
) {
    let Some(fd) = stderr else { return };
    let Ok(permit) = reports.clone().try_acquire_owned() else {
        tracing::debug!("v1.sock: too many error reports in flight; this one is dropped");
        return;
    };
    let _ = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        write_report(fd, &msg, wait);
    })
    .await;
}

/// The blocking half of [`report`].
fn write_report(fd: OwnedFd, msg: &str, wait: Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut line = format!("idmux: {msg}");
    if line.len() >= PIPE_BUF {
        let mut end = PIPE_BUF - 1;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line.push('\n');
    let ready = {
        let mut pfd = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
        let wait = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        matches!(poll(&mut pfd, wait), Ok(n) if n > 0)
            && pfd[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLOUT))
    };
    if ready {
        let _ = nix::unistd::write(&fd, line.as_bytes());
    }
}

/// Counts bytes written through it (`idmux_relayed_bytes_total{direction="down"}`).
struct CountedWrite<W> {
    inner: W,
    metrics: Arc<Metrics>,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CountedWrite<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            self.metrics
                .bytes_down
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            self.metrics
                .bytes_down
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts bytes read through it.
struct Counted<R> {
    inner: R,
    metrics: Arc<Metrics>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.metrics.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

/// What every request's handling shares.
struct Shared {
    up: Arc<Upstream>,
    proxy_host: String,
    m: Arc<Metrics>,
    templates: Arc<crate::mux::templates::ProxyTemplates>,
    limits: Limits,
    /// Error reports being written ([`Limits::v1_max_error_reports`]).
    reports: Arc<tokio::sync::Semaphore>,
}

/// One v1.sock connection, start to end: the request and the dial ([`open_session`], boxed),
/// then the relay.
///
/// The task holds only what the relay phase needs. The set-up's state (the request read
/// under a deadline, the dial's result, the error report) is boxed and freed before relaying
/// starts; inline, every open session kept room for it for its whole life (1,208 bytes of
/// task where the relay phase needs about 100; issue 18: memory per open session).
async fn handle(conn: UnixStream, s: Arc<Shared>) {
    let m = s.m.clone();
    m.requests_started.fetch_add(1, Ordering::Relaxed);
    m.in_flight.fetch_add(1, Ordering::Relaxed);
    if let Some((relay, lease)) = Box::pin(open_session(conn, &s)).await {
        if let Err(e) = relay.await {
            tracing::debug!("v1.sock relay ended: {e:#}");
        }
        drop(lease);
    }
    m.in_flight.fetch_sub(1, Ordering::Relaxed);
}

/// Read the request on `conn` and dial its target; on success, the relay to run (boxed,
/// holding the node and `conn`'s halves) and the upstream lease to hold while it runs. A
/// failure is reported on the client's stderr here.
async fn open_session(
    conn: UnixStream,
    s: &Shared,
) -> Option<(
    impl std::future::Future<Output = Result<()>> + Send + 'static,
    crate::mux::upstream::Lease,
)> {
    let (up, proxy_host, m, templates) = (&s.up, &s.proxy_host, &s.m, &s.templates);
    let limit = s.limits.v1_request_timeout;
    let (stderr, req) = match tokio::time::timeout(limit, read_request(&conn)).await {
        Ok(x) => x,
        Err(_) => (None, Err(anyhow!("no complete request within {limit:?}"))),
    };
    let dialed = match req {
        Ok((t, extra)) => {
            let mut cluster = if t.cluster.is_empty() {
                up.cluster()
            } else {
                t.cluster.clone()
            };
            let (mut host, mut port) = (t.host.clone(), t.port);
            if let Some(r) = templates.apply(&host, port, &cluster) {
                tracing::debug!(
                    "v1.sock: {t}: a proxy template gives {}:{}|{}",
                    r.host,
                    r.port,
                    r.cluster
                );
                (host, port, cluster) = (r.host, r.port, r.cluster);
            }
            let host = clean_target_host(&host, proxy_host, &cluster).to_string();
            // Boxed: the dial's future (TLS, HTTP/2 or SSH set-up, the first response) is
            // several KiB, needed only until it answers.
            Box::pin(up.dial(&host, port, &cluster))
                .await
                .map(|d| (d, extra))
                .map_err(|e| anyhow!("{t}: {e:#}"))
        }
        Err(e) => Err(e),
    };
    match dialed {
        Err(e) => {
            m.handled_error.fetch_add(1, Ordering::Relaxed);
            tracing::info!("v1.sock: {e:#}");
            let wait = s.limits.v1_error_report_timeout;
            report(stderr, format!("{e:#}"), &s.reports, wait).await;
            None
        }
        Ok(((node, lease), extra)) => {
            drop(stderr); // relaying starts: stop writing to the client's stderr
            m.handled_ok.fetch_add(1, Ordering::Relaxed);
            // Halves registered only for what each waits on (`unix_halves`: no wake-up each
            // time ssh reads).
            let (r, w) = match conn.into_std().and_then(unix_halves::split) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!("v1.sock: cannot register the session's socket: {e}");
                    return None;
                }
            };
            let input = Counted {
                inner: std::io::Cursor::new(extra).chain(r),
                metrics: m.clone(),
            };
            let output = CountedWrite {
                inner: w,
                metrics: m.clone(),
            };
            let names = ("ssh client", "ssh client");
            Some((
                relay::relay(node, input, output, tokio::io::sink(), names),
                lease,
            ))
        }
    }
}

/// How long a relay thread keeps idle proxy connections (beyond the first thread's warm one).
const SHARD_IDLE: Duration = Duration::from_secs(5);

/// Serve `v1.sock` in `dir` until the task is dropped: at most
/// [`Limits::v1_max_connections`] connections at once (more are closed on accept), each
/// session on one of the relay threads ([`Shards`]).
async fn serve_v1(dir: PathBuf, shards: Shards<Shared>, limits: Limits) -> Result<()> {
    let listener = bind_owner_only(&dir.join("v1.sock"))?;
    let _file = SocketFile::new(dir.join("v1.sock"));
    tracing::info!("multiplexer listening on {}", dir.join("v1.sock").display());
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.v1_max_connections));
    static AT_CAP: CapWarning = CapWarning::new();
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    AT_CAP.refused("v1.sock", limits.v1_max_connections, "--v1-max-connections");
                    continue;
                };
                shards.dispatch(conn, slot, handle);
            }
            Err(e) => {
                // Out of fds, most likely: back off rather than spin.
                tracing::warn!("v1.sock accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serve `agent.sock` in `dir`: at most [`Limits::agent_max_connections`] connections at
/// once (more are closed on accept), each request within the agent's size and time limits.
pub(crate) async fn serve_agent(
    dir: PathBuf,
    agent: Agent,
    m: Arc<Metrics>,
    limits: Limits,
) -> Result<()> {
    let listener = bind_owner_only(&dir.join("agent.sock"))?;
    let _file = SocketFile::new(dir.join("agent.sock"));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.agent_max_connections));
    static AT_CAP: CapWarning = CapWarning::new();
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                // ssh holds its agent connection only while it authenticates.
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    AT_CAP.refused(
                        "agent.sock",
                        limits.agent_max_connections,
                        "--agent-max-connections",
                    );
                    continue;
                };
                m.agent_connections.fetch_add(1, Ordering::Relaxed);
                let a = agent.clone();
                let (size, time) = (limits.agent_max_request, limits.agent_request_timeout);
                tokio::spawn(async move {
                    let _slot = slot;
                    let _ = a.serve_limited(conn, size, time).await;
                });
            }
            Err(e) => {
                tracing::warn!("agent.sock accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Options of the multiplexer.
pub struct MuxOptions {
    /// The destination dir: `v1.sock` and `agent.sock` go here.
    pub dest: PathBuf,
    /// Where renewed identities come from.
    pub identity: IdentitySource,
    /// The way to the proxy (found by the bot, or on first use).
    pub route: idmux_transport::route::Finder,
    pub cap: usize,
    pub transport: idmux_transport::link::TransportKind,
    pub diag_addr: Option<std::net::SocketAddr>,
    /// tsh's `proxy_templates` (a multiplexer's `proxy_templates_path`).
    pub templates: Arc<crate::mux::templates::ProxyTemplates>,
    /// Caps and timeouts of the sockets served.
    pub limits: Limits,
}

/// Run the multiplexer for a destination dir whose identity someone keeps renewed.
pub async fn run(opts: MuxOptions) -> Result<()> {
    crate::mux::trim::hold_freed_memory();
    let m = Arc::new(Metrics::default());
    let agent = Agent::default();
    let route = Arc::new(opts.route);
    let proxy_host = idmux_wire::hostport::host_of(route.proxy()).to_string();
    let reports = Arc::new(tokio::sync::Semaphore::new(
        opts.limits.v1_max_error_reports,
    ));
    // Each relay thread has its own upstream pool (its connections' tasks run on it); they
    // share the identity source, the agent, the counters and the route.
    let shards = Shards::start(opts.limits.relay_threads, "idmux-relay", "v1.sock", |_| {
        Ok(Shared {
            up: Upstream::new(
                route.clone(),
                opts.identity.clone(),
                opts.cap,
                opts.transport,
                m.clone(),
                agent.clone(),
            )?,
            proxy_host: proxy_host.clone(),
            m: m.clone(),
            templates: opts.templates.clone(),
            limits: opts.limits,
            reports: reports.clone(),
        })
    })?;
    // Shard 0 (this thread) keeps a connection warm and closes the others a burst opened once
    // they are idle; the other shards connect on first use and close theirs when idle.
    tokio::spawn(shards.first().up.clone().keep_warm());
    tokio::spawn(shards.first().up.clone().close_when_idle(SHARD_IDLE, 1));
    shards.on_others(|s| s.up.clone().close_when_idle(SHARD_IDLE, 0));
    tokio::spawn(crate::mux::trim::keep_heap_trimmed());
    if let Some(addr) = opts.diag_addr {
        let m2 = m.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::mux::metrics::serve_diag(addr, m2, opts.limits).await {
                tracing::error!("{e:#}");
            }
        });
    }
    let agent_task = tokio::spawn(serve_agent(
        opts.dest.clone(),
        agent,
        m.clone(),
        opts.limits,
    ));
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let r = tokio::select! {
        r = serve_v1(opts.dest.clone(), shards, opts.limits) => r,
        r = agent_task => r.map_err(|e| anyhow!("agent task: {e}"))?,
        // Stop: the sockets go with their tasks (the runtime drops them).
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An open session's task keeps room for the relay phase only: the request, the dial and
    /// the error report are boxed and freed before relaying starts, and the relay itself is
    /// boxed per transport (issue 18: memory per open session). It was 1,208 bytes.
    #[test]
    fn a_session_task_holds_only_the_relay_phase() {
        fn size<F, Fut>(_: &F) -> usize
        where
            F: Fn(UnixStream, Arc<Shared>) -> Fut,
        {
            std::mem::size_of::<Fut>()
        }
        let n = size(&handle);
        eprintln!("a v1.sock session's future: {n} B");
        assert!(n <= 256, "a v1.sock session's future is {n} B");
    }
}

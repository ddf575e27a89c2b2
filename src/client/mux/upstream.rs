//! The warm upstream: authenticated connections to the proxy, shared by every v1.sock
//! request, one gRPC stream or SSH channel per node connection (see `transport::link`).
//!
//! With `--transport auto` the first connection finds out whether the proxy offers gRPC; the
//! answer holds until no connection is left (a proxy restart may bring an upgrade).
//!
//! A connection carries at most `cap` node connections (default 100, as tbot's cycling client); past
//! that a new one is opened. Connections are made with the identity current at the time; when
//! the identity changes ([`IdentitySource`]: the bot in this process publishes each renewal on
//! a `watch`; a standalone multiplexer polls the identity file another tool renews), new
//! channels go to new connections and the old ones are closed
//! once their last channel ends, so renewals never drop established sessions. A keeper task
//! holds one connection open and reconnects with backoff (100 ms doubling to 15 s) when it
//! drops, so the first request after a proxy restart finds a warm connection; the proxy
//! going away and coming back are logged once each.
//!
//! The pool's lock is never held across a network wait: a request that finds a free slot
//! takes it at once, whatever dial is in progress; one that needs a new connection joins the
//! dial in progress (one at a time, run as a task of its own, shared by every request and the
//! keeper that wait for it) or starts one. A slow dial never holds up a request that can use
//! an existing connection.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Result};
use tokio::sync::watch;

use crate::mux::metrics::Metrics;
use idmux_identity::Identity;
use idmux_transport::agent::Agent;
use idmux_transport::link::{self, Link, Node, TransportKind};
use idmux_transport::route::Finder;

/// One connection to the proxy.
struct Conn {
    link: Link,
    open: AtomicUsize,
    epoch: u64,
}

/// A channel's claim on its connection; releases the slot when dropped.
pub(crate) struct Lease {
    conn: Arc<Conn>,
    metrics: Arc<Metrics>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.conn.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.open_channels.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) struct Upstream {
    /// The proxy's web address (for messages).
    pub proxy: String,
    route: Arc<Finder>,
    source: IdentitySource,
    cap: usize,
    /// The connections and the dial in progress; never locked across an await.
    pool: std::sync::Mutex<Pool>,
    identity: std::sync::RwLock<Current>,
    epoch: AtomicU64,
    metrics: Arc<Metrics>,
    /// Holds the current key and certificate (swapped on renewal); also answers the proxy's
    /// agent requests on the gRPC transport.
    agent: Agent,
    /// What `--transport` asked for.
    transport: TransportKind,
    /// For `auto`: the transport the proxy was found to offer (`Auto` = not known yet).
    resolved: std::sync::Mutex<TransportKind>,
    /// The last connect that failed slowly (a proxy that accepts and says nothing), and when:
    /// requests queued behind it get its answer for [`SLOW_FAILURE_HOLD`] instead of each
    /// waiting out a deadline of its own in turn.
    slow_failure: std::sync::Mutex<Option<(std::time::Instant, String)>>,
    /// The connection count this pool last added to `metrics.upstream_conns`.
    conns_reported: AtomicUsize,
}

/// How often an idle relay thread's pool is looked at ([`Upstream::close_when_idle`]).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The outcome of a dial, once it is known: the new connection (already in the pool), or why
/// it failed (in words, shared by every waiter).
type DialOutcome = Option<std::result::Result<Arc<Conn>, String>>;

/// The connections to the proxy and the dial in progress, if any.
#[derive(Default)]
struct Pool {
    conns: Vec<Arc<Conn>>,
    /// Requests (and the keeper) that need a new connection wait on this.
    dialing: Option<watch::Receiver<DialOutcome>>,
}

/// The keeper's first retry delay after a failed connect, doubled up to [`KEEP_WARM_MAX`].
const KEEP_WARM_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between the keeper's attempts while the proxy is down (a request still
/// dials at once: the keeper only keeps a connection warm).
const KEEP_WARM_MAX: Duration = Duration::from_secs(15);

/// How long a slow connect failure answers the requests queued behind it.
const SLOW_FAILURE_HOLD: Duration = Duration::from_secs(2);
/// A connect failure that took this long was a deadline, not a refusal.
const SLOW: Duration = Duration::from_secs(1);

/// Where the multiplexer's identity comes from.
#[derive(Clone)]
pub enum IdentitySource {
    /// The bot in this process sends each renewed identity (`idmux start`).
    Watch(watch::Receiver<Arc<Identity>>),
    /// Another tool (tbot, a separate `idmux start`) renews the `identity` file in this
    /// destination dir: reload it when its modification time changes.
    Poll(PathBuf),
}

/// The identity in use and what it was read from (the file's mtime when polling).
type Current = (Arc<Identity>, SystemTime);

impl IdentitySource {
    fn initial(&self) -> Result<Current> {
        match self {
            IdentitySource::Watch(rx) => Ok((rx.borrow().clone(), SystemTime::UNIX_EPOCH)),
            IdentitySource::Poll(dest) => {
                let mtime = identity_mtime(dest);
                Ok((Arc::new(Identity::load_destination(dest)?), mtime))
            }
        }
    }

    /// A newer identity than `have`, if there is one (an error: a changed file that does not
    /// read).
    fn newer(&self, have: &Current) -> Option<Result<Current>> {
        match self {
            IdentitySource::Watch(rx) => {
                let latest = rx.borrow().clone();
                (!Arc::ptr_eq(&latest, &have.0)).then_some(Ok((latest, have.1)))
            }
            IdentitySource::Poll(dest) => {
                let mtime = identity_mtime(dest);
                (mtime != have.1)
                    .then(|| Identity::load_destination(dest).map(|id| (Arc::new(id), mtime)))
            }
        }
    }
}

/// Put an identity's key and certificate in the agent.
fn load_agent(agent: &Agent, id: &Identity) {
    if let Ok(k) = id.key.to_ssh() {
        agent.set(k, id.ssh_cert.clone());
    }
}

fn identity_mtime(dest: &std::path::Path) -> SystemTime {
    std::fs::metadata(dest.join("identity"))
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Upstream {
    pub fn new(
        route: Arc<Finder>,
        source: IdentitySource,
        cap: usize,
        transport: TransportKind,
        metrics: Arc<Metrics>,
        agent: Agent,
    ) -> Result<Arc<Upstream>> {
        let current = source.initial()?;
        load_agent(&agent, &current.0);
        Ok(Arc::new(Upstream {
            proxy: route.proxy().to_string(),
            route,
            source,
            cap: cap.max(1),
            pool: Default::default(),
            identity: std::sync::RwLock::new(current),
            epoch: AtomicU64::new(0),
            metrics,
            agent,
            transport,
            resolved: std::sync::Mutex::new(TransportKind::Auto),
            slow_failure: std::sync::Mutex::new(None),
            conns_reported: AtomicUsize::new(0),
        }))
    }

    /// The identity to use now: the newest the source has.
    fn current_identity(&self) -> Arc<Identity> {
        let newer = {
            let g = self.identity.read().unwrap_or_else(|e| e.into_inner());
            match self.source.newer(&g) {
                None => return g.0.clone(),
                Some(r) => r,
            }
        };
        match newer {
            Ok(current) => {
                load_agent(&self.agent, &current.0);
                let id = current.0.clone();
                *self.identity.write().unwrap_or_else(|e| e.into_inner()) = current;
                self.epoch.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "multiplexer: loaded the renewed identity; new upstream connections use it"
                );
                id
            }
            Err(e) => {
                tracing::warn!("multiplexer: keeping the previous identity: {e:#}");
                self.identity
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .0
                    .clone()
            }
        }
    }

    async fn connect(&self) -> Result<Arc<Conn>> {
        let id = self.current_identity();
        let epoch = self.epoch.load(Ordering::Relaxed);
        let kind = match self.transport {
            TransportKind::Auto => *self.resolved.lock().unwrap_or_else(|e| e.into_inner()),
            k => k,
        };
        let route = self.route.get().await?;
        let link = link::connect(&route, &id, kind).await?;
        if self.transport == TransportKind::Auto {
            *self.resolved.lock().unwrap_or_else(|e| e.into_inner()) = link.kind();
        }
        match link.kind() {
            TransportKind::Grpc => &self.metrics.upstream_connects_grpc,
            _ => &self.metrics.upstream_connects_ssh,
        }
        .fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(Conn {
            link,
            open: AtomicUsize::new(0),
            epoch,
        }))
    }

    /// This pool's connection count into the daemon's gauge, which every relay thread's pool
    /// adds to.
    fn report_conns(&self, n: usize) {
        let before = self.conns_reported.swap(n, Ordering::Relaxed);
        self.metrics.upstream_conns.fetch_add(n, Ordering::Relaxed);
        self.metrics
            .upstream_conns
            .fetch_sub(before, Ordering::Relaxed);
    }

    /// Close this pool's connections beyond `keep` once none has carried a node connection
    /// for `after`: a burst opens one connection per [`Upstream`]'s channel cap of sessions,
    /// and each idle one still holds its TLS and HTTP/2 (or SSH) state and a connection at the
    /// proxy. The first relay thread keeps one (the warm one), the others none. Runs for the
    /// life of the pool.
    pub(crate) async fn close_when_idle(self: Arc<Self>, after: Duration, keep: usize) {
        let mut idle_since: Option<std::time::Instant> = None;
        loop {
            tokio::time::sleep(IDLE_CHECK).await;
            let mut pool = self.pool();
            let busy = pool.dialing.is_some()
                || pool
                    .conns
                    .iter()
                    .any(|c| c.open.load(Ordering::Relaxed) > 0);
            if busy || pool.conns.len() <= keep {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= after {
                // No lease holds them (every `open` is 0): dropping them closes them. What is
                // kept is live, of the current identity first (the sort is stable).
                let epoch = self.epoch.load(Ordering::Relaxed);
                pool.conns.retain(|c| !c.link.is_closed());
                pool.conns.sort_by_key(|c| c.epoch != epoch);
                pool.conns.truncate(keep);
                self.report_conns(pool.conns.len());
                idle_since = None;
                tracing::debug!("multiplexer: a relay thread's idle upstream connections closed");
            }
        }
    }

    /// The pool, locked (a poisoned lock is still the pool: its state is a list and a slot).
    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The dial in progress, or a new one started as a task of its own (so it finishes, and
    /// its connection joins the pool, whoever stops waiting for it). `hold`: refuse to start
    /// one within [`SLOW_FAILURE_HOLD`] of a slow failure, with that failure (requests; the
    /// keeper has its own backoff).
    fn join_dial(
        self: &Arc<Self>,
        pool: &mut Pool,
        hold: bool,
    ) -> Result<watch::Receiver<DialOutcome>> {
        // A dial whose task is gone (it panicked) is no dial: start another.
        if let Some(rx) = pool.dialing.as_ref().filter(|rx| rx.has_changed().is_ok()) {
            return Ok(rx.clone());
        }
        if hold {
            if let Some((at, why)) = &*self.slow_failure.lock().unwrap_or_else(|e| e.into_inner()) {
                if at.elapsed() < SLOW_FAILURE_HOLD {
                    bail!("{why}");
                }
            }
        }
        let (tx, rx) = watch::channel(None);
        pool.dialing = Some(rx.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            let r = me.connect().await;
            let outcome = {
                let mut pool = me.pool();
                pool.dialing = None;
                match r {
                    Ok(c) => {
                        pool.conns.push(c.clone());
                        me.report_conns(pool.conns.len());
                        Ok(c)
                    }
                    Err(e) => {
                        let why = format!("{e:#}");
                        if t0.elapsed() >= SLOW {
                            *me.slow_failure.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some((std::time::Instant::now(), why.clone()));
                        }
                        Err(why)
                    }
                }
            };
            let _ = tx.send(Some(outcome));
        });
        Ok(rx)
    }

    /// Wait for a dial's outcome.
    async fn dial_outcome(
        mut rx: watch::Receiver<DialOutcome>,
    ) -> std::result::Result<Arc<Conn>, String> {
        match rx.wait_for(|o| o.is_some()).await {
            Ok(o) => o.clone().unwrap_or_else(|| Err("no outcome".into())),
            Err(_) => Err("the connection attempt stopped".into()),
        }
    }

    /// A connection with a free slot (claimed), opening one if needed. The pool is locked
    /// only to look and to claim, never while a dial runs.
    async fn lease(self: &Arc<Self>) -> Result<Lease> {
        // The connection of the dial this request waited for: its slots are offered first.
        let mut dialed: Option<Arc<Conn>> = None;
        loop {
            let _ = self.current_identity();
            let epoch = self.epoch.load(Ordering::Relaxed);
            let rx = {
                let mut pool = self.pool();
                // Drop closed connections, and old-identity ones that are idle.
                pool.conns.retain(|c| {
                    !c.link.is_closed() && (c.epoch == epoch || c.open.load(Ordering::Relaxed) > 0)
                });
                let found = dialed
                    .take()
                    .filter(|c| c.open.load(Ordering::Relaxed) < self.cap)
                    .or_else(|| {
                        pool.conns
                            .iter()
                            .find(|c| c.epoch == epoch && c.open.load(Ordering::Relaxed) < self.cap)
                            .cloned()
                    });
                if let Some(conn) = found {
                    self.report_conns(pool.conns.len());
                    conn.open.fetch_add(1, Ordering::Relaxed);
                    self.metrics.open_channels.fetch_add(1, Ordering::Relaxed);
                    return Ok(Lease {
                        conn,
                        metrics: self.metrics.clone(),
                    });
                }
                self.join_dial(&mut pool, true)?
            };
            // Every slot of the new connection may be taken by the time we look (more
            // requests waited than it has slots): then look again, and dial again.
            dialed = Some(Self::dial_outcome(rx).await.map_err(|e| anyhow!("{e}"))?);
        }
    }

    /// Open a node connection through the proxy.
    pub async fn dial(
        self: &Arc<Self>,
        host: &str,
        port: u16,
        cluster: &str,
    ) -> Result<(Node, Lease)> {
        let lease = self
            .lease()
            .await
            .map_err(|e| anyhow!("upstream to proxy {}: {e:#}", self.proxy))?;
        let node = lease
            .conn
            .link
            .open_node(host, port, cluster, Some(self.agent.clone()))
            .await?;
        Ok((node, lease))
    }

    /// The cluster and proxy host, for target name cleaning.
    pub(crate) fn cluster(&self) -> String {
        self.current_identity().cluster_name().unwrap_or_default()
    }

    /// Keep one connection warm; reconnect with backoff when it drops. The proxy going away
    /// and coming back are logged once each (a warning with the first failure, an info line
    /// with how long it was away), not at every attempt.
    pub(crate) async fn keep_warm(self: Arc<Self>) {
        let mut backoff = KEEP_WARM_FIRST;
        // Since when, and after how many attempts, the proxy has been unreachable.
        let mut down: Option<(std::time::Instant, u32)> = None;
        loop {
            // Picks up a renewed identity (and swaps the agent's keys) within 250 ms.
            let _ = self.current_identity();
            let live = self.pool().conns.iter().any(|c| !c.link.is_closed());
            if !live {
                // Ask again which transport the proxy offers: it may have been upgraded.
                *self.resolved.lock().unwrap_or_else(|e| e.into_inner()) = TransportKind::Auto;
            }
            if live {
                if let Some((since, attempts)) = down.take() {
                    // A request reconnected before the keeper's next attempt.
                    tracing::info!(
                        "multiplexer: the proxy {} is reachable again after {}s ({attempts} \
                         failed attempts)",
                        self.proxy,
                        since.elapsed().as_secs()
                    );
                    self.metrics.ready.store(1, Ordering::Relaxed);
                }
                backoff = KEEP_WARM_FIRST;
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            // The dial a request started, if one is in progress: one connection, not two.
            let rx = {
                let mut pool = self.pool();
                self.join_dial(&mut pool, false)
            };
            let outcome = match rx {
                Ok(rx) => Self::dial_outcome(rx).await,
                Err(e) => Err(format!("{e:#}")),
            };
            match outcome {
                Ok(c) => {
                    match down.take() {
                        Some((since, attempts)) => tracing::info!(
                            "multiplexer: the proxy {} is reachable again after {}s \
                             ({attempts} failed attempts); upstream connected ({} transport)",
                            self.proxy,
                            since.elapsed().as_secs(),
                            c.link.kind()
                        ),
                        None => tracing::info!(
                            "multiplexer: upstream connected to {} ({} transport)",
                            self.proxy,
                            c.link.kind()
                        ),
                    }
                    self.metrics.ready.store(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.metrics.ready.store(0, Ordering::Relaxed);
                    match &mut down {
                        None => {
                            tracing::warn!(
                                "multiplexer: cannot reach the proxy {}: {e}; retrying with \
                                 backoff up to {}s (logged again when it is back)",
                                self.proxy,
                                KEEP_WARM_MAX.as_secs()
                            );
                            down = Some((std::time::Instant::now(), 1));
                        }
                        Some((_, attempts)) => {
                            *attempts += 1;
                            tracing::debug!(
                                "multiplexer: upstream to {} still failing (attempt {attempts}): {e}",
                                self.proxy
                            );
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(KEEP_WARM_MAX);
                }
            }
        }
    }
}

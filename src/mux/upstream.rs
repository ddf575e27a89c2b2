//! The warm upstream: authenticated TLS + SSH connections to the proxy, shared by every
//! v1.sock request, one channel per node connection.
//!
//! A connection carries at most `cap` channels (default 100, as tbot's cycling client); past
//! that a new one is opened. Connections are made with the identity current at the time; when
//! the identity file changes, new channels go to new connections and the old ones are closed
//! once their last channel ends, so renewals never drop established sessions. A keeper task
//! holds one connection open and reconnects with backoff (100 ms doubling to 2 s) when it
//! drops, so the first request after a proxy restart finds a warm connection.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};
use russh::client::Handle;
use tokio::sync::Mutex;

use super::metrics::Metrics;
use crate::identity::Identity;
use crate::transport::sshproxy::{self, NodeChannel, ProxyHandler};
use crate::transport::tls;

/// One SSH connection to the proxy.
struct Conn {
    handle: Handle<ProxyHandler>,
    open: AtomicUsize,
    epoch: u64,
}

/// A channel's claim on its connection; releases the slot when dropped.
pub struct Lease {
    conn: Arc<Conn>,
    metrics: Arc<Metrics>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.conn.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.open_channels.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Upstream {
    pub proxy: String,
    dest: PathBuf,
    cap: usize,
    conns: Mutex<Vec<Arc<Conn>>>,
    identity: std::sync::RwLock<(Arc<Identity>, SystemTime)>,
    epoch: AtomicU64,
    metrics: Arc<Metrics>,
    /// Called with each newly loaded identity (the agent swaps its keys).
    on_identity: Box<dyn Fn(&Identity) + Send + Sync>,
}

fn identity_mtime(dest: &std::path::Path) -> SystemTime {
    std::fs::metadata(dest.join("identity"))
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Upstream {
    pub fn new(
        proxy: &str,
        dest: PathBuf,
        cap: usize,
        metrics: Arc<Metrics>,
        on_identity: Box<dyn Fn(&Identity) + Send + Sync>,
    ) -> Result<Arc<Upstream>> {
        let mtime = identity_mtime(&dest);
        let id = Identity::load_destination(&dest)?;
        on_identity(&id);
        Ok(Arc::new(Upstream {
            proxy: proxy.to_string(),
            dest,
            cap: cap.max(1),
            conns: Mutex::new(Vec::new()),
            identity: std::sync::RwLock::new((Arc::new(id), mtime)),
            epoch: AtomicU64::new(0),
            metrics,
            on_identity,
        }))
    }

    /// The identity to use now, reloaded if the file changed.
    fn current_identity(&self) -> Arc<Identity> {
        let mtime = identity_mtime(&self.dest);
        {
            let g = self.identity.read().unwrap_or_else(|e| e.into_inner());
            if g.1 == mtime {
                return g.0.clone();
            }
        }
        match Identity::load_destination(&self.dest) {
            Ok(id) => {
                (self.on_identity)(&id);
                let id = Arc::new(id);
                *self.identity.write().unwrap_or_else(|e| e.into_inner()) = (id.clone(), mtime);
                self.epoch.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
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
        let tls = tls::dial(&self.proxy, &id, &[tls::ALPN_PROXY_SSH]).await?;
        let handle = sshproxy::connect(tls, &id, &self.proxy).await?;
        self.metrics
            .upstream_connects
            .fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(Conn {
            handle,
            open: AtomicUsize::new(0),
            epoch,
        }))
    }

    /// A connection with a free slot (claimed), opening one if needed.
    async fn lease(&self) -> Result<Lease> {
        let _ = self.current_identity();
        let epoch = self.epoch.load(Ordering::Relaxed);
        let mut conns = self.conns.lock().await;
        // Drop closed connections, and old-identity ones that are idle.
        conns.retain(|c| {
            !c.handle.is_closed() && (c.epoch == epoch || c.open.load(Ordering::Relaxed) > 0)
        });
        let found = conns
            .iter()
            .find(|c| c.epoch == epoch && c.open.load(Ordering::Relaxed) < self.cap)
            .cloned();
        let conn = match found {
            Some(c) => c,
            None => {
                let c = self.connect().await?;
                conns.push(c.clone());
                c
            }
        };
        self.metrics
            .upstream_conns
            .store(conns.len(), Ordering::Relaxed);
        conn.open.fetch_add(1, Ordering::Relaxed);
        self.metrics.open_channels.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            conn,
            metrics: self.metrics.clone(),
        })
    }

    /// Open a channel to a node through the proxy.
    pub async fn dial(&self, host: &str, port: u16, cluster: &str) -> Result<(NodeChannel, Lease)> {
        let lease = self
            .lease()
            .await
            .map_err(|e| anyhow!("upstream to proxy {}: {e:#}", self.proxy))?;
        let node = sshproxy::open_node(&lease.conn.handle, host, port, cluster).await?;
        Ok((node, lease))
    }

    /// The cluster and proxy host, for target name cleaning.
    pub fn cluster(&self) -> String {
        self.current_identity().cluster_name().unwrap_or_default()
    }

    /// Keep one connection warm; reconnect with backoff when it drops.
    pub async fn keep_warm(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            // Picks up a renewed identity (and swaps the agent's keys) within 250 ms.
            let _ = self.current_identity();
            let live = {
                let conns = self.conns.lock().await;
                conns.iter().any(|c| !c.handle.is_closed())
            };
            if live {
                backoff = Duration::from_millis(100);
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            match self.connect().await {
                Ok(c) => {
                    let mut conns = self.conns.lock().await;
                    conns.push(c);
                    self.metrics
                        .upstream_conns
                        .store(conns.len(), Ordering::Relaxed);
                    tracing::info!("multiplexer: upstream connected to {}", self.proxy);
                    self.metrics.ready.store(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.metrics.ready.store(0, Ordering::Relaxed);
                    tracing::warn!(
                        "multiplexer: upstream to {} failed, retrying in {:?}: {e:#}",
                        self.proxy,
                        backoff
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

//! The proxy's SSH server (ALPN `teleport-proxy-ssh` on the web port, or plain SSH on the SSH
//! port, [`crate::ssh_port`]): user-cert auth and the `proxy:<host>:<port>@<cluster>`
//! subsystem that relays to a registered node.
//!
//! Checks, as Teleport's proxy makes them: the user cert is signed by the cluster's user CA,
//! unexpired, a user cert, names the login, and (behind TLS) belongs to the TLS client cert's
//! user; on the plain SSH port the SSH certificate is the only credential; the bot
//! exists and is not locked; the target is a registered node; one of the cert's roles reaches
//! the node's labels. A refusal is written as one line to the channel's stderr and the
//! subsystem request fails. The relay never blocks the SSH session loop: node-bound bytes go
//! through a byte-capped queue, and a channel whose node stops reading past the cap is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use russh::keys::ssh_key::{certificate::CertType, Certificate, HashAlg};
use russh::server::{Auth, ChannelOpenHandle, Handler, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::router;
use crate::Ctx;
use idmux_transport::relay::{Chunks, BUF_SIZE};

/// Bytes a node may leave unread on one channel before the proxy closes that channel.
const NODE_QUEUE_CAP: usize = 16 << 20;

/// A parsed `proxy:` subsystem request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProxyTarget {
    pub host: String,
    pub port: u16,
    pub cluster: String,
}

/// Parse `proxy:<host>:<port>[@<cluster>]` (pure).
pub(crate) fn parse_subsystem(name: &str) -> Result<ProxyTarget> {
    let rest = name
        .strip_prefix("proxy:")
        .ok_or_else(|| anyhow!("unsupported subsystem {name:?}"))?;
    let (hostport, cluster) = match rest.rsplit_once('@') {
        Some((hp, c)) => (hp, c.to_string()),
        None => (rest, String::new()),
    };
    let (host, port) = router::split_target(hostport)
        .map_err(|why| anyhow!("bad proxy subsystem target {hostport:?}: {why}"))?;
    Ok(ProxyTarget {
        host: host.to_string(),
        port,
        cluster,
    })
}

/// Who logged in.
struct Authed {
    username: String,
    roles: Vec<String>,
}

/// One proxy SSH connection.
pub(crate) struct ProxyConn {
    ctx: Arc<Ctx>,
    /// CN of the TLS client certificate this connection came with (`None` on the plain SSH
    /// port, where the SSH certificate is the only credential).
    tls_user: Option<String>,
    authed: Option<Authed>,
    channels: HashMap<ChannelId, Channel<Msg>>,
}

impl ProxyConn {
    pub fn new(ctx: Arc<Ctx>, tls_user: Option<String>) -> ProxyConn {
        ProxyConn {
            ctx,
            tls_user,
            authed: None,
            channels: HashMap::new(),
        }
    }

    fn check_cert(&self, user: &str, cert: &Certificate) -> Result<Authed> {
        // Every trusted user CA key (a rotation has two).
        let live = self.ctx.live();
        let fps = live
            .cas
            .user
            .trusted()
            .map(|k| Ok(k.ssh_public()?.fingerprint(HashAlg::Sha256)))
            .collect::<Result<Vec<_>>>()?;
        cert.validate(fps.iter())
            .map_err(|e| anyhow!("certificate rejected: {e}"))?;
        if cert.cert_type() != CertType::User {
            bail!("not a user certificate");
        }
        if !cert.valid_principals().iter().any(|p| p == user) {
            bail!("login {user:?} is not in the certificate");
        }
        if let Some(tls_user) = self.tls_user.as_deref().filter(|u| *u != cert.key_id()) {
            bail!(
                "SSH certificate of {:?} does not belong to TLS identity {tls_user:?}",
                cert.key_id()
            );
        }
        let roles = cert
            .extensions()
            .get("teleport-roles")
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .and_then(|v| v.get("roles").cloned())
            .and_then(|r| serde_json::from_value::<Vec<String>>(r).ok())
            .unwrap_or_default();
        Ok(Authed {
            username: cert.key_id().to_string(),
            roles,
        })
    }

    /// Resolve and authorize a target; returns the node's address.
    fn route(&self, t: &ProxyTarget) -> Result<String> {
        let a = self
            .authed
            .as_ref()
            .ok_or_else(|| anyhow!("not authenticated"))?;
        let caller = router::Caller {
            username: &a.username,
            roles: &a.roles,
        };
        Ok(router::authorize(
            &self.ctx.dir,
            &self.ctx.proxy_host,
            &caller,
            &t.host,
            t.port,
            &t.cluster,
        )?)
    }
}

impl Handler for ProxyConn {
    type Error = anyhow::Error;

    // `auth_publickey_offered` keeps its default (accept the offer): russh asks it for
    // certificates too, before `auth_openssh_certificate` decides. Plain keys are refused by the
    // default `auth_publickey`.

    async fn auth_openssh_certificate(&mut self, user: &str, cert: &Certificate) -> Result<Auth> {
        match self.check_cert(user, cert) {
            Ok(a) => {
                tracing::debug!(user = a.username, login = user, "proxy ssh: authenticated");
                self.authed = Some(a);
                Ok(Auth::Accept)
            }
            Err(e) => {
                tracing::info!(login = user, "proxy ssh: refused: {e:#}");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<()> {
        if self.authed.is_none() {
            return Ok(()); // dropping the handle rejects the channel
        }
        reply.accept().await;
        self.channels.insert(channel.id(), channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<()> {
        let routed = parse_subsystem(name).and_then(|t| self.route(&t).map(|a| (t, a)));
        let result = match routed {
            Ok((t, addr)) => match crate::router::dial_node(&t.host, &addr).await {
                Ok(tcp) => Ok((t, tcp)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match (result, self.channels.remove(&id)) {
            (Ok((t, tcp)), Some(channel)) => {
                tracing::info!(target = %format!("{}:{}", t.host, t.port), "proxy ssh: relaying");
                session.channel_success(id)?;
                tokio::spawn(relay(channel, tcp));
            }
            (Err(e), _) => {
                tracing::info!("proxy ssh: refused {name:?}: {e:#}");
                session.extended_data(id, 1, Bytes::from(format!("{e:#}\n")))?;
                session.channel_failure(id)?;
                session.close(id)?;
            }
            (Ok(_), None) => {
                session.channel_failure(id)?;
            }
        }
        Ok(())
    }
}

/// Relay one channel to a node's TCP stream until both sides are done.
async fn relay(channel: Channel<Msg>, tcp: TcpStream) {
    let (mut rx, tx) = channel.split();
    let (mut tcp_r, mut tcp_w) = tcp.into_split();
    let pending = Arc::new(AtomicUsize::new(0));
    let (qtx, mut qrx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();

    // Channel -> queue: always drains promptly so the session loop never waits on us.
    let p = pending.clone();
    let tx = &tx;
    let drain = async move {
        while let Some(msg) = rx.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    let n = data.len();
                    if p.fetch_add(n, Ordering::Relaxed) + n > NODE_QUEUE_CAP {
                        tracing::warn!("proxy ssh: node stopped reading; closing the channel");
                        let _ = tx.close().await;
                        return false;
                    }
                    if qtx.send(data).is_err() {
                        return false;
                    }
                }
                ChannelMsg::Eof | ChannelMsg::Close => break,
                _ => {}
            }
        }
        true
    };
    // Queue -> node.
    let p = pending.clone();
    // Queued data goes out in batches (crate::coalesce): one writev for what has arrived.
    let to_node = async move {
        let mut batch = Vec::new();
        while let Some(b) = qrx.recv().await {
            let mut size = b.len();
            batch.push(b);
            while size < crate::coalesce::COALESCE {
                match qrx.try_recv() {
                    Ok(b) => {
                        size += b.len();
                        batch.push(b);
                    }
                    Err(_) => break,
                }
            }
            if crate::coalesce::write_batch(&mut tcp_w, &mut batch)
                .await
                .is_err()
            {
                return;
            }
            p.fetch_sub(size, Ordering::Relaxed);
        }
        let _ = tcp_w.shutdown().await;
    };
    // Node -> channel.
    let from_node = async {
        let mut chunks = Chunks::new();
        loop {
            match chunks.read(&mut tcp_r, BUF_SIZE).await {
                Ok(None) | Err(_) => break,
                Ok(Some(chunk)) => {
                    if tx.data_bytes(chunk).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.eof().await;
    };
    let drain_then_flush = async {
        let _ = tokio::join!(drain, to_node);
    };
    tokio::join!(drain_then_flush, from_node);
    let _ = tx.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsystem_names() {
        assert_eq!(
            parse_subsystem("proxy:node-1:3022@dev.test").unwrap(),
            ProxyTarget {
                host: "node-1".into(),
                port: 3022,
                cluster: "dev.test".into()
            }
        );
        assert_eq!(parse_subsystem("proxy:node-1:22").unwrap().cluster, "");
        assert_eq!(parse_subsystem("proxy:[::1]:22@c").unwrap().host, "::1");
        assert!(parse_subsystem("proxy:node-1").is_err());
        assert!(parse_subsystem("proxy::22").is_err());
        assert!(parse_subsystem("sftp").is_err());
        assert!(parse_subsystem("proxy:a:b@c").is_err());
    }
}

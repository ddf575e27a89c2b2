//! The proxy's SSH port (`--no-tls-routing`, Teleport's 3023 in `proxy_listener_mode:
//! separate`), multiplexed as Teleport's `lib/multiplexer` does: the first 8 bytes decide,
//! read within [`DETECT_DEADLINE`] (`defaults.ReadHeadersTimeout`):
//! - `SSH...`: the proxy's SSH server ([`proxy_ssh`]), where an SSH user certificate from a
//!   trusted user CA is the only credential;
//! - a TLS record (`0x16`): TLS with the proxy's host certificate, a client certificate from
//!   the user CA required, ALPN `h2` or `teleport-proxy-ssh-grpc`, then the gRPC
//!   TransportService ([`proxy_grpc`]);
//! - anything else (HTTP, a PROXY line, unknown bytes, fewer than 8 bytes): closed.
//!
//! Must not know: what the SSH server or the TransportService do. Caps: at most
//! [`MAX_CONNS`] connections at once (more wait in the listen backlog); timeouts: detection,
//! then the TLS handshake within [`TLS_HANDSHAKE_TIMEOUT`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;

use crate::{auth_grpc, proxy_grpc, proxy_ssh, Ctx};

/// `defaults.ReadHeadersTimeout`: how long the first bytes may take.
pub(crate) const DETECT_DEADLINE: Duration = Duration::from_secs(10);
/// How long the TLS handshake may take (`defaults.HandshakeReadDeadline`).
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections served at once.
pub(crate) const MAX_CONNS: usize = 1024;

/// What the first bytes of a connection say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    Ssh,
    Tls,
    Http,
    /// A PROXY protocol line (v1 or v2): refused, as external PROXY support is off by default.
    ProxyLine,
    Unknown,
}

/// `detectProto` over the first 8 bytes (pure).
pub(crate) fn detect(first: &[u8; 8]) -> Proto {
    const PROXY_V2: [u8; 8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51];
    const HTTP: [&[u8]; 9] = [
        b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
    ];
    if first.starts_with(b"PROXY") || *first == PROXY_V2 {
        Proto::ProxyLine
    } else if first.starts_with(b"SSH") {
        Proto::Ssh
    } else if first[0] == 0x16 {
        Proto::Tls
    } else if HTTP.iter().any(|m| first.starts_with(m)) {
        Proto::Http
    } else {
        Proto::Unknown
    }
}

/// Accept connections on the SSH port until the task is dropped.
pub(crate) async fn serve(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    shards: Arc<idmux_transport::shards::Shards<()>>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("ssh port accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let c = ctx.clone();
        // On one of the dev proxy's threads, as the proxy port's connections.
        shards.dispatch(tcp, permit, move |tcp, _| async move {
            if let Err(e) = serve_conn(c, tcp, &peer.to_string()).await {
                tracing::info!("ssh port connection from {peer}: {e:#}");
            }
        });
    }
}

async fn serve_conn(ctx: Arc<Ctx>, mut tcp: TcpStream, peer: &str) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut first = [0u8; 8];
    tokio::time::timeout(DETECT_DEADLINE, tcp.read_exact(&mut first))
        .await
        .map_err(|_| anyhow!("failed to peek connection: no 8 bytes within {DETECT_DEADLINE:?}"))?
        .map_err(|e| anyhow!("failed to peek connection: {e}"))?;
    let proto = detect(&first);
    let io = Prefixed {
        prefix: first.to_vec(),
        at: 0,
        inner: tcp,
    };
    let live = ctx.live();
    match proto {
        Proto::Ssh => {
            let handler = proxy_ssh::ProxyConn::new(ctx.clone(), None);
            let session = russh::server::run_stream(live.ssh_config.clone(), io, handler).await?;
            session.await?;
            Ok(())
        }
        Proto::Tls => {
            let Some(cfg) = live.tls_ssh_port.clone() else {
                bail!("TLS on the SSH port: the TransportService is not served (--transports)");
            };
            let tls = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, async {
                let start =
                    LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
                crate::handshake(start, cfg).await
            })
            .await
            .map_err(|_| anyhow!("TLS from {peer}: no handshake within {TLS_HANDSHAKE_TIMEOUT:?}"))?
            .map_err(|e| anyhow!("TLS from {peer}: {e}"))?;
            let caller = auth_grpc::peer_identity(&tls)
                .map_err(|e| anyhow!("transport gRPC from {peer}: {e}"))?;
            proxy_grpc::serve(ctx, tls, caller).await
        }
        Proto::Http => bail!(
            "closing HTTP connection: HTTP listener is disabled (for a health check, use HTTPS on the web port)"
        ),
        Proto::ProxyLine => bail!("proxy protocol support is disabled"),
        Proto::Unknown => bail!(
            "failed to detect connection protocol, first few bytes were: {first:02x?}"
        ),
    }
}

/// A stream whose first bytes were already read: they are read again first.
struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_follows_teleports_multiplexer() {
        assert_eq!(detect(b"SSH-2.0-"), Proto::Ssh);
        assert_eq!(detect(&[0x16, 3, 1, 0, 0xa5, 1, 0, 0]), Proto::Tls);
        assert_eq!(detect(b"GET / HT"), Proto::Http);
        assert_eq!(detect(b"PROXY TC"), Proto::ProxyLine);
        assert_eq!(
            detect(&[0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51]),
            Proto::ProxyLine
        );
        assert_eq!(detect(b"\x00\x00\x00\x08\x04\xd2\x16\x2f"), Proto::Unknown);
        assert_eq!(detect(b"ssh-2.0-"), Proto::Unknown);
    }

    #[tokio::test]
    async fn prefixed_stream_replays_the_peeked_bytes() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut p = Prefixed {
            prefix: b"SSH-2.0-".to_vec(),
            at: 0,
            inner: a,
        };
        tokio::io::AsyncWriteExt::write_all(&mut b, b"rest")
            .await
            .unwrap();
        drop(b);
        let mut all = Vec::new();
        p.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"SSH-2.0-rest");
    }
}

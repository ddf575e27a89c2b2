//! A TLS client stream whose flushes wait for the end of the task's turn, so the records of
//! many small writes leave in one large `writev` (issue 18).
//!
//! Owns: when encrypted records go to the socket. Must not know: what the records carry.
//!
//! Why: h2 flushes after every DATA frame, and the proxy's frames are 16 KiB (grpc-go's
//! limit), so through tokio-rustls alone every frame was one `writev` to the proxy: 20,911
//! for a 256 MiB upload (strace), 12.9 KiB each on average. On loopback TCP a writer spends
//! about a third less CPU per byte in 256 KiB writes than in 16 KiB ones (`benches/hop.c`),
//! and the proxy reads fewer, larger segments too.
//!
//! How: rustls encrypts what is written at once and queues the records
//! ([`rustls::ClientConnection`]'s own buffer, up to [`CORK_MAX`]), so holding them back costs
//! no copy. A flush with records queued does not write them; it wakes the task again and
//! returns. In between, the runtime runs the other tasks that are ready: the relays that feed
//! this connection more frames. The task's next turn starts, as every HTTP/2 connection
//! task's does, by reading the socket: [`Corked::poll_read`] first writes every queued
//! record, in one `writev` of up to 64 records. A flush that finds [`CORK_MAX`] queued, or the
//! socket full from the last attempt, writes at once. An interactive keystroke waits one turn
//! of the scheduler, microseconds.
//!
//! tbot's own gRPC client does the like: grpc-go's loopy writer puts frames in a write buffer
//! and flushes it only when it has nothing more to write, yielding once first to let the
//! streams add to a small batch (`internal/transport/controlbuf.go`, `loopyWriter.run`).

use std::io::{self, IoSlice, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::client::TlsStream;

/// Encrypted bytes queued before a write must wait for the socket: four times a 64 KiB relay
/// read, and where loopback TCP's cost per byte levels off (`benches/hop.c`).
pub const CORK_MAX: usize = 256 << 10;

/// A TLS client stream whose flushes are deferred to the end of the task's turn.
pub struct Corked<S> {
    tls: TlsStream<S>,
    /// The last attempt to write the queued records found the socket full: its waker is
    /// registered, and a flush must not wake the task again (it would spin).
    blocked: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Corked<S> {
    pub fn new(mut tls: TlsStream<S>) -> Self {
        tls.get_mut().1.set_buffer_limit(Some(CORK_MAX));
        Corked {
            tls,
            blocked: false,
        }
    }

    /// Write every queued record to the socket.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (io, conn) = self.tls.get_mut();
        while conn.wants_write() {
            match conn.write_tls(&mut Adapter { io, cx }) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = true;
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.blocked = false;
        Pin::new(io).poll_flush(cx)
    }

    /// Encrypt what rustls takes of `bufs` (none while [`CORK_MAX`] is queued: then write the
    /// queue first).
    fn poll_encrypt(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        loop {
            let n = self.tls.get_mut().1.writer().write_vectored(bufs)?;
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            if self.drain(cx)?.is_pending() {
                // The socket took some of the queue before it filled: take as much more.
                let n = self.tls.get_mut().1.writer().write_vectored(bufs)?;
                return if n > 0 {
                    Poll::Ready(Ok(n))
                } else {
                    Poll::Pending
                };
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Corked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // The turn's first act: send what earlier flushes left queued. A full socket is no
        // reason not to read (its waker is set). A failed write is the connection's end, but
        // what the peer sent before it (a TLS alert saying why) is read first.
        let mut failed = None;
        if self.tls.get_ref().1.wants_write() {
            if let Poll::Ready(Err(e)) = self.drain(cx) {
                failed = Some(e);
            }
        }
        let before = buf.filled().len();
        match (Pin::new(&mut self.tls).poll_read(cx, buf), failed) {
            (Poll::Ready(Ok(())), Some(e)) if buf.filled().len() == before => Poll::Ready(Err(e)),
            (Poll::Pending, Some(e)) => Poll::Ready(Err(e)),
            (r, _) => r,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_encrypt(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_encrypt(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.tls.get_ref().1.wants_write() && !self.blocked {
            // Come back at the end of this turn: the next poll_read writes the queue.
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        self.drain(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// rustls's `io::Write` over an `AsyncWrite`: `Pending` is `WouldBlock` (tokio-rustls's own
/// adapter is private). Vectored, so the queued records leave in one `writev`.
struct Adapter<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncWrite + Unpin> Write for Adapter<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// The client's end of the socket, counting the writes that carried bytes.
    struct Counting {
        io: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.io).poll_write(cx, buf);
            if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            r
        }
        /// As a socket's `writev`: the slices in one write.
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.poll_write(cx, &all)
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// A TLS 1.3 connection over an in-memory socket of `socket` bytes: the corked client,
    /// its write count, and the server's end.
    async fn pair(
        socket: usize,
    ) -> (
        Corked<Counting>,
        Arc<AtomicUsize>,
        tokio_rustls::server::TlsStream<DuplexStream>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cas = idmux_devcluster::ca::ClusterCas::create(dir.path(), "c").unwrap();
        let key = idmux_identity::KeyPair::generate(idmux_identity::KeyType::EcdsaP256).unwrap();
        let pem = cas
            .issue_tls_server(
                &key.spki_der().unwrap(),
                "proxy",
                &["proxy.test".into()],
                &[],
                Duration::from_secs(600),
            )
            .unwrap();
        let chain = vec![CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()];
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key.to_rustls().unwrap())
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        let ca = &cas.serving_host_keys().tls_cert_pem;
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
            .unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (near, far) = tokio::io::duplex(socket);
        let writes = Arc::new(AtomicUsize::new(0));
        let near = Counting {
            io: near,
            writes: writes.clone(),
        };
        let name = ServerName::try_from("proxy.test").unwrap();
        let (c, s) = tokio::join!(
            tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, near),
            tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(far),
        );
        writes.store(0, Ordering::SeqCst);
        (Corked::new(c.unwrap()), writes, s.unwrap())
    }

    /// h2 writes a DATA frame and flushes, sixteen times in one turn of its task (a 64 KiB
    /// relay read in 16 KiB frames, header and payload): tokio-rustls wrote each to the socket
    /// at once, sixteen writes; here they leave together when the task's next turn reads.
    #[tokio::test]
    async fn flushes_in_one_turn_leave_in_one_write() {
        let (mut c, writes, mut s) = pair(1 << 20).await;
        let frame = vec![7u8; 4096];
        poll_fn(|cx| {
            for _ in 0..16 {
                let p = Pin::new(&mut c);
                assert!(matches!(p.poll_write_vectored(cx, &[IoSlice::new(&[0; 9]), IoSlice::new(&frame)]), Poll::Ready(Ok(n)) if n == 9 + 4096));
                assert!(matches!(Pin::new(&mut c).poll_flush(cx), Poll::Ready(Ok(()))));
            }
            Poll::Ready(())
        })
        .await;
        assert_eq!(writes.load(Ordering::SeqCst), 0, "written within the turn");
        // The next turn begins with a read (nothing to read: pending), which writes the lot.
        poll_fn(|cx| {
            let mut b = [0u8; 16];
            assert!(Pin::new(&mut c)
                .poll_read(cx, &mut ReadBuf::new(&mut b))
                .is_pending());
            Poll::Ready(())
        })
        .await;
        assert_eq!(
            writes.load(Ordering::SeqCst),
            1,
            "one write for sixteen flushes"
        );
        let mut got = vec![0u8; 16 * (9 + 4096)];
        s.read_exact(&mut got).await.unwrap();
        assert!(got
            .chunks(9 + 4096)
            .all(|f| f[..9] == [0; 9] && f[9..] == frame[..]));

        // Shutting down writes what is queued first.
        c.write_all(b"last").await.unwrap();
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"last");
    }

    /// Past CORK_MAX queued, a write waits for the socket; a flush with the socket full does
    /// not wake its task again (it would spin), and everything arrives.
    #[tokio::test]
    async fn the_queue_is_capped_and_a_full_socket_is_waited_for() {
        let (mut c, writes, mut s) = pair(64 << 10).await;
        let chunk = vec![1u8; 16 << 10];
        let queued = poll_fn(|cx| {
            let mut queued = 0;
            while let Poll::Ready(n) = Pin::new(&mut c).poll_write(cx, &chunk) {
                queued += n.unwrap();
            }
            // The socket (64 KiB) took what it could; the rest waits in rustls.
            assert!(Pin::new(&mut c).poll_flush(cx).is_pending());
            Poll::Ready(queued)
        })
        .await;
        assert!(
            (CORK_MAX..CORK_MAX + (64 << 10) + 4096).contains(&queued),
            "{queued}"
        );
        assert!(writes.load(Ordering::SeqCst) >= 1);
        let reader = tokio::spawn(async move {
            let mut n = 0;
            let mut b = vec![0u8; 1 << 16];
            while n < queued {
                n += s.read(&mut b).await.unwrap();
            }
            n
        });
        tokio::time::timeout(Duration::from_secs(10), c.flush())
            .await
            .expect("flushed once the socket drains")
            .unwrap();
        assert_eq!(reader.await.unwrap(), queued);
    }
}

//! A `v1.sock` session's socket, split for the relay into halves that each register with the
//! reactor only for what they wait on.
//!
//! tokio's `UnixStream` registers its fd for reading and writing at once, edge-triggered. On a
//! unix stream socket the kernel reports "writable" again every time the peer reads: each read
//! frees the sender's buffer space and `unix_write_space` wakes the sender's waiters, whether or
//! not it was ever full. So every packet ssh read from the daemon woke the relay thread once
//! more, for an event no task waited on: 0.8 extra context switches per echoed keystroke
//! (3.0 a round trip against stunnel's 2.2) and 11 % of the thread's wake-ups in a bulk upload,
//! where ssh reads the node's window adjustments (issue 18, strace of the daemon).
//!
//! Here the reader's fd is registered for reading only. The writer writes straight away and
//! registers (a `dup` of the fd, for writability only) the first time the socket is full,
//! keeping that registration for the rest of the session: a download that keeps the socket
//! full would otherwise register and deregister once a chunk.
//!
//! Owns: the fd's registrations and its raw reads and writes. Must not know: what is relayed.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use nix::sys::socket::{self, MsgFlags, Shutdown, UnixAddr};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Split a connected unix stream socket; must be called on the runtime that will drive both
/// halves (the session's relay thread).
pub(crate) fn split(s: std::os::unix::net::UnixStream) -> io::Result<(ReadHalf, WriteHalf)> {
    s.set_nonblocking(true)?;
    let fd = Arc::new(register(OwnedFd::from(s), Interest::READABLE)?);
    Ok((
        ReadHalf { fd: fd.clone() },
        WriteHalf { fd, writable: None },
    ))
}

fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns `fd`, which stays open, and the same, for its whole life.
    Ok(unsafe { AsyncFd::register_with_interest(fd, interest) }?)
}

/// The reading half: registered for readability only.
pub(crate) struct ReadHalf {
    fd: Arc<AsyncFd<OwnedFd>>,
}

/// The writing half: writes without waiting until the socket is full. Shuts the socket's
/// writing direction down when dropped, as tokio's `OwnedWriteHalf` does.
pub(crate) struct WriteHalf {
    /// The socket (its registration is the reader's).
    fd: Arc<AsyncFd<OwnedFd>>,
    /// A duplicate of the fd registered for writability, made the first time a write found
    /// the socket full.
    writable: Option<AsyncFd<OwnedFd>>,
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            // SAFETY: `recv` only writes into these bytes, and the count it returns is marked
            // initialized below only after it has written them.
            let room = unsafe { buf.unfilled_mut() };
            let got = guard.try_io(|fd| {
                // SAFETY: `room` is valid for writes of `room.len()` bytes.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), room.as_mut_ptr().cast(), room.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match got {
                Ok(Ok(n)) => {
                    // SAFETY: `recv` wrote these `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue, // readiness cleared: wait for the next edge
            }
        }
    }
}

impl WriteHalf {
    fn shut_write(&self) -> io::Result<()> {
        socket::shutdown(self.fd.get_ref().as_raw_fd(), Shutdown::Write).map_err(io::Error::from)
    }

    fn send(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let fd = self.fd.get_ref().as_raw_fd();
        loop {
            let r = match bufs {
                [one] => socket::send(fd, one, MsgFlags::MSG_NOSIGNAL),
                _ => socket::sendmsg::<UnixAddr>(fd, bufs, &[], MsgFlags::MSG_NOSIGNAL, None),
            };
            match r {
                Err(nix::errno::Errno::EINTR) => continue,
                r => return r.map_err(io::Error::from),
            }
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            if let Some(w) = &self.writable {
                let mut guard = ready!(w.poll_write_ready(cx))?;
                match guard.try_io(|_| self.send(bufs)) {
                    Ok(r) => return Poll::Ready(r),
                    Err(_would_block) => continue,
                }
            }
            match self.send(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Registered after the write failed: if room freed in between, adding the
                    // fd reports it at once (epoll checks the current state), so no wake-up
                    // is lost.
                    let dup = self.fd.get_ref().try_clone()?;
                    self.writable = Some(register(dup, Interest::WRITABLE)?);
                }
                r => return Poll::Ready(r),
            }
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shut_write())
    }
}

impl Drop for WriteHalf {
    /// A second `shutdown` after `poll_shutdown` changes nothing on a unix socket.
    fn drop(&mut self) {
        let _ = self.shut_write();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The events `fd` is registered for in each epoll fd of this process (from
    /// /proc/self/fdinfo: `tfd: <fd> events: <hex mask> ...`; the reactor's epoll instance
    /// may show under more than one fd). Fd numbers are the process's, so tests running
    /// beside this one cannot have another socket under `fd`'s number meanwhile.
    fn epoll_masks(fd: i32) -> Vec<u32> {
        let mut masks = Vec::new();
        for e in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
            let Ok(info) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            for line in info.lines() {
                let mut w = line.split_whitespace();
                if w.next() != Some("tfd:") || w.next() != Some(&fd.to_string()) {
                    continue;
                }
                if let (Some("events:"), Some(hex)) = (w.next(), w.next()) {
                    masks.push(u32::from_str_radix(hex, 16).unwrap());
                }
            }
        }
        masks
    }

    const IN: u32 = libc::EPOLLIN as u32;
    const OUT: u32 = libc::EPOLLOUT as u32;

    #[tokio::test(flavor = "current_thread")]
    async fn the_reader_is_not_registered_for_writability() {
        // The control: tokio's own stream is registered for both, which is what woke the
        // relay thread each time the peer read.
        let (a, _pa) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let raw = a.as_raw_fd();
        let t = tokio::net::UnixStream::from_std(a).unwrap();
        let masks = epoll_masks(raw);
        assert!(
            !masks.is_empty() && masks.iter().all(|m| m & (IN | OUT) == IN | OUT),
            "{masks:x?}"
        );
        drop(t);

        let (b, _pb) = std::os::unix::net::UnixStream::pair().unwrap();
        let raw = b.as_raw_fd();
        let (r, w) = split(b).unwrap();
        let masks = epoll_masks(raw);
        assert!(
            !masks.is_empty() && masks.iter().all(|m| m & (IN | OUT) == IN),
            "{masks:x?}"
        );
        drop((r, w));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn halves_relay_both_ways_and_a_full_socket_waits_for_room() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (mut r, mut w) = split(ours).unwrap();
        // The peer: echoes a greeting, then reads everything slowly and reports the sum.
        let peer = std::thread::spawn(move || {
            let mut theirs = theirs;
            theirs.write_all(b"hello").unwrap();
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                std::thread::sleep(std::time::Duration::from_micros(50));
                match theirs.read(&mut buf).unwrap() {
                    0 => break,
                    n => all.extend_from_slice(&buf[..n]),
                }
            }
            all
        });
        let mut greeting = [0u8; 5];
        r.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"hello");
        assert!(w.writable.is_none(), "nothing has had to wait yet");

        // 4 MiB is far more than the socket holds: the writes must wait for the slow reader.
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        w.write_all(&data).await.unwrap();
        assert!(w.writable.is_some(), "a full socket registers the writer");
        w.shutdown().await.unwrap();
        let got = peer.join().unwrap();
        assert!(
            got == data,
            "{} bytes came through, {} sent",
            got.len(),
            data.len()
        );
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_the_writer_ends_the_peers_input() {
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (_r, mut w) = split(ours).unwrap();
        w.write_all(b"bye").await.unwrap();
        drop(w);
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bye");
    }
}

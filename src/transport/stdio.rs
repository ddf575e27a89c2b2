//! This process's stdin and stdout as async byte streams for a ProxyCommand.
//!
//! When a stream is a pipe or a socket (what ssh gives a ProxyCommand) a duplicate of the
//! descriptor is driven through tokio's reactor in non-blocking mode, and the descriptor's
//! original status flags are put back on drop (they belong to the file description, which is
//! shared). Anything else (a terminal, a regular file) goes through tokio's blocking-pool
//! stdio, so a shared terminal is never switched to non-blocking mode.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::{fstat, SFlag};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::pipe;
use tokio::net::UnixStream;

/// Puts a descriptor's status flags (O_NONBLOCK) back as they were, on drop.
struct RestoreFlags {
    fd: OwnedFd,
    flags: OFlag,
}

impl Drop for RestoreFlags {
    fn drop(&mut self) {
        let _ = fcntl(&self.fd, FcntlArg::F_SETFL(self.flags));
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Pipe,
    Socket,
    Other,
}

fn kind_of(fd: BorrowedFd<'_>) -> Kind {
    let Ok(st) = fstat(fd) else {
        return Kind::Other;
    };
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFIFO => Kind::Pipe,
        SFlag::S_IFSOCK => Kind::Socket,
        _ => Kind::Other,
    }
}

/// A duplicate of `fd` to hand to tokio, and the guard that restores the flags.
fn prepare(fd: BorrowedFd<'_>) -> Option<(OwnedFd, RestoreFlags)> {
    let dup = fd.try_clone_to_owned().ok()?;
    let keep = fd.try_clone_to_owned().ok()?;
    let flags = OFlag::from_bits_truncate(fcntl(&keep, FcntlArg::F_GETFL).ok()?);
    Some((dup, RestoreFlags { fd: keep, flags }))
}

enum Reader {
    Pipe(pipe::Receiver),
    Socket(UnixStream),
    Blocking(tokio::io::Stdin),
}

enum Writer {
    Pipe(pipe::Sender),
    Socket(UnixStream),
    Blocking(tokio::io::Stdout),
}

/// Standard input as an [`AsyncRead`].
pub struct Stdin {
    inner: Reader,
    // Dropped after `inner`, so the flags come back once tokio is done with the descriptor.
    _restore: Option<RestoreFlags>,
}

/// Standard output as an [`AsyncWrite`].
pub struct Stdout {
    inner: Writer,
    _restore: Option<RestoreFlags>,
}

fn socket(fd: OwnedFd) -> io::Result<UnixStream> {
    let s = std::os::unix::net::UnixStream::from(fd);
    s.set_nonblocking(true)?;
    UnixStream::from_std(s)
}

impl Stdin {
    /// Wrap `fd` (normally this process's stdin); when it is neither a pipe nor a socket,
    /// this process's stdin through tokio. Must be called inside a tokio runtime.
    pub(crate) fn from_fd(fd: BorrowedFd<'_>) -> Stdin {
        let kind = kind_of(fd);
        if kind != Kind::Other {
            if let Some((dup, restore)) = prepare(fd) {
                let inner = match kind {
                    Kind::Pipe => pipe::Receiver::from_owned_fd(dup).map(Reader::Pipe),
                    _ => socket(dup).map(Reader::Socket),
                };
                if let Ok(inner) = inner {
                    return Stdin {
                        inner,
                        _restore: Some(restore),
                    };
                }
            }
        }
        Stdin {
            inner: Reader::Blocking(tokio::io::stdin()),
            _restore: None,
        }
    }
}

impl Stdout {
    /// Wrap `fd` (normally this process's stdout); when it is neither a pipe nor a socket,
    /// this process's stdout through tokio. Must be called inside a tokio runtime.
    pub(crate) fn from_fd(fd: BorrowedFd<'_>) -> Stdout {
        let kind = kind_of(fd);
        if kind != Kind::Other {
            if let Some((dup, restore)) = prepare(fd) {
                let inner = match kind {
                    Kind::Pipe => pipe::Sender::from_owned_fd(dup).map(Writer::Pipe),
                    _ => socket(dup).map(Writer::Socket),
                };
                if let Ok(inner) = inner {
                    return Stdout {
                        inner,
                        _restore: Some(restore),
                    };
                }
            }
        }
        Stdout {
            inner: Writer::Blocking(tokio::io::stdout()),
            _restore: None,
        }
    }
}

/// This process's stdin. Must be called inside a tokio runtime.
pub fn stdin() -> Stdin {
    Stdin::from_fd(io::stdin().as_fd())
}

/// This process's stdout. Must be called inside a tokio runtime.
pub fn stdout() -> Stdout {
    Stdout::from_fd(io::stdout().as_fd())
}

impl AsyncRead for Stdin {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Reader::Pipe(r) => Pin::new(r).poll_read(cx, buf),
            Reader::Socket(r) => Pin::new(r).poll_read(cx, buf),
            Reader::Blocking(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stdout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Writer::Pipe(w) => Pin::new(w).poll_write(cx, data),
            Writer::Socket(w) => Pin::new(w).poll_write(cx, data),
            Writer::Blocking(w) => Pin::new(w).poll_write(cx, data),
        }
    }

    /// Pipes and sockets take the relay's gathered node bytes in one `writev`.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Writer::Pipe(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Writer::Socket(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Writer::Blocking(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Writer::Pipe(w) => w.is_write_vectored(),
            Writer::Socket(w) => w.is_write_vectored(),
            Writer::Blocking(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Writer::Pipe(w) => Pin::new(w).poll_flush(cx),
            Writer::Socket(w) => Pin::new(w).poll_flush(cx),
            Writer::Blocking(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Writer::Pipe(w) => Pin::new(w).poll_shutdown(cx),
            Writer::Socket(w) => Pin::new(w).poll_shutdown(cx),
            Writer::Blocking(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pump(mut w: Stdout, mut r: Stdin) {
        let big: Vec<u8> = (0..(1u32 << 20)).map(|i| i as u8).collect();
        let send = async {
            w.write_all(&big).await.unwrap();
            w.shutdown().await.unwrap();
            drop(w);
        };
        let recv = async {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 65536];
            while got.len() < big.len() {
                let n = r.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            got
        };
        let ((), got) = tokio::join!(send, recv);
        assert_eq!(got, big);
    }

    #[tokio::test]
    async fn pipes_are_driven_directly_and_flags_restored() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let before = fcntl(&r, FcntlArg::F_GETFL).unwrap();
        let reader = Stdin::from_fd(r.as_fd());
        let writer = Stdout::from_fd(w.as_fd());
        assert!(matches!(reader.inner, Reader::Pipe(_)));
        assert!(matches!(writer.inner, Writer::Pipe(_)));
        assert_ne!(fcntl(&r, FcntlArg::F_GETFL).unwrap(), before);
        pump(writer, reader).await;
        assert_eq!(fcntl(&r, FcntlArg::F_GETFL).unwrap(), before);
    }

    #[tokio::test]
    async fn sockets_are_driven_directly() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let reader = Stdin::from_fd(a.as_fd());
        let writer = Stdout::from_fd(b.as_fd());
        assert!(matches!(reader.inner, Reader::Socket(_)));
        pump(writer, reader).await;
    }

    #[tokio::test]
    async fn regular_files_use_blocking_stdio() {
        let f = tempfile::tempfile().unwrap();
        assert!(matches!(
            Stdin::from_fd(f.as_fd()).inner,
            Reader::Blocking(_)
        ));
    }
}

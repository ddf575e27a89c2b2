//! What one `recvmsg` on `v1.sock` amounts to, pure: the fds found in the control buffer the
//! kernel filled ([`scm_rights`]), which of them becomes the client's stderr and which are
//! closed, and whether the bytes read so far are a request, need more, or are refused
//! ([`step`], [`sort_fds`]).
//!
//! The server ([`crate::mux::server`]) does the I/O and calls these, and the fuzz target
//! `v1_fds` runs them on any input, so the fds a client sends are accounted for whatever the
//! message looks like: at most one is kept (the first fd of the first message that carries
//! any, when the message was not truncated) and every other is closed, exactly once.
//! Must not know: sockets, tokio, or what happens to the request afterwards.

use std::os::fd::RawFd;

use idmux_wire::v1::{self as request, RequestError, MAX_REQUEST};

/// The server's request buffer: the longest request and room for the SSH bytes a client may
/// send right behind it.
pub const BUFFER: usize = MAX_REQUEST + 4096;

/// The most fds one message can carry (Linux's `SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

/// What one `recvmsg` brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read {
    /// Bytes read (0: the client closed its end).
    pub bytes: usize,
    /// Fds the kernel installed for us (found by [`scm_rights`]).
    pub fds: usize,
    /// `MSG_CTRUNC`: the control data did not fit, so the kernel dropped fds or messages.
    pub truncated: bool,
}

/// Where the request stands after a read.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A whole request: its target, and how many bytes of the buffer it used (the rest
    /// belongs to the SSH stream).
    Request {
        target: request::Target,
        used: usize,
    },
    /// No NUL yet: read again.
    More,
    /// Refused: one line saying why.
    Fail(String),
}

/// The decision for one read: which received fd (by position) becomes the client's stderr
/// (every other one is closed), and where the request stands.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub keep: Option<usize>,
    pub next: Next,
}

/// Decide one read. `buf` is every byte read so far (this read's last), `room` the size of the
/// server's buffer, `have_stderr` whether an earlier message already brought the stderr fd.
pub fn step(buf: &[u8], room: usize, read: Read, have_stderr: bool) -> Step {
    if read.truncated {
        // Fds or messages were dropped on the way: trust none of what came.
        return Step {
            keep: None,
            next: Next::Fail(format!(
                "a control message too large to read (truncated); its {} fd(s) closed",
                read.fds
            )),
        };
    }
    let keep = (!have_stderr && read.fds > 0).then_some(0);
    let next = if read.bytes == 0 {
        Next::Fail("client disconnected before the request's NUL".into())
    } else {
        match request::parse(buf) {
            Ok((target, used)) => Next::Request { target, used },
            Err(RequestError::Incomplete) if buf.len() < room => Next::More,
            Err(RequestError::Incomplete) => Next::Fail(RequestError::TooLong.to_string()),
            Err(e) => Next::Fail(format!("bad request: {e}")),
        }
    };
    Step { keep, next }
}

/// Split the received fds as `keep` says: the kept one, and the rest (to be closed by dropping
/// them). Every fd given is in exactly one of the two.
pub fn sort_fds<T>(fds: Vec<T>, keep: Option<usize>) -> (Option<T>, Vec<T>) {
    let mut kept = None;
    let mut rest = Vec::with_capacity(fds.len());
    for (i, fd) in fds.into_iter().enumerate() {
        if Some(i) == keep {
            kept = Some(fd);
        } else {
            rest.push(fd);
        }
    }
    (kept, rest)
}

/// `CMSG_ALIGN`: control message lengths are rounded up to the size of `size_t`.
fn cmsg_align(n: usize) -> usize {
    let a = std::mem::size_of::<usize>();
    n.div_ceil(a) * a
}

/// The fds of every `SCM_RIGHTS` message in `control`, a control buffer as `recvmsg` filled
/// it (zeroed before the call). Unlike nix's iterator this also reads a buffer the kernel
/// truncated (`MSG_CTRUNC`), whose partial `SCM_RIGHTS` message holds the fds it did install:
/// those must be closed too. The walk stops at a header of length 0 (the untouched rest) or
/// one that does not fit the buffer; negative values are never fds and are skipped.
pub fn scm_rights(control: &[u8]) -> Vec<RawFd> {
    let usize_len = std::mem::size_of::<usize>();
    let int_len = std::mem::size_of::<libc::c_int>();
    // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; } then the data.
    let header = cmsg_align(usize_len + 2 * int_len);
    let mut fds = Vec::new();
    let mut at = 0usize;
    while let Some(h) = control.get(at..at.saturating_add(header)) {
        let len = usize::from_ne_bytes(h[..usize_len].try_into().expect("size_t bytes"));
        let int = |i: usize| {
            let o = usize_len + i * int_len;
            libc::c_int::from_ne_bytes(h[o..o + int_len].try_into().expect("int bytes"))
        };
        let (level, kind) = (int(0), int(1));
        if len < header || len > control.len() - at {
            break;
        }
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            for c in control[at + header..at + len].chunks_exact(int_len) {
                let fd = libc::c_int::from_ne_bytes(c.try_into().expect("int bytes"));
                if fd >= 0 {
                    fds.push(fd);
                }
            }
        }
        at += cmsg_align(len);
    }
    fds
}

/// A control buffer holding one `SCM_RIGHTS` message with `fds`, laid out as the kernel lays it
/// out (for tests and the fuzz target).
pub fn scm_rights_buffer(fds: &[RawFd], room: usize) -> Vec<u8> {
    let usize_len = std::mem::size_of::<usize>();
    let int_len = std::mem::size_of::<libc::c_int>();
    let header = cmsg_align(usize_len + 2 * int_len);
    let mut out = Vec::with_capacity(room);
    if !fds.is_empty() {
        out.extend_from_slice(&(header + std::mem::size_of_val(fds)).to_ne_bytes());
        out.extend_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        out.extend_from_slice(&libc::SCM_RIGHTS.to_ne_bytes());
        for fd in fds {
            out.extend_from_slice(&fd.to_ne_bytes());
        }
    }
    out.resize(room.max(out.len()), 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: usize = 2048;

    fn read(bytes: usize, fds: usize) -> Read {
        Read {
            bytes,
            fds,
            truncated: false,
        }
    }

    #[test]
    fn the_first_fd_is_kept_once() {
        let s = step(b"h:22\0", ROOM, read(5, 3), false);
        assert_eq!(s.keep, Some(0));
        assert!(matches!(s.next, Next::Request { used: 5, .. }));
        // A second message's fds are all closed.
        assert_eq!(step(b"h:2", ROOM, read(1, 2), true).keep, None);
        let (kept, rest) = sort_fds(vec![10, 11, 12], Some(0));
        assert_eq!((kept, rest), (Some(10), vec![11, 12]));
        assert_eq!(sort_fds(vec![10, 11], None), (None, vec![10, 11]));
    }

    #[test]
    fn truncated_control_data_closes_every_fd() {
        let s = step(
            b"h:22\0",
            ROOM,
            Read {
                bytes: 5,
                fds: 2,
                truncated: true,
            },
            false,
        );
        assert_eq!(s.keep, None);
        assert!(
            matches!(&s.next, Next::Fail(m) if m.contains("truncated")),
            "{s:?}"
        );
    }

    #[test]
    fn more_too_long_and_eof() {
        assert_eq!(step(b"h:2", ROOM, read(3, 0), false).next, Next::More);
        let full = vec![b'a'; ROOM];
        assert!(
            matches!(step(&full, ROOM, read(ROOM, 0), false).next, Next::Fail(m) if m.contains("no NUL"))
        );
        assert!(
            matches!(step(b"h:2", ROOM, read(0, 1), false), Step { keep: Some(0), next: Next::Fail(m) } if m.contains("disconnected"))
        );
        assert!(
            matches!(step(b"h:x\0", ROOM, read(4, 0), false).next, Next::Fail(m) if m.contains("port"))
        );
    }

    #[test]
    fn control_buffers() {
        assert_eq!(
            scm_rights(&scm_rights_buffer(&[4, 5, 6], 64)),
            vec![4, 5, 6]
        );
        assert!(scm_rights(&scm_rights_buffer(&[], 64)).is_empty());
        // A header longer than the buffer is not read.
        let mut b = scm_rights_buffer(&[4], 64);
        b[0] = 200;
        assert!(scm_rights(&b).is_empty());
        assert!(scm_rights(&[1, 2, 3]).is_empty());
    }

    /// The kernel truncates a message carrying more fds than the control buffer holds: the
    /// fds it installed are found in the truncated buffer (nix refuses to read it), so the
    /// server closes them instead of leaking them.
    #[test]
    fn a_truncated_kernel_buffer_still_yields_its_fds() {
        use nix::sys::socket::{
            recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag,
            SockType,
        };
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::empty(),
        )
        .unwrap();
        let files: Vec<std::fs::File> = (0..4)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        sendmsg::<()>(
            a.as_raw_fd(),
            &[std::io::IoSlice::new(b"h:22\0")],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let mut buf = [0u8; 64];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        // Room for two fds (CMSG_SPACE of one fd, padded), fewer than sent.
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            b.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .unwrap();
        assert!(msg.flags.contains(MsgFlags::MSG_CTRUNC));
        assert!(msg.cmsgs().is_err(), "nix hides a truncated buffer");
        let got = scm_rights(&space);
        assert!(
            !got.is_empty() && got.len() < raw.len(),
            "the kernel installed some of the fds: {got:?}"
        );
        assert!(
            got.iter().all(|fd| !raw.contains(fd)),
            "new fds, not the sender's"
        );
        let s = step(
            b"h:22\0",
            ROOM,
            Read {
                bytes: 5,
                fds: got.len(),
                truncated: true,
            },
            false,
        );
        // SAFETY: the kernel installed this fd for us just now; wrapped once.
        let owned: Vec<OwnedFd> = got
            .iter()
            .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        let (kept, close) = sort_fds(owned, s.keep);
        assert!(kept.is_none());
        assert_eq!(
            close.len(),
            got.len(),
            "every installed fd is closed by the server"
        );
        drop(close);
    }
}

//! Blocking clients of the daemon's two local sockets, for `idmux doctor` and the tests:
//! `v1.sock` exactly as `idmux-fdpass` uses it (the request with a stderr fd attached), and
//! one `agent.sock` request. The byte formats are `idmux_wire::{v1, agent}`.

use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use idmux_wire::v1::{self, Target};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// Send all of `data` on `s` with `fd` attached (SCM_RIGHTS) to the first part.
pub(crate) fn send_with_fd(s: &UnixStream, data: &[u8], fd: BorrowedFd<'_>) -> nix::Result<()> {
    let fds = [fd.as_raw_fd()];
    let mut sent = 0;
    while sent < data.len() {
        let iov = [IoSlice::new(&data[sent..])];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage] = if sent == 0 { &cmsg } else { &[] };
        match sendmsg::<()>(s.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Dial `target` through `v1.sock` as idmux-fdpass does, with a pipe as the "stderr" the
/// daemon reports failures on; returns the node's SSH banner line, or the daemon's error
/// line. Each read waits at most `timeout`.
pub fn dial_v1(sock: &Path, target: &Target, timeout: Duration) -> Result<String> {
    let mut s = UnixStream::connect(sock)
        .map_err(|e| anyhow!("{}: cannot connect: {e}", sock.display()))?;
    let (err_r, err_w) = nix::unistd::pipe()?;
    send_with_fd(&s, &v1::encode(target), err_w.as_fd())
        .map_err(|e| anyhow!("{}: cannot send the request: {e}", sock.display()))?;
    drop(err_w);
    let banner = read_line(&mut s, timeout)?;
    if banner.starts_with("SSH-") {
        return Ok(banner);
    }
    drop(s);
    let mut why = String::new();
    let _ = std::fs::File::from(err_r).read_to_string(&mut why);
    let why = why.lines().next().unwrap_or("").trim().to_string();
    if why.is_empty() {
        bail!("the daemon closed the connection without a banner or an error line");
    }
    bail!("{why}")
}

/// The first line a peer sends (the SSH banner), each read within `timeout`.
fn read_line(s: &mut UnixStream, timeout: Duration) -> Result<String> {
    s.set_read_timeout(Some(timeout))?;
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    while !got.contains(&b'\n') && got.len() < 1024 {
        let n = match s.read(&mut b) {
            Ok(n) => n,
            Err(_) if !got.is_empty() => break,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break;
        }
        got.extend_from_slice(&b[..n]);
    }
    Ok(first_line(&got))
}

/// The first line of `got`, trimmed.
pub fn first_line(got: &[u8]) -> String {
    String::from_utf8_lossy(got)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Send one ssh-agent message (type byte first) to `sock` and return the answer message.
pub fn agent_call(sock: &Path, msg: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let mut s = UnixStream::connect(sock)
        .map_err(|e| anyhow!("{}: cannot connect: {e}", sock.display()))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(&idmux_wire::agent::frame(msg))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .map_err(|e| anyhow!("{}: no answer: {e}", sock.display()))?;
    let n = u32::from_be_bytes(len) as usize;
    if n > idmux_wire::agent::MAX_FRAME {
        bail!("{}: answer too long ({n} bytes)", sock.display());
    }
    let mut body = vec![0u8; n];
    s.read_exact(&mut body)?;
    Ok(body)
}

//! `idmux-fdpass SOCKET TARGET`: OpenSSH's ProxyCommand for `ProxyUseFdpass yes`.
//!
//! Connects to the multiplexer's `v1.sock`, sends `TARGET\0` with its own stderr attached
//! (SCM_RIGHTS) so the daemon can report a failed dial, then hands the connected socket to ssh
//! over stdout (one 0x00 byte + SCM_RIGHTS) and exits. No async runtime: a handful of syscalls.
//! Byte for byte what Teleport's `fdpass-teleport` does (PROTOCOL.md section 2).
//!
//! ssh runs it for every connection, so its start-up is on every connection's path. It has
//! its own C `main` (`#![no_main]`): Rust's usual start-up (checking fds 0-2 with `poll`,
//! ignoring SIGPIPE, finding the main thread's stack guard by reading `/proc/self/maps`,
//! installing an alternate signal stack for overflow reports) is about a third of the
//! binary's run and none of it is needed here. std still works (on Linux glibc hands `argv`
//! to std's initialiser before `main`); writes use `MSG_NOSIGNAL`, so a vanished peer is an
//! error, not a SIGPIPE.
#![no_main]

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::socket::{getsockname, sendmsg, ControlMessage, MsgFlags, UnixAddr};

fn fail(msg: String) -> i32 {
    eprintln!("idmux-fdpass: {msg}");
    1
}

/// sendmsg all of `data` with `fd` attached to the first part.
fn send_with_fd(sock: i32, data: &[u8], fd: i32) -> nix::Result<()> {
    let fds = [fd];
    let mut sent = 0;
    while sent < data.len() {
        let iov = [IoSlice::new(&data[sent..])];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage] = if sent == 0 { &cmsg } else { &[] };
        match sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The process's entry point, called by the C runtime.
#[no_mangle]
pub extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    run()
}

fn run() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        return fail(format!(
            "usage: {} <path to v1.sock> <host:port[|cluster]>",
            args.first().map(String::as_str).unwrap_or("idmux-fdpass")
        ));
    }
    let (socket, target) = (Path::new(&args[1]), &args[2]);
    // SAFETY-free check: stdout must be an AF_UNIX socket (ssh's ProxyUseFdpass socketpair).
    if getsockname::<UnixAddr>(1).is_err() {
        return fail("stdout is not a unix socket: run me from ssh with ProxyUseFdpass yes".into());
    }
    // ssh may hand us a non-blocking stdout; sendmsg below must block.
    // SAFETY: fd 1 is open for the life of the process (checked by getsockname above).
    let stdout = unsafe { BorrowedFd::borrow_raw(1) };
    if let Ok(flags) = nix::fcntl::fcntl(stdout, nix::fcntl::FcntlArg::F_GETFL) {
        let mut f = nix::fcntl::OFlag::from_bits_truncate(flags);
        if f.contains(nix::fcntl::OFlag::O_NONBLOCK) {
            f.remove(nix::fcntl::OFlag::O_NONBLOCK);
            let _ = nix::fcntl::fcntl(stdout, nix::fcntl::FcntlArg::F_SETFL(f));
        }
    }
    // Connect by file name from the socket's folder: sun_path holds only 108 bytes.
    let conn = match (socket.parent(), socket.file_name()) {
        (Some(dir), Some(name))
            if !dir.as_os_str().is_empty() && std::env::set_current_dir(dir).is_ok() =>
        {
            UnixStream::connect(name)
        }
        _ => UnixStream::connect(socket),
    };
    let conn = match conn {
        Ok(c) => c,
        Err(e) => {
            return fail(format!(
                "cannot connect to {}: {e} (is the idmux multiplexer running?)",
                socket.display()
            ))
        }
    };
    let mut req = target.as_bytes().to_vec();
    req.push(0);
    if let Err(e) = send_with_fd(conn.as_raw_fd(), &req, 2) {
        return fail(format!(
            "cannot send the request to {}: {e}",
            socket.display()
        ));
    }
    if let Err(e) = send_with_fd(1, &[0u8], conn.as_raw_fd()) {
        return fail(format!("cannot pass the connection to ssh: {e}"));
    }
    0
}

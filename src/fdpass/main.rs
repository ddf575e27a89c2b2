//! `idmux-fdpass SOCKET TARGET`: OpenSSH's ProxyCommand for `ProxyUseFdpass yes`.
//!
//! Owns: the client half of `v1.sock` (PROTOCOL.md section 2, byte for byte what Teleport's
//! `fdpass-teleport` does). It connects to SOCKET (a path too long for `sun_path`'s 108
//! bytes from SOCKET's folder, by file name), sends `TARGET\0` with its own stderr attached
//! (SCM_RIGHTS) so the daemon can report a failed dial, then hands the connected socket to ssh
//! over stdout (an AF_UNIX socket under ProxyUseFdpass: one 0x00 byte + SCM_RIGHTS) and exits
//! 0. Any failure is one line on stderr, `idmux-fdpass: ...`, and exit 1.
//!
//! Must not know: what TARGET means (the daemon parses and dials it), certificates, the
//! daemon's state, or anything of the workspace's other crates. It uses no Rust crate but
//! `libc`, for its types and constants, and links no C library.
//!
//! Why `#![no_std]` and no C library: ssh runs it for every connection, so its whole life is
//! on every connection's path. Built with std it took 1.23-1.7 ms from spawn to exit against
//! 0.90 ms for `/bin/true` on a quiet machine: the dynamic loader mapped and relocated
//! libgcc_s.so.1 (std's unwinder, which std's panic machinery drags in even when nothing
//! panics) and a 4.8 MB binary with std's thread-local storage, and std's start-up and
//! arguments went through malloc (4 allocations for a usage error, 9 for a run, by valgrind).
//! Without std, dynamically linked to libc.so.6, the whole run was 1.06x `/bin/true`; with
//! glibc linked statically (a static-PIE executable of about 800 kB), 0.98x. glibc's static
//! start-up was then most of what was left (sys.rs has the figures), so the helper now has
//! none: `_start` (sys.rs) calls [`start`], which makes the protocol's system calls itself
//! and exits. tests/e2e/fdpass.rs holds it to that: no program interpreter and no NEEDED
//! entry in the ELF; from `execve` to `exit_group`, only the protocol's system calls
//! (strace).
//!
//! The executable is static and not position-independent (ET_EXEC): a static-PIE one would
//! need a relocation pass at start, which glibc did for us. So its code and data sit at fixed
//! addresses; its stack is still randomised. With no loader, nothing makes its data read-only
//! after start (RELRO) either. It reads nothing but its arguments (it only sends on the
//! sockets it holds) and lives for well under a millisecond, so neither hardening has
//! anything here to protect.
//!
//! A `#![no_std]` executable must not unwind, and stable Cargo has no per-package panic
//! strategy, so `.cargo/config.toml` runs rustc through `rustc-wrapper.sh` (beside this file),
//! which adds `-C panic=abort` and the static link without start files or C library for this
//! crate alone. A panic (none is reachable in a release build) dies on the trap instruction.
#![no_std]
#![no_main]
// Loops stay loops: mem.rs's memcpy must not be compiled into a call to memcpy.
#![no_builtins]

mod errtext;
mod mem;
mod sys;

use core::ffi::{c_char, c_int, c_void};
use core::mem::size_of;
use core::ptr;

/// v1.sock's longest request before its NUL (`idmux_wire::v1::MAX_REQUEST`; not a dependency
/// because every crate of ours links std).
const MAX_REQUEST: usize = 1024;

/// `sun_path`'s size on Linux: a path must be shorter, for its NUL.
const SUN_PATH_LEN: usize = 108;

/// What std's `UnixStream::connect` says of a path too long for `sun_path` (kept word for word).
const SUN_LEN_MSG: &[u8] = b"path must be shorter than SUN_LEN";

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    sys::abort()
}

/// The personality routine that core's precompiled (panic=unwind) code names in its unwind
/// tables; debug builds link some of that code. Nothing unwinds under panic=abort, so it is
/// never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {
    sys::abort()
}

/// A fixed buffer that text is appended to (silently cut at `N` bytes).
struct Buf<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Buf<N> {
    const fn new() -> Self {
        Buf {
            bytes: [0; N],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) {
        for (slot, &c) in self.bytes.iter_mut().skip(self.len).zip(s) {
            *slot = c;
            self.len = self.len.wrapping_add(1);
        }
    }

    fn push_num(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        for d in digits.iter_mut().rev() {
            *d = b'0'.wrapping_add((v % 10) as u8);
            v /= 10;
            start = start.wrapping_sub(1);
            if v == 0 {
                break;
            }
        }
        self.push(digits.get(start..).unwrap_or_default());
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// An error's text as std's `io::Error` shows an OS error: `No such file or directory (os error
/// 2)`.
fn os_error(errno: c_int) -> Buf<160> {
    let mut b = Buf::new();
    match errtext::text(errno) {
        Some(t) => b.push(t.as_bytes()),
        None => {
            b.push(b"Unknown error ");
            b.push_num(errno.unsigned_abs().into());
        }
    }
    b.push(b" (os error ");
    b.push_num(errno.unsigned_abs().into());
    b.push(b")");
    b
}

/// An error's text as nix's `Errno` shows it (`EPIPE: Broken pipe`), for the errors sendmsg
/// gives on a unix socket; any other as [`os_error`].
fn nix_error(errno: c_int) -> Buf<160> {
    const NAMES: &[(c_int, &str, &str)] = &[
        (libc::EPERM, "EPERM", "Operation not permitted"),
        (libc::EIO, "EIO", "I/O error"),
        (libc::EBADF, "EBADF", "Bad file number"),
        (libc::EAGAIN, "EAGAIN", "Try again"),
        (libc::ENOMEM, "ENOMEM", "Out of memory"),
        (libc::EACCES, "EACCES", "Permission denied"),
        (libc::EFAULT, "EFAULT", "Bad address"),
        (libc::EINVAL, "EINVAL", "Invalid argument"),
        (libc::EPIPE, "EPIPE", "Broken pipe"),
        (libc::ENOTSOCK, "ENOTSOCK", "Socket operation on non-socket"),
        (
            libc::EDESTADDRREQ,
            "EDESTADDRREQ",
            "Destination address required",
        ),
        (libc::EMSGSIZE, "EMSGSIZE", "Message too long"),
        (
            libc::EOPNOTSUPP,
            "EOPNOTSUPP",
            "Operation not supported on transport endpoint",
        ),
        (libc::ECONNRESET, "ECONNRESET", "Connection reset by peer"),
        (libc::ENOBUFS, "ENOBUFS", "No buffer space available"),
        (
            libc::EISCONN,
            "EISCONN",
            "Transport endpoint is already connected",
        ),
        (
            libc::ENOTCONN,
            "ENOTCONN",
            "Transport endpoint is not connected",
        ),
        (
            libc::ETOOMANYREFS,
            "ETOOMANYREFS",
            "Too many references: cannot splice",
        ),
        (libc::ECONNREFUSED, "ECONNREFUSED", "Connection refused"),
    ];
    match NAMES.iter().find(|n| n.0 == errno) {
        Some(&(_, name, desc)) => {
            let mut b = Buf::new();
            b.push(name.as_bytes());
            b.push(b": ");
            b.push(desc.as_bytes());
            b
        }
        None => os_error(errno),
    }
}

/// `idmux-fdpass: ` + `parts` + newline on stderr in one write; returns exit status 1.
fn fail(parts: &[&[u8]]) -> c_int {
    let all = core::iter::once(&b"idmux-fdpass: "[..])
        .chain(parts.iter().copied())
        .chain(core::iter::once(&b"\n"[..]));
    let mut iov = [libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    }; 8];
    let mut n: u32 = 0;
    for (slot, p) in iov.iter_mut().zip(all) {
        slot.iov_base = p.as_ptr() as *mut c_void;
        slot.iov_len = p.len();
        n = n.wrapping_add(1);
    }
    // SAFETY: the first n iovecs point into slices that outlive the call. A failed write to
    // stderr leaves nothing better to do.
    let _ = unsafe { sys::writev(2, iov.as_ptr(), n) };
    1
}

/// The bytes of a NUL-terminated argv string, without the NUL.
///
/// # Safety
/// `p` is a valid NUL-terminated string that outlives the returned slice.
unsafe fn arg<'a>(p: *const c_char) -> &'a [u8] {
    let p = p.cast::<u8>();
    let mut len = 0usize;
    // SAFETY: as the caller promises, every byte up to and including the NUL is readable.
    unsafe {
        while *p.add(len) != 0 {
            len = len.wrapping_add(1);
        }
        core::slice::from_raw_parts(p, len)
    }
}

/// Is fd 1 an AF_UNIX socket (ssh's ProxyUseFdpass socketpair)?
fn stdout_is_unix_socket() -> bool {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    sys::getsockname(1, &mut addr).is_ok() && addr.sun_family == libc::AF_UNIX as libc::sa_family_t
}

/// ssh may hand us a non-blocking stdout; the sendmsg on it must block.
fn clear_nonblock(fd: c_int) {
    if let Ok(flags) = sys::get_fl(fd) {
        if flags & libc::O_NONBLOCK != 0 {
            let _ = sys::set_fl(fd, flags & !libc::O_NONBLOCK);
        }
    }
}

/// Why a connect failed.
enum ConnectError {
    Os(c_int),
    TooLong,
}

/// A stream socket connected to the unix socket at `path` (relative to the working folder).
fn connect_path(path: &[u8]) -> Result<c_int, ConnectError> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // Room for the NUL too, as std requires.
    if path.len() >= addr.sun_path.len() {
        return Err(ConnectError::TooLong);
    }
    for (d, &s) in addr.sun_path.iter_mut().zip(path) {
        *d = s as c_char;
    }
    let len = (size_of::<libc::sa_family_t>() + path.len() + 1) as libc::socklen_t;
    // A failed connect leaves the socket open: the process exits with the error at once.
    let fd = sys::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
        .map_err(ConnectError::Os)?;
    sys::connect(fd, &addr, len).map_err(ConnectError::Os)?;
    Ok(fd)
}

/// Connect to `socket`: by the whole path when it fits `sun_path`; else from its folder by file
/// name when it has both (std's `Path::parent` and `file_name` rules), else by the whole path.
fn connect(socket: &[u8]) -> Result<c_int, ConnectError> {
    // A path that fits sun_path names the same file either way: no chdir, one syscall fewer.
    if socket.len() < SUN_PATH_LEN {
        return connect_path(socket);
    }
    // Trailing slashes and `/.` name no other file.
    let mut s = socket;
    loop {
        match s {
            [rest @ .., b'/'] if !rest.is_empty() => s = rest,
            [rest @ .., b'/', b'.'] if !rest.is_empty() => s = rest,
            _ => break,
        }
    }
    if let Some(slash) = s.iter().rposition(|&c| c == b'/') {
        let (dir, name) = (
            s.get(..slash).unwrap_or_default(),
            s.get(slash + 1..).unwrap_or_default(),
        );
        let dir: &[u8] = if dir.iter().all(|&c| c == b'/') {
            b"/"
        } else {
            dir
        };
        let mut cdir = [0u8; libc::PATH_MAX as usize];
        if !name.is_empty() && name != b".." && dir.len() < cdir.len() {
            for (d, &c) in cdir.iter_mut().zip(dir) {
                *d = c;
            }
            // cdir is NUL-terminated: dir is shorter than it and it started zeroed.
            if sys::chdir(&cdir).is_ok() {
                return connect_path(name);
            }
        }
    }
    connect_path(socket)
}

/// sendmsg all of `data` on `sock` with `fd` attached to the first part; Err(errno).
fn send_with_fd(sock: c_int, data: &[u8], fd: c_int) -> Result<(), c_int> {
    // Room for one cmsghdr + one int (CMSG_SPACE(4) = 24 on 64-bit Linux), aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(size_of::<c_int>() as u32) } as usize;
    let mut sent = 0usize;
    while sent < data.len() {
        let rest = data.get(sent..).unwrap_or_default();
        let mut iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut c_void,
            iov_len: rest.len(),
        };
        // SAFETY: msghdr is plain data; all zeroes is a valid value.
        let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if sent == 0 && space <= size_of::<[u64; 4]>() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: msg_control points at `space` zeroed, aligned bytes, enough for one
            // cmsghdr carrying one int, so CMSG_FIRSTHDR is non-null and CMSG_DATA is in it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as _;
                ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>(), fd);
            }
        }
        // SAFETY: msg points at live iov and control buffers.
        match unsafe { sys::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) } {
            Ok(n) => sent = sent.wrapping_add(n),
            Err(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The process's life, called by `_start` (sys.rs) with the stack as the kernel left it:
/// `argc`, then `argc` pointers to NUL-terminated strings.
///
/// # Safety
/// `stack` is the initial stack pointer the kernel gave the process.
unsafe extern "C" fn start(stack: *const usize) -> ! {
    // SAFETY: the kernel's layout (the System V ABI's process start): argc, then argv.
    let (argc, argv) = unsafe { (*stack, stack.add(1).cast::<*const c_char>()) };
    // SAFETY: argv holds argc strings that live until the process exits.
    sys::exit(unsafe { run(c_int::try_from(argc).unwrap_or(c_int::MAX), argv) })
}

/// # Safety
/// `argv` holds `argc` valid NUL-terminated strings that live until the process exits.
unsafe fn run(argc: c_int, argv: *const *const c_char) -> c_int {
    // SAFETY (every `arg` and `argv.add` below): as the caller promises, with argc checked.
    if argc != 3 {
        let me = if argc >= 1 && unsafe { !(*argv).is_null() } {
            unsafe { arg(*argv) }
        } else {
            b"idmux-fdpass"
        };
        return fail(&[b"usage: ", me, b" <path to v1.sock> <host:port[|cluster]>"]);
    }
    let socket = unsafe { arg(*argv.add(1)) };
    let target_ptr = unsafe { *argv.add(2) };
    let target = unsafe { arg(target_ptr) };
    if !stdout_is_unix_socket() {
        return fail(&[b"stdout is not a unix socket: run me from ssh with ProxyUseFdpass yes"]);
    }
    clear_nonblock(1);
    if target.len() > MAX_REQUEST {
        let mut n = Buf::<24>::new();
        n.push_num(target.len() as u64);
        return fail(&[
            b"target too long (",
            n.as_bytes(),
            b" bytes; v1.sock takes at most 1024): ",
            target,
        ]);
    }
    let conn = match connect(socket) {
        Ok(fd) => fd,
        Err(e) => {
            let text = match e {
                ConnectError::Os(errno) => os_error(errno),
                ConnectError::TooLong => {
                    let mut b = Buf::new();
                    b.push(SUN_LEN_MSG);
                    b
                }
            };
            return fail(&[
                b"cannot connect to ",
                socket,
                b": ",
                text.as_bytes(),
                b" (is the idmux multiplexer running?)",
            ]);
        }
    };
    // The request is `TARGET\0`: TARGET's own argv bytes with their NUL, no copy.
    let req = unsafe { core::slice::from_raw_parts(target_ptr.cast::<u8>(), target.len() + 1) };
    if let Err(e) = send_with_fd(conn, req, 2) {
        return fail(&[
            b"cannot send the request to ",
            socket,
            b": ",
            nix_error(e).as_bytes(),
        ]);
    }
    if let Err(e) = send_with_fd(1, &[0u8], conn) {
        return fail(&[
            b"cannot pass the connection to ssh: ",
            nix_error(e).as_bytes(),
        ]);
    }
    0
}

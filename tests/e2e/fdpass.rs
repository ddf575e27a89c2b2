//! `idmux-fdpass` on its own (issue 18): what it costs to start (a static executable: no
//! dynamic loader, no shared library, no C library; from `execve` on, the protocol's system
//! calls and nothing else, by strace) and what it does, against a
//! small v1.sock server in the test, with its stdout one end of a socketpair as ssh sets it up
//! under `ProxyUseFdpass yes`. mux.rs and isolation.rs run it against the real daemon.
//!
//! The helper makes its own system calls, in assembly for each architecture it builds for
//! (src/fdpass/sys.rs: x86_64 and aarch64). Each test runs twice: with this machine's build,
//! and with the other architecture's (built by scripts/test.sh) under qemu-user, whose own
//! `-d strace` log stands in for strace; one more test hands a real ssh session over with it
//! through the daemon.

use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use idmux_testkit::*;

fn fdpass() -> PathBuf {
    idmux_bin().with_file_name("idmux-fdpass")
}

/// An idmux-fdpass to run: this machine's build, or the build for the other architecture
/// sys.rs carries, run under qemu-user.
#[derive(Clone, Copy)]
enum Helper {
    Native,
    Cross,
}

/// An architecture idmux-fdpass is written for: its Rust target triple, its qemu-user and its
/// ELF `e_machine`.
struct Arch {
    triple: &'static str,
    qemu: &'static str,
    machine: u16,
}

const X86_64: Arch = Arch {
    triple: "x86_64-unknown-linux-gnu",
    qemu: "qemu-x86_64",
    machine: 62,
};
const AARCH64: Arch = Arch {
    triple: "aarch64-unknown-linux-gnu",
    qemu: "qemu-aarch64",
    machine: 183,
};
/// This machine's architecture.
const NATIVE: Arch = if cfg!(target_arch = "x86_64") {
    X86_64
} else {
    AARCH64
};
/// The other one (scripts/cross-target.sh picks the same).
const CROSS: Arch = if cfg!(target_arch = "x86_64") {
    AARCH64
} else {
    X86_64
};

/// Where scripts/test.sh builds the other architecture's helper:
/// `<target dir>/<triple>/release/idmux-fdpass` (cargo sets `CARGO_TARGET_TMPDIR` to
/// `<target dir>/tmp` for integration tests).
fn cross_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .join(CROSS.triple)
        .join("release")
        .join("idmux-fdpass")
}

/// The other architecture's helper for `test`, checked current; `None` (the test says SKIP)
/// where scripts/test.sh could not build it because that Rust target is not installed
/// (scripts/install-deps.sh says so when rustup cannot fetch it).
fn cross(test: &str) -> Option<Helper> {
    let p = cross_path();
    let Ok(built) = std::fs::metadata(&p).and_then(|m| m.modified()) else {
        eprintln!(
            "SKIP {test}: {} not built (scripts/test.sh builds it where the Rust target {} is \
             installed)",
            p.display(),
            CROSS.triple
        );
        return None;
    };
    // Its sources: a changed one always makes cargo build it again (a comment changed in its
    // Cargo.toml does not, so the manifest's time says nothing).
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/fdpass");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let changed = std::fs::metadata(&f).unwrap().modified().unwrap();
        assert!(
            changed <= built,
            "{} is older than {}: build it again (scripts/test.sh)",
            p.display(),
            f.display()
        );
    }
    assert!(
        Command::new(CROSS.qemu).arg("--version").output().is_ok(),
        "{} is missing: scripts/install-deps.sh installs qemu-user (IDMUX_WITH_CROSS=1)",
        CROSS.qemu
    );
    Some(Helper::Cross)
}

impl Helper {
    /// The binary.
    fn path(self) -> PathBuf {
        match self {
            Helper::Native => fdpass(),
            Helper::Cross => cross_path(),
        }
    }

    /// A command that runs it (under qemu-user for the other architecture).
    fn command(self) -> Command {
        match self {
            Helper::Native => Command::new(self.path()),
            Helper::Cross => {
                let mut c = Command::new(CROSS.qemu);
                c.arg(self.path());
                c
            }
        }
    }

    /// The architecture it is built for.
    fn arch(self) -> &'static Arch {
        match self {
            Helper::Native => &NATIVE,
            Helper::Cross => &CROSS,
        }
    }
}

/// A helper test, `$body(helper)`, run twice: `$native` with this machine's build, `$cross`
/// with the other architecture's under qemu-user (skipped where it could not be built).
macro_rules! both_builds {
    ($native:ident, $cross:ident, $body:ident) => {
        #[test]
        fn $native() {
            $body(Helper::Native);
        }

        #[test]
        fn $cross() {
            if let Some(h) = cross(stringify!($cross)) {
                $body(h);
            }
        }
    };
}

/// The ELF64 little-endian file `p`: its type (`e_type`: 2 an executable at fixed addresses,
/// 3 a shared object or position-independent executable), its architecture (`e_machine`: 62
/// x86_64, 183 aarch64) and its program headers' types
/// (3 PT_INTERP: the dynamic loader that maps shared libraries at start-up; 2 PT_DYNAMIC: the
/// table of NEEDED libraries and of relocations someone must apply at start).
fn elf_kind(p: &Path) -> (u16, u16, Vec<u32>) {
    let f = std::fs::read(p).unwrap();
    assert_eq!(&f[..4], b"\x7fELF", "{} is not ELF", p.display());
    assert_eq!(
        (f[4], f[5]),
        (2, 1),
        "{}: not ELF64 little-endian",
        p.display()
    );
    let u16_at = |o: usize| u16::from_le_bytes(f[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(f[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(f[o..o + 8].try_into().unwrap()) as usize;
    // e_type at 0x10, e_machine at 0x12, e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38; p_type first in
    // each entry.
    let (phoff, phentsize, phnum) = (
        u64_at(0x20),
        usize::from(u16_at(0x36)),
        usize::from(u16_at(0x38)),
    );
    let types = (0..phnum).map(|i| u32_at(phoff + i * phentsize)).collect();
    (u16_at(0x10), u16_at(0x12), types)
}

/// What one connection to [`server`] brought: the request bytes and whether an fd came with
/// them.
struct Got {
    request: Vec<u8>,
    fd: bool,
}

/// A v1.sock stand-in, `dir`/v1.sock: accepts one connection, reads the request, writes
/// `say` to the fd attached to it (the client's stderr, as the daemon reports a failed dial)
/// and closes that fd, answers `reply` on the connection and closes it.
fn server(dir: &Path, say: &'static [u8], reply: &'static [u8]) -> (PathBuf, JoinHandle<Got>) {
    // Bound in a short folder and moved into `dir`, whose path may be too long to bind.
    let short = tempfile::tempdir().unwrap();
    let l = UnixListener::bind(short.path().join("v1.sock")).unwrap();
    let path = dir.join("v1.sock");
    std::fs::rename(short.path().join("v1.sock"), &path).unwrap();
    let h = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut buf = [0u8; 4096];
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let m = recvmsg::<()>(c.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()).unwrap();
        let mut fds = Vec::new();
        for cm in m.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(got) = cm {
                // SAFETY: the kernel installed these fds for us; nothing else owns them.
                fds.extend(got.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
        let (n, nfds) = (m.bytes, fds.len());
        if let Some(f) = fds.pop() {
            std::fs::File::from(f).write_all(say).unwrap();
        }
        c.write_all(reply).unwrap();
        Got {
            request: buf[..n].to_vec(),
            fd: nfds == 1,
        }
    });
    (path, h)
}

/// Run `cmd` (idmux-fdpass or strace running it) with stdout one end of a socketpair, as ssh
/// does; returns its output and the other end.
fn run_with_socket_stdout(cmd: &mut Command) -> (Output, UnixStream) {
    let (mine, theirs) = UnixStream::pair().unwrap();
    let o = cmd
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (o, mine)
}

/// The one byte and the fd idmux-fdpass passed to "ssh" over `ssh_end`.
fn received_fd(ssh_end: &UnixStream) -> (Vec<u8>, Option<OwnedFd>) {
    let mut buf = [0u8; 16];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let m = recvmsg::<()>(
        ssh_end.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .unwrap();
    let mut fd = None;
    for cm in m.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = cm {
            for f in fds {
                // SAFETY: the kernel installed f for us; nothing else owns it.
                fd.get_or_insert(unsafe { OwnedFd::from_raw_fd(f) });
            }
        }
    }
    let n = m.bytes;
    (buf[..n].to_vec(), fd)
}

both_builds!(
    fdpass_is_a_static_executable,
    fdpass_for_the_other_architecture_is_a_static_executable,
    is_a_static_executable
);

fn is_a_static_executable(h: Helper) {
    // Built with std it also needed libgcc_s.so.1 (std's unwinder); built dynamically without
    // std it needed libc.so.6, and the dynamic loader mapping and relocating it was most of
    // its start-up; linked with static glibc, glibc's start-up was (src/fdpass/sys.rs). Now
    // nothing runs before its own code: no loader, no libraries, no relocations.
    let p = h.path();
    let (ty, machine, headers) = elf_kind(&p);
    assert_eq!(
        ty,
        2,
        "{}: not an executable at fixed addresses",
        p.display()
    );
    assert_eq!(
        machine,
        h.arch().machine,
        "{}: another architecture",
        p.display()
    );
    assert!(
        !headers.contains(&3),
        "{} asks for a dynamic loader",
        p.display()
    );
    assert!(
        !headers.contains(&2),
        "{} has a dynamic section (libraries or relocations to load at start)",
        p.display()
    );
    // The parser agrees with readelf where binutils is installed.
    if let Ok(o) = Command::new("readelf")
        .env("LC_ALL", "C")
        .arg("-hld")
        .arg(&p)
        .output()
    {
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("EXEC (Executable file)"), "{text}");
        assert!(!text.contains("program interpreter"), "{text}");
        assert!(text.contains("There is no dynamic section"), "{text}");
    }
}

both_builds!(
    fdpass_makes_only_the_protocols_system_calls,
    fdpass_for_the_other_architecture_makes_only_the_protocols_system_calls,
    makes_only_the_protocols_system_calls
);

/// From `execve` to `exit_group`, a whole run makes the protocol's system calls and no other:
/// no start-up of a C library (glibc's static start-up read `/proc/self/exe`, grew the heap
/// and called `arch_prctl`, `set_tid_address`, `getrandom`, `mprotect`, ...), no memory
/// mapped or heap grown (it allocates nothing), no file opened or read. Its first call is
/// `getsockname` on stdout.
///
/// The other architecture's build runs under qemu-user, which loads it itself (no `execve`
/// of it to see) and logs each of its system calls as strace would (`-d strace`).
fn makes_only_the_protocols_system_calls(h: Helper) {
    if matches!(h, Helper::Native) && Command::new("strace").arg("-V").output().is_err() {
        eprintln!("SKIP fdpass_makes_only_the_protocols_system_calls: needs strace (scripts/install-deps.sh)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (sock, srv) = server(dir.path(), b"", b"");
    let log = dir.path().join("strace.log");
    let mut cmd = match h {
        Helper::Native => {
            let mut c = Command::new("strace");
            c.arg("-f").arg("-qq").arg("-o").arg(&log).arg(h.path());
            c
        }
        Helper::Cross => {
            let mut c = Command::new(CROSS.qemu);
            c.arg("-d").arg("strace").arg("-D").arg(&log).arg(h.path());
            c
        }
    };
    let (o, ssh_end) = run_with_socket_stdout(cmd.arg(&sock).arg("node-1.dev.test:3022|dev.test"));
    assert!(o.status.success(), "{}", stderr(&o));
    let got = srv.join().unwrap();
    assert_eq!(got.request, b"node-1.dev.test:3022|dev.test\0");
    assert!(got.fd, "no stderr fd came with the request");
    let (byte, fd) = received_fd(&ssh_end);
    assert_eq!((byte.as_slice(), fd.is_some()), (&[0u8][..], true));

    let text = std::fs::read_to_string(&log).unwrap();
    // A line is `[PID ]name(args)[ = result]`; strace's notes (`+++ exited`, `--- SIGCHLD`)
    // name no call. Any other line that names none (qemu's `Unknown syscall N`) fails.
    let names: Vec<&str> = text
        .lines()
        .map(|l| l.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' '))
        .filter(|l| !l.is_empty() && !l.starts_with("+++") && !l.starts_with("---"))
        .map(|l| {
            l.split_once('(')
                .map(|(n, _)| n)
                .filter(|n| {
                    !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
                .unwrap_or_else(|| panic!("a line that names no system call: {l}\n{text}"))
        })
        .collect();
    let after = match h {
        Helper::Native => {
            assert_eq!(
                names.first().copied(),
                Some("execve"),
                "strace's first line is not the execve:\n{text}"
            );
            &names[1..]
        }
        Helper::Cross => &names[..],
    };
    assert_eq!(
        after.first().copied(),
        Some("getsockname"),
        "the first call after execve is not getsockname:\n{text}"
    );
    const PROTOCOL: [&str; 6] = [
        "getsockname",
        "fcntl",
        "socket",
        "connect",
        "sendmsg",
        "exit_group",
    ];
    let other: Vec<&&str> = after.iter().filter(|n| !PROTOCOL.contains(n)).collect();
    assert!(
        other.is_empty(),
        "calls beyond the protocol's: {other:?}\n{text}"
    );
    let count = |n: &str| after.iter().filter(|&&m| m == n).count();
    assert_eq!(
        (count("socket"), count("connect"), count("sendmsg")),
        (1, 1, 2),
        "{text}"
    );
    eprintln!("{} made: {after:?}", h.path().display());
}

both_builds!(
    fdpass_hands_over_the_connection_and_its_stderr,
    fdpass_for_the_other_architecture_hands_over_the_connection_and_its_stderr,
    hands_over_the_connection_and_its_stderr
);

fn hands_over_the_connection_and_its_stderr(h: Helper) {
    // A socket path longer than sun_path's 108 bytes: reached from its folder by file name.
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("d".repeat(60)).join("e".repeat(60));
    std::fs::create_dir_all(&dir).unwrap();
    let (sock, srv) = server(&dir, b"from the daemon\n", b"SSH-2.0-stand-in\r\n");
    assert!(sock.as_os_str().len() > 108, "{}", sock.display());
    let (o, ssh_end) = run_with_socket_stdout(h.command().arg(&sock).arg("h.test:22"));
    assert!(o.status.success(), "{}", stderr(&o));
    let got = srv.join().unwrap();
    assert_eq!(got.request, b"h.test:22\0");
    // The fd that came with the request is the helper's stderr: what the daemon writes there
    // reaches whoever reads the helper's stderr (ssh's terminal).
    assert!(got.fd);
    assert_eq!(stderr(&o), "from the daemon\n");
    // ssh's end: one 0x00 byte with the connected socket.
    let (byte, fd) = received_fd(&ssh_end);
    assert_eq!(byte, [0u8]);
    let mut conn = UnixStream::from(fd.expect("the connected socket"));
    let mut hello = [0u8; 18];
    conn.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"SSH-2.0-stand-in\r\n");
}

both_builds!(
    fdpass_errors_are_one_line_and_exit_1,
    fdpass_for_the_other_architecture_errors_are_one_line_and_exit_1,
    errors_are_one_line_and_exit_1
);

fn errors_are_one_line_and_exit_1(h: Helper) {
    let dir = tempfile::tempdir().unwrap();
    let check = |o: &Output, want: &str| {
        assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
        assert_eq!(stderr(o), format!("idmux-fdpass: {want}\n"));
    };
    let me = h.path();
    check(
        &run(h.command().arg("only-one")),
        &format!(
            "usage: {} <path to v1.sock> <host:port[|cluster]>",
            me.display()
        ),
    );
    check(
        &run(h.command().arg("s").arg("t").stdout(Stdio::null())),
        "stdout is not a unix socket: run me from ssh with ProxyUseFdpass yes",
    );
    let missing = dir.path().join("v1.sock");
    let (o, _ssh) = run_with_socket_stdout(h.command().arg(&missing).arg("h:22"));
    check(
        &o,
        &format!(
            "cannot connect to {}: No such file or directory (os error 2) (is the idmux \
             multiplexer running?)",
            missing.display()
        ),
    );
    // The words are glibc's (the helper carries its own table, src/fdpass/errtext.rs): what
    // std shows for the same errno on this machine.
    let refused = dir.path().join("stale.sock");
    drop(UnixListener::bind(&refused).unwrap());
    let not_dir = dir.path().join("stale.sock").join("v1.sock");
    for (path, errno) in [(&refused, libc::ECONNREFUSED), (&not_dir, libc::ENOTDIR)] {
        let (o, _ssh) = run_with_socket_stdout(h.command().arg(path).arg("h:22"));
        check(
            &o,
            &format!(
                "cannot connect to {}: {} (is the idmux multiplexer running?)",
                path.display(),
                std::io::Error::from_raw_os_error(errno)
            ),
        );
    }
    let long = "h".repeat(1025);
    let (o, _ssh) = run_with_socket_stdout(h.command().arg(&missing).arg(&long));
    check(
        &o,
        &format!("target too long (1025 bytes; v1.sock takes at most 1024): {long}"),
    );
    // ssh went away before the hand-over: the peer of stdout is closed.
    let (sock, srv) = server(dir.path(), b"", b"");
    let (mine, theirs) = UnixStream::pair().unwrap();
    drop(mine);
    let o = run(h
        .command()
        .arg(&sock)
        .arg("h:22")
        .stdout(Stdio::from(OwnedFd::from(theirs))));
    srv.join().unwrap();
    check(&o, "cannot pass the connection to ssh: EPIPE: Broken pipe");
}

/// The other architecture's build as ssh's ProxyCommand against the real daemon: the
/// destination's own ProxyCommand line with the helper swapped for it under qemu-user (its
/// system calls logged, so the test knows it ran). ssh gets the node's connection from it,
/// authenticates with agent.sock's keys and runs a command on the node.
#[test]
fn fdpass_for_the_other_architecture_carries_a_session_through_the_daemon() {
    let Some(h) = cross("fdpass_for_the_other_architecture_carries_a_session_through_the_daemon")
    else {
        return;
    };
    const C: &str = "dev.test";
    let cl = DevCluster::start(C, 1);
    let d = BotProc::start(&cl, BotOptions::default());
    let cfg = d.dest.join("ssh_config");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let line = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("ProxyCommand "))
        .unwrap_or_else(|| panic!("no ProxyCommand in {}:\n{text}", cfg.display()));
    // The line's first word is the helper (quoted: src/identity/openssh.rs); the rest, its
    // socket and target, stays as the daemon wrote it.
    let (helper, rest) = line
        .strip_prefix('\'')
        .and_then(|l| l.split_once("' "))
        .unwrap_or_else(|| panic!("the ProxyCommand's first word is not quoted: {line}"));
    assert!(helper.ends_with("/idmux-fdpass"), "{line}");
    // Paths in the new line are quoted and have `%` doubled, as the daemon writes its own.
    let word = |p: &Path| format!("'{}'", p.display().to_string().replace('%', "%%"));
    let log = d.work.path().join("qemu-strace.log");
    let cross = format!(
        "{} -d strace -D {} {} {rest}",
        CROSS.qemu,
        word(&log),
        word(&h.path())
    );
    let o = run(Command::new("ssh")
        .arg("-F")
        .arg(&cfg)
        .args(["-o", "BatchMode=yes", "-o"])
        .arg(format!("ProxyCommand={cross}"))
        .arg(format!("{}@node-1.{C}", me()))
        .arg("echo $((6 * 7))"));
    assert!(o.status.success(), "ssh via {cross}: {}", stderr(&o));
    assert_eq!(stdout(&o), "42\n");
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        calls.matches(" sendmsg(").count(),
        2,
        "the helper's request and hand-over, by qemu's log:\n{calls}"
    );
    drop(d);
}

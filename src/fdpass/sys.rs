//! The process's entry point and the Linux system calls idmux-fdpass makes, with no C library.
//!
//! Owns: `_start` (the kernel's entry, before any `main`), the system call instruction
//! (`syscall` on x86_64, `svc 0` on aarch64), and
//! the kernel's error convention (a result in -4095..=-1 is `-errno`). Must not know: the
//! protocol (main.rs), or words for errors (errtext.rs).
//!
//! Why no C library: glibc's static start-up was most of the helper's life. With `main` only
//! returning 0, a static glibc executable took 0.44 ms from spawn to exit against 0.12 ms for
//! one whose `_start` makes the exit call itself (`/bin/true`, dynamic: 0.55 ms; 1,500
//! interleaved runs each): before `main`, glibc reads `/proc/self/exe`, sets up thread-local
//! storage and the heap (`brk` three times), seeds its stack guard (`getrandom`), resolves its
//! ifuncs and protects its relocations (`mprotect`), touching 26 pages of an 800 kB binary
//! where this one touches a few of 10 kB. The helper needs none of it: it allocates nothing,
//! has no threads and reads no input but its arguments.
//!
//! Why not rustix, which wraps these calls: the workspace's other crates build rustix with its
//! `std` feature (through tempfile), and Cargo gives one build of a crate the union of its
//! features, so rustix here would link std. The system call numbers are the libc crate's
//! (`libc::SYS_*`, per architecture) and so are the types; only its functions go unused.
//!
//! x86_64 and aarch64, the Linux architectures Teleport ships fdpass-teleport for besides
//! 32-bit ones; another architecture fails to build here with a message saying so. Both are
//! run by the tests: this machine's natively, the other built by scripts/test.sh and run
//! under qemu-user (tests/e2e/fdpass.rs).

use core::ffi::{c_int, c_long, c_uint};
use core::mem::size_of;

#[cfg(not(all(
    target_os = "linux",
    target_pointer_width = "64",
    target_endian = "little",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
compile_error!(
    "idmux-fdpass makes its system calls itself (src/fdpass/sys.rs): it builds for 64-bit \
     little-endian Linux on x86_64 and aarch64 only (not x32 or aarch64_be)"
);

// The kernel starts the process here with the stack pointer at `argc`, then the `argv`
// pointers (NULL-terminated), then the environment. The frame pointer is zeroed and the
// return address marked undefined (`.cfi_undefined`, as glibc's `_start` does), so a
// debugger's backtrace ends here; the stack is aligned for the call as the ABI requires
// (x86_64: 16 bytes before the `call`; aarch64: the kernel leaves sp 16-byte aligned).
// `crate::start` never returns.
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".globl _start",
    ".type _start,@function",
    "_start:",
    ".cfi_startproc",
    ".cfi_undefined rip",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {start}",
    "ud2",
    ".cfi_endproc",
    start = sym crate::start,
);

#[cfg(target_arch = "aarch64")]
core::arch::global_asm!(
    ".globl _start",
    ".type _start,@function",
    "_start:",
    ".cfi_startproc",
    ".cfi_undefined x30",
    "mov x29, xzr",
    "mov x0, sp",
    "bl {start}",
    "udf #0",
    ".cfi_endproc",
    start = sym crate::start,
);

/// System call `n` with three arguments (unused ones 0): its result, or the kernel's errno.
///
/// # Safety
/// The arguments are what call `n` takes: pointers valid for what it reads and writes.
unsafe fn syscall3(n: c_long, a: usize, b: usize, c: usize) -> Result<usize, c_int> {
    let r: isize;
    // SAFETY: as the caller promises. The instruction clobbers only what is declared.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => r,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    // SAFETY: as the caller promises. The instruction clobbers only what is declared.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        core::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a => r,
            in("x1") b,
            in("x2") c,
            options(nostack),
        );
    }
    if (-4095..0).contains(&r) {
        Err(r.unsigned_abs() as c_int)
    } else {
        Ok(r as usize)
    }
}

/// The unix-socket address `fd` is bound to, in `addr`.
pub fn getsockname(fd: c_int, addr: &mut libc::sockaddr_un) -> Result<(), c_int> {
    let mut len = size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: the kernel writes at most len bytes at addr (its whole size), and the
    // address's length at &len; both live across the call.
    unsafe {
        syscall3(
            libc::SYS_getsockname,
            fd as usize,
            (addr as *mut libc::sockaddr_un) as usize,
            (&raw mut len) as usize,
        )
    }
    .map(drop)
}

/// `fcntl(fd, F_GETFL)`: the fd's status flags.
pub fn get_fl(fd: c_int) -> Result<c_int, c_int> {
    // SAFETY: F_GETFL takes no argument and touches no memory.
    unsafe { syscall3(libc::SYS_fcntl, fd as usize, libc::F_GETFL as usize, 0) }.map(|v| v as c_int)
}

/// `fcntl(fd, F_SETFL, flags)`.
pub fn set_fl(fd: c_int, flags: c_int) -> Result<(), c_int> {
    // SAFETY: F_SETFL takes an int and touches no memory.
    unsafe {
        syscall3(
            libc::SYS_fcntl,
            fd as usize,
            libc::F_SETFL as usize,
            flags as usize,
        )
    }
    .map(drop)
}

pub fn socket(domain: c_int, ty: c_int, protocol: c_int) -> Result<c_int, c_int> {
    // SAFETY: socket touches no memory of ours.
    unsafe {
        syscall3(
            libc::SYS_socket,
            domain as usize,
            ty as usize,
            protocol as usize,
        )
    }
    .map(|v| v as c_int)
}

/// Connect `fd` to the first `len` bytes of `addr`.
pub fn connect(fd: c_int, addr: &libc::sockaddr_un, len: libc::socklen_t) -> Result<(), c_int> {
    if len as usize > size_of::<libc::sockaddr_un>() {
        return Err(libc::EINVAL);
    }
    // SAFETY: the kernel reads at most len bytes of addr, which is at least that long.
    unsafe {
        syscall3(
            libc::SYS_connect,
            fd as usize,
            (addr as *const libc::sockaddr_un) as usize,
            len as usize,
        )
    }
    .map(drop)
}

/// `chdir` to the NUL-terminated path starting at `path[0]`.
pub fn chdir(path: &[u8]) -> Result<(), c_int> {
    if !path.contains(&0) {
        return Err(libc::EINVAL);
    }
    // SAFETY: path holds a NUL, so the kernel's read ends inside it.
    unsafe { syscall3(libc::SYS_chdir, path.as_ptr() as usize, 0, 0) }.map(drop)
}

/// # Safety
/// `msg` points at live iovecs and control data, as sendmsg(2) reads them.
pub unsafe fn sendmsg(fd: c_int, msg: &libc::msghdr, flags: c_int) -> Result<usize, c_int> {
    // SAFETY: as the caller promises.
    unsafe {
        syscall3(
            libc::SYS_sendmsg,
            fd as usize,
            (msg as *const libc::msghdr) as usize,
            flags as usize,
        )
    }
}

/// # Safety
/// The first `n` iovecs point at live memory.
pub unsafe fn writev(fd: c_int, iov: *const libc::iovec, n: c_uint) -> Result<usize, c_int> {
    // SAFETY: as the caller promises.
    unsafe { syscall3(libc::SYS_writev, fd as usize, iov as usize, n as usize) }
}

/// End the process with `status`.
pub fn exit(status: c_int) -> ! {
    // SAFETY: exit_group touches no memory and does not return.
    let _ = unsafe { syscall3(libc::SYS_exit_group, status as usize, 0, 0) };
    abort()
}

/// Die by the trap instruction, as `core::intrinsics::abort` does on these architectures.
pub fn abort() -> ! {
    // SAFETY: the instruction raises SIGILL; nothing after it runs.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        core::arch::asm!("ud2", options(noreturn, nomem, nostack));
        #[cfg(target_arch = "aarch64")]
        core::arch::asm!("udf #0", options(noreturn, nomem, nostack));
    }
}

//! The memory functions compiled Rust calls by name (`memcpy` for a large copy, `memset` for a
//! zeroed buffer, `memcmp`/`bcmp` for a comparison), which a C library would otherwise supply.
//!
//! Owns: those five symbols, as byte loops. Must not know: anything else. The crate is
//! `#![no_builtins]` (main.rs), so the compiler does not turn these loops back into calls to
//! themselves. The helper copies a few hundred bytes in its life: speed is not the point.

use core::ffi::{c_int, c_void};

/// # Safety
/// As C's `memcpy`: `n` bytes readable at `src`, writable at `dst`, not overlapping.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut c_void, src: *const c_void, n: usize) -> *mut c_void {
    // SAFETY: as the caller promises; memmove does what memcpy must (and more).
    unsafe { memmove(dst, src, n) }
}

/// # Safety
/// As C's `memmove`: `n` bytes readable at `src` and writable at `dst`.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut c_void, src: *const c_void, n: usize) -> *mut c_void {
    let (d, s) = (dst.cast::<u8>(), src.cast::<u8>());
    // SAFETY: every offset is below n, inside both regions as the caller promises; the copy
    // runs backwards when dst is above src, so an overlap reads each byte before it is written.
    unsafe {
        if (d as usize) <= (s as usize) {
            for i in 0..n {
                *d.add(i) = *s.add(i);
            }
        } else {
            for i in (0..n).rev() {
                *d.add(i) = *s.add(i);
            }
        }
    }
    dst
}

/// # Safety
/// As C's `memset`: `n` bytes writable at `dst`.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut c_void, c: c_int, n: usize) -> *mut c_void {
    let d = dst.cast::<u8>();
    for i in 0..n {
        // SAFETY: i < n, inside the region as the caller promises.
        unsafe { *d.add(i) = c as u8 };
    }
    dst
}

/// # Safety
/// As C's `memcmp`: `n` bytes readable at both.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const c_void, b: *const c_void, n: usize) -> c_int {
    let (a, b) = (a.cast::<u8>(), b.cast::<u8>());
    for i in 0..n {
        // SAFETY: i < n, inside both regions as the caller promises.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return c_int::from(x) - c_int::from(y);
        }
    }
    0
}

/// # Safety
/// As `memcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const c_void, b: *const c_void, n: usize) -> c_int {
    // SAFETY: as the caller promises.
    unsafe { memcmp(a, b, n) }
}

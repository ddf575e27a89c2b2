#!/bin/sh
# Cargo's rustc wrapper for this workspace (.cargo/config.toml). It adds `-C panic=abort` to
# one crate, idmux-fdpass (a `#![no_std]` binary: rustc refuses to build one that may
# unwind), and links that crate statically (`+crt-static`: a static-PIE executable, no dynamic
# loader at start-up; glibc's libc.a refers to libgcc_eh's unwinder for thread cancellation,
# so libgcc_eh and libgcc are named, as `gcc -static` does). Every other compile runs
# unchanged. Stable Cargo has no per-package panic
# strategy (profile overrides refuse `panic`), and the rest of the workspace must unwind: the
# daemon relies on tokio catching a task's panic. Called as `WRAPPER RUSTC ARGS...` (under
# `cargo clippy` RUSTC is clippy-driver, so the lints see the same flags).
prev=
for a in "$@"; do
  if [ "$prev" = --crate-name ] && [ "$a" = idmux_fdpass ]; then
    exec "$@" -C panic=abort -C target-feature=+crt-static \
      -C link-arg=-lgcc_eh -C link-arg=-lgcc
  fi
  prev=$a
done
exec "$@"

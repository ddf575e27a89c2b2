#!/bin/sh
# Cargo's rustc wrapper for this workspace (.cargo/config.toml). It adds `-C panic=abort` to
# one crate, idmux-fdpass (a `#![no_std]` binary: rustc refuses to build one that may
# unwind), and links that crate as a static executable with neither C library nor C start
# files (its own `_start` makes its system calls: src/fdpass/sys.rs): `+crt-static` with the
# static relocation model gives `-static` and ET_EXEC, no dynamic loader and no relocation
# pass at start; `-nostartfiles -nostdlib` leave out crt1.o, libc and libgcc. Every other
# compile runs unchanged. Stable Cargo has no per-package panic
# strategy (profile overrides refuse `panic`), and the rest of the workspace must unwind: the
# daemon relies on tokio catching a task's panic. Called as `WRAPPER RUSTC ARGS...` (under
# `cargo clippy` RUSTC is clippy-driver, so the lints see the same flags).
prev=
for a in "$@"; do
  if [ "$prev" = --crate-name ] && [ "$a" = idmux_fdpass ]; then
    exec "$@" -C panic=abort -C target-feature=+crt-static -C relocation-model=static \
      -C link-arg=-nostartfiles -C link-arg=-nostdlib
  fi
  prev=$a
done
exec "$@"

#!/usr/bin/env bash
# The other architecture idmux-fdpass is written for (its system calls are assembly for x86_64
# and aarch64: src/fdpass/sys.rs), the one this machine is not: prints its Rust target triple,
# and exits 0 when that target's core library is installed (rustup), 1 when it is not.
# Used by scripts/install-deps.sh, scripts/test.sh and .ci/run.
set -uo pipefail
case "$(uname -m)" in x86_64) triple=aarch64-unknown-linux-gnu ;; *) triple=x86_64-unknown-linux-gnu ;; esac
echo "$triple"
libdir=$(rustc --print target-libdir --target "$triple" 2>/dev/null) && [ -n "$libdir" ] && [ -d "$libdir" ]

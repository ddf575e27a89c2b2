#!/usr/bin/env bash
# Run idmux's whole test suite: every crate's unit tests and the end-to-end tests (one binary,
# tests/e2e/) with real OpenSSH and Ansible. Installs what the tests need when missing
# (scripts/install-deps.sh), then runs cargo test and ends with one summary line over every
# test binary.
#
#   scripts/test.sh            the default suite (about 6.5 minutes on 2 cores once built;
#                              a fresh build adds about 4)
#   scripts/test.sh --long     also the long tier: the full soak (7,000 connections through
#                              v1.sock) instead of its short form, the seed's flow on
#                              the fips-v1 and hsm-v1 suites, 100 renewals behind nginx with
#                              sessions open, and an Ansible ping in each deployment mode
#
# The end-to-end tests that reach nodes run once per node transport (IDMUX_TEST_TRANSPORT):
# first everything with dev clusters serving only gRPC TransportService, then the
# node-reaching modules again with clusters serving only the SSH transport. Clients use
# --transport auto, so each pass proves its transport carries the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--long" ]; then
  shift
  export IDMUX_LONG=1
fi
export IDMUX_WITH_ANSIBLE=1 IDMUX_WITH_CROSS=1
bash scripts/install-deps.sh
# Both binaries the end-to-end tests run (idmux-fdpass is its own package, so cargo test does
# not build it for tests/e2e): one build of the whole workspace, features as the tests use them.
cargo build --workspace --bins
# idmux-fdpass for the architecture this machine is not (its system calls are assembly for
# each: src/fdpass/sys.rs), run under qemu-user by tests/e2e/fdpass.rs; release, as shipped.
if target=$(bash scripts/cross-target.sh); then
  cross=${target%%-*}
  env "CARGO_TARGET_${cross^^}_UNKNOWN_LINUX_GNU_LINKER=$cross-linux-gnu-gcc" \
    cargo build --release -p idmux-fdpass --target "$target"
else
  echo "== idmux-fdpass for $target not built (its Rust target is not installed): tests/e2e/fdpass.rs skips its tests of that build"
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The end-to-end tests start sshd nodes and dev clusters on loopback ports; two at a time
# keeps a 2-core machine responsive. (No doc tests: the crates have none.)
threads="${IDMUX_TEST_THREADS:-2}"
# End-to-end modules whose tests reach nodes through the proxy (test names start `MODULE::`).
per_transport=(cluster_ssh:: mux:: bot:: ansible:: transport:: faults:: identities:: deployments::seed_flow)
status=0
echo "== pass 1: unit tests of every crate and every end-to-end test, node transport gRPC"
IDMUX_TEST_TRANSPORT=grpc cargo test --workspace --no-fail-fast --lib --tests -- --test-threads="$threads" "$@" 2>&1 | tee -a "$log" || status=$?
echo "== pass 2: the node-reaching end-to-end tests again, node transport SSH"
IDMUX_TEST_TRANSPORT=ssh cargo test --no-fail-fast --test e2e -- --test-threads="$threads" "${per_transport[@]}" "$@" 2>&1 | tee -a "$log" || status=$?
# A test binary that dies (signal, abort, exit from a thread) prints no "test result:" line;
# cargo names it with "to rerun pass", so list those too: the summary must never hide one.
# Failed tests and their panics (the first 20) come last as well, where a log's tail shows them.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^test .* \.\.\. FAILED$/ { bins = bins "\n  failed test: " $2 }
     /^thread .* panicked at / && n++ < 20 { getline why; bins = bins "\n    " $0 " " why }
     /^error: test failed, to rerun pass/ { bins = bins "\n  failed binary: " $0 }
     /process didn.t exit successfully/ { bins = bins "\n    " $0 }
     END { printf "tests: %d passed, %d failed (both node transports)%s\n", p, f, bins }' "$log"
exit "$status"

#!/usr/bin/env bash
# Run idmux's whole test suite: unit tests and end-to-end tests with real OpenSSH and Ansible.
# Installs what the tests need when missing (scripts/install-deps.sh), then runs cargo test and
# ends with one summary line over every test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
export IDMUX_WITH_ANSIBLE=1
bash scripts/install-deps.sh
cargo build --bins --quiet
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The end-to-end tests start sshd nodes and dev clusters on loopback ports; two at a time
# keeps a 2-core machine responsive. (No doc tests: the crate has none.)
status=0
cargo test --no-fail-fast --lib --bins --tests -- --test-threads="${IDMUX_TEST_THREADS:-2}" "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"

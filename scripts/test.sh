#!/usr/bin/env bash
# Run idmux's whole test suite: unit tests and end-to-end tests with real OpenSSH.
# Installs what the tests need when missing (scripts/install-deps.sh), then runs cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
export IDMUX_WITH_ANSIBLE=1
bash scripts/install-deps.sh
cargo build --bins --quiet
# The end-to-end tests start sshd nodes and dev clusters on loopback ports; two at a time
# keeps a 2-core machine responsive.
cargo test --no-fail-fast -- --test-threads="${IDMUX_TEST_THREADS:-2}" "$@"

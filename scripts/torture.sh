#!/usr/bin/env bash
# idmux's reliability suite: every hostile-world attack at full size against a bot (dev
# cluster, real sshd, real ssh streaming through the bot the whole time), then a table.
#
#   scripts/torture.sh            the full sizes (IDMUX_LONG): 10,000 v1.sock requests with
#                                 100 fds each, 20,000 diag connections held by another user,
#                                 1,000 agent.sock slowloris connections, 200 kill -9 at random
#                                 points of renewals, a data dir on a tmpfs that fills, a proxy
#                                 that stalls mid-TLS at renewal time (about 15 minutes)
#   scripts/torture.sh --short    the short forms the default suite runs (about 1 minute)
#
# The attacks are the end-to-end tests `hostile::` and `crash::` (tests/e2e/); each prints a
# `torture| attack | result | figures` row. The table goes to stdout and target/torture.md,
# the whole log to target/torture.log. Not part of scripts/test.sh (which runs the short
# forms); needs root for the tmpfs and for connecting as another user.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--short" ]; then
  unset IDMUX_LONG
else
  export IDMUX_LONG=1
fi
bash scripts/install-deps.sh
cargo build --workspace --bins
mkdir -p target
log=target/torture.log
status=0
# One test at a time: each attack's figures are its own.
cargo test --test e2e -- --test-threads=1 --nocapture hostile:: crash:: >"$log" 2>&1 || status=$?
{
  echo "| attack | result | figures |"
  echo "|---|---|---|"
  sed -n 's/^torture| \(.*\) | \(.*\) | \(.*\)$/| \1 | \2 | \3 |/p' "$log"
} >target/torture.md
cat target/torture.md
grep -E "^test result:|^failures:|^    [a-z_]+::" "$log" || true
if [ "$status" -ne 0 ]; then
  echo "torture.sh: a test failed; see $log" >&2
fi
exit "$status"

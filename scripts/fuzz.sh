#!/usr/bin/env bash
# Run idmux's fuzz targets (fuzz/, cargo-fuzz + libFuzzer) for a given time each.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target: each
#                                                         [[bin]] of fuzz/Cargo.toml)
#
# Installs cargo-fuzz from crates.io when it is missing. Builds with the stable toolchain
# (RUSTC_BOOTSTRAP=1, no sanitizer: `-s none`) so no nightly is needed; set
# IDMUX_FUZZ_TOOLCHAIN=nightly to use nightly with AddressSanitizer instead.
# New interesting inputs go to fuzz/target/corpus/<target>/ (not committed); the seeds in
# fuzz/corpus/<target>/ are read too. A finding (a panic, or one input slower than 10 s) stops
# the run with its input in fuzz/artifacts/<target>/: fix it, then copy the input to
# fuzz/regressions/<target>/, where `cargo test --test e2e fuzz_replay` (part of scripts/test.sh)
# replays it on every test run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  # Every [[bin]] of fuzz/Cargo.toml, in its order: a new target is run without editing this.
  mapfile -t targets < <(awk '/^\[\[bin\]\]/ { b = 1; next } /^\[/ { b = 0 }
    b && $1 == "name" { gsub(/"/, "", $3); print $3 }' fuzz/Cargo.toml)
  if [ ${#targets[@]} -eq 0 ]; then
    echo "fuzz.sh: no [[bin]] target found in fuzz/Cargo.toml" >&2
    exit 1
  fi
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
  cargo install cargo-fuzz --locked
fi

toolchain="${IDMUX_FUZZ_TOOLCHAIN:-stable}"
if [ "$toolchain" = stable ]; then
  # libFuzzer's instrumentation flags are accepted by stable rustc once unstable options are
  # allowed; AddressSanitizer needs nightly, so run without a sanitizer (Rust is memory safe
  # outside `unsafe`, and a panic is what the targets catch).
  export RUSTC_BOOTSTRAP=1
  flags=(-s none)
else
  flags=()
fi

cd fuzz
# Fuzz the dependency versions idmux ships with (cargo adds libfuzzer-sys to the copy).
cp ../Cargo.lock Cargo.lock
cargo "+$toolchain" fuzz build "${flags[@]}" -O
status=0
for t in "${targets[@]}"; do
  mkdir -p "target/corpus/$t" "regressions/$t"
  echo "fuzz.sh: $t for ${secs}s" >&2
  if ! cargo "+$toolchain" fuzz run "${flags[@]}" -O "$t" "target/corpus/$t" "corpus/$t" "regressions/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 2>"target/$t.log"; then
    echo "fuzz.sh: $t FAILED: input in fuzz/artifacts/$t/, log in fuzz/target/$t.log" >&2
    tail -n 30 "target/$t.log" >&2
    status=1
  else
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "target/$t.log" | sed "s/^/fuzz.sh: $t: /" >&2
  fi
done
exit "$status"

#!/usr/bin/env bash
# Runs every fuzz target briefly (CI) or for longer (FUZZ_SECONDS=600 fuzz/run-all.sh).
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`, ~2.5 min on 2 cores). Works on a
# stable toolchain: RUSTC_BOOTSTRAP=1 unlocks the nightly-only sanitizer/coverage flags.
# Corpora grow in fuzz/corpus/<target> (git-ignored) and start from fuzz/seeds/<target>;
# crashes land in fuzz/artifacts/<target> and fail this script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export RUSTC_BOOTSTRAP=1
seconds="${FUZZ_SECONDS:-20}"
targets=(split_lines timestamp event_id config)
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
  exit 1
fi
echo "==> building fuzz targets"
cargo fuzz build
for target in "${targets[@]}"; do
  echo "==> fuzz $target for ${seconds}s"
  mkdir -p "corpus/$target"
  cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
echo "==> all fuzz targets ran ${seconds}s without a crash"

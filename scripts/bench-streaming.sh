#!/usr/bin/env bash
# Side-by-side streaming benchmarks (issue 7) on a fresh testenv: kubelens SSE vs kubectl / stern.
#   scripts/bench-streaming.sh [chatty] [fanout] [app] [idle] [quick]
# Raises the open-file limit (5,000 idle SSE connections; the kubelens child inherits it), builds
# stern v1.33.0 into ~/.cache/kubelens-bench/bin when missing, and tees the tables to
# target/bench-streaming-<time>.log. Results: docs/benchmarks/streaming.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
bin="${HOME}/.cache/kubelens-bench/bin"
if [[ " $* " == *" app "* || $# -eq 0 || " $* " == *" all "* ]] && [[ ! -x "$bin/stern" && -z "${STERN:-}" ]]; then
  GOBIN="$bin" go install github.com/stern/stern@v1.33.0
fi
log="${CARGO_TARGET_DIR:-target}/bench-streaming-$(date -u +%Y%m%dT%H%M%S).log"
mkdir -p "$(dirname "$log")"
echo "open-file limit: $(ulimit -n); log: $log" >&2
testenv/run -- cargo bench -p kubelens-salvo --bench streaming -- "$@" 2>&1 | tee "$log"

#!/usr/bin/env bash
# exec benchmark: spawn-to-exit overhead of exec::run against a bare fork/execve/waitpid, and
# the gateway's memory while a fake CLI floods 1 GiB of stdout (capture is bounded at 5 MB, so
# max RSS must stay flat).
#   BENCH_ITERS=200 (runs per target)   BENCH_PROFILE=dev|release (default dev: no rebuild)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=()
if [ "${BENCH_PROFILE:-dev}" = "release" ]; then profile=(--release); fi
cargo test "${profile[@]}" --bin panorama-gateway exec::tests::bench_exec -- \
  --ignored --exact --nocapture --test-threads=1 2>&1 \
  | grep -v -E '^(running|test |$)|test result'

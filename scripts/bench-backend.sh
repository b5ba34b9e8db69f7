#!/usr/bin/env bash
# Benchmarks panorama-local-backend on loopback: PostgREST select requests/s over keep-alive
# connections, and realtime fan-out latency (INSERT over REST -> postgres_changes frame at every
# subscriber), p50/p99. The backend is the release build; the load generator is the ignored
# integration test tests/local_backend_bench.rs.
#
# Knobs (env): BENCH_SECS (3), BENCH_CLIENTS (8), BENCH_SUBSCRIBERS (50), BENCH_EVENTS (200),
# BENCH_EVENT_GAP_MS (5: pause between inserts; 0 = back to back).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building the release backend (first build can take a few minutes)" >&2
cargo build --release --bin panorama-local-backend
export PANORAMA_LOCAL_BACKEND_BIN="$PWD/target/release/panorama-local-backend"

echo "== machine: $(nproc) cores, $(uname -sr)" >&2
cargo test --test local_backend_bench -- --ignored --nocapture --test-threads=1 2>&1 \
  | grep -oE 'BENCH .*|test result.*|panicked.*|FAILED.*'

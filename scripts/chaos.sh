#!/bin/sh
# Chaos soak of one gateway against the local backend (issue 12): see tests/chaos.rs.
# Usage: scripts/chaos.sh [SEED [JOBS [SECS]]]   (defaults: clock, 300 jobs, 180 s)
# Run it on a quiet machine: it takes a few minutes and prints the seed and the figures.
set -eu
cd "$(dirname "$0")/.."
[ $# -ge 1 ] && export CHAOS_SEED="$1"
[ $# -ge 2 ] && export CHAOS_JOBS="$2"
[ $# -ge 3 ] && export CHAOS_SECS="$3"
exec cargo test --test chaos -- --ignored --nocapture --test-threads=1

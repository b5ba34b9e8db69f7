#!/usr/bin/env bash
# Benchmark of `panorama-gateway status` (what cron and monitoring call): wall time and max RSS
# over many runs, release build, in three situations (not paired; paired and stopped; daemon
# running). Prints median and p90 and compares them with the targets (<= 5 ms, <= 4 MiB).
#
# Usage: scripts/bench.sh [RUNS] [--no-build]     (RUNS default 300)
# Needs: cargo (unless --no-build), python3 (precise per-run timing), /usr/bin/time (max RSS).
# Touches nothing outside a temp directory (HOME is redirected there).
set -euo pipefail

RUNS=300
BUILD=1
for a in "$@"; do
  case "$a" in
    --no-build) BUILD=0 ;;
    ''|*[!0-9]*) echo "usage: $0 [RUNS] [--no-build]" >&2; exit 2 ;;
    *) RUNS="$a" ;;
  esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if [ "$BUILD" = 1 ]; then
  echo "building release binary (cargo build --release)..." >&2
  cargo build --release --quiet --bin panorama-gateway
fi
BIN="$ROOT/target/release/panorama-gateway"
[ -x "$BIN" ] || { echo "no release binary at $BIN (run without --no-build)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed for precise timing" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pg-bench.XXXXXX")"
export HOME="$WORK/home"
mkdir -p "$HOME"
unset PANORAMA_GATEWAY_CONFIG_DIR PANORAMA_GATEWAY_CONFIG_PATH PANORAMA_GATEWAY_LOG_PATH \
  PANORAMA_GATEWAY_PID_PATH PANORAMA_ENV PANORAMA_ENV_FILE || true
CFG="$WORK/cfg"
cleanup() {
  "$BIN" stop --force --config-dir "$CFG" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

bench() { # label, then the command
  local label="$1"; shift
  python3 - "$RUNS" "$label" "$@" <<'PY'
import os, sys, time, statistics
runs, label, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
walls, rss, codes = [], [], set()
devnull = os.open(os.devnull, os.O_WRONLY)
# Wall time: fork+exec from here, timed around the child only.
for _ in range(runs):
    t0 = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        os.dup2(devnull, 1); os.dup2(devnull, 2)
        os.execv(argv[0], argv)
    _, status, _ = os.wait4(pid, 0)
    walls.append((time.perf_counter_ns() - t0) / 1e6)
    codes.add(os.waitstatus_to_exitcode(status))
# Max RSS: through GNU time (a child forked from Python would report Python's own pages,
# since the high-water mark survives exec).
timebin = "/usr/bin/time"
if os.access(timebin, os.X_OK):
    import subprocess, tempfile
    with tempfile.NamedTemporaryFile() as tf:
        for _ in range(runs):
            subprocess.run([timebin, "-f", "%M", "-o", tf.name] + argv,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(tf.name) as f:
                rss.append(int(f.read().split()[-1]) / 1024.0)  # KiB -> MiB
else:
    rss = [float("nan")]
def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
w50, w90, r50, r90 = pct(walls, 50), pct(walls, 90), pct(rss, 50), pct(rss, 90)
ok = "OK " if w50 <= 5 and r90 <= 4 else "MISS"
print(f"{ok} {label:<28} wall median {w50:6.2f} ms  p90 {w90:6.2f} ms   "
      f"max RSS median {r50:5.2f} MiB  p90 {r90:5.2f} MiB   exit {sorted(codes)}")
PY
}

echo "panorama-gateway status: $RUNS runs each; targets: wall <= 5 ms, max RSS <= 4 MiB"
bench "baseline: /bin/true" /bin/true
bench "not paired" "$BIN" status --config-dir "$CFG"

mkdir -p "$CFG" && chmod 700 "$CFG"
cat >"$CFG/gateway.json" <<'JSON'
{"supabaseUrl":"http://127.0.0.1:9","supabaseAnonKey":"anon","accessToken":"a.b.c",
 "refreshToken":"r","gatewayId":"gw-bench","teamId":"team-bench","full_control_enabled":false,
 "deviceName":"bench"}
JSON
chmod 600 "$CFG/gateway.json"
bench "paired, stopped" "$BIN" status --config-dir "$CFG"
bench "paired, stopped, --json" "$BIN" status --json --config-dir "$CFG"

"$BIN" start --daemon --config-dir "$CFG" >/dev/null
bench "running daemon" "$BIN" status --config-dir "$CFG"
bench "running daemon, -v --json" "$BIN" status -v --json --config-dir "$CFG"
"$BIN" stop --config-dir "$CFG" >/dev/null

echo "reference (Node, lifecycle.md §10.1): about 150 ms and 64 MiB per status"
echo "binary size: $(stat -c %s "$BIN") bytes ($BIN)"

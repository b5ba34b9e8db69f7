# Sourced by the bench scripts (without arguments, so it sees theirs) after `set -euo pipefail`
# and NAME=<script name>. Parses the options: --no-build, plus whatever the script's optional
# `bench_option <arg>` function accepts (it returns 0 when it took the argument; USAGE_EXTRA
# names those options in the usage line). Then builds the release binaries unless --no-build,
# checks them and python3, prints the machine, and sets
#   ROOT, BIN_DIR (default target/release; BIN_DIR=target/debug for a quick smoke run), GW, BE,
#   WORK (a temp dir removed at exit unless KEEP_WORK is set); exports GW, BE, WORK and
#   PYTHONPATH for the scripts' Python parts (`import benchlib`: scripts/lib/benchlib.py).
BUILD=1
for a in "$@"; do
  case "$a" in
    --no-build) BUILD=0 ;;
    *)
      if ! { declare -F bench_option >/dev/null && bench_option "$a"; }; then
        echo "usage: $0 [--no-build]${USAGE_EXTRA:+ $USAGE_EXTRA}" >&2
        exit 2
      fi
      ;;
  esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
if [ "$BUILD" = 1 ]; then
  echo "building release binaries (cargo build --release; the first build takes minutes)..." >&2
  cargo build --release --quiet --bin panorama-gateway --bin panorama-local-backend
fi
BIN_DIR="${BIN_DIR:-$ROOT/target/release}"
GW="$BIN_DIR/panorama-gateway"
BE="$BIN_DIR/panorama-local-backend"
[ -x "$GW" ] && [ -x "$BE" ] || { echo "binaries missing in $BIN_DIR (run without --no-build)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pg-$NAME.XXXXXX")"
trap '[ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"' EXIT
export GW BE WORK PYTHONPATH="$ROOT/scripts/lib${PYTHONPATH:+:$PYTHONPATH}"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

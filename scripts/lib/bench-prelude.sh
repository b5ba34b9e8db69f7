# Sourced by the bench scripts after their own option parsing (BUILD=0|1, NAME set):
# builds the release binaries unless BUILD=0, checks them and python3, and sets
#   ROOT, BIN_DIR (default target/release; BIN_DIR=target/debug for a quick smoke run), GW, BE,
#   WORK (a temp dir removed at exit unless KEEP_WORK is set), and exports BENCH_LIB for the
#   scripts' Python parts (scripts/lib/benchlib.py).
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
export BENCH_LIB="$ROOT/scripts/lib"

#!/usr/bin/env bash
# The gateway doing its job, end to end, in one command, with nothing left behind:
#
#   scripts/demo.sh
#
# Builds the two binaries (debug profile), starts the local backend on a free loopback port,
# pairs a gateway in a temporary HOME and state directory, starts it, and runs one job of each
# kind a newcomer cares about: a diagnostic, a model_run through the fake `claude` of the test
# suite (tests/fixtures/bin: no account, no network), a shell_exec and a short shell_session
# (open, write, read, close). It prints each result, `status` and the last log lines, then
# stops everything and removes what it made, also on Ctrl-C or failure.
# Exit 0 only when every job completed.
#
# Needs: cargo (unless PANORAMA_DEMO_BIN_DIR is set), curl, python3.
# PANORAMA_DEMO_BIN_DIR=<dir>   use the panorama-gateway and panorama-local-backend in <dir>
#                               instead of building (the test suite passes its own build).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
say() { printf '\n==> %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

for tool in curl python3; do
  command -v "$tool" >/dev/null || die "$tool is needed (install it, then run scripts/demo.sh again)"
done

if [ -n "${PANORAMA_DEMO_BIN_DIR:-}" ]; then
  BIN="$PANORAMA_DEMO_BIN_DIR"
else
  say "Building panorama-gateway and panorama-local-backend (cargo build; the first build takes a few minutes)"
  (cd "$ROOT" && cargo build --quiet --bin panorama-gateway --bin panorama-local-backend) \
    || die "cargo build failed (see above)"
  BIN="$ROOT/target/debug"
fi
GW="$BIN/panorama-gateway"
LB="$BIN/panorama-local-backend"
[ -x "$GW" ] && [ -x "$LB" ] || die "no panorama-gateway / panorama-local-backend in $BIN"

# Everything the demo makes lives here and goes away at the end.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/panorama-demo.XXXXXX")"
BACKEND_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -f "$WORK/state/gateway.pid" ]; then
    "$GW" stop --timeout 30 >/dev/null 2>&1 || "$GW" stop --force >/dev/null 2>&1 || true
  fi
  if [ -n "$BACKEND_PID" ]; then
    kill "$BACKEND_PID" 2>/dev/null || true
    wait "$BACKEND_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  if [ "$rc" -eq 0 ]; then
    say "Stopped the gateway and the local backend; removed $WORK"
  else
    printf '\ndemo: FAILED (exit %s); stopped everything and removed %s\n' "$rc" "$WORK" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A private world: no variable of the caller's shell steers the gateway.
for v in $(env | sed -n 's/^\(PANORAMA_[A-Z0-9_]*\|SUPABASE_[A-Z0-9_]*\|[A-Z]*_CLI\)=.*/\1/p'); do
  unset "$v"
done
export HOME="$WORK/home"
export PANORAMA_GATEWAY_CONFIG_DIR="$WORK/state"
export PANORAMA_GATEWAY_AUTO_RESTART=0
export PANORAMA_GATEWAY_HEARTBEAT_MS=1000
mkdir -p "$HOME" "$WORK/fake"
# The fake CLIs of the test suite stand in for claude, codex and gemini.
for name in claude codex gemini; do
  ln -s "$ROOT/tests/fixtures/bin/$name" "$WORK/fake/$name"
done
export PANORAMA_CLAUDE_CLI="$WORK/fake/claude"
export PANORAMA_CODEX_CLI="$WORK/fake/codex"
export PANORAMA_GEMINI_CLI="$WORK/fake/gemini"

json() { python3 -c "import json,sys; v=json.load(sys.stdin); print($1)"; }

say "Starting the local backend (a Supabase-compatible emulator) on a free loopback port"
"$LB" --listen 127.0.0.1:0 >"$WORK/backend.json" 2>"$WORK/backend.log" &
BACKEND_PID=$!
for _ in $(seq 1 100); do
  [ -s "$WORK/backend.json" ] && break
  kill -0 "$BACKEND_PID" 2>/dev/null || die "the local backend exited: $(cat "$WORK/backend.log")"
  sleep 0.1
done
[ -s "$WORK/backend.json" ] || die "the local backend did not start within 10 s"
URL=$(json 'v["url"]' <"$WORK/backend.json")
SVC=$(json 'v["service_role_key"]' <"$WORK/backend.json")
export SUPABASE_URL="$URL"
export SUPABASE_ANON_KEY=$(json 'v["anon_key"]' <"$WORK/backend.json")
echo "    backend at $URL"

# One call to the backend as the team admin (service role); prints the JSON reply.
admin() {
  local method=$1 path=$2 body=${3:-}
  curl -sS --fail-with-body -X "$method" "$URL$path" \
    -H "apikey: $SVC" -H "Authorization: Bearer $SVC" \
    -H 'Content-Type: application/json' -H 'Prefer: return=representation' \
    ${body:+-d "$body"}
}

say "Pairing a gateway (the code goes in on stdin: pair -)"
PAIRING=$(admin POST /rest/v1/rpc/admin_create_pairing_code '{}')
CODE=$(json 'v["code"]' <<<"$PAIRING")
TEAM=$(json 'v["team_id"]' <<<"$PAIRING")
printf '%s\n' "$CODE" | "$GW" pair - --no-start --device-name demo-box
GID=$(json 'v["gatewayId"]' <"$WORK/state/gateway.json")

say "Allowing machine control for the shell jobs (this host, the team, one remote_shell resource)"
"$GW" full-control enable
admin PATCH "/rest/v1/team_gateways?id=eq.$GID" '{"full_control_enabled": true}' >/dev/null
RID=$(admin POST /rest/v1/team_resources \
  "{\"team_id\":\"$TEAM\",\"resource_type\":\"remote_shell\",\"name\":\"demo shell\",\"max_access_level\":\"editor\",\"metadata\":{\"gateway_id\":\"$GID\",\"full_control\":true}}" \
  | json 'v[0]["id"] if isinstance(v, list) else v["id"]')

say "Starting the gateway in the background"
"$GW" start --daemon
for _ in $(seq 1 200); do
  "$GW" status >/dev/null 2>&1 && \
    python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get("team_full_control") else 1)' \
      "$WORK/state/gateway.status.json" 2>/dev/null && break
  sleep 0.1
done
"$GW" status >/dev/null || die "the gateway did not connect within 20 s: $("$GW" status 2>&1)"

FAILED=0
# Queues one job and waits (up to 60 s) until it is done; prints its status and result.
run_job() {
  local title=$1 type=$2 payload=$3 id row status
  id=$(admin POST /rest/v1/gateway_jobs \
    "{\"team_id\":\"$TEAM\",\"gateway_id\":\"$GID\",\"job_type\":\"$type\",\"payload\":$payload}" \
    | json 'v[0]["id"] if isinstance(v, list) else v["id"]')
  for _ in $(seq 1 600); do
    row=$(admin GET "/rest/v1/gateway_jobs?select=status,result,error&id=eq.$id")
    status=$(json 'v[0]["status"]' <<<"$row")
    case $status in completed|failed|cancelled) break ;; esac
    sleep 0.1
  done
  printf '    %-28s %s\n' "$title" "$status"
  python3 -c '
import json, sys
row = json.load(sys.stdin)[0]
r = row["result"] if isinstance(row["result"], dict) else {}
if row["status"] != "completed":
    print("error: %s" % row["error"])
for k in ("version", "text", "stdout", "session_id", "bytes_written", "output", "status", "message"):
    if r.get(k) not in (None, ""):
        print("%s: %s" % (k, json.dumps(r[k])[:200]))
' <<<"$row" | sed 's/^/        /'
  [ "$status" = completed ] || FAILED=$((FAILED + 1))
  LAST_RESULT=$row
}

say "Running jobs (queued in the backend as Panorama would; the gateway claims and runs them)"
run_job "diagnostic" diagnostic '{}'
run_job "model_run (fake claude)" model_run \
  '{"provider":"claude","model":"claude-sonnet-4-5","output_format":"text","prompt":"Say hello to the demo."}'
run_job "shell_exec" shell_exec \
  "{\"resource_id\":\"$RID\",\"command\":\"echo hello from \$(uname -s); id -un\"}"
run_job "shell_session open" shell_session "{\"action\":\"open\",\"resource_id\":\"$RID\"}"
SID=$(json 'v[0]["result"]["session_id"]' <<<"$LAST_RESULT" 2>/dev/null || echo none)
run_job "shell_session write" shell_session \
  "{\"action\":\"write\",\"resource_id\":\"$RID\",\"session_id\":\"$SID\",\"input\":\"cd /tmp && echo session in \$PWD\\n\"}"
run_job "shell_session read" shell_session \
  "{\"action\":\"read\",\"resource_id\":\"$RID\",\"session_id\":\"$SID\",\"cursor\":0,\"wait_ms\":2000}"
run_job "shell_session close" shell_session \
  "{\"action\":\"close\",\"resource_id\":\"$RID\",\"session_id\":\"$SID\"}"

say "panorama-gateway status"
"$GW" status || true

say "Last lines of the gateway's log (panorama-gateway logs --lines 8 --no-follow)"
"$GW" logs --lines 8 --no-follow || true

if [ "$FAILED" -ne 0 ]; then
  die "$FAILED job(s) did not complete"
fi
say "Every job completed."

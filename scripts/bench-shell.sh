#!/usr/bin/env bash
# Remote shell keystroke round trip through the backend (release builds, loopback):
# a `shell_session` write job typing `echo …`, then read jobs from the write's cursor until the
# echoed command's output is there; timed from the write's INSERT to the completion of the
# read that saw it, as a caller polling the job rows sees it. p50/p99 over ROUNDS rounds (200).
# Both jobs read machine control at the moment of use (the write asks the backend for the team
# toggle), so the figure includes that request.
#
# Usage: scripts/bench-shell.sh [--no-build]
# Knobs (env): ROUNDS (200), POLL_MS (1: pause between job-row polls).
# Needs python3. Touches nothing outside a temp directory (HOME is redirected there).
set -euo pipefail

BUILD=1
for a in "$@"; do
  case "$a" in
    --no-build) BUILD=0 ;;
    *) echo "usage: $0 [--no-build]" >&2; exit 2 ;;
  esac
done
NAME=bench-shell
. "$(dirname "$0")/lib/bench-prelude.sh"
echo "machine: $(nproc) cores, $(uname -sr)" >&2

python3 - "$GW" "$BE" "$WORK" <<'PY'
import http.client, json, os, signal, subprocess, sys, time
sys.path.insert(0, os.environ["BENCH_LIB"])
import benchlib  # noqa: E402

gw_bin, be_bin, work = sys.argv[1:4]
ROUNDS = int(os.environ.get("ROUNDS", "200"))
POLL = float(os.environ.get("POLL_MS", "1")) / 1000.0
procs = []

def cleanup():
    benchlib.stop_all(procs)

try:
    url, anon, svc, host = benchlib.start_backend(be_bin, work, procs)
    c = http.client.HTTPConnection(host, timeout=30)

    def call(method, path, body=None):
        h = {"apikey": svc, "Authorization": "Bearer " + svc,
             "Content-Type": "application/json", "Prefer": "return=representation"}
        c.request(method, path, None if body is None else json.dumps(body), h)
        r = c.getresponse()
        data = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path} -> {r.status} {data[:200]!r}")
        return json.loads(data) if data else None

    pc = call("POST", "/rest/v1/rpc/admin_create_pairing_code", {})
    team = pc["team_id"]
    home = os.path.join(work, "home"); os.makedirs(home)
    cfg = os.path.join(work, "cfg")
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("PANORAMA_") or k.startswith("SUPABASE_"))}
    env.update(HOME=home, SUPABASE_URL=url, SUPABASE_ANON_KEY=anon,
               PANORAMA_GATEWAY_AUTO_RESTART="0")
    subprocess.run([gw_bin, "--config-dir", cfg, "pair", pc["code"], "--no-start",
                    "--device-name", "bench"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([gw_bin, "--config-dir", cfg, "full-control", "enable"], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    gid = json.load(open(os.path.join(cfg, "gateway.json")))["gatewayId"]
    call("PATCH", f"/rest/v1/team_gateways?id=eq.{gid}", {"full_control_enabled": True})
    rid = call("POST", "/rest/v1/team_resources",
               {"team_id": team, "resource_type": "remote_shell", "name": "bench",
                "max_access_level": "editor",
                "metadata": {"gateway_id": gid, "full_control": True}})[0]["id"]
    gw = subprocess.Popen([gw_bin, "--config-dir", cfg, "start", "--foreground"], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(gw)

    def job(payload, timeout=60):
        """Inserts a shell_session job and polls its row; returns (row, seconds)."""
        t0 = time.perf_counter()
        jid = call("POST", "/rest/v1/gateway_jobs",
                   {"team_id": team, "gateway_id": gid, "job_type": "shell_session",
                    "payload": payload})[0]["id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            row = call("GET", f"/rest/v1/gateway_jobs?select=status,result,error&id=eq.{jid}")[0]
            if row["status"] in ("completed", "failed", "cancelled"):
                return row, time.perf_counter() - t0
            time.sleep(POLL)
        sys.exit(f"job {payload} did not finish")

    # The daemon reads the team toggle after its first heartbeat; open retries until then.
    deadline = time.time() + 60
    while True:
        row, _ = job({"action": "open", "resource_id": rid})
        if row["status"] == "completed":
            break
        if time.time() > deadline:
            sys.exit(f"open failed: {row}")
        time.sleep(0.2)
    sid = row["result"]["session_id"]

    def round_trip(i):
        t0 = time.perf_counter()
        needle = f"r{i}."
        w, _ = job({"action": "write", "resource_id": rid, "session_id": sid,
                    "input": f"echo r\"\"{i}.\n"})
        if w["status"] != "completed" or not w["result"]["success"]:
            sys.exit(f"write failed: {w}")
        cursor, seen, reads = w["result"]["cursor"], "", 0
        while needle not in seen:
            r, _ = job({"action": "read", "resource_id": rid, "session_id": sid,
                        "cursor": cursor, "wait_ms": 2000})
            if r["status"] != "completed":
                sys.exit(f"read failed: {r}")
            seen += r["result"]["output"]
            cursor = r["result"]["next_cursor"]
            reads += 1
        return time.perf_counter() - t0, reads

    for i in range(10):   # warm-up: prompt drawn, connections open
        round_trip(-1 - i)
    print(f"keystroke round trip: {ROUNDS} rounds ...", file=sys.stderr)
    times, reads = [], []
    for i in range(ROUNDS):
        t, n = round_trip(i)
        times.append(t * 1000); reads.append(n)
    times.sort()
    def pct(a, p):
        return a[min(len(a) - 1, int(round(p / 100 * (len(a) - 1))))]
    print(f"keystroke round trip (write `echo` + read that sees its output, via the backend):")
    print(f"  p50 {pct(times,50):.1f} ms  p99 {pct(times,99):.1f} ms  max {times[-1]:.1f} ms  (n={len(times)}, poll {POLL*1000:.0f} ms)")
    print(f"  read jobs per round: mean {sum(reads)/len(reads):.2f}, max {max(reads)}")
    job({"action": "close", "resource_id": rid, "session_id": sid})
    gw.send_signal(signal.SIGTERM)
    gw.wait(60)
finally:
    cleanup()
PY

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
NAME=bench-shell
. "$(dirname "$0")/lib/bench-prelude.sh"

python3 - <<'PY'
import os, signal, subprocess, sys, time
import benchlib

gw_bin, be_bin, work = benchlib.paths()
ROUNDS = int(os.environ.get("ROUNDS", "200"))
POLL = float(os.environ.get("POLL_MS", "1")) / 1000.0
procs = []

def cleanup():
    benchlib.stop_all(procs)

try:
    url, anon, svc, host = benchlib.start_backend(be_bin, work, procs)
    admin = benchlib.Admin(host, svc, timeout=30)
    call = admin.call
    p = benchlib.pair(gw_bin, admin, url, anon, work)
    team, cfg, gid = p.team, p.cfg, p.gid
    rid = benchlib.enable_remote_shell(gw_bin, admin, p)
    gw = subprocess.Popen([gw_bin, "--config-dir", cfg, "start", "--foreground"], env=p.env,
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

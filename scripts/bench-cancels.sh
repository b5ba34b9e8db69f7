#!/usr/bin/env bash
# Benchmark of subagent_cancel floods (issue 8 point 3): N cancel jobs against a slow backend
# (every REST call delayed), the daemon's peak thread count and peak RSS while they run, and the
# time until all are done. Before the fix, 3,000 cancels gave 3,027 threads and 268 MB; the
# cancel pool keeps both flat (threads = the idle count; RSS within a few MiB of idle).
#
# Usage: scripts/bench-cancels.sh [--no-build]
# Knobs (env): CANCELS (3000), DELAY_MS (20: added to each REST call), SAME_EVERY (3: every
#              n-th cancel aims at one shared run, coalesced), BIN_DIR (target/release).
# Needs python3. Touches nothing outside a temp directory (HOME is redirected there).
set -euo pipefail
NAME=bench-cancels
. "$(dirname "$0")/lib/bench-prelude.sh"

python3 - <<'PY'
import json, os, subprocess, sys, time, uuid
import benchlib

gw_bin, be_bin, work = benchlib.paths()
N = int(os.environ.get("CANCELS", "3000"))
DELAY = int(os.environ.get("DELAY_MS", "20"))
SAME = int(os.environ.get("SAME_EVERY", "3"))
procs = []

def cleanup():
    benchlib.stop_all(procs)

try:
    url, anon, svc, host = benchlib.start_backend(be_bin, work, procs)
    admin = benchlib.Admin(host, svc, timeout=120)
    call = admin.call
    p = benchlib.pair(gw_bin, admin, url, anon, work,
                      env_extra={"PANORAMA_GATEWAY_RECONCILE_MS": "500"})
    team, cfg, gid = p.team, p.cfg, p.gid
    gw = subprocess.Popen([gw_bin, "--config-dir", cfg, "start", "--foreground"], env=p.env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(gw)
    benchlib.wait_ready(admin, gid)

    def status(pid):
        out = {}
        for line in open(f"/proc/{pid}/status"):
            k, _, v = line.partition(":")
            out[k] = v.strip()
        return out
    idle = status(gw.pid)
    idle_threads, idle_rss = int(idle["Threads"]), int(idle["VmRSS"].split()[0])
    shared_run = str(uuid.uuid4())
    rows = []
    for i in range(N):
        sid = shared_run if (SAME and i % SAME == 0) else str(uuid.uuid4())
        rows.append({"team_id": team, "gateway_id": gid, "job_type": "subagent_cancel",
                     "payload": {"subagent_id": sid, "run_id": shared_run}})
    # Delay only the gateway's calls: the fault applies to every REST call, inserts included,
    # so insert first, then slow the backend down.
    for k in range(0, N, 500):
        call("POST", "/rest/v1/gateway_jobs", rows[k:k + 500])
    t0 = time.time()
    try:
        call("POST", "/admin/v1/faults", {"delay_next": {"count": 10 * N, "ms": DELAY, "paths": "rest"}})
    except RuntimeError as e:
        print(f"could not slow the backend down ({e}); measuring at full speed", file=sys.stderr)
    peak_threads, peak_rss = idle_threads, idle_rss
    done = 0
    last_check = 0
    while True:
        s = status(gw.pid)
        peak_threads = max(peak_threads, int(s["Threads"]))
        peak_rss = max(peak_rss, int(s["VmRSS"].split()[0]))
        if time.time() - last_check > 2:
            last_check = time.time()
            got = call("GET", f"/rest/v1/gateway_jobs?select=id&gateway_id=eq.{gid}&status=in.(completed,failed,cancelled)")
            done = len(got)
            if done >= N:
                break
            if time.time() - t0 > 3600:
                sys.exit(f"only {done}/{N} cancel jobs done after an hour")
        time.sleep(0.05)
    secs = time.time() - t0
    print(json.dumps({"cancels": N, "delay_ms": DELAY, "idle_threads": idle_threads,
                      "peak_threads": peak_threads, "idle_rss_kib": idle_rss,
                      "peak_rss_kib": peak_rss, "seconds_to_all_done": round(secs, 1)}))
finally:
    cleanup()
PY

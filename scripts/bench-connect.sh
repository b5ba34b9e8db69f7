#!/usr/bin/env bash
# Benchmark of the connected daemon against panorama-local-backend (release builds, loopback):
#   1. idle daemon: RSS and CPU over an idle window (default 60 s) after it reports ready;
#   2. dispatch latency INSERT -> handler start, p50/p99 over N jobs inserted one at a time
#      (handler start = the worker's `job started ... t_ms=` log line; INSERT = created_at);
#   3. throughput: N jobs inserted back to back, jobs/s from the first INSERT to the last
#      completion, with the no-op handler (an unknown job type fails at once).
# Targets (issue 4): RSS <= 6 MiB, p99 <= 5 ms, idle CPU ~0.
#
# Usage: scripts/bench-connect.sh [--no-build]
# Knobs (env): IDLE_SECS (60), JOBS (1000), GAP_MS (3: pause between latency inserts),
#              PANORAMA_GATEWAY_CONCURRENCY (10).
# Needs python3. Touches nothing outside a temp directory (HOME is redirected there).
set -euo pipefail
NAME=bench-connect
. "$(dirname "$0")/lib/bench-prelude.sh"

python3 - <<'PY'
import os, signal, subprocess, sys, time, threading
import benchlib

gw_bin, be_bin, work = benchlib.paths()
IDLE = int(os.environ.get("IDLE_SECS", "60"))
N = int(os.environ.get("JOBS", "1000"))
GAP = float(os.environ.get("GAP_MS", "3")) / 1000.0
procs = []

def cleanup():
    benchlib.stop_all(procs)

try:
    url, anon, svc, host = benchlib.start_backend(be_bin, work, procs)

    def Admin():
        return benchlib.Admin(host, svc, timeout=30)

    admin = Admin()
    extra = {k: os.environ[k] for k in ("PANORAMA_GATEWAY_CONCURRENCY",) if k in os.environ}
    p = benchlib.pair(gw_bin, admin, url, anon, work, env_extra=extra)
    team, cfg, gid = p.team, p.cfg, p.gid
    gw = subprocess.Popen([gw_bin, "--config-dir", cfg, "start", "--foreground"], env=p.env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(gw)
    benchlib.wait_ready(admin, gid)

    # 1. idle
    tck = os.sysconf("SC_CLK_TCK")
    def cpu_ticks(pid):
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    def rss_kib(pid):
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    def threads(pid):
        return len(os.listdir(f"/proc/{pid}/task"))
    print(f"idle window: {IDLE} s ...", file=sys.stderr)
    c0, t0 = cpu_ticks(gw.pid), time.time()
    time.sleep(IDLE)
    c1, t1 = cpu_ticks(gw.pid), time.time()
    idle_rss = rss_kib(gw.pid)
    idle_cpu = (c1 - c0) / tck / (t1 - t0) * 100

    # 2. latency: one insert at a time
    def ms(ts):
        # 2026-11-25T17:19:58.142Z or +00:00 offsets
        from datetime import datetime
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000
    def wait_done(ids, timeout=120):
        deadline = time.time() + timeout
        pending = set(ids)
        rows = {}
        while pending and time.time() < deadline:
            got = admin.call("GET", f"/rest/v1/gateway_jobs?select=id,status,created_at,started_at,completed_at&gateway_id=eq.{gid}&status=in.(completed,failed,cancelled)")
            for r in got:
                if r["id"] in pending:
                    pending.discard(r["id"]); rows[r["id"]] = r
            if pending:
                time.sleep(0.1)
        if pending:
            sys.exit(f"{len(pending)} jobs did not finish")
        return rows
    print(f"latency: {N} jobs, one at a time ({GAP*1000:.0f} ms apart) ...", file=sys.stderr)
    ids = []
    for i in range(N):
        r = admin.call("POST", "/rest/v1/gateway_jobs",
                       {"team_id": team, "gateway_id": gid, "job_type": "bench_noop", "payload": {"i": i}})
        ids.append(r[0]["id"])
        time.sleep(GAP)
    rows = wait_done(ids)
    starts = {}
    for line in open(os.path.join(cfg, "gateway.log")):
        if "job started id=" in line:
            parts = dict(p.split("=", 1) for p in line.split() if "=" in p)
            starts[parts.get("id")] = int(parts.get("t_ms", "0"))
    lat = sorted(starts[i] - ms(rows[i]["created_at"]) for i in ids if i in starts)
    claim = sorted(ms(rows[i]["started_at"]) - ms(rows[i]["created_at"]) for i in ids)
    def pct(a, p):
        return a[min(len(a) - 1, int(round(p / 100 * (len(a) - 1))))]
    busy_rss = rss_kib(gw.pid)

    # 3. throughput: back-to-back inserts from 4 connections
    print(f"throughput: {N} jobs back to back ...", file=sys.stderr)
    ids2, lock = [], threading.Lock()
    def inserter(k):
        a = Admin()
        for i in range(k, N, 4):
            r = a.call("POST", "/rest/v1/gateway_jobs",
                       {"team_id": team, "gateway_id": gid, "job_type": "bench_noop", "payload": {"i": i}})
            with lock:
                ids2.append(r[0]["id"])
    ts = [threading.Thread(target=inserter, args=(k,)) for k in range(4)]
    for t in ts: t.start()
    for t in ts: t.join()
    rows2 = wait_done(ids2)
    first = min(ms(r["created_at"]) for r in rows2.values())
    last = max(ms(r["completed_at"]) for r in rows2.values())
    jps = len(rows2) / ((last - first) / 1000)
    peak_rss = max(busy_rss, rss_kib(gw.pid))
    # Exactly once: each job started once.
    counts = {}
    for line in open(os.path.join(cfg, "gateway.log")):
        if "job started id=" in line:
            jid = line.split("job started id=")[1].split()[0]
            counts[jid] = counts.get(jid, 0) + 1
    dup = sum(1 for v in counts.values() if v > 1)

    print(f"idle RSS after {IDLE} s:      {idle_rss/1024:.2f} MiB  (target <= 6 MiB)  threads={threads(gw.pid)}")
    print(f"idle CPU over {IDLE} s:       {idle_cpu:.3f} %  ({c1-c0} ticks)")
    print(f"dispatch INSERT->handler:  p50 {pct(lat,50):.0f} ms  p99 {pct(lat,99):.0f} ms  max {lat[-1]:.0f} ms  (n={len(lat)}, target p99 <= 5 ms)")
    print(f"INSERT->claim started_at:  p50 {pct(claim,50):.0f} ms  p99 {pct(claim,99):.0f} ms")
    print(f"throughput (no-op):        {jps:.0f} jobs/s over {len(rows2)} jobs")
    print(f"RSS under load:            {peak_rss/1024:.2f} MiB")
    print(f"jobs started more than once: {dup}")
    gw.send_signal(signal.SIGTERM)
    gw.wait(60)
    print(f"gateway exit code on SIGTERM: {gw.returncode}")
finally:
    cleanup()
PY

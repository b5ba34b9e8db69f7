#!/usr/bin/env bash
# Lifecycle benchmark of the daemon against panorama-local-backend (release builds, loopback,
# the fake CLIs of tests/fixtures/bin), optionally side by side with the reference Node gateway
# (npm @panorama-ai/gateway 2.32.x) against the same backend, measured interleaved:
#   start -> ready    `start --foreground` until team_gateways.status = ready (polled)
#   SIGTERM -> exit   nothing in flight, the offline heartbeat included
#   stop command      `panorama-gateway stop` wall time (it returns when the process is gone)
#   shell_exec        `true` round trip, INSERT -> row completed, seen by polling the row
#   diagnostic        round trip, same
#   burst             N diagnostics inserted at once from 4 connections -> last one completed
#   memory            idle RSS; peak RSS while M model_runs flood past the 5 MB output cap;
#                     RSS sampled for AFTER_SECS after the last one completed
# Medians over REPS repetitions (round trips: p50/p99 over all jobs), printed as a table with
# the ratio ours/reference (below 1 is better).
#
# Usage: scripts/bench-lifecycle.sh [--no-build] [--no-reference]
# Knobs (env): REPS (7), RT_JOBS (40 round trips per kind per rep), BURST (500),
#   FLOOD_JOBS (10), FLOOD_BYTES (6000000), AFTER_SECS (10),
#   REFERENCE=<path to the reference's dist/index.js> (default: the npm package, installed once
#   into target/bench-reference and reused; delete that directory to install it again),
#   BEFORE_BIN=<an older panorama-gateway binary> measured interleaved too (column "before"),
#   RTT_MS (0): the backend delays the gateway's job PATCHes and remote shell reads by this
#   much during the round trips, as a backend that far away would (the local one is loopback).
# Needs python3; node + npm for the reference. Touches nothing outside a temp directory and
# target/bench-reference.
#
# The full run of issue 14 (10-15 minutes; on a quiet machine, nothing else running):
#   scripts/bench-lifecycle.sh
# A short check of a change, ours only:
#   REPS=2 RT_JOBS=100 BURST=50 FLOOD_JOBS=2 AFTER_SECS=2 scripts/bench-lifecycle.sh --no-reference
set -euo pipefail
NAME=bench-lifecycle
REF=1
USAGE_EXTRA="[--no-reference]"
bench_option() {
  case "$1" in
    --no-reference) REF=0 ;;
    *) return 1 ;;
  esac
}
. "$(dirname "$0")/lib/bench-prelude.sh"
REF_JS=""
if [ "$REF" = 1 ]; then
  if [ -n "${REFERENCE:-}" ]; then
    REF_JS="$REFERENCE"
  else
    REF_DIR="$ROOT/target/bench-reference"
    REF_JS="$REF_DIR/node_modules/@panorama-ai/gateway/dist/index.js"
    if [ ! -f "$REF_JS" ]; then
      command -v npm >/dev/null || { echo "npm is needed for the reference (or pass --no-reference)" >&2; exit 1; }
      echo "installing the reference gateway (npm @panorama-ai/gateway@2.32) into $REF_DIR..." >&2
      mkdir -p "$REF_DIR"
      # Its own package.json, so npm installs here and not beside a package.json further up.
      echo '{"private": true}' > "$REF_DIR/package.json"
      (cd "$REF_DIR" && npm install --silent --no-audit --no-fund @panorama-ai/gateway@2.32 >/dev/null 2>&1) \
        || { echo "npm install @panorama-ai/gateway@2.32 failed (offline? pass --no-reference)" >&2; exit 1; }
    fi
  fi
  echo "reference: $REF_JS (version $(node -p 'require(process.argv[1]).version' "${REF_JS%/dist/index.js}/package.json" 2>/dev/null || echo unknown))" >&2
  [ -f "$REF_JS" ] || { echo "reference gateway not found at $REF_JS" >&2; exit 1; }
  # Node 20 has WebSocket (which the reference's realtime client needs) behind a flag.
  NODE_FLAGS=""
  if node --experimental-websocket -e 'if (typeof WebSocket !== "function") process.exit(1)' 2>/dev/null \
     && ! node -e 'if (typeof WebSocket !== "function") process.exit(1)' 2>/dev/null; then
    NODE_FLAGS="--experimental-websocket"
  fi
  export NODE_FLAGS
fi

python3 - "$ROOT/tests/fixtures/bin" "$REF_JS" "${BEFORE_BIN:-}" <<'PY'
import json, os, signal, subprocess, sys, time, statistics, threading
import benchlib

gw_bin, be_bin, work = benchlib.paths()
fixtures, ref_js, before_bin = sys.argv[1:4]
REPS = int(os.environ.get("REPS", "7"))
RT = int(os.environ.get("RT_JOBS", "40"))
BURST = int(os.environ.get("BURST", "500"))
FLOOD_JOBS = int(os.environ.get("FLOOD_JOBS", "10"))
FLOOD_BYTES = int(os.environ.get("FLOOD_BYTES", "6000000"))
AFTER = float(os.environ.get("AFTER_SECS", "10"))
RTT_MS = int(os.environ.get("RTT_MS", "0"))
procs = []

def cleanup():
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                p.kill()
            p.wait()

def med(a):
    return statistics.median(a) if a else float("nan")

def pct(a, p):
    a = sorted(a)
    return a[min(len(a) - 1, int(round(p / 100 * (len(a) - 1))))] if a else float("nan")

def rss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None

try:
    url, anon, svc, host = benchlib.start_backend(be_bin, work, procs)

    def Admin():
        return benchlib.Admin(host, svc, timeout=60)

    admin = Admin()

    # The fake CLIs behind the wrapper the e2e tests use: `@set:FAKE_CLI_X=v@` tokens in the
    # prompt (last argument) become the fake's environment.
    bindir = os.path.join(work, "bin"); os.makedirs(bindir)
    for name in ("claude", "codex", "gemini"):
        p = os.path.join(bindir, name)
        with open(p, "w") as f:
            f.write(f"""#!/bin/sh
last=
for a in "$@"; do last=$a; done
rest=$last
while :; do
  case $rest in *@set:*) ;; *) break ;; esac
  rest=${{rest#*@set:}}
  kv=${{rest%%@*}}
  case $kv in FAKE_CLI_*=*) export "$kv" ;; esac
done
exec '{fixtures}/{name}' "$@"
""")
        os.chmod(p, 0o755)
    cli_args = ["--claude-cli", os.path.join(bindir, "claude"),
                "--codex-cli", os.path.join(bindir, "codex"),
                "--gemini-cli", os.path.join(bindir, "gemini")]

    class Gateway:
        def __init__(self, kind):
            self.kind = kind
            self.dir = os.path.join(work, kind); os.makedirs(self.dir)
            # Both read and write the same gateway.json: pair and enable machine control with ours.
            p = benchlib.pair(gw_bin, admin, url, anon, self.dir, device="bench-" + kind,
                              drop_prefixes=("PANORAMA_", "SUPABASE_", "FAKE_CLI_"))
            self.team, self.cfg, self.env, self.gid = p.team, p.cfg, p.env, p.gid
            self.rid = benchlib.enable_remote_shell(gw_bin, admin, p, name="box")
            bins = {"ours": gw_bin, "before": before_bin}
            self.cmd = ([bins[kind]] if kind in bins else (["node"] + os.environ.get("NODE_FLAGS", "").split() + [ref_js])) + ["--config-dir", self.cfg]
            self.p = None
            self.runs = 0
            self.rows = {}

        def start(self):
            admin.call("PATCH", f"/rest/v1/team_gateways?id=eq.{self.gid}", {"status": "offline"})
            self.runs += 1
            log = open(os.path.join(self.dir, f"daemon-{self.runs}.log"), "w")
            t0 = time.perf_counter()
            self.p = subprocess.Popen(self.cmd + ["start", "--foreground"] + cli_args, env=self.env,
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                      start_new_session=True)
            procs.append(self.p)
            a = Admin()
            deadline = time.time() + 60
            while time.time() < deadline:
                row = a.call("GET", f"/rest/v1/team_gateways?select=status&id=eq.{self.gid}")
                if row and row[0]["status"] == "ready":
                    return (time.perf_counter() - t0) * 1000
                if self.p.poll() is not None:
                    sys.exit(f"{self.kind} gateway exited during start-up (see {log.name})")
                time.sleep(0.002)
            sys.exit(f"the {self.kind} gateway did not become ready (see {log.name})")

        def sigterm(self):
            t0 = time.perf_counter()
            self.p.send_signal(signal.SIGTERM)
            self.p.wait(120)
            return (time.perf_counter() - t0) * 1000

        def stop_cmd(self):
            t0 = time.perf_counter()
            subprocess.run(self.cmd + ["stop"], env=self.env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=120)
            ms = (time.perf_counter() - t0) * 1000
            gone = self.p.poll() is not None
            self.p.wait(120)
            return ms if gone else float("nan")

        def round_trip(self, a, job_type, payload):
            t0 = time.perf_counter()
            r = a.call("POST", "/rest/v1/gateway_jobs",
                       {"team_id": self.team, "gateway_id": self.gid, "job_type": job_type, "payload": payload})
            jid = r[0]["id"]
            deadline = time.time() + 60
            while time.time() < deadline:
                row = a.call("GET", "/rest/v1/gateway_jobs?select=id,status,error,created_at,"
                                    f"started_at,completed_at&id=eq.{jid}")[0]
                if row["status"] in ("completed", "failed", "cancelled"):
                    if row["status"] != "completed":
                        sys.exit(f"{self.kind} {job_type} job {row['status']}: {row['error']}")
                    ms = (time.perf_counter() - t0) * 1000
                    row["seen_ms"] = ms
                    self.rows.setdefault(job_type, []).append(row)
                    return ms
                time.sleep(0.0005)
            sys.exit(f"{self.kind} {job_type} job did not finish")

        def insert_many(self, job_type, payloads):
            ids, lock = [], threading.Lock()
            def ins(k):
                a = Admin()
                for i in range(k, len(payloads), 4):
                    r = a.call("POST", "/rest/v1/gateway_jobs",
                               {"team_id": self.team, "gateway_id": self.gid, "job_type": job_type,
                                "payload": payloads[i]})
                    with lock:
                        ids.append(r[0]["id"])
            ts = [threading.Thread(target=ins, args=(k,)) for k in range(4)]
            for t in ts: t.start()
            for t in ts: t.join()
            return ids

        def wait_all(self, ids, timeout=600, on_tick=None):
            a, pending = Admin(), set(ids)
            deadline = time.time() + timeout
            while pending and time.time() < deadline:
                got = a.call("GET", f"/rest/v1/gateway_jobs?select=id,status&gateway_id=eq.{self.gid}"
                                    "&status=in.(completed,failed,cancelled)")
                pending -= {r["id"] for r in got}
                if on_tick:
                    on_tick()
                if pending:
                    time.sleep(0.02)
            if pending:
                sys.exit(f"{self.kind}: {len(pending)} jobs did not finish")
            return time.perf_counter()

    kinds = ["ours"] + (["before"] if before_bin else []) + (["reference"] if ref_js else [])
    gws = {k: Gateway(k) for k in kinds}
    res = {k: {"ready": [], "sigterm": [], "stop": [], "shell": [], "diag": []} for k in kinds}

    for rep in range(REPS):
        order = kinds[rep % len(kinds):] + kinds[:rep % len(kinds)]
        print(f"rep {rep + 1}/{REPS} ...", file=sys.stderr)
        for k in order:
            g, r = gws[k], res[k]
            r["ready"].append(g.start())
            a = Admin()
            time.sleep(0.5)  # let start-up work after ready (probes, health) settle
            if RTT_MS:
                # A backend RTT_MS away: the gateway's job PATCHes and shell reads wait that long.
                for method, prefix in (("PATCH", "/rest/v1/gateway_jobs"),
                                       ("GET", "/rest/v1/team_gateways"),
                                       ("GET", "/rest/v1/team_resources")):
                    a.call("POST", "/admin/v1/faults", {"delay_next": {
                        "count": 1000000, "ms": RTT_MS, "paths": ["rest"], "method": method,
                        "path_prefix": prefix}})
            for i in range(RT):
                r["shell"].append(g.round_trip(a, "shell_exec", {"resource_id": g.rid, "command": "true",
                                                                 "timeout_ms": 20000}))
                r["diag"].append(g.round_trip(a, "diagnostic", {}))
            if RTT_MS:
                a.call("POST", "/admin/v1/faults", {"clear": True})
            time.sleep(0.3)
            r["sigterm"].append(g.sigterm())
        for k in order:
            g = gws[k]
            g.start()
            time.sleep(1.5)  # idle: start-up work (discovery, validation) done
            res[k]["stop"].append(g.stop_cmd())

    # The burst and the memory curve, once per gateway, one gateway at a time.
    for k in kinds:
        g, r = gws[k], res[k]
        print(f"{k}: burst of {BURST} diagnostics, then {FLOOD_JOBS} floods ...", file=sys.stderr)
        g.start()
        time.sleep(2)
        r["idle_rss"] = rss_kib(g.p.pid)
        t0 = time.perf_counter()
        ids = g.insert_many("diagnostic", [{} for _ in range(BURST)])
        r["burst"] = (g.wait_all(ids) - t0)
        time.sleep(2)
        idle = rss_kib(g.p.pid)
        r["idle_rss2"] = idle
        peak = [idle]
        def sample():
            v = rss_kib(g.p.pid)
            if v:
                peak[0] = max(peak[0], v)
        stop_sampler = threading.Event()
        def sampler():
            while not stop_sampler.is_set():
                sample(); time.sleep(0.01)
        th = threading.Thread(target=sampler); th.start()
        prompt = (f"Say hi. @set:FAKE_CLI_MODE=flood@ @set:FAKE_CLI_FLOOD_BYTES={FLOOD_BYTES}@")
        ids = g.insert_many("model_run", [{"model": "claude-sonnet-4-5", "output_format": "text",
                                           "prompt": prompt, "timeout_ms": 120000}
                                          for _ in range(FLOOD_JOBS)])
        done = g.wait_all(ids)
        curve, back = [], None
        while time.perf_counter() - done < AFTER:
            v = rss_kib(g.p.pid)
            curve.append((time.perf_counter() - done, v))
            if back is None and v <= idle + 2048:
                back = time.perf_counter() - done
            time.sleep(0.1)
        stop_sampler.set(); th.join()
        r["peak_rss"] = peak[0]
        r["after_rss"] = curve[-1][1]
        r["back_s"] = back
        r["curve"] = [(round(t, 1), v) for t, v in curve[:: max(1, len(curve) // 10)]]
        g.sigterm()

    has_ref = "reference" in kinds
    def row(name, f, unit, fmt="{:.1f}"):
        vals = {k: f(res[k]) for k in kinds}
        cells = [(fmt.format(vals[k]) + " " + unit) if vals[k] is not None else "-" for k in kinds]
        ratio = ""
        if has_ref and vals["ours"] is not None and vals["reference"]:
            ratio = f"{vals['ours'] / vals['reference']:.2f}x"
        print(f"| {name} | " + " | ".join(cells) + (f" | {ratio} |" if has_ref else " |"))

    # Where a shell_exec round trip goes (ours, and before): row timestamps (ms) and the
    # daemon's log lines.
    def shell_phases(kind="ours"):
        from datetime import datetime
        def ms(ts):
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000
        marks = {}
        for line in open(os.path.join(gws[kind].cfg, "gateway.log"), errors="replace"):
            for key, tag in (("started", "job started id="), ("exec", "shell_exec start job_id="),
                             ("done", "shell_exec done job_id=")):
                if tag in line:
                    jid = line.split(tag, 1)[1].split()[0]
                    marks.setdefault(jid, {})[key] = ms(line.split()[0])
                    if key == "done" and " run_us=" in line:
                        marks[jid]["run"] = int(line.split(" run_us=", 1)[1].split()[0]) / 1000
        ph = {k: [] for k in ("INSERT -> worker (delivery)", "claim", "resource check",
                              "login shell (bash -lc true)",
                              "of which spawn -> reaped (exec::run, us resolution)",
                              "result -> completed_at",
                              "completion PATCH -> seen by the client (approx.)")}
        for r in gws[kind].rows.get("shell_exec", []):
            m = marks.get(r["id"], {})
            if len(m) < 3:
                continue
            c, st, done = ms(r["created_at"]), ms(r["started_at"]), ms(r["completed_at"])
            ph["INSERT -> worker (delivery)"].append(st - c)
            ph["claim"].append(m["started"] - st)
            ph["resource check"].append(m["exec"] - m["started"])
            ph["login shell (bash -lc true)"].append(m["done"] - m["exec"])
            if "run" in m:
                ph["of which spawn -> reaped (exec::run, us resolution)"].append(m["run"])
            ph["result -> completed_at"].append(done - m["done"])
            ph["completion PATCH -> seen by the client (approx.)"].append(c + r["seen_ms"] - done)
        return {k: med(v) for k, v in ph.items()}

    def bare_login_shell(n=100):
        """`/bin/bash -lc true` started by the bench itself, with our gateway's environment:
        what the login shell costs without the gateway around it."""
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        env = dict(gws["ours"].env)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            subprocess.run([shell, "-lc", "true"], env=env, cwd="/", stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            times.append((time.perf_counter() - t0) * 1000)
        return med(times)

    mib = lambda kib: kib / 1024 if kib is not None else None
    print()
    print(f"reps={REPS}, round trips={RT} per kind per rep, burst={BURST}, floods={FLOOD_JOBS} x {FLOOD_BYTES} B")
    print("| metric | " + " | ".join(kinds) + (" | ours/reference |" if has_ref else " |"))
    print("|---|" + "---:|" * len(kinds) + ("---:|" if has_ref else ""))
    row("start -> ready (median)", lambda r: med(r["ready"]), "ms", "{:.0f}")
    row("SIGTERM -> exit, idle (median)", lambda r: med(r["sigterm"]), "ms", "{:.0f}")
    row("`stop` command, idle (median)", lambda r: med(r["stop"]), "ms", "{:.0f}")
    row("shell_exec `true` p50", lambda r: pct(r["shell"], 50), "ms")
    row("shell_exec `true` p99", lambda r: pct(r["shell"], 99), "ms")
    row("diagnostic p50", lambda r: pct(r["diag"], 50), "ms")
    row(f"{BURST} diagnostics at once", lambda r: r["burst"], "s", "{:.2f}")
    row("idle RSS", lambda r: mib(r["idle_rss"]), "MiB")
    row(f"{FLOOD_JOBS} model_runs to the 5 MB cap: peak RSS", lambda r: mib(r["peak_rss"]), "MiB")
    row(f"RSS {AFTER:.0f} s after that load", lambda r: mib(r["after_rss"]), "MiB")
    for k in kinds:
        r = res[k]
        b = f"{r['back_s']:.1f} s" if r["back_s"] is not None else f"not within {AFTER:.0f} s"
        print(f"{k}: back within 2 MiB of idle ({r['idle_rss2']/1024:.1f} MiB) after {b}; "
              f"curve (s, MiB): " + ", ".join(f"{t}:{v/1024:.1f}" for t, v in r["curve"]))
    for k in ("ours", "before"):
        if k not in gws:
            continue
        print(f"{k}, shell_exec round trip by phase (medians, ms; log and row timestamps have 1 ms "
              "resolution, client clock for the last): " +
              ", ".join(f"{p} {v:.1f}" for p, v in shell_phases(k).items()))
    print(f"bare `bash -lc true` started by the bench (median of 100): {bare_login_shell():.1f} ms")
    print("raw medians: " + json.dumps({k: {m: round(med(v), 1) for m, v in res[k].items()
                                            if isinstance(v, list) and v and not isinstance(v[0], tuple)}
                                        for k in kinds}))
finally:
    cleanup()
PY

"""Shared by the Python parts of scripts/bench-*.sh: start the local backend, stop children."""
import json
import os
import signal
import subprocess


def start_backend(be_bin, work, procs):
    """Starts panorama-local-backend on a free loopback port (log in work/backend.log), adds it
    to procs, and returns (url, anon key, service-role key, host:port)."""
    be = subprocess.Popen([be_bin, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                          stderr=open(os.path.join(work, "backend.log"), "w"))
    procs.append(be)
    info = json.loads(be.stdout.readline())
    url = info["url"]
    return url, info["anon_key"], info["service_role_key"], url.split("//")[1]


def stop_all(procs):
    """SIGTERM to every child still running, SIGKILL after 30 s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

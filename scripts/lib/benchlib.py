"""Shared by the Python parts of scripts/bench-*.sh: start the local backend, talk to it as the
service role, pair a gateway against it, stop children."""
import http.client
import json
import os
import signal
import subprocess
import time


def paths():
    """(gateway binary, local backend binary, work directory) as bench-prelude.sh set them."""
    return os.environ["GW"], os.environ["BE"], os.environ["WORK"]


def start_backend(be_bin, work, procs):
    """Starts panorama-local-backend on a free loopback port (log in work/backend.log), adds it
    to procs, and returns (url, anon key, service-role key, host:port)."""
    be = subprocess.Popen([be_bin, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                          stderr=open(os.path.join(work, "backend.log"), "w"))
    procs.append(be)
    info = json.loads(be.stdout.readline())
    url = info["url"]
    return url, info["anon_key"], info["service_role_key"], url.split("//")[1]


class Admin:
    """One keep-alive connection to the local backend as the service role."""

    def __init__(self, host, key, timeout=60):
        self.c = http.client.HTTPConnection(host, timeout=timeout)
        self.key = key

    def call(self, method, path, body=None):
        """The decoded JSON reply (None when empty); RuntimeError on a status >= 300."""
        h = {"apikey": self.key, "Authorization": "Bearer " + self.key,
             "Content-Type": "application/json", "Prefer": "return=representation"}
        self.c.request(method, path, None if body is None else json.dumps(body), h)
        r = self.c.getresponse()
        data = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path} -> {r.status} {data[:200]!r}")
        return json.loads(data) if data else None


class Paired:
    """A gateway paired against the local backend: its team, config dir, environment, id."""

    def __init__(self, team, cfg, env, gid):
        self.team, self.cfg, self.env, self.gid = team, cfg, env, gid


def pair(gw_bin, admin, url, anon, base, device="bench", env_extra=None,
         drop_prefixes=("PANORAMA_", "SUPABASE_")):
    """Pairs a gateway (HOME and config dir under base, auto-restart off, env_extra added;
    variables starting with drop_prefixes are not passed on) without starting it."""
    pc = admin.call("POST", "/rest/v1/rpc/admin_create_pairing_code", {})
    home = os.path.join(base, "home")
    os.makedirs(home)
    cfg = os.path.join(base, "cfg")
    env = {k: v for k, v in os.environ.items() if not k.startswith(tuple(drop_prefixes))}
    env.update(HOME=home, SUPABASE_URL=url, SUPABASE_ANON_KEY=anon,
               PANORAMA_GATEWAY_AUTO_RESTART="0")
    env.update(env_extra or {})
    subprocess.run([gw_bin, "--config-dir", cfg, "pair", pc["code"], "--no-start",
                    "--device-name", device], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    gid = json.load(open(os.path.join(cfg, "gateway.json")))["gatewayId"]
    return Paired(pc["team_id"], cfg, env, gid)


def enable_remote_shell(gw_bin, admin, p, name="bench"):
    """Machine control on at both layers (install and team) and a remote_shell resource that
    targets the gateway; returns the resource id."""
    subprocess.run([gw_bin, "--config-dir", p.cfg, "full-control", "enable"], env=p.env,
                   check=True, stdout=subprocess.DEVNULL)
    admin.call("PATCH", f"/rest/v1/team_gateways?id=eq.{p.gid}", {"full_control_enabled": True})
    return admin.call("POST", "/rest/v1/team_resources",
                      {"team_id": p.team, "resource_type": "remote_shell", "name": name,
                       "max_access_level": "editor",
                       "metadata": {"gateway_id": p.gid, "full_control": True}})[0]["id"]


def wait_ready(admin, gid, timeout=30, step=0.05):
    """Polls team_gateways until the gateway says ready; SystemExit after timeout seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        row = admin.call("GET", f"/rest/v1/team_gateways?select=status&id=eq.{gid}")
        if row and row[0]["status"] == "ready":
            return
        time.sleep(step)
    raise SystemExit("the gateway did not become ready")


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

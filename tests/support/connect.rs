//! Shared harness of the `connect_*` integration tests: a local backend process, gateway
//! processes with a private config dir and HOME, admin helpers, and wait-for-condition polling.
//! Every process is killed by a Drop guard, also when a test fails.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use super::wait_for;

pub const GATEWAY: &str = env!("CARGO_BIN_EXE_panorama-gateway");
pub const BACKEND: &str = env!("CARGO_BIN_EXE_panorama-local-backend");

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!(
            "pgw-connect-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kill_and_wait(child: &mut Child, sig: i32, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// The local backend process.
pub struct Backend {
    child: Child,
    pub url: String,
    pub anon_key: String,
    pub service_key: String,
    agent: ureq::Agent,
    pub stderr_path: PathBuf,
    /// Injected 5xx the harness itself absorbed (so tests can tell what the gateway saw).
    pub harness_5xx: AtomicU64,
    /// The arguments after `--listen` (kept for [`Backend::restart`]).
    args: Vec<String>,
    _dir: TempDir,
}

impl Backend {
    pub fn start() -> Backend {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Backend {
        let dir = TempDir::new("backend");
        let stderr_path = dir.path().join("backend.log");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (child, v) = Self::spawn("127.0.0.1:0", &args, &stderr_path);
        let mut agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(20));
        if args.iter().any(|a| a == "--tls-cert") {
            agent = agent.tls_config(test_ca_config());
        }
        let agent = agent.build();
        Backend {
            child,
            url: v["url"].as_str().unwrap().to_string(),
            anon_key: v["anon_key"].as_str().unwrap().to_string(),
            service_key: v["service_role_key"].as_str().unwrap().to_string(),
            agent,
            stderr_path,
            harness_5xx: AtomicU64::new(0),
            args,
            _dir: dir,
        }
    }

    /// Starts the binary on `listen`; returns it and the JSON line it printed when ready.
    fn spawn(listen: &str, args: &[String], stderr_path: &Path) -> (Child, Value) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_path)
            .unwrap();
        let mut child = Command::new(BACKEND)
            .args(["--listen", listen])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("start panorama-local-backend");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("backend printed {line:?}: {e}"));
        (child, v)
    }

    /// Stops the backend (SIGTERM: a `--data` file is written) and starts it again on the same
    /// address with the same arguments; with `--data`, on the same rows, keys and tokens.
    pub fn restart(&mut self) {
        kill_and_wait(&mut self.child, libc::SIGTERM, Duration::from_secs(10));
        let addr = self.url.trim_start_matches("http://").to_string();
        let (child, v) = Self::spawn(&addr, &self.args, &self.stderr_path);
        self.child = child;
        assert_eq!(v["url"].as_str(), Some(self.url.as_str()));
        self.anon_key = v["anon_key"].as_str().unwrap().to_string();
        self.service_key = v["service_role_key"].as_str().unwrap().to_string();
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .agent
            .request(method, &format!("{}{}", self.url, path))
            .set("apikey", &self.service_key)
            .set("Authorization", &format!("Bearer {}", self.service_key))
            .set("Content-Type", "application/json")
            .set("Prefer", "return=representation");
        if method == "GET" {
            r = r.set("Accept-Profile", "public");
        }
        let resp = match body {
            Some(b) => r.send_string(&b.to_string()),
            None => r.call(),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("admin call {method} {path} failed: {e}"),
        };
        let status = resp.status();
        let mut s = String::new();
        resp.into_reader().read_to_string(&mut s).unwrap();
        (status, serde_json::from_str(&s).unwrap_or(Value::String(s)))
    }

    /// An admin call; 5xx (injected faults apply to the harness too) are retried.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let mut tries = 0;
        loop {
            let (st, v) = self.call(method, path, body.clone());
            if st >= 500 && tries < 200 {
                tries += 1;
                self.harness_5xx.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            assert!((200..300).contains(&st), "{method} {path} → {st}: {v}");
            return v;
        }
    }

    /// A fresh pairing code (new team unless `team_id`).
    pub fn pairing_code(&self, team_id: Option<&str>) -> (String, String) {
        let body = match team_id {
            Some(t) => json!({ "team_id": t }),
            None => json!({}),
        };
        let v = self.admin("POST", "/rest/v1/rpc/admin_create_pairing_code", Some(body));
        (
            v["code"].as_str().unwrap().to_string(),
            v["team_id"].as_str().unwrap().to_string(),
        )
    }

    pub fn insert_job(&self, team: &str, gateway: &str, job_type: &str, payload: Value) -> String {
        let v = self.admin(
            "POST",
            "/rest/v1/gateway_jobs",
            Some(json!({"team_id": team, "gateway_id": gateway, "job_type": job_type, "payload": payload})),
        );
        let row = if v.is_array() { v[0].clone() } else { v };
        row["id"].as_str().unwrap().to_string()
    }

    pub fn insert_row(&self, table: &str, row: Value) -> (u16, Value) {
        self.call("POST", &format!("/rest/v1/{table}"), Some(row))
    }

    pub fn jobs(&self, gateway: &str) -> Vec<Value> {
        let v = self.admin(
            "GET",
            &format!("/rest/v1/gateway_jobs?select=*&gateway_id=eq.{gateway}&order=created_at.asc"),
            None,
        );
        v.as_array().cloned().unwrap_or_default()
    }

    pub fn job(&self, id: &str) -> Value {
        let v = self.admin(
            "GET",
            &format!("/rest/v1/gateway_jobs?select=*&id=eq.{id}"),
            None,
        );
        v[0].clone()
    }

    pub fn gateway_row(&self, gateway: &str) -> Value {
        let v = self.admin(
            "GET",
            &format!("/rest/v1/team_gateways?select=*&id=eq.{gateway}"),
            None,
        );
        v[0].clone()
    }

    pub fn events(&self, gateway: &str) -> Vec<Value> {
        let v = self.admin(
            "GET",
            &format!(
                "/rest/v1/gateway_events?select=*&gateway_id=eq.{gateway}&order=created_at.asc"
            ),
            None,
        );
        v.as_array().cloned().unwrap_or_default()
    }

    pub fn fault(&self, body: Value) -> Value {
        self.admin("POST", "/admin/v1/faults", Some(body))
    }

    /// Inserts a `team_resources` row named `box` with the service role; returns its id.
    pub fn insert_team_resource(
        &self,
        team: &str,
        resource_type: &str,
        access: &str,
        metadata: Value,
    ) -> String {
        let (st, v) = self.insert_row(
            "team_resources",
            json!({"team_id": team, "resource_type": resource_type, "name": "box",
                   "max_access_level": access, "metadata": metadata}),
        );
        assert!((200..300).contains(&st), "insert team_resources: {st} {v}");
        let row = if v.is_array() { v[0].clone() } else { v };
        row["id"].as_str().unwrap().to_string()
    }

    /// Sets `team_gateways.full_control_enabled` of `gateway` with the service role.
    pub fn set_team_full_control(&self, gateway: &str, on: bool) {
        self.admin(
            "PATCH",
            &format!("/rest/v1/team_gateways?id=eq.{gateway}"),
            Some(json!({ "full_control_enabled": on })),
        );
    }

    pub fn stats(&self) -> Value {
        self.admin("GET", "/admin/v1/stats", None)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        kill_and_wait(&mut self.child, libc::SIGTERM, Duration::from_secs(3));
    }
}

/// One gateway install: a config dir and a HOME of its own.
pub struct Gateway {
    pub dir: TempDir,
    pub url: String,
    pub anon_key: String,
    pub env: Vec<(String, String)>,
    pub daemon: Option<Child>,
}

impl Gateway {
    pub fn new(b: &Backend) -> Gateway {
        Gateway {
            dir: TempDir::new("gw"),
            url: b.url.clone(),
            anon_key: b.anon_key.clone(),
            env: vec![
                ("PANORAMA_GATEWAY_AUTO_RESTART".into(), "0".into()),
                ("PANORAMA_GATEWAY_RECONCILE_MS".into(), "500".into()),
                ("PANORAMA_GATEWAY_HEARTBEAT_MS".into(), "1000".into()),
            ],
            daemon: None,
        }
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn set_env(&mut self, k: &str, v: &str) {
        self.env.retain(|(a, _)| a != k);
        self.env.push((k.into(), v.into()));
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let _ = std::fs::create_dir_all(self.home());
        let mut c = Command::new(GATEWAY);
        c.arg("--config-dir").arg(self.config_dir());
        c.args(args);
        for (k, _) in std::env::vars() {
            let proxy = k.to_ascii_uppercase().ends_with("_PROXY") || k == "SSL_CERT_FILE";
            if k.starts_with("PANORAMA_") || k.starts_with("SUPABASE_") || proxy {
                c.env_remove(k);
            }
        }
        c.env("HOME", self.home())
            .env("SUPABASE_URL", &self.url)
            .env("SUPABASE_ANON_KEY", &self.anon_key);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Runs a command to completion: (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("run gateway {args:?}: {e}"));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `pair <code> --no-start`, asserting success.
    pub fn pair(&self, code: &str) -> Value {
        let (rc, out, err) = self.run(&["pair", code, "--no-start", "--device-name", "test-box"]);
        assert_eq!(rc, 0, "pair failed: {out} {err}");
        self.state()
    }

    pub fn state(&self) -> Value {
        let text = std::fs::read_to_string(self.config_dir().join("gateway.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub fn gateway_id(&self) -> String {
        self.state()["gatewayId"].as_str().unwrap().to_string()
    }

    pub fn team_id(&self) -> String {
        self.state()["teamId"].as_str().unwrap().to_string()
    }

    /// `start --foreground` as a child; output goes to files in the temp dir.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// `start --foreground <extra>` (for example `--claude-cli <fake>`).
    pub fn start_with(&mut self, extra: &[&str]) {
        assert!(self.daemon.is_none());
        let out = std::fs::File::create(self.dir.path().join("daemon.out")).unwrap();
        let err = std::fs::File::create(self.dir.path().join("daemon.err")).unwrap();
        let child = self
            .command(&[&["start", "--foreground"], extra].concat())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start the gateway");
        self.daemon = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.daemon {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Waits for the daemon to exit; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.daemon.as_mut().expect("daemon running");
        let st = wait_for("the gateway to exit", timeout, || {
            child.try_wait().ok().flatten()
        });
        self.daemon = None;
        st
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn status_file(&self) -> Value {
        let p = self.config_dir().join("gateway.status.json");
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until the daemon has read the team's machine-control toggle as `on`.
    pub fn wait_team_full_control(&self, on: bool) {
        wait_for(
            "the daemon to read the team toggle",
            Duration::from_secs(20),
            || (self.status_file()["team_full_control"] == json!(on)).then_some(()),
        );
    }

    /// Waits (for `what`) until the status file shows `connection` = `state`; returns it.
    pub fn wait_connection(&self, what: &str, state: &str, timeout: Duration) -> Value {
        wait_for(what, timeout, || {
            let s = self.status_file();
            (s["connection"] == state).then_some(s)
        })
    }

    pub fn log(&self) -> String {
        let mut s =
            std::fs::read_to_string(self.config_dir().join("gateway.log")).unwrap_or_default();
        s.push_str(
            &std::fs::read_to_string(self.dir.path().join("daemon.err")).unwrap_or_default(),
        );
        s.push_str(
            &std::fs::read_to_string(self.dir.path().join("daemon.out")).unwrap_or_default(),
        );
        s
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // Kill the whole process group the test might have created children in, too.
            kill_and_wait(&mut c, libc::SIGKILL, Duration::from_secs(2));
        }
    }
}

/// Waits until the job reaches a terminal status; returns the row.
pub fn wait_job_done(b: &Backend, id: &str, timeout: Duration) -> Value {
    wait_for(&format!("job {id} to finish"), timeout, || {
        let j = b.job(id);
        matches!(
            j["status"].as_str(),
            Some("completed") | Some("failed") | Some("cancelled")
        )
        .then_some(j)
    })
}

/// A fake `claude` whose `--version` prints a version; once the test arms it (creates the
/// `armed` file: after start-up probing), it first writes its pid and sleeps.
pub fn fake_claude(dir: &Path, sleep_secs: u32) -> String {
    let script = dir.join(format!("claude-sleep-{sleep_secs}"));
    let pidfile = dir.join(format!("claude-{sleep_secs}.pid"));
    let armed = dir.join("armed");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then echo $$ > '{}'; sleep {sleep_secs}; fi\necho '9.9.9 (Claude Code)'\n",
            armed.display(),
            pidfile.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script.display().to_string()
}

/// A backend and a gateway paired to it with `env` set, running with a `fake_claude` that
/// sleeps `sleep_secs` once armed; returns `(backend, gateway, team, gateway id)` when the
/// backend shows the gateway ready. The fake is not armed yet (`arm_fake_claude`).
pub fn ready_gateway_with_fake_claude(
    env: &[(&str, &str)],
    sleep_secs: u32,
) -> (Backend, Gateway, String, String) {
    let b = Backend::start();
    let mut gw = Gateway::new(&b);
    for (k, v) in env {
        gw.set_env(k, v);
    }
    let (code, team) = b.pairing_code(None);
    gw.pair(&code);
    let gid = gw.gateway_id();
    let claude = fake_claude(gw.dir.path(), sleep_secs);
    gw.start_with(&["--claude-cli", &claude]);
    wait_for("ready", Duration::from_secs(20), || {
        (b.gateway_row(&gid)["status"] == "ready").then_some(())
    });
    // Discovery and the start-up health check run after ready and run the fake too: arming
    // it before they are over would make them the run a test waits for. Their heartbeat
    // carries the health; no request of theirs is left for a test's fault to hit.
    let log = gw.config_dir().join("gateway.log");
    wait_for(
        "the provider checks at start",
        Duration::from_secs(30),
        || {
            (std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("provider checks at start done")
                && b.gateway_row(&gid)["capabilities"]["providers"]["claude_code"]["health"]
                    ["status"]
                    .is_string())
            .then_some(())
        },
    );
    (b, gw, team, gid)
}

/// From now on the gateway's `fake_claude` records its pid and sleeps when run.
pub fn arm_fake_claude(gw: &Gateway) {
    std::fs::write(gw.dir.path().join("armed"), "").unwrap();
}

/// Waits (for `what`) until the armed `fake_claude` of `sleep_secs` runs; its pid.
pub fn wait_fake_claude_pid(gw: &Gateway, what: &str, sleep_secs: u32) -> i32 {
    let dir = gw.dir.path().to_path_buf();
    wait_for(what, Duration::from_secs(20), || read_pid(&dir, sleep_secs))
}

pub fn alive(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 }
}

pub fn read_pid(dir: &Path, sleep_secs: u32) -> Option<i32> {
    std::fs::read_to_string(dir.join(format!("claude-{sleep_secs}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The fake provider CLIs (tests/fixtures/bin).
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bin");

/// A directory holding only a `python3` link (the fakes' interpreter, without the pyenv shim).
pub fn python_dir(dir: &Path) -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs the fake CLIs");
    let exe = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let d = dir.join("pybin");
    std::fs::create_dir_all(&d).unwrap();
    std::os::unix::fs::symlink(exe, d.join("python3")).unwrap();
    d
}

/// Prepares a gateway to run the fake CLIs: creates `<root>/bin` (for the wrappers) and
/// `<root>/rec` (for their record files), and gives the daemon a `PATH` with only the fakes'
/// `python3` and the system dirs, and an empty `SHELL` (no login-shell probe for CLIs `pair`
/// does not find). Returns `(root, bin, rec)`.
pub fn fake_cli_dirs(gw: &mut Gateway) -> (PathBuf, PathBuf, PathBuf) {
    let root = gw.dir.path().to_path_buf();
    let bin = root.join("bin");
    let rec = root.join("rec");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&rec).unwrap();
    let py = python_dir(&root);
    gw.set_env("PATH", &format!("{}:/usr/bin:/bin", py.display()));
    gw.set_env("SHELL", "");
    (root, bin, rec)
}

/// A wrapper `dir/<name>` that applies the prompt's `@set:FAKE_CLI_*=value@` tokens (the
/// prompt is on standard input; the last argument is read too), with `help`: fixes how
/// `--help` answers (`full`, `old`, `fail`), and execs the fake with the same standard input.
pub fn fake_cli_wrapper(dir: &Path, name: &str, help: Option<&str>) -> PathBuf {
    let path = dir.join(name);
    let help = help
        .map(|h| format!("export FAKE_CLI_HELP='{h}'\n"))
        .unwrap_or_default();
    let script = format!(
        r#"#!/bin/sh
{help}last=
for a in "$@"; do last=$a; done
tmp=$(mktemp)
cat > "$tmp"
rest="$last $(cat "$tmp")"
exec 0<"$tmp"
rm -f "$tmp"
while :; do
  case $rest in *@set:*) ;; *) break ;; esac
  rest=${{rest#*@set:}}
  kv=${{rest%%@*}}
  case $kv in FAKE_CLI_*=*) export "$kv" ;; esac
done
exec '{FIXTURES}/{name}' "$@"
"#
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A prompt for the wrapped fakes: `text`, then the record file `rec/<tag>.jsonl` and `sets`
/// as `@set:` tokens.
pub fn fake_cli_prompt(rec: &Path, tag: &str, text: &str, sets: &[(&str, &str)]) -> String {
    let mut p = format!(
        "{text} @set:FAKE_CLI_RECORD={}@",
        rec.join(format!("{tag}.jsonl")).display()
    );
    for (k, v) in sets {
        p.push_str(&format!(" @set:{k}={v}@"));
    }
    p
}

/// The wrapped fakes' invocations recorded for `tag` in `rec/<tag>.jsonl` (one JSON object
/// each; none if the file does not exist).
pub fn fake_cli_records(rec: &Path, tag: &str) -> Vec<Value> {
    std::fs::read_to_string(rec.join(format!("{tag}.jsonl")))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `(pid, state, ppid)` of every process, from /proc.
pub fn processes() -> Vec<(i32, char, i32)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        v.push((pid, state, ppid));
    }
    v
}

/// `(state, ppid)` of `pid`, if it exists.
pub fn proc_entry(pid: i32) -> Option<(char, i32)> {
    processes()
        .into_iter()
        .find(|(p, _, _)| *p == pid)
        .map(|(_, s, pp)| (s, pp))
}

/// A fresh random UUID (the kernel's), for rows a test inserts.
pub fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("the kernel's uuid source")
        .trim()
        .to_string()
}

/// Gone, or a zombie (dead; whoever its parent is now reaps it).
pub fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// On a failed test the daemon may still have CLIs running (in their own process groups, so
/// killing the daemon alone would orphan them): SIGKILLs the running daemon's whole process
/// tree, and the process group of each descendant.
pub fn kill_daemon_tree(gw: &Gateway) {
    let Some(d) = gw.daemon.as_ref().map(|c| c.id() as i32) else {
        return;
    };
    let procs = processes();
    let mut tree = vec![d];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            procs
                .iter()
                .filter(|(_, _, pp)| *pp == parent)
                .map(|(p, _, _)| *p),
        );
        i += 1;
    }
    for p in tree {
        unsafe {
            libc::kill(p, libc::SIGKILL);
            if p != d {
                libc::kill(-p, libc::SIGKILL);
            }
        }
    }
}

/// The test certificates (tests/fixtures/tls): `ca.pem` signed `server.pem` (localhost,
/// 127.0.0.1); `other-ca.pem` signed nothing here.
pub fn tls_fixture(name: &str) -> String {
    format!("{}/tests/fixtures/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The local backend's TLS flags with the test server certificate.
pub fn tls_backend_args() -> Vec<String> {
    vec![
        "--tls-cert".into(),
        tls_fixture("server.pem"),
        "--tls-key".into(),
        tls_fixture("server.key"),
    ]
}

/// A rustls client config that trusts the test CA only (the harness's own admin calls).
pub fn test_ca_config() -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(tls_fixture("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// A loopback HTTP CONNECT proxy: tunnels to loopback targets, refuses (403) every other
/// target, and records each CONNECT target (`host:port`) it was asked for.
pub struct ConnectProxy {
    pub url: String,
    pub targets: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ConnectProxy {
    pub fn start() -> ConnectProxy {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let targets = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let t = targets.clone();
        std::thread::spawn(move || {
            for c in listener.incoming() {
                let Ok(mut client) = c else { return };
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(client.try_clone().unwrap());
                    let mut line = String::new();
                    if r.read_line(&mut line).is_err() {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    let mut parts = line.split_whitespace();
                    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    t.lock().unwrap().push(target.to_string());
                    // `backend.test` is the name only the proxy resolves (to loopback), as a
                    // corporate proxy resolves names the host cannot.
                    let target = match target.strip_prefix("backend.test:") {
                        Some(port) => format!("127.0.0.1:{port}"),
                        None => target.to_string(),
                    };
                    let loopback = target.starts_with("127.0.0.1:");
                    if method != "CONNECT" || !loopback {
                        let _ = client
                            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
                        return;
                    }
                    let Ok(upstream) = std::net::TcpStream::connect(&target) else {
                        let _ = client
                            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
                        return;
                    };
                    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                    let (mut c2, mut u2) =
                        (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                    let mut up = upstream;
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut u2, &mut c2);
                        let _ = c2.shutdown(std::net::Shutdown::Both);
                    });
                    // The BufReader hands over what it already read first: tunnel bytes.
                    let _ = std::io::copy(&mut r, &mut up);
                    let _ = up.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        ConnectProxy { url, targets }
    }

    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

//! Shared harness of the `connect_*` integration tests: a local backend process, gateway
//! processes with a private config dir and HOME, admin helpers, and wait-for-condition polling.
//! Every process is killed by a Drop guard, also when a test fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

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

/// Polls `f` until it returns Some or the deadline passes (then panics with `what`).
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
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
    _dir: TempDir,
}

impl Backend {
    pub fn start() -> Backend {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Backend {
        let dir = TempDir::new("backend");
        let stderr_path = dir.path().join("backend.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(BACKEND)
            .args(["--listen", "127.0.0.1:0"])
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
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(20))
            .build();
        Backend {
            child,
            url: v["url"].as_str().unwrap().to_string(),
            anon_key: v["anon_key"].as_str().unwrap().to_string(),
            service_key: v["service_role_key"].as_str().unwrap().to_string(),
            agent,
            stderr_path,
            harness_5xx: AtomicU64::new(0),
            _dir: dir,
        }
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
            if k.starts_with("PANORAMA_") || k.starts_with("SUPABASE_") {
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

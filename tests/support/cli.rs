//! Helpers for the integration tests: a temp world (HOME, config dir) per test, the real
//! binary with a clean environment, guards that kill what a test started.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use super::wait_for;

pub const BIN: &str = env!("CARGO_BIN_EXE_panorama-gateway");

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Variables a developer's shell may have set that would change what the binary does.
const SCRUB: &[&str] = &[
    "PANORAMA_GATEWAY_CONFIG_DIR",
    "PANORAMA_GATEWAY_CONFIG_PATH",
    "PANORAMA_GATEWAY_LOG_PATH",
    "PANORAMA_GATEWAY_PID_PATH",
    "PANORAMA_GATEWAY_DEVICE_NAME",
    "PANORAMA_GATEWAY_AUTO_RESTART",
    "PANORAMA_GATEWAY_RESTART_CHECK_MS",
    "PANORAMA_GATEWAY_RESTART_MAX_WAIT_MS",
    "PANORAMA_GATEWAY_LOG_MAX_BYTES",
    "PANORAMA_GATEWAY_READY_FD",
    "PANORAMA_ENV",
    "PANORAMA_ENV_FILE",
    "SUPABASE_URL",
    "PANORAMA_SUPABASE_URL",
    "SUPABASE_ANON_KEY",
    "PANORAMA_SUPABASE_ANON_KEY",
    "SUPABASE_PUBLISHABLE_KEY",
    "PANORAMA_CLAUDE_CLI",
    "CLAUDE_CLI",
    "PANORAMA_CODEX_CLI",
    "CODEX_CLI",
    "PANORAMA_GEMINI_CLI",
    "GEMINI_CLI",
];

/// A temp directory with `home/` and `cfg/`; removed on drop.
pub struct World {
    pub root: PathBuf,
    pub home: PathBuf,
    pub cfg: PathBuf,
}

impl World {
    pub fn new(tag: &str) -> World {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!(
            "pgw-{tag}-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let home = root.join("home");
        fs::create_dir_all(&home).unwrap();
        World {
            cfg: root.join("cfg"),
            home,
            root,
        }
    }

    pub fn config(&self) -> PathBuf {
        self.cfg.join("gateway.json")
    }
    pub fn log(&self) -> PathBuf {
        self.cfg.join("gateway.log")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.cfg.join("gateway.pid")
    }
    pub fn status_file(&self) -> PathBuf {
        self.cfg.join("gateway.status.json")
    }

    /// The binary with HOME in the world and a clean environment (no `--config-dir`).
    pub fn bare_cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        for v in SCRUB {
            c.env_remove(v);
        }
        c.env("HOME", &self.home).current_dir(&self.root);
        c
    }

    /// The binary with `args` and `--config-dir <cfg>`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.bare_cmd();
        c.args(args).arg("--config-dir").arg(&self.cfg);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run_with_timeout(self.cmd(args), Duration::from_secs(60))
    }

    /// Writes a paired gateway.json whose backend is a closed loopback port.
    pub fn write_paired_config(&self) {
        fs::create_dir_all(&self.cfg).unwrap();
        fs::set_permissions(&self.cfg, fs::Permissions::from_mode(0o700)).unwrap();
        let port = closed_port();
        let text = format!(
            r#"{{
  "supabaseUrl": "http://127.0.0.1:{port}",
  "supabaseAnonKey": "anon-test-key",
  "accessToken": "{JWT}",
  "refreshToken": "refresh-secret-1",
  "gatewayId": "gw-test-1",
  "teamId": "team-test-1",
  "full_control_enabled": false,
  "deviceName": "test box",
  "vmGuest": null,
  "someFutureKey": {{"kept": true}}
}}"#
        );
        fs::write(self.config(), text).unwrap();
        fs::set_permissions(self.config(), fs::Permissions::from_mode(0o600)).unwrap();
    }

    pub fn read_log(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Stop a daemon this world may still run (pid file), then remove the files.
        if let Ok(s) = fs::read_to_string(self.pid_file()) {
            if let Ok(pid) = s.trim().parse::<i32>() {
                if pid > 0 && is_alive(pid as u32) && cmdline_is_gateway(pid as u32) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

pub const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJndy10ZXN0LTEiLCJleHAiOjQxMDI0NDQ4MDB9.c2lnbmF0dXJlLXNlY3JldA";

/// A loopback port nothing listens on.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn is_alive(pid: u32) -> bool {
    // A zombie counts as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        }
        Err(_) => false,
    }
}

pub fn cmdline_is_gateway(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("panorama-gateway"))
        .unwrap_or(false)
}

pub fn run_with_timeout(mut c: Command, timeout: Duration) -> Output {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn_retrying(&mut c);
    let mut g = ChildGuard(Some(child));
    let deadline = Instant::now() + timeout;
    loop {
        match g.0.as_mut().unwrap().try_wait().unwrap() {
            Some(_) => return g.0.take().unwrap().wait_with_output().unwrap(),
            None if Instant::now() > deadline => {
                panic!("command did not finish within {timeout:?}")
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Kills and reaps a child process when dropped (also when the test fails).
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn spawn(mut c: Command) -> ChildGuard {
        c.stdin(Stdio::null());
        ChildGuard(Some(spawn_retrying(&mut c)))
    }
    pub fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
    /// Waits for exit with a deadline; returns the exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child().try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Kills a detached daemon by pid when dropped.
pub struct PidGuard(pub u32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        if self.0 > 0 && is_alive(self.0) && cmdline_is_gateway(self.0) {
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A `--json` command's stdout, parsed (the failure shows what it printed instead).
#[track_caller]
pub fn stdout_json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}{}", stdout(o), stderr(o)))
}

/// The check called `name` in the output of `doctor --json`.
#[track_caller]
pub fn doctor_check(o: &Output, name: &str) -> serde_json::Value {
    let v = stdout_json(o);
    v["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("doctor --json has no check {name:?}: {v}"))
        .clone()
}

/// Asserts that a command exited with `code` and that its stderr contains each of
/// `stderr_has`; a failure shows the whole stderr.
#[track_caller]
pub fn assert_fails(o: &Output, code: i32, stderr_has: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {e}");
    for needle in stderr_has {
        assert!(e.contains(needle), "stderr lacks {needle:?}: {e}");
    }
}

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(p).unwrap().mode() & 0o777
}

pub fn status_json(w: &World) -> (i32, serde_json::Value) {
    let o = w.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", stdout(&o)));
    (o.status.code().unwrap_or(-1), v)
}

/// Starts the daemon in the background; returns its pid (guarded by the World's Drop too).
pub fn start_daemon(w: &World, extra_env: &[(&str, &str)]) -> u32 {
    let mut c = w.cmd(&["start", "--daemon"]);
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let o = run_with_timeout(c, Duration::from_secs(60));
    assert_eq!(
        o.status.code(),
        Some(0),
        "start: {} {}",
        stdout(&o),
        stderr(&o)
    );
    let out = stdout(&o);
    let pid: u32 = out
        .split("pid ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pid in start output: {out}"));
    pid
}

/// Like [`wait_for`], polling every `every` (for conditions that change quickly).
pub fn wait_for_every(what: &str, timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(every);
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Inodes of the files process `pid` has open (`/proc/<pid>/fd`), deleted ones included.
pub fn open_inodes(pid: u32) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| fs::metadata(e.path()).ok())
                .map(|m| m.ino())
                .collect()
        })
        .unwrap_or_default()
}

/// Collects everything `r` yields (a child's stdout or stderr) into a shared string.
pub fn capture(
    mut r: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    let s = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let s2 = std::sync::Arc::clone(&s);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            s2.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    s
}

/// Spawns `c`, retrying while the executable is "busy" (ETXTBSY): a test that has just copied
/// a binary races the fork of a parallel test thread, which briefly inherits the copy's write
/// descriptor (a known Linux/test-harness race, not a gateway behaviour).
pub fn spawn_retrying(c: &mut Command) -> std::process::Child {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("spawn {:?}: {e}", c.get_program()),
        }
    }
}

//! Auto-restart on upgrade: every `PANORAMA_GATEWAY_RESTART_CHECK_MS` (default 30000, min
//! 1000) the installed binary (the path this process was started from) is stat'ed; when it
//! changed (inode, size or mtime) and the new file answers `--version`, the daemon drains and,
//! once the runtime has returned, re-executes itself with the same arguments.
//!
//! `PANORAMA_GATEWAY_AUTO_RESTART=0` disables it (on by default in release builds, off in debug
//! builds unless set to 1). `PANORAMA_GATEWAY_RESTART_MAX_WAIT_MS` bounds the drain: after that
//! wait, in-flight work is stopped.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daemon::runtime::StatusUpdater;
use crate::shutdown::{Level, Shutdown};

#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub enabled: bool,
    pub interval: Duration,
    pub max_wait: Option<Duration>,
}

fn env_bool(name: &str) -> Option<bool> {
    let v = std::env::var(name).ok()?;
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl WatchConfig {
    pub fn from_env() -> WatchConfig {
        let enabled = env_bool("PANORAMA_GATEWAY_AUTO_RESTART").unwrap_or(!cfg!(debug_assertions));
        let interval = crate::tuning::restart_check();
        let max_wait = crate::tuning::restart_max_wait();
        WatchConfig {
            enabled,
            interval,
            max_wait,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn fingerprint(p: &Path) -> Option<Fingerprint> {
    let m = std::fs::metadata(p).ok()?;
    Some(Fingerprint {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

/// Runs `<exe> --version` with a deadline; returns its first output line.
fn probe_version(exe: &Path) -> Result<String, String> {
    let mut child = Command::new(exe)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                let mut out = String::new();
                if let Some(mut o) = child.stdout.take() {
                    use std::io::Read;
                    let _ = o.read_to_string(&mut out);
                }
                return if st.success() {
                    Ok(out.lines().next().unwrap_or("").trim().to_string())
                } else {
                    Err(format!("--version exited with {st}"))
                };
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("--version did not answer within 10 s".into());
            }
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    }
}

/// Set when the watchdog asked for a restart; `start` re-executes after the runtime returned.
#[derive(Clone, Default)]
pub struct RestartFlag(Arc<AtomicBool>);

impl RestartFlag {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    fn set(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
}

/// Starts the watchdog thread (no thread when disabled).
pub fn spawn(
    exe: PathBuf,
    cfg: WatchConfig,
    shutdown: Shutdown,
    status: StatusUpdater,
) -> RestartFlag {
    let flag = RestartFlag::default();
    if !cfg.enabled {
        log::debug!(target: "watchdog", "auto-restart on upgrade is off (PANORAMA_GATEWAY_AUTO_RESTART)");
        return flag;
    }
    let Some(base) = fingerprint(&exe) else {
        log::warn!(target: "watchdog", "auto-restart disabled: cannot stat the gateway binary path={}", exe.display());
        return flag;
    };
    log::info!(target: "watchdog", "watching the gateway binary for upgrades path={} interval_ms={}", exe.display(), cfg.interval.as_millis());
    let f2 = flag.clone();
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut rejected: Option<Fingerprint> = None;
            loop {
                if shutdown.sleep(cfg.interval) {
                    return;
                }
                let Some(now) = fingerprint(&exe) else {
                    continue; // mid-replacement: try again next tick
                };
                if now == base || Some(&now) == rejected.as_ref() {
                    continue;
                }
                match probe_version(&exe) {
                    Ok(v) => {
                        log::info!(target: "watchdog", "gateway binary changed; draining before restart path={} new_version={:?}", exe.display(), v);
                    }
                    Err(e) => {
                        log::warn!(target: "watchdog", "gateway binary changed but the new file does not run ({e}); keeping the current process, will retry when it changes again path={}", exe.display());
                        rejected = Some(now);
                        continue;
                    }
                }
                f2.set();
                (status)(&|s| s.restart_pending = true);
                shutdown.request_drain();
                if let Some(w) = cfg.max_wait {
                    if !shutdown.wait_for(Level::Immediate, w) {
                        log::warn!(target: "watchdog", "restart max wait reached; stopping in-flight work now wait_ms={}", w.as_millis());
                        shutdown.request_immediate();
                    }
                }
                return;
            }
        });
    if let Err(e) = spawned {
        log::warn!(target: "watchdog", "auto-restart disabled: cannot start its thread: {e}");
    }
    flag
}

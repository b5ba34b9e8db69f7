//! Auto-restart on upgrade: every `PANORAMA_GATEWAY_RESTART_CHECK_MS` (default 30000, min
//! 1000) the installed binary (the path this process was started from) is stat'ed. When it
//! changed (inode, size or mtime) and the new file is a verified upgrade (its `--version` says
//! `panorama-gateway <v>` with a version other than the running one, and a dry start with the
//! same arguments, `--check-config`, exits 0), the daemon drains and, once the runtime has
//! returned, re-executes itself with the same arguments (the new process resolves the provider
//! CLIs afresh). Any other file is logged with the reason and not looked at again until it
//! changes; the running daemon goes on.
//!
//! `PANORAMA_GATEWAY_AUTO_RESTART=0` disables it (on by default in release builds, off in debug
//! builds unless set to 1). `PANORAMA_GATEWAY_RESTART_MAX_WAIT_MS` bounds the drain: after that
//! wait, in-flight work is stopped.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

/// How long a probe of the new binary may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a probe run of the new binary gave: success, stdout, stderr.
struct Probe {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// Runs `<exe> <args>` (stdin empty, outputs captured) with a deadline.
fn probe(exe: &Path, args: &[OsString]) -> Result<Probe, String> {
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let pid = child.id() as i32;
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("watchdog-probe".into())
        .spawn(move || {
            let _ = tx.send(child.wait_with_output());
        })
        .map_err(|e| format!("cannot start a thread to wait for it: {e}"))?;
    let out = match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(r) => r,
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own unreaped child (the waiting thread reaps it).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let _ = rx.recv_timeout(Duration::from_secs(2));
            return Err(format!(
                "it did not answer within {} s",
                PROBE_TIMEOUT.as_secs()
            ));
        }
    };
    let out = out.map_err(|e| format!("cannot wait for it: {e}"))?;
    Ok(Probe {
        ok: out.status.success(),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn first_line(s: &str) -> String {
    crate::util::truncate_chars(s.lines().next().unwrap_or("").trim(), 200, "…")
}

/// Whether `exe` is an upgrade this process may restart into: it answers `--version` with
/// this program's name and a version other than the running one, and a dry start with the
/// same arguments (`--check-config`) succeeds. Returns the new version, or why not.
fn verify_upgrade(exe: &Path, args: &[OsString], running: &str) -> Result<String, String> {
    let v = probe(exe, &["--version".into()]).map_err(|e| format!("--version: {e}"))?;
    if !v.ok {
        return Err(format!("--version exited with {}", v.status));
    }
    let line = first_line(&v.stdout);
    let version = match line.split_once(' ') {
        Some(("panorama-gateway", ver)) if !ver.trim().is_empty() => ver.trim().to_string(),
        _ => {
            return Err(format!(
                "it answers --version with {line:?}, not \"panorama-gateway <version>\""
            ))
        }
    };
    if version == running {
        return Err(format!(
            "it is the running version {running}, not an upgrade"
        ));
    }
    let mut dry: Vec<OsString> = args.to_vec();
    dry.push("--check-config".into());
    let c = probe(exe, &dry).map_err(|e| format!("the dry start (--check-config): {e}"))?;
    if !c.ok {
        let why = first_line(&c.stderr);
        return Err(format!(
            "version {version} fails a dry start with the same arguments (--check-config exited with {}{})",
            c.status,
            if why.is_empty() { String::new() } else { format!(": {why}") }
        ));
    }
    Ok(version)
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

/// Starts the watchdog thread (no thread when disabled). `args`: this process's arguments
/// (without the program), used for the restart and for the dry start of a candidate.
pub fn spawn(
    exe: PathBuf,
    args: Vec<OsString>,
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
                match verify_upgrade(&exe, &args, crate::util::version()) {
                    Ok(v) => {
                        log::info!(target: "watchdog", "gateway binary changed; draining before restart path={} running_version={} new_version={v}", exe.display(), crate::util::version());
                    }
                    Err(e) => {
                        log::warn!(target: "watchdog", "gateway binary changed but the new file is not an upgrade to restart into: {e}; keeping the running version {} and not checking this file again until it changes path={}", crate::util::version(), exe.display());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn only_a_verified_upgrade_is_accepted() {
        let d = std::env::temp_dir().join(format!(
            "pgw-watchdog-{}-{}",
            std::process::id(),
            crate::util::new_uuid_v4()
        ));
        std::fs::create_dir_all(&d).unwrap();
        let args: Vec<OsString> = vec!["start".into(), "--daemon-child".into()];
        // Answers like an upgrade and starts: accepted, and the dry start got our arguments.
        let seen = d.join("seen");
        let good = script(
            &d,
            "good",
            &format!(
                "[ \"$1\" = --version ] && {{ echo 'panorama-gateway 9.9.9'; exit 0; }}\necho \"$@\" > '{}'",
                seen.display()
            ),
        );
        assert_eq!(verify_upgrade(&good, &args, "0.1.0"), Ok("9.9.9".into()));
        assert_eq!(
            std::fs::read_to_string(&seen).unwrap().trim(),
            "start --daemon-child --check-config"
        );
        let e = verify_upgrade(&good, &args, "9.9.9").unwrap_err();
        assert!(e.contains("running version 9.9.9"), "{e}");
        let other = script(&d, "other", "echo 'this is not panorama-gateway'");
        let e = verify_upgrade(&other, &args, "0.1.0").unwrap_err();
        assert!(e.contains("not \"panorama-gateway <version>\""), "{e}");
        let broken = script(
            &d,
            "broken",
            "[ \"$1\" = --version ] && { echo 'panorama-gateway 9.9.9'; exit 0; }\necho 'ERROR no config' >&2; exit 1",
        );
        let e = verify_upgrade(&broken, &args, "0.1.0").unwrap_err();
        assert!(
            e.contains("dry start") && e.contains("ERROR no config"),
            "{e}"
        );
        let fails = script(&d, "fails", "exit 1");
        let e = verify_upgrade(&fails, &args, "0.1.0").unwrap_err();
        assert!(e.contains("--version exited"), "{e}");
        let truncated = d.join("truncated");
        std::fs::write(&truncated, b"\x7fELF\x02\x01\x01").unwrap();
        std::fs::set_permissions(&truncated, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(verify_upgrade(&truncated, &args, "0.1.0").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}

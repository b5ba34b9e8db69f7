//! `stop`: SIGTERM (drain) and wait until the daemon is gone (default 120 s, longer than its
//! 90 s drain); `--force`: SIGQUIT, then SIGKILL after 5 s. Not running → says so, exit 0.

use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::daemon::pidfile::{self, PidState};
use crate::daemon::statusfile;

pub const DEFAULT_TIMEOUT_SECS: u64 = 120;
const FORCE_GRACE: Duration = Duration::from_secs(5);

fn send(pid: u32, sig: libc::c_int) -> Result<(), String> {
    // SAFETY: kill(2) with a positive pid read from a locked pid file.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    Err(if e.raw_os_error() == Some(libc::EPERM) {
        format!(
            "{e}: it runs as another user; run panorama-gateway stop as that user (or with sudo)"
        )
    } else {
        e.to_string()
    })
}

/// Waits until the pid lock is free (the daemon holds it until its very end). Prints why it
/// waits every 10 s. Wakes the moment the process exits (pidfd), else looks every 10 ms.
fn wait_gone(settings: &Settings, pid: u32, until: Instant) -> bool {
    let mut next_note = Instant::now() + Duration::from_secs(10);
    let watch = crate::exec::ExitWatch::new(pid as i32);
    let mut exited = false;
    loop {
        match pidfile::probe(&settings.paths.pid_path) {
            Ok(PidState::Running(p)) if p == pid || p == 0 => {}
            _ => return true,
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        if now >= next_note {
            let jobs = statusfile::read(&settings.paths.status_path)
                .map(|s| s.jobs_in_flight)
                .unwrap_or(0);
            println!(
                "Still waiting for the gateway (pid {pid}) to finish in-flight work ({jobs} job(s) in flight)..."
            );
            next_note = now + Duration::from_secs(10);
        }
        match &watch {
            // Once it has exited the pidfd stays readable: look again in short steps.
            Some(w) if !exited => {
                exited = w.wait(until.min(next_note).saturating_duration_since(now));
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Runs `stop`; returns the exit code.
pub fn run(settings: &Settings, force: bool, timeout_secs: Option<u64>) -> i32 {
    let path = &settings.paths.pid_path;
    let pid = match pidfile::probe(path) {
        Ok(PidState::Running(pid)) if pid > 0 => pid,
        Ok(PidState::Running(_)) => {
            eprintln!(
                "ERROR the pid file {} is locked but holds no pid; find the process holding it with `fuser -v {}` and stop it by hand",
                path.display(),
                path.display()
            );
            return 1;
        }
        Ok(PidState::NotRunning { stale_pid }) => {
            match stale_pid.map(|_| pidfile::remove_stale(path)) {
                Some(Ok(Some(p))) => {
                    println!("Gateway is not running (removed stale pid file of pid {p})")
                }
                Some(Err(e)) => {
                    println!("Gateway is not running");
                    eprintln!(
                        "WARN cannot remove the stale pid file {}: {e}",
                        path.display()
                    );
                }
                _ => println!("Gateway is not running"),
            }
            return 0;
        }
        Err(e) => {
            eprintln!("ERROR cannot read the pid file {}: {e}", path.display());
            return 1;
        }
    };
    let timeout = Duration::from_secs(timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS));
    let start = Instant::now();
    if force {
        if let Err(e) = send(pid, libc::SIGQUIT) {
            eprintln!("ERROR cannot signal the gateway (pid {pid}): {e}");
            return 1;
        }
        println!("Stopping the gateway now (pid {pid})...");
        if wait_gone(settings, pid, start + FORCE_GRACE.min(timeout)) {
            println!("OK Gateway stopped");
            return 0;
        }
        println!(
            "The gateway did not stop within {} s; killing it (SIGKILL)",
            FORCE_GRACE.as_secs()
        );
        if let Err(e) = send(pid, libc::SIGKILL) {
            eprintln!("ERROR cannot kill the gateway (pid {pid}): {e}");
            return 1;
        }
        if wait_gone(settings, pid, Instant::now() + Duration::from_secs(5)) {
            // A killed daemon leaves its pid file behind; nobody holds it now.
            let _ = pidfile::remove_stale(path);
            println!("OK Gateway killed");
            return 0;
        }
        eprintln!("ERROR the gateway (pid {pid}) is still running after SIGKILL");
        return 1;
    }
    if let Err(e) = send(pid, libc::SIGTERM) {
        eprintln!("ERROR cannot signal the gateway (pid {pid}): {e}");
        return 1;
    }
    println!("Stopping the gateway (pid {pid}); waiting for in-flight jobs to finish...");
    if wait_gone(settings, pid, start + timeout) {
        println!("OK Gateway stopped");
        0
    } else {
        eprintln!(
            "ERROR the gateway (pid {pid}) is still running after {} s (draining work); run panorama-gateway stop --force to stop it now",
            timeout.as_secs()
        );
        1
    }
}

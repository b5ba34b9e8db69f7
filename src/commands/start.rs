//! `start`: run the gateway in the foreground, or start it in the background and report.

use crate::config::Settings;
use crate::daemon::{self, detach};

/// Starts the daemon detached and waits until it reports ready; returns its pid (the existing
/// pid when one is already running). Used by `start` and by `pair`.
pub fn start_background(settings: &Settings) -> Result<u32, String> {
    match detach::launch(settings)? {
        detach::Launch::Started(pid) | detach::Launch::AlreadyRunning(pid) => Ok(pid),
    }
}

/// Runs `start`; returns the exit code.
pub fn run(settings: &Settings, foreground: bool, daemon: bool, daemon_child: bool) -> i32 {
    if daemon_child {
        return daemon::run(settings, true);
    }
    let background = if foreground {
        false
    } else if daemon {
        true
    } else {
        !cfg!(debug_assertions)
    };
    if !background {
        return daemon::run(settings, false);
    }
    match detach::launch(settings) {
        Ok(detach::Launch::Started(pid)) => {
            println!("OK Gateway started (pid {pid})");
            println!("  Logs: {}", super::display_path(&settings.paths.log_path));
            if settings.verbose {
                println!("  Config: {}", settings.paths.config_path.display());
                println!("  PID file: {}", settings.paths.pid_path.display());
            }
            0
        }
        Ok(detach::Launch::AlreadyRunning(pid)) => {
            println!("Gateway already running (pid {pid})");
            0
        }
        Err(e) => {
            eprintln!("ERROR {e}");
            1
        }
    }
}

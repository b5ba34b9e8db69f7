//! `full-control enable|disable|status`: the install-level host machine control toggle
//! (`full_control_enabled` in gateway.json). Works before pairing; a running daemon is told at
//! once with SIGHUP (it re-reads gateway.json).

use crate::cli::FullControlAction;
use crate::config::{state, Settings};
use crate::daemon::pidfile::{self, PidState};

fn word(on: bool) -> &'static str {
    if on {
        "enabled"
    } else {
        "disabled"
    }
}

/// Runs `full-control`; returns the exit code.
pub fn run(settings: &Settings, action: FullControlAction) -> i32 {
    let path = &settings.paths.config_path;
    let want = match action {
        FullControlAction::Status => {
            return match state::load(path) {
                Ok(s) => {
                    let on = s.map(|s| s.full_control_enabled).unwrap_or(false);
                    println!("Full control: {}", word(on));
                    if settings.verbose {
                        println!("  Config: {}", path.display());
                    }
                    0
                }
                Err(e) => {
                    eprintln!("ERROR {e}");
                    1
                }
            };
        }
        FullControlAction::Enable => true,
        FullControlAction::Disable => false,
    };
    // The config dir is the gateway's own: create or tighten it (0700) before writing into it.
    if let Err(e) = crate::config::secure::ensure_dir(&settings.paths.config_dir) {
        eprintln!("ERROR {e}");
        return 1;
    }
    let mut before = false;
    let result = state::update(path, |s| {
        before = s.full_control_enabled;
        s.full_control_enabled = want;
    });
    if let Err(e) = result {
        eprintln!("ERROR {e}");
        return 1;
    }
    if before == want {
        println!("Full control: {} (unchanged)", word(want));
    } else {
        println!("OK Full control: {}", word(want));
    }
    if let Ok(PidState::Running(pid)) = pidfile::probe(&settings.paths.pid_path) {
        if pid > 0 {
            // SAFETY: kill(2) to the pid holding the gateway's pid lock.
            if unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) } == 0 {
                println!("  The running gateway (pid {pid}) was told to reload it.");
            } else {
                println!("  The running gateway (pid {pid}) picks it up at its next heartbeat.");
            }
        }
    }
    0
}

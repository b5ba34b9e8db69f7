//! `start`: run the gateway in the foreground, or start it in the background and report.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use crate::config::Settings;
use crate::daemon::{self, detach};

/// Starts the daemon detached and waits until it reports ready; returns its pid (the existing
/// pid when one is already running). Used by `start` and by `pair`.
pub fn start_background(settings: &Settings) -> Result<u32, String> {
    match detach::launch(settings)? {
        detach::Launch::Started(pid) | detach::Launch::AlreadyRunning(pid) => Ok(pid),
    }
}

/// `start --check-config`: whether the daemon could start with these arguments, without
/// starting it (no lock, no network). The watchdog runs an upgraded binary so before it
/// restarts into it. Exit 0 and `OK …`, or 1 and the reason.
pub fn check_config(settings: &Settings) -> i32 {
    match daemon::preflight(settings) {
        Ok(_) => {
            println!(
                "OK configuration usable by panorama-gateway {} (config {})",
                crate::util::version(),
                settings.paths.config_path.display()
            );
            0
        }
        Err(e) => {
            eprintln!("ERROR {e}");
            1
        }
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
        if let Some(e) = reexec_without_secret_args(settings) {
            eprintln!("WARNING cannot hide --anon-key from the process list ({e}); pass it in SUPABASE_ANON_KEY instead");
        }
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

/// `argv` without `--anon-key <v>` / `--anon-key=<v>`; None when there was none.
fn strip_secret_args(args: &[OsString]) -> Option<Vec<OsString>> {
    let mut out = Vec::with_capacity(args.len());
    let mut found = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            out.push(a.clone());
            out.extend(it.cloned());
            break;
        }
        if a == "--anon-key" {
            found = true;
            it.next();
            continue;
        }
        if a.as_bytes().starts_with(b"--anon-key=") {
            found = true;
            continue;
        }
        out.push(a.clone());
    }
    found.then_some(out)
}

/// A foreground daemon lives for months, and its command line is readable by every local user
/// (`ps`, `/proc/<pid>/cmdline`). When the key came as `--anon-key`, execute this binary again
/// (same pid) with the key moved to `SUPABASE_ANON_KEY`: the environment is owner-only, and the
/// flag and that variable are the two highest sources, so the precedence is unchanged. Returns
/// only when that was not possible (the error), or None when there was nothing to hide.
fn reexec_without_secret_args(settings: &Settings) -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    let args: Vec<OsString> = std::env::args_os().collect();
    let (arg0, rest) = args.split_first()?;
    let stripped = strip_secret_args(rest)?;
    let key = settings.anon_key.as_ref()?;
    // Only when the command line means the same without the flag.
    crate::cli::parse(stripped.iter().cloned()).ok()?;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Some(e),
    };
    let err = std::process::Command::new(exe)
        .arg0(arg0)
        .args(&stripped)
        .env("SUPABASE_ANON_KEY", key)
        .exec();
    Some(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn strips_the_key_in_both_spellings_only() {
        assert_eq!(
            strip_secret_args(&os(&["start", "--anon-key", "k1", "-v", "--anon-key=k2"])),
            Some(os(&["start", "-v"]))
        );
        assert_eq!(strip_secret_args(&os(&["start", "--foreground"])), None);
        assert_eq!(
            strip_secret_args(&os(&["start", "--", "--anon-key"])),
            None,
            "after -- nothing is a flag"
        );
    }
}
